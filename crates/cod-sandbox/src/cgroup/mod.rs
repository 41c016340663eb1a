//! A small cgroupfs layer: one cgroup per worker slot, created once and reused by every run
//! of that slot (creating and removing a cgroup per run costs a 10–50 ms tail on v1).
//!
//! Layout: `<root>/<name>/<instance>/slot-<n>` where `<instance>` is the helper's pid, under
//! each v1 controller (`memory`, `pids`, `cpu`, `cpuacct`) or once in the v2 hierarchy.
//! Instances whose process is gone are removed at start-up. The cgroupfs root is a
//! parameter so tests run against a fake tree in a temp dir.

mod v1;
mod v2;

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

pub use cod_core::config::CgroupMode;

/// A failed cgroupfs operation, with the file it concerned.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// no usable hierarchy
    #[error("no usable cgroup hierarchy under {root}: {why}")]
    Unavailable {
        /// The cgroupfs root that was searched.
        root: PathBuf,
        /// What is missing.
        why: String,
    },
    /// creating a cgroup directory failed
    #[error("creating cgroup {path}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// removing a cgroup directory failed
    #[error("removing cgroup {path}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// writing a control file failed
    #[error("writing {value:?} to {path}")]
    Write {
        /// The control file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// reading a control file failed
    #[error("reading {path}")]
    Read {
        /// The control file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// a control file held something unexpected
    #[error("unexpected contents {content:?} in {path}")]
    Parse {
        /// The control file.
        path: PathBuf,
        /// What it held.
        content: String,
    },
}

/// Limits written to a slot's cgroup before each stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Memory, swap included, bytes.
    pub memory: u64,
    /// Processes and threads the run may add to those already in the slot (its keeper,
    /// supervisor and init, and whatever else cod keeps there).
    pub pids: u64,
}

/// What a stage used, from the cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time of every task.
    pub cpu: Duration,
    /// Peak memory above the slot's usage at the start of the stage, bytes.
    pub memory_peak: u64,
    /// Processes the OOM killer ended during the stage.
    pub oom_kills: u64,
}

/// Counters read before a stage, to subtract from those read after.
#[derive(Debug)]
pub struct Baseline {
    cpu: Duration,
    memory: u64,
    oom_kills: u64,
}

/// cod's cgroups of one helper process: a directory per controller (v1) or one (v2).
#[derive(Debug)]
pub enum CgroupTree {
    /// v1 hierarchies.
    V1(v1::Tree),
    /// The v2 hierarchy.
    V2(v2::Tree),
}

/// The cgroup of one worker slot.
#[derive(Debug)]
pub enum SlotCgroup {
    /// v1.
    V1(v1::Slot),
    /// v2.
    V2(v2::Slot),
}

impl CgroupTree {
    /// Picks the hierarchy for `mode` under `root`.
    pub fn detect(mode: CgroupMode, root: &Path) -> Result<CgroupMode, CgroupError> {
        let v2_ok = v2::usable(root);
        let v1_ok = v1::usable(root);
        match mode {
            CgroupMode::V2 if v2_ok.is_ok() => Ok(CgroupMode::V2),
            CgroupMode::V2 => Err(CgroupError::Unavailable {
                root: root.to_owned(),
                why: v2_ok.err().unwrap_or_default(),
            }),
            CgroupMode::V1 if v1_ok.is_ok() => Ok(CgroupMode::V1),
            CgroupMode::V1 => Err(CgroupError::Unavailable {
                root: root.to_owned(),
                why: v1_ok.err().unwrap_or_default(),
            }),
            CgroupMode::Auto => match (v2_ok, v1_ok) {
                (Ok(()), _) => Ok(CgroupMode::V2),
                (_, Ok(())) => Ok(CgroupMode::V1),
                (Err(a), Err(b)) => Err(CgroupError::Unavailable {
                    root: root.to_owned(),
                    why: format!("v2: {a}; v1: {b}"),
                }),
            },
        }
    }

    /// Creates `<root>/<name>/<instance>` (removing stale instances whose process is gone)
    /// for the hierarchy `mode` selects.
    pub fn create(
        mode: CgroupMode,
        root: &Path,
        name: &str,
        instance: u32,
        cpus: u32,
    ) -> Result<CgroupTree, CgroupError> {
        match Self::detect(mode, root)? {
            CgroupMode::V2 => Ok(CgroupTree::V2(v2::Tree::create(
                root, name, instance, cpus,
            )?)),
            _ => Ok(CgroupTree::V1(v1::Tree::create(
                root, name, instance, cpus,
            )?)),
        }
    }

    /// The version in use.
    pub fn mode(&self) -> CgroupMode {
        match self {
            CgroupTree::V1(_) => CgroupMode::V1,
            CgroupTree::V2(_) => CgroupMode::V2,
        }
    }

    /// The cgroup of slot `n`, created on first use.
    pub fn slot(&self, n: u32) -> Result<SlotCgroup, CgroupError> {
        match self {
            CgroupTree::V1(t) => t.slot(n).map(SlotCgroup::V1),
            CgroupTree::V2(t) => t.slot(n).map(SlotCgroup::V2),
        }
    }

    /// Removes every slot and the instance directory.
    pub fn remove(&self) -> Result<(), CgroupError> {
        match self {
            CgroupTree::V1(t) => t.remove(),
            CgroupTree::V2(t) => t.remove(),
        }
    }

    /// Directories of this instance (one per v1 controller, or one), for diagnostics and tests.
    pub fn instance_dirs(&self) -> Vec<PathBuf> {
        match self {
            CgroupTree::V1(t) => t.instance_dirs(),
            CgroupTree::V2(t) => vec![t.instance_dir().to_owned()],
        }
    }
}

impl SlotCgroup {
    /// Writes the stage's limits and reads the counters the stage's usage is measured from.
    pub fn prepare(&self, limits: CgroupLimits) -> Result<Baseline, CgroupError> {
        match self {
            SlotCgroup::V1(s) => s.prepare(limits),
            SlotCgroup::V2(s) => s.prepare(limits),
        }
    }

    /// Moves process `pid` (and its future children) into the slot.
    pub fn attach(&self, pid: i32) -> Result<(), CgroupError> {
        match self {
            SlotCgroup::V1(s) => s.attach(pid),
            SlotCgroup::V2(s) => s.attach(pid),
        }
    }

    /// CPU time used so far by the slot (cumulative; subtract a baseline).
    pub fn cpu_total(&self) -> Result<Duration, CgroupError> {
        match self {
            SlotCgroup::V1(s) => s.cpu_total(),
            SlotCgroup::V2(s) => s.cpu_total(),
        }
    }

    /// CPU time used since `base` was taken.
    pub fn cpu_since(&self, base: &Baseline) -> Result<Duration, CgroupError> {
        Ok(self.cpu_total()?.saturating_sub(base.cpu))
    }

    /// What the stage used since `base` was taken.
    pub fn usage(&self, base: &Baseline) -> Result<Usage, CgroupError> {
        match self {
            SlotCgroup::V1(s) => s.usage(base),
            SlotCgroup::V2(s) => s.usage(base),
        }
    }

    /// Opens the slot's control files now, so that the processes this one forks (a slot's
    /// supervisors) share them instead of each opening its own.
    pub fn open_controls(&self) -> Result<(), CgroupError> {
        self.controls().try_for_each(Control::open)
    }

    /// The descriptors of the control files opened so far: a sandbox's init closes them.
    pub fn open_fds(&self) -> Vec<RawFd> {
        self.controls()
            .filter_map(|c| c.file.get().map(|o| o.file.as_raw_fd()))
            .collect()
    }

    fn controls(&self) -> Box<dyn Iterator<Item = &Control> + '_> {
        match self {
            SlotCgroup::V1(s) => Box::new(s.controls()),
            SlotCgroup::V2(s) => Box::new(s.controls()),
        }
    }

    /// Pids of the processes in the slot.
    pub fn procs(&self) -> Result<Vec<i32>, CgroupError> {
        let procs = match self {
            SlotCgroup::V1(s) => s.procs(),
            SlotCgroup::V2(s) => s.procs(),
        };
        let text = procs.read_string()?;
        text.split_whitespace()
            .map(|p| {
                p.parse().map_err(|_| CgroupError::Parse {
                    path: procs.path().to_owned(),
                    content: text.clone(),
                })
            })
            .collect()
    }

    /// Kills every process in the slot (the PID namespace normally already has).
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        match self {
            SlotCgroup::V2(s) => s.kill_all(),
            SlotCgroup::V1(_) => {
                kill_and_wait(self.procs()?.into_iter());
                Ok(())
            }
        }
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    })
}

/// Reads a control file: one `open`, one read of a buffer sized for control files (a short
/// read is the end, for cgroupfs as for a plain file), one `close`.
fn read_string(path: &Path) -> Result<String, CgroupError> {
    let f = fs::File::open(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })?;
    read_whole(&f, path)
}

/// Reads all of `f` from offset 0, whatever its file position: an open cgroupfs file
/// produces its current contents again on each read from 0.
fn read_whole(f: &fs::File, path: &Path) -> Result<String, CgroupError> {
    let err = |source| CgroupError::Read {
        path: path.to_owned(),
        source,
    };
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        match f.read_at(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if len < buf.len() {
                    break;
                }
                buf.resize(len * 2, 0);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(err(e)),
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| err(io::Error::new(io::ErrorKind::InvalidData, e)))
}

fn parse_u64(path: &Path, s: String) -> Result<u64, CgroupError> {
    s.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.to_owned(),
        content: s,
    })
}

/// `key value` lines (memory.events, cpu.stat, memory.oom_control): `key`'s value.
fn parse_keyed(path: &Path, s: String, key: &str) -> Result<u64, CgroupError> {
    s.lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(key)).then(|| it.next()?.parse().ok())?
        })
        .ok_or_else(|| CgroupError::Parse {
            path: path.to_owned(),
            content: s,
        })
}

/// A slot's control file, opened on its first use and from then on read or written at
/// offset 0 through that one descriptor.
///
/// A run's set-up and accounting touch about fifteen control files; a path walk, `open` and
/// `close` for each cost several times the read or write itself (7–11 µs against 0.6–2.6
/// µs on the reference machine). The slot's keeper opens them
/// ([`SlotCgroup::open_controls`]) before it forks the supervisors that use them, so all of
/// the slot's runs share one set. The descriptors are close-on-exec, a sandbox's init
/// closes them as soon as it is forked ([`SlotCgroup::open_fds`]), and a zygote closes
/// every descriptor it was not handed, so none reaches a run.
#[derive(Debug)]
pub(super) struct Control {
    path: PathBuf,
    writable: bool,
    file: OnceLock<Opened>,
}

#[derive(Debug)]
struct Opened {
    file: fs::File,
    /// Not cgroupfs (a fake tree in tests): a write must also cut the tail an older,
    /// longer value leaves in a plain file.
    plain: bool,
}

impl Control {
    /// A file only read.
    pub(super) fn read_only(path: PathBuf) -> Control {
        Control {
            path,
            writable: false,
            file: OnceLock::new(),
        }
    }

    /// A file written (and maybe read).
    pub(super) fn writable(path: PathBuf) -> Control {
        Control {
            path,
            writable: true,
            file: OnceLock::new(),
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    fn opened(&self, value: Option<&str>) -> Result<&Opened, CgroupError> {
        if let Some(o) = self.file.get() {
            return Ok(o);
        }
        let err = |source| match value {
            Some(v) => CgroupError::Write {
                path: self.path.clone(),
                value: v.to_owned(),
                source,
            },
            None => CgroupError::Read {
                path: self.path.clone(),
                source,
            },
        };
        let file = fs::OpenOptions::new()
            .read(true)
            .write(self.writable)
            .open(&self.path)
            .map_err(err)?;
        let fs_type = rustix::fs::fstatfs(&file)
            .map_err(|e| err(e.into()))?
            .f_type;
        let plain = fs_type != CGROUP_SUPER_MAGIC && fs_type != CGROUP2_SUPER_MAGIC;
        // Another thread of this process may have opened it meanwhile: either is fine.
        Ok(self.file.get_or_init(|| Opened { file, plain }))
    }

    /// Opens the file now, if it is not yet.
    pub(super) fn open(&self) -> Result<(), CgroupError> {
        self.opened(None).map(|_| ())
    }

    pub(super) fn read_string(&self) -> Result<String, CgroupError> {
        read_whole(&self.opened(None)?.file, &self.path)
    }

    pub(super) fn read_u64(&self) -> Result<u64, CgroupError> {
        parse_u64(&self.path, self.read_string()?)
    }

    pub(super) fn read_keyed(&self, key: &str) -> Result<u64, CgroupError> {
        parse_keyed(&self.path, self.read_string()?, key)
    }

    pub(super) fn write(&self, value: &str) -> Result<(), CgroupError> {
        let o = self.opened(Some(value))?;
        let err = |source| CgroupError::Write {
            path: self.path.clone(),
            value: value.to_owned(),
            source,
        };
        // cgroupfs takes each write whole, as one value, wherever the offset is.
        let n = o.file.write_at(value.as_bytes(), 0).map_err(err)?;
        if n != value.len() {
            return Err(err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the value was taken in part",
            )));
        }
        if o.plain {
            o.file.set_len(n as u64).map_err(err)?;
        }
        Ok(())
    }
}

/// `statfs` magic numbers of cgroupfs (v1) and cgroup2fs.
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::Create {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Removes cgroup directory `dir` and its child cgroups, deepest first, killing whatever
/// still runs in them (`procs_file` names the file listing a cgroup's processes).
fn remove_tree(dir: &Path, procs_file: &str) -> Result<(), CgroupError> {
    if !dir.exists() {
        return Ok(());
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path(), procs_file)?;
            }
        }
    }
    if let Ok(text) = fs::read_to_string(dir.join(procs_file)) {
        kill_and_wait(text.split_whitespace().filter_map(|p| p.parse().ok()));
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        // A plain directory (fake trees in tests) still holds its control files.
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
            fs::remove_dir_all(dir).map_err(|source| CgroupError::Remove {
                path: dir.to_owned(),
                source,
            })
        }
        Err(source) => Err(CgroupError::Remove {
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Sends SIGKILL to each pid through a pidfd and waits (up to 5 s each) until it is gone, so
/// that its cgroup can be removed. Pids that no longer exist are skipped.
pub(crate) fn kill_and_wait(pids: impl Iterator<Item = i32>) {
    use rustix::event::{PollFd, PollFlags, poll};
    use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
    for pid in pids {
        let Some(pid) = Pid::from_raw(pid) else {
            continue;
        };
        let Ok(fd) = pidfd_open(pid, PidfdFlags::empty()) else {
            continue;
        };
        let _ = pidfd_send_signal(&fd, Signal::KILL);
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let timeout = rustix::event::Timespec {
            tv_sec: 5,
            tv_nsec: 0,
        };
        let _ = poll(&mut fds, Some(&timeout));
    }
}

/// Removes instance directories under `parent` whose owning process no longer exists.
fn remove_stale_instances(parent: &Path, own: u32, procs_file: &str) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let alive = pid != own && Path::new("/proc").join(pid.to_string()).exists();
        if !alive && e.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = remove_tree(&e.path(), procs_file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files_parse() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("memory.events");
        fs::write(&p, "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n").unwrap();
        let c = Control::read_only(p);
        assert_eq!(c.read_keyed("oom_kill").unwrap(), 2);
        assert_eq!(c.read_keyed("oom").unwrap(), 1);
        assert!(matches!(
            c.read_keyed("nope"),
            Err(CgroupError::Parse { .. })
        ));
    }

    #[test]
    fn a_control_kept_open_reads_the_current_value_and_writes_whole_values() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("memory.limit_in_bytes");
        fs::write(&p, "9223372036854771712\n").unwrap();
        let c = Control::writable(p.clone());
        assert_eq!(c.read_u64().unwrap(), 9223372036854771712);
        // A shorter value replaces a longer one entirely.
        c.write("4096").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "4096");
        assert_eq!(c.read_u64().unwrap(), 4096);
        // Changed by someone else: the same descriptor reads the new value.
        fs::write(&p, "123\n").unwrap();
        assert_eq!(c.read_u64().unwrap(), 123);
        // Larger than the first read's buffer.
        let big = "x 1\n".repeat(3000) + "total_cache 77\n";
        fs::write(&p, &big).unwrap();
        assert_eq!(c.read_keyed("total_cache").unwrap(), 77);
        assert_eq!(c.read_string().unwrap(), big);
        // A file that is not there fails with its path, not a panic.
        let gone = Control::read_only(d.path().join("nope"));
        let err = gone.read_u64().unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn a_cgroupfs_file_kept_open_reads_and_writes_current_values() {
        // The real thing, where this machine has it (v1 `pids` here): each write through
        // the open descriptor is one whole value, each read from it the value now.
        let v1 = Path::new("/sys/fs/cgroup/pids");
        let v2 = Path::new("/sys/fs/cgroup");
        let parent = if v1.join("cgroup.procs").exists() {
            v1
        } else if fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "pids"))
        {
            v2
        } else {
            eprintln!("no pids controller here; nothing to test");
            return;
        };
        let dir = parent.join(format!("cod-control-test-{}", std::process::id()));
        if let Err(e) = fs::create_dir(&dir) {
            eprintln!("cannot create {} ({e}); nothing to test", dir.display());
            return;
        }
        let c = Control::writable(dir.join("pids.max"));
        let result = (|| {
            c.write("12345")?;
            let a = c.read_string()?;
            c.write("7")?;
            let b = c.read_string()?;
            c.write("max")?;
            Ok::<_, CgroupError>((a, b, c.read_string()?, c.file.get().unwrap().plain))
        })();
        drop(c);
        fs::remove_dir(&dir).unwrap();
        assert_eq!(
            result.unwrap(),
            ("12345\n".into(), "7\n".into(), "max\n".into(), false)
        );
    }

    #[test]
    fn detect_reports_what_is_missing() {
        let d = tempfile::tempdir().unwrap();
        let err = CgroupTree::detect(CgroupMode::Auto, d.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("v2") && msg.contains("v1"), "{msg}");
    }
}
