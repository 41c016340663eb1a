/* "leave": create files in every writable place and System V IPC objects under fixed keys;
 * "look": report for each whether it exists ("ok") or the errno. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/msg.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEY 0x636f64 /* "cod" */

static const char *files[] = {"/box/left", "/tmp/left", "/dev/shm/left"};

static void show(const char *name, int rc) {
    if (rc < 0) printf("%s=%d\n", name, errno);
    else printf("%s=ok\n", name);
}

int main(int argc, char **argv) {
    int leave = argc > 1 && strcmp(argv[1], "leave") == 0;
    struct stat st;
    for (int i = 0; i < 3; i++) {
        if (leave) {
            int fd = open(files[i], O_CREAT | O_WRONLY, 0644);
            show(files[i], fd);
            if (fd >= 0) close(fd);
        } else {
            show(files[i], stat(files[i], &st));
        }
    }
    show("shm", shmget(KEY, 4096, leave ? IPC_CREAT | 0600 : 0));
    show("msg", msgget(KEY, leave ? IPC_CREAT | 0600 : 0));
    return 0;
}
