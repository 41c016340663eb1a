//! The zygote: a prepared sandbox whose init holds a warm interpreter and forks a fresh,
//! isolated process for each run, so that a run pays neither `execve` nor the interpreter's
//! start-up (about 10 ms for CPython, most of a `print(1)`).
//!
//! The zygote never runs a program's code itself. For each run it clones a process `G`
//! into new PID, mount and IPC namespaces; `G` mounts the run's own work tmpfs on `/box`,
//! `/tmp` and `/dev/shm` and a new `/proc`, then forks `H`. All of that happens ahead, while
//! the slot is idle (the run is *parked*): `H` runs the interpreter's after-fork hooks,
//! completes the program's seccomp policy (the zygote has all of it but the calls it makes
//! for each run; see `seccomp.rs`), primes its copy of the interpreter (see `prime` in
//! `python.rs`) and waits for its run. When the run comes, its files go into the parked tmpfs and `H`
//! receives the plan and stdio, drops every privilege exactly as a cold run's program does
//! (same rlimits, uid, empty capability sets, seccomp policy) and runs the program in the
//! interpreter. When `H` ends, `G` kills and reaps whatever else the run left in its PID
//! namespace, reports its status and exits. A parked `H` that waited for its run starts a
//! holder of its memory (see [`start_holder`]), so that unmapping it comes after the result.
//! Nothing of one run can reach the next:
//!
//! - files: every run gets a new tmpfs, created by the zygote before its files arrive and
//!   dropped after it (a parked run that received files and was not started is discarded);
//!   the root stays read-only;
//! - processes: a run's PID namespace dies with `G`;
//! - interpreter state: each run is a copy of the pristine zygote, which no program's code
//!   ever touched;
//! - random state: forking runs the interpreter's after-fork hooks (CPython reseeds
//!   `random`) in each parked `H`, and each run draws fresh entropy from the kernel;
//! - environment: set from the stage for each run;
//! - SysV IPC and POSIX message queues: a new IPC namespace per run.
//!
//! The zygote lives in the slot's cgroup; the supervisor takes the cgroup's usage at the
//! stage's start as its baseline, as on the cold path. It tells the zygote to park the next
//! run ([`CMD_PARK`]) only once it has read the last run's figures, so that parking is
//! counted in no run's (a run that must park its own, the first in a slot, pays for it; a
//! run that comes while parking is still going on may count part of it). A stage the warm interpreter cannot
//! take (another program, an option before the script) is `execve`d by `H` like on the cold
//! path, in the same fresh namespaces.

use std::ffi::{CStr, CString, c_char};
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::fs::{AtFlags, CWD, Gid, Mode, OFlags, Uid};
use rustix::io::Errno;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, OpenTreeFlags,
};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
use rustix::process::{Signal, WaitOptions};

use crate::init::{
    self, CMD_DATA, CMD_DISK, CMD_END, CMD_FILE, CMD_PARK, CMD_STAGE, InitBuffers, InitPlan,
    NOT_STARTED_FORK, NOT_STARTED_PLAN, Plan, REPORT_NOT_STARTED, REPORT_STAGE_DONE,
    REPORT_WARM_FAILED, REPORT_WARM_READY,
};
use crate::python::Python;
use crate::spec::{SANDBOX_ID, WarmKind, WarmRuntime};
use crate::supervisor::timespec;
use crate::sys;

/// Message from the zygote to the supervisor after each [`CMD_STAGE`]: `P` with a pidfd of
/// the run's `G` attached (killing it ends the run) and a pipe that ends once the run's
/// memory is freed, or `p` alone if it could not start.
pub(crate) const MSG_STARTED: u8 = b'P';
pub(crate) const MSG_NOT_STARTED: u8 = b'p';
/// Message from the zygote to its keeper: why its runtime did not start.
pub(crate) const MSG_TEXT: u8 = b'X';

/// Why a warm runtime did not start, in a [`REPORT_WARM_FAILED`].
pub(crate) const WARM_LOAD: i32 = 1;
pub(crate) const WARM_INIT: i32 = 2;
pub(crate) const WARM_SETUP: i32 = 3;

/// Memory a parked run holds on top of its zygote, counted in the zygote's idle memory:
/// about 0.3 MiB of its own (page tables, what the after-fork hooks wrote), 1.1 MiB once
/// primed (private dirty memory of `H`, measured here with the default preloads).
pub(crate) const PARKED_RUN_MEMORY: u64 = 3 << 19;

/// At most this many stacks for `G`s (one per `G` alive at once).
const MAX_STACKS: usize = 4;

/// How long a parked process waits for its run before it primes its interpreter.
const PRIME_AFTER_IDLE: Duration = Duration::from_millis(2);

/// A run's private tmpfs: a detached mount holding `box`, `tmp` and `shm`.
struct Scratch {
    mnt: OwnedFd,
    work: OwnedFd,
}

/// The decimal digits of `n` as a C string, without allocating.
pub(crate) fn digits(mut n: u64, buf: &mut [u8; 24]) -> &CStr {
    let mut at = buf.len() - 1;
    buf[at] = 0;
    loop {
        at -= 1;
        buf[at] = b'0' + u8::try_from(n % 10).unwrap_or(0);
        n /= 10;
        if n == 0 {
            break;
        }
    }
    CStr::from_bytes_until_nul(&buf[at..]).unwrap_or(c"0")
}

fn new_scratch(disk: u64) -> Result<Scratch, Errno> {
    let fs = rustix::mount::fsopen(c"tmpfs", FsOpenFlags::FSOPEN_CLOEXEC)?;
    let mut buf = [0u8; 24];
    rustix::mount::fsconfig_set_string(&fs, c"size", digits(disk.max(1 << 20), &mut buf))?;
    rustix::mount::fsconfig_set_string(&fs, c"nr_inodes", c"65536")?;
    rustix::mount::fsconfig_set_string(&fs, c"mode", c"0755")?;
    rustix::mount::fsconfig_create(&fs)?;
    let mnt = rustix::mount::fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV,
    )?;
    let id = (Uid::from_raw(SANDBOX_ID), Gid::from_raw(SANDBOX_ID));
    rustix::fs::mkdirat(&mnt, c"box", Mode::from_raw_mode(0o755))?;
    rustix::fs::chownat(&mnt, c"box", Some(id.0), Some(id.1), AtFlags::empty())?;
    for d in [c"tmp", c"shm"] {
        rustix::fs::mkdirat(&mnt, d, Mode::from_raw_mode(0o1777))?;
        rustix::fs::chmodat(&mnt, d, Mode::from_raw_mode(0o1777), AtFlags::empty())?;
    }
    let work = rustix::fs::openat(
        &mnt,
        c"box",
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(Scratch { mnt, work })
}

/// Points fds 0 to 2 at `/dev/null`, so that the interpreter's standard streams are made
/// for a file, as they are for the pipes of a run.
fn null_stdio() -> Result<(), Errno> {
    let null = rustix::fs::open(c"/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
    for n in 0..3 {
        sys::dup_onto(null.as_raw_fd(), n)?;
    }
    Ok(())
}

/// Replaces the process environment with `env` (`KEY=value` each). The strings are leaked:
/// `putenv` keeps pointers to them.
fn set_env(env: &[String]) {
    // SAFETY: the process has one thread, so nothing reads the environment meanwhile;
    // clearenv only resets libc's table.
    unsafe { libc::clearenv() };
    for e in env {
        if let Ok(c) = CString::new(e.as_str()) {
            // SAFETY: the string is NUL-terminated and never freed (into_raw), as putenv
            // requires; one thread.
            unsafe { libc::putenv(c.into_raw()) };
        }
    }
}

/// The zygote's main function, entered by the init on a [`init::CMD_WARM`]; never returns.
pub(crate) fn zygote_main(p: &InitPlan<'_>, bufs: &mut InitBuffers, warm: WarmRuntime) -> ! {
    let WarmKind::Python {
        library,
        program,
        preload,
    } = &warm.kind
    else {
        init::report(p.report, REPORT_WARM_FAILED, WARM_SETUP, libc::EINVAL, 0);
        sys::exit_now(1);
    };
    // Nothing of the keeper's stays open here: a copy of its socket to the helper, say,
    // would hide the keeper's death from the helper.
    sys::close_all_but(&[p.cmd, p.report]);
    sys::reset_signals();
    // Then everything of the program's seccomp policy but the calls this process and its
    // `G`s make for each run (its tmpfs, the run's namespaces and mounts): each run's process
    // installs only those (see `seccomp.rs`), and the interpreter is loaded under it.
    if let Err(e) = null_stdio().and_then(|()| p.seccomp.install_base()) {
        init::report(
            p.report,
            REPORT_WARM_FAILED,
            WARM_SETUP,
            e.raw_os_error(),
            0,
        );
        sys::exit_now(1);
    }
    set_env(&warm.env);
    let mut python = match Python::load(library) {
        Ok(py) => py,
        Err(e) => {
            send_text(p.cmd, &e.0);
            init::report(p.report, REPORT_WARM_FAILED, WARM_LOAD, 0, 0);
            sys::exit_now(1);
        }
    };
    if let Err(e) = python.initialize(program, preload) {
        send_text(p.cmd, &e.0);
        init::report(p.report, REPORT_WARM_FAILED, WARM_INIT, 0, 0);
        sys::exit_now(1);
    }
    let Ok(program_c) = CString::new(program.as_str()) else {
        init::report(p.report, REPORT_WARM_FAILED, WARM_SETUP, libc::EINVAL, 0);
        sys::exit_now(1);
    };
    init::report(p.report, REPORT_WARM_READY, 0, 0, 0);

    let mut disk: u64 = 16 << 20;
    let mut incoming = init::Incoming::new();
    let Some(stack) = Stack::new() else {
        init::report(p.report, REPORT_WARM_FAILED, WARM_SETUP, libc::ENOMEM, 0);
        sys::exit_now(1);
    };
    let mut zygote = Zygote {
        p,
        python: &python,
        program: &program_c,
        env: &warm.env,
        stacks: vec![stack],
        ending: Vec::new(),
        parked: None,
    };
    loop {
        let mut fds = [-1; 5];
        let Some((len, nfds)) = init::receive(p.cmd, &mut bufs.message, &mut fds) else {
            sys::exit_now(0)
        };
        let (kind, body) = (bufs.message[0], &bufs.message[1..len]);
        match kind {
            CMD_DISK => {
                match body.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                    Some(b) => disk = u64::from_le_bytes(b),
                    None => incoming.fail(init::NOT_STARTED_DISK, -1, Errno::INVAL),
                }
                // Sent before the run's first file: a parked run of another size, or one
                // that already holds files, is not for this run.
                if zygote
                    .parked
                    .as_ref()
                    .is_some_and(|r| r.disk != disk || r.has_files)
                {
                    zygote.discard_parked();
                }
            }
            CMD_FILE => {
                incoming.begin(|| {
                    // The run's files go into the parked run's tmpfs.
                    let run = zygote.ensure_parked(disk)?;
                    run.has_files = true;
                    init::create_file(&run.scratch.work, body)
                });
                incoming.copy_attached(&fds[..nfds]);
            }
            CMD_DATA => incoming.data(body),
            CMD_END => incoming.end(),
            CMD_PARK => {
                // The supervisor is done with the last run: get the next one's processes
                // ready now, off its request path. Failing here only means the run parks
                // its own when it comes.
                let _ = zygote.ensure_parked(disk);
            }
            CMD_STAGE if nfds == 3 => {
                let stdio = [fds[0], fds[1], fds[2]];
                let not_started: Result<(), (i32, i32, Errno)> = match incoming.stage() {
                    Some(p) => Err(p),
                    None => {
                        let InitBuffers { message, argv, env } = &mut *bufs;
                        // Checked here, decoded again by `H` from its own copy.
                        if init::decode_plan(&message[1..len], argv, env).is_some() {
                            zygote.stage(&message[..len], stdio, disk);
                            continue;
                        }
                        Err((NOT_STARTED_PLAN, -1, Errno::INVAL))
                    }
                };
                if let Err((what, index, e)) = not_started {
                    for f in stdio {
                        sys::close(f);
                    }
                    // Its tmpfs may hold this run's files.
                    zygote.discard_parked();
                    send_started(p.cmd, None);
                    init::report(p.report, REPORT_NOT_STARTED, e.raw_os_error(), index, what);
                }
            }
            _ => {
                for f in fds.iter().take(nfds) {
                    sys::close(*f);
                }
                zygote.discard_parked();
                sys::exit_now(0);
            }
        }
    }
}

/// Sends why the runtime did not start (`X` and the text) to whoever prepared the zygote.
fn send_text(cmd: RawFd, text: &str) {
    let mut msg = vec![MSG_TEXT];
    msg.extend(text.bytes().take(4096));
    let _ = rustix::net::send(init::fd(cmd), &msg, SendFlags::NOSIGNAL);
}

/// Tells the supervisor that a stage started (with `G`'s pidfd) or did not.
fn send_started(cmd: RawFd, started: Option<&Parked>) {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    let fds;
    let msg = match started {
        Some(run) => {
            fds = [run.pidfd.as_fd(), run.status.as_fd()];
            anc.push(SendAncillaryMessage::ScmRights(&fds));
            [MSG_STARTED]
        }
        None => [MSG_NOT_STARTED],
    };
    // If the supervisor is gone, the stage's report finds nobody either; nothing to do.
    let _ = sendmsg(
        init::fd(cmd),
        &[IoSlice::new(&msg)],
        &mut anc,
        SendFlags::NOSIGNAL,
    );
}

struct Zygote<'a> {
    p: &'a InitPlan<'a>,
    python: &'a Python,
    program: &'a CStr,
    env: &'a [String],
    /// The stacks `G`s run on, one each: the `G`s of runs that reported may still be ending
    /// (freeing their run's memory, see [`start_holder`], and namespaces) while the next
    /// run's is cloned.
    stacks: Vec<Stack>,
    /// The `G`s of runs that reported, and the indexes of their stacks, to reap.
    ending: Vec<(i32, usize)>,
    /// The next run's processes, started ahead and waiting for it.
    parked: Option<Parked>,
}

/// A run started ahead of its request: `G` (pid 1 of new PID, mount and IPC namespaces, its
/// tmpfs and `/proc` mounted) and its fork `H`, a copy of the interpreter that ran its
/// after-fork hooks and waits, with every privilege still, for the run's plan and stdio.
struct Parked {
    g: i32,
    /// The index of `G`'s stack.
    stack: usize,
    /// A pidfd of `G`: killing it ends the run (the supervisor gets a copy).
    pidfd: OwnedFd,
    /// The zygote's end of the socket `H` waits on.
    go: OwnedFd,
    /// `G` writes the program's status here once every process of the run is gone.
    status: OwnedFd,
    scratch: Scratch,
    disk: u64,
    /// Whether a run's files were written into the tmpfs already.
    has_files: bool,
}

impl Parked {
    /// Whether `G` is still there, waiting: it writes its status (or its end closes) only
    /// once the run is over.
    fn waiting(&self) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            &self.status,
            rustix::event::PollFlags::IN,
        )];
        matches!(
            rustix::event::poll(&mut fds, Some(&timespec(Duration::ZERO))),
            Ok(0)
        )
    }
}

/// What `G` needs, passed through `clone`. Valid only until `G` tells the zygote that `H`
/// exists: from then on the two run side by side.
struct GArgs<'z, 'p> {
    zygote: &'z Zygote<'z>,
    scratch: &'p Scratch,
    /// `G`'s ends.
    status_w: RawFd,
    ready_w: RawFd,
    go_h: RawFd,
    /// The zygote's ends, which `G` closes.
    status_r: RawFd,
    ready_r: RawFd,
    go_z: RawFd,
}

extern "C" fn g_entry(arg: *mut std::ffi::c_void) -> std::ffi::c_int {
    // SAFETY: `arg` is the `GArgs` that `Zygote::park` passed to clone; the zygote keeps it
    // alive, blocked in a read, until `G` writes on its ready pipe, and `g_main` does not
    // touch it after that write.
    let a = unsafe { &*arg.cast::<GArgs<'_, '_>>() };
    a.zygote.g_main(a)
}

/// Kills `g` (a run's `G`, and so every process of its run) and reaps it.
fn kill_and_reap(g: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(g) {
        let _ = rustix::process::kill_process(pid, Signal::KILL);
    }
    let _ = reap(g);
}

/// Waits for the child `g` to end; returns its raw wait status, if there was one to reap.
fn reap(g: i32) -> Option<i32> {
    let pid = rustix::process::Pid::from_raw(g)?;
    loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::empty()) {
            Ok(Some((_, st))) => return Some(st.as_raw()),
            Err(Errno::INTR) => {}
            _ => return None,
        }
    }
}

/// A stack for `G`: an anonymous mapping with a guard page at its low end.
struct Stack {
    base: *mut std::ffi::c_void,
    len: usize,
}

impl Stack {
    const LEN: usize = 1 << 20;

    fn new() -> Option<Stack> {
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                Self::LEN,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE | rustix::mm::MapFlags::STACK,
            )
        }
        .ok()?;
        // SAFETY: the first page of the mapping just made; a stack overflow then faults
        // instead of writing below the stack.
        unsafe { rustix::mm::mprotect(base, 4096, rustix::mm::MprotectFlags::empty()) }.ok()?;
        Some(Stack {
            base,
            len: Self::LEN,
        })
    }

    /// The initial stack pointer: the mapping's top, 16-byte aligned.
    fn top(&self) -> Option<*mut std::ffi::c_void> {
        // SAFETY: `base + len` is one past the end of the mapping, which is where a
        // downward-growing stack starts.
        Some(unsafe { self.base.cast::<u8>().add(self.len) }.cast())
    }
}

impl Zygote<'_> {
    /// A stack no living `G` runs on: one of an ended `G` (reaped now), a new one, or, with
    /// [`MAX_STACKS`] in use, the oldest ending `G`'s once it is gone.
    fn free_stack(&mut self) -> Result<usize, Errno> {
        self.ending
            .retain(|&(g, _)| match rustix::process::Pid::from_raw(g) {
                Some(pid) => !matches!(
                    rustix::process::waitpid(Some(pid), WaitOptions::NOHANG),
                    Ok(Some(_)) | Err(Errno::CHILD)
                ),
                None => false,
            });
        if let Some(free) =
            (0..self.stacks.len()).find(|i| self.ending.iter().all(|&(_, s)| s != *i))
        {
            return Ok(free);
        }
        if self.stacks.len() < MAX_STACKS
            && let Some(stack) = Stack::new()
        {
            self.stacks.push(stack);
            return Ok(self.stacks.len() - 1);
        }
        let (g, stack) = self.ending.remove(0);
        let _ = reap(g);
        Ok(stack)
    }

    /// The parked run, started now if there is none fit for a run with `disk` bytes of
    /// tmpfs, or if the one there died meanwhile (killed from outside, say).
    fn ensure_parked(&mut self, disk: u64) -> Result<&mut Parked, Errno> {
        let run = self.take_parked(disk)?;
        Ok(self.parked.insert(run))
    }

    /// [`ensure_parked`](Self::ensure_parked)'s run, taken for a run that starts now.
    fn take_parked(&mut self, disk: u64) -> Result<Parked, Errno> {
        match self.parked.take() {
            Some(run) if run.disk == disk && run.waiting() => Ok(run),
            unfit => {
                self.parked = unfit;
                self.discard_parked();
                self.park(disk)
            }
        }
    }

    /// Kills the parked run, if any, and reaps its `G` (which takes its namespaces, and so
    /// `H`, with it).
    fn discard_parked(&mut self) {
        if let Some(run) = self.parked.take() {
            kill_and_reap(run.g);
        }
    }

    /// Starts a run ahead: a fresh tmpfs, then `G`, which mounts it and forks `H`.
    ///
    /// `G` is cloned like `posix_spawn` clones its child: sharing this process's memory
    /// (`CLONE_VM`) on a stack of its own, so that no page table is copied for it (only `H`,
    /// its fork, copies the zygote). Until `G` reports on the ready pipe that `H` exists,
    /// this process waits in a `read`, so `H` is a copy of a zygote at rest; after that `G`
    /// makes only system calls and touches nothing but its stack.
    fn park(&mut self, disk: u64) -> Result<Parked, Errno> {
        // When parking, the only `G`s alive are ending ones: the parked one was taken or
        // discarded.
        let stack = self.free_stack()?;
        let scratch = new_scratch(disk)?;
        let cloexec = rustix::pipe::PipeFlags::CLOEXEC;
        let (status_r, status_w) = rustix::pipe::pipe_with(cloexec)?;
        let (ready_r, ready_w) = rustix::pipe::pipe_with(cloexec)?;
        let (go_z, go_h) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )?;
        let stack_top = self.stacks[stack].top().ok_or(Errno::NOMEM)?;
        let args = GArgs {
            zygote: self,
            scratch: &scratch,
            status_w: status_w.as_raw_fd(),
            ready_w: ready_w.as_raw_fd(),
            go_h: go_h.as_raw_fd(),
            status_r: status_r.as_raw_fd(),
            ready_r: ready_r.as_raw_fd(),
            go_z: go_z.as_raw_fd(),
        };
        self.python.before_fork();
        let flags = libc::CLONE_VM
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWIPC
            | libc::SIGCHLD;
        // SAFETY: `g_entry` runs on the stack `stack_top` points into (a private mapping of
        // this process that no other process uses while this `G` lives: every other living
        // `G` has a stack of its own, see `free_stack`) with `args`, which outlives the
        // child's use of it: this thread blocks reading `ready_r` below until `G` is done
        // with it. The child makes system calls and one fork (see `g_main`).
        let g = unsafe {
            libc::clone(
                g_entry,
                stack_top,
                flags,
                (&raw const args).cast_mut().cast(),
            )
        };
        let clone_errno = (g < 0).then(sys::errno);
        // `G` writes 0 once `H` is forked, or the errno of what failed before.
        let mut word = [0u8; 4];
        let mut got = 0;
        if g > 0 {
            drop(ready_w);
            got = init::read_full(&ready_r, &mut word);
        }
        self.python.after_fork_parent();
        if g <= 0 {
            return Err(clone_errno.unwrap_or(Errno::AGAIN));
        }
        let errno = i32::from_le_bytes(word);
        if got < word.len() || errno != 0 {
            kill_and_reap(g);
            return Err(if got < word.len() {
                Errno::CHILD
            } else {
                Errno::from_raw_os_error(errno)
            });
        }
        let pid = rustix::process::Pid::from_raw(g).ok_or(Errno::SRCH)?;
        let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(e) => {
                kill_and_reap(g);
                return Err(e);
            }
        };
        Ok(Parked {
            g,
            stack,
            pidfd,
            go: go_z,
            status: status_r,
            scratch,
            disk,
            has_files: false,
        })
    }

    /// Runs one stage (`message` is its [`CMD_STAGE`]) in the parked run, parking one now
    /// if none is ready, waits for `G`'s report, and reports.
    fn stage(&mut self, message: &[u8], stdio: [RawFd; 3], disk: u64) {
        let p = self.p;
        let not_started = |e: Errno| {
            send_started(p.cmd, None);
            init::report(
                p.report,
                REPORT_NOT_STARTED,
                e.raw_os_error(),
                -1,
                NOT_STARTED_FORK,
            );
        };
        let run = match self.take_parked(disk) {
            Ok(run) => run,
            Err(e) => {
                for f in stdio {
                    sys::close(f);
                }
                return not_started(e);
            }
        };
        // `H` takes the plan and its stdio; it is a copy of a zygote that had neither.
        let sent = init::send_stage(&run.go, message, stdio);
        for f in stdio {
            sys::close(f);
        }
        if let Err(e) = sent {
            // `H` is gone: the run was not started, and another one is parked for the next.
            kill_and_reap(run.g);
            return not_started(e);
        }
        send_started(p.cmd, Some(&run));
        // G's report: the program's wait status and the errno of a failed set-up, written
        // once every process of the run is gone; nothing if G was killed (a limit, or the
        // caller cancelled), which the kernel then finishes by killing the rest.
        let mut buf = [0u8; 12];
        let got = init::read_full(&run.status, &mut buf);
        let word = |i: usize| i32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        let (status, errno, peak) = if got == 12 {
            // `G` ends on its own, after freeing the run's memory; reaped later.
            self.ending.push((run.g, run.stack));
            (word(0), word(4), word(8))
        } else {
            // Killed: wait until its namespace is empty, so that the run is over when this
            // is reported.
            (reap(run.g).unwrap_or(libc::SIGKILL), 0, 0)
        };
        drop(run);
        init::report(p.report, REPORT_STAGE_DONE, status, errno, peak);
    }

    /// `G`: pid 1 of the run's PID namespace. Mounts the run's tmpfs and `/proc`, forks `H`,
    /// tells the zygote, then waits for `H`, kills and reaps whatever else the run left,
    /// and writes the program's status on `status_w`.
    fn g_main(&self, a: &GArgs<'_, '_>) -> ! {
        let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
        // Everything `G` needs after telling the zygote, copied onto its own stack.
        let (ready_w, status_w) = (a.ready_w, a.status_w);
        let fail = |e: Errno| -> ! {
            let _ = rustix::io::write(init::fd(ready_w), &e.raw_os_error().to_le_bytes());
            sys::exit_now(1)
        };
        for f in [a.status_r, a.ready_r, a.go_z, self.p.cmd, self.p.report] {
            sys::close(f);
        }
        if let Err(e) = mount_run(a.scratch) {
            fail(e);
        }
        let (err_r, err_w) = match rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) {
            Ok(pair) => pair,
            Err(e) => fail(e),
        };
        // glibc's fork, not a raw clone: the program's process gets libc's per-thread data
        // (its thread id) right, which a program that forks or signals itself relies on.
        // SAFETY: this process has one thread; the child only runs `h_parked`, which ends in
        // the interpreter or execve. The zygote is blocked in a read meanwhile, and fork
        // leaves the memory it shares with this process as it found it.
        let h = unsafe { libc::fork() };
        if h == 0 {
            drop(err_r);
            sys::close(ready_w);
            sys::close(status_w);
            self.h_parked(a.go_h, err_w)
        }
        if h < 0 {
            fail(sys::errno());
        }
        sys::close(a.go_h);
        drop(err_w);
        // From here on the zygote runs again: nothing but this stack and system calls.
        let _ = rustix::io::write(init::fd(ready_w), &0i32.to_le_bytes());
        sys::close(ready_w);
        let mut word = [0u8; 4];
        let holder = match init::read_full(&err_r, &mut word) {
            4 => Some(i32::from_le_bytes(word)).filter(|&x| x > 0),
            _ => None,
        };
        let errno = init::read_exec_errno(err_r);
        // Whatever the program leaves behind (daemons, double forks) dies too, and is reaped
        // before the status goes out: when the zygote reports, the run is over. The holder
        // is killed with them, and reaped only after: unmapping the run's memory is most of
        // the work of its end, and it is done after the result went out.
        let (status, peak) = init::finish_stage(h, holder);
        let mut buf = [0u8; 12];
        buf[..4].copy_from_slice(&status.to_le_bytes());
        buf[4..8].copy_from_slice(&errno.to_le_bytes());
        buf[8..].copy_from_slice(&peak.to_le_bytes());
        let _ = rustix::io::write(init::fd(status_w), &buf);
        init::reap_all();
        // The end of this pipe tells the supervisor that the run's memory is freed.
        sys::close(status_w);
        sys::exit_now(0)
    }

    /// `H` while parked: the interpreter's after-fork work is done ahead, then it waits for
    /// the run's plan and stdio (or for the zygote to give up on it).
    fn h_parked(&self, go: RawFd, err_w: OwnedFd) -> ! {
        // The run's processes are the OOM killer's first choice, before the zygote (raising
        // one's own score needs no privilege).
        if let Ok(f) = rustix::fs::open(
            c"/proc/self/oom_score_adj",
            OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            let _ = rustix::io::write(&f, b"1000");
        }
        self.python.after_fork_child();
        // The rest of the program's seccomp policy goes in now, off the run's path (the
        // zygote has the base part): it denies nothing that is left to do here.
        if let Err(e) = self.p.seccomp.install_confine() {
            // No holder (see below), then why.
            let mut words = [0u8; 8];
            words[4..].copy_from_slice(&e.raw_os_error().to_le_bytes());
            let _ = rustix::io::write(&err_w, &words);
            sys::exit_now(127)
        }
        // Priming and a holder of this memory (see `start_holder`) cost CPU (about half a
        // millisecond, and a tenth) and save the run wall time (a little less, and about
        // 0.8 ms): worth it when the slot is idle, not when runs come back to back (their
        // next one is here within a millisecond or two, and the CPU is the limit).
        let mut holder = 0;
        if sys::wait_readable(init::fd(go), PRIME_AFTER_IDLE) == Ok(false) {
            holder = start_holder();
            self.python.prime();
        }
        // `G` learns the holder's pid (or 0) before anything else comes on this pipe.
        if rustix::io::write(&err_w, &holder.to_le_bytes()) != Ok(4) {
            sys::exit_now(127)
        }
        let Some(mut bufs) = InitBuffers::new() else {
            let _ = rustix::io::write(&err_w, &libc::ENOMEM.to_le_bytes());
            sys::exit_now(127)
        };
        let mut fds = [-1; 5];
        let Some((len, nfds)) = init::receive(go, &mut bufs.message, &mut fds) else {
            sys::exit_now(0)
        };
        sys::close(go);
        let InitBuffers { message, argv, env } = &mut bufs;
        let plan = match message.get(1..len) {
            Some(body) if nfds == 3 => init::decode_plan(body, argv, env),
            _ => None,
        };
        let Some(plan) = plan else {
            let _ = rustix::io::write(&err_w, &libc::EINVAL.to_le_bytes());
            sys::exit_now(127)
        };
        self.h_main(&plan, [fds[0], fds[1], fds[2]], err_w)
    }

    /// `H`: the program's process.
    fn h_main(&self, plan: &Plan<'_>, stdio: [RawFd; 3], err_w: OwnedFd) -> ! {
        let mut err_fd = err_w.as_raw_fd();
        std::mem::forget(err_w);
        let errno = match init::prepare_exec(self.p, plan, stdio, &[], &mut err_fd, false, true) {
            Ok(()) => {
                // SAFETY: argv[0] points at a NUL-terminated string in the message buffer.
                let argv0 = unsafe { CStr::from_ptr(plan.argv[0]) };
                match self.warm_args(plan, argv0) {
                    Some((args, env)) => {
                        // A process that changed uids is not dumpable; after an execve it
                        // would be again, and programs (reading /proc/self/fd, say) rely
                        // on that.
                        let _ = rustix::process::set_dumpable_behavior(
                            rustix::process::DumpableBehavior::Dumpable,
                        );
                        sys::close(err_fd);
                        // The name an exec of the program would give the process.
                        let base = argv0
                            .to_bytes()
                            .rsplit(|&c| c == b'/')
                            .next()
                            .unwrap_or(b"");
                        let mut name = [0u8; 16];
                        let n = base.len().min(15);
                        name[..n].copy_from_slice(&base[..n]);
                        if let Ok(name) = CStr::from_bytes_until_nul(&name) {
                            let _ = rustix::thread::set_name(name);
                        }
                        self.python.run_main(
                            crate::spec::WORK_DIR,
                            self.program,
                            &args,
                            env.as_deref(),
                        )
                    }
                    None => sys::execve(argv0, plan.argv, plan.env)
                        .raw_os_error()
                        .unwrap_or(libc::ENOEXEC),
                }
            }
            Err(e) => e.raw_os_error(),
        };
        let _ = rustix::io::write(init::fd(err_fd), &errno.to_le_bytes());
        sys::exit_now(127)
    }

    /// The script and its arguments if the warm interpreter can run this stage (`argv` is
    /// `[program, script, args...]` with a script that is not an option), and the stage's
    /// environment if it differs from the zygote's.
    #[allow(clippy::type_complexity)]
    fn warm_args<'p>(
        &self,
        plan: &Plan<'p>,
        argv0: &CStr,
    ) -> Option<(Vec<&'p CStr>, Option<Vec<&'p CStr>>)> {
        if argv0 != self.program {
            return None;
        }
        let cstrs = |ptrs: &[*const c_char]| -> Vec<&'p CStr> {
            ptrs.iter()
                .take_while(|p| !p.is_null())
                // SAFETY: each non-null pointer points at a NUL-terminated string inside the
                // message buffer, which outlives this process's use of it.
                .map(|&p| unsafe { CStr::from_ptr(p) })
                .collect()
        };
        let args = cstrs(&plan.argv[1..]);
        match args.first() {
            Some(s) if !s.to_bytes().is_empty() && !s.to_bytes().starts_with(b"-") => {}
            _ => return None,
        }
        let env = cstrs(plan.env);
        let same = env.len() == self.env.len()
            && env
                .iter()
                .zip(self.env)
                .all(|(a, b)| a.to_bytes() == b.as_bytes());
        Some((args, (!same).then_some(env)))
    }
}

/// Starts `X`, the holder of this process's memory, and waits until it sleeps for good;
/// returns its pid, or 0 if there is none (the run then goes as well without it).
///
/// `X` shares `H`'s memory (`CLONE_VM`, not its descriptors) and is `G`'s child
/// (`CLONE_PARENT`), out of sight of the program's `wait`. While it lives, the memory is
/// not unmapped when `H` exits: that takes a forked interpreter about 0.8 ms (tearing down
/// the entries of thousands of pages), which would come between the program's end and its
/// result. `G` moves `X` to `SCHED_IDLE`, kills it with the rest of the run, reports, and
/// only then reaps it and closes its status pipe; the supervisor holds a copy of that pipe
/// and lets the slot take its next run only once it has closed (see `supervisor.rs`), so
/// the memory is freed before the next run's limits and baselines are taken.
///
/// `X` must never run code in that memory once the program can write it: it blocks every
/// signal, closes every descriptor, drops its capabilities and then waits in
/// `rt_sigsuspend`, which only `SIGKILL` ends. `H` takes the run only once `X` is in that
/// wait. `X` has the program's seccomp policy too (it is installed before). The program
/// cannot signal or trace it (another uid, no capabilities), and with `/proc` mounted
/// `hidepid=invisible` cannot even see it.
fn start_holder() -> i32 {
    let Some(top) = Stack::new().and_then(|s| s.top()) else {
        return 0;
    };
    // With CLONE_PARENT the exit signal is `H`'s own (SIGCHLD), so none is given.
    let flags = libc::CLONE_VM | libc::CLONE_PARENT;
    // Its state is read from `/proc`, which shows it to this process only while their
    // memory is dumpable (the run's program makes it so again after dropping privileges).
    let dumpable = rustix::process::dumpable_behavior();
    if rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::Dumpable).is_err()
    {
        return 0;
    }
    // `X` closes its end of this pipe right before its last wait: no polling until then.
    let Ok((near_r, near_w)) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) else {
        return 0;
    };
    let arg = std::ptr::without_provenance_mut(usize::try_from(near_w.as_raw_fd()).unwrap_or(0));
    // SAFETY: `holder_main` runs on the fresh stack `top` points to the end of (never
    // unmapped: the mapping lives as long as this memory does), takes a descriptor number
    // as its argument, and makes only raw system calls: it touches no libc or thread-local
    // state it shares with this process.
    let x = unsafe { libc::clone(holder_main, top, flags, arg) };
    drop(near_w);
    let asleep = x > 0 && {
        let mut byte = [0u8; 1];
        sys::wait_readable(&near_r, Duration::from_secs(1)) == Ok(true)
            && rustix::io::read(&near_r, &mut byte) == Ok(0)
            && holder_asleep(x)
    };
    if let Ok(d) = dumpable {
        let _ = rustix::process::set_dumpable_behavior(d);
    }
    if x <= 0 {
        return 0;
    }
    if asleep {
        return x;
    }
    // Not asleep in time (or gone): it must not outlive this, unchecked, into the run.
    if let Some(pid) = rustix::process::Pid::from_raw(x) {
        let _ = rustix::process::kill_process(pid, Signal::KILL);
    }
    0
}

/// `X`'s main function (see [`start_holder`]); `near` is the descriptor to close last.
extern "C" fn holder_main(near: *mut std::ffi::c_void) -> std::ffi::c_int {
    let near = u32::try_from(near.addr()).unwrap_or(0);
    let all: u64 = !0;
    // `_LINUX_CAPABILITY_VERSION_3` for this process, and empty sets.
    let header: [u32; 2] = [0x2008_0522, 0];
    let data = [0u32; 6];
    // SAFETY: raw system calls on integers and on pointers to these locals, which live as
    // long as the calls; none of them fails here, so glibc's `syscall` writes no `errno`
    // (thread-local data this process shares with `H`).
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &raw const all,
            std::ptr::null_mut::<u64>(),
            8usize,
        );
        if near > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, near - 1, 0u32);
        }
        libc::syscall(libc::SYS_close_range, near + 1, u32::MAX, 0u32);
        libc::syscall(libc::SYS_capset, header.as_ptr(), data.as_ptr());
        libc::syscall(
            libc::SYS_prctl,
            libc::PR_SET_NO_NEW_PRIVS,
            1usize,
            0usize,
            0usize,
            0usize,
        );
        libc::syscall(libc::SYS_close, near);
        loop {
            libc::syscall(libc::SYS_rt_sigsuspend, &raw const all, 8usize);
        }
    }
}

/// Waits (at most a second) until `X` sleeps: the only sleep it can be in is its last wait,
/// a few instructions after it closed its end of the pipe.
fn holder_asleep(x: i32) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let stat = sys::proc_stat(x);
        match stat.as_deref().and_then(|s| s.split_whitespace().next()) {
            Some("S") => return true,
            Some("R" | "D") if std::time::Instant::now() < deadline => {
                rustix::thread::sched_yield();
            }
            _ => return false,
        }
    }
}

/// In `G`'s new mount namespace: the run's tmpfs on `/box`, `/tmp` and `/dev/shm`, and a
/// `/proc` of the run's PID namespace.
fn mount_run(scratch: &Scratch) -> Result<(), Errno> {
    let clone = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    for (from, to) in [(c"box", c"/box"), (c"tmp", c"/tmp"), (c"shm", c"/dev/shm")] {
        let t = rustix::mount::open_tree(&scratch.mnt, from, clone)?;
        rustix::mount::move_mount(&t, c"", CWD, to, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)?;
    }
    rustix::mount::mount(
        c"proc",
        c"/proc",
        c"proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        Some(c"hidepid=invisible"),
    )?;
    Ok(())
}
