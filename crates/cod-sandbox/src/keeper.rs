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

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType, recvmsg, sendmsg, socketpair,
};
use rustix::process::WaitOptions;

use crate::cgroup::SlotCgroup;
use crate::protocol::{self, Event, Failure};
use crate::sandbox::Sandbox;
use crate::spec::Layout;
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

/// A child of the keeper: a supervisor running a run, or one waiting with a prepared
/// sandbox.
struct Child {
    pid: i32,
    pidfd: OwnedFd,
}

/// A supervisor that has prepared (or is preparing) a sandbox and waits on `sock` for the
/// slot's next run.
struct Standby {
    child: Child,
    sock: OwnedFd,
}

fn fork_failure(e: &std::io::Error) -> Failure {
    Failure {
        step: "forking the run's supervisor".into(),
        errno: e.raw_os_error(),
        message: e.to_string(),
    }
}

/// Forks a process running `f` (which never returns); returns it with a pidfd.
fn fork_child(f: impl FnOnce()) -> std::io::Result<Child> {
    match sys::fork_raw()? {
        0 => {
            f();
            sys::exit_now(0)
        }
        pid => {
            let p = rustix::process::Pid::from_raw(pid).ok_or(Errno::SRCH)?;
            let pidfd = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())?;
            Ok(Child { pid, pidfd })
        }
    }
}

/// Receives run sockets from `sock`; `Ok(None)` when it closed.
fn receive_conns(sock: &OwnedFd) -> Result<Option<Vec<OwnedFd>>, Errno> {
    let mut byte = [0u8; 4];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut byte)],
            &mut anc,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) => break m,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
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
        Ok(None)
    } else {
        Ok(Some(conns))
    }
}

/// A standby supervisor's main function: prepares a sandbox with `layout`, waits for the
/// slot's next run, and supervises it.
fn standby_main(sock: OwnedFd, state: &HelperState, ctx: &SlotContext<'_>, layout: Layout) -> ! {
    let prepared = Sandbox::prepare(state, ctx, layout, &[sock.as_raw_fd()]).ok();
    match receive_conns(&sock) {
        Ok(Some(mut conns)) if !conns.is_empty() => {
            drop(sock);
            let conn = conns.swap_remove(0);
            drop(conns);
            supervisor::supervise(conn, state, ctx, prepared)
        }
        // The keeper is closing, or sent nothing usable: end the prepared sandbox.
        _ => {
            drop(prepared);
            sys::exit_now(0)
        }
    }
}

/// The keeper's main function: serves run sockets arriving on `sock` until it closes.
///
/// Between runs it keeps one supervisor waiting with a sandbox prepared with the configured
/// layout; it is prepared only while the slot is idle, so that building it never counts
/// against a run.
pub(crate) fn keeper_main(sock: OwnedFd, slot: u32, state: &HelperState) -> ! {
    let cg = setup(slot, state);
    let keeper = i32::try_from(std::process::id()).unwrap_or(0);
    let mut active: Vec<Child> = Vec::new();
    let mut standby: Option<Standby> = None;
    let mut closing = false;
    loop {
        if let (Ok(cg), true, None, Some(layout)) = (
            &cg,
            active.is_empty() && !closing,
            &standby,
            &state.config.prepared,
        ) {
            standby = spawn_standby(&sock, state, slot, cg, keeper, layout.clone());
        }
        if closing && active.is_empty() {
            break;
        }
        // Wait for a run, or for a running supervisor to finish.
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(active.len() + 1);
        if !closing {
            fds.push(PollFd::new(&sock, PollFlags::IN));
        }
        for c in &active {
            fds.push(PollFd::new(&c.pidfd, PollFlags::IN));
        }
        match poll(&mut fds, None) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(_) => break,
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        let (sock_ready, done) = if closing {
            (false, &ready[..])
        } else {
            (ready[0], &ready[1..])
        };
        // Reap finished supervisors.
        let mut i = 0;
        for &finished in done {
            if finished {
                let c = active.remove(i);
                if let Some(pid) = rustix::process::Pid::from_raw(c.pid) {
                    let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
                }
            } else {
                i += 1;
            }
        }
        if !sock_ready {
            continue;
        }
        let conns = match receive_conns(&sock) {
            Ok(Some(c)) => c,
            Ok(None) | Err(_) => {
                // The helper is closing: let the runs in flight finish, drop the standby.
                closing = true;
                standby = None;
                continue;
            }
        };
        // Runs of a slot never overlap, their supervisors included: a supervisor that sent
        // its result may still be exiting, and its CPU time must not land on the next run.
        for c in active.drain(..) {
            if let Some(pid) = rustix::process::Pid::from_raw(c.pid) {
                let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
            }
        }
        for conn in conns {
            let cg = match &cg {
                Ok(cg) => cg,
                Err(f) => {
                    refuse(conn, f.clone());
                    continue;
                }
            };
            // The prepared supervisor takes the run; if it is gone, a fresh one does.
            if let Some(sb) = standby.take() {
                let fds = [conn.as_fd()];
                let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut anc = SendAncillaryBuffer::new(&mut space);
                anc.push(SendAncillaryMessage::ScmRights(&fds));
                if sendmsg(
                    &sb.sock,
                    &[IoSlice::new(b"r")],
                    &mut anc,
                    SendFlags::NOSIGNAL,
                )
                .is_ok()
                {
                    active.push(sb.child);
                    continue;
                }
                let _ = rustix::process::pidfd_send_signal(
                    &sb.child.pidfd,
                    rustix::process::Signal::KILL,
                );
                if let Some(pid) = rustix::process::Pid::from_raw(sb.child.pid) {
                    let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
                }
            }
            let ctx = SlotContext {
                slot,
                cgroup: cg,
                keeper,
            };
            let keeper_sock = sock.as_raw_fd();
            match fork_child(|| {
                sys::close(keeper_sock);
                supervisor::supervise(conn.try_clone().expect("a descriptor"), state, &ctx, None)
            }) {
                Ok(c) => active.push(c),
                Err(e) => refuse(conn, fork_failure(&e)),
            }
        }
    }
    drop(standby);
    while let Ok(Some(_)) | Err(Errno::INTR) = rustix::process::wait(WaitOptions::empty()) {}
    sys::exit_now(0)
}

/// Forks a standby supervisor for the slot.
fn spawn_standby(
    keeper_sock: &OwnedFd,
    state: &HelperState,
    slot: u32,
    cg: &SlotCgroup,
    keeper: i32,
    layout: Layout,
) -> Option<Standby> {
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .ok()?;
    let keeper_raw = keeper_sock.as_raw_fd();
    let ours_raw = ours.as_raw_fd();
    let child = fork_child(|| {
        sys::close(keeper_raw);
        sys::close(ours_raw);
        let ctx = SlotContext {
            slot,
            cgroup: cg,
            keeper,
        };
        standby_main(
            theirs.try_clone().expect("a descriptor"),
            state,
            &ctx,
            layout.clone(),
        )
    })
    .ok()?;
    Some(Standby { child, sock: ours })
}

/// Answers a run that cannot be started with its reason.
pub(crate) fn refuse(conn: OwnedFd, f: Failure) {
    let mut s = std::os::unix::net::UnixStream::from(conn);
    let _ = s.set_write_timeout(Some(std::time::Duration::from_secs(5)));
    let _ = protocol::write_frame(&mut s, &Event::Finished(Err(f)));
}
