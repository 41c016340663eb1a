//! The seccomp policy of sandboxed programs: a deny-list compiled once with seccompiler and
//! installed right before `execve`.
//!
//! Denied calls fail with `EPERM` (a program sees an ordinary error, not a crash). `clone3`
//! fails with `ENOSYS` instead, because its flags live in a struct that BPF cannot inspect:
//! libc then falls back to `clone`, whose flags are checked. A third, tiny filter rejects the
//! x32 ABI (syscall numbers with bit 30 set), which would otherwise reach the same kernel
//! entry points under numbers the deny-list does not name; seccompiler matches exact numbers
//! only, so that guard is five hand-written instructions, checked by a test below.

use std::collections::BTreeMap;

use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

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
    /// seccompiler rejected the rules
    #[error("compiling the seccomp filter")]
    Compile(#[source] seccompiler::BackendError),
    /// seccompiler rejected a condition or rule
    #[error("building the seccomp rules")]
    Rule(#[source] seccompiler::BackendError),
}

/// The compiled filters, ready to install in the order they are stored.
#[derive(Clone, Debug)]
pub struct SeccompPolicy {
    filters: Vec<Vec<libc::sock_filter>>,
}

const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn convert(prog: seccompiler::BpfProgram) -> Vec<libc::sock_filter> {
    prog.into_iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect()
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SeccompError> {
    SeccompRule::new(conditions).map_err(SeccompError::Rule)
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(SeccompError::Rule)
}

/// The x32 guard: kill other architectures, fail x32 calls with EPERM, allow the rest.
// BPF opcodes are 16-bit values that libc declares as u32; the casts below cannot truncate.
#[allow(clippy::cast_possible_truncation)]
fn x32_guard() -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    // offsetof(struct seccomp_data, nr) = 0, offsetof(.., arch) = 4
    vec![
        libc::sock_filter {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 4,
        },
        libc::sock_filter {
            code: JEQ_K,
            jt: 1,
            jf: 0,
            k: AUDIT_ARCH_X86_64,
        },
        libc::sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_KILL_PROCESS,
        },
        libc::sock_filter {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: JSET_K,
            jt: 0,
            jf: 1,
            k: X32_SYSCALL_BIT,
        },
        libc::sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ]
}

impl SeccompPolicy {
    /// Compiles the policy for x86_64.
    pub fn compile() -> Result<SeccompPolicy, SeccompError> {
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for &(_, nr) in DENIED {
            rules.insert(nr, vec![]);
        }
        // clone(flags, ...) with any namespace flag; each rule is one flag, rules are OR'ed.
        let clone_rules = NAMESPACE_FLAGS
            .iter()
            .map(|&(_, f)| {
                let f = u64::from(f.cast_unsigned());
                rule(vec![cond(0, SeccompCmpOp::MaskedEq(f), f)?])
            })
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(libc::SYS_clone, clone_rules);
        // socket(domain, ...) and socketpair(domain, ...) for anything but AF_UNIX.
        let af_unix = u64::from(libc::AF_UNIX.cast_unsigned());
        for nr in [libc::SYS_socket, libc::SYS_socketpair] {
            rules.insert(nr, vec![rule(vec![cond(0, SeccompCmpOp::Ne, af_unix)?])?]);
        }
        let deny = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            TargetArch::x86_64,
        )
        .map_err(SeccompError::Compile)?;
        let clone3 = SeccompFilter::new(
            BTreeMap::from([(libc::SYS_clone3, vec![])]),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            TargetArch::x86_64,
        )
        .map_err(SeccompError::Compile)?;
        let deny: seccompiler::BpfProgram = deny.try_into().map_err(SeccompError::Compile)?;
        let clone3: seccompiler::BpfProgram = clone3.try_into().map_err(SeccompError::Compile)?;
        Ok(SeccompPolicy {
            filters: vec![x32_guard(), convert(clone3), convert(deny)],
        })
    }

    /// Installs every filter on the calling thread. Sets `no_new_privs` first.
    ///
    /// Async-signal-safe: no allocation, only `prctl` and `seccomp`.
    pub fn install(&self) -> Result<(), rustix::io::Errno> {
        rustix::thread::set_no_new_privs(true)?;
        for f in &self.filters {
            crate::sys::seccomp_install(f)?;
        }
        Ok(())
    }

    /// Total number of BPF instructions, for diagnostics.
    pub fn len(&self) -> usize {
        self.filters.iter().map(Vec::len).sum()
    }

    /// Whether the policy holds no instructions (never, once compiled).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
