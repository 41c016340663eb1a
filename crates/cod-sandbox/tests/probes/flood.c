/* Write forever to argv[1] ("out" or "err"): "y\n" lines, or "x" without newlines ("raw"). */
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int fd = argc > 1 && strcmp(argv[1], "err") == 0 ? 2 : 1;
    int raw = argc > 2 && strcmp(argv[2], "raw") == 0;
    static char buf[8192];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = raw ? 'x' : (i % 2 ? '\n' : 'y');
    for (;;)
        if (write(fd, buf, sizeof buf) < 0) return 1;
}
