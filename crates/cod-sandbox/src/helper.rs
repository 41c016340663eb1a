//! The helper process: single-threaded, it receives runs on its control socket and forks one
//! supervisor per run.
//!
//! It starts with its control socket on fd 3, reads a [`JailConfig`], compiles the seccomp
//! policy, creates its cgroup instance and staging directories (removing those of dead
//! helpers), and answers `Ready` or `Failed`. When the caller closes the control socket it
//! waits for its supervisors, removes its cgroups and staging directories, and exits.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendFlags, recv, recvmsg, send,
};
use rustix::process::WaitOptions;

use crate::cgroup::CgroupTree;
use crate::client::{CONTROL_MAX, HELPER_FD, HelperReply, JailConfig};
use crate::seccomp::SeccompPolicy;
use crate::supervisor::{self, HelperState};
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
    let seccomp = SeccompPolicy::compile().map_err(|e| format!("seccomp: {e}"))?;
    let me = std::process::id();
    let cgroups = CgroupTree::create(
        config.cgroup,
        &config.cgroup_root,
        &config.cgroup_name,
        me,
        config.cpus_per_run.max(1),
    )
    .map_err(|e| {
        let mut s = e.to_string();
        if let Some(src) = std::error::Error::source(&e) {
            s.push_str(&format!(": {src}"));
        }
        s
    })?;
    let staging = staging_dir(&config.state_dir, me)?;
    Ok(HelperState {
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

/// Receives run sockets until the caller closes the control socket.
fn serve(control: &OwnedFd, state: &HelperState) {
    loop {
        let mut byte = [0u8; 1];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut anc = RecvAncillaryBuffer::new(&mut space);
        let msg = match recvmsg(
            control,
            &mut [IoSliceMut::new(&mut byte)],
            &mut anc,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(Errno::INTR) => continue,
            Err(_) => return,
        };
        let mut conns: Vec<OwnedFd> = Vec::new();
        for m in anc.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = m {
                conns.extend(fds);
            }
        }
        if msg.bytes == 0 && conns.is_empty() {
            return;
        }
        for conn in conns {
            match sys::fork_raw() {
                Ok(0) => {
                    // The supervisor needs neither the control socket nor other runs' sockets.
                    sys::close(HELPER_FD);
                    supervisor::supervise(conn, state);
                }
                // The supervisor owns the connection now (or, if fork failed, dropping it
                // tells the caller the run could not start).
                Ok(_) | Err(_) => drop(conn),
            }
        }
        // Reap supervisors that have finished.
        while let Ok(Some(_)) = rustix::process::wait(WaitOptions::NOHANG) {}
    }
}
