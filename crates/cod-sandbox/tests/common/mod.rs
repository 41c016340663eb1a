//! Shared helpers of the sandbox's integration tests: one jail per test binary, the C probes
//! of `tests/probes/` compiled once per test process, a builder for runs, and readers for
//! what the probes print (`key=value` lines) and for the host's `/proc`.
//!
//! Every test names its own slot. Slots are fixed numbers rather than a counter so that the
//! host uids of a test's runs (`uid_base + slot`) are unique across the test processes that
//! `cargo nextest` runs in parallel; each test binary also has its own `uid_base`. Checks that
//! scan the host for a uid therefore only ever see their own test's processes (as long as
//! the same test binary is not run twice at once, say `cargo test` beside `cargo nextest`:
//! both copies would use the same uids).
//!
//! Set `COD_TEST_SHOW=1` to print every outcome (with `--nocapture`), for instance to see the
//! measurements behind an assertion.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cod_core::{Bytes, Limits};
use cod_sandbox::{
    Bind, FileEntry, Jail, JailConfig, Layout, SandboxSpec, StageOutcome, StageSpec, Symlink,
};

/// Slots of every jail the tests start.
pub const SLOTS: u32 = 64;

/// The environment every stage gets unless a test says otherwise.
pub const ENV: &[&str] = &["PATH=/usr/bin:/bin", "HOME=/box", "LANG=C.UTF-8"];

/// The helper binary built by cargo for this package.
pub fn helper() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cod-jail"))
}

/// The layout of [`Run::cmd`]'s sandboxes: `/usr` and the merged-/usr symlinks.
pub fn layout() -> Layout {
    Layout::of(&Run::cmd(0, &["/bin/true"]).spec)
}

/// Starts a jail with [`SLOTS`] slots whose slot `n` runs programs as host uid `uid_base + n`.
/// Like `cod serve`, each slot keeps a sandbox prepared (with [`layout`]) between runs.
pub fn spawn_jail(uid_base: u32) -> Jail {
    spawn_jail_with(uid_base, Some(layout()))
}

/// Starts a jail that prepares sandboxes with `prepared` between runs (none: every run
/// builds its sandbox when it arrives).
pub fn spawn_jail_with(uid_base: u32, prepared: Option<Layout>) -> Jail {
    let config = JailConfig {
        slots: SLOTS,
        uid_base,
        prepared,
        ..Default::default()
    };
    match Jail::spawn(helper(), &[], &config) {
        Ok(j) => j,
        Err(e) => panic!("the jail did not start: {}", error_chain(&e)),
    }
}

/// The jail shared by the tests of one test binary (started on first use). It is never
/// dropped: when the test process exits its control socket closes and the helper cleans up.
pub fn shared_jail(uid_base: u32) -> &'static Jail {
    static JAIL: OnceLock<Jail> = OnceLock::new();
    JAIL.get_or_init(|| spawn_jail(uid_base))
}

/// Host uids a jail started with `uid_base` uses: both uids of every slot.
pub fn host_uids(uid_base: u32) -> std::ops::Range<u32> {
    uid_base..uid_base + 2 * SLOTS
}

/// The default limits of DESIGN.md: CPU 5 s, wall 10 s, memory 256 MiB, 64 processes,
/// output 1 MiB, disk 64 MiB.
pub fn default_limits() -> Limits {
    Limits {
        cpu: Duration::from_secs(5),
        wall: Duration::from_secs(10),
        memory: Bytes::mib(256),
        processes: 64,
        output: Bytes::mib(1),
        disk: Bytes::mib(64),
    }
}

/// `e` and its sources, joined.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let _ = write!(s, ": {c}");
        cur = c.source();
    }
    s
}

/// The probe `tests/probes/<name>.c`, compiled with `gcc -O1` on first use in this process,
/// as an executable work-dir file named `name`.
pub fn probe(name: &str) -> FileEntry {
    type Cache = Mutex<HashMap<String, Arc<OnceLock<Vec<u8>>>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cell = CACHE
        .get_or_init(Cache::default)
        .lock()
        .expect("no test panicked while holding the probe cache")
        .entry(name.to_owned())
        .or_default()
        .clone();
    let content = cell.get_or_init(|| compile(name)).clone();
    FileEntry {
        name: name.to_owned(),
        content,
        executable: true,
    }
}

fn compile(name: &str) -> Vec<u8> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/probes")
        .join(format!("{name}.c"));
    let dir = tempfile::tempdir().expect("a temp dir for the probe");
    let out = dir.path().join(name);
    let result = Command::new("gcc")
        .args(["-O1", "-Wall", "-pthread", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .expect("gcc runs");
    assert!(
        result.status.success(),
        "compiling {}: {}",
        src.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::read(&out).expect("the compiled probe is readable")
}

/// One sandbox with one stage, built up by a test.
#[derive(Clone, Debug)]
pub struct Run {
    /// The sandbox.
    pub spec: SandboxSpec,
}

impl Run {
    /// Runs `argv` (absolute argv[0]) in slot `slot` with the default limits, `/usr` bound
    /// read-only and the merged-/usr symlinks of this host.
    pub fn cmd(slot: u32, argv: &[&str]) -> Run {
        let limits = default_limits();
        Run {
            spec: SandboxSpec {
                slot,
                binds: vec![Bind {
                    src: "/usr".into(),
                    dst: "/usr".into(),
                }],
                symlinks: [
                    ("/bin", "usr/bin"),
                    ("/lib", "usr/lib"),
                    ("/lib64", "usr/lib64"),
                ]
                .into_iter()
                .map(|(path, target)| Symlink {
                    path: path.into(),
                    target: target.into(),
                })
                .collect(),
                files: Vec::new(),
                shared: Vec::new(),
                stages: vec![StageSpec {
                    argv: argv.iter().map(|s| (*s).to_owned()).collect(),
                    env: ENV.iter().map(|s| (*s).to_owned()).collect(),
                    limits,
                    stdin: Vec::new(),
                    collect: Vec::new(),
                    warm: None,
                    interactive: false,
                }],
                disk: limits.disk.get(),
                stream: false,
            },
        }
    }

    /// Runs the probe `name` (see [`probe`]) as `/box/<name> args...`.
    pub fn probe(slot: u32, name: &str, args: &[&str]) -> Run {
        let path = format!("/box/{name}");
        let mut argv = vec![path.as_str()];
        argv.extend_from_slice(args);
        let mut run = Run::cmd(slot, &argv);
        run.spec.files.push(probe(name));
        run
    }

    /// Runs a Python program given as source (`/usr/bin/python3 -c source args...`).
    pub fn python(slot: u32, source: &str, args: &[&str]) -> Run {
        let mut argv = vec!["/usr/bin/python3", "-c", source];
        argv.extend_from_slice(args);
        Run::cmd(slot, &argv)
    }

    /// Changes the stage's limits (the sandbox's disk follows `limits.disk`).
    pub fn limits(mut self, f: impl FnOnce(&mut Limits)) -> Run {
        let stage = &mut self.spec.stages[0];
        f(&mut stage.limits);
        self.spec.disk = stage.limits.disk.get();
        self
    }

    /// Sets the stage's standard input.
    pub fn stdin(mut self, bytes: Vec<u8>) -> Run {
        self.spec.stages[0].stdin = bytes;
        self
    }

    /// Replaces the stage's environment.
    pub fn env(mut self, env: &[&str]) -> Run {
        self.spec.stages[0].env = env.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// Runs on `jail` and returns the only stage's outcome.
    pub fn run_on(&self, jail: &Jail) -> StageOutcome {
        let outcome = match jail.run(&self.spec) {
            Ok(o) => o,
            Err(e) => panic!("the sandbox failed: {}", error_chain(&e)),
        };
        assert_eq!(outcome.stages.len(), 1, "one stage ran: {outcome:?}");
        let o = outcome.stages.into_iter().next().expect("one stage");
        if std::env::var_os("COD_TEST_SHOW").is_some() {
            eprintln!("=== {:?}\n{}", self.spec.stages[0].argv, describe(&o));
        }
        o
    }
}

/// A readable summary of an outcome for assertion messages.
pub fn describe(o: &StageOutcome) -> String {
    let cut = |b: &[u8]| {
        let s = String::from_utf8_lossy(&b[..b.len().min(4000)]).into_owned();
        if b.len() > 4000 {
            format!("{s}... ({} bytes)", b.len())
        } else {
            s
        }
    };
    format!(
        "status={:?} exit={:?} limit={:?} cancelled={} exec_errno={:?} cpu={:?} wall={:?} \
         memory_peak={} stdout_truncated={} stderr_truncated={}\n--- stdout\n{}\n--- stderr\n{}",
        o.status(),
        o.exit,
        o.limit,
        o.cancelled,
        o.exec_errno,
        o.cpu,
        o.wall,
        o.memory_peak,
        o.stdout_truncated,
        o.stderr_truncated,
        cut(&o.stdout),
        cut(&o.stderr),
    )
}

/// The `key=value` lines a probe printed on stdout (the first `=` splits; later lines with
/// the same key win).
pub fn fields(o: &StageOutcome) -> BTreeMap<String, String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The value the probe printed for `key`; panics with the whole outcome if it did not.
pub fn field(o: &StageOutcome, key: &str) -> String {
    match fields(o).remove(key) {
        Some(v) => v,
        None => panic!("the probe printed no {key}=...\n{}", describe(o)),
    }
}

/// [`field`] parsed as a number.
pub fn num(o: &StageOutcome, key: &str) -> i64 {
    let v = field(o, key);
    v.parse()
        .unwrap_or_else(|_| panic!("{key}={v} is not a number\n{}", describe(o)))
}

/// The fields of a `/proc/PID/stat` text after the command name (`state ppid pgrp ...`,
/// field 3 on as `proc(5)` counts them): the name may hold spaces and parentheses, so they
/// start after the last `)`.
pub fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

/// Whether host process `pid` is alive: there, and not a zombie waiting to be reaped.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| stat_fields(&s).first().is_some_and(|state| *state != "Z"))
}

/// Host processes (pid, name) any of whose uids (real, effective, saved, fs) is in `uids`.
pub fn host_processes_with_uid(uids: std::ops::Range<u32>) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // The process may be gone by now; that is fine.
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::to_owned)
                .unwrap_or_default()
        };
        let hit = field("Uid:")
            .split_whitespace()
            .filter_map(|u| u.parse::<u32>().ok())
            .any(|u| uids.contains(&u));
        if hit {
            found.push((pid, field("Name:").trim().to_owned()));
        }
    }
    found
}

/// The system call host process `pid` is blocked in (the first field of
/// `/proc/PID/syscall`), if any.
pub fn blocked_in(pid: u32) -> Option<i64> {
    std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Checks that the host processes under a slot's init uid, `uid`, are at most the sandbox
/// prepared for the slot's next run: its idle init, and the process the init forked ahead
/// for the first stage (the init's child, waiting under the program's seccomp policy). That
/// child installs the policy just after it is forked, so a check that catches it before
/// is made again, for up to 10 s; the processes seen last if it never holds.
pub fn only_a_prepared_sandbox(uid: u32) -> Result<(), Vec<(u32, String)>> {
    let status = |pid: u32, key: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
            .unwrap_or_default()
    };
    let holds = |procs: &[(u32, String)]| {
        let named = procs.iter().all(|(_, name)| name == "cod-jail");
        match procs {
            [] | [_] => named,
            [(a, _), (b, _)] => {
                let (init, child) = if status(*b, "PPid:") == a.to_string() {
                    (*a, *b)
                } else {
                    (*b, *a)
                };
                named
                    && status(child, "PPid:") == init.to_string()
                    && status(child, "Seccomp:") == "2"
            }
            _ => false,
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let procs = host_processes_with_uid(uid..uid + 1);
        if holds(&procs) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(procs);
        }
        std::thread::yield_now();
    }
}
