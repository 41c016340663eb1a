/* Fork bomb: every child forks forever. The first process counts its own successful forks
 * until fork fails, then reports the errno and how many processes /proc shows, and exits. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <unistd.h>

static int count_procs(void) {
    DIR *d = opendir("/proc");
    struct dirent *e;
    int n = 0;
    if (!d) return -1;
    while ((e = readdir(d)))
        if (isdigit((unsigned char)e->d_name[0])) n++;
    closedir(d);
    return n;
}

int main(void) {
    int forks = 0;
    for (;;) {
        pid_t p = fork();
        if (p == 0)
            for (;;) fork();
        if (p < 0) {
            int e = errno;
            printf("fork_errno=%d\nforks=%d\nprocs=%d\n", e, forks, count_procs());
            return 0;
        }
        forks++;
    }
}
