//! The helper process: single-threaded, it receives runs on its control socket and forks one
//! supervisor per run.
//!
//! It starts with its control socket on fd 3, reads a [`JailConfig`], compiles the seccomp
//! policy, creates its cgroup instance and staging directories (removing those of dead
//! helpers), and answers `Ready` or `Failed`. When the caller closes the control socket it
//! waits for its supervisors, removes its cgroups and staging directories, and exits.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType, recv, recvmsg, send, sendmsg,
    socketpair,
};
use rustix::process::WaitOptions;

use crate::cgroup::CgroupTree;
use crate::client::{CONTROL_MAX, CONTROL_WARM, HELPER_FD, HelperReply, JailConfig, MAX_WARM};
use crate::keeper;
use crate::protocol::Failure;
use crate::seccomp::SeccompPolicy;
use crate::supervisor::HelperState;
use crate::sys;

const STAGING_PREFIX: &str = "cod-jail-";

/// Runs the helper on the control socket at fd 3. Call it from a fresh process before any
/// thread is started; it never returns.
pub fn helper_main() -> ! {
    // The socket must be a SEQPACKET socket handed over by `Jail::spawn`.
    if rustix::io::fcntl_getfd(
        // SAFETY: fd 3 is checked to be open by fcntl; no Rust object owns it yet.
        unsafe { rustix::fd::BorrowedFd::borrow_raw(HELPER_FD) },
    )
    .is_err()
    {
        eprintln!(
            "cod sandbox helper: no control socket on fd {HELPER_FD}; it is started by cod itself"
        );
        sys::exit_now(2);
    }
    // SAFETY: fd 3 is open (checked above), was given to this process by its parent for this
    // purpose, and nothing else in the process owns it.
    let control = unsafe { OwnedFd::from_raw_fd(HELPER_FD) };
    let _ = rustix::io::fcntl_setfd(&control, rustix::io::FdFlags::CLOEXEC);

    let mut buf = vec![0u8; CONTROL_MAX];
    let config: JailConfig = match recv(&control, &mut buf, RecvFlags::empty()) {
        Ok((n, _)) if n > 0 => match postcard::from_bytes(&buf[..n]) {
            Ok(c) => c,
            Err(e) => reply_and_exit(&control, format!("malformed configuration: {e}")),
        },
        _ => sys::exit_now(0),
    };
    let state = match start(config) {
        Ok(s) => s,
        Err(why) => reply_and_exit(&control, why),
    };
    let ready = HelperReply::Ready {
        cgroup: state.cgroups.mode(),
    };
    let msg = postcard::to_stdvec(&ready).expect("the reply serializes");
    if send(&control, &msg, SendFlags::NOSIGNAL).is_err() {
        cleanup(&state);
        sys::exit_now(0);
    }

    serve(&control, &state);
    drop(control);
    // Wait for the supervisors still running, then remove what this helper created.
    while let Ok(Some(_)) | Err(Errno::INTR) = rustix::process::wait(WaitOptions::empty()) {}
    cleanup(&state);
    sys::exit_now(0)
}

fn reply_and_exit(control: &OwnedFd, why: String) -> ! {
    let msg = postcard::to_stdvec(&HelperReply::Failed(why)).expect("the reply serializes");
    let _ = send(control, &msg, SendFlags::NOSIGNAL);
    sys::exit_now(1)
}

fn start(config: JailConfig) -> Result<HelperState, String> {
    if config.warm.len() > MAX_WARM {
        return Err(format!(
            "{} warm runtimes configured, at most {MAX_WARM}",
            config.warm.len()
        ));
    }
    let seccomp = SeccompPolicy::compile().map_err(|e| format!("seccomp: {e}"))?;
    let me = std::process::id();
    let cgroups = CgroupTree::create(
        config.cgroup,
        &config.cgroup_root,
        &config.cgroup_name,
        me,
        config.cpus_per_run,
    )
    .map_err(|e| {
        let mut s = e.to_string();
        if let Some(src) = std::error::Error::source(&e) {
            s.push_str(&format!(": {src}"));
        }
        s
    })?;
    let staging = staging_dir(&config.state_dir, me)?;
    let cpus = rustix::thread::sched_getaffinity(None)
        .map_err(|e| format!("reading the CPUs this process may use: {e}"))?;
    Ok(HelperState {
        cpus,
        staging_root: staging.join("root"),
        staging_scratch: staging.join("scratch"),
        config,
        cgroups,
        seccomp,
    })
}

/// Creates `<state_dir>/cod-jail-<pid>/{root,scratch}` after removing those of dead helpers.
fn staging_dir(state_dir: &Path, me: u32) -> Result<PathBuf, String> {
    if let Ok(entries) = std::fs::read_dir(state_dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(STAGING_PREFIX))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me || !Path::new("/proc").join(pid.to_string()).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = state_dir.join(format!("{STAGING_PREFIX}{me}"));
    for d in [dir.clone(), dir.join("root"), dir.join("scratch")] {
        std::fs::create_dir(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
    Ok(dir)
}

fn cleanup(state: &HelperState) {
    let _ = state.cgroups.remove();
    if let Some(dir) = state.staging_root.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A slot's keeper, as the helper sees it.
struct Keeper {
    pid: i32,
    sock: OwnedFd,
}

/// Forks the keeper of `slot`. `others` are the helper's sockets to the other keepers, which
/// the new keeper must not hold (a copy would keep their keepers from seeing the helper
/// close them).
fn spawn_keeper(slot: u32, state: &HelperState, others: &[RawFd]) -> Result<Keeper, Failure> {
    let fail = |step: &str, e: Errno| Failure {
        step: step.to_owned(),
        errno: Some(e.raw_os_error()),
        message: std::io::Error::from(e).to_string(),
    };
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| fail("creating the keeper's socket", e))?;
    match sys::fork_raw() {
        Ok(0) => {
            // The keeper needs neither the control socket nor the other keepers' sockets
            // (all close-on-exec, but a keeper never execs).
            sys::close(HELPER_FD);
            for &fd in others {
                sys::close(fd);
            }
            drop(ours);
            keeper::keeper_main(theirs, slot, state)
        }
        Ok(pid) => Ok(Keeper { pid, sock: ours }),
        Err(e) => Err(Failure {
            step: "forking the slot's keeper".into(),
            errno: e.raw_os_error(),
            message: e.to_string(),
        }),
    }
}

/// Hands `conn` to the keeper of `slot`, starting (or restarting) it as needed.
fn hand_over(keepers: &mut [Option<Keeper>], slot: u32, conn: OwnedFd, state: &HelperState) {
    let sent = to_keeper(keepers, slot, state, |sock| {
        let fds = [conn.as_fd()];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut anc = SendAncillaryBuffer::new(&mut space);
        anc.push(SendAncillaryMessage::ScmRights(&fds));
        sendmsg(sock, &[IoSlice::new(b"r")], &mut anc, SendFlags::NOSIGNAL)
    });
    if let Err(f) = sent {
        keeper::refuse(conn, f);
    }
}

/// Gives the keeper of `slot` its warm mask, starting the keeper if needed (so that its
/// runtimes warm up before its first run).
fn set_warm(keepers: &mut [Option<Keeper>], slot: u32, mask: u32, state: &HelperState) {
    let mut msg = [0u8; 5];
    msg[0] = b'w';
    msg[1..].copy_from_slice(&mask.to_le_bytes());
    // A keeper that cannot be started is reported by the slot's next run.
    let _ = to_keeper(keepers, slot, state, |sock| {
        send(sock, &msg, SendFlags::NOSIGNAL)
    });
}

/// Sends to the keeper of `slot` with `send`, starting it if needed. One retry: a keeper
/// that could not be reached (killed by an operator, say) is killed, reaped and replaced.
fn to_keeper(
    keepers: &mut [Option<Keeper>],
    slot: u32,
    state: &HelperState,
    mut send: impl FnMut(&OwnedFd) -> rustix::io::Result<usize>,
) -> Result<(), Failure> {
    let others: Vec<RawFd> = keepers
        .iter()
        .flatten()
        .map(|k| k.sock.as_raw_fd())
        .collect();
    let Some(entry) = usize::try_from(slot).ok().and_then(|i| keepers.get_mut(i)) else {
        return Err(Failure {
            step: "validating the run".into(),
            errno: Some(libc::EINVAL),
            message: format!("slot {slot} is not below {}", state.config.slots),
        });
    };
    for _ in 0..2 {
        if entry.is_none() {
            *entry = Some(spawn_keeper(slot, state, &others)?);
        }
        let k = entry.as_ref().expect("set above");
        if send(&k.sock).is_ok() {
            return Ok(());
        }
        if let Some(pid) = entry
            .take()
            .and_then(|k| rustix::process::Pid::from_raw(k.pid))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
        }
    }
    Err(Failure {
        step: "handing the run to the slot's keeper".into(),
        errno: None,
        message: "the keeper could not be reached".into(),
    })
}

/// Receives control messages until the caller closes the control socket. Each message is
/// three little-endian words, kind, slot and argument: a run (its socket attached) or a
/// slot's warm mask.
fn serve(control: &OwnedFd, state: &HelperState) {
    let slots = usize::try_from(state.config.slots).unwrap_or(0);
    let mut keepers: Vec<Option<Keeper>> = (0..slots).map(|_| None).collect();
    loop {
        let mut words = [0u8; 12];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut anc = RecvAncillaryBuffer::new(&mut space);
        let msg = match recvmsg(
            control,
            &mut [IoSliceMut::new(&mut words)],
            &mut anc,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(Errno::INTR) => continue,
            Err(_) => break,
        };
        let mut conns: Vec<OwnedFd> = Vec::new();
        for m in anc.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = m {
                conns.extend(fds);
            }
        }
        if msg.bytes == 0 && conns.is_empty() {
            break;
        }
        let word =
            |i: usize| u32::from_le_bytes([words[i], words[i + 1], words[i + 2], words[i + 3]]);
        let (kind, slot, arg) = (word(0), word(4), word(8));
        if kind == CONTROL_WARM && conns.is_empty() {
            set_warm(&mut keepers, slot, arg, state);
        } else {
            for conn in conns {
                hand_over(&mut keepers, slot, conn, state);
            }
        }
        // Reap keepers that died; they are restarted on their slot's next run.
        while let Ok(Some((pid, _))) = rustix::process::wait(WaitOptions::NOHANG) {
            for k in keepers.iter_mut() {
                if k.as_ref()
                    .is_some_and(|k| k.pid == pid.as_raw_nonzero().get())
                {
                    *k = None;
                }
            }
        }
    }
    // Closing the keepers' sockets tells them to finish their runs and exit.
    keepers.clear();
}
