/* Double-fork daemon: the grandchild leaves the session, keeps stdout and stderr open and
 * lives forever (writing a file now and then); the main process exits 0 as soon as the
 * daemon has announced itself. */
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void) {
    int ready[2];
    char byte;
    if (pipe(ready) < 0) return 1;
    pid_t child = fork();
    if (child == 0) {
        setsid();
        if (fork() == 0) {
            printf("daemon_pid=%d\n", getpid());
            fflush(stdout);
            if (write(ready[1], "r", 1) != 1) _exit(1);
            for (;;) {
                FILE *f = fopen("/box/daemon.log", "a");
                if (f) {
                    fputs("still here\n", f);
                    fclose(f);
                }
                sleep(1);
            }
        }
        _exit(0);
    }
    close(ready[1]);
    waitpid(child, NULL, 0);
    if (read(ready[0], &byte, 1) != 1) return 1;
    printf("main=exit\n");
    return 0;
}
