/* Calls the seccomp policy denies, each with arguments that would otherwise succeed or fail
 * differently where possible. Prints "name=<errno>" for a failure and "name=ok" otherwise. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/perf_event.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void report(const char *name, long rc) {
    if (rc < 0) printf("%s=%d\n", name, errno);
    else printf("%s=ok\n", name);
}

int main(void) {
    report("ptrace_traceme", ptrace(PTRACE_TRACEME, 0, 0, 0));
    report("mount", mount("none", "/tmp", "tmpfs", 0, NULL));
    report("umount2", umount2("/tmp", MNT_DETACH));
    report("chroot", chroot("/tmp"));
    report("pivot_root", syscall(SYS_pivot_root, "/tmp", "/tmp"));
    report("unshare_user", unshare(CLONE_NEWUSER));
    report("unshare_net", unshare(CLONE_NEWNET));
    /* BPF_MAP_CREATE with a zeroed attribute: EINVAL without the filter. */
    char attr[128];
    memset(attr, 0, sizeof attr);
    report("bpf", syscall(SYS_bpf, 0, attr, sizeof attr));
    /* KEYCTL_GET_KEYRING_ID of the session keyring: succeeds without the filter. */
    report("keyctl", syscall(SYS_keyctl, 0, -3, 0));
    report("add_key", syscall(SYS_add_key, "user", "cod", "x", 1, -3));
    struct perf_event_attr pe;
    memset(&pe, 0, sizeof pe);
    pe.type = PERF_TYPE_SOFTWARE;
    pe.size = sizeof pe;
    pe.config = PERF_COUNT_SW_TASK_CLOCK;
    pe.exclude_kernel = 1;
    report("perf_event_open", syscall(SYS_perf_event_open, &pe, 0, -1, -1, 0));
    int ns = open("/proc/self/ns/uts", O_RDONLY);
    report("setns", setns(ns, 0));
    long pid = syscall(SYS_clone, CLONE_NEWNET | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid(pid, NULL, 0);
    report("clone_newnet", pid);
    pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid(pid, NULL, 0);
    report("clone_newuser", pid);
    pid = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid(pid, NULL, 0);
    report("clone_plain", pid);
    struct io_uring_params up;
    memset(&up, 0, sizeof up);
    report("io_uring_setup", syscall(SYS_io_uring_setup, 1, &up));
    report("clone3", syscall(SYS_clone3, NULL, 0));
    report("userfaultfd", syscall(SYS_userfaultfd, 0));
    report("init_module", syscall(SYS_init_module, NULL, 0, ""));
    report("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
    struct timespec ts = {0, 0};
    report("clock_settime", clock_settime(CLOCK_REALTIME, &ts));
    report("sethostname", sethostname("evil", 4));
    report("x32_getpid", syscall(0x40000000 | SYS_getpid));
    report("getpid", syscall(SYS_getpid));
    return 0;
}
