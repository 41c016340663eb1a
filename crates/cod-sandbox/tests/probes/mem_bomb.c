/* Memory bomb: allocate and touch 1 MiB at a time, forever. */
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    for (size_t mib = 0;; mib++) {
        /* volatile: the compiler must not drop stores it never sees read back */
        volatile char *p = malloc(1 << 20);
        if (!p) {
            printf("malloc_failed_at_mib=%zu\n", mib);
            return 1;
        }
        for (size_t i = 0; i < 1 << 20; i += 4096) p[i] = 1;
    }
}
