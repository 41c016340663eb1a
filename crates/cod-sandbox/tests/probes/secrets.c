/* What of the host is visible: stat each path argument (errno or "ok"), list /, /etc and /dev,
 * print the environment as seen through environ and through /proc/self/environ, and try the
 * init's environment. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern char **environ;

static int cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void list(const char *key, const char *dir) {
    char *names[256];
    int n = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    if (!d) {
        printf("%s_errno=%d\n", key, errno);
        return;
    }
    while ((e = readdir(d)) && n < 256)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, n, sizeof *names, cmp);
    printf("%s=", key);
    for (int i = 0; i < n; i++) printf(i ? ",%s" : "%s", names[i]);
    printf("\n");
}

int main(int argc, char **argv) {
    struct stat st;
    for (int i = 1; i < argc; i++) {
        if (stat(argv[i], &st) < 0) printf("stat:%s=%d\n", argv[i], errno);
        else printf("stat:%s=ok\n", argv[i]);
    }
    list("root", "/");
    list("etc", "/etc");
    list("dev", "/dev");
    for (char **e = environ; *e; e++) printf("environ=%s\n", *e);

    char buf[65536];
    int fd = open("/proc/self/environ", O_RDONLY);
    ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf);
    for (ssize_t i = 0, start = 0; i < n; i++)
        if (buf[i] == '\0') {
            printf("procenv=%s\n", buf + start);
            start = i + 1;
        }
    if (fd >= 0) close(fd);

    fd = open("/proc/1/environ", O_RDONLY);
    if (fd < 0) {
        printf("init_environ=%d\n", errno);
    } else {
        n = read(fd, buf, sizeof buf);
        printf("init_environ=read %zd bytes\n", n);
        for (ssize_t i = 0; i < n; i++) putchar(buf[i] ? buf[i] : '\n');
        close(fd);
    }
    return 0;
}
