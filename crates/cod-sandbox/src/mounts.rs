//! The sandbox's root filesystem: planned by the supervisor (which may allocate), built by
//! the sandbox's init after `clone` (which may not).
//!
//! Layout inside the sandbox:
//!
//! | path | what |
//! |---|---|
//! | `/` | a 1 MiB tmpfs, read-only once built |
//! | binds (e.g. `/usr`) | read-only, nosuid, nodev binds of host paths |
//! | `/bin`, `/lib`, ... | symlinks as the caller asks (merged-/usr hosts) |
//! | `/etc` | generated `passwd`, `group`, `hosts`, plus any file binds |
//! | `/box`, `/tmp`, `/dev/shm` | one size-limited tmpfs, private to the run (the only writable places) |
//! | `/dev` | read-only tmpfs with `null`, `zero`, `full`, `random`, `urandom` bound from the host |
//! | `/proc` | a new procfs of the run's PID namespace, showing only the program's processes |
//!
//! Both tmpfs are mounted on the helper's staging directories inside the run's private mount
//! namespace, so the host never sees them and they vanish with the namespace.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, CWD, Gid, Mode, OFlags, Uid};
use rustix::io::Errno;
use rustix::mount::{
    MountFlags, MountPropagationFlags, MoveMountFlags, OpenTreeFlags, UnmountFlags, mount,
    mount_change, move_mount, open_tree, unmount,
};

use crate::spec::{Bind, SANDBOX_ID, Symlink};
use crate::sys;

/// A step of building the root, named in error reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Step {
    MakePrivate = 1,
    MountRoot,
    MountScratch,
    MakeDir,
    Bind,
    BindReadOnly,
    Symlink,
    WriteEtc,
    WorkFile,
    MountDev,
    Device,
    MountProc,
    Hostname,
    PivotRoot,
    RootReadOnly,
    UnshareCgroup,
    BecomeRoot,
    WorkDir,
}

impl Step {
    pub(crate) fn from_u32(v: u32) -> Option<Step> {
        use Step::*;
        [
            MakePrivate,
            MountRoot,
            MountScratch,
            MakeDir,
            Bind,
            BindReadOnly,
            Symlink,
            WriteEtc,
            WorkFile,
            MountDev,
            Device,
            MountProc,
            Hostname,
            PivotRoot,
            RootReadOnly,
            UnshareCgroup,
            BecomeRoot,
            WorkDir,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Step::MakePrivate => "making mounts private",
            Step::MountRoot => "mounting the root tmpfs",
            Step::MountScratch => "mounting the work tmpfs",
            Step::MakeDir => "creating a directory",
            Step::Bind => "bind-mounting",
            Step::BindReadOnly => "making a bind mount read-only",
            Step::Symlink => "creating a symlink",
            Step::WriteEtc => "writing a file in /etc",
            Step::WorkFile => "writing a file in the work dir",
            Step::MountDev => "mounting /dev",
            Step::Device => "binding a device",
            Step::MountProc => "mounting /proc",
            Step::Hostname => "setting the hostname",
            Step::PivotRoot => "pivoting into the new root",
            Step::RootReadOnly => "making the root read-only",
            Step::UnshareCgroup => "entering a cgroup namespace",
            Step::BecomeRoot => "becoming the namespace's root",
            Step::WorkDir => "preparing the work dir",
        }
    }
}

/// A setup failure: the step, which item of it (an index into the plan's list, or -1), and
/// the errno.
pub(crate) type SetupError = (Step, i32, Errno);

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// a path is relative or contains `..`
    #[error("sandbox path {0} must be absolute and normal")]
    BadPath(PathBuf),
    /// a path contains a NUL byte
    #[error("path {0:?} contains a NUL byte")]
    Nul(PathBuf),
    /// a bind source does not exist on the host
    #[error("bind source {path} is not accessible")]
    MissingSource {
        /// The host path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// more binds than [`MAX_BINDS`]
    #[error("{0} binds (at most {MAX_BINDS})")]
    TooManyBinds(usize),
}

pub(crate) struct BindPlan {
    pub(crate) src: CString,
    /// Relative to the new root.
    pub(crate) dst: CString,
    is_dir: bool,
}

/// Most read-only binds one sandbox may have.
pub const MAX_BINDS: usize = 32;

/// Everything init needs to build the root, prepared ahead so that init does not allocate.
/// Paths inside the new root are relative to it; init works from descriptors.
pub(crate) struct MountPlan {
    staging_root: CString,
    staging_scratch: CString,
    root_opts: CString,
    scratch_opts: CString,
    /// Directories to create in the root tmpfs, parents first.
    dirs: Vec<CString>,
    pub(crate) binds: Vec<BindPlan>,
    symlinks: Vec<(CString, CString)>,
    etc_files: Vec<(CString, Vec<u8>)>,
}

fn cstr(p: impl AsRef<Path>) -> Result<CString, PlanError> {
    CString::new(p.as_ref().as_os_str().as_bytes()).map_err(|_| PlanError::Nul(p.as_ref().into()))
}

/// `inside` (absolute, normal, not `/`) relative to the sandbox's root.
fn relative(inside: &Path) -> Result<PathBuf, PlanError> {
    let mut out = PathBuf::new();
    let mut comps = inside.components();
    if comps.next() != Some(Component::RootDir) {
        return Err(PlanError::BadPath(inside.into()));
    }
    for c in comps {
        match c {
            Component::Normal(n) => out.push(n),
            _ => return Err(PlanError::BadPath(inside.into())),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(PlanError::BadPath(inside.into()));
    }
    Ok(out)
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/false\nsandbox:x:1000:1000:sandbox:/box:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n";
const HOSTS: &str = "127.0.0.1 localhost cod\n::1 localhost\n";

/// Host devices bound into `/dev`, and their place in the new root.
const DEVICES: [(&CStr, &CStr); 5] = [
    (c"/dev/null", c"dev/null"),
    (c"/dev/zero", c"dev/zero"),
    (c"/dev/full", c"dev/full"),
    (c"/dev/random", c"dev/random"),
    (c"/dev/urandom", c"dev/urandom"),
];
const DEV_LINKS: [(&CStr, &CStr); 4] = [
    (c"/proc/self/fd", c"dev/fd"),
    (c"/proc/self/fd/0", c"dev/stdin"),
    (c"/proc/self/fd/1", c"dev/stdout"),
    (c"/proc/self/fd/2", c"dev/stderr"),
];

impl MountPlan {
    /// Plans a root with `binds`, `symlinks` and a work tmpfs of `disk` bytes, using the
    /// staging directories `root` and `scratch`.
    pub(crate) fn new(
        binds: &[Bind],
        symlinks: &[Symlink],
        disk: u64,
        root: &Path,
        scratch: &Path,
    ) -> Result<Self, PlanError> {
        if binds.len() > MAX_BINDS {
            return Err(PlanError::TooManyBinds(binds.len()));
        }
        let mut dirs: Vec<PathBuf> = ["etc", "proc", "dev", "box", "tmp"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let mut planned_binds = Vec::new();
        for b in binds {
            let meta = std::fs::metadata(&b.src).map_err(|source| PlanError::MissingSource {
                path: b.src.clone(),
                source,
            })?;
            let dst = relative(&b.dst)?;
            dirs.extend(
                dst.ancestors()
                    .skip(1)
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(Path::to_owned),
            );
            if meta.is_dir() {
                dirs.push(dst.clone());
            }
            planned_binds.push(BindPlan {
                src: cstr(&b.src)?,
                dst: cstr(&dst)?,
                is_dir: meta.is_dir(),
            });
        }
        let mut planned_links = Vec::new();
        for l in symlinks {
            let path = relative(&l.path)?;
            dirs.extend(
                path.ancestors()
                    .skip(1)
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(Path::to_owned),
            );
            planned_links.push((cstr(&l.target)?, cstr(&path)?));
        }
        // Parents first (fewer components), then by name so that duplicates are neighbours.
        dirs.sort_by(|a, b| {
            a.components()
                .count()
                .cmp(&b.components().count())
                .then(a.cmp(b))
        });
        dirs.dedup();

        // The size can change before each run (see init.rs, CMD_DISK); the inode count is
        // fixed, generous (inodes are charged to the memory cgroup anyway).
        let disk = disk.max(1 << 20);
        let inodes = 65536;
        Ok(MountPlan {
            staging_root: cstr(root)?,
            staging_scratch: cstr(scratch)?,
            root_opts: cstr("size=1m,nr_inodes=4096,mode=0755,uid=0,gid=0")?,
            scratch_opts: CString::new(format!(
                "size={disk},nr_inodes={inodes},mode=0755,uid=0,gid=0"
            ))
            .expect("no NUL in numbers"),
            dirs: dirs.iter().map(cstr).collect::<Result<_, _>>()?,
            binds: planned_binds,
            symlinks: planned_links,
            etc_files: vec![
                (cstr("etc/passwd")?, PASSWD.as_bytes().to_vec()),
                (cstr("etc/group")?, GROUP.as_bytes().to_vec()),
                (cstr("etc/hosts")?, HOSTS.as_bytes().to_vec()),
                (cstr("etc/hostname")?, b"cod\n".to_vec()),
            ],
        })
    }

    /// Builds the root and pivots into it. Runs in the sandbox's init, which starts as the
    /// host's root uid (unmapped in the run's user namespace, so unable to create files
    /// there): everything taken from the host is opened first, then the init becomes the
    /// namespace's root (an unprivileged host uid) and assembles the tree from descriptors.
    /// Async-signal-safe, no allocation.
    pub(crate) fn build(&self) -> Result<(), SetupError> {
        let e = |step: Step, i: usize| {
            move |errno: Errno| (step, i32::try_from(i).unwrap_or(-1), errno)
        };
        let nosuid_nodev = MountFlags::NOSUID | MountFlags::NODEV;
        let ro = sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;

        mount_change(
            c"/",
            MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
        )
        .map_err(e(Step::MakePrivate, 0))?;
        mount(
            c"tmpfs",
            &*self.staging_root,
            c"tmpfs",
            nosuid_nodev,
            Some(&*self.root_opts),
        )
        .map_err(e(Step::MountRoot, 0))?;
        mount(
            c"tmpfs",
            &*self.staging_scratch,
            c"tmpfs",
            nosuid_nodev,
            Some(&*self.scratch_opts),
        )
        .map_err(e(Step::MountScratch, 0))?;
        let dir_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let root = rustix::fs::open(&*self.staging_root, dir_flags, Mode::empty())
            .map_err(e(Step::MountRoot, 1))?;
        let scratch = rustix::fs::open(&*self.staging_scratch, dir_flags, Mode::empty())
            .map_err(e(Step::MountScratch, 1))?;

        // Detached, read-only copies of every host tree and device, taken while the init can
        // still look up host paths.
        let clone = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
        let mut trees: [Option<OwnedFd>; MAX_BINDS] = std::array::from_fn(|_| None);
        for (i, b) in self.binds.iter().enumerate() {
            let fd = open_tree(CWD, &*b.src, clone | OpenTreeFlags::AT_RECURSIVE)
                .map_err(e(Step::Bind, i))?;
            sys::mount_setattr(Some(fd.as_fd()), c"", true, ro)
                .map_err(e(Step::BindReadOnly, i))?;
            trees[i] = Some(fd);
        }
        let mut devices: [Option<OwnedFd>; DEVICES.len()] = std::array::from_fn(|_| None);
        for (i, (host, _)) in DEVICES.iter().enumerate() {
            devices[i] = Some(open_tree(CWD, *host, clone).map_err(e(Step::Device, i))?);
        }

        // Become the namespace's root: mapped, so files can be created in the new tmpfs.
        let zero_u = Uid::from_raw(0);
        let zero_g = Gid::from_raw(0);
        rustix::thread::set_thread_groups(&[]).map_err(e(Step::BecomeRoot, 0))?;
        rustix::thread::set_thread_res_gid(zero_g, zero_g, zero_g)
            .map_err(e(Step::BecomeRoot, 1))?;
        rustix::thread::set_thread_res_uid(zero_u, zero_u, zero_u)
            .map_err(e(Step::BecomeRoot, 2))?;
        rustix::process::fchdir(&root).map_err(e(Step::PivotRoot, 0))?;

        for (i, d) in self.dirs.iter().enumerate() {
            mkdir_ok(CWD, d, 0o755).map_err(e(Step::MakeDir, i))?;
        }
        for (i, b) in self.binds.iter().enumerate() {
            if !b.is_dir {
                create_empty(&b.dst).map_err(e(Step::Bind, i))?;
            }
            if let Some(fd) = &trees[i] {
                move_mount(
                    fd,
                    c"",
                    CWD,
                    &*b.dst,
                    MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
                )
                .map_err(e(Step::Bind, i))?;
            }
        }
        for (i, (target, link)) in self.symlinks.iter().enumerate() {
            rustix::fs::symlinkat(&**target, CWD, &**link).map_err(e(Step::Symlink, i))?;
        }
        for (i, (path, content)) in self.etc_files.iter().enumerate() {
            write_new(CWD, path, content, 0o644, None).map_err(e(Step::WriteEtc, i))?;
        }

        // The private, size-limited tmpfs: /box (owned by the program's uid), /tmp, /dev/shm.
        let id = (Uid::from_raw(SANDBOX_ID), Gid::from_raw(SANDBOX_ID));
        mkdir_ok(&scratch, c"box", 0o755).map_err(e(Step::WorkDir, 0))?;
        rustix::fs::chownat(&scratch, c"box", Some(id.0), Some(id.1), AtFlags::empty())
            .map_err(e(Step::WorkDir, 1))?;
        for d in [c"tmp", c"shm"] {
            mkdir_ok(&scratch, d, 0o1777).map_err(e(Step::WorkDir, 2))?;
            // mkdir applies the umask; set the sticky, world-writable mode explicitly.
            rustix::fs::chmodat(&scratch, d, Mode::from_raw_mode(0o1777), AtFlags::empty())
                .map_err(e(Step::WorkDir, 3))?;
        }
        for (i, (from, to)) in [(c"box", c"box"), (c"tmp", c"tmp")].into_iter().enumerate() {
            let t = open_tree(&scratch, from, clone).map_err(e(Step::WorkDir, 5 + i))?;
            move_mount(&t, c"", CWD, to, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
                .map_err(e(Step::WorkDir, 5 + i))?;
        }

        // /dev: a small read-only tmpfs with the host's harmless devices bound in.
        mount(
            c"tmpfs",
            c"dev",
            c"tmpfs",
            MountFlags::NOSUID | MountFlags::NOEXEC,
            Some(c"size=64k,nr_inodes=64,mode=0755"),
        )
        .map_err(e(Step::MountDev, 0))?;
        for (i, (_, dst)) in DEVICES.iter().enumerate() {
            create_empty(dst).map_err(e(Step::Device, i))?;
            if let Some(fd) = &devices[i] {
                move_mount(fd, c"", CWD, *dst, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
                    .map_err(e(Step::Device, i))?;
            }
        }
        for (i, (target, link)) in DEV_LINKS.iter().enumerate() {
            rustix::fs::symlinkat(*target, CWD, *link).map_err(e(Step::MountDev, 2 + i))?;
        }
        mkdir_ok(CWD, c"dev/shm", 0o755).map_err(e(Step::MountDev, 10))?;
        let shm = open_tree(&scratch, c"shm", clone).map_err(e(Step::MountDev, 11))?;
        move_mount(
            &shm,
            c"",
            CWD,
            c"dev/shm",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(e(Step::MountDev, 12))?;
        sys::mount_setattr(None, c"dev", false, sys::MOUNT_ATTR_RDONLY)
            .map_err(e(Step::MountDev, 13))?;

        // hidepid=invisible: the program sees only processes of its own uid, not the init
        // (whose command line would name the host's path to cod).
        mount(
            c"proc",
            c"proc",
            c"proc",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            Some(c"hidepid=invisible"),
        )
        .map_err(e(Step::MountProc, 0))?;

        rustix::system::sethostname(b"cod").map_err(e(Step::Hostname, 0))?;

        // pivot_root(".", "."): the old root ends up stacked on the new one and is detached
        // at once (pivot_root(2), NOTES), which needs no directory for it.
        rustix::process::pivot_root(c".", c".").map_err(e(Step::PivotRoot, 1))?;
        unmount(c".", UnmountFlags::DETACH).map_err(e(Step::PivotRoot, 2))?;
        rustix::process::chdir(c"/").map_err(e(Step::PivotRoot, 3))?;
        sys::mount_setattr(None, c"/", false, ro).map_err(e(Step::RootReadOnly, 0))?;
        Ok(())
    }

    /// Describes item `index` of `step`, for error messages (supervisor side).
    pub(crate) fn describe_item(&self, step: Step, index: i32) -> String {
        let i = usize::try_from(index).ok();
        let show = |c: &CStr| c.to_string_lossy().into_owned();
        match (step, i) {
            (Step::Bind | Step::BindReadOnly, Some(i)) if i < self.binds.len() => {
                format!(
                    " {} -> /{}",
                    show(&self.binds[i].src),
                    show(&self.binds[i].dst)
                )
            }
            (Step::MakeDir, Some(i)) if i < self.dirs.len() => format!(" /{}", show(&self.dirs[i])),
            (Step::Symlink, Some(i)) if i < self.symlinks.len() => {
                format!(" /{}", show(&self.symlinks[i].1))
            }
            (Step::Device, Some(i)) if i < DEVICES.len() => format!(" {}", show(DEVICES[i].0)),
            _ => String::new(),
        }
    }
}

fn mkdir_ok<Fd: AsFd>(dir: Fd, path: &CStr, mode: u32) -> Result<(), Errno> {
    match rustix::fs::mkdirat(dir, path, Mode::from_raw_mode(mode)) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

fn create_empty(path: &CStr) -> Result<(), Errno> {
    rustix::fs::open(
        path,
        OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map(drop)
}

fn write_new<Fd: AsFd>(
    dir: Fd,
    path: &CStr,
    content: &[u8],
    mode: u32,
    owner: Option<(Uid, Gid)>,
) -> Result<(), Errno> {
    let fd: OwnedFd = rustix::fs::openat(
        dir,
        path,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(mode),
    )?;
    let mut rest = content;
    while !rest.is_empty() {
        let n = rustix::io::write(&fd, rest)?;
        rest = &rest[n..];
    }
    if let Some((u, g)) = owner {
        rustix::fs::fchown(&fd, Some(u), Some(g))?;
    }
    // The umask may have masked the mode at creation.
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binds() -> Vec<Bind> {
        vec![
            Bind {
                src: "/usr".into(),
                dst: "/usr".into(),
            },
            Bind {
                src: "/etc/hostname".into(),
                dst: "/etc/hostname.host".into(),
            },
        ]
    }

    fn links() -> Vec<Symlink> {
        vec![Symlink {
            path: "/bin".into(),
            target: "usr/bin".into(),
        }]
    }

    fn plan(binds: &[Bind]) -> Result<MountPlan, PlanError> {
        MountPlan::new(
            binds,
            &links(),
            64 << 20,
            Path::new("/s/root"),
            Path::new("/s/scratch"),
        )
    }

    #[test]
    fn plan_places_everything_under_the_staging_root() {
        let p = plan(&binds()).unwrap();
        assert_eq!(p.binds[0].dst.to_str().unwrap(), "usr");
        assert!(p.binds[0].is_dir);
        assert!(!p.binds[1].is_dir);
        let dirs: Vec<_> = p
            .dirs
            .iter()
            .map(|d| d.to_str().unwrap().to_owned())
            .collect();
        assert!(dirs.contains(&"usr".to_owned()));
        assert!(dirs.contains(&"etc".to_owned()));
        // parents come before children and nothing repeats
        let mut seen = std::collections::HashSet::new();
        for d in &dirs {
            assert!(seen.insert(d.clone()), "{d} twice");
            let parent = Path::new(d).parent().unwrap().to_str().unwrap().to_owned();
            assert!(
                parent.is_empty() || seen.contains(&parent),
                "{d} before its parent"
            );
        }
        assert!(
            p.scratch_opts
                .to_str()
                .unwrap()
                .starts_with("size=67108864,")
        );
        assert_eq!(p.describe_item(Step::Bind, 0), " /usr -> /usr");
    }

    #[test]
    fn plan_rejects_escapes_and_missing_sources() {
        let mut b = binds();
        b[0].dst = "/usr/../../etc".into();
        assert!(matches!(plan(&b), Err(PlanError::BadPath(_))));
        let mut b = binds();
        b[0].dst = "relative".into();
        assert!(matches!(plan(&b), Err(PlanError::BadPath(_))));
        let mut b = binds();
        b[0].src = "/definitely/not/here".into();
        assert!(matches!(plan(&b), Err(PlanError::MissingSource { .. })));
        let many: Vec<Bind> = (0..=MAX_BINDS).map(|_| binds()[0].clone()).collect();
        assert!(matches!(plan(&many), Err(PlanError::TooManyBinds(_))));
    }

    #[test]
    fn steps_round_trip_through_numbers() {
        for v in 1..=18 {
            let s = Step::from_u32(v).unwrap();
            assert_eq!(s as u32, v);
            assert!(!s.describe().is_empty());
        }
        assert!(Step::from_u32(0).is_none());
    }
}
