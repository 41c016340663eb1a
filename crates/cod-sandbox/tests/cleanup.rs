//! Escape probe for what runs leave behind: a thousand runs, some of them leaving a
//! double-forked daemon, must leave no process, mount, extra cgroup or staging file on the
//! host, and dropping the jail must remove the helper's cgroups and staging directory.
//!
//! This binary holds one test with a jail of its own (and its own host uids), so that no
//! other test's runs are on the host while it looks.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cod_core::Status;
use common::{Run, describe, host_processes_with_uid};

/// Host uids of this binary's runs start here (see `common`).
const UID_BASE: u32 = 61_600;
/// Runs in all.
const RUNS: u32 = 1000;
/// Threads running them, each in a slot of its own.
const THREADS: u32 = 4;
/// Every this many runs of a thread, the run leaves a double-forked daemon.
const DAEMON_EVERY: u32 = 25;
/// The v1 controllers the jail uses.
const CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "cpuacct"];

fn mountinfo_lines() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("reading this process's mountinfo")
        .lines()
        .count()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn thousand_runs_leave_nothing_behind() {
    let started = Instant::now();
    let mounts_before = mountinfo_lines();
    let jail = common::spawn_jail(UID_BASE);
    let helper = jail.helper_pid().expect("the helper runs");
    assert!(
        Path::new(&format!("/proc/{helper}")).exists(),
        "the helper {helper} is a live process"
    );
    let instance = |controller: &str| -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join("cod")
            .join(helper.to_string())
    };
    let staging = std::env::temp_dir().join(format!("cod-jail-{helper}"));

    let daemon = Run::probe(0, "daemon", &[]);
    std::thread::scope(|s| {
        for slot in 0..THREADS {
            let jail = &jail;
            let daemon = &daemon;
            s.spawn(move || {
                for i in 0..RUNS / THREADS {
                    let mut run = if i % DAEMON_EVERY == DAEMON_EVERY - 1 {
                        daemon.clone()
                    } else {
                        Run::cmd(slot, &["/usr/bin/true"])
                    };
                    run.spec.slot = slot;
                    let o = run.run_on(jail);
                    assert_eq!(
                        o.status(),
                        Status::Ok,
                        "run {i} in slot {slot}: {}",
                        describe(&o)
                    );
                }
            });
        }
    });

    // No program of any slot is left on the host. What remains under the slots' init uids
    // are the sandboxes prepared for the next runs: per slot used, an idle init and the
    // process it forked ahead for its first stage, which waits under the program's seccomp
    // policy.
    assert_eq!(
        host_processes_with_uid(UID_BASE..UID_BASE + common::SLOTS),
        vec![]
    );
    let mut slots_with_a_sandbox = 0;
    for slot in 0..common::SLOTS {
        let uid = UID_BASE + common::SLOTS + slot;
        if let Err(left) = common::only_a_prepared_sandbox(uid) {
            panic!("slot {slot}: only its prepared sandbox may remain: {left:?}");
        }
        slots_with_a_sandbox += usize::from(!host_processes_with_uid(uid..uid + 1).is_empty());
    }
    assert!(slots_with_a_sandbox <= THREADS as usize);
    // Every mount was made in a run's own mount namespace.
    assert_eq!(
        mountinfo_lines(),
        mounts_before,
        "this process's mount table changed"
    );
    // One cgroup per slot used, reused run after run, and empty.
    let slots: Vec<String> = (0..THREADS).map(|n| format!("slot-{n}")).collect();
    for c in CONTROLLERS {
        let dir = instance(c);
        let children: Vec<String> = entries(&dir)
            .into_iter()
            .filter(|n| dir.join(n).is_dir())
            .collect();
        assert!(
            children.len() <= common::SLOTS as usize,
            "{c}: {children:?}"
        );
        assert_eq!(children, slots, "{c}");
        for slot in &slots {
            // The slot's keeper remains, with the sandbox it prepared for the next run (a
            // supervisor, child of the keeper, and its init); the last run's supervisor sends
            // its result just before it exits, so give it a (bounded) moment to be gone.
            let procs_file = dir.join(slot).join("cgroup.procs");
            let read_pids = || -> Vec<u32> {
                std::fs::read_to_string(&procs_file)
                    .expect("reading cgroup.procs")
                    .split_whitespace()
                    .map(|p| p.parse().unwrap())
                    .collect()
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut pids = read_pids();
            while pids.len() > 4 && Instant::now() < deadline {
                std::thread::yield_now();
                pids = read_pids();
            }
            let keepers: Vec<u32> = pids
                .iter()
                .copied()
                .filter(|&p| parent_of(p) == helper)
                .collect();
            assert_eq!(keepers.len(), 1, "{c}/{slot}: one keeper among {pids:?}");
            let keeper = keepers[0];
            let standby: Vec<u32> = pids
                .iter()
                .copied()
                .filter(|&p| parent_of(p) == keeper)
                .collect();
            assert!(standby.len() <= 1, "{c}/{slot}: {pids:?}");
            // The prepared sandbox: its init, and the process the init forked ahead.
            let inits: Vec<u32> = pids
                .iter()
                .copied()
                .filter(|&p| standby.contains(&parent_of(p)))
                .collect();
            for p in &pids {
                let parent = parent_of(*p);
                assert!(
                    parent == 0
                        || *p == keeper
                        || parent == keeper
                        || standby.contains(&parent)
                        || inits.contains(&parent),
                    "{c}/{slot}: {p} is neither the keeper nor its prepared sandbox ({pids:?})"
                );
            }
        }
    }
    // The staging directories only ever held mounts of the runs' namespaces.
    assert_eq!(entries(&staging), ["root", "scratch"]);
    assert_eq!(entries(&staging.join("root")), Vec::<String>::new());
    assert_eq!(entries(&staging.join("scratch")), Vec::<String>::new());

    // Dropping the jail waits for the helper, which removes its cgroups and staging dir.
    drop(jail);
    assert!(
        !Path::new(&format!("/proc/{helper}")).exists(),
        "the helper was reaped"
    );
    for c in CONTROLLERS {
        assert!(!instance(c).exists(), "{} is left", instance(c).display());
    }
    assert!(!staging.exists(), "{} is left", staging.display());
    assert_eq!(host_processes_with_uid(common::host_uids(UID_BASE)), vec![]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

/// The parent pid of `pid`, from /proc/<pid>/stat; 0 when it has exited meanwhile.
fn parent_of(pid: u32) -> u32 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let after_name = stat.rsplit_once(')').expect("a stat line").1;
    after_name
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("a parent pid")
}
