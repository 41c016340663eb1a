//! What a caller asks the sandbox to do (`SandboxSpec`) and what it reports back
//! (`SandboxOutcome`). Both cross the socket between caller and helper, so they are plain
//! serde types.

use std::path::PathBuf;
use std::time::Duration;

use cod_core::{LimitReason, Limits, Status};
use serde::{Deserialize, Serialize};

/// Path of the writable work directory inside the sandbox (also `HOME` and the cwd).
pub const WORK_DIR: &str = "/box";
/// uid and gid of the program inside the sandbox.
pub const SANDBOX_ID: u32 = 1000;
/// Most stages one sandbox runs.
pub const MAX_STAGES: usize = 8;

/// One sandbox: a root filesystem, files in the work dir, and programs run one after the
/// other in it (a compile stage, then the run stage).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Worker slot: selects the cgroup and the host uid. A slot runs one sandbox at a time.
    pub slot: u32,
    /// Host paths bound read-only into the sandbox.
    pub binds: Vec<Bind>,
    /// Symbolic links to create in the sandbox's root, such as `/bin -> usr/bin`.
    pub symlinks: Vec<Symlink>,
    /// Files written into the work dir before the first stage.
    pub files: Vec<FileEntry>,
    /// Files copied into the work dir from descriptors, after `files` (see [`SharedFile`]).
    #[serde(default)]
    pub shared: Vec<SharedFile>,
    /// Programs to run, in order. A stage that does not end `ok` ends the sandbox.
    pub stages: Vec<StageSpec>,
    /// Size of the writable tmpfs holding the work dir, `/tmp` and `/dev/shm`, bytes.
    pub disk: u64,
    /// Send each stage's output as it comes ([`Event::Output`](crate::Event::Output)), besides
    /// collecting it for the outcome.
    #[serde(default)]
    pub stream: bool,
}

/// What a sandbox is built with before its run is known: its read-only binds, symlinks and
/// the size of its work tmpfs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Host paths bound read-only.
    pub binds: Vec<Bind>,
    /// Symbolic links in the root.
    pub symlinks: Vec<Symlink>,
    /// Size of the work tmpfs, bytes.
    pub disk: u64,
}

impl Layout {
    /// The layout a spec asks for.
    pub fn of(spec: &SandboxSpec) -> Layout {
        Layout {
            binds: spec.binds.clone(),
            symlinks: spec.symlinks.clone(),
            disk: spec.disk,
        }
    }
}

/// A read-only bind mount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// Host path (file or directory).
    pub src: PathBuf,
    /// Absolute path inside the sandbox.
    pub dst: PathBuf,
}

/// A symbolic link in the sandbox's root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Symlink {
    /// Absolute path of the link inside the sandbox.
    pub path: PathBuf,
    /// What it points to.
    pub target: PathBuf,
}

/// A file in the work directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Plain file name (no directories).
    pub name: String,
    /// Contents.
    #[serde(with = "serde_bytes")]
    pub content: Vec<u8>,
    /// Whether to mark it executable.
    pub executable: bool,
}

/// A read-only file handed to the sandbox by descriptor: a sealed memfd made once (for a
/// cached compiled program, say) and given to every run that needs it. The descriptor
/// travels beside the run's request and on to the init, which copies it into the work dir
/// in the kernel, so none of its bytes cross the run's sockets. Only the name and mode are
/// serialized; a deserialized `SharedFile` has no descriptor until the supervisor attaches
/// the one that came with the request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SharedFile {
    /// Plain file name (no directories).
    pub name: String,
    /// Whether to mark it executable.
    pub executable: bool,
    #[serde(skip)]
    fd: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

impl SharedFile {
    /// A sealed memfd holding `content` (it can no longer be written, grown or shrunk).
    pub fn new(name: &str, content: &[u8], executable: bool) -> std::io::Result<SharedFile> {
        use rustix::fs::{MemfdFlags, SealFlags};
        let fd = rustix::fs::memfd_create(
            c"cod-shared",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        let mut at = 0;
        while at < content.len() {
            at += rustix::io::write(&fd, &content[at..])?;
        }
        rustix::fs::fcntl_add_seals(
            &fd,
            SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
        )?;
        Ok(SharedFile {
            name: name.to_owned(),
            executable,
            fd: Some(std::sync::Arc::new(fd)),
        })
    }

    /// The descriptor (none in a deserialized one not yet attached).
    pub fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd as _;
        self.fd.as_deref().map(|f| f.as_fd())
    }

    /// Gives a deserialized `SharedFile` the descriptor that came with its request.
    pub(crate) fn attach(&mut self, fd: std::os::fd::OwnedFd) {
        self.fd = Some(std::sync::Arc::new(fd));
    }
}

/// Equal names and modes (descriptors are not compared: they are not part of what a spec
/// says, only of how it travels).
impl PartialEq for SharedFile {
    fn eq(&self, other: &SharedFile) -> bool {
        self.name == other.name && self.executable == other.executable
    }
}

impl Eq for SharedFile {}

/// One program run inside the sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSpec {
    /// Program (absolute path inside the sandbox) and its arguments.
    pub argv: Vec<String>,
    /// The whole environment, `KEY=value` each; nothing of the host's is added.
    pub env: Vec<String>,
    /// Limits of this stage. `disk` is taken from the sandbox.
    pub limits: Limits,
    /// Bytes fed to standard input, after which it is closed.
    #[serde(with = "serde_bytes")]
    pub stdin: Vec<u8>,
    /// Work-dir files to hand back after the stage (names, `*` as a wildcard), in an
    /// [`Event::StageFinished`](crate::protocol::Event::StageFinished) sent before the next
    /// stage starts: how a compile stage's output reaches a cache.
    #[serde(default)]
    pub collect: Vec<String>,
    /// The warm runtime (a [`WarmRuntime::name`]) that may run this stage instead of a
    /// fresh `execve` of `argv`, when the slot holds one ready and the stage is the
    /// sandbox's only one. The program sees the same thing either way.
    #[serde(default)]
    pub warm: Option<String>,
    /// Keep stdin open after `stdin` for bytes the caller sends while the stage runs
    /// ([`Request::Stdin`](crate::Request::Stdin)), until it closes it.
    #[serde(default)]
    pub interactive: bool,
}

/// A language runtime that a slot keeps started ahead of its runs, in a zygote: a
/// sandbox whose init has the interpreter initialised and forks a fresh, isolated process
/// for each run (new PID, mount and IPC namespaces, a new work tmpfs, privileges dropped,
/// seccomp installed) that skips both `execve` and the interpreter's start-up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmRuntime {
    /// Name that [`StageSpec::warm`] refers to.
    pub name: String,
    /// The sandbox's binds and links; a run must ask for the same ones to use the zygote.
    pub layout: Layout,
    /// Environment the interpreter starts with (a run with another one gets its own).
    pub env: Vec<String>,
    /// Which interpreter.
    pub kind: WarmKind,
}

/// The interpreters a zygote can hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WarmKind {
    /// CPython, embedded from its shared library. A stage `[program, script, args...]`
    /// runs `script` as `program script args...` would.
    Python {
        /// Path of `libpython3.X.so.1.0` inside the sandbox.
        library: PathBuf,
        /// The interpreter the stage names as `argv[0]` (e.g. `/usr/bin/python3`).
        program: String,
        /// Modules imported ahead (standard ones a program often needs).
        preload: Vec<String>,
    },
    /// A program that cannot be forked once started (Node.js runs threads) is started ahead
    /// for one run instead, in the slot's prepared sandbox, and waits for it: `argv` starts
    /// it (a bootstrap script, bound read-only into the layout), it writes one byte to fd 5
    /// and closes it once it is ready, then reads the run's script and arguments
    /// (NUL-terminated each) on fd 4 until end of file. It is used once; the next one
    /// starts when the slot is idle again.
    Prestart {
        /// The program the stage names as `argv[0]` (e.g. `/usr/bin/node`).
        program: String,
        /// How to start it ahead (e.g. `["/usr/bin/node", "/opt/cod/warm/node.js"]`).
        argv: Vec<String>,
        /// The runtime's own options it was started with (a JVM's heap sizing, say): a run
        /// is taken only if its stage repeats them right after `argv[0]`.
        #[serde(default)]
        options: Vec<String>,
    },
}

impl WarmRuntime {
    /// The program whose stages this runtime can take.
    pub fn program(&self) -> &str {
        match &self.kind {
            WarmKind::Python { program, .. } | WarmKind::Prestart { program, .. } => program,
        }
    }

    /// Whether a zygote holds it (else a prepared sandbox starts it for one run).
    pub fn forks(&self) -> bool {
        matches!(self.kind, WarmKind::Python { .. })
    }
}

/// How a stage's program ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// It was ended by this signal.
    Signal(i32),
    /// It never started, or cod ended the sandbox before it reported.
    #[default]
    Unknown,
}

/// What one stage did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageOutcome {
    /// How the program ended.
    pub exit: Exit,
    /// The limit cod enforced, if the stage was stopped for one or the OOM killer fired.
    pub limit: Option<LimitReason>,
    /// The run was cancelled by its caller.
    pub cancelled: bool,
    /// `execve` failed with this errno (the program does not exist or is not executable).
    pub exec_errno: Option<i32>,
    /// Captured standard output, at most the output limit.
    #[serde(with = "serde_bytes")]
    pub stdout: Vec<u8>,
    /// Captured standard error, at most the output limit.
    #[serde(with = "serde_bytes")]
    pub stderr: Vec<u8>,
    /// Whether stdout went over the limit.
    pub stdout_truncated: bool,
    /// Whether stderr went over the limit.
    pub stderr_truncated: bool,
    /// CPU time of every process of the stage.
    pub cpu: Duration,
    /// Wall time from start to the program's end.
    pub wall: Duration,
    /// Peak memory, bytes.
    pub memory_peak: u64,
}

/// What the sandbox did: one outcome per stage that ran.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxOutcome {
    /// Stages in order; stops at the first that did not end `ok`.
    pub stages: Vec<StageOutcome>,
    /// The warm runtime that ran the stage, if one did.
    #[serde(default)]
    pub warm: Option<WarmUse>,
}

/// A run served by a warm runtime.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmUse {
    /// Its name.
    pub runtime: String,
    /// Memory its zygote holds while idle (private resident bytes).
    pub idle_memory: u64,
}

impl StageOutcome {
    /// The verdict of this stage alone.
    pub fn status(&self) -> Status {
        if self.exec_errno.is_some() {
            return Status::InternalError;
        }
        match self.limit {
            Some(LimitReason::Cpu | LimitReason::Wall) => return Status::TimeLimit,
            Some(LimitReason::Memory) => return Status::MemoryLimit,
            Some(LimitReason::Output) => return Status::OutputLimit,
            None => {}
        }
        match self.exit {
            Exit::Code(0) if !self.cancelled => Status::Ok,
            Exit::Code(_) | Exit::Signal(_) => Status::RuntimeError,
            Exit::Unknown => Status::InternalError,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_prefers_limits_over_exit() {
        let mut o = StageOutcome {
            exit: Exit::Signal(9),
            ..Default::default()
        };
        assert_eq!(o.status(), Status::RuntimeError);
        o.limit = Some(LimitReason::Memory);
        assert_eq!(o.status(), Status::MemoryLimit);
        o.limit = Some(LimitReason::Wall);
        assert_eq!(o.status(), Status::TimeLimit);
        o.limit = Some(LimitReason::Output);
        assert_eq!(o.status(), Status::OutputLimit);
        o.limit = None;
        o.exit = Exit::Code(0);
        assert_eq!(o.status(), Status::Ok);
        o.exec_errno = Some(libc::ENOENT);
        assert_eq!(o.status(), Status::InternalError);
    }
}
