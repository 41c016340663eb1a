/* Allocate and touch argv[1] MiB, report, exit. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 0;
    /* volatile: the compiler must not drop stores it never sees read back */
    volatile char *p = malloc(mib << 20);
    if (!p) {
        printf("malloc_failed=1\n");
        return 1;
    }
    for (size_t i = 0; i < mib << 20; i += 4096) p[i] = 1;
    printf("touched_mib=%zu\n", mib);
    return 0;
}
