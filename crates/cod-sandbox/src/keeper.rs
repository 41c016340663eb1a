//! The keeper of a slot: a process forked once per slot by the helper that moves itself into
//! the slot's cgroup and a network namespace of its own, then forks one supervisor per run of
//! that slot.
//!
//! Everything a keeper forks is born in the slot's cgroup and network namespace, so no task
//! is migrated between cgroups per run (on cgroup v1 a migration waits for an RCU grace
//! period: 1 to 15 ms measured here) and no network namespace is created per run (half a
//! millisecond). Runs of a slot never overlap, and a run leaves nothing in the network
//! namespace: its only interface is a loopback that is down, its sockets close when its
//! processes die, and changing its settings needs capabilities the program never has.
//!
//! The run's init (and so every process of the run) gets `oom_score_adj` +1000, so that the
//! OOM killer of the slot's memory cgroup picks the run's own processes, never the keeper or
//! a supervisor (which also try -1000 for themselves).

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;

use rustix::io::Errno;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
use rustix::process::WaitOptions;

use crate::cgroup::SlotCgroup;
use crate::protocol::{self, Event, Failure};
use crate::supervisor::{self, HelperState, SlotContext};
use crate::sys;

/// Why a keeper cannot run its slot.
fn setup(slot: u32, state: &HelperState) -> Result<SlotCgroup, Failure> {
    let fail = |step: &str, e: &dyn std::fmt::Display| Failure {
        step: format!("{step} (slot {slot})"),
        errno: None,
        message: e.to_string(),
    };
    let cg = state
        .cgroups
        .slot(slot)
        .map_err(|e| fail("creating the slot's cgroup", &e))?;
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    cg.attach(me)
        .map_err(|e| fail("moving the slot's keeper into its cgroup", &e))?;
    // Best effort: lowering needs CAP_SYS_RESOURCE, which containers often drop. The run's
    // processes get +1000 (which needs nothing), so the OOM killer picks them first anyway.
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    // SAFETY: only CLONE_NEWNET is unshared; it does not touch the descriptor table (the
    // hazard `unshare_unsafe` documents is CLONE_FILES) and this process has one thread.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }.map_err(
        |e| {
            fail(
                "creating the slot's network namespace",
                &std::io::Error::from(e),
            )
        },
    )?;
    Ok(cg)
}

/// The keeper's main function: serves run sockets arriving on `sock` until it closes.
pub(crate) fn keeper_main(sock: OwnedFd, slot: u32, state: &HelperState) -> ! {
    let cg = setup(slot, state);
    let keeper = i32::try_from(std::process::id()).unwrap_or(0);
    loop {
        let mut byte = [0u8; 1];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut anc = RecvAncillaryBuffer::new(&mut space);
        let msg = match recvmsg(
            &sock,
            &mut [IoSliceMut::new(&mut byte)],
            &mut anc,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(Errno::INTR) => continue,
            Err(_) => break,
        };
        let conns: Vec<OwnedFd> = anc
            .drain()
            .filter_map(|m| match m {
                RecvAncillaryMessage::ScmRights(fds) => Some(fds.collect::<Vec<_>>()),
                _ => None,
            })
            .flatten()
            .collect();
        if msg.bytes == 0 && conns.is_empty() {
            break;
        }
        for conn in conns {
            let cg = match &cg {
                Ok(cg) => cg,
                Err(f) => {
                    refuse(conn, f.clone());
                    continue;
                }
            };
            match sys::fork_raw() {
                Ok(0) => {
                    drop(sock);
                    let ctx = SlotContext {
                        slot,
                        cgroup: cg,
                        keeper,
                    };
                    supervisor::supervise(conn, state, &ctx);
                }
                Ok(_) => drop(conn),
                Err(e) => refuse(
                    conn,
                    Failure {
                        step: "forking the run's supervisor".into(),
                        errno: e.raw_os_error(),
                        message: e.to_string(),
                    },
                ),
            }
        }
        while let Ok(Some(_)) = rustix::process::wait(WaitOptions::NOHANG) {}
    }
    // The helper is closing: let the runs in flight finish.
    while let Ok(Some(_)) | Err(Errno::INTR) = rustix::process::wait(WaitOptions::empty()) {}
    sys::exit_now(0)
}

/// Answers a run that cannot be started with its reason.
pub(crate) fn refuse(conn: OwnedFd, f: Failure) {
    let mut s = std::os::unix::net::UnixStream::from(conn);
    let _ = s.set_write_timeout(Some(std::time::Duration::from_secs(5)));
    let _ = protocol::write_frame(&mut s, &Event::Finished(Err(f)));
}
