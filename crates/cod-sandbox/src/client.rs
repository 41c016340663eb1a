//! The caller's side: [`Jail`] starts the helper process and hands it runs.
//!
//! The helper is a separate, single-threaded process (the `cod` binary re-executed with a
//! hidden argument, or the `cod-jail` binary) so that forking never happens inside a
//! multi-threaded caller such as a tokio runtime. Each run gets its own socket pair: one end
//! goes to the helper over the helper's control socket (SCM_RIGHTS), the other stays with the
//! caller, which writes the spec and reads the events (blocking through [`Jail::run`], or
//! asynchronously by wrapping the stream returned by [`Jail::connect`]).

use std::ffi::{OsStr, OsString};
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use cod_core::config::CgroupMode;
use rustix::net::{
    AddressFamily, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags,
    SocketType, recv, send, sendmsg, socketpair,
};
use serde::{Deserialize, Serialize};

use crate::protocol::{self, Event, Failure, FrameError, Request};
use crate::spec::{Layout, SandboxOutcome, SandboxSpec, WarmRuntime};

/// The descriptor number on which the helper finds its control socket.
pub const HELPER_FD: i32 = 3;
/// Largest control message (the helper's configuration and its answer).
pub(crate) const CONTROL_MAX: usize = 64 * 1024;

/// The helper's configuration, sent once at start-up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailConfig {
    /// Which cgroup hierarchy to use.
    pub cgroup: CgroupMode,
    /// Where cgroupfs is mounted.
    pub cgroup_root: PathBuf,
    /// Name of cod's cgroup under each hierarchy.
    pub cgroup_name: String,
    /// Host uid (and gid) of slot 0's programs; slot n uses `uid_base + n`.
    pub uid_base: u32,
    /// Number of slots; specs must name a slot below it.
    pub slots: u32,
    /// CPU quota of each run, in CPUs; 0 sets none (slots share CPUs by equal weight and
    /// may use idle ones).
    pub cpus_per_run: u32,
    /// Keep each slot's own processes (its keeper, supervisors, sandbox inits and zygotes)
    /// on one CPU, slot `n` on the `n`-th of the CPUs this process may use (modulo their
    /// number), when there are at least as many slots as those CPUs; programs still run on
    /// all of them. A run's hand-offs then wake processes on
    /// the CPU they last ran on, and a zygote's memory is never live on two CPUs at once.
    #[serde(default = "pin_by_default")]
    pub pin_slots: bool,
    /// `RLIMIT_STACK` of programs, bytes.
    pub stack: u64,
    /// `RLIMIT_NOFILE` of programs.
    pub open_files: u64,
    /// Where the helper creates its private staging directories.
    pub state_dir: PathBuf,
    /// The layout each slot keeps one sandbox prepared with, ahead of its next run: a run
    /// whose spec has this layout skips building its sandbox. `None` prepares nothing ahead.
    pub prepared: Option<Layout>,
    /// Runtimes a slot can keep warm in a zygote (at most [`MAX_WARM`]); which ones each
    /// slot holds is set with [`Jail::set_warm`].
    #[serde(default)]
    pub warm: Vec<WarmRuntime>,
}

fn pin_by_default() -> bool {
    true
}

/// Most warm runtimes a jail knows.
pub const MAX_WARM: usize = 8;

impl JailConfig {
    /// Host uids (also used as gids) of slot `slot`: (the program's, the init's). The program
    /// runs as `uid_base + slot`; the run's init, while building the root, as
    /// `uid_base + slots + slot`. Neither is root on the host.
    pub fn host_ids(&self, slot: u32) -> (u32, u32) {
        (self.uid_base + slot, self.uid_base + self.slots + slot)
    }
}

impl Default for JailConfig {
    fn default() -> Self {
        JailConfig {
            cgroup: CgroupMode::Auto,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_name: "cod".into(),
            uid_base: cod_core::config::DEFAULT_UID_BASE,
            slots: 64,
            cpus_per_run: 0,
            pin_slots: true,
            stack: cod_core::config::DEFAULT_STACK.get(),
            open_files: cod_core::config::DEFAULT_OPEN_FILES,
            state_dir: std::env::temp_dir(),
            prepared: None,
            warm: Vec::new(),
        }
    }
}

/// The helper's answer to its configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum HelperReply {
    /// Ready to take runs.
    Ready {
        /// The cgroup hierarchy in use.
        cgroup: CgroupMode,
    },
    /// Could not start; the message says why.
    Failed(String),
}

/// Why the jail could not start or a run could not be handed over.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// starting the helper process failed
    #[error("starting the sandbox helper {program}")]
    Spawn {
        /// The program that was started.
        program: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// talking to the helper failed
    #[error("talking to the sandbox helper")]
    Control(#[source] std::io::Error),
    /// the helper refused to start
    #[error("the sandbox helper could not start: {0}")]
    HelperFailed(String),
    /// the helper's answer was not understood
    #[error("the sandbox helper answered with a malformed message")]
    Protocol(#[source] FrameError),
    /// the run's socket failed
    #[error("reading the run's events")]
    Frame(#[from] FrameError),
    /// the run ended without a result
    #[error("the run's supervisor went away without a result")]
    NoResult,
    /// the sandbox failed (not the program)
    #[error("the sandbox failed")]
    Failure(#[from] Failure),
}

/// A running helper process and the control socket to it.
#[derive(Debug)]
struct Helper {
    control: OwnedFd,
    child: Child,
}

/// The sandbox helper, started on demand: if it dies, the next run starts a new one.
/// Dropping the jail stops the helper after its runs finish.
#[derive(Debug)]
pub struct Jail {
    program: PathBuf,
    args: Vec<OsString>,
    config: JailConfig,
    helper: Mutex<Option<Helper>>,
    cgroup: CgroupMode,
    slots: u32,
    warm_masks: Mutex<Vec<u32>>,
}

/// Starts `program args...` as the helper, configures it, and waits for its answer.
fn start_helper(
    program: &Path,
    args: &[OsString],
    config: &JailConfig,
) -> Result<(Helper, CgroupMode), JailError> {
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| JailError::Control(e.into()))?;
    let theirs_raw = theirs.as_raw_fd();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .env_clear();
    // SAFETY: the closure runs in the forked child before exec and only calls dup2 and
    // fcntl, which are async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(theirs_raw, HELPER_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 clears FD_CLOEXEC on the copy; when the numbers were equal it did not.
            let flags = libc::fcntl(HELPER_FD, libc::F_GETFD);
            if flags < 0 || libc::fcntl(HELPER_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| JailError::Spawn {
        program: program.to_owned(),
        source,
    })?;
    drop(theirs);
    let reply = handshake(&ours, config);
    match reply {
        Ok(HelperReply::Ready { cgroup }) => Ok((
            Helper {
                control: ours,
                child,
            },
            cgroup,
        )),
        Ok(HelperReply::Failed(why)) => {
            let _ = child.wait();
            Err(JailError::HelperFailed(why))
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

fn handshake(control: &OwnedFd, config: &JailConfig) -> Result<HelperReply, JailError> {
    let msg = postcard::to_stdvec(config).map_err(|e| JailError::Protocol(e.into()))?;
    send(control, &msg, SendFlags::NOSIGNAL).map_err(|e| JailError::Control(e.into()))?;
    let mut buf = vec![0u8; CONTROL_MAX];
    let n = match recv(control, &mut buf, RecvFlags::empty()) {
        Ok((n, _)) => n,
        Err(e) => return Err(JailError::Control(e.into())),
    };
    if n == 0 {
        return Err(JailError::HelperFailed(
            "it exited during start-up (see its stderr)".into(),
        ));
    }
    postcard::from_bytes(&buf[..n]).map_err(|e| JailError::Protocol(e.into()))
}

impl Drop for Helper {
    fn drop(&mut self) {
        // Closing our end is the helper's signal to finish its runs, clean up and exit.
        let _ = rustix::net::shutdown(&self.control, rustix::net::Shutdown::Both);
        let _ = self.child.wait();
    }
}

impl Jail {
    /// Starts `program args...` as the helper and configures it.
    pub fn spawn(program: &Path, args: &[&OsStr], config: &JailConfig) -> Result<Jail, JailError> {
        let args: Vec<OsString> = args.iter().map(|a| (*a).to_owned()).collect();
        let (helper, cgroup) = start_helper(program, &args, config)?;
        Ok(Jail {
            program: program.to_owned(),
            args,
            config: config.clone(),
            helper: Mutex::new(Some(helper)),
            cgroup,
            slots: config.slots,
            warm_masks: Mutex::new(vec![0; config.slots as usize]),
        })
    }

    /// A jail whose helper starts with its first run (or its first [`Jail::set_warm`]), for
    /// a process that may never run anything itself (a fleet gateway without a local
    /// worker, which therefore keeps no warm pool): it needs no privileges until then. [`Jail::cgroup_mode`] reports the configured mode until the helper
    /// has started.
    pub fn deferred(program: &Path, args: &[&OsStr], config: &JailConfig) -> Jail {
        Jail {
            program: program.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            config: config.clone(),
            helper: Mutex::new(None),
            cgroup: config.cgroup,
            slots: config.slots,
            warm_masks: Mutex::new(vec![0; config.slots as usize]),
        }
    }

    /// The cgroup hierarchy the helper uses.
    pub fn cgroup_mode(&self) -> CgroupMode {
        self.cgroup
    }

    /// Number of slots the helper accepts.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// The helper's process id (it names the helper's cgroup instance and staging directory),
    /// or `None` once the helper has been waited for.
    pub fn helper_pid(&self) -> Option<u32> {
        self.helper.lock().ok()?.as_ref().map(|h| h.child.id())
    }

    /// Opens a run in worker slot `slot`: returns the caller's end of a new socket whose
    /// other end the helper hands to a fresh supervisor in that slot. Write one
    /// [`Request::Run`] (whose spec names the same slot) to it, then read [`Event`]s. A
    /// spec with shared files sends their descriptors on the frame's length prefix
    /// ([`protocol::send_run_head`]), then the rest of the frame.
    pub fn connect(&self, slot: u32) -> Result<UnixStream, JailError> {
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| JailError::Control(e.into()))?;
        let mut guard = self
            .helper
            .lock()
            .map_err(|_| JailError::HelperFailed("a thread panicked while restarting it".into()))?;
        // One retry: a helper that died (killed by an operator, say) is replaced.
        for attempt in 0..2 {
            // A helper that has exited is replaced before it is handed anything.
            if guard
                .as_mut()
                .is_some_and(|h| !matches!(h.child.try_wait(), Ok(None)))
            {
                *guard = None;
            }
            if guard.is_none() {
                self.start(&mut guard)?;
            }
            let helper = guard.as_ref().expect("set above");
            match send_fd(&helper.control, slot, &theirs) {
                Ok(()) => return Ok(UnixStream::from(ours)),
                Err(e) if attempt == 0 => {
                    drop(e);
                    // Reap the dead helper (its Drop waits for it) and start another.
                    *guard = None;
                }
                Err(e) => return Err(JailError::Control(e)),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Sets which of [`JailConfig::warm`] slot `slot` keeps started: bit `i` of `mask` for
    /// runtime `i`. The slot's keeper starts the missing ones while the slot is idle (off
    /// any run's path) and ends the others. The jail remembers the masks and gives them to
    /// a helper that replaces a dead one.
    pub fn set_warm(&self, slot: u32, mask: u32) -> Result<(), JailError> {
        if slot >= self.slots {
            return Err(JailError::Control(std::io::Error::other(format!(
                "slot {slot} is not below {}",
                self.slots
            ))));
        }
        let mut guard = self
            .helper
            .lock()
            .map_err(|_| JailError::HelperFailed("a thread panicked while restarting it".into()))?;
        if let Some(m) = self
            .warm_masks
            .lock()
            .ok()
            .as_mut()
            .and_then(|m| m.get_mut(slot as usize))
        {
            *m = mask;
        }
        if let Some(h) = guard.as_mut()
            && matches!(h.child.try_wait(), Ok(None))
            && send_warm(&h.control, slot, mask).is_ok()
        {
            return Ok(());
        }
        // No live helper: the next one gets every mask at its start.
        *guard = None;
        self.start(&mut guard)
    }

    /// The warm runtimes the jail was configured with (bit `i` of a mask is runtime `i`).
    pub fn warm_runtimes(&self) -> &[WarmRuntime] {
        &self.config.warm
    }

    /// The masks set with [`Jail::set_warm`], one per slot.
    pub fn warm_masks(&self) -> Vec<u32> {
        self.warm_masks
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Starts a helper into `guard` and gives it the warm masks.
    fn start(&self, guard: &mut Option<Helper>) -> Result<(), JailError> {
        let (helper, _) = start_helper(&self.program, &self.args, &self.config)?;
        for (slot, mask) in (0..).zip(self.warm_masks()) {
            if mask != 0 {
                send_warm(&helper.control, slot, mask).map_err(JailError::Control)?;
            }
        }
        *guard = Some(helper);
        Ok(())
    }

    /// Runs `spec` and waits for its outcome (blocking).
    pub fn run(&self, spec: &SandboxSpec) -> Result<SandboxOutcome, JailError> {
        let frame = protocol::encode(&Request::Run(Box::new(spec.clone())))?;
        let fds = protocol::shared_fds(spec).map_err(JailError::Control)?;
        // A run whose socket closes before any event never reached a supervisor (the helper
        // died with it queued): it is handed over once more.
        for attempt in 0..2 {
            let mut sock = self.connect(spec.slot)?;
            let sent = protocol::send_run_head(std::os::fd::AsFd::as_fd(&sock), &frame, &fds)
                .and_then(|()| std::io::Write::write_all(&mut sock, &frame[4..]));
            match sent {
                Ok(()) => {}
                Err(_) if attempt == 0 => continue,
                Err(e) => return Err(FrameError::Io(e).into()),
            }
            let mut started = false;
            loop {
                match protocol::read_frame::<Event>(&mut sock) {
                    Ok(Some(Event::Finished(r))) => return Ok(r?),
                    Ok(Some(
                        Event::StageStarted(_)
                        | Event::StageFinished { .. }
                        | Event::Output { .. }
                        | Event::Usage { .. },
                    )) => {
                        started = true;
                    }
                    Ok(None) | Err(FrameError::Io(_)) if !started && attempt == 0 => break,
                    Ok(None) => return Err(JailError::NoResult),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Err(JailError::NoResult)
    }
}

/// Control message kinds (the first word of each message to the helper).
pub(crate) const CONTROL_RUN: u32 = 1;
pub(crate) const CONTROL_WARM: u32 = 2;

/// A control message: kind, slot, argument.
fn control_words(kind: u32, slot: u32, arg: u32) -> [u8; 12] {
    let mut msg = [0u8; 12];
    msg[..4].copy_from_slice(&kind.to_le_bytes());
    msg[4..8].copy_from_slice(&slot.to_le_bytes());
    msg[8..].copy_from_slice(&arg.to_le_bytes());
    msg
}

/// Tells the helper the warm mask of `slot`.
fn send_warm(control: &OwnedFd, slot: u32, mask: u32) -> std::io::Result<()> {
    send(
        control,
        &control_words(CONTROL_WARM, slot, mask),
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// Sends `conn` with `slot` over the helper's control socket.
fn send_fd(control: &OwnedFd, slot: u32, conn: &OwnedFd) -> std::io::Result<()> {
    let fds = [rustix::fd::AsFd::as_fd(conn)];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    if !anc.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("ancillary buffer too small"));
    }
    sendmsg(
        control,
        &[IoSlice::new(&control_words(CONTROL_RUN, slot, 0))],
        &mut anc,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}
