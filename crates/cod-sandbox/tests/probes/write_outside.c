/* For each path argument: try to create it (O_CREAT|O_EXCL) and write a byte; print "ok" or
 * the errno. Paths starting with "+" are existing files opened for appending instead. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *p = argv[i];
        int fd;
        if (p[0] == '+') {
            p++;
            fd = open(p, O_WRONLY | O_APPEND);
        } else {
            fd = open(p, O_CREAT | O_EXCL | O_WRONLY, 0644);
        }
        if (fd < 0) {
            printf("%s=%d\n", p, errno);
            continue;
        }
        if (write(fd, "x", 1) != 1) printf("%s=write:%d\n", p, errno);
        else printf("%s=ok\n", p);
        close(fd);
    }
    if (mkdir("/newdir", 0755) < 0) printf("mkdir:/newdir=%d\n", errno);
    else printf("mkdir:/newdir=ok\n");
    return 0;
}
