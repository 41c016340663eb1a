/* Who this process is, and which processes /proc shows. */
#include <ctype.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int cmp(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

int main(void) {
    printf("pid=%d\nppid=%d\n", getpid(), getppid());
    int pids[4096], n = 0;
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d && (e = readdir(d)) && n < 4096)
        if (isdigit((unsigned char)e->d_name[0])) pids[n++] = atoi(e->d_name);
    if (d) closedir(d);
    qsort(pids, n, sizeof *pids, cmp);
    printf("procs=");
    for (int i = 0; i < n; i++) printf(i ? ",%d" : "%d", pids[i]);
    printf("\n");
    return 0;
}
