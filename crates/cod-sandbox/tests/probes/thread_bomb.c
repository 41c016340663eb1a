/* Thread bomb: create threads that wait forever until pthread_create fails; report. */
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

static void *idle(void *arg) {
    (void)arg;
    for (;;) pause();
    return NULL;
}

int main(void) {
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 64 * 1024);
    int threads = 0;
    for (;;) {
        pthread_t t;
        int err = pthread_create(&t, &a, idle, NULL);
        if (err) {
            printf("thread_err=%d\nthreads=%d\n", err, threads);
            return 0;
        }
        threads++;
    }
}
