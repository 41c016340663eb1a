//! Warm runtimes: a slot's zygote runs Python programs without exec or start-up, and
//! nothing of one run reaches the next.

mod common;

use std::time::{Duration, Instant};

use cod_core::Status;
use cod_sandbox::{
    FileEntry, Jail, JailConfig, SandboxOutcome, StageOutcome, WarmKind, WarmRuntime,
};
use common::{
    ENV, Run, alive, blocked_in, describe, error_chain, helper, host_processes_with_uid, layout,
    stat_fields,
};

const UID_BASE: u32 = 63_000;
const PYTHON: &str = "/usr/bin/python3";

fn libpython() -> String {
    let out = std::process::Command::new(PYTHON)
        .args(["-c", "import sysconfig, os; print(os.path.join(sysconfig.get_config_var('LIBDIR'), sysconfig.get_config_var('INSTSONAME')))"])
        .output()
        .expect("python3 runs");
    String::from_utf8(out.stdout)
        .expect("a UTF-8 path")
        .trim()
        .to_owned()
}

fn runtime() -> WarmRuntime {
    WarmRuntime {
        name: "python".into(),
        layout: layout(),
        env: ENV.iter().map(|s| (*s).to_owned()).collect(),
        kind: WarmKind::Python {
            library: libpython().into(),
            program: PYTHON.into(),
            // `WARM_PRELOAD` (comma-separated) replaces the list, for the throughput runs.
            preload: std::env::var("WARM_PRELOAD").map_or_else(
                |_| vec!["random".into(), "collections".into()],
                |v| {
                    v.split(',')
                        .filter(|m| !m.is_empty())
                        .map(str::to_owned)
                        .collect()
                },
            ),
        },
    }
}

/// A jail whose slots `slots` keep Python warm.
fn warm_jail(uid_base: u32, slots: &[u32]) -> Jail {
    let config = JailConfig {
        slots: common::SLOTS,
        uid_base,
        prepared: Some(layout()),
        warm: vec![runtime()],
        ..Default::default()
    };
    let jail = Jail::spawn(helper(), &[], &config)
        .unwrap_or_else(|e| panic!("the jail did not start: {}", error_chain(&e)));
    for &s in slots {
        jail.set_warm(s, 1).expect("the warm mask is set");
    }
    jail
}

/// `python3 main.py args` with `source` as main.py, allowed to run warm.
fn script(slot: u32, source: &str, args: &[&str]) -> Run {
    let mut argv = vec![PYTHON, "main.py"];
    argv.extend_from_slice(args);
    let mut run = Run::cmd(slot, &argv);
    run.spec.files.push(FileEntry {
        name: "main.py".into(),
        content: source.as_bytes().to_vec(),
        executable: false,
    });
    run.spec.stages[0].warm = Some("python".into());
    run
}

fn run_full(jail: &Jail, run: &Run) -> SandboxOutcome {
    match jail.run(&run.spec) {
        Ok(o) => o,
        Err(e) => panic!("the sandbox failed: {}", error_chain(&e)),
    }
}

/// Runs `run` until the slot's zygote takes it (it starts in the background); every run,
/// warm or not, must succeed.
fn run_warm(jail: &Jail, run: &Run) -> StageOutcome {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = run_full(jail, run);
        let warm = o.warm.is_some();
        let stage = o.stages.into_iter().next().expect("one stage");
        if warm {
            return stage;
        }
        assert!(
            Instant::now() < deadline,
            "the zygote never took a run: {}",
            describe(&stage)
        );
    }
}

#[test]
fn a_warm_run_behaves_like_python3_main_py() {
    let jail = warm_jail(UID_BASE, &[1]);
    let src = "import sys, os\nprint(sys.argv, __file__, sys.path[0], sys.executable, os.getcwd(), __name__)\nprint(os.getuid(), os.getpid(), len(os.listdir('/proc')) > 0)\nraise SystemExit(3)\n";
    let o = run_warm(&jail, &script(1, src, &["a", "b"]));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with(
            "['main.py', 'a', 'b'] /box/main.py /box /usr/bin/python3 /box __main__\n1000 2 True"
        ),
        "{}",
        describe(&o)
    );
    assert_eq!(o.exit, cod_sandbox::Exit::Code(3), "{}", describe(&o));
}

/// The same script, cold (a fresh `python3`), for comparison.
fn cold(mut run: Run) -> Run {
    run.spec.stages[0].warm = None;
    run
}

#[test]
fn warm_runs_end_exactly_like_cold_ones() {
    let jail = warm_jail(UID_BASE + 10, &[2]);
    run_warm(&jail, &script(2, "pass", &[]));
    let scripts: &[(&str, &[u8])] = &[
        (
            "import sys\nprint(sys.argv, __name__, __file__, sys.path[0])\nsys.exit(3)\n",
            b"",
        ),
        ("def f():\n    raise ValueError('boom')\nf()\n", b""),
        ("import sys\nsys.exit('a message')\n", b""),
        ("print(\n", b""),
        (
            "import atexit\natexit.register(lambda: print('bye'))\nprint('hi')\n",
            b"",
        ),
        (
            "class A:\n    def __del__(self):\n        print('del')\na = A()\nprint('end')\n",
            b"",
        ),
        // A run that only rebinds or deletes names `__main__` starts with: its globals are
        // released all the same (a run that leaves `__main__` as it found it skips that).
        (
            "class A:\n    def __del__(self):\n        print('del doc')\n__doc__ = A()\n",
            b"",
        ),
        (
            "class A:\n    def __init__(self, n):\n        self.n = n\n    def __del__(self):\n        print('del', self.n)\n_a, b = A('_a'), A('b')\ndel __spec__\n",
            b"",
        ),
        (
            "import threading, time\ndef f():\n    time.sleep(0.05)\n    print('thread')\nthreading.Thread(target=f).start()\nprint('main')\n",
            b"",
        ),
        (
            "import os, signal\nprint('x', flush=True)\nos.kill(os.getpid(), signal.SIGTERM)\n",
            b"",
        ),
        ("print(input()[::-1])\nprint(input())\n", b"abc\nline 2\n"),
        (
            "import os\nprint(os.getcwd(), os.getuid(), sorted(os.environ))\n",
            b"",
        ),
        (
            "import sys\nprint(sys.stdout.encoding, sys.stdin.isatty(), sys.flags.optimize)\n",
            b"",
        ),
        ("import sys\nsys.stdout.write('no newline')\n", b""),
    ];
    for (src, stdin) in scripts {
        let mut warm_run = script(2, src, &["x", "y"]);
        warm_run.spec.stages[0].stdin = stdin.to_vec();
        let w = run_warm(&jail, &warm_run);
        let c = cold(warm_run).run_on(&jail);
        assert_eq!(
            (&w.exit, &w.stdout, &w.stderr),
            (&c.exit, &c.stdout, &c.stderr),
            "{src}\n--- warm\n{}\n--- cold\n{}",
            describe(&w),
            describe(&c)
        );
    }
}

/// A run that leaves everything it can behind: files, a daemon, patched modules and
/// builtins, environment, SysV shared memory, and a big allocation and CPU burn; prints its
/// random numbers.
const LITTER: &str = r#"
import os, sys, random, json, collections, builtins, subprocess, time
for p in ("/box/left", "/tmp/left", "/dev/shm/left"):
    open(p, "w").write("x")
subprocess.Popen(["/usr/bin/sleep", "60"], start_new_session=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(60)
    os._exit(0)
json.dumps = None
collections.LEFT = 1
builtins.LEFT = 1
random.seed(42)
os.environ["LEFT"] = "1"
os.putenv("LEFT2", "1")
hog = bytearray(96 << 20)
for i in range(0, len(hog), 4096):
    hog[i] = 1
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
print("random", random.random())
"#;

/// What the next run sees of all that.
const LOOK: &str = r#"
import os, sys, random, json, collections, builtins
print("box", sorted(os.listdir("/box")))
print("tmp", sorted(os.listdir("/tmp")))
print("shm", sorted(os.listdir("/dev/shm")))
print("pids", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
print("json", json.dumps({"a": 1}))
print("collections", hasattr(collections, "LEFT"))
print("builtins", hasattr(builtins, "LEFT"))
print("env", "LEFT" in os.environ or "LEFT2" in os.environ)
print("random", random.random())
"#;

fn kv(o: &StageOutcome) -> std::collections::BTreeMap<String, String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn nothing_of_a_warm_run_reaches_the_next() {
    let slot = 3;
    let jail = warm_jail(UID_BASE + 20, &[slot]);
    run_warm(&jail, &script(slot, "pass", &[]));
    let a = run_warm(&jail, &script(slot, LITTER, &[]));
    assert_eq!(a.status(), Status::Ok, "{}", describe(&a));
    assert!(a.memory_peak > 90 << 20, "the hog shows: {}", describe(&a));
    assert!(a.cpu.as_millis() >= 290, "the burn shows: {}", describe(&a));
    // The daemons died with the run: no process of the slot's program uid is left.
    assert_eq!(
        host_processes_with_uid(UID_BASE + 20 + slot..UID_BASE + 21 + slot),
        vec![]
    );

    let b = run_warm(&jail, &script(slot, LOOK, &[]));
    let f = kv(&b);
    let d = describe(&b);
    assert_eq!(f["box"], "['main.py']", "{d}");
    assert_eq!(f["tmp"], "[]", "{d}");
    assert_eq!(f["shm"], "[]", "{d}");
    // Only the run's own process is visible (its namespace's init is not its uid's).
    assert_eq!(f["pids"], "[2]", "{d}");
    assert_eq!(f["json"], "{\"a\": 1}", "{d}");
    assert_eq!(f["collections"], "False", "{d}");
    assert_eq!(f["builtins"], "False", "{d}");
    assert_eq!(f["env"], "False", "{d}");
    assert_ne!(f["random"], kv(&a)["random"], "{d}");
    // Accounting: B's figures are its own, not A's 96 MiB and 0.3 s.
    assert!(b.memory_peak < 32 << 20, "{d}");
    assert!(b.cpu.as_millis() < 150, "{d}");
}

#[test]
fn a_warm_run_has_exactly_a_cold_runs_privileges() {
    // A parked process installs the seccomp policy while it waits and drops the rest when
    // its run comes: the run must see the same state as a cold one.
    let slot = 19;
    let jail = warm_jail(UID_BASE + 160, &[slot]);
    run_warm(&jail, &script(slot, "pass", &[]));
    let src = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def call(name, *args):
    rc = getattr(libc, name)(*args)
    return f"{name} {rc} {ctypes.get_errno() if rc < 0 else 0}"
print(call("unshare", 0x10000000))
print(call("mount", b"tmpfs", b"/tmp", b"tmpfs", 0, None))
print(call("ptrace", 0, 0, None, None))
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
for k in ("Uid", "Gid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"):
    print(k, status[k].split())
# Open descriptors (the listing's own is closed by the time it is resolved).
fds = []
for f in sorted(os.listdir("/proc/self/fd"), key=int):
    try:
        fds.append((int(f), os.readlink(f"/proc/self/fd/{f}").split(":")[0]))
    except OSError:
        pass
print("fds", fds)
"#;
    let warm = run_warm(&jail, &script(slot, src, &[]));
    let cold = cold(script(slot, src, &[])).run_on(&jail);
    assert_eq!(warm.status(), Status::Ok, "{}", describe(&warm));
    assert_eq!(
        warm.stdout,
        cold.stdout,
        "{}\n{}",
        describe(&warm),
        describe(&cold)
    );
    let out = String::from_utf8_lossy(&warm.stdout);
    for call in ["unshare", "mount", "ptrace"] {
        assert!(
            out.contains(&format!("{call} -1 1\n")),
            "{call} is denied: {out}"
        );
    }
    assert!(out.contains("CapEff ['0000000000000000']"), "{out}");
    assert!(out.contains("NoNewPrivs ['1']"), "{out}");
    assert!(out.contains("Seccomp ['2']"), "{out}");
    // Nothing of cod's (its sockets, the slot's cgroup files) is open in a run: the
    // standard streams (pipes) alone.
    assert!(
        out.contains("fds [(0, 'pipe'), (1, 'pipe'), (2, 'pipe')]\n"),
        "{out}"
    );
}

#[test]
fn random_numbers_differ_between_runs() {
    let jail = warm_jail(UID_BASE + 30, &[4]);
    let src = "import random, os\nprint(random.random(), random.getrandbits(64), os.urandom(8).hex(), hash('cod') != 0)";
    run_warm(&jail, &script(4, "pass", &[]));
    let outs: Vec<Vec<u8>> = (0..3)
        .map(|_| run_warm(&jail, &script(4, src, &[])).stdout)
        .collect();
    assert_ne!(outs[0], outs[1]);
    assert_ne!(outs[1], outs[2]);
    assert_ne!(outs[0], outs[2]);
}

#[test]
fn a_run_with_its_own_environment_sees_exactly_it() {
    let jail = warm_jail(UID_BASE + 40, &[5]);
    run_warm(&jail, &script(5, "pass", &[]));
    let src = "import os\nprint(sorted(os.environ.items()))\nprint(os.getenv('EXTRA'))";
    let mut run = script(5, src, &[]);
    let mut env: Vec<String> = ENV.iter().map(|s| (*s).to_owned()).collect();
    env.push("EXTRA=yes".into());
    run.spec.stages[0].env = env;
    let w = run_warm(&jail, &run);
    let c = cold(run).run_on(&jail);
    assert_eq!(w.stdout, c.stdout, "{}\n{}", describe(&w), describe(&c));
    assert!(
        String::from_utf8_lossy(&w.stdout).ends_with("yes\n"),
        "{}",
        describe(&w)
    );
}

#[test]
fn concurrent_warm_runs_see_only_their_own_files() {
    let jail = warm_jail(UID_BASE + 50, &[6, 7]);
    for s in [6, 7] {
        run_warm(&jail, &script(s, "pass", &[]));
    }
    let src = "import os, sys, time\nopen('/box/mine-' + sys.argv[1], 'w').close()\nopen('/tmp/mine-' + sys.argv[1], 'w').close()\ntime.sleep(0.3)\nprint(sorted(os.listdir('/box')), sorted(os.listdir('/tmp')))";
    let outs: Vec<StageOutcome> = std::thread::scope(|sc| {
        let hs: Vec<_> = [6u32, 7]
            .into_iter()
            .map(|s| {
                let jail = &jail;
                sc.spawn(move || run_warm(jail, &script(s, src, &[&s.to_string()])))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("no panic"))
            .collect()
    });
    for (o, s) in outs.iter().zip([6, 7]) {
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            format!("['main.py', 'mine-{s}'] ['mine-{s}']\n"),
            "{}",
            describe(o)
        );
    }
}

/// Host pids and parents of the live processes holding libpython with host uid `uid`: a
/// slot's zygote and the run it parked (its `G` and `H`).
fn pythons_of(uid: u32) -> Vec<(u32, u32)> {
    host_processes_with_uid(uid..uid + 1)
        .into_iter()
        .filter(|(pid, _)| {
            std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .is_ok_and(|m| m.contains("libpython"))
        })
        .filter_map(|(pid, _)| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let fields = stat_fields(&stat);
            let ppid = fields.get(1)?.parse().ok()?;
            (fields[0] != "Z").then_some((pid, ppid))
        })
        .collect()
}

/// The slot's zygote: the one such process whose parent is not one of them.
fn zygotes_of(uid: u32) -> Vec<u32> {
    let all = pythons_of(uid);
    all.iter()
        .filter(|(_, ppid)| !all.iter().any(|(p, _)| p == ppid))
        .map(|&(pid, _)| pid)
        .collect()
}

/// The run the zygote parked, once it is there: `(G, H)`.
fn parked_of(uid: u32) -> (u32, u32) {
    let (g, h, _) = parked_with(uid, false);
    (g, h)
}

/// The run the zygote parked, once it is there (and, with `holder`, once its `H` started
/// the holder of its memory, which it does when the slot is idle): `(G, H, holder)`. The
/// holder is the child of `G` that waits in `rt_sigsuspend`.
fn parked_with(uid: u32, holder: bool) -> (u32, u32, Option<u32>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = pythons_of(uid);
        let zygote = zygotes_of(uid);
        let g = all.iter().find(|(_, ppid)| zygote.contains(ppid));
        let children: Vec<u32> = g.map_or_else(Vec::new, |&(g, _)| {
            all.iter()
                .filter(|(_, ppid)| *ppid == g)
                .map(|&(pid, _)| pid)
                .collect()
        });
        let (x, h): (Vec<u32>, Vec<u32>) = children
            .iter()
            .partition(|&&pid| blocked_in(pid) == Some(libc::SYS_rt_sigsuspend));
        // A parked `H` waits for its run (in `poll` while it may still prime, then in
        // `recvmsg`): not a holder of an ending run's memory caught as it dies.
        let waiting = |pid: u32| {
            matches!(
                blocked_in(pid),
                Some(libc::SYS_recvmsg | libc::SYS_poll | libc::SYS_ppoll)
            )
        };
        if let (Some(&(g, _)), [h]) = (g, h.as_slice())
            && waiting(*h)
            && (!holder || x.len() == 1)
        {
            return (g, *h, x.first().copied());
        }
        assert!(Instant::now() < deadline, "no run was parked: {all:?}");
        std::thread::yield_now();
    }
}

/// Waits until `pid` has exited (it may stay a zombie until its parent reaps it).
fn wait_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "{pid} did not exit");
        std::thread::yield_now();
    }
}

/// A jail whose slot `slot` runs Python warm, once it does, and the host uid of that
/// slot's init (uid_base + slots + slot), which its zygote and parked runs run as.
fn warm_slot(base: u32, slot: u32) -> (Jail, u32) {
    let jail = warm_jail(base, &[slot]);
    run_warm(&jail, &script(slot, "pass", &[]));
    (jail, base + common::SLOTS + slot)
}

fn kill9(pid: u32) {
    let st = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(st.success());
}

#[test]
fn the_next_run_is_parked_ahead_and_one_killed_meanwhile_is_replaced() {
    let slot = 17;
    let (jail, init_uid) = warm_slot(UID_BASE + 140, slot);
    let zygote = zygotes_of(init_uid);
    assert_eq!(zygote.len(), 1, "one zygote: {:?}", pythons_of(init_uid));
    // The next run is the parked H: the same process (its start time, which no namespace
    // changes), pid 2 under the parked G.
    let (g, h) = parked_of(init_uid);
    // `starttime`, field 22.
    let started = |stat: &str| stat_fields(stat).get(19).expect("a start time").to_string();
    let h_start = started(&std::fs::read_to_string(format!("/proc/{h}/stat")).expect("H"));
    let o = run_warm(
        &jail,
        &script(
            slot,
            "import os\nprint(os.getpid(), open('/proc/self/stat').read())",
            &[],
        ),
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (pid, stat) = out.split_once(' ').expect("two fields");
    assert_eq!(pid, "2", "{}", describe(&o));
    assert_eq!(started(stat), h_start, "the run was the parked process");
    assert_ne!(
        parked_of(init_uid),
        (g, h),
        "another run is parked after it"
    );
    // Killing either parked process from outside costs the next run nothing but the
    // time to park another: it still runs warm, in the same zygote.
    for round in 0..2 {
        let (g, h) = parked_of(init_uid);
        let victim = if round == 0 { h } else { g };
        kill9(victim);
        wait_gone(g);
        let o = run_full(&jail, &script(slot, "print(6 * 7)", &[]));
        assert!(o.warm.is_some(), "round {round}: the run was warm: {o:?}");
        let stage = &o.stages[0];
        assert_eq!(stage.status(), Status::Ok, "{}", describe(stage));
        assert_eq!(stage.stdout, b"42\n");
        assert_eq!(
            zygotes_of(init_uid),
            zygote,
            "round {round}: the same zygote"
        );
    }
}

#[test]
fn a_killed_zygote_is_replaced_and_no_run_is_lost() {
    let slot = 8;
    let (jail, init_uid) = warm_slot(UID_BASE + 60, slot);
    for round in 0..3 {
        let z = zygotes_of(init_uid);
        assert_eq!(z.len(), 1, "round {round}: one zygote: {z:?}");
        kill9(z[0]);
        // The very next run must not be lost, whatever state the slot is in.
        let o = run_full(&jail, &script(slot, "print(6 * 7)", &[]));
        let stage = &o.stages[0];
        assert_eq!(stage.status(), Status::Ok, "{}", describe(stage));
        assert_eq!(stage.stdout, b"42\n");
        // And the slot is warm again.
        let again = run_warm(&jail, &script(slot, "print(1)", &[]));
        assert_eq!(again.stdout, b"1\n");
    }
}

#[test]
fn a_slot_told_to_stop_ends_its_zygote() {
    let slot = 9;
    let (jail, init_uid) = warm_slot(UID_BASE + 70, slot);
    assert_eq!(zygotes_of(init_uid).len(), 1);
    jail.set_warm(slot, 0).expect("the mask is set");
    // The keeper ends it when it reads the mask; a run after that is cold.
    let o = run_full(&jail, &script(slot, "print(1)", &[]));
    assert!(o.warm.is_none(), "{o:?}");
    assert_eq!(zygotes_of(init_uid), Vec::<u32>::new());
}

#[test]
fn a_memory_hog_in_a_warm_run_gets_the_memory_verdict_and_the_zygote_survives() {
    let slot = 10;
    let jail = warm_jail(UID_BASE + 80, &[slot]);
    run_warm(&jail, &script(slot, "pass", &[]));
    let hog = script(
        slot,
        "x = bytearray(1 << 30)\nfor i in range(0, len(x), 4096):\n    x[i] = 1\n",
        &[],
    )
    .limits(|l| l.memory = cod_core::Bytes::mib(64));
    let o = run_warm(&jail, &hog);
    assert_eq!(o.status(), Status::MemoryLimit, "{}", describe(&o));
    let next = run_warm(&jail, &script(slot, "print('still here')", &[]));
    assert_eq!(next.stdout, b"still here\n");
}

#[test]
fn a_parked_runs_memory_holder_can_do_nothing_and_is_out_of_the_programs_sight() {
    let slot = 22;
    let (jail, init_uid) = warm_slot(UID_BASE + 200, slot);
    let (_, h, x) = parked_with(init_uid, true);
    let x = x.expect("a holder");
    let status = std::fs::read_to_string(format!("/proc/{x}/status")).expect("its status");
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:\t")))
            .unwrap_or_default()
            .to_owned()
    };
    // No capability, no way to gain one, every signal blocked, no descriptor: it waits in
    // the kernel until it is killed.
    for cap in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(field(cap), "0000000000000000", "{cap}: {status}");
    }
    assert_eq!(field("NoNewPrivs"), "1", "{status}");
    assert_eq!(field("SigBlk"), "fffffffffffbfeff", "{status}");
    let fds = std::fs::read_dir(format!("/proc/{x}/fd")).expect("its descriptors");
    assert_eq!(fds.count(), 0, "it holds no descriptor");
    // It shares `H`'s memory: the same mappings.
    let maps = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    assert_eq!(maps(x), maps(h));

    // The program sees only itself; a wait for any child finds none.
    let src = "import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\ntry:\n    os.wait()\nexcept ChildProcessError:\n    print('no child')\n";
    let o = run_warm(&jail, &script(slot, src, &[]));
    assert_eq!(o.stdout, b"[2]\nno child\n", "{}", describe(&o));
    // And the holder went with the run.
    wait_gone(x);
}

#[test]
fn a_warm_runs_memory_is_in_none_of_the_next_runs_limits_or_figures() {
    // A run's memory is unmapped after its result went out, by its holder's end: the slot
    // must not take its next run before that is done, even one that was waiting for it.
    let slot = 23;
    let base = UID_BASE + 210;
    let (jail, init_uid) = warm_slot(base, slot);
    let program_uid = base + slot;
    // Written, so that every page is the run's (a bytearray's zeroes would not be), and
    // held by a module that lives until the process exits (`__main__`'s globals are
    // released before).
    let touch =
        |mib: u64| format!("import sys\nsys.held = b'\\x01' * ({mib} << 20)\nprint('ok')\n");
    let limited = |mib: u64, limit: u64| {
        script(slot, &touch(mib), &[]).limits(|l| l.memory = cod_core::Bytes::mib(limit))
    };
    // A run that holds 512 MiB until its exit (so its holder frees them), and `next`, sent
    // once A's program runs: the slot takes it the moment A is done.
    let behind_a_big_run = |round: u32, next: &Run| {
        parked_with(init_uid, true);
        std::thread::scope(|s| {
            let a = s.spawn(|| run_warm(&jail, &limited(512, 1024)));
            let deadline = Instant::now() + Duration::from_secs(10);
            while host_processes_with_uid(program_uid..program_uid + 1).is_empty() {
                assert!(Instant::now() < deadline, "round {round}: A never ran");
                std::thread::yield_now();
            }
            let o = run_warm(&jail, next);
            let a = a.join().expect("A ran");
            assert_eq!(a.stdout, b"ok\n", "round {round}: {}", describe(&a));
            o
        })
    };
    for round in 0..3 {
        // With a 64 MiB limit, B may not use A's 512 MiB as well.
        let o = behind_a_big_run(round, &limited(128, 64));
        assert_eq!(
            o.status(),
            Status::MemoryLimit,
            "round {round}: {}",
            describe(&o)
        );
        assert_eq!(o.stdout, b"", "round {round}: {}", describe(&o));
        // And its figures are its own.
        let o = behind_a_big_run(round, &limited(16, 64));
        assert_eq!(o.status(), Status::Ok, "round {round}: {}", describe(&o));
        assert!(o.memory_peak < 48 << 20, "round {round}: {}", describe(&o));
    }
}

/// Where the test's Node.js bootstrap is bound in the sandbox.
const NODE_BOOT: &str = "/opt/cod/warm/node-bootstrap.js";

/// The bind of the test's bootstrap (written once per test process).
fn node_boot_bind() -> cod_sandbox::Bind {
    static FILE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = FILE.get_or_init(|| {
        let d = tempfile::tempdir().expect("a temp dir");
        let code = r#"'use strict';
const fs = require('fs');
fs.writeSync(5, 'R');
fs.closeSync(5);
const chunks = [];
const buf = Buffer.alloc(65536);
for (;;) { const n = fs.readSync(4, buf, 0, buf.length, null); if (n === 0) break; chunks.push(Buffer.from(buf.subarray(0, n))); }
fs.closeSync(4);
const args = Buffer.concat(chunks).toString('utf8').split('\0'); args.pop();
process.argv = [process.argv[0], require('path').resolve(args[0]), ...args.slice(1)];
require('module').runMain();
"#;
        std::fs::write(d.path().join("boot.js"), code).expect("written");
        d
    });
    cod_sandbox::Bind {
        src: dir.path().join("boot.js"),
        dst: NODE_BOOT.into(),
    }
}

/// A Node.js started ahead: the bootstrap reads the script and arguments on fd 4.
fn node_runtime() -> WarmRuntime {
    let mut layout = layout();
    layout.binds.push(node_boot_bind());
    WarmRuntime {
        name: "javascript".into(),
        layout,
        env: ENV.iter().map(|s| (*s).to_owned()).collect(),
        kind: WarmKind::Prestart {
            program: "/usr/bin/node".into(),
            argv: vec!["/usr/bin/node".into(), NODE_BOOT.into()],
            options: Vec::new(),
        },
    }
}

/// Whether this machine has Node.js (a test of it says so and passes when it has not).
fn have_node() -> bool {
    let there = std::path::Path::new("/usr/bin/node").exists();
    if !there {
        eprintln!("no /usr/bin/node here; nothing to test");
    }
    there
}

fn node_jail(uid_base: u32, slot: u32) -> Jail {
    let config = JailConfig {
        slots: common::SLOTS,
        uid_base,
        prepared: Some(layout()),
        warm: vec![runtime(), node_runtime()],
        ..Default::default()
    };
    let jail = Jail::spawn(helper(), &[], &config)
        .unwrap_or_else(|e| panic!("the jail did not start: {}", error_chain(&e)));
    jail.set_warm(slot, 0b10).expect("the warm mask is set");
    jail
}

fn js(slot: u32, source: &str, args: &[&str]) -> Run {
    let mut argv = vec!["/usr/bin/node", "main.js"];
    argv.extend_from_slice(args);
    let mut run = Run::cmd(slot, &argv);
    run.spec.files.push(FileEntry {
        name: "main.js".into(),
        content: source.as_bytes().to_vec(),
        executable: false,
    });
    run.spec.stages[0].warm = Some("javascript".into());
    run.spec.binds.push(node_boot_bind());
    run
}

#[test]
fn node_started_ahead_runs_the_program_like_a_fresh_node() {
    if !have_node() {
        return;
    }
    let slot = 12;
    let jail = node_jail(UID_BASE + 90, slot);
    let src = "const fs = require('fs');\nconsole.log(process.argv.slice(1), __filename, require.main === module, process.execArgv, process.cwd());\nconsole.log(fs.readdirSync('/proc/self/fd').sort().join(','));\nlet s = ''; process.stdin.on('data', d => s += d); process.stdin.on('end', () => { console.log('in:' + s); process.exitCode = 4; });\n";
    let mut run = js(slot, src, &["a", "b"]);
    run.spec.stages[0].stdin = b"typed".to_vec();
    let w = run_warm(&jail, &run);
    let c = cold(run).run_on(&jail);
    assert_eq!(
        (&w.exit, &w.stdout, &w.stderr),
        (&c.exit, &c.stdout, &c.stderr),
        "--- warm\n{}\n--- cold\n{}",
        describe(&w),
        describe(&c)
    );
    assert_eq!(w.exit, cod_sandbox::Exit::Code(4), "{}", describe(&w));
    // And each run gets a fresh one: nothing carries over.
    let a = run_warm(
        &jail,
        &js(
            slot,
            "globalThis.leak = 1; require('fs').writeFileSync('/tmp/x', 'y'); console.log('a')",
            &[],
        ),
    );
    assert_eq!(a.stdout, b"a\n");
    let b = run_warm(
        &jail,
        &js(
            slot,
            "console.log(typeof globalThis.leak, require('fs').existsSync('/tmp/x'))",
            &[],
        ),
    );
    assert_eq!(b.stdout, b"undefined false\n", "{}", describe(&b));
    // Limits still apply.
    let spin = js(slot, "for (;;) {}", &[]).limits(|l| l.cpu = Duration::from_millis(300));
    let o = run_warm(&jail, &spin);
    assert_eq!(o.status(), Status::TimeLimit, "{}", describe(&o));
}

/// A warm run killed at a limit reports the memory of its process as one that ends does
/// (most of it shared with the zygote, so in no growth of the slot's cgroup).
#[test]
fn a_warm_run_killed_at_a_limit_reports_its_peak_like_one_that_ends() {
    let slot = 26;
    let jail = warm_jail(UID_BASE + 400, &[slot]);
    let ends = run_warm(&jail, &script(slot, "pass", &[]));
    assert_eq!(ends.status(), Status::Ok, "{}", describe(&ends));
    let spin = script(slot, "while True: pass", &[]).limits(|l| l.cpu = Duration::from_millis(300));
    let killed = run_warm(&jail, &spin);
    let d = describe(&killed);
    assert_eq!(killed.status(), Status::TimeLimit, "{d}");
    assert!(
        killed.memory_peak * 10 >= ends.memory_peak * 9,
        "killed: {} bytes, ended: {} bytes; {d}",
        killed.memory_peak,
        ends.memory_peak
    );
}

/// `Cpus_allowed_list` of `/proc/<pid>/status` (`self` for this process).
fn cpus_allowed(pid: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

/// Every descendant of `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for c in list.split_whitespace().filter_map(|c| c.parse().ok()) {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

/// A slot's own processes are held to one CPU, slot `n` to the `n`-th of the jail's
/// (modulo their number), and its programs, warm or cold, run on all of them.
#[test]
fn a_slots_processes_keep_to_one_cpu_and_its_programs_get_all() {
    let slot = 27;
    let jail = warm_jail(UID_BASE + 410, &[slot]);
    let all = cpus_allowed("self");
    let probe = "import os\nprint(open('/proc/self/status').read().split('Cpus_allowed_list:')[1].split()[0])";
    let warm = run_warm(&jail, &script(slot, probe, &[]));
    assert_eq!(
        warm.stdout,
        format!("{all}\n").as_bytes(),
        "{}",
        describe(&warm)
    );
    let cold = Run::cmd(
        slot,
        &["/bin/grep", "Cpus_allowed_list", "/proc/self/status"],
    )
    .run_on(&jail);
    let out = String::from_utf8_lossy(&cold.stdout);
    assert_eq!(
        out.split_whitespace().nth(1),
        Some(all.as_str()),
        "{}",
        describe(&cold)
    );
    let cpus: Vec<usize> = (0..1024)
        .filter(|c| {
            all.split(',').any(|r| match r.split_once('-') {
                Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).contains(c),
                None => r.parse() == Ok(*c),
            })
        })
        .collect();
    if cpus.len() < 2 {
        return; // one CPU: nothing to hold the slot to
    }
    let want = cpus[slot as usize % cpus.len()].to_string();
    let helper = jail.helper_pid().expect("the helper runs");
    let mine = descendants(helper);
    assert!(!mine.is_empty(), "the slot has processes");
    for pid in mine {
        let allowed = cpus_allowed(&pid.to_string());
        // A process that ended meanwhile has no status left.
        if !allowed.is_empty() {
            assert_eq!(allowed, want, "process {pid} of slot {slot}");
        }
    }
}

#[test]
fn a_program_started_ahead_starts_after_its_files_and_under_its_limits() {
    // The program started ahead is released by its arguments. They must come after the
    // run's files are all in place and its own limits set: here the last file is large
    // (the init copies it for tens of milliseconds), and the script's first lines look at
    // it and at the limits.
    if !have_node() {
        return;
    }
    let slot = 21;
    let jail = node_jail(UID_BASE + 330, slot);
    let size = 48usize << 20;
    let big = cod_sandbox::SharedFile::new("big.bin", &vec![7u8; size], false).unwrap();
    let src = "const fs = require('fs');\n\
        const cpu = fs.readFileSync('/proc/self/limits', 'utf8').split('\\n').find(l => l.startsWith('Max cpu time'));\n\
        console.log(cpu.split(/\\s+/).slice(3, 5).join(' '));\n\
        console.log(fs.statSync('big.bin').size);\n";
    for round in 0..3 {
        let mut run = js(slot, src, &[]).limits(|l| {
            l.cpu = Duration::from_secs(3);
            l.disk = cod_core::Bytes::mib(96);
        });
        run.spec.shared.push(big.clone());
        let o = run_warm(&jail, &run);
        assert_eq!(o.status(), Status::Ok, "round {round}: {}", describe(&o));
        // RLIMIT_CPU is the CPU limit + 2 s, both soft and hard, from the first line on.
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            format!("5 5\n{size}\n"),
            "round {round}: {}",
            describe(&o)
        );
    }
    // A file that does not fit: the run fails naming the file, and the slot carries on.
    let mut run = js(slot, src, &[]).limits(|l| l.disk = cod_core::Bytes::mib(16));
    run.spec.shared.push(big);
    let err = jail
        .run(&run.spec)
        .expect_err("48 MiB do not fit in 16 MiB");
    let why = common::error_chain(&err);
    assert!(why.contains("big.bin"), "{why}");
    let o = run_warm(&jail, &js(slot, "console.log(6 * 7)", &[]));
    assert_eq!(o.stdout, b"42\n", "{}", describe(&o));
}

#[test]
fn a_warm_node_program_tells_its_end_to_the_init_from_its_own_process_only() {
    // Node's bootstrap ends a run by naming the process `cod-exit N` and sending SIGUSR1
    // to the init, which then reports N at once and kills the process. The program can do
    // the same (its status is its own to choose), and nothing else can.
    if !have_node() {
        return;
    }
    let slot = 24;
    let jail = node_jail(UID_BASE + 340, slot);
    let ends = |src: &str, code: i32, stdout: &[u8]| {
        let o = run_warm(&jail, &js(slot, src, &[]));
        assert_eq!(
            (&o.exit, &o.stdout[..]),
            (&cod_sandbox::Exit::Code(code), stdout),
            "{src}\n{}",
            describe(&o)
        );
        o
    };
    ends(
        "process.title = 'cod-exit 9';\nprocess.kill(1, 'SIGUSR1');\nsetTimeout(() => console.log('late'), 3000);\n",
        9,
        b"",
    );
    // The signal without the name changes nothing.
    let o = ends(
        "process.kill(1, 'SIGUSR1');\nconsole.log('still');\n",
        0,
        b"still\n",
    );
    // Reported before node is reaped, its peak memory is read while it still runs: at
    // least node's own resident size (over 20 MiB).
    assert!(o.memory_peak > 20 << 20, "{}", describe(&o));
    // Nor does it from another process of the run, even with the program so named.
    ends(
        "process.title = 'cod-exit 9';\nrequire('child_process').execFileSync('/bin/sh', ['-c', 'kill -USR1 1']);\nprocess.title = 'node';\nconsole.log('still');\nprocess.exitCode = 5;\n",
        5,
        b"still\n",
    );
}

#[test]
fn a_program_started_ahead_that_died_does_not_lose_the_run() {
    if !have_node() {
        return;
    }
    let slot = 14;
    let mut broken = node_runtime();
    // Its bootstrap does not exist: node exits at once, before any run.
    broken.kind = WarmKind::Prestart {
        program: "/usr/bin/node".into(),
        argv: vec!["/usr/bin/node".into(), "/opt/cod/warm/missing.js".into()],
        options: Vec::new(),
    };
    let config = JailConfig {
        slots: common::SLOTS,
        uid_base: UID_BASE + 100,
        prepared: Some(layout()),
        warm: vec![runtime(), broken],
        ..Default::default()
    };
    let jail = Jail::spawn(helper(), &[], &config).expect("the jail starts");
    jail.set_warm(slot, 0b10).expect("the mask is set");
    for _ in 0..5 {
        let o = run_full(&jail, &js(slot, "console.log(6 * 7)", &[]));
        let s = &o.stages[0];
        assert_eq!(s.status(), Status::Ok, "{}", describe(s));
        assert_eq!(s.stdout, b"42\n", "{}", describe(s));
    }
}

/// Not a test: `cargo test --release -p cod-sandbox --test warm throughput -- --ignored
/// --nocapture` prints warm `print(1)` runs per second through the jail with two clients;
/// `WARM_PRELOAD=random,json,...` sets the zygote's preloaded modules (the zygote's size
/// did not change the rate measurably: 484–563 runs/s with none, two or all seventeen of
/// languages/python.toml's).
#[test]
#[ignore]
fn throughput() {
    let jail = warm_jail(UID_BASE + 300, &[20, 21]);
    for s in [20, 21] {
        run_warm(&jail, &script(s, "print(1)", &[]));
    }
    let secs = 4;
    let end = Instant::now() + Duration::from_secs(secs);
    let total: u64 = std::thread::scope(|sc| {
        let hs: Vec<_> = [20u32, 21]
            .into_iter()
            .map(|s| {
                let jail = &jail;
                sc.spawn(move || {
                    let run = script(s, "print(1)", &[]);
                    let mut n = 0;
                    while Instant::now() < end {
                        let o = run_full(jail, &run);
                        assert!(o.warm.is_some());
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("no panic")).sum()
    });
    eprintln!("{} runs/s", total / secs);
}

/// A run of another program in a slot that started Node.js ahead for its next run takes the
/// prepared sandbox once Node.js is ended: it sees no Node.js and an empty /tmp.
#[test]
fn a_run_of_another_program_ends_the_one_started_ahead() {
    if !have_node() {
        return;
    }
    let slot = 16;
    let jail = node_jail(UID_BASE + 120, slot);
    // Node.js serves a run, so the slot keeps starting it ahead.
    run_warm(&jail, &js(slot, "console.log(1)", &[]));
    for _ in 0..3 {
        let mut run = Run::cmd(
            slot,
            &[
                "/bin/sh",
                "-c",
                "ls -A /tmp; for p in /proc/[0-9]*; do cat $p/comm; done 2>/dev/null",
            ],
        );
        run.spec.binds.push(node_boot_bind());
        let o = run.run_on(&jail);
        assert_eq!(o.exit, cod_sandbox::Exit::Code(0), "{}", describe(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(!out.contains("node"), "{out}");
        assert!(out.contains("sh"), "{out}");
        // And the next JavaScript run is warm again.
        run_warm(&jail, &js(slot, "console.log(2)", &[]));
    }
}
