/* Spin until this process has used argv[1] ms of CPU time, report, exit. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    long ms = argc > 1 ? atol(argv[1]) : 0;
    volatile unsigned long x = 0;
    struct timespec t;
    do {
        for (int i = 0; i < 100000; i++) x++;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    } while (t.tv_sec * 1000 + t.tv_nsec / 1000000 < ms);
    printf("burned_ms=%ld\n", (long)(t.tv_sec * 1000 + t.tv_nsec / 1000000));
    return 0;
}
