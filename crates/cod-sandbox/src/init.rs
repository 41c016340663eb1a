//! Code that runs inside a run's namespaces: the init (pid 1 of the run's PID namespace)
//! and the program child between `fork` and `execve`.
//!
//! Everything here runs in a process made by a raw `clone` of the single-threaded supervisor,
//! so it is async-signal-safe only: raw system calls through rustix and `sys`, no
//! allocation, no locks, no panics. Failures travel to the supervisor as numbers on a pipe.
//!
//! The init builds the root filesystem, then waits for commands: for each stage it forks the
//! program, waits for it, kills whatever the program left behind (`kill(-1, SIGKILL)` from a
//! namespace's init reaches every other process in it, however it daemonised) and reaps it
//! all before reporting. When the init exits, the kernel tears the namespace down.

use std::ffi::{CString, c_char};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use rustix::io::Errno;
use rustix::process::{Resource, Rlimit, Signal, WaitOptions};
use rustix::thread::{CapabilitySet, CapabilitySets};

use crate::mounts::{MountPlan, Step};
use crate::seccomp::SeccompPolicy;
use crate::spec::{SANDBOX_ID, WORK_DIR};
use crate::sys;

/// Report kinds, init to supervisor. Each report is four little-endian 32-bit words.
pub(crate) const REPORT_READY: u32 = 1;
pub(crate) const REPORT_SETUP_FAILED: u32 = 2;
pub(crate) const REPORT_STAGE_DONE: u32 = 3;
pub(crate) const REPORT_LEN: usize = 16;

/// Command bytes, supervisor to init.
pub(crate) const CMD_GO: u8 = b'G';
pub(crate) const CMD_STAGE: u8 = b'S';

/// Exit code of a program child whose `execve` failed (the errno goes over a pipe).
const EXEC_FAILED: i32 = 127;

/// One stage's program, prepared before `clone`.
pub(crate) struct ExecPlan {
    pub(crate) path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    _env: Vec<CString>,
    env_ptrs: Vec<*const c_char>,
    rlimits: Vec<(Resource, u64)>,
    /// Init's ends of the stage's pipes, which become the program's 0, 1 and 2.
    pub(crate) stdio: [RawFd; 3],
}

impl ExecPlan {
    pub(crate) fn new(
        argv: Vec<CString>,
        env: Vec<CString>,
        rlimits: Vec<(Resource, u64)>,
        stdio: [RawFd; 3],
    ) -> Option<Self> {
        let path = argv.first()?.clone();
        let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<*const c_char> = env.iter().map(|a| a.as_ptr()).collect();
        env_ptrs.push(std::ptr::null());
        Some(ExecPlan {
            path,
            _argv: argv,
            argv_ptrs,
            _env: env,
            env_ptrs,
            rlimits,
            stdio,
        })
    }
}

/// Everything the init needs, prepared by the supervisor.
pub(crate) struct InitPlan<'a> {
    pub(crate) mounts: &'a MountPlan,
    pub(crate) stages: &'a [ExecPlan],
    pub(crate) seccomp: &'a SeccompPolicy,
    /// Init's end of the command pipe (read).
    pub(crate) cmd: RawFd,
    /// Init's end of the report pipe (write).
    pub(crate) report: RawFd,
    /// The supervisor's descriptors, which the init must not keep open.
    pub(crate) close_first: &'a [RawFd],
}

fn fd(raw: RawFd) -> BorrowedFd<'static> {
    // SAFETY: every descriptor passed here was created by the supervisor before `clone`, is
    // open in this process, and stays open until this process execs or exits.
    unsafe { BorrowedFd::borrow_raw(raw) }
}

fn report(to: RawFd, kind: u32, a: i32, b: i32, c: i32) {
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

fn read_exact(from: RawFd, buf: &mut [u8]) -> bool {
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(fd(from), &mut buf[got..]) {
            Ok(0) => return false,
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            Err(_) => return false,
        }
    }
    true
}

/// The init's main function; never returns.
pub(crate) fn init_main(p: &InitPlan<'_>) -> ! {
    for &f in p.close_first {
        sys::close(f);
    }
    // If the supervisor dies, so does the init, and with it the whole namespace.
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));

    let mut go = [0u8; 1];
    if !read_exact(p.cmd, &mut go) || go[0] != CMD_GO {
        sys::exit_now(1);
    }
    // The supervisor has moved us into the slot's cgroup; make it our cgroup root.
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
    report(p.report, REPORT_READY, 0, 0, 0);

    let mut cmd = [0u8; 2];
    while read_exact(p.cmd, &mut cmd) {
        let i = usize::from(cmd[1]);
        if cmd[0] != CMD_STAGE || i >= p.stages.len() {
            break;
        }
        let (status, exec_errno) = run_stage(p, &p.stages[i]);
        report(p.report, REPORT_STAGE_DONE, status, exec_errno, 0);
    }
    sys::exit_now(0)
}

/// Forks the stage's program, waits for it, then kills and reaps everything else.
/// Returns the program's raw wait status and the errno of a failed `execve` (or 0).
fn run_stage(p: &InitPlan<'_>, st: &ExecPlan) -> (i32, i32) {
    let Ok((err_r, err_w)) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) else {
        return (0, Errno::MFILE.raw_os_error());
    };
    let child = match sys::fork_raw() {
        Ok(0) => {
            drop(err_r);
            exec_program(p, st, &err_w)
        }
        Ok(pid) => pid,
        Err(e) => return (0, e.raw_os_error().unwrap_or(libc::EAGAIN)),
    };
    drop(err_w);
    // The program has its own copies now; ours would keep its pipes from reaching EOF.
    for &f in &st.stdio {
        sys::close(f);
    }
    let mut errno_buf = [0u8; 4];
    let exec_errno = if read_exact(err_r.as_raw_fd(), &mut errno_buf) {
        i32::from_le_bytes(errno_buf)
    } else {
        0
    };
    drop(err_r);

    let mut status = 0;
    loop {
        match rustix::process::wait(WaitOptions::empty()) {
            Ok(Some((pid, st))) if pid.as_raw_nonzero().get() == child => {
                status = st.as_raw();
                break;
            }
            Ok(_) | Err(Errno::INTR) => {}
            Err(_) => break,
        }
    }
    // Whatever the program left behind (daemons, double forks) dies now.
    let _ = sys::kill_all_but_self();
    while let Ok(Some(_)) | Err(Errno::INTR) = rustix::process::wait(WaitOptions::empty()) {}
    (status, exec_errno)
}

/// The program child: wire up stdio, drop every privilege, install seccomp, exec.
fn exec_program(p: &InitPlan<'_>, st: &ExecPlan, err_w: &OwnedFd) -> ! {
    // Where the error pipe is: `prepare_exec` moves it to fd 3.
    let mut err_fd = err_w.as_raw_fd();
    let errno = match prepare_exec(p, st, &mut err_fd) {
        Ok(()) => sys::execve(&st.path, &st.argv_ptrs, &st.env_ptrs)
            .raw_os_error()
            .unwrap_or(libc::ENOEXEC),
        Err(e) => e.raw_os_error(),
    };
    let _ = rustix::io::write(fd(err_fd), &errno.to_le_bytes());
    sys::exit_now(EXEC_FAILED)
}

fn prepare_exec(p: &InitPlan<'_>, st: &ExecPlan, err_fd: &mut RawFd) -> Result<(), Errno> {
    sys::reset_signals();
    rustix::process::setsid()?;
    // Move the four descriptors above any number they could collide with, then into place.
    let hi = |raw: RawFd| sys::dup_above(raw, 100);
    let (i, o, e, w) = (
        hi(st.stdio[0])?,
        hi(st.stdio[1])?,
        hi(st.stdio[2])?,
        hi(*err_fd)?,
    );
    *err_fd = w;
    sys::dup_onto(i, 0)?;
    sys::dup_onto(o, 1)?;
    sys::dup_onto(e, 2)?;
    sys::dup_onto_cloexec(w, 3)?;
    *err_fd = 3;
    sys::close_from(4)?;

    rustix::process::chdir(WORK_DIR_C)?;
    for &(res, v) in &st.rlimits {
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
    p.seccomp.install()?;
    Ok(())
}

/// [`WORK_DIR`] as a C string.
const WORK_DIR_C: &std::ffi::CStr = c"/box";
const _: () = assert!(WORK_DIR.len() + 1 == WORK_DIR_C.count_bytes() + 1);
