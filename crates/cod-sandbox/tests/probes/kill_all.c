/* kill(-1, SIGKILL) with a child alive: report what kill returned and how the child ended. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void) {
    pid_t child = fork();
    if (child == 0) {
        for (;;) pause();
    }
    int rc = kill(-1, SIGKILL);
    printf("kill_rc=%d\nkill_errno=%d\n", rc, rc < 0 ? errno : 0);
    int status;
    if (waitpid(child, &status, 0) == child && WIFSIGNALED(status))
        printf("child_signal=%d\n", WTERMSIG(status));
    else
        printf("child_status=%d\n", status);
    printf("survived=1\n");
    return 0;
}
