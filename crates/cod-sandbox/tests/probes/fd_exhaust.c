/* Open /dev/null until it fails; report the RLIMIT_NOFILE, the count and the errno, and
 * whether the limit can be raised. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/resource.h>

int main(void) {
    struct rlimit r;
    getrlimit(RLIMIT_NOFILE, &r);
    printf("nofile_soft=%llu\nnofile_hard=%llu\n", (unsigned long long)r.rlim_cur,
           (unsigned long long)r.rlim_max);
    int opened = 0;
    for (;;) {
        if (open("/dev/null", O_RDONLY) < 0) {
            printf("open_errno=%d\nopened=%d\n", errno, opened);
            break;
        }
        opened++;
    }
    r.rlim_cur = r.rlim_max = r.rlim_max * 4;
    if (setrlimit(RLIMIT_NOFILE, &r) < 0) printf("raise_errno=%d\n", errno);
    else printf("raise_errno=0\n");
    return 0;
}
