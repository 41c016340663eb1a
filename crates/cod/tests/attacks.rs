//! Hostile programs through the HTTP API. Each gets its specific verdict; while it runs, a
//! second, innocent run on the other worker must finish correctly, and afterwards the
//! server still answers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::net::TcpListener;
use std::time::Duration;

use axum::http::StatusCode;
use cod_core::limits::{LimitsPolicy, LimitsSpec};
use cod_server::AppState;
use common::*;
use serde_json::{Value, json};

/// Tighter compile limits than the defaults, so compiler bombs end quickly.
fn policy() -> LimitsPolicy {
    LimitsPolicy {
        compile: LimitsSpec {
            cpu_ms: 4_000,
            wall_ms: 8_000,
            memory_mb: 512,
            ..LimitsSpec::COMPILE
        },
        ..LimitsPolicy::default()
    }
}

fn attack_state(uid_base: u32) -> AppState {
    state_on(jail_with(2, uid_base), 2, 8, 1 << 20, policy())
}

const CANARY: &str = "print(sum(i * i for i in range(200000)))";
const CANARY_OUT: &str = "2666646666700000\n";

/// Runs the attack and, at the same time, a canary; checks the canary and the server.
async fn attack(st: &AppState, lang: &str, source: &str, extra: Value) -> Value {
    let (hostile, canary) = tokio::join!(
        run(st, lang, source, extra),
        run(st, "python", CANARY, json!({}))
    );
    assert_eq!(
        canary["status"], "ok",
        "the innocent run was disturbed: {canary:#}"
    );
    assert_eq!(canary["stdout"], CANARY_OUT);
    let h = get(st, "/healthz").await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.json["status"], "ok");
    hostile
}

fn assert_verdict(v: &Value, status: &str, reason: Option<&str>) {
    assert_eq!(v["status"], status, "{v:#}");
    if let Some(r) = reason {
        assert_eq!(v["reason"], r, "{v:#}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fork_bomb_is_contained() {
    let st = attack_state(61_100);
    let v = attack(&st, "c", r#"
#include <stdio.h>
#include <unistd.h>
#include <errno.h>
#include <string.h>
int main(void) {
    int made = 0;
    for (int i = 0; i < 100000; i++) {
        pid_t p = fork();
        if (p == 0) { pause(); _exit(0); }
        if (p < 0) { printf("fork failed after %d: %s\n", made, strerror(errno)); fflush(stdout); break; }
        made++;
    }
    return 0;
}"#, json!({"limits": {"processes": 32, "wall_ms": 5000}})).await;
    assert_verdict(&v, "ok", None);
    let out = v["stdout"].as_str().unwrap();
    assert!(out.contains("Resource temporarily unavailable"), "{out}");
    let made: u32 = out
        .split_whitespace()
        .nth(3)
        .unwrap()
        .trim_end_matches(':')
        .parse()
        .unwrap();
    assert!(made < 32, "more processes than the limit: {made}");
    assert!(
        processes_of(61_100..61_102).is_empty(),
        "the bomb's processes outlived the run"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn classic_fork_bomb_ends_by_its_limits() {
    let st = attack_state(61_200);
    let v = attack(
        &st,
        "bash",
        ":(){ :|:& };:\nwait",
        json!({"limits": {"processes": 32, "wall_ms": 2000, "cpu_ms": 1000}}),
    )
    .await;
    assert!(
        matches!(
            v["status"].as_str(),
            Some("time_limit" | "runtime_error" | "ok")
        ),
        "{v:#}"
    );
    assert!(v["wall_ms"].as_u64().unwrap() < 4000, "{v:#}");
    assert!(
        processes_of(61_200..61_202).is_empty(),
        "the bomb's processes outlived the run"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn thread_bomb_is_limited_by_processes() {
    let st = attack_state(61_300);
    let v = attack(
        &st,
        "c",
        r#"
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static void *sleeper(void *a) { (void)a; pause(); return 0; }
int main(void) {
    int n = 0;
    for (;;) {
        pthread_t t;
        int e = pthread_create(&t, 0, sleeper, 0);
        if (e) { printf("threads %d %s\n", n, strerror(e)); return 0; }
        n++;
    }
}"#,
        json!({"limits": {"processes": 20}}),
    )
    .await;
    assert_verdict(&v, "ok", None);
    let out = v["stdout"].as_str().unwrap();
    assert!(out.contains("Resource temporarily unavailable"), "{out}");
    let n: u32 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(n < 20, "{n} threads with a limit of 20");
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_bombs_get_memory_limit() {
    let st = attack_state(61_400);
    let c = attack(&st, "c", r#"
#include <stdlib.h>
#include <string.h>
int main(void) { for (;;) { char *p = malloc(1 << 20); if (!p) return 3; memset(p, 1, 1 << 20); } }"#,
        json!({"limits": {"memory_mb": 64}})).await;
    assert_verdict(&c, "memory_limit", Some("memory"));
    assert_eq!(c["signal"], "SIGKILL");
    assert!(c["memory_kb"].as_u64().unwrap() >= 50 * 1024, "{c:#}");
    assert!(c["message"].as_str().unwrap().contains("64 MiB"));
    let py = attack(
        &st,
        "python",
        "a = []\nwhile True:\n    a.append(bytearray(1 << 20))",
        json!({"limits": {"memory_mb": 64}}),
    )
    .await;
    assert_verdict(&py, "memory_limit", Some("memory"));
}

#[tokio::test(flavor = "multi_thread")]
async fn cpu_loop_gets_cpu_time_limit() {
    let st = attack_state(61_500);
    let v = attack(
        &st,
        "c",
        "int main(void){ volatile unsigned long x = 0; for (;;) x++; }",
        json!({"limits": {"cpu_ms": 500, "wall_ms": 10000}}),
    )
    .await;
    assert_verdict(&v, "time_limit", Some("cpu"));
    let cpu = v["cpu_ms"].as_u64().unwrap();
    assert!((500..2000).contains(&cpu), "cpu {cpu}");
    assert!(v["wall_ms"].as_u64().unwrap() < 5000, "{v:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sleep_forever_gets_wall_time_limit() {
    let st = attack_state(61_600);
    let v = attack(
        &st,
        "python",
        "import time\ntime.sleep(10**6)",
        json!({"limits": {"wall_ms": 700}}),
    )
    .await;
    assert_verdict(&v, "time_limit", Some("wall"));
    let wall = v["wall_ms"].as_u64().unwrap();
    assert!((700..3000).contains(&wall), "wall {wall}");
    assert!(v["cpu_ms"].as_u64().unwrap() < 500);
}

#[tokio::test(flavor = "multi_thread")]
async fn output_floods_are_cut_and_stopped() {
    let st = attack_state(61_700);
    for (name, src, stream) in [
        (
            "lines",
            "while True:\n    print('spam spam spam')",
            "stdout",
        ),
        (
            "no newlines",
            "import sys\nwhile True:\n    sys.stdout.write('x' * 4096)",
            "stdout",
        ),
        (
            "stderr",
            "import sys\nwhile True:\n    sys.stderr.write('e' * 4096)",
            "stderr",
        ),
    ] {
        let v = attack(
            &st,
            "python",
            src,
            json!({"limits": {"output_kb": 64, "wall_ms": 10000}}),
        )
        .await;
        assert_verdict(&v, "output_limit", Some("output"));
        assert_eq!(v[stream].as_str().unwrap().len(), 64 * 1024, "{name}");
        assert_eq!(v[format!("{stream}_truncated")], true, "{name}");
        assert!(v["wall_ms"].as_u64().unwrap() < 5000, "{name}: {v:#}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn disk_fill_stops_at_the_disk_limit() {
    let st = attack_state(61_800);
    let v = attack(
        &st,
        "python",
        r#"
import os
for path in ("/box/big", "/tmp/big"):
    n = 0
    try:
        with open(path, "wb") as f:
            while True:
                f.write(b"\0" * (1 << 20)); f.flush(); n += 1
    except OSError as e:
        print(path, n, e.errno)
    os.unlink(path)
"#,
        json!({"limits": {"disk_mb": 16, "memory_mb": 256}}),
    )
    .await;
    assert_verdict(&v, "ok", None);
    for line in v["stdout"].as_str().unwrap().lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let mib: u64 = parts[1].parse().unwrap();
        assert!(mib <= 16, "{line}");
        assert!(
            parts[2] == "28" || parts[2] == "27",
            "ENOSPC or EFBIG expected: {line}"
        );
    }
    assert_eq!(v["stdout"].as_str().unwrap().lines().count(), 2, "{v:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn network_is_unreachable_even_to_the_servers_own_port() {
    let st = attack_state(61_900);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let v = attack(
        &st,
        "python",
        &format!(
            r#"
import socket
for fam, addr in ((socket.AF_INET, ("127.0.0.1", {port})), (socket.AF_INET6, ("::1", {port}))):
    try:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(2)
        s.connect(addr)
        print("connected")
    except OSError as e:
        print(type(e).__name__, e.errno)
print(open("/proc/net/dev").read().count(":"))
"#
        ),
        json!({}),
    )
    .await;
    assert_verdict(&v, "ok", None);
    assert_eq!(
        v["stdout"], "PermissionError 1\nPermissionError 1\n1\n",
        "{v:#}"
    );
    assert!(
        listener.accept().is_err(),
        "nothing may reach the host's loopback"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn host_secrets_and_environment_are_invisible() {
    // (That the server's own environment stays outside is checked against a real `cod
    // serve` process started with a secret in its environment, in tests/serve.rs.)
    let st = attack_state(62_000);
    let v = attack(&st, "python", r#"
import os, json
seen = {}
for p in ("/etc/shadow", "/root", "/home", "/work", "/var", "/etc/ssh", "/run", "/sys"):
    seen[p] = os.path.exists(p)
seen["env_secret"] = any("COD_TEST_SECRET" in k or "hunter2" in v for k, v in os.environ.items())
seen["proc1_environ"] = open("/proc/1/environ", "rb").read().decode(errors="replace") if os.access("/proc/1/environ", os.R_OK) else None
seen["env"] = sorted(os.environ)
seen["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
print(json.dumps(seen))
"#, json!({})).await;
    assert_verdict(&v, "ok", None);
    let seen: Value = serde_json::from_str(v["stdout"].as_str().unwrap()).unwrap();
    for p in [
        "/etc/shadow",
        "/root",
        "/home",
        "/work",
        "/var",
        "/etc/ssh",
        "/run",
        "/sys",
    ] {
        assert_eq!(seen[p], false, "{p} is visible inside the sandbox");
    }
    assert_eq!(seen["env_secret"], false);
    assert!(
        seen["proc1_environ"].is_null()
            || !seen["proc1_environ"].as_str().unwrap().contains("hunter2")
    );
    let env: Vec<&str> = seen["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    for k in &env {
        assert!(
            [
                "PATH",
                "HOME",
                "USER",
                "LOGNAME",
                "LANG",
                "LC_ALL",
                "TMPDIR",
                "TERM",
                "PYTHONIOENCODING",
                "LC_CTYPE"
            ]
            .contains(k),
            "unexpected variable {k} in {env:?}"
        );
    }
    // Only the run's own processes: its init and the program.
    assert!(seen["pids"].as_array().unwrap().len() <= 3, "{seen}");
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_outside_the_work_dir_fail_and_nothing_persists() {
    let st = attack_state(62_100);
    let marker = format!("cod-attack-{}", std::process::id());
    let v = attack(
        &st,
        "python",
        &format!(
            r#"
import os
for d in ("/", "/usr", "/etc", "/bin", "/dev", "/proc", "/usr/lib", "/box", "/tmp", "/dev/shm"):
    try:
        with open(os.path.join(d, "{marker}"), "w") as f:
            f.write("x")
        print(d, "ok")
    except OSError as e:
        print(d, e.errno)
"#
        ),
        json!({}),
    )
    .await;
    assert_verdict(&v, "ok", None);
    let out = v["stdout"].as_str().unwrap();
    for line in out.lines() {
        let (dir, res) = line.split_once(' ').unwrap();
        let writable = ["/box", "/tmp", "/dev/shm"].contains(&dir);
        if writable {
            assert_eq!(res, "ok", "{line}");
        } else if dir == "/proc" {
            assert_eq!(res, "2", "procfs has no room for files: {line}");
        } else {
            assert!(
                res == "30" || res == "13",
                "{dir} should be read-only (EROFS/EACCES): {line}"
            );
        }
    }
    for d in ["/tmp", "/", "/dev/shm", "/usr"] {
        assert!(
            !std::path::Path::new(d).join(&marker).exists(),
            "{d}/{marker} leaked to the host"
        );
    }
    // A second run does not see the first one's files.
    let again = run(
        &st,
        "python",
        &format!(
            "import os\nprint(os.path.exists('/box/{marker}'), os.path.exists('/tmp/{marker}'))"
        ),
        json!({}),
    )
    .await;
    assert_eq!(again["stdout"], "False False\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_all_signal_hits_only_the_run() {
    let st = attack_state(62_200);
    // kill(-1) reaches every process the caller may signal except itself and init: here,
    // only its own child. The init (another uid) cannot be signalled at all.
    let v = attack(
        &st,
        "c",
        r#"
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    pid_t child = fork();
    if (child == 0) { pause(); _exit(0); }
    int rc = kill(-1, SIGKILL);
    int status = 0;
    waitpid(child, &status, 0);
    printf("kill(-1) %d child signal %d\n", rc, WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    rc = kill(1, SIGKILL);
    printf("kill(1) %d errno %d\n", rc, errno);
    return 0;
}"#,
        json!({}),
    )
    .await;
    assert_verdict(&v, "ok", None);
    assert_eq!(
        v["stdout"], "kill(-1) 0 child signal 9\nkill(1) -1 errno 1\n",
        "{v:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dangerous_syscalls_fail_with_eperm() {
    let st = attack_state(62_300);
    let v = attack(&st, "c", r#"
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/perf_event.h>
#include <string.h>
static void show(const char *name, long rc) { printf("%s %ld %d\n", name, rc, rc < 0 ? errno : 0); }
int main(void) {
    show("ptrace", ptrace(PTRACE_TRACEME, 0, 0, 0));
    show("mount", mount("tmpfs", "/tmp", "tmpfs", 0, 0));
    show("unshare", unshare(CLONE_NEWUSER));
    show("bpf", syscall(SYS_bpf, 0, 0, 0));
    show("keyctl", syscall(SYS_keyctl, 0, -3, 0));
    struct perf_event_attr a; memset(&a, 0, sizeof a); a.size = sizeof a; a.type = PERF_TYPE_SOFTWARE; a.config = PERF_COUNT_SW_CPU_CLOCK;
    show("perf_event_open", syscall(SYS_perf_event_open, &a, 0, -1, -1, 0));
    show("setns", syscall(SYS_setns, 0, 0));
    show("reboot", syscall(SYS_reboot, 0, 0, 0, 0));
    show("socket_inet", syscall(SYS_socket, 2, 1, 0));
    return 0;
}"#, json!({})).await;
    assert_verdict(&v, "ok", None);
    for line in v["stdout"].as_str().unwrap().lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            &parts[1..],
            ["-1", "1"],
            "{} must fail with EPERM: {line}",
            parts[0]
        );
    }
    assert_eq!(v["stdout"].as_str().unwrap().lines().count(), 9);
}

#[tokio::test(flavor = "multi_thread")]
async fn fd_exhaustion_is_bounded() {
    let st = attack_state(62_400);
    let v = attack(
        &st,
        "python",
        r#"
import os
fds = []
try:
    while True:
        fds.append(os.open("/dev/null", os.O_RDONLY))
except OSError as e:
    print(len(fds), e.errno)
"#,
        json!({}),
    )
    .await;
    assert_verdict(&v, "ok", None);
    let out = v["stdout"].as_str().unwrap();
    let parts: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(parts[1], "24", "EMFILE expected: {out}");
    assert!(parts[0].parse::<u32>().unwrap() < 256);
}

#[tokio::test(flavor = "multi_thread")]
async fn double_fork_daemon_dies_with_its_run() {
    let uid_base = 62_500;
    let st = attack_state(uid_base);
    let v = attack(
        &st,
        "python",
        r#"
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        while True:
            time.sleep(0.01)
    os._exit(0)
print("parent done")
"#,
        json!({"limits": {"wall_ms": 10000}}),
    )
    .await;
    assert_verdict(&v, "ok", None);
    assert_eq!(v["stdout"], "parent done\n");
    assert!(
        v["wall_ms"].as_u64().unwrap() < 5000,
        "the run waited for its daemon: {v:#}"
    );
    assert!(
        processes_of(uid_base..uid_base + 2).is_empty(),
        "the daemon survived its run"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deep_recursion_and_crashes_are_runtime_errors() {
    let st = attack_state(62_600);
    let c = attack(&st, "c", "int f(int n) { volatile char pad[256]; pad[0] = n; return f(n + 1) + pad[0]; }\nint main(void) { return f(0); }", json!({})).await;
    assert_verdict(&c, "runtime_error", None);
    assert_eq!(c["signal"], "SIGSEGV");
    let py = attack(
        &st,
        "python",
        "def f(n):\n    return f(n + 1)\nf(0)",
        json!({}),
    )
    .await;
    assert_verdict(&py, "runtime_error", None);
    assert!(py["stderr"].as_str().unwrap().contains("RecursionError"));
    let segv = attack(
        &st,
        "c",
        "int main(void) { *(volatile int *)0 = 1; return 0; }",
        json!({}),
    )
    .await;
    assert_verdict(&segv, "runtime_error", None);
    assert_eq!(segv["signal"], "SIGSEGV");
    assert_eq!(segv["exit_code"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn compiler_bombs_end_as_compile_errors() {
    let st = attack_state(62_700);
    let zero = attack(
        &st,
        "c",
        "#include \"/dev/zero\"\nint main(void){return 0;}",
        json!({}),
    )
    .await;
    assert_verdict(&zero, "compile_error", None);
    assert!(
        matches!(
            zero["compile"]["status"].as_str(),
            Some("time_limit" | "memory_limit" | "output_limit" | "runtime_error")
        ),
        "{zero:#}"
    );
    assert!(zero["compile"]["wall_ms"].as_u64().unwrap() < 15_000);

    let shadow = attack(
        &st,
        "c",
        "#include \"/etc/shadow\"\nint main(void){return 0;}",
        json!({}),
    )
    .await;
    assert_verdict(&shadow, "compile_error", None);
    let err = shadow["compile"]["stderr"].as_str().unwrap();
    assert!(err.contains("No such file"), "{err}");
    assert!(
        !err.contains("root:"),
        "host secrets leaked through the compiler"
    );

    let spam = attack(&st, "cpp", "template<int N> struct F { static const int v = F<N-1>::v + F<N-2>::v; };\nint main() { return F<100000>::v; }", json!({})).await;
    assert_verdict(&spam, "compile_error", None);
}

#[tokio::test(flavor = "multi_thread")]
async fn many_runs_leave_no_processes_behind() {
    let uid_base = 62_800;
    let st = state_on(jail_with(2, uid_base), 2, 32, 1 << 20, policy());
    let daemon = "import os\nif os.fork() == 0:\n    os.setsid()\n    import time\n    time.sleep(1000)\nprint('x')";
    let mut handles = Vec::new();
    for i in 0..20 {
        let st = st.clone();
        handles.push(tokio::spawn(async move {
            let src = if i % 2 == 0 { daemon } else { "print('x')" };
            run(&st, "python", src, json!({})).await
        }));
    }
    for h in handles {
        let v = tokio::time::timeout(Duration::from_secs(60), h)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v["stdout"], "x\n", "{v:#}");
    }
    // No program is left (uid_base + slot); the slots' sandboxes prepared for their next
    // runs (an idle init and the process it forked ahead) are under the other uids
    // (uid_base + slots + slot).
    assert!(processes_of(uid_base..uid_base + 2).is_empty());
}
