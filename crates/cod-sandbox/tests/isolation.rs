//! Escape probes for the sandbox's isolation: network, host files and environment, writes
//! outside the work dir, signals to the outside, denied system calls, privileges, daemons
//! and the process view. Each test runs a probe from `tests/probes/` (or a stock program from
//! `/usr`) under the real jail and asserts the exact errno, signal or listing it reports, and
//! where it matters checks the host side afterwards.

mod common;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cod_core::Status;
use cod_sandbox::protocol::{self, Event, Request};
use cod_sandbox::{Exit, Jail};
use common::{Run, describe, field, fields, host_processes_with_uid, num};

/// Host uids of this binary's runs start here (see `common`).
const UID_BASE: u32 = 61_200;
/// Host uids of the jail that `host_environment_is_not_visible` starts in its child process.
const SECRET_UID_BASE: u32 = 61_400;

fn jail() -> &'static Jail {
    common::shared_jail(UID_BASE)
}

/// One slot per test, so that tests running at once never share one.
mod slot {
    pub(crate) const NET: u32 = 0;
    pub(crate) const PYTHON_TCP: u32 = 1;
    pub(crate) const HOST_FILES: u32 = 2;
    pub(crate) const WRITES: u32 = 3;
    pub(crate) const KILLER: u32 = 4;
    pub(crate) const BYSTANDER_RUN: u32 = 5;
    pub(crate) const SYSCALLS: u32 = 6;
    pub(crate) const IDENTITY: u32 = 7;
    pub(crate) const DAEMON: u32 = 8;
    pub(crate) const PROC_VIEW: u32 = 9;
    pub(crate) const LEFTOVERS: u32 = 10;
}

const EPERM: i64 = libc::EPERM as i64;

/// A host process killed and reaped when dropped, so that a failing test leaves none behind.
struct HostChild(Child);

impl Drop for HostChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn only_unix_sockets_and_a_downed_loopback() {
    // A listener on the host in the abstract AF_UNIX namespace, which belongs to the host's
    // network namespace: the program must not reach it although AF_UNIX is allowed.
    let name = format!("cod-test-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("a valid abstract name");
    let listener = UnixListener::bind_addr(&addr).expect("binding an abstract unix socket");
    listener.set_nonblocking(true).expect("non-blocking");

    let o = Run::probe(slot::NET, "net", &[&name]).run_on(jail());
    let d = describe(&o);
    assert_eq!(o.status(), Status::Ok, "{d}");
    // seccomp: every family but AF_UNIX is EPERM, for socket and socketpair alike.
    for key in [
        "inet_stream",
        "inet_dgram",
        "inet6_stream",
        "netlink",
        "packet",
        "inet_socketpair",
    ] {
        assert_eq!(num(&o, key), EPERM, "{key}: {d}");
    }
    assert_eq!(field(&o, "unix_stream"), "ok", "{d}");
    assert_eq!(field(&o, "unix_socketpair"), "ok", "{d}");
    assert_eq!(
        num(&o, "abstract_connect"),
        i64::from(libc::ECONNREFUSED),
        "{d}"
    );
    // The network namespace: only lo, down, no routes, no sockets of the host.
    assert_eq!(field(&o, "ifaces"), "lo,", "{d}");
    assert_eq!(num(&o, "lo_up"), 0, "{d}");
    assert_eq!(num(&o, "routes"), 0, "{d}");
    assert_eq!(num(&o, "tcp_sockets"), 0, "{d}");
    assert_eq!(num(&o, "tcp6_sockets"), 0, "{d}");
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == ErrorKind::WouldBlock),
        "nothing connected to the host's abstract socket"
    );
}

#[test]
fn python_cannot_connect_to_a_host_tcp_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    listener.set_nonblocking(true).expect("non-blocking");
    let port = listener.local_addr().expect("bound").port().to_string();
    let source = "import socket, sys\n\
                  try:\n    \
                      socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=2)\n    \
                      print('result=connected')\n\
                  except OSError as e:\n    \
                      print(f'result={type(e).__name__}')\n    \
                      print(f'errno={e.errno}')\n";
    let o = Run::python(slot::PYTHON_TCP, source, &[&port]).run_on(jail());
    let d = describe(&o);
    assert_eq!(o.status(), Status::Ok, "{d}");
    assert_eq!(field(&o, "result"), "PermissionError", "{d}");
    assert_eq!(num(&o, "errno"), EPERM, "{d}");
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == ErrorKind::WouldBlock),
        "nothing connected to the host's listener"
    );
}

#[test]
fn host_files_are_not_visible() {
    let paths = [
        "/etc/shadow",
        "/etc/ssh",
        "/root",
        "/home",
        "/work",
        "/var",
        "/sys",
        "/run",
        "/boot",
        "/srv",
        "/opt",
    ];
    let mut args = paths.to_vec();
    args.push("/etc/passwd");
    args.push("/proc/1/root/");
    let o = Run::probe(slot::HOST_FILES, "secrets", &args).run_on(jail());
    let d = describe(&o);
    assert_eq!(o.status(), Status::Ok, "{d}");
    for p in paths {
        assert_eq!(
            num(&o, &format!("stat:{p}")),
            i64::from(libc::ENOENT),
            "{p}: {d}"
        );
    }
    assert_eq!(field(&o, "stat:/etc/passwd"), "ok", "{d}");
    // The init is invisible in /proc (hidepid=invisible): its root, environment and
    // command line cannot even be looked up.
    assert_eq!(
        num(&o, "stat:/proc/1/root/"),
        i64::from(libc::ENOENT),
        "{d}"
    );
    // The whole root, /etc and /dev, exactly.
    assert_eq!(
        field(&o, "root"),
        "bin,box,dev,etc,lib,lib64,proc,tmp,usr",
        "{d}"
    );
    assert_eq!(field(&o, "etc"), "group,hostname,hosts,passwd", "{d}");
    assert_eq!(
        field(&o, "dev"),
        "fd,full,null,random,shm,stderr,stdin,stdout,urandom,zero",
        "{d}"
    );
}

/// Name of the variable `host_environment_is_not_visible` plants in its own environment.
const SECRET_VAR: &str = "COD_TEST_SECRET";

#[test]
fn host_environment_is_not_visible() {
    let Ok(secret) = std::env::var(SECRET_VAR) else {
        // Changing this process's environment would race with the other tests' threads, so
        // the test runs itself again in a child process that starts with the secret.
        let secret = format!("cod-secret-{}", std::process::id());
        let out = Command::new(std::env::current_exe().expect("the test binary's path"))
            .args(["--exact", "host_environment_is_not_visible", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(SECRET_VAR, &secret)
            .output()
            .expect("running the test binary again");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "the child test failed:\n{text}");
        assert!(
            text.contains(&format!(
                "checked the sandbox against {SECRET_VAR}={secret}"
            )),
            "the child test did not run its checks:\n{text}"
        );
        return;
    };
    assert!(!secret.is_empty());
    // This process has the secret; start a jail of its own from here.
    let jail = common::spawn_jail(SECRET_UID_BASE);
    let env = [
        "PATH=/usr/bin:/bin",
        "HOME=/box",
        "COD_GIVEN=given by the stage",
    ];
    let o = Run::probe(0, "secrets", &[]).env(&env).run_on(&jail);
    let d = describe(&o);
    assert_eq!(o.status(), Status::Ok, "{d}");
    let lines: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let values = |key: &str| -> Vec<String> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(key).map(str::to_owned))
            .collect()
    };
    // The program's environment is the stage's, exactly, seen either way.
    assert_eq!(values("environ="), env, "{d}");
    assert_eq!(values("procenv="), env, "{d}");
    assert!(!String::from_utf8_lossy(&o.stdout).contains(&secret), "{d}");
    // The init (another uid, invisible under hidepid) keeps its environment to itself.
    assert_eq!(num(&o, "init_environ"), i64::from(libc::ENOENT), "{d}");
    // On the host: the helper started with an empty environment.
    let helper = jail.helper_pid().expect("the helper runs");
    let helper_env = std::fs::read(format!("/proc/{helper}/environ")).expect("helper environ");
    assert!(
        helper_env.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&helper_env)
    );
    println!("checked the sandbox against {SECRET_VAR}={secret}");
}

#[test]
fn writes_outside_the_work_dir_fail_and_leave_no_trace() {
    let tag = format!("cod-escape-{}", std::process::id());
    let outside = ["/", "/usr", "/etc", "/bin", "/dev"];
    let inside = ["/box", "/tmp", "/dev/shm"];
    let path = |dir: &str| format!("{}/{tag}", dir.trim_end_matches('/'));
    let mut args: Vec<String> = outside.iter().chain(&inside).map(|d| path(d)).collect();
    args.push(format!("/proc/{tag}"));
    args.push("+/etc/passwd".into());
    args.push("+/usr/lib/os-release".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let jail = jail();
    let o = Run::probe(slot::WRITES, "write_outside", &argv).run_on(jail);
    let d = describe(&o);
    assert_eq!(o.status(), Status::Ok, "{d}");
    // The root, /etc, /dev and the binds are read-only mounts.
    for dir in outside {
        assert_eq!(num(&o, &path(dir)), i64::from(libc::EROFS), "{dir}: {d}");
    }
    // Existing files fail the permission check first: the program owns none of them.
    assert_eq!(num(&o, "/etc/passwd"), i64::from(libc::EACCES), "{d}");
    assert_eq!(
        num(&o, "/usr/lib/os-release"),
        i64::from(libc::EACCES),
        "{d}"
    );
    assert_eq!(num(&o, "mkdir:/newdir"), i64::from(libc::EROFS), "{d}");
    // procfs has no place for new files.
    assert_eq!(
        num(&o, &format!("/proc/{tag}")),
        i64::from(libc::ENOENT),
        "{d}"
    );
    for dir in inside {
        assert_eq!(field(&o, &path(dir)), "ok", "{dir}: {d}");
    }

    // Nothing of it is on the host: not where the paths point on the host, and not in the
    // helper's staging directories, whose mounts lived in the run's mount namespace only.
    for dir in outside.iter().chain(&inside) {
        let p = path(dir);
        assert!(!Path::new(&p).exists(), "{p} exists on the host");
    }
    let staging = std::env::temp_dir().join(format!(
        "cod-jail-{}",
        jail.helper_pid().expect("the helper runs")
    ));
    for sub in ["root", "scratch"] {
        let entries: Vec<_> = std::fs::read_dir(staging.join(sub))
            .expect("the staging directory exists")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(entries.is_empty(), "{sub}: {entries:?}");
    }
}

#[test]
fn kill_minus_one_reaches_only_the_run() {
    let jail = jail();
    // A host process with the very uid the killer's program has on the host.
    let program_uid = UID_BASE + slot::KILLER;
    let bystander = HostChild(
        Command::new("/usr/bin/sleep")
            .arg("60")
            .uid(program_uid)
            .gid(program_uid)
            .spawn()
            .expect("starting a host process as the slot's uid"),
    );
    // A run in another slot, running (its stage has started) before the killer starts.
    let survivor = Run::cmd(
        slot::BYSTANDER_RUN,
        &["/bin/sh", "-c", "sleep 1; echo survived"],
    );
    let mut sock = jail.connect(survivor.spec.slot).expect("opening a run");
    protocol::write_frame(&mut sock, &Request::Run(Box::new(survivor.spec.clone())))
        .expect("sending the spec");
    let started = match protocol::read_frame::<Event>(&mut sock).expect("an event") {
        Some(Event::StageStarted(0)) => Instant::now(),
        other => panic!("expected the stage to start, got {other:?}"),
    };

    let o = Run::probe(slot::KILLER, "kill_all", &[]).run_on(jail);
    let killer_done = started.elapsed();
    let d = describe(&o);
    // kill(-1) from inside reaches the program's own child (the caller itself is spared by
    // Linux), and nothing else.
    assert_eq!(o.status(), Status::Ok, "{d}");
    assert_eq!(num(&o, "kill_rc"), 0, "{d}");
    assert_eq!(num(&o, "child_signal"), i64::from(libc::SIGKILL), "{d}");
    assert_eq!(field(&o, "survived"), "1", "{d}");

    // (Usage reports come every 250 ms while it runs.)
    let other = loop {
        match protocol::read_frame::<Event>(&mut sock).expect("an event") {
            Some(Event::Usage { .. }) => {}
            Some(Event::Finished(Ok(mut out))) if out.stages.len() == 1 => {
                break out.stages.remove(0);
            }
            other => panic!("expected the other run's outcome, got {other:?}"),
        }
    };
    let od = describe(&other);
    assert_eq!(other.status(), Status::Ok, "{od}");
    assert_eq!(other.stdout, b"survived\n", "{od}");
    // It was running during the whole of the killer's run.
    assert!(
        other.wall > killer_done,
        "{od}\nkiller done after {killer_done:?}"
    );

    let mut bystander = bystander;
    assert!(
        matches!(bystander.0.try_wait(), Ok(None)),
        "the host process with the program's uid was killed"
    );
}

#[test]
fn denied_syscalls_fail_with_eperm() {
    let o = Run::probe(slot::SYSCALLS, "syscalls", &[]).run_on(jail());
    let d = describe(&o);
    assert_eq!(o.status(), Status::Ok, "{d}");
    let got = fields(&o);
    let mut expected: BTreeMap<String, String> = [
        "ptrace_traceme",
        "mount",
        "umount2",
        "chroot",
        "pivot_root",
        "unshare_user",
        "unshare_net",
        "bpf",
        "keyctl",
        "add_key",
        "perf_event_open",
        "setns",
        "clone_newnet",
        "clone_newuser",
        "io_uring_setup",
        "userfaultfd",
        "init_module",
        "kexec_load",
        "clock_settime",
        "sethostname",
        "x32_getpid",
    ]
    .into_iter()
    .map(|k| (k.to_owned(), libc::EPERM.to_string()))
    .collect();
    // clone3's flags are out of BPF's reach, so it is ENOSYS and libc falls back to clone.
    expected.insert("clone3".into(), libc::ENOSYS.to_string());
    // What must keep working.
    expected.insert("clone_plain".into(), "ok".into());
    expected.insert("getpid".into(), "ok".into());
    assert_eq!(got, expected, "{d}");
}

#[test]
fn program_has_no_capabilities_and_the_sandbox_identity() {
    let script = "id -u; id -g; id -G; hostname; cat /proc/self/status";
    let o = Run::cmd(slot::IDENTITY, &["/bin/sh", "-c", script]).run_on(jail());
    let d = describe(&o);
    assert_eq!(o.status(), Status::Ok, "{d}");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..4], ["1000", "1000", "1000", "cod"], "{d}");
    let status: BTreeMap<&str, &str> = lines[4..]
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k, v.trim()))
        .collect();
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status.get(cap), Some(&"0000000000000000"), "{cap}: {d}");
    }
    assert_eq!(status.get("NoNewPrivs"), Some(&"1"), "{d}");
    assert_eq!(status.get("Seccomp"), Some(&"2"), "{d}");
    assert_eq!(status.get("Uid"), Some(&"1000\t1000\t1000\t1000"), "{d}");
    assert_eq!(status.get("Gid"), Some(&"1000\t1000\t1000\t1000"), "{d}");
    assert_eq!(status.get("Groups"), Some(&""), "{d}");
}

#[test]
fn double_forked_daemon_dies_with_the_run() {
    let o = Run::probe(slot::DAEMON, "daemon", &[]).run_on(jail());
    let d = describe(&o);
    // The daemon keeps stdout open and sleeps forever, yet the run ends when main exits.
    assert_eq!(o.status(), Status::Ok, "{d}");
    assert_eq!(o.exit, Exit::Code(0), "{d}");
    assert_eq!(field(&o, "main"), "exit", "{d}");
    assert!(num(&o, "daemon_pid") > 2, "the daemon ran: {d}");
    assert!(o.wall < Duration::from_secs(3), "{d}");
    // And on the host no process of the run is left. Under the slot's init uid there may be
    // only the sandbox prepared for the slot's next run.
    let (program, init) = (
        UID_BASE + slot::DAEMON,
        UID_BASE + common::SLOTS + slot::DAEMON,
    );
    assert_eq!(host_processes_with_uid(program..program + 1), vec![], "{d}");
    if let Err(left) = common::only_a_prepared_sandbox(init) {
        panic!("{left:?}: {d}");
    }
}

#[test]
fn proc_shows_only_the_runs_processes() {
    let o = Run::probe(slot::PROC_VIEW, "proc_view", &[]).run_on(jail());
    let d = describe(&o);
    assert_eq!(o.status(), Status::Ok, "{d}");
    // pid 1 is the run's init; the program is its first child. /proc is mounted with
    // hidepid=invisible, so the init (another uid, whose command line names cod's host
    // path) is not listed at all.
    assert_eq!(num(&o, "pid"), 2, "{d}");
    assert_eq!(num(&o, "ppid"), 1, "{d}");
    assert_eq!(field(&o, "procs"), "2", "{d}");
}

#[test]
fn next_run_in_the_slot_sees_nothing_of_the_previous() {
    const KEY: &str = "6516580"; // 0x636f64, the probe's System V IPC key, in decimal
    let first = Run::probe(slot::LEFTOVERS, "leftovers", &["leave"]).run_on(jail());
    let d = describe(&first);
    assert_eq!(first.status(), Status::Ok, "{d}");
    for key in ["/box/left", "/tmp/left", "/dev/shm/left", "shm", "msg"] {
        assert_eq!(field(&first, key), "ok", "{key} was created: {d}");
    }
    // The IPC objects lived in the run's IPC namespace, not the host's.
    for table in ["/proc/sysvipc/shm", "/proc/sysvipc/msg"] {
        let text = std::fs::read_to_string(table).expect("the host's IPC table");
        let keys: Vec<&str> = text
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(
            !keys.contains(&KEY),
            "{table} on the host has the run's key"
        );
    }

    let second = Run::probe(slot::LEFTOVERS, "leftovers", &["look"]).run_on(jail());
    let d = describe(&second);
    assert_eq!(second.status(), Status::Ok, "{d}");
    for key in ["/box/left", "/tmp/left", "/dev/shm/left", "shm", "msg"] {
        assert_eq!(
            num(&second, key),
            i64::from(libc::ENOENT),
            "{key} survived: {d}"
        );
    }
}
