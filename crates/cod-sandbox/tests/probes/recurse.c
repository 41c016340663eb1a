/* Unbounded recursion, 1 KiB of stack per frame. */
#include <stdio.h>

static int down(int n) {
    volatile char frame[1024];
    if (n < 0) return 0; /* never: the stack runs out first */
    frame[0] = (char)n;
    return down(n + 1) + frame[0];
}

int main(void) {
    printf("result=%d\n", down(0));
    return 0;
}
