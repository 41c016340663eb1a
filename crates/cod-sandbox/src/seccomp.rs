//! The seccomp policy of sandboxed programs: a deny-list compiled once into one classic BPF
//! program and installed right before `execve` (or a zygote's run).
//!
//! Denied calls fail with `EPERM` (a program sees an ordinary error, not a crash). `clone3`
//! fails with `ENOSYS` instead, because its flags live in a struct that BPF cannot inspect:
//! libc then falls back to `clone`, whose flags are checked. Calls through the x32 ABI
//! (syscall numbers with bit 30 set) would reach the same kernel entry points under other
//! numbers, so they fail with `EPERM` too; other architectures are killed.
//!
//! The program is generated here rather than with a filter compiler because of its shape:
//! the kernel evaluates a new filter once per system call number when it is installed (to
//! cache the calls it always allows), so installing a linear list of ~70 comparisons cost
//! about 0.2 ms per run here. A binary search over the numbers makes each evaluation a
//! handful of jumps. The tests below run the program through a BPF interpreter for every
//! number, as well as install it for real.
//!
//! A zygote (see `zygote.rs`) takes the policy in two parts. It installs the *base* part,
//! everything but the calls it still makes to give each run its namespaces and mounts
//! ([`CONFINE`]: the mount calls, and `clone` with namespace flags), on itself once it is
//! started; each run's process, which inherits it, installs the short *confine* part. The
//! kernel applies every filter a process has and keeps the strictest answer, so together
//! they are the whole policy (a test checks this for every number), and each run compiles
//! only the short part.

/// System calls a program never gets, whatever their arguments.
pub const DENIED: &[(&str, libc::c_long)] = &[
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("quotactl", libc::SYS_quotactl),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("syslog", libc::SYS_syslog),
    ("vhangup", libc::SYS_vhangup),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("sethostname", libc::SYS_sethostname),
    ("setdomainname", libc::SYS_setdomainname),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("uselib", libc::SYS_uselib),
];

/// Denied calls a zygote still makes for each run (its tmpfs, `G`'s mounts), left to the
/// confine part of the policy. `clone` with namespace flags belongs with them.
pub const CONFINE: &[libc::c_long] = &[
    libc::SYS_mount,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_clone,
];

/// `clone` flags that create namespaces; `clone` with any of them is denied.
pub const NAMESPACE_FLAGS: &[(&str, libc::c_int)] = &[
    ("CLONE_NEWNS", libc::CLONE_NEWNS),
    ("CLONE_NEWCGROUP", libc::CLONE_NEWCGROUP),
    ("CLONE_NEWUTS", libc::CLONE_NEWUTS),
    ("CLONE_NEWIPC", libc::CLONE_NEWIPC),
    ("CLONE_NEWUSER", libc::CLONE_NEWUSER),
    ("CLONE_NEWPID", libc::CLONE_NEWPID),
    ("CLONE_NEWNET", libc::CLONE_NEWNET),
];

/// Why the policy did not compile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// the program would exceed the kernel's limit
    #[error("the seccomp program has {0} instructions, more than the kernel's 4096")]
    TooLong(usize),
}

/// The compiled programs, ready to install: the whole policy, and its two parts.
#[derive(Clone, Debug)]
pub struct SeccompPolicy {
    program: Vec<libc::sock_filter>,
    base: Vec<libc::sock_filter>,
    confine: Vec<libc::sock_filter>,
}

const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// BPF opcodes are 16-bit values that libc declares as u32; the casts cannot truncate.
#[allow(clippy::cast_possible_truncation)]
mod op {
    pub(super) const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    pub(super) const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    pub(super) const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    pub(super) const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
    pub(super) const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
    pub(super) const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
}

/// Offsets in `struct seccomp_data`: nr, arch, and the low word of the first argument.
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0_LO: u32 = 16;

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn ret(k: u32) -> libc::sock_filter {
    ins(op::RET_K, 0, 0, k)
}

/// What happens to one system call number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// Always fails with this return value.
    Return(u32),
    /// `clone`: fails with `EPERM` if its flags (first argument) have any of these bits.
    DenyFlags(u32),
    /// `socket`, `socketpair`: fails with `EPERM` unless the domain is this one.
    OnlyDomain(u32),
}

impl Action {
    /// The instructions that decide a call known to have this number.
    fn code(self) -> Vec<libc::sock_filter> {
        match self {
            Action::Return(k) => vec![ret(k)],
            Action::DenyFlags(mask) => vec![
                ins(op::LD_W_ABS, 0, 0, ARG0_LO),
                ins(op::JSET_K, 0, 1, mask),
                ret(EPERM),
                ret(ALLOW),
            ],
            Action::OnlyDomain(domain) => vec![
                ins(op::LD_W_ABS, 0, 0, ARG0_LO),
                ins(op::JEQ_K, 1, 0, domain),
                ret(EPERM),
                ret(ALLOW),
            ],
        }
    }
}

/// A binary search over `entries` (sorted by number, the number in the accumulator);
/// numbers not listed are allowed.
fn search(entries: &[(u32, Action)]) -> Vec<libc::sock_filter> {
    match entries {
        [] => vec![ret(ALLOW)],
        [(nr, action)] => {
            let code = action.code();
            let skip = u8::try_from(code.len()).expect("actions are a few instructions");
            let mut out = vec![ins(op::JEQ_K, 0, skip, *nr)];
            out.extend(code);
            out.push(ret(ALLOW));
            out
        }
        _ => {
            let mid = entries.len() / 2;
            let left = search(&entries[..mid]);
            let right = search(&entries[mid..]);
            // nr >= entries[mid]: jump over the left half (JA takes a 32-bit offset).
            let mut out = vec![
                ins(op::JGE_K, 0, 1, entries[mid].0),
                ins(op::JA, 0, 0, u32::try_from(left.len()).unwrap_or(u32::MAX)),
            ];
            out.extend(left);
            out.extend(right);
            out
        }
    }
}

/// The program for `entries` (sorted by number): the architecture guard, then a search.
fn program_for(entries: &[(u32, Action)]) -> Result<Vec<libc::sock_filter>, SeccompError> {
    let mut program = vec![
        // Other architectures die; x32 numbers fail.
        ins(op::LD_W_ABS, 0, 0, ARCH),
        ins(op::JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        ret(libc::SECCOMP_RET_KILL_PROCESS),
        ins(op::LD_W_ABS, 0, 0, NR),
        ins(op::JSET_K, 0, 1, X32_SYSCALL_BIT),
        ret(EPERM),
    ];
    program.extend(search(entries));
    if program.len() > 4096 {
        return Err(SeccompError::TooLong(program.len()));
    }
    Ok(program)
}

impl SeccompPolicy {
    /// Compiles the policy for x86_64.
    pub fn compile() -> Result<SeccompPolicy, SeccompError> {
        let namespaces = NAMESPACE_FLAGS
            .iter()
            .fold(0u32, |m, &(_, f)| m | f.cast_unsigned());
        let af_unix = libc::AF_UNIX.cast_unsigned();
        let mut entries: Vec<(u32, Action)> = DENIED
            .iter()
            .map(|&(_, nr)| (nr, Action::Return(EPERM)))
            .chain([
                (libc::SYS_clone3, Action::Return(ENOSYS)),
                (libc::SYS_clone, Action::DenyFlags(namespaces)),
                (libc::SYS_socket, Action::OnlyDomain(af_unix)),
                (libc::SYS_socketpair, Action::OnlyDomain(af_unix)),
            ])
            .map(|(nr, a)| (u32::try_from(nr).expect("syscall numbers are small"), a))
            .collect();
        entries.sort_by_key(|e| e.0);
        entries.dedup_by_key(|e| e.0);
        let confined = |nr: u32| CONFINE.iter().any(|&c| i64::from(nr) == c);
        let (confine, base): (Vec<_>, Vec<_>) =
            entries.iter().copied().partition(|e| confined(e.0));
        Ok(SeccompPolicy {
            program: program_for(&entries)?,
            base: program_for(&base)?,
            confine: program_for(&confine)?,
        })
    }

    /// Installs the whole policy on the calling thread. Sets `no_new_privs` first.
    ///
    /// Async-signal-safe: no allocation, only `prctl` and `seccomp`.
    pub fn install(&self) -> Result<(), rustix::io::Errno> {
        rustix::thread::set_no_new_privs(true)?;
        crate::sys::seccomp_install(&self.program)
    }

    /// Installs the base part (all but [`CONFINE`]); a zygote's, once. Sets
    /// `no_new_privs` first.
    pub(crate) fn install_base(&self) -> Result<(), rustix::io::Errno> {
        rustix::thread::set_no_new_privs(true)?;
        crate::sys::seccomp_install(&self.base)
    }

    /// Installs the confine part, which completes the base part a process already has.
    ///
    /// Async-signal-safe: no allocation, only `seccomp`.
    pub(crate) fn install_confine(&self) -> Result<(), rustix::io::Errno> {
        crate::sys::seccomp_install(&self.confine)
    }

    /// Number of BPF instructions, for diagnostics.
    pub fn len(&self) -> usize {
        self.program.len()
    }

    /// Whether the policy holds no instructions (never, once compiled).
    pub fn is_empty(&self) -> bool {
        self.program.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a fresh thread with the policy installed (filters are per thread), and
    /// returns what it returned.
    fn under_policy<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let policy = SeccompPolicy::compile().expect("policy compiles");
        std::thread::spawn(move || {
            policy.install().expect("filters install");
            f()
        })
        .join()
        .expect("probe thread did not panic")
    }

    fn errno_of(rc: libc::c_long) -> i32 {
        if rc < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        }
    }

    /// Runs `prog` as the kernel would on a call with number `nr`, architecture `arch` and
    /// first argument `arg0`; returns the action.
    fn evaluate(prog: &[libc::sock_filter], nr: u32, arch: u32, arg0: u64) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        data[16..24].copy_from_slice(&arg0.to_le_bytes());
        let (mut pc, mut acc) = (0usize, 0u32);
        for _ in 0..10_000 {
            let i = prog[pc];
            pc += 1;
            match i.code {
                op::LD_W_ABS => {
                    let at = i.k as usize;
                    acc = u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
                }
                op::RET_K => return i.k,
                op::JA => pc += i.k as usize,
                op::JEQ_K | op::JGE_K | op::JSET_K => {
                    let taken = match i.code {
                        op::JEQ_K => acc == i.k,
                        op::JGE_K => acc >= i.k,
                        _ => acc & i.k != 0,
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
        panic!("the program did not end");
    }

    #[test]
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // syscall numbers, flags
    fn every_number_gets_the_listed_action() {
        let p = SeccompPolicy::compile().unwrap();
        let denied: Vec<u32> = DENIED.iter().map(|&(_, nr)| nr as u32).collect();
        for nr in 0..1024u32 {
            let got = evaluate(&p.program, nr, AUDIT_ARCH_X86_64, 0);
            let want = if denied.contains(&nr) {
                EPERM
            } else if nr == libc::SYS_clone3 as u32 {
                ENOSYS
            } else if nr == libc::SYS_socket as u32 || nr == libc::SYS_socketpair as u32 {
                EPERM // domain 0 is not AF_UNIX
            } else {
                ALLOW
            };
            assert_eq!(got, want, "syscall {nr}");
        }
        let clone = libc::SYS_clone as u32;
        assert_eq!(
            evaluate(&p.program, clone, AUDIT_ARCH_X86_64, libc::SIGCHLD as u64),
            ALLOW
        );
        for &(name, flag) in NAMESPACE_FLAGS {
            let flags = (flag | libc::SIGCHLD) as u64;
            assert_eq!(
                evaluate(&p.program, clone, AUDIT_ARCH_X86_64, flags),
                EPERM,
                "{name}"
            );
        }
        let socket = libc::SYS_socket as u32;
        assert_eq!(
            evaluate(&p.program, socket, AUDIT_ARCH_X86_64, libc::AF_UNIX as u64),
            ALLOW
        );
        assert_eq!(
            evaluate(&p.program, socket, AUDIT_ARCH_X86_64, libc::AF_INET6 as u64),
            EPERM
        );
        // x32 numbers and foreign architectures.
        assert_eq!(
            evaluate(&p.program, X32_SYSCALL_BIT | 39, AUDIT_ARCH_X86_64, 0),
            EPERM
        );
        assert_eq!(
            evaluate(&p.program, 39, 0x4000_0003, 0),
            libc::SECCOMP_RET_KILL_PROCESS
        );
    }

    /// What the kernel does with a call that two filters answered `a` and `b`: the answer
    /// whose action comes first (actions compared as signed numbers, kill first).
    fn strictest(a: u32, b: u32) -> u32 {
        let action = |r: u32| (r & libc::SECCOMP_RET_ACTION_FULL).cast_signed();
        if action(b) < action(a) { b } else { a }
    }

    #[test]
    #[allow(clippy::cast_sign_loss)] // flags and domains
    fn base_and_confine_together_are_the_whole_policy() {
        let p = SeccompPolicy::compile().unwrap();
        let args: Vec<u64> = NAMESPACE_FLAGS
            .iter()
            .map(|&(_, f)| (f | libc::SIGCHLD) as u64)
            .chain([0, libc::SIGCHLD as u64])
            .chain(
                [
                    libc::AF_UNIX,
                    libc::AF_INET,
                    libc::AF_INET6,
                    libc::AF_NETLINK,
                ]
                .map(|d| d as u64),
            )
            .collect();
        let arches = [AUDIT_ARCH_X86_64, 0x4000_0003];
        for nr in (0..600).chain((0..600).map(|n| n | X32_SYSCALL_BIT)) {
            for &arch in &arches {
                for &arg in &args {
                    let whole = evaluate(&p.program, nr, arch, arg);
                    let split = strictest(
                        evaluate(&p.confine, nr, arch, arg),
                        evaluate(&p.base, nr, arch, arg),
                    );
                    assert_eq!(whole, split, "nr {nr} arch {arch:#x} arg {arg:#x}");
                }
            }
        }
        // The base part lets a zygote make its runs' namespaces and mounts; the run's part
        // is a few instructions.
        for nr in [libc::SYS_mount, libc::SYS_fsopen, libc::SYS_move_mount] {
            let nr = u32::try_from(nr).unwrap();
            assert_eq!(evaluate(&p.base, nr, AUDIT_ARCH_X86_64, 0), ALLOW);
            assert_eq!(evaluate(&p.confine, nr, AUDIT_ARCH_X86_64, 0), EPERM);
        }
        let ns = (libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWIPC) as u64;
        let clone = u32::try_from(libc::SYS_clone).unwrap();
        assert_eq!(evaluate(&p.base, clone, AUDIT_ARCH_X86_64, ns), ALLOW);
        assert!(
            p.confine.len() * 4 < p.program.len(),
            "{} of {}",
            p.confine.len(),
            p.program.len()
        );
    }

    #[test]
    fn the_two_parts_installed_deny_what_the_whole_denies() {
        let policy = SeccompPolicy::compile().expect("policy compiles");
        let (inet, user_ns, forked) = std::thread::spawn(move || {
            policy.install_base().expect("the base part installs");
            policy.install_confine().expect("the confine part installs");
            // SAFETY: socket and unshare take plain integers; a socket that opens is
            // closed, and an unshare that succeeds changes only this thread.
            let inet = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            let inet = errno_of(inet.into());
            // SAFETY: as above.
            let user_ns = errno_of(unsafe { libc::unshare(libc::CLONE_NEWUSER) }.into());
            // SAFETY: the child only calls _exit.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: in the forked child.
                unsafe { libc::_exit(0) };
            }
            if pid > 0 {
                // SAFETY: reaping our own child.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            }
            (inet, user_ns, pid > 0)
        })
        .join()
        .expect("probe thread did not panic");
        assert_eq!(inet, libc::EPERM);
        assert_eq!(user_ns, libc::EPERM);
        assert!(forked, "fork must keep working");
    }

    #[test]
    fn policy_is_small() {
        let p = SeccompPolicy::compile().unwrap();
        assert!(!p.is_empty());
        assert!(p.len() < 400, "{} instructions", p.len());
    }

    #[test]
    fn inet_socket_is_eperm_unix_socket_allowed() {
        let (inet, unix) = under_policy(|| {
            // SAFETY: socket takes plain integers; the returned descriptor is closed below.
            let inet = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            let inet_errno = errno_of(inet.into());
            // SAFETY: as above.
            let unix = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
            if unix >= 0 {
                // SAFETY: `unix` is a descriptor this thread just opened.
                unsafe { libc::close(unix) };
            }
            (inet_errno, unix >= 0)
        });
        assert_eq!(inet, libc::EPERM);
        assert!(unix, "AF_UNIX sockets stay allowed");
    }

    #[test]
    fn new_user_namespace_is_eperm() {
        // unshare(CLONE_NEWUSER) succeeds for any process without the filter, so EPERM here
        // can only come from it.
        let e = under_policy(|| {
            // SAFETY: unshare takes a plain integer; on success only this thread's view
            // would change, and the filter is expected to prevent that.
            errno_of(unsafe { libc::unshare(libc::CLONE_NEWUSER) }.into())
        });
        assert_eq!(e, libc::EPERM);
    }

    #[test]
    fn keyctl_is_eperm() {
        // keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0) normally succeeds.
        let e = under_policy(|| {
            // SAFETY: the arguments are plain integers.
            errno_of(unsafe { libc::syscall(libc::SYS_keyctl, 0, -3, 0) })
        });
        assert_eq!(e, libc::EPERM);
    }

    #[test]
    fn clone3_is_enosys_and_x32_is_eperm() {
        let (c3, x32) = under_policy(|| {
            // SAFETY: clone3 with a null args pointer would fail with EFAULT if it reached the
            // kernel; the filter answers first.
            let c3 = errno_of(unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) });
            // The kernel itself answers ENOSYS to x32 numbers when x32 is disabled, so EPERM
            // shows the guard fired.
            // SAFETY: getpid through the x32 numbering takes no arguments.
            let x32 = errno_of(unsafe {
                libc::syscall(libc::c_long::from(X32_SYSCALL_BIT.cast_signed()) | libc::SYS_getpid)
            });
            (c3, x32)
        });
        assert_eq!(c3, libc::ENOSYS);
        assert_eq!(x32, libc::EPERM);
    }

    #[test]
    fn plain_clone_is_allowed_namespaced_clone_is_not() {
        let (plain, ns) = under_policy(|| {
            // A plain fork through the libc wrapper (clone3 → ENOSYS → clone fallback).
            // SAFETY: the child only calls _exit.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: in the forked child.
                unsafe { libc::_exit(0) };
            }
            if pid > 0 {
                // SAFETY: reaping our own child.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            }
            // SAFETY: a clone with CLONE_NEWNS would fork; the filter is expected to deny it,
            // and should it not, the child exits at once.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_clone,
                    libc::CLONE_NEWNS | libc::SIGCHLD,
                    0usize,
                    0usize,
                    0usize,
                    0usize,
                )
            };
            if rc == 0 {
                // SAFETY: in the (unexpected) child.
                unsafe { libc::_exit(0) };
            }
            (pid > 0, errno_of(rc))
        });
        assert!(plain, "fork must keep working");
        assert_eq!(ns, libc::EPERM);
    }
}
