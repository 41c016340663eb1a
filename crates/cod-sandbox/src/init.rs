//! Code that runs inside a run's namespaces: the init (pid 1 of the run's PID namespace)
//! and the program child between `fork` and `execve`.
//!
//! Everything here runs in a process made by a raw `clone` of the single-threaded supervisor,
//! so it is async-signal-safe only: raw system calls through rustix and `sys`, no
//! allocation, no locks, no panics. Failures travel to the supervisor as numbers on a pipe.
//!
//! The init builds the root filesystem, reports ready, and then obeys commands that arrive
//! on a SEQPACKET socket, into buffers allocated before `clone`: write a file into the work
//! dir, run a stage, exit. The sandbox can so be prepared before its run is known. For each
//! stage it forks the program (the first stage's process is forked ahead, see
//! `ParkedProgram`), waits for it, kills whatever the program left behind
//! (`kill(-1, SIGKILL)` from a namespace's init reaches every other process in it, however it
//! daemonised) and reaps it all before reporting. When the init exits, the kernel tears the
//! namespace down.

use std::ffi::{CStr, c_char};
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};

use rustix::fs::{Gid, Mode, OFlags, Uid};
use rustix::io::Errno;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
use rustix::process::{Resource, Rlimit, Signal};
use rustix::thread::{CapabilitySet, CapabilitySets};

use crate::mounts::{MountPlan, Step};
use crate::seccomp::SeccompPolicy;
use crate::spec::{SANDBOX_ID, WORK_DIR, WarmRuntime};
use crate::sys;

// Report kinds, init to supervisor. Each report is four little-endian 32-bit words.
/// The root is built: `(1 if a process is forked ahead for the first stage, else 0, 0, 0)`.
pub(crate) const REPORT_READY: u32 = 1;
pub(crate) const REPORT_SETUP_FAILED: u32 = 2;
/// `(wait status, exec errno or 0, peak resident memory of its processes in KiB)`.
pub(crate) const REPORT_STAGE_DONE: u32 = 3;
/// The stage did not start: `(errno, index of the file that failed or -1, what)` where
/// `what` is one of the `NOT_STARTED_*` values.
pub(crate) const REPORT_NOT_STARTED: u32 = 4;
/// The zygote's interpreter is ready: `(0, 0, 0)`.
pub(crate) const REPORT_WARM_READY: u32 = 5;
/// The zygote's interpreter did not start: `(what, errno, 0)`, `what` one of
/// `zygote::WARM_*`.
pub(crate) const REPORT_WARM_FAILED: u32 = 6;
/// The program of a [`CMD_PRESTART`] runs (or did not start): `(exec errno or 0, 0, 0)`.
pub(crate) const REPORT_PRESTARTED: u32 = 7;
/// The program started ahead is gone (killed and reaped, or there was none): `(0, 0, 0)`.
pub(crate) const REPORT_DROPPED: u32 = 8;
pub(crate) const REPORT_LEN: usize = 16;

/// Why a stage did not start.
pub(crate) const NOT_STARTED_FILE: i32 = 1;
pub(crate) const NOT_STARTED_PLAN: i32 = 2;
pub(crate) const NOT_STARTED_FORK: i32 = 3;
pub(crate) const NOT_STARTED_DISK: i32 = 4;

/// Command kinds, supervisor to init (the first byte of each message).
pub(crate) const CMD_GO: u8 = b'G';
/// `F`, mode (u32), file name: create a file in the work dir; with a descriptor attached
/// (a shared file), its contents are copied from it.
pub(crate) const CMD_FILE: u8 = b'F';
/// `D`, bytes: append to the file being written.
pub(crate) const CMD_DATA: u8 = b'D';
/// `E`: the file is complete.
pub(crate) const CMD_END: u8 = b'E';
/// `Z`, size (u64): resize the work tmpfs (it is empty: sent before any file).
pub(crate) const CMD_DISK: u8 = b'Z';
/// `S`, plan (see [`encode_plan`]), with the stage's stdin, stdout and stderr attached.
pub(crate) const CMD_STAGE: u8 = b'S';
/// `W`, a postcard-encoded [`WarmRuntime`]: become a zygote holding that runtime (see
/// `zygote.rs`). Sent once, right after the root is built.
pub(crate) const CMD_WARM: u8 = b'W';
/// `Q`, plan, with stdin, stdout, stderr, the argument pipe and the ready pipe attached:
/// start the program now, with those two on fds 4 and 5, and leave it waiting for its run
/// (see `Sandbox::prestart`). Reports [`REPORT_PRESTARTED`].
pub(crate) const CMD_PRESTART: u8 = b'Q';
/// `A`, the number of rlimits (u32), the rlimits (as in a plan), then the program's
/// arguments (each NUL-terminated), with the argument pipe attached: the prestarted
/// program's run begins. The init sets its limits, writes the arguments (which is what the
/// program waits for, so it starts only after its limits, and after the run's files that
/// came before), and waits for it like a stage, or until it tells its end (see
/// `told_exit`). Reports [`REPORT_STAGE_DONE`].
pub(crate) const CMD_AWAIT: u8 = b'A';
/// `X`: the run is not for the program started ahead: kill and reap it, so that the sandbox
/// serves the run like any prepared one. Reports [`REPORT_DROPPED`].
pub(crate) const CMD_DROP: u8 = b'X';

/// `K`: a zygote's last run is over and accounted for: start the next run's processes
/// now, while the slot is idle (see `zygote.rs`). No report.
pub(crate) const CMD_PARK: u8 = b'K';

/// Largest command message (the socket's own limit is about 200 KiB).
pub(crate) const MAX_MESSAGE: usize = 160 * 1024;
/// Most arguments and environment entries of a stage.
pub(crate) const MAX_ARGS: usize = 2048;
pub(crate) const MAX_ENV: usize = 512;

/// Exit code of a program child whose `execve` failed (the errno goes over a pipe).
const EXEC_FAILED: i32 = 127;

/// Everything the init needs, prepared by the supervisor.
pub(crate) struct InitPlan<'a> {
    pub(crate) mounts: &'a MountPlan,
    pub(crate) seccomp: &'a SeccompPolicy,
    /// The CPUs a program runs on, when the slot's own processes are held to one of them.
    pub(crate) unpin: Option<&'a rustix::thread::CpuSet>,
    /// Init's end of the command socket.
    pub(crate) cmd: RawFd,
    /// Init's end of the report pipe (write).
    pub(crate) report: RawFd,
    /// The supervisor's descriptors, which the init must not keep open.
    pub(crate) close_first: &'a [RawFd],
}

/// Memory the init uses, allocated before `clone`.
///
/// Each buffer is a mapping of its own, which the kernel hands out zeroed, page by page, as
/// it is written. From the heap, `calloc` would clear all of it first: in a warm run's
/// process, a fork of the interpreter, that meant copying some 45 of the zygote's pages
/// for a plan that fits in one.
pub(crate) struct InitBuffers {
    pub(crate) message: Zeroed<u8>,
    pub(crate) argv: Zeroed<*const c_char>,
    pub(crate) env: Zeroed<*const c_char>,
}

impl InitBuffers {
    /// The buffers, or `None` if there is no memory for them.
    pub(crate) fn new() -> Option<Self> {
        Some(InitBuffers {
            message: Zeroed::new(MAX_MESSAGE)?,
            argv: Zeroed::new(MAX_ARGS + 1)?,
            env: Zeroed::new(MAX_ENV + 1)?,
        })
    }
}

/// A type whose value with every byte zero is valid: `0` or a null pointer.
pub(crate) trait ZeroValid: Copy {}
impl ZeroValid for u8 {}
impl ZeroValid for *const c_char {}

/// `len` values of `T`, all zero, in a private anonymous mapping of their own.
pub(crate) struct Zeroed<T: ZeroValid> {
    ptr: std::ptr::NonNull<T>,
    len: usize,
}

impl<T: ZeroValid> Zeroed<T> {
    fn new(len: usize) -> Option<Self> {
        let bytes = len.checked_mul(std::mem::size_of::<T>())?.max(1);
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                bytes,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE,
            )
        }
        .ok()?;
        Some(Zeroed {
            ptr: std::ptr::NonNull::new(base.cast())?,
            len,
        })
    }
}

impl<T: ZeroValid> std::ops::Deref for Zeroed<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` is the start of a mapping of `len` values of `T`, page-aligned, which
        // the kernel zeroed and `T` is valid zeroed (`ZeroValid`); it stays mapped until
        // `self` drops, and a shared borrow of `self` allows no writes meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: ZeroValid> std::ops::DerefMut for Zeroed<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`; the exclusive borrow of `self` makes this the only
        // reference to the mapping.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: ZeroValid> Drop for Zeroed<T> {
    fn drop(&mut self) {
        let bytes = (self.len * std::mem::size_of::<T>()).max(1);
        // SAFETY: the mapping made in `new`, of that length; no reference to it outlives
        // `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), bytes) };
    }
}

/// A descriptor received with a command, closed when dropped.
struct Received(RawFd);

impl Drop for Received {
    fn drop(&mut self) {
        sys::close(self.0);
    }
}

/// Kills the program started ahead and reaps it (and whatever it started).
fn end_program(child: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(child) {
        let _ = rustix::process::kill_process(pid, Signal::KILL);
    }
    let _ = finish_stage(child, None);
}

pub(crate) fn fd(raw: RawFd) -> BorrowedFd<'static> {
    // SAFETY: every descriptor passed here was created by the supervisor before `clone` or
    // received by this process, is open, and stays open until this process execs or exits.
    unsafe { BorrowedFd::borrow_raw(raw) }
}

pub(crate) fn report(to: RawFd, kind: u32, a: i32, b: i32, c: i32) {
    let mut buf = [0u8; REPORT_LEN];
    buf[0..4].copy_from_slice(&kind.to_le_bytes());
    buf[4..8].copy_from_slice(&a.to_le_bytes());
    buf[8..12].copy_from_slice(&b.to_le_bytes());
    buf[12..16].copy_from_slice(&c.to_le_bytes());
    // A 16-byte write to a pipe is atomic (PIPE_BUF); if it fails the supervisor sees EOF.
    let _ = rustix::io::write(fd(to), &buf);
}

/// Decodes a report written by [`report`].
pub(crate) fn parse_report(buf: &[u8; REPORT_LEN]) -> (u32, i32, i32, i32) {
    let w = |i: usize| [buf[i], buf[i + 1], buf[i + 2], buf[i + 3]];
    (
        u32::from_le_bytes(w(0)),
        i32::from_le_bytes(w(4)),
        i32::from_le_bytes(w(8)),
        i32::from_le_bytes(w(12)),
    )
}

/// Serializes a stage's plan for [`CMD_STAGE`]: rlimits, then argv and env as NUL-terminated
/// strings. Runs in the supervisor.
pub(crate) fn encode_plan(rlimits: &[(Resource, u64)], argv: &[String], env: &[String]) -> Vec<u8> {
    let mut out = vec![CMD_STAGE];
    encode_rlimits(&mut out, rlimits);
    out.extend_from_slice(&u32::try_from(argv.len()).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&u32::try_from(env.len()).unwrap_or(0).to_le_bytes());
    for s in argv.iter().chain(env) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
    out
}

/// Appends `rlimits` as a plan and [`CMD_AWAIT`] carry them: their number (u32), then
/// each resource (u32) and value (u64).
pub(crate) fn encode_rlimits(out: &mut Vec<u8>, rlimits: &[(Resource, u64)]) {
    out.extend_from_slice(&u32::try_from(rlimits.len()).unwrap_or(0).to_le_bytes());
    for &(res, v) in rlimits {
        out.extend_from_slice(&(res as u32).to_le_bytes());
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Splits `msg` into the rlimits [`encode_rlimits`] wrote at its start (their records)
/// and what follows them.
fn split_rlimits(msg: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = usize::try_from(u32_at(msg, 0)?).ok()?;
    let end = 4 + n.checked_mul(12)?;
    Some((msg.get(4..end)?, &msg[end..]))
}

/// The records of [`split_rlimits`]: each resource (`None` if unknown) and its value.
fn rlimit_records(records: &[u8]) -> impl Iterator<Item = (Option<Resource>, u64)> + '_ {
    records.chunks_exact(12).map(|c| {
        let res = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let v = u64::from_le_bytes([c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11]]);
        (resource(res), v)
    })
}

fn resource(raw: u32) -> Option<Resource> {
    use Resource::*;
    [
        Cpu, Fsize, Data, Stack, Core, Rss, Nproc, Nofile, Memlock, As, Locks, Sigpending,
        Msgqueue, Nice, Rtprio, Rttime,
    ]
    .into_iter()
    .find(|r| *r as u32 == raw)
}

/// A stage's plan, decoded in place: pointers into the message buffer.
pub(crate) struct Plan<'a> {
    pub(crate) rlimits: &'a [u8],
    pub(crate) argv: &'a [*const c_char],
    pub(crate) env: &'a [*const c_char],
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Decodes a plan without allocating: the strings stay in `msg`, `argv` and `env` receive
/// pointers to them and a terminating null.
pub(crate) fn decode_plan<'a>(
    msg: &'a [u8],
    argv: &'a mut [*const c_char],
    env: &'a mut [*const c_char],
) -> Option<Plan<'a>> {
    let (rlimits, msg) = split_rlimits(msg)?;
    let argc = usize::try_from(u32_at(msg, 0)?).ok()?;
    let envc = usize::try_from(u32_at(msg, 4)?).ok()?;
    if argc == 0 || argc > argv.len() - 1 || envc > env.len() - 1 {
        return None;
    }
    let mut at = 8;
    for i in 0..argc + envc {
        let rest = msg.get(at..)?;
        let len = rest.iter().position(|&b| b == 0)?;
        let ptr = rest.as_ptr().cast::<c_char>();
        if i < argc {
            argv[i] = ptr;
        } else {
            env[i - argc] = ptr;
        }
        at += len + 1;
    }
    argv[argc] = std::ptr::null();
    env[envc] = std::ptr::null();
    Some(Plan {
        rlimits,
        argv: &argv[..=argc],
        env: &env[..=envc],
    })
}

/// Sends a stage (its [`CMD_STAGE`] message) and its stdio to the process that runs it
/// (a zygote's parked run, or a process forked ahead), waiting on `sock`.
pub(crate) fn send_stage(
    sock: impl AsFd,
    message: &[u8],
    stdio: [RawFd; 3],
) -> Result<usize, Errno> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut anc = rustix::net::SendAncillaryBuffer::new(&mut space);
    let fds = stdio.map(fd);
    anc.push(rustix::net::SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(
        sock,
        &[std::io::IoSlice::new(message)],
        &mut anc,
        rustix::net::SendFlags::NOSIGNAL,
    )
}

/// Receives one command: its length, and up to three descriptors attached to it.
pub(crate) fn receive<const N: usize>(
    sock: RawFd,
    buf: &mut [u8],
    fds: &mut [RawFd; N],
) -> Option<(usize, usize)> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(5))];
    loop {
        let mut anc = RecvAncillaryBuffer::new(&mut space);
        match recvmsg(
            fd(sock),
            &mut [IoSliceMut::new(buf)],
            &mut anc,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(msg) if msg.bytes == 0 => return None,
            Ok(msg) => {
                let mut n = 0;
                for m in anc.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = m {
                        for f in received {
                            if n < fds.len() {
                                fds[n] = f.into_raw_fd();
                                n += 1;
                            }
                        }
                    }
                }
                return Some((msg.bytes, n));
            }
            Err(Errno::INTR) => {}
            Err(_) => return None,
        }
    }
}

/// The init's main function; never returns.
pub(crate) fn init_main(p: &InitPlan<'_>, bufs: &mut InitBuffers) -> ! {
    for &f in p.close_first {
        sys::close(f);
    }
    // If the supervisor dies, so does the init, and with it the whole namespace.
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));

    let mut fds = [-1; 3];
    match receive(p.cmd, &mut bufs.message, &mut fds) {
        Some((1, 0)) if bufs.message[0] == CMD_GO => {}
        _ => sys::exit_now(1),
    }
    // The init was born in the slot's cgroup; make it its cgroup root.
    // SAFETY: only CLONE_NEWCGROUP is unshared, which does not touch the descriptor table
    // (the hazard `unshare_unsafe` documents is CLONE_FILES), and this process has one thread.
    let unshared =
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWCGROUP) };
    if let Err(e) = unshared {
        report(
            p.report,
            REPORT_SETUP_FAILED,
            Step::UnshareCgroup as i32,
            -1,
            e.raw_os_error(),
        );
        sys::exit_now(1);
    }
    if let Err((step, index, errno)) = p.mounts.build() {
        report(
            p.report,
            REPORT_SETUP_FAILED,
            step as i32,
            index,
            errno.raw_os_error(),
        );
        sys::exit_now(1);
    }
    // Building the root changed this process's uids, which clears the parent-death signal
    // (prctl(2), PR_SET_PDEATHSIG): set it again, or a prepared sandbox whose supervisor
    // exits would outlive it.
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
    let Ok(work) = rustix::fs::open(
        c"/box",
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        report(
            p.report,
            REPORT_SETUP_FAILED,
            Step::WorkDir as i32,
            6,
            Errno::NOENT.raw_os_error(),
        );
        sys::exit_now(1);
    };
    // The first stage's process, forked ahead (see `ParkedProgram`); the report says
    // whether there is one, since it counts among the slot's tasks from now on.
    let mut parked = ParkedProgram::fork(p, bufs);
    report(p.report, REPORT_READY, i32::from(parked.is_some()), 0, 0);

    let mut incoming = Incoming::new();
    // The program started ahead by CMD_PRESTART, waiting for its run.
    let mut prestarted: Option<i32> = None;
    loop {
        let mut fds = [-1; 5];
        let Some((len, nfds)) = receive(p.cmd, &mut bufs.message, &mut fds) else {
            sys::exit_now(0)
        };
        let (kind, body) = (bufs.message[0], &bufs.message[1..len]);
        match kind {
            CMD_DISK => {
                if let Err(e) = resize_work(body) {
                    incoming.fail(NOT_STARTED_DISK, -1, e);
                }
            }
            CMD_FILE => {
                incoming.begin(|| create_file(&work, body));
                incoming.copy_attached(&fds[..nfds]);
            }
            CMD_DATA => incoming.data(body),
            CMD_END => incoming.end(),
            CMD_PRESTART if nfds == 5 && prestarted.is_none() => {
                // The program starts the usual way: its run is a process of its own.
                if let Some(pp) = parked.take() {
                    pp.discard();
                }
                let stdio = [fds[0], fds[1], fds[2]];
                let extra = [fds[3], fds[4]];
                let InitBuffers { message, argv, env } = &mut *bufs;
                let started = decode_plan(&message[1..len], argv, env)
                    .ok_or(Errno::INVAL)
                    .and_then(|plan| start_program(p, &plan, stdio, &extra));
                for f in extra {
                    sys::close(f);
                }
                match started {
                    Ok((pid, 0)) => {
                        prestarted = Some(pid);
                        report(p.report, REPORT_PRESTARTED, 0, 0, 0);
                    }
                    Ok((pid, errno)) => {
                        // The exec failed and the child exited: reap it.
                        let _ = finish_stage(pid, None);
                        report(p.report, REPORT_PRESTARTED, errno, 0, 0);
                    }
                    Err(e) => report(p.report, REPORT_PRESTARTED, e.raw_os_error(), 0, 0),
                }
            }
            CMD_DROP => {
                if let Some(child) = prestarted.take() {
                    end_program(child);
                }
                report(p.report, REPORT_DROPPED, 0, 0, 0);
            }
            CMD_AWAIT => {
                // Closed when this arm ends, whichever way: the program's end of file.
                let mut received: Vec<Received> =
                    fds[..nfds].iter().map(|&f| Received(f)).collect();
                let args = if nfds == 1 { received.pop() } else { None };
                drop(received);
                let Some(child) = prestarted.take() else {
                    report(
                        p.report,
                        REPORT_NOT_STARTED,
                        Errno::SRCH.raw_os_error(),
                        -1,
                        NOT_STARTED_PLAN,
                    );
                    continue;
                };
                // A program that died while waiting (a broken bootstrap) cannot take the run.
                let gone = rustix::process::Pid::from_raw(child).is_some_and(|pid| {
                    matches!(
                        rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG),
                        Ok(Some(_)) | Err(_)
                    )
                });
                if gone {
                    let _ = finish_stage(child, None);
                    report(
                        p.report,
                        REPORT_NOT_STARTED,
                        Errno::CHILD.raw_os_error(),
                        -1,
                        NOT_STARTED_FORK,
                    );
                    continue;
                }
                // Files that failed, or a malformed command: the run does not start.
                let parts = args.zip(split_rlimits(body));
                let refused = incoming.stage().or(parts.is_none().then_some((
                    NOT_STARTED_PLAN,
                    -1,
                    Errno::INVAL,
                )));
                let (Some((args, (limits, words))), None) = (parts, refused) else {
                    end_program(child);
                    if let Some((what, index, e)) = refused {
                        report(p.report, REPORT_NOT_STARTED, e.raw_os_error(), index, what);
                    }
                    continue;
                };
                // The run's own limits (the program started with the largest ones).
                for (res, v) in rlimit_records(limits) {
                    if let (Some(res), Some(pid)) = (res, rustix::process::Pid::from_raw(child)) {
                        let _ = rustix::process::prlimit(
                            Some(pid),
                            res,
                            Rlimit {
                                current: Some(v),
                                maximum: Some(v),
                            },
                        );
                    }
                }
                // The program may tell its end by a signal (see `told_exit`): blocked from
                // before it can run, so that neither that nor its SIGCHLD is missed.
                let mask = sys::block_signals(&[libc::SIGCHLD, libc::SIGUSR1]);
                let told = sys::set_saved_uid(SANDBOX_ID).is_ok();
                // Now the program may go. A program that died meanwhile gets nothing
                // (EPIPE: this process ignores SIGPIPE, as the supervisor it was forked
                // from does), and its status says why.
                let _ = write_all(fd(args.0), words);
                drop(args);
                let told = if told { told_exit(child) } else { None };
                sys::set_signal_mask(&mask);
                if let Some(code) = told {
                    // Its status is chosen and its output closed: the run is over. It and
                    // everything else of the sandbox die now, and the result goes before
                    // they are reaped (a big runtime's memory takes milliseconds to tear
                    // down, and nothing of the run can execute once killed).
                    let peak = high_water_kib(child);
                    let _ = sys::kill_all_but_self();
                    report(p.report, REPORT_STAGE_DONE, code << 8, 0, peak);
                    reap_all();
                    continue;
                }
                let chosen = chosen_exit(child);
                let (mut status, peak) = finish_stage(child, None);
                if let Some(code) = chosen
                    && status == libc::SIGKILL
                {
                    status = code << 8;
                }
                report(p.report, REPORT_STAGE_DONE, status, 0, peak);
            }
            CMD_STAGE if nfds == 3 => {
                let stdio = [fds[0], fds[1], fds[2]];
                // The process forked ahead was this stage's, whether it starts or not (the
                // supervisor counted it as the stage's own).
                let ahead = parked.take();
                if let Some((what, index, e)) = incoming.stage() {
                    if let Some(pp) = ahead {
                        pp.discard();
                    }
                    for f in stdio {
                        sys::close(f);
                    }
                    report(p.report, REPORT_NOT_STARTED, e.raw_os_error(), index, what);
                    continue;
                }
                let InitBuffers { message, argv, env } = &mut *bufs;
                let Some(plan) = decode_plan(&message[1..len], argv, env) else {
                    if let Some(pp) = ahead {
                        pp.discard();
                    }
                    for f in stdio {
                        sys::close(f);
                    }
                    report(
                        p.report,
                        REPORT_NOT_STARTED,
                        Errno::INVAL.raw_os_error(),
                        -1,
                        NOT_STARTED_PLAN,
                    );
                    continue;
                };
                let started = match ahead {
                    Some(pp) => pp
                        .start(&message[..len], stdio)
                        .or_else(|stdio| start_program(p, &plan, stdio, &[])),
                    None => start_program(p, &plan, stdio, &[]),
                };
                match started.map(|(child, exec_errno)| {
                    let (status, peak) = finish_stage(child, None);
                    (status, exec_errno, peak)
                }) {
                    Ok((status, exec_errno, peak)) => {
                        report(p.report, REPORT_STAGE_DONE, status, exec_errno, peak);
                    }
                    Err(e) => {
                        report(
                            p.report,
                            REPORT_NOT_STARTED,
                            e.raw_os_error(),
                            -1,
                            NOT_STARTED_FORK,
                        );
                    }
                }
            }
            CMD_WARM if incoming.is_idle() => {
                drop(work);
                // The zygote's children are its runs alone.
                if let Some(pp) = parked.take() {
                    pp.discard();
                }
                match postcard::from_bytes::<WarmRuntime>(body) {
                    // The zygote allocates (the interpreter does): this process is a copy
                    // of a single-threaded keeper, so no lock is held by a thread that is
                    // not here.
                    Ok(warm) => crate::zygote::zygote_main(p, bufs, warm),
                    Err(_) => {
                        report(
                            p.report,
                            REPORT_WARM_FAILED,
                            crate::zygote::WARM_SETUP,
                            libc::EINVAL,
                            0,
                        );
                        sys::exit_now(1);
                    }
                }
            }
            _ => {
                for f in fds.iter().take(nfds) {
                    sys::close(*f);
                }
                sys::exit_now(0);
            }
        }
    }
}

/// Sets the size of the work tmpfs (`/box`, `/tmp` and `/dev/shm` share it) from a
/// [`CMD_DISK`] body: the size in bytes (u64).
fn resize_work(body: &[u8]) -> Result<(), Errno> {
    let bytes: [u8; 8] = body
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or(Errno::INVAL)?;
    let mut size = u64::from_le_bytes(bytes).max(1 << 20);
    // The decimal digits, written without allocating.
    let mut digits = [0u8; 24];
    let mut at = digits.len() - 1; // the last byte stays NUL
    loop {
        at -= 1;
        digits[at] = b'0' + u8::try_from(size % 10).unwrap_or(0);
        size /= 10;
        if size == 0 {
            break;
        }
    }
    let value = CStr::from_bytes_until_nul(&digits[at..]).map_err(|_| Errno::INVAL)?;
    let fs = rustix::mount::fspick(
        rustix::fs::CWD,
        c"/box",
        rustix::mount::FsPickFlags::FSPICK_CLOEXEC,
    )?;
    rustix::mount::fsconfig_set_string(&fs, c"size", value)?;
    rustix::mount::fsconfig_reconfigure(&fs)
}

/// A run's files as they arrive (`CMD_FILE`, `CMD_DATA`, `CMD_END`), and the first error
/// before its next stage: `(what, file index or -1, errno)`, reported when the stage comes.
pub(crate) struct Incoming {
    file: Option<OwnedFd>,
    index: i32,
    pending: Option<(i32, i32, Errno)>,
}

impl Incoming {
    pub(crate) const fn new() -> Incoming {
        Incoming {
            file: None,
            index: -1,
            pending: None,
        }
    }

    /// `CMD_FILE`: the next file, made by `create` unless an error came first.
    pub(crate) fn begin(&mut self, create: impl FnOnce() -> Result<OwnedFd, Errno>) {
        self.index += 1;
        self.file = None;
        if self.pending.is_none() {
            match create() {
                Ok(f) => self.file = Some(f),
                Err(e) => self.pending = Some((NOT_STARTED_FILE, self.index, e)),
            }
        }
    }

    /// `CMD_DATA`: more of the current file.
    pub(crate) fn data(&mut self, body: &[u8]) {
        if let Some(Err(e)) = self.file.as_ref().map(|f| write_all(f, body)) {
            self.fail(NOT_STARTED_FILE, self.index, e);
            self.file = None;
        }
    }

    /// `CMD_FILE` with descriptors attached: the current file's contents come from the one
    /// descriptor (copied in the kernel, from offset 0 without moving the descriptor's own
    /// offset, which other runs share); every attached descriptor is closed.
    pub(crate) fn copy_attached(&mut self, fds: &[RawFd]) {
        let copied = match (self.file.as_ref(), fds) {
            (_, []) => Ok(()),
            (Some(f), [src]) => copy_all(f, fd(*src)),
            (Some(_), _) => Err(Errno::INVAL),
            (None, _) => Ok(()),
        };
        for &f in fds {
            sys::close(f);
        }
        if let Err(e) = copied {
            self.fail(NOT_STARTED_FILE, self.index, e);
            self.file = None;
        }
    }

    /// `CMD_END`: the current file is complete; it becomes the sandbox user's.
    pub(crate) fn end(&mut self) {
        if let Some(f) = self.file.take() {
            let id = (Uid::from_raw(SANDBOX_ID), Gid::from_raw(SANDBOX_ID));
            if let Err(e) = rustix::fs::fchown(&f, Some(id.0), Some(id.1)) {
                self.fail(NOT_STARTED_FILE, self.index, e);
            }
        }
    }

    /// Notes an error, unless one came first.
    pub(crate) fn fail(&mut self, what: i32, index: i32, e: Errno) {
        self.pending = self.pending.or(Some((what, index, e)));
    }

    /// A stage begins: the first error since the last one, if any; the next file is the
    /// first of the next stage.
    pub(crate) fn stage(&mut self) -> Option<(i32, i32, Errno)> {
        self.index = -1;
        self.file = None;
        self.pending.take()
    }

    /// No file and no error since the last stage.
    pub(crate) fn is_idle(&self) -> bool {
        self.index == -1 && self.pending.is_none()
    }
}

/// Copies all of `src` into `dst` with `sendfile`, reading from offset 0 of `src`.
fn copy_all(dst: &OwnedFd, src: BorrowedFd<'_>) -> Result<(), Errno> {
    let mut offset = 0u64;
    loop {
        match rustix::fs::sendfile(dst, src, Some(&mut offset), 1 << 30) {
            Ok(0) => return Ok(()),
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Creates `/box/<name>` from a [`CMD_FILE`] body: mode (u32) then the name.
pub(crate) fn create_file(work: &OwnedFd, body: &[u8]) -> Result<OwnedFd, Errno> {
    let mode = u32_at(body, 0).ok_or(Errno::INVAL)?;
    let name = body.get(4..).ok_or(Errno::INVAL)?;
    // A plain name only (the supervisor checked it too): no slash, no dot names, no NUL.
    if name.is_empty()
        || name.len() > 255
        || name.contains(&b'/')
        || name.contains(&0)
        || name[0] == b'.'
    {
        return Err(Errno::INVAL);
    }
    let mut path = [0u8; 256];
    path[..name.len()].copy_from_slice(name);
    let path = CStr::from_bytes_until_nul(&path).map_err(|_| Errno::INVAL)?;
    let f = rustix::fs::openat(
        work,
        path,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(mode & 0o777),
    )?;
    // The umask may have masked the mode at creation.
    rustix::fs::fchmod(&f, Mode::from_raw_mode(mode & 0o777))?;
    Ok(f)
}

pub(crate) fn write_all(f: impl AsFd, mut data: &[u8]) -> Result<(), Errno> {
    let f = f.as_fd();
    while !data.is_empty() {
        match rustix::io::write(f, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The process of a prepared sandbox's first stage, forked ahead while the sandbox waits
/// for its run: it has reset its signals and installed the program's seccomp policy (the
/// kernel checks and compiles it, about 0.15 ms), and waits for the stage's plan and stdio.
/// Then it does what the child of [`start_program`] does: the rest of [`prepare_exec`]
/// (which the policy allows), and `execve`. It holds nothing of the init's but the socket
/// it waits on and its exec-error pipe. Later stages fork as before.
struct ParkedProgram {
    pid: i32,
    /// The init's end of the socket the process waits on.
    go: OwnedFd,
    /// The read end of its close-on-exec error pipe.
    err_r: OwnedFd,
}

impl ParkedProgram {
    /// Forks the process; `None` if that fails (the stage then forks its own).
    fn fork(p: &InitPlan<'_>, bufs: &mut InitBuffers) -> Option<ParkedProgram> {
        let (go, go_child) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .ok()?;
        let (err_r, err_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).ok()?;
        match sys::fork_raw() {
            Ok(0) => {
                drop(go);
                drop(err_r);
                parked_program(p, bufs, go_child, err_w)
            }
            Ok(pid) => Some(ParkedProgram { pid, go, err_r }),
            Err(_) => None,
        }
    }

    /// Hands the stage (`message`, its [`CMD_STAGE`]) and `stdio` to the process and waits
    /// until it has exec'd: its pid and the errno of a failed `execve` (or 0), as
    /// [`start_program`] returns them. If the process is gone, it is reaped and `stdio`
    /// is handed back, for a fork.
    fn start(self, message: &[u8], stdio: [RawFd; 3]) -> Result<(i32, i32), [RawFd; 3]> {
        if send_stage(&self.go, message, stdio).is_err() {
            self.discard();
            return Err(stdio);
        }
        // The program has its own copies now; ours would keep its pipes from reaching EOF.
        for f in stdio {
            sys::close(f);
        }
        let ParkedProgram { pid, go, err_r } = self;
        drop(go);
        Ok((pid, read_exec_errno(err_r)))
    }

    /// Kills the process and reaps it.
    fn discard(self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid) {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
            while let Err(Errno::INTR) =
                rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty())
            {
            }
        }
    }
}

/// The [`ParkedProgram`]'s process: `go` and `err_w` are its only descriptors besides
/// stdio once it starts; it waits on `go` for the stage.
fn parked_program(p: &InitPlan<'_>, bufs: &mut InitBuffers, go: OwnedFd, err_w: OwnedFd) -> ! {
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
    let fail = |errno: Errno| -> ! {
        let _ = rustix::io::write(fd(4), &errno.raw_os_error().to_le_bytes());
        sys::exit_now(EXEC_FAILED)
    };
    // Nothing of the init's (its command socket, report pipe, work dir) stays open here:
    // `go` on 3, the error pipe on 4, the rest closed.
    let (g, e) = (go.into_raw_fd(), err_w.into_raw_fd());
    let (Ok(g), Ok(e)) = (sys::dup_above(g, 100), sys::dup_above(e, 100)) else {
        sys::exit_now(EXEC_FAILED)
    };
    if sys::dup_onto_cloexec(g, 3).is_err() || sys::dup_onto_cloexec(e, 4).is_err() {
        sys::exit_now(EXEC_FAILED)
    }
    if sys::close_from(5).is_err() {
        fail(sys::errno());
    }
    sys::reset_signals();
    if let Err(e) = p.seccomp.install() {
        fail(e);
    }
    let mut fds = [-1; 5];
    let Some((len, nfds)) = receive(3, &mut bufs.message, &mut fds) else {
        sys::exit_now(0)
    };
    let InitBuffers { message, argv, env } = bufs;
    let plan = match message.get(1..len) {
        Some(body) if nfds == 3 && message[0] == CMD_STAGE => decode_plan(body, argv, env),
        _ => None,
    };
    let Some(plan) = plan else { fail(Errno::INVAL) };
    exec_program(p, &plan, [fds[0], fds[1], fds[2]], &[], 4, true)
}

/// Waits for `child`, then kills and reaps everything else (but `holder`, killed and left
/// to [`reap_all`]); returns its raw wait status and the largest peak resident memory (KiB)
/// of the run's processes.
pub(crate) fn finish_stage(child: i32, holder: Option<i32>) -> (i32, i32) {
    let mut status = 0;
    let mut peak: i64 = 0;
    loop {
        match sys::wait_any() {
            Ok((pid, st, rss)) => {
                peak = peak.max(rss);
                if pid == child {
                    status = st;
                    break;
                }
            }
            Err(Errno::INTR) => {}
            Err(_) => break,
        }
    }
    // Whatever the program left behind (daemons, double forks) dies now, and is reaped. A
    // holder of the program's memory (see `zygote.rs`) dies with it but is not waited for,
    // and frees the memory only when a CPU is idle: not while the result is on its way.
    if let Some(x) = holder {
        sys::set_idle_priority(x);
    }
    let _ = sys::kill_all_but_self();
    loop {
        if holder.is_some_and(|x| !sys::other_children(x)) {
            break;
        }
        match sys::wait_any() {
            Ok((_, _, rss)) => peak = peak.max(rss),
            Err(Errno::INTR) => {}
            Err(_) => break,
        }
    }
    (status, i32::try_from(peak).unwrap_or(i32::MAX))
}

/// Waits until the program started ahead, `child`, either ends or tells its end: a
/// `SIGUSR1` from it while it is named `cod-exit N` (node's bootstrap sends it once its
/// `exit` listeners have run and its output is closed, then waits to be killed). Returns
/// `N` in the second case, `None` in the first. The caller blocked `SIGCHLD` and `SIGUSR1`
/// before the program could run, and made the program's uid this process's saved one, so
/// that the program may signal it. The program's own process sets the name and sends the
/// signal (a signal from anyone else is ignored): its exit status is its own to choose
/// anyway, and a program that tells its end early is killed then.
fn told_exit(child: i32) -> Option<i32> {
    let pid = rustix::process::Pid::from_raw(child)?;
    loop {
        // Ended (its SIGCHLD may have come before the mask), or not a child any more.
        match rustix::process::waitid(
            rustix::process::WaitId::Pid(pid),
            rustix::process::WaitIdOptions::EXITED
                | rustix::process::WaitIdOptions::NOHANG
                | rustix::process::WaitIdOptions::NOWAIT,
        ) {
            Ok(None) => {}
            _ => return None,
        }
        let (sig, from) = sys::wait_signal(&[libc::SIGCHLD, libc::SIGUSR1]).ok()?;
        if sig == libc::SIGUSR1
            && from == child
            && let Some(code) = exit_name(child)
        {
            return Some(code);
        }
    }
}

/// The largest resident size `pid` has had, in KiB (`VmHWM` in `/proc/PID/status`), or 0.
/// Allocates nothing.
pub(crate) fn high_water_kib(pid: i32) -> i32 {
    let mut buf = [0u8; 4096];
    let Some(n) = read_proc(pid, b"/status", &mut buf) else {
        return 0;
    };
    let text = &buf[..n];
    let Some(at) = text.windows(6).position(|w| w == b"VmHWM:") else {
        return 0;
    };
    let kib = text[at + 6..]
        .iter()
        .skip_while(|c| c.is_ascii_whitespace())
        .take_while(|c| c.is_ascii_digit())
        .fold(0i64, |n, d| {
            n.saturating_mul(10).saturating_add(i64::from(d - b'0'))
        });
    i32::try_from(kib).unwrap_or(i32::MAX)
}

/// Reads `/proc/PID<file>` into `buf` (one read: enough for `comm` and `status`); the
/// number of bytes read.
fn read_proc(pid: i32, file: &[u8], buf: &mut [u8]) -> Option<usize> {
    let mut path = [0u8; 48];
    let mut num = [0u8; 24];
    let pid_digits = crate::zygote::digits(u64::try_from(pid).ok()?, &mut num).to_bytes();
    let parts: [&[u8]; 3] = [b"/proc/", pid_digits, file];
    let mut at = 0;
    for part in parts {
        path.get_mut(at..at + part.len())?.copy_from_slice(part);
        at += part.len();
    }
    let path = CStr::from_bytes_until_nul(&path).ok()?;
    let file = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    rustix::io::read(&file, buf).ok()
}

/// The status `pid` chose by naming itself `cod-exit N`, if it did.
fn exit_name(pid: i32) -> Option<i32> {
    let mut name = [0u8; 32];
    let n = read_proc(pid, b"/comm", &mut name)?;
    parse_exit_name(name.get(..n)?)
}

/// Waits for the program started ahead, `child`, to end (without reaping it) and, if it
/// was killed by `SIGKILL` while named `cod-exit N`, returns `N`: the exit status it chose
/// when it ended itself that way, skipping its runtime's own slow exit (node's bootstrap
/// does so once its `exit` listeners have run). Whoever killed it, the name was set by
/// the program's process, whose exit status is its own to choose anyway; a limit that
/// killed it still decides the run's verdict.
fn chosen_exit(child: i32) -> Option<i32> {
    let pid = rustix::process::Pid::from_raw(child)?;
    let status = loop {
        match rustix::process::waitid(
            rustix::process::WaitId::Pid(pid),
            rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOWAIT,
        ) {
            Ok(Some(st)) => break st,
            Err(Errno::INTR) => {}
            _ => return None,
        }
    };
    if status.terminating_signal() != Some(libc::SIGKILL) {
        return None;
    }
    // A zombie keeps its name until it is reaped.
    exit_name(child)
}

/// `N` from `cod-exit N` (as `/proc/PID/comm` shows it, with its newline), for `N` in
/// 0..=255.
fn parse_exit_name(name: &[u8]) -> Option<i32> {
    let digits = name.strip_suffix(b"\n")?.strip_prefix(b"cod-exit ")?;
    if digits.is_empty() || digits.len() > 3 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().fold(0, |n, d| n * 10 + i32::from(d - b'0'));
    (n <= 255).then_some(n)
}

/// Reaps every child left (after [`finish_stage`] with a holder: the holder).
pub(crate) fn reap_all() {
    loop {
        match sys::wait_any() {
            Ok(_) | Err(Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

/// Forks and execs the stage's program (with `extra` descriptors from fd 4 up) and waits
/// until the exec happened; returns its pid and the errno of a failed `execve` (or 0).
fn start_program(
    p: &InitPlan<'_>,
    plan: &Plan<'_>,
    stdio: [RawFd; 3],
    extra: &[RawFd],
) -> Result<(i32, i32), Errno> {
    let (err_r, err_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let child = match sys::fork_raw() {
        Ok(0) => {
            drop(err_r);
            exec_program(p, plan, stdio, extra, err_w.as_raw_fd(), false)
        }
        Ok(pid) => pid,
        Err(e) => {
            for f in stdio {
                sys::close(f);
            }
            return Err(Errno::from_io_error(&e).unwrap_or(Errno::AGAIN));
        }
    };
    drop(err_w);
    // The program has its own copies now; ours would keep its pipes from reaching EOF.
    for f in stdio {
        sys::close(f);
    }
    let exec_errno = read_exec_errno(err_r);
    Ok((child, exec_errno))
}

/// Reads the errno a failed `execve` wrote on its close-on-exec pipe; 0 when the pipe
/// closed empty (the exec happened).
pub(crate) fn read_exec_errno(err_r: OwnedFd) -> i32 {
    let mut errno_buf = [0u8; 4];
    if read_full(&err_r, &mut errno_buf) == errno_buf.len() {
        i32::from_le_bytes(errno_buf)
    } else {
        0
    }
}

/// Reads into `buf` until it is full, the writer closed its end, or a read fails (not
/// counting interruptions); returns how many bytes came. Makes only system calls.
pub(crate) fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            Err(_) => break,
        }
    }
    got
}

/// The program child: wire up stdio, drop every privilege, install seccomp, exec; the
/// errno of what failed goes on the error pipe `err_w`. `ahead`: the process was forked
/// ahead ([`ParkedProgram`]), and has reset its signals and installed the policy already.
fn exec_program(
    p: &InitPlan<'_>,
    plan: &Plan<'_>,
    stdio: [RawFd; 3],
    extra: &[RawFd],
    err_w: RawFd,
    ahead: bool,
) -> ! {
    // Where the error pipe is: `prepare_exec` moves it to fd 3.
    let mut err_fd = err_w;
    let errno = match prepare_exec(p, plan, stdio, extra, &mut err_fd, !ahead, ahead) {
        Ok(()) => {
            // SAFETY: argv[0] points at a NUL-terminated string inside the message buffer,
            // which this process does not touch again before exec.
            let path = unsafe { CStr::from_ptr(plan.argv[0]) };
            sys::execve(path, plan.argv, plan.env)
                .raw_os_error()
                .unwrap_or(libc::ENOEXEC)
        }
        Err(e) => e.raw_os_error(),
    };
    let _ = rustix::io::write(fd(err_fd), &errno.to_le_bytes());
    sys::exit_now(EXEC_FAILED)
}

/// Makes this process the stage's program in all but its image: a session of its own,
/// stdio on 0 to 2 and the error pipe on 3 (nothing else open), the work dir as cwd, the
/// stage's rlimits, no capabilities, the program's uid, and the seccomp policy. With
/// `reset_signals`, every signal disposition is reset too (an `execve` keeps ignored
/// ones); a zygote's run keeps the interpreter's. With `seccomp_installed`, the policy is
/// in place already (a zygote's run installs it while it waits: the policy denies none of
/// the calls made here).
pub(crate) fn prepare_exec(
    p: &InitPlan<'_>,
    plan: &Plan<'_>,
    stdio: [RawFd; 3],
    extra: &[RawFd],
    err_fd: &mut RawFd,
    reset_signals: bool,
    seccomp_installed: bool,
) -> Result<(), Errno> {
    // The slot's own processes may be held to one CPU; the program gets all of the jail's
    // (should that fail, a cpuset shrunk since, it runs where the slot does).
    if let Some(cpus) = p.unpin {
        let _ = rustix::thread::sched_setaffinity(None, cpus);
    }
    if reset_signals {
        sys::reset_signals();
    } else {
        sys::unblock_signals();
    }
    rustix::process::setsid()?;
    // Move the four descriptors above any number they could collide with, then into place.
    let hi = |raw: RawFd| sys::dup_above(raw, 100);
    let (i, o, e, w) = (hi(stdio[0])?, hi(stdio[1])?, hi(stdio[2])?, hi(*err_fd)?);
    *err_fd = w;
    let mut high = [0; 2];
    for (h, &x) in high.iter_mut().zip(extra) {
        *h = hi(x)?;
    }
    sys::dup_onto(i, 0)?;
    sys::dup_onto(o, 1)?;
    sys::dup_onto(e, 2)?;
    sys::dup_onto_cloexec(w, 3)?;
    *err_fd = 3;
    // Extra descriptors for the program (a prestarted one's pipes) from fd 4 up.
    let mut next = 4;
    for &h in high.iter().take(extra.len()) {
        sys::dup_onto(h, next)?;
        next += 1;
    }
    sys::close_from(next.cast_unsigned())?;

    rustix::process::chdir(WORK_DIR_C)?;
    for (res, v) in rlimit_records(plan.rlimits) {
        let res = res.ok_or(Errno::INVAL)?;
        rustix::process::setrlimit(
            res,
            Rlimit {
                current: Some(v),
                maximum: Some(v),
            },
        )?;
    }
    sys::drop_bounding_set();
    rustix::thread::set_thread_groups(&[])?;
    let gid = rustix::fs::Gid::from_raw(SANDBOX_ID);
    let uid = rustix::fs::Uid::from_raw(SANDBOX_ID);
    rustix::thread::set_thread_res_gid(gid, gid, gid)?;
    rustix::thread::set_thread_res_uid(uid, uid, uid)?;
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        },
    )?;
    rustix::thread::clear_ambient_capability_set()?;
    if !seccomp_installed {
        p.seccomp.install()?;
    }
    Ok(())
}

/// [`WORK_DIR`] as a C string.
const WORK_DIR_C: &std::ffi::CStr = c"/box";
const _: () = assert!(WORK_DIR.len() == WORK_DIR_C.count_bytes());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_buffers_are_zeroed_writable_and_take_memory_only_where_written() {
        fn resident_kib() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        }
        let before = resident_kib();
        let mut b = InitBuffers::new().unwrap();
        assert_eq!(b.message.len(), MAX_MESSAGE);
        assert_eq!((b.argv.len(), b.env.len()), (MAX_ARGS + 1, MAX_ENV + 1));
        assert!(b.argv.iter().chain(b.env.iter()).all(|p| p.is_null()));
        // Nothing touched yet: no page of the 180 KiB is resident (other threads of the
        // test process may allocate meanwhile, hence the margin).
        assert!(
            resident_kib() < before + 64,
            "{before} -> {}",
            resident_kib()
        );
        b.message[..5].copy_from_slice(b"hello");
        b.message[MAX_MESSAGE - 1] = 1;
        assert_eq!(&b.message[..6], b"hello\0");
        assert!(b.message[5..MAX_MESSAGE - 1].iter().all(|&x| x == 0));
    }

    #[test]
    fn an_exit_status_is_read_only_from_a_whole_cod_exit_name() {
        assert_eq!(parse_exit_name(b"cod-exit 0\n"), Some(0));
        assert_eq!(parse_exit_name(b"cod-exit 44\n"), Some(44));
        assert_eq!(parse_exit_name(b"cod-exit 255\n"), Some(255));
        for other in [
            &b"cod-exit 256\n"[..],
            b"cod-exit 1000\n",
            b"cod-exit \n",
            b"cod-exit -1\n",
            b"cod-exit 3",
            b"cod-exit 3x\n",
            b"node\n",
            b"",
        ] {
            assert_eq!(
                parse_exit_name(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn plans_decode_in_place() {
        let argv = vec![
            "/usr/bin/python3".to_owned(),
            "main.py".to_owned(),
            String::new(),
        ];
        let env = vec!["HOME=/box".to_owned()];
        let msg = encode_plan(&[(Resource::Nofile, 256), (Resource::Core, 0)], &argv, &env);
        assert_eq!(msg[0], CMD_STAGE);
        let mut a = vec![std::ptr::null(); 8];
        let mut e = vec![std::ptr::null(); 8];
        let plan = decode_plan(&msg[1..], &mut a, &mut e).unwrap();
        assert_eq!(plan.argv.len(), 4);
        assert!(plan.argv[3].is_null());
        assert!(plan.env[1].is_null());
        // SAFETY: the pointers point into `msg`, alive here, at NUL-terminated strings.
        let s = |p| unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_owned();
        assert_eq!(s(plan.argv[0]), "/usr/bin/python3");
        assert_eq!(s(plan.argv[1]), "main.py");
        assert_eq!(s(plan.argv[2]), "");
        assert_eq!(s(plan.env[0]), "HOME=/box");
        assert_eq!(plan.rlimits.len(), 24);
        assert_eq!(resource(Resource::Nofile as u32), Some(Resource::Nofile));
    }

    #[test]
    fn bad_plans_are_refused() {
        let mut a = vec![std::ptr::null(); 3];
        let mut e = vec![std::ptr::null(); 3];
        // no argv
        let msg = encode_plan(&[], &[], &[]);
        assert!(decode_plan(&msg[1..], &mut a, &mut e).is_none());
        // too many arguments for the buffer
        let many: Vec<String> = (0..5).map(|i| i.to_string()).collect();
        let msg = encode_plan(&[], &many, &[]);
        assert!(decode_plan(&msg[1..], &mut a, &mut e).is_none());
        // truncated strings
        let msg = encode_plan(&[], &["/bin/true".to_owned()], &[]);
        assert!(decode_plan(&msg[1..msg.len() - 1], &mut a, &mut e).is_none());
        // truncated header
        assert!(decode_plan(&[1, 0], &mut a, &mut e).is_none());
    }
}
