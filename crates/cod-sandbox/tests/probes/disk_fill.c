/* For each path argument: write 64 KiB chunks until a write fails, report the errno and the
 * bytes written, then delete the file so that the next path starts from the same space. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
    /* Past RLIMIT_FSIZE, write fails with EFBIG instead of killing us with SIGXFSZ. */
    signal(SIGXFSZ, SIG_IGN);
    static char buf[64 * 1024];
    for (int i = 1; i < argc; i++) {
        int fd = open(argv[i], O_CREAT | O_WRONLY | O_TRUNC, 0644);
        if (fd < 0) {
            printf("%s.open_errno=%d\n", argv[i], errno);
            continue;
        }
        long long total = 0;
        int e = 0;
        for (;;) {
            ssize_t n = write(fd, buf, sizeof buf);
            if (n < 0) {
                e = errno;
                break;
            }
            total += n;
        }
        close(fd);
        printf("%s.errno=%d\n%s.bytes=%lld\n", argv[i], e, argv[i], total);
        unlink(argv[i]);
    }
    return 0;
}
