//! The raw system calls rustix does not wrap, one small function each.
//!
//! Every function reads `errno` immediately and returns `io::Result`. All of them are
//! async-signal-safe: they may be called between `clone` and `execve`. Nothing here
//! allocates.

use std::ffi::{CStr, c_char};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use rustix::io::Errno;

/// `clone(flags)` without a new stack: fork semantics plus namespace flags.
///
/// Returns `Ok(0)` in the child and the child's pid in the parent.
///
/// Only call this from a single-threaded process: the child starts as a copy of the calling
/// thread alone, and glibc's `fork` handlers do not run, so the child must stick to raw
/// system calls until it execs or exits.
pub(crate) fn clone_raw(flags: u64) -> io::Result<i32> {
    debug_assert_eq!(
        flags
            & (libc::CLONE_VM
                | libc::CLONE_SETTLS
                | libc::CLONE_PARENT_SETTID
                | libc::CLONE_CHILD_SETTID
                | libc::CLONE_CHILD_CLEARTID) as u64,
        0
    );
    // SAFETY: clone with a null stack pointer behaves like fork: the child continues on a
    // copy of the caller's stack. The remaining pointer arguments (parent_tid, child_tid, tls)
    // are unused because no CLONE_*SETTID/CLONE_SETTLS flag is passed; callers pass only
    // namespace flags and the exit signal, which the `debug_assert` above checks.
    let rc = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        i32::try_from(rc).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))
    }
}

/// A fork that runs no `pthread_atfork` handlers (see [`clone_raw`]).
pub(crate) fn fork_raw() -> io::Result<i32> {
    clone_raw(libc::SIGCHLD as u64)
}

/// The kernel's `struct mount_attr` (linux/mount.h).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `MOUNT_ATTR_RDONLY` from linux/mount.h.
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// `MOUNT_ATTR_NOSUID`
pub(crate) const MOUNT_ATTR_NOSUID: u64 = 0x2;
/// `MOUNT_ATTR_NODEV`
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x4;

/// `mount_setattr(dirfd, path, flags, {attr_set})` (Linux 5.12): changes only the given
/// attributes, so locked flags inherited from the host (nosuid, nodev, atime) need not be
/// repeated as a classic `MS_REMOUNT|MS_BIND` would require. `dirfd` of `None` means the
/// cwd; an empty `path` means `dirfd` itself (`AT_EMPTY_PATH`).
pub(crate) fn mount_setattr(
    dirfd: Option<BorrowedFd<'_>>,
    path: &CStr,
    recursive: bool,
    attr_set: u64,
) -> Result<(), Errno> {
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let mut flags = if recursive { libc::AT_RECURSIVE } else { 0 };
    if path.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    let dirfd = dirfd.map_or(libc::AT_FDCWD, |fd| fd.as_raw_fd());
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call, `dirfd`
    // is open (borrowed) or AT_FDCWD, and `attr` is a properly initialised `struct
    // mount_attr` whose size is passed alongside; the kernel only reads from both.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 { Err(errno()) } else { Ok(()) }
}

/// `execve(path, argv, envp)`; returns only on failure.
///
/// `argv` and `envp` must be null-terminated arrays of pointers to NUL-terminated strings
/// that stay alive for the call; the callers in `init.rs` build them before `clone`.
pub(crate) fn execve(path: &CStr, argv: &[*const c_char], envp: &[*const c_char]) -> io::Error {
    if argv.last().is_none_or(|p| !p.is_null()) || envp.last().is_none_or(|p| !p.is_null()) {
        return io::Error::from_raw_os_error(libc::EINVAL);
    }
    // SAFETY: both arrays end with a null pointer (checked above) and every other element
    // points into a CString owned by the caller's prepared plan, alive for this call.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// The calling thread's errno.
pub(crate) fn errno() -> Errno {
    Errno::from_raw_os_error(
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

/// Closes every descriptor from 3 up except those in `keep`.
pub(crate) fn close_all_but(keep: &[RawFd]) {
    let mut first: RawFd = 3;
    loop {
        let next = keep.iter().copied().filter(|&k| k >= first).min();
        let last = next.map_or(u32::MAX, |k| u32::try_from(k - 1).unwrap_or(0));
        if next != Some(first) {
            // SAFETY: close_range takes plain integers and only closes descriptors.
            unsafe { libc::syscall(libc::SYS_close_range, first.cast_unsigned(), last, 0u32) };
        }
        match next {
            Some(k) => first = k + 1,
            None => break,
        }
    }
}

/// `close_range(first, ~0, 0)`: closes every descriptor from `first` up.
pub(crate) fn close_from(first: u32) -> Result<(), Errno> {
    // SAFETY: close_range takes plain integers; closing descriptors this process does not
    // use again is the intent (the caller is about to exec).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    if rc < 0 { Err(errno()) } else { Ok(()) }
}

/// `close(fd)`, ignoring errors: for descriptors inherited across `clone` that this process
/// must not hold.
pub(crate) fn close(fd: RawFd) {
    // SAFETY: `fd` is a descriptor number owned by the supervisor's plan; in the child no
    // Rust object owns it, so closing it cannot cause a double close in this process.
    unsafe { libc::close(fd) };
}

/// `fcntl(fd, F_DUPFD_CLOEXEC, min)`.
pub(crate) fn dup_above(fd: RawFd, min: RawFd) -> Result<RawFd, Errno> {
    // SAFETY: fcntl with F_DUPFD_CLOEXEC takes plain integers.
    let rc = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if rc < 0 { Err(errno()) } else { Ok(rc) }
}

/// `dup2(old, new)`: `new` is open and inheritable afterwards.
pub(crate) fn dup_onto(old: RawFd, new: RawFd) -> Result<(), Errno> {
    // SAFETY: dup2 takes plain integers; replacing `new` is the intent.
    let rc = unsafe { libc::dup2(old, new) };
    if rc < 0 { Err(errno()) } else { Ok(()) }
}

/// `dup3(old, new, O_CLOEXEC)` onto a fixed descriptor number.
pub(crate) fn dup_onto_cloexec(old: RawFd, new: RawFd) -> Result<(), Errno> {
    // SAFETY: dup3 takes plain integers; replacing `new` is the intent.
    let rc = unsafe { libc::dup3(old, new, libc::O_CLOEXEC) };
    if rc < 0 { Err(errno()) } else { Ok(()) }
}

/// Drops every capability from the bounding set (`PR_CAPBSET_DROP` for each, up to the
/// first number the kernel does not know).
pub(crate) fn drop_bounding_set() {
    for cap in 0..64 {
        // SAFETY: prctl with PR_CAPBSET_DROP takes plain integers.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc < 0 && errno() == Errno::INVAL {
            break;
        }
    }
}

/// Resets every signal disposition to the default and unblocks all signals, so that the
/// program does not inherit the supervisor's ignored `SIGPIPE`.
pub(crate) fn reset_signals() {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: `signal` with SIG_DFL installs no handler code; invalid or reserved signal
        // numbers make it fail with EINVAL, which is ignored on purpose.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // SAFETY: `set` is a local, fully initialised by sigemptyset before use; the old-mask
    // pointer is null.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// `wait4(-1, ..)`: waits for any child; returns its pid, raw wait status and peak resident
/// memory in KiB (the largest of the child and the descendants it waited for).
pub(crate) fn wait_any() -> Result<(i32, i32, i64), Errno> {
    let mut status = 0;
    // SAFETY: `ru` is plain data the kernel fills in; zeroed is a valid value for it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers point at locals that outlive the call.
    let pid = unsafe { libc::wait4(-1, &mut status, 0, &mut ru) };
    if pid < 0 {
        Err(errno())
    } else {
        Ok((pid, status, ru.ru_maxrss))
    }
}

/// Waits until `fd` is readable (or at its end), at most `limit`; an interrupted wait goes
/// on with the time left. `Ok(false)` when the time is up.
pub(crate) fn wait_readable(
    fd: impl rustix::fd::AsFd,
    limit: std::time::Duration,
) -> Result<bool, Errno> {
    use rustix::event::{PollFd, PollFlags, poll};
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match poll(&mut fds, Some(&crate::supervisor::timespec(left))) {
            Ok(0) | Err(Errno::INTR) => {}
            Ok(_) => return Ok(true),
            Err(e) => return Err(e),
        }
    }
}

/// The fields of `/proc/PID/stat` after the command name (`state ppid ...`), if the
/// process is there. The name may hold spaces and parentheses, so they start after the
/// last `)`.
pub(crate) fn proc_stat(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.trim_start().to_owned())
}

/// Whether this process has a child other than `except` (zombies included), as
/// `/proc/thread-self/children` lists them; true if that cannot be read. In a PID
/// namespace's init after everything else was killed, false means that nothing else is
/// left: an orphan becomes the init's child before its parent can be reaped. Allocates
/// nothing.
pub(crate) fn other_children(except: i32) -> bool {
    use rustix::fs::{Mode, OFlags};
    let Ok(f) = rustix::fs::open(
        c"/proc/thread-self/children",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return true;
    };
    let mut buf = [0u8; 256];
    let n = match rustix::io::read(&f, &mut buf) {
        Ok(n) if n < buf.len() => n,
        // Many children (or unreadable): certainly others.
        _ => return true,
    };
    let mut except_digits = [0u8; 24];
    let except = crate::zygote::digits(u64::try_from(except).unwrap_or(0), &mut except_digits);
    buf[..n]
        .split(|&c| c == b' ' || c == b'\n')
        .any(|pid| !pid.is_empty() && pid != except.to_bytes())
}

/// Moves process `pid` to the `SCHED_IDLE` policy: it runs only when nothing else wants
/// the CPU. Best effort.
pub(crate) fn set_idle_priority(pid: i32) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a local that outlives the call; the rest are plain integers.
    unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            libc::c_long::from(pid),
            libc::c_long::from(libc::SCHED_IDLE),
            &raw const param,
        );
    }
}

/// The set of `signals`.
fn signal_set(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: `set` is a local, initialised by sigemptyset before sigaddset uses it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Unblocks every signal, leaving dispositions as they are.
pub(crate) fn unblock_signals() {
    set_signal_mask(&signal_set(&[]));
}

/// Blocks `signals` (adding them to the mask); returns the mask before, for
/// [`set_signal_mask`]. Blocked, they stay pending until [`wait_signal`] takes them, even
/// those whose default action is to be ignored.
pub(crate) fn block_signals(signals: &[i32]) -> libc::sigset_t {
    let set = signal_set(signals);
    // SAFETY: `set` is a valid set; `old` is a local that sigprocmask fills.
    unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        old
    }
}

/// Sets the signal mask to `mask`.
pub(crate) fn set_signal_mask(mask: &libc::sigset_t) {
    // SAFETY: `mask` is a valid set; the old-mask pointer is null.
    unsafe {
        libc::sigprocmask(libc::SIG_SETMASK, mask, std::ptr::null_mut());
    }
}

/// Waits for one of `signals` (which must be blocked) and returns it with the pid of its
/// sender; an interrupted wait goes on.
pub(crate) fn wait_signal(signals: &[i32]) -> Result<(i32, i32), Errno> {
    let set = signal_set(signals);
    // SAFETY: `set` is a valid set and `info` a local; sigwaitinfo fills `info` when it
    // succeeds, and si_pid is read only then (a signal sent by kill or by the kernel for a
    // child).
    unsafe {
        loop {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let sig = libc::sigwaitinfo(&set, &mut info);
            if sig >= 0 {
                return Ok((sig, info.si_pid()));
            }
            let e = errno();
            if e != Errno::INTR {
                return Err(e);
            }
        }
    }
}

/// Sets this process's saved user id to `uid`, keeping its real and effective ones (and so
/// its capabilities): processes of `uid` may then signal it. Only the signals it handles or
/// waits for reach a PID namespace's init from inside the namespace.
pub(crate) fn set_saved_uid(uid: u32) -> Result<(), Errno> {
    let keep: libc::c_long = -1;
    // SAFETY: setresuid takes plain integers; -1 leaves an id unchanged. The raw call
    // changes this thread only, and the init has one thread.
    let rc = unsafe { libc::syscall(libc::SYS_setresuid, keep, keep, libc::c_long::from(uid)) };
    if rc < 0 { Err(errno()) } else { Ok(()) }
}

/// The children of every thread of `pid` (from `/proc`; none if it is gone).
pub(crate) fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// `kill(-1, SIGKILL)`: from a PID namespace's init, kills every other process in it.
pub(crate) fn kill_all_but_self() -> io::Result<()> {
    // SAFETY: kill takes plain integers.
    let rc = unsafe { libc::kill(-1, libc::SIGKILL) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `_exit(code)`: ends the process without running destructors or atexit handlers, as a
/// forked child must.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, 0, prog)` for a program given as raw instructions.
///
/// The caller must have set `no_new_privs` (or hold `CAP_SYS_ADMIN`).
pub(crate) fn seccomp_install(filter: &[libc::sock_filter]) -> Result<(), Errno> {
    // Validate before calling the kernel: an empty program or one longer than BPF_MAXINSNS
    // would otherwise come back as a bare EINVAL.
    if filter.is_empty() || filter.len() > 4096 {
        return Err(Errno::INVAL);
    }
    let prog = libc::sock_fprog {
        len: u16::try_from(filter.len()).map_err(|_| Errno::INVAL)?,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `filter`, which outlives the call; the kernel copies the
    // program and does not write through the pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0u32,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc < 0 { Err(errno()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::other_children;

    #[test]
    fn other_children_sees_every_child_but_the_one_left_out() {
        let spawn = || {
            std::process::Command::new("/bin/sleep")
                .arg("60")
                .spawn()
                .expect("sleep starts")
        };
        let mut first = spawn();
        let a = i32::try_from(first.id()).expect("a pid");
        assert!(!other_children(a), "only the one left out");
        assert!(other_children(a + 1_000_000), "one that is not left out");
        let mut second = spawn();
        assert!(other_children(a), "a second child");
        second.kill().expect("killed");
        // A zombie is still a child until it is reaped.
        assert!(other_children(a), "an unreaped child");
        second.wait().expect("reaped");
        assert!(!other_children(a), "only the one left out again");
        first.kill().expect("killed");
        first.wait().expect("reaped");
        assert!(!other_children(a));
    }
}
