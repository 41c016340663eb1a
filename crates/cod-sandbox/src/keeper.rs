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
//!
//! A keeper also keeps the slot's warm runtimes (see `zygote.rs`): the caller sets which
//! ones with a mask, and the keeper starts the missing ones while the slot is idle, replaces
//! one that dies, and ends one that a run left in doubt. Each run's supervisor gets the
//! ready zygotes' channels and uses one if the run's single stage asks for its runtime; its
//! exit code tells the keeper which one it used and how that went.

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
use crate::client::MAX_WARM;
use crate::init;
use crate::protocol::{self, Event, Failure};
use crate::sandbox::{Sandbox, ZygoteHandle, read_report};
use crate::spec::Layout;
use crate::supervisor::{self, HelperState, SlotContext};
use crate::sys;
use crate::zygote;

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
    // Opened once here, shared by every supervisor this keeper forks.
    cg.open_controls()
        .map_err(|e| fail("opening the slot's cgroup files", &e))?;
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

/// Supervisor exit codes: a run that used warm runtime `i` ends with `EXIT_WARM + i`, or
/// with `EXIT_WARM_DOUBT + i` if the zygote misbehaved (its keeper then replaces it).
pub(crate) const EXIT_WARM: i32 = 10;
pub(crate) const EXIT_WARM_DOUBT: i32 = 40;
/// A cold run of runtime `i`, which is started ahead (not a zygote) and was not: the
/// slot's next prepared sandbox should start `i`.
pub(crate) const EXIT_COLD_WANTED: i32 = 70;

/// A child of the keeper: a supervisor running a run, or one waiting with a prepared
/// sandbox.
struct Child {
    pid: i32,
    pidfd: OwnedFd,
}

impl Child {
    /// Waits for the child; returns its exit code (`None` if a signal ended it).
    fn reap(self) -> Option<i32> {
        let pid = rustix::process::Pid::from_raw(self.pid)?;
        loop {
            match rustix::process::waitpid(Some(pid), WaitOptions::empty()) {
                Ok(Some((_, st))) => return st.exit_status(),
                Err(Errno::INTR) => {}
                _ => return None,
            }
        }
    }
}

/// A supervisor that has prepared (or is preparing) a sandbox and waits on `sock` for the
/// slot's next run.
struct Standby {
    child: Child,
    sock: OwnedFd,
    /// The runtime it started ahead, if any.
    prestart: Option<usize>,
}

/// A warm runtime of the slot.
struct Zygote {
    sandbox: Sandbox,
    ready: bool,
    /// Private resident bytes once ready.
    idle_memory: u64,
}

impl Zygote {
    /// A handle for a run's supervisor, with descriptors of its own.
    fn handle(&self, index: usize) -> Option<ZygoteHandle> {
        Some(ZygoteHandle {
            index: u32::try_from(index).ok()?,
            pid: self.sandbox.init.pid(),
            cmd: self.sandbox.cmd.try_clone().ok()?,
            report: self.sandbox.report.try_clone().ok()?,
            pidfd: self.sandbox.init.pidfd.try_clone().ok()?,
            idle_memory: self.idle_memory,
        })
    }
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

/// A message from the helper (or the keeper, to a standby): its bytes and descriptors.
struct Message {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// Receives one message from `sock`; `Ok(None)` when it closed.
fn receive(sock: &OwnedFd) -> Result<Option<Message>, Errno> {
    let mut buf = [0u8; 512];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1 + 3 * MAX_WARM))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut buf)],
            &mut anc,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) => break m,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    };
    let fds: Vec<OwnedFd> = anc
        .drain()
        .filter_map(|m| match m {
            RecvAncillaryMessage::ScmRights(fds) => Some(fds.collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    if msg.bytes == 0 && fds.is_empty() {
        Ok(None)
    } else {
        Ok(Some(Message {
            bytes: buf[..msg.bytes].to_vec(),
            fds,
        }))
    }
}

/// Sends a run to a standby: `r`, the number of zygote pids (u32) and the pids (i32), then
/// per ready zygote its index (u32), pid (i32) and idle memory (u64); the run's socket then
/// each ready zygote's cmd, report and pidfd attached.
fn send_run(
    sock: &OwnedFd,
    conn: &OwnedFd,
    zygotes: &[ZygoteHandle],
    pids: &[i32],
) -> Result<(), Errno> {
    let mut bytes = vec![b'r'];
    bytes.extend_from_slice(&u32::try_from(pids.len()).unwrap_or(0).to_le_bytes());
    for p in pids {
        bytes.extend_from_slice(&p.to_le_bytes());
    }
    let mut fds = vec![conn.as_fd()];
    for z in zygotes {
        bytes.extend_from_slice(&z.index.to_le_bytes());
        bytes.extend_from_slice(&z.pid.to_le_bytes());
        bytes.extend_from_slice(&z.idle_memory.to_le_bytes());
        fds.extend([z.cmd.as_fd(), z.report.as_fd(), z.pidfd.as_fd()]);
    }
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1 + 3 * MAX_WARM))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    if !anc.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(Errno::NOBUFS);
    }
    sendmsg(sock, &[IoSlice::new(&bytes)], &mut anc, SendFlags::NOSIGNAL)?;
    Ok(())
}

/// Decodes a run sent by [`send_run`]: the run's socket, the ready zygotes and the pids of
/// all zygotes.
fn decode_run(msg: Message) -> Option<(OwnedFd, Vec<ZygoteHandle>, Vec<i32>)> {
    let (&kind, mut rest) = msg.bytes.split_first()?;
    if kind != b'r' {
        return None;
    }
    let word = |b: &[u8]| <[u8; 4]>::try_from(b.get(..4)?).ok();
    let n = usize::try_from(u32::from_le_bytes(word(rest)?)).ok()?;
    rest = &rest[4..];
    let mut pids = Vec::with_capacity(n.min(MAX_WARM));
    for _ in 0..n {
        pids.push(i32::from_le_bytes(word(rest)?));
        rest = &rest[4..];
    }
    let mut fds = msg.fds.into_iter();
    let conn = fds.next()?;
    let mut zygotes = Vec::new();
    while rest.len() >= 16 {
        let w = |i: usize| [rest[i], rest[i + 1], rest[i + 2], rest[i + 3]];
        let index = u32::from_le_bytes(w(0));
        let pid = i32::from_le_bytes(w(4));
        let mut m = [0u8; 8];
        m.copy_from_slice(&rest[8..16]);
        rest = &rest[16..];
        let (cmd, report, pidfd) = (fds.next()?, fds.next()?, fds.next()?);
        zygotes.push(ZygoteHandle {
            index,
            pid,
            cmd,
            report,
            pidfd,
            idle_memory: u64::from_le_bytes(m),
        });
    }
    Some((conn, zygotes, pids))
}

/// A standby supervisor's main function: prepares a sandbox with `layout` (if any), waits
/// for the slot's next run, and supervises it. A run that a zygote served leaves nothing to
/// clean up, so the supervisor then tells the keeper (`d` and the code) and waits for the
/// next run, its prepared sandbox still unused; after any other run it exits.
fn standby_main(
    sock: OwnedFd,
    state: &HelperState,
    ctx: &SlotContext<'_>,
    layout: Option<Layout>,
    prestart: Option<usize>,
) -> ! {
    let mut prepared =
        layout.and_then(|l| Sandbox::prepare(state, ctx, l, &[sock.as_raw_fd()]).ok());
    if let (Some(i), Some(sandbox)) = (prestart, prepared.as_mut()) {
        let warm = &state.config.warm[i];
        if let Err(f) = sandbox.prestart(i, warm, &supervisor::prestart_rlimits(&state.config)) {
            eprintln!(
                "cod sandbox: slot {}: starting {:?} ahead failed: {f}",
                ctx.slot, warm.name
            );
            // Its state is unknown: the sandbox goes.
            prepared = None;
        } else {
            // Its memory, once it is up (a run arriving first goes first).
            let mut fds = [PollFd::new(&sock, PollFlags::IN)];
            let settle = crate::supervisor::timespec(std::time::Duration::from_millis(300));
            if matches!(poll(&mut fds, Some(&settle)), Ok(0))
                && let Some(sb) = prepared.as_mut()
            {
                sb.measure_prestarted();
            }
        }
    }
    loop {
        let Ok(Some((conn, zygotes, pids))) = receive(&sock).map(|m| m.and_then(decode_run)) else {
            // The keeper is closing, or sent nothing usable: end the prepared sandbox.
            drop(prepared);
            sys::exit_now(0)
        };
        let served = supervisor::supervise_one(conn, state, ctx, &mut prepared, zygotes, &pids);
        let again = matches!(served, supervisor::Served::Warm(_));
        let mut done = [0u8; 5];
        done[0] = b'd';
        done[1..].copy_from_slice(&served.code().to_le_bytes());
        if !again || rustix::net::send(&sock, &done, SendFlags::NOSIGNAL).is_err() {
            drop(prepared);
            sys::exit_now(served.code())
        }
    }
}

/// The keeper's state.
struct Keeper<'a> {
    slot: u32,
    state: &'a HelperState,
    cg: Result<SlotCgroup, Failure>,
    pid: i32,
    sock: OwnedFd,
    active: Vec<Child>,
    standby: Option<Standby>,
    /// The standby while it serves a run (it says `d` when done, or exits).
    busy: Option<Standby>,
    closing: bool,
    /// Which warm runtimes the caller wants here.
    mask: u32,
    zygotes: Vec<Option<Zygote>>,
    /// Runtimes that failed to start or kept dying: not started again until the caller
    /// sets their bit anew.
    failed: Vec<bool>,
    /// Deaths of each runtime since its last good run.
    deaths: Vec<u32>,
    /// The last eight runs, newest in bit 0: 1 for those that used a zygote.
    recent_warm: u8,
    /// The runtime started ahead that the slot's latest run of one asked for.
    prefer: Option<usize>,
    /// The last eight runs, newest in bit 0: 1 for those of a runtime started ahead. None
    /// of them: nothing is started ahead (ending an unused JVM costs the next run ~2 ms).
    recent_prestart: u8,
}

/// A runtime that died this many times in a row is given up.
const MAX_DEATHS: u32 = 3;
/// How long a run waits for a zygote that replaces a dead one.
const ZYGOTE_START_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Keeper<'_> {
    fn ctx(&self) -> Option<SlotContext<'_>> {
        self.cg.as_ref().ok().map(|cg| SlotContext {
            slot: self.slot,
            cgroup: cg,
            keeper: self.pid,
        })
    }

    /// Every zygote's pid, ready or starting: processes of the slot's cgroup that a run's
    /// clean-up must spare.
    fn zygote_pids(&self) -> Vec<i32> {
        self.zygotes
            .iter()
            .flatten()
            .map(|z| z.sandbox.init.pid())
            .collect()
    }

    fn handles(&self) -> Vec<ZygoteHandle> {
        self.zygotes
            .iter()
            .enumerate()
            .filter_map(|(i, z)| z.as_ref().filter(|z| z.ready).and_then(|z| z.handle(i)))
            .collect()
    }

    /// Starts the wanted runtimes that are missing, then a standby supervisor. Only while
    /// the slot is idle: building either never counts against a run.
    fn refill(&mut self) {
        if !self.active.is_empty() || self.busy.is_some() || self.closing || self.cg.is_err() {
            return;
        }
        self.start_zygotes();
        self.start_standby();
    }

    /// The runtime a standby should start ahead, given the mask.
    fn wanted_prestart(&self) -> Option<usize> {
        let usable = |i: usize| {
            self.mask & (1 << i) != 0 && !self.state.config.warm[i].forks() && !self.failed[i]
        };
        // The one the slot's runs asked for last, while they still ask for one.
        self.prefer
            .filter(|&i| usable(i) && self.recent_prestart != 0)
    }

    fn start_zygotes(&mut self) {
        for i in 0..self.zygotes.len() {
            if self.mask & (1 << i) != 0
                && self.state.config.warm[i].forks()
                && self.zygotes[i].is_none()
                && !self.failed[i]
            {
                self.zygotes[i] = self.start_zygote(i);
                if self.zygotes[i].is_none() {
                    self.gave_up(i, "its sandbox could not be prepared");
                }
            }
        }
    }

    fn start_standby(&mut self) {
        if self.standby.is_none() {
            // A runtime started ahead for one run lives in the prepared sandbox.
            let prestart = self.wanted_prestart();
            // When most runs go to a zygote, a prepared sandbox would mostly be thrown away.
            let warm_runs = self.recent_warm.count_ones();
            let layout = match prestart {
                Some(i) => Some(self.state.config.warm[i].layout.clone()),
                None => self.state.config.prepared.clone().filter(|_| warm_runs < 6),
            };
            if layout.is_some() || self.zygotes.iter().any(Option::is_some) {
                self.standby = self.spawn_standby(layout, prestart);
            }
        }
    }

    fn start_zygote(&self, i: usize) -> Option<Zygote> {
        let ctx = self.ctx()?;
        let warm = &self.state.config.warm[i];
        let mut sandbox = Sandbox::prepare(
            self.state,
            &ctx,
            warm.layout.clone(),
            &[self.sock.as_raw_fd()],
        )
        .ok()?;
        sandbox.warm(warm).ok()?;
        Some(Zygote {
            sandbox,
            ready: false,
            idle_memory: 0,
        })
    }

    fn gave_up(&mut self, i: usize, why: &str) {
        self.failed[i] = true;
        self.zygotes[i] = None;
        eprintln!(
            "cod sandbox: slot {}: warm runtime {:?} is not used: {why}",
            self.slot, self.state.config.warm[i].name
        );
    }

    /// Forks a standby supervisor.
    fn spawn_standby(&self, layout: Option<Layout>, prestart: Option<usize>) -> Option<Standby> {
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .ok()?;
        let cg = self.cg.as_ref().ok()?;
        let keeper_raw = self.sock.as_raw_fd();
        let ours_raw = ours.as_raw_fd();
        let (slot, state, keeper) = (self.slot, self.state, self.pid);
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
                prestart,
            )
        })
        .ok()?;
        Some(Standby {
            child,
            sock: ours,
            prestart,
        })
    }

    /// Takes note of how a finished supervisor ended.
    fn finished(&mut self, code: Option<i32>) {
        let n = self.zygotes.len();
        let warm_index = |base: i32| {
            code.and_then(|c| usize::try_from(c - base).ok())
                .filter(|&i| i < n)
        };
        let before = self.wanted_prestart();
        self.recent_warm <<= 1;
        self.recent_prestart <<= 1;
        if let Some(i) = warm_index(EXIT_COLD_WANTED) {
            self.prefer = Some(i);
            self.recent_prestart |= 1;
        } else if let Some(i) = warm_index(EXIT_WARM) {
            if self.state.config.warm[i].forks() {
                self.recent_warm |= 1;
            } else {
                self.prefer = Some(i);
                self.recent_prestart |= 1;
            }
            self.deaths[i] = 0;
        } else if let Some(i) = warm_index(EXIT_WARM_DOUBT) {
            self.recent_warm |= 1;
            self.zygotes[i] = None;
        } else if code.is_none() {
            // The supervisor was killed: whatever zygote it used is in doubt.
            for z in &mut self.zygotes {
                *z = None;
            }
        }
        // A standby that starts the runtime the runs no longer ask for is replaced.
        if self.wanted_prestart() != before
            && self
                .standby
                .as_ref()
                .is_some_and(|sb| sb.prestart != self.wanted_prestart())
        {
            self.drop_standby();
        }
    }

    /// Handles an event of zygote `i`: its start-up report, or its death.
    fn zygote_event(&mut self, i: usize) {
        let Some(z) = &mut self.zygotes[i] else {
            return;
        };
        if z.ready {
            // Its pidfd: it died.
            self.zygotes[i] = None;
            self.deaths[i] += 1;
            if self.deaths[i] >= MAX_DEATHS {
                self.gave_up(i, "it keeps dying");
            }
            return;
        }
        match read_report(&z.sandbox.report) {
            Ok(Some((init::REPORT_WARM_READY, ..))) => {
                z.ready = true;
                // The zygote's own, and what the run it keeps parked adds to it.
                z.idle_memory = crate::sandbox::private_memory(&z.sandbox.init.pid().to_string())
                    + zygote::PARKED_RUN_MEMORY;
            }
            Ok(Some((init::REPORT_WARM_FAILED, what, errno, _))) => {
                let mut text = [0u8; 4097];
                let why = match rustix::net::recv(&z.sandbox.cmd, &mut text, RecvFlags::DONTWAIT) {
                    Ok((n, _)) if n > 1 && text[0] == zygote::MSG_TEXT => {
                        String::from_utf8_lossy(&text[1..n]).into_owned()
                    }
                    _ => format!("step {what}: {}", std::io::Error::from_raw_os_error(errno)),
                };
                self.gave_up(i, &why);
            }
            _ => self.gave_up(i, "it died while starting"),
        }
    }

    /// Handles a message from the helper.
    fn message(&mut self, msg: Message) {
        match msg.bytes.first() {
            Some(b'w') if msg.bytes.len() == 5 => {
                let mask =
                    u32::from_le_bytes([msg.bytes[1], msg.bytes[2], msg.bytes[3], msg.bytes[4]]);
                for i in 0..self.zygotes.len() {
                    let bit = 1 << i;
                    if mask & bit == 0 {
                        self.zygotes[i] = None;
                    } else if self.mask & bit == 0 {
                        self.failed[i] = false;
                        self.deaths[i] = 0;
                    }
                }
                self.mask = mask;
                // A standby that starts the wrong runtime ahead (or none) is replaced.
                if self
                    .standby
                    .as_ref()
                    .is_some_and(|sb| sb.prestart != self.wanted_prestart())
                {
                    self.drop_standby();
                }
            }
            Some(b'r') => {
                for conn in msg.fds {
                    self.dispatch(conn);
                }
            }
            _ => {}
        }
    }

    /// A busy standby said it is done (or went away): takes note of the run, and keeps it
    /// as the standby if it can take another. With `block`, waits for that first.
    fn wait_busy(&mut self, sb: Standby, block: bool) {
        let mut buf = [0u8; 8];
        let flags = if block {
            RecvFlags::empty()
        } else {
            RecvFlags::DONTWAIT
        };
        let got = loop {
            match rustix::net::recv(&sb.sock, &mut buf, flags) {
                Err(Errno::INTR) => {}
                other => break other,
            }
        };
        match got {
            Ok((5, _)) if buf[0] == b'd' => {
                let code = i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]);
                self.finished(Some(code));
                if self.standby.is_none() && !self.closing {
                    self.standby = Some(sb);
                } else {
                    drop(sb.sock);
                    sb.child.reap();
                }
            }
            Err(Errno::AGAIN) => self.busy = Some(sb),
            // It exited (after a cold run) or failed: reap it.
            _ => {
                drop(sb.sock);
                let code = sb.child.reap();
                self.finished(code);
            }
        }
    }

    /// Waits (at most `limit`) for the zygotes that are starting to report.
    fn await_zygotes(&mut self, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let starting: Vec<usize> = (0..self.zygotes.len())
                .filter(|&i| self.zygotes[i].as_ref().is_some_and(|z| !z.ready))
                .collect();
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if starting.is_empty() || left.is_zero() {
                return;
            }
            let mut fds: Vec<PollFd<'_>> = starting
                .iter()
                .filter_map(|&i| self.zygotes[i].as_ref())
                .map(|z| PollFd::new(&z.sandbox.report, PollFlags::IN))
                .collect();
            let timeout = rustix::time::Timespec::try_from(left).ok();
            match poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(_) => return,
            }
            let ready: Vec<usize> = fds
                .iter()
                .zip(&starting)
                .filter(|(f, _)| !f.revents().is_empty())
                .map(|(_, &i)| i)
                .collect();
            drop(fds);
            for i in ready {
                self.zygote_event(i);
            }
        }
    }

    /// Ends the standby: closing its socket tells it to end its prepared sandbox (killing
    /// and reaping the sandbox's init) and exit, which this waits for.
    fn drop_standby(&mut self) {
        if let Some(sb) = self.standby.take() {
            drop(sb.sock);
            sb.child.reap();
        }
    }

    /// Hands a run to the standby, or to a freshly forked supervisor.
    fn dispatch(&mut self, conn: OwnedFd) {
        // Runs of a slot never overlap, their supervisors included: a supervisor that sent
        // its result may still be exiting, and its CPU time must not land on the next run.
        for c in std::mem::take(&mut self.active) {
            let code = c.reap();
            self.finished(code);
        }
        if let Some(sb) = self.busy.take() {
            self.wait_busy(sb, true);
        }
        // Back-to-back runs leave the slot no idle moment to prepare the next standby or
        // replace a zygote in: do it now, while no run is in the slot (a zygote starting
        // beside a run would put its start-up on the run's CPU time). A replaced zygote is
        // waited for, briefly, so this run is warm again.
        if !self.closing && self.cg.is_ok() {
            self.start_zygotes();
            self.await_zygotes(ZYGOTE_START_WAIT);
            if self.standby.is_none() {
                self.start_standby();
            }
        }
        if let Err(f) = &self.cg {
            refuse(conn, f.clone());
            return;
        }
        let zygotes = self.handles();
        let pids = self.zygote_pids();
        if let Some(sb) = self.standby.take() {
            if send_run(&sb.sock, &conn, &zygotes, &pids).is_ok() {
                self.busy = Some(sb);
                return;
            }
            let _ =
                rustix::process::pidfd_send_signal(&sb.child.pidfd, rustix::process::Signal::KILL);
            sb.child.reap();
        }
        let Some(ctx) = self.ctx() else { return };
        let keeper_sock = self.sock.as_raw_fd();
        match fork_child(|| {
            sys::close(keeper_sock);
            let mine = zygotes
                .iter()
                .filter_map(|z| {
                    Some(ZygoteHandle {
                        index: z.index,
                        pid: z.pid,
                        cmd: z.cmd.try_clone().ok()?,
                        report: z.report.try_clone().ok()?,
                        pidfd: z.pidfd.try_clone().ok()?,
                        idle_memory: z.idle_memory,
                    })
                })
                .collect();
            supervisor::supervise(
                conn.try_clone().expect("a descriptor"),
                self.state,
                &ctx,
                None,
                mine,
                &pids,
            )
        }) {
            Ok(c) => self.active.push(c),
            Err(e) => refuse(conn, fork_failure(&e)),
        }
    }
}

/// Holds this process, and so everything it starts, to slot `slot`'s CPU: the
/// `slot mod n`-th of the `n` CPUs in `cpus`. Programs leave it (see `init::prepare_exec`).
/// With one CPU there is nothing to choose.
fn pin_to_slot_cpu(slot: u32, cpus: &rustix::thread::CpuSet) {
    let n = cpus.count();
    if n <= 1 {
        return;
    }
    let k = usize::try_from(slot % n).unwrap_or(0);
    let Some(cpu) = (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&c| cpus.is_set(c))
        .nth(k)
    else {
        return;
    };
    let mut one = rustix::thread::CpuSet::new();
    one.set(cpu);
    // Should it fail (a cpuset changed since), the slot runs unpinned, as without it.
    let _ = rustix::thread::sched_setaffinity(None, &one);
}

/// The keeper's main function: serves messages arriving on `sock` until it closes.
pub(crate) fn keeper_main(sock: OwnedFd, slot: u32, state: &HelperState) -> ! {
    let cg = setup(slot, state);
    if state.pins_slots() {
        pin_to_slot_cpu(slot, &state.cpus);
    }
    let n = state.config.warm.len();
    let mut k = Keeper {
        slot,
        state,
        cg,
        pid: i32::try_from(std::process::id()).unwrap_or(0),
        sock,
        active: Vec::new(),
        standby: None,
        busy: None,
        closing: false,
        mask: 0,
        zygotes: (0..n).map(|_| None).collect(),
        failed: vec![false; n],
        deaths: vec![0; n],
        recent_warm: 0,
        prefer: None,
        recent_prestart: 0,
    };
    loop {
        k.refill();
        if k.closing && k.active.is_empty() && k.busy.is_none() {
            break;
        }
        // Wait for a message, a running supervisor's end, or a zygote's report or death.
        #[derive(Clone, Copy)]
        enum Src {
            Sock,
            Active(usize),
            Zygote(usize),
            Busy,
        }
        let mut fds: Vec<PollFd<'_>> = Vec::new();
        let mut srcs: Vec<Src> = Vec::new();
        if !k.closing {
            fds.push(PollFd::new(&k.sock, PollFlags::IN));
            srcs.push(Src::Sock);
        }
        for (i, c) in k.active.iter().enumerate() {
            fds.push(PollFd::new(&c.pidfd, PollFlags::IN));
            srcs.push(Src::Active(i));
        }
        if let Some(sb) = &k.busy {
            fds.push(PollFd::new(&sb.sock, PollFlags::IN));
            srcs.push(Src::Busy);
        }
        for (i, z) in k.zygotes.iter().enumerate() {
            if let Some(z) = z {
                let fd = if z.ready {
                    &z.sandbox.init.pidfd
                } else {
                    &z.sandbox.report
                };
                fds.push(PollFd::new(fd, PollFlags::IN));
                srcs.push(Src::Zygote(i));
            }
        }
        match poll(&mut fds, None) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(_) => break,
        }
        let ready: Vec<Src> = fds
            .iter()
            .zip(&srcs)
            .filter(|(f, _)| !f.revents().is_empty())
            .map(|(_, s)| *s)
            .collect();
        drop(fds);
        // Supervisors first (indices shift as they go), then zygotes, then messages.
        let mut done: Vec<usize> = ready
            .iter()
            .filter_map(|s| match s {
                Src::Active(i) => Some(*i),
                _ => None,
            })
            .collect();
        done.sort_unstable_by(|a, b| b.cmp(a));
        for i in done {
            let c = k.active.remove(i);
            let code = c.reap();
            k.finished(code);
        }
        if ready.iter().any(|s| matches!(s, Src::Busy))
            && let Some(sb) = k.busy.take()
        {
            k.wait_busy(sb, false);
        }
        for s in &ready {
            if let Src::Zygote(i) = s {
                k.zygote_event(*i);
            }
        }
        if ready.iter().any(|s| matches!(s, Src::Sock)) {
            match receive(&k.sock) {
                Ok(Some(msg)) => k.message(msg),
                Ok(None) | Err(_) => {
                    // The helper is closing: let the runs in flight finish, end the rest.
                    k.closing = true;
                    k.drop_standby();
                    for z in &mut k.zygotes {
                        *z = None;
                    }
                }
            }
        }
    }
    k.drop_standby();
    for z in &mut k.zygotes {
        *z = None;
    }
    while let Ok(Some(_)) | Err(Errno::INTR) = rustix::process::wait(WaitOptions::empty()) {}
    sys::exit_now(0)
}

/// Answers a run that cannot be started with its reason.
pub(crate) fn refuse(conn: OwnedFd, f: Failure) {
    let mut s = std::os::unix::net::UnixStream::from(conn);
    let _ = s.set_write_timeout(Some(std::time::Duration::from_secs(5)));
    let _ = protocol::write_frame(&mut s, &Event::Finished(Err(f)));
}
