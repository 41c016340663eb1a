//! Watching one stage: feeding its stdin, capturing stdout and stderr up to their caps,
//! checking wall and CPU time, and killing the run's init (and with it every process of
//! the run) the moment a limit is passed or the caller cancels. Measurements come from the
//! slot's cgroup.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use cod_core::LimitReason;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::io::Errno;

use crate::cgroup::{Baseline, SlotCgroup};
use crate::protocol::{self, Event, Failure, Request};
use crate::sandbox::{InitProcess, read_report};
use crate::spec::{Exit, FileEntry, SharedFile, StageOutcome};
use crate::supervisor::{errno_failure, error_chain, failure, io_failure, timespec};
use crate::{init, sys};

/// The longest interval between two reads of the cgroup's CPU counter.
const CPU_CHECK_MAX: Duration = Duration::from_millis(100);
/// The shortest.
const CPU_CHECK_MIN: Duration = Duration::from_millis(1);
/// Read size for output pipes.
const CHUNK: usize = 64 * 1024;

/// Describes a stage the init could not start.
fn not_started(
    errno: i32,
    index: i32,
    what: i32,
    files: &[FileEntry],
    shared: &[SharedFile],
) -> Failure {
    let cause = io::Error::from_raw_os_error(errno);
    match what {
        init::NOT_STARTED_FILE => {
            let name = usize::try_from(index)
                .ok()
                .and_then(|i| match i.checked_sub(files.len()) {
                    None => files.get(i).map(|f| f.name.as_str()),
                    Some(j) => shared.get(j).map(|f| f.name.as_str()),
                })
                .unwrap_or("?");
            failure(
                format!("writing the work file {name:?}"),
                Some(errno),
                cause,
            )
        }
        init::NOT_STARTED_PLAN => failure("decoding the stage's plan", Some(errno), cause),
        init::NOT_STARTED_DISK => failure("resizing the work dir", Some(errno), cause),
        _ => failure("forking the program", Some(errno), cause),
    }
}

/// Output captured from one pipe, up to a cap.
struct Capture {
    fd: Option<OwnedFd>,
    buf: Vec<u8>,
    cap: usize,
    truncated: bool,
    /// Which stream, for streamed output (1 stdout, 2 stderr).
    stream: u8,
}

impl Capture {
    fn new(fd: OwnedFd, cap: usize, stream: u8) -> io::Result<Self> {
        set_nonblocking(&fd)?;
        Ok(Capture {
            fd: Some(fd),
            buf: Vec::new(),
            cap,
            truncated: false,
            stream,
        })
    }

    /// Reads what is available (and, with `outbox`, streams what it keeps to the caller).
    /// Returns true when the cap was passed by this read.
    fn drain(&mut self, mut outbox: Option<(&mut Outbox, u32)>) -> bool {
        let Some(fd) = &self.fd else { return false };
        let mut chunk = [0u8; CHUNK];
        let mut passed = false;
        loop {
            match rustix::io::read(fd, &mut chunk) {
                Ok(0) => {
                    self.fd = None;
                    break;
                }
                Ok(n) => {
                    let room = self.cap.saturating_sub(self.buf.len());
                    let kept = &chunk[..n.min(room)];
                    self.buf.extend_from_slice(kept);
                    if let Some((outbox, stage)) = &mut outbox
                        && !kept.is_empty()
                    {
                        outbox.push(&Event::Output {
                            stage: *stage,
                            stream: self.stream,
                            data: kept.to_vec(),
                        });
                    }
                    if n > room && !self.truncated {
                        self.truncated = true;
                        passed = true;
                    }
                    // Let the caller catch up before reading more.
                    if outbox.as_ref().is_some_and(|(o, _)| o.full()) {
                        break;
                    }
                }
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => break,
                Err(_) => {
                    self.fd = None;
                    break;
                }
            }
        }
        passed
    }
}

fn set_nonblocking(fd: &impl AsFd) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

/// Events waiting to be written to the caller's socket (which is non-blocking while a stage
/// runs, so that a slow caller never stalls the limits). When it holds [`OUTBOX_MAX`]
/// bytes the program's output is no longer read: its pipe fills and the program waits, so
/// neither side buffers without bound.
#[derive(Default)]
struct Outbox {
    buf: Vec<u8>,
    at: usize,
}

/// See [`Outbox`].
const OUTBOX_MAX: usize = 256 * 1024;

impl Outbox {
    fn push(&mut self, e: &Event) {
        if let Ok(frame) = protocol::encode(e) {
            self.buf.extend_from_slice(&frame);
        }
    }

    fn full(&self) -> bool {
        self.buf.len() - self.at >= OUTBOX_MAX
    }

    fn is_empty(&self) -> bool {
        self.at == self.buf.len()
    }

    /// Writes what the socket takes now. Err: the caller is gone.
    fn flush(&mut self, sock: &UnixStream) -> io::Result<()> {
        while self.at < self.buf.len() {
            match rustix::io::write(sock, &self.buf[self.at..]) {
                Ok(n) => self.at += n,
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => break,
                Err(e) => return Err(e.into()),
            }
        }
        if self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        }
        Ok(())
    }
}

/// Frames read from the caller's socket, parsed as they complete. One per run: a frame
/// may arrive split across two stages.
#[derive(Default)]
pub(crate) struct Inbox {
    buf: Vec<u8>,
}

impl Inbox {
    /// Reads what is available; false once the caller closed its end (or it failed).
    fn fill(&mut self, sock: &UnixStream) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match rustix::io::read(sock, &mut chunk) {
                Ok(0) => return false,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => return true,
                Err(_) => return false,
            }
        }
    }

    /// The next complete request, if one arrived; Err for a malformed one.
    fn next(&mut self) -> Result<Option<Request>, protocol::FrameError> {
        let Some(header) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = protocol::decode_len([header[0], header[1], header[2], header[3]])?;
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let req = protocol::decode(&self.buf[4..4 + len]);
        self.buf.drain(..4 + len);
        req.map(Some)
    }
}

/// Watches one stage from its start to its end.
pub(crate) struct Watch<'a> {
    /// When the stage was started.
    pub(crate) start: Instant,
    /// This supervisor's own CPU time when `base` was taken: the supervisor shares the slot's
    /// cgroup, and its own work is not the run's.
    pub(crate) own_base: Duration,
    /// How many CPUs the run can use at once (its quota, or the machine's).
    pub(crate) cpus: u32,
    pub(crate) limits: cod_core::Limits,
    pub(crate) cg: &'a SlotCgroup,
    pub(crate) base: &'a Baseline,
    pub(crate) init: &'a InitProcess,
    /// What to kill to end the stage, if not the init: a zygote's run init.
    pub(crate) kill: Option<&'a OwnedFd>,
    pub(crate) report: &'a OwnedFd,
    pub(crate) sock: &'a mut UnixStream,
    /// The run's files, to name the one the init could not write.
    pub(crate) files: &'a [FileEntry],
    /// And its shared files, which come after them.
    pub(crate) shared: &'a [SharedFile],
    /// The stage's number, for events.
    pub(crate) stage: u32,
    /// Send output to the caller as it comes ([`Event::Output`]).
    pub(crate) stream: bool,
    /// Keep stdin open for [`Request::Stdin`] until [`Request::StdinClose`].
    pub(crate) interactive: bool,
    /// The run's requests read so far.
    pub(crate) inbox: &'a mut Inbox,
}

/// Most processes [`descendants_peak_kib`] looks at (a run has at most its process limit).
const MAX_WALK: usize = 1024;

/// The largest `VmHWM` (KiB) among the descendants of `root`, from `/proc`: a run's peak
/// memory as its init reports it for a program that ends by itself.
fn descendants_peak_kib(root: i32) -> u64 {
    let mut todo = sys::children(root);
    let (mut peak, mut seen) = (0u64, 0usize);
    while let Some(pid) = todo.pop() {
        seen += 1;
        if seen > MAX_WALK {
            break;
        }
        peak = peak.max(u64::try_from(init::high_water_kib(pid)).unwrap_or(0));
        todo.extend(sys::children(pid));
    }
    peak
}

/// The pid (in this process's namespace) a pidfd refers to, from its `fdinfo`.
fn pidfd_pid(pidfd: &OwnedFd) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    let pid: i32 = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))?
        .trim()
        .parse()
        .ok()?;
    (pid > 0).then_some(pid)
}

/// How often a running stage reports its usage ([`Event::Usage`]).
const USAGE_EVERY: Duration = Duration::from_millis(250);
/// Most stdin bytes waiting for the program to read them; more is dropped (the caller
/// bounds what it sends).
const STDIN_MAX: usize = 4 << 20;

/// CPU time this process has used.
pub(crate) fn own_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

impl Watch<'_> {
    /// CPU time the run has used since the stage's baseline: the slot's counter minus what
    /// this supervisor used meanwhile.
    fn run_cpu(&self) -> Result<Duration, Failure> {
        let slot = self
            .cg
            .cpu_since(self.base)
            .map_err(|e| failure("reading CPU usage", None, error_chain(&e)))?;
        Ok(slot.saturating_sub(own_cpu().saturating_sub(self.own_base)))
    }

    /// Returns the stage's outcome and whether the init is still alive for another stage.
    pub(crate) fn run(
        self,
        stdin_w: OwnedFd,
        stdin: &[u8],
        out_r: OwnedFd,
        err_r: OwnedFd,
    ) -> Result<(StageOutcome, bool), Failure> {
        let output_cap = usize::try_from(self.limits.output.get()).unwrap_or(usize::MAX);
        let mut out = Capture::new(out_r, output_cap, 1).map_err(io_failure("preparing stdout"))?;
        let mut err = Capture::new(err_r, output_cap, 2).map_err(io_failure("preparing stderr"))?;
        // Bytes for the program's stdin; it closes once they are written, unless the stage
        // is interactive (then on the caller's StdinClose).
        let mut pending: Vec<u8> = stdin.to_vec();
        let mut pending_at = 0usize;
        let mut stdin_closing = !self.interactive;
        let mut stdin_fd = if pending.is_empty() && stdin_closing {
            // Nothing to write: closed now, so that the program reads the end of its input
            // at once (kept until this function returns, a read would wait for the wall
            // limit).
            drop(stdin_w);
            None
        } else {
            set_nonblocking(&stdin_w).map_err(io_failure("preparing stdin"))?;
            Some(stdin_w)
        };
        set_nonblocking(&*self.sock).map_err(io_failure("preparing the caller's socket"))?;
        let mut outbox = Outbox::default();

        let start = self.start;
        let wall_deadline = start + self.limits.wall;
        let mut next_cpu_check = start + self.limits.cpu.clamp(CPU_CHECK_MIN, CPU_CHECK_MAX);
        let mut next_usage = start + USAGE_EVERY;
        let mut report: Option<(i32, i32)> = None;
        let mut peak_kib: u64 = 0;
        let mut init_dead = false;
        // The largest resident size of the run's processes, read right before a limit
        // kills them (a run that ends by itself has it reported by its init).
        let peak_at_kill = std::cell::Cell::new(0u64);
        let mut killed: Option<LimitReason> = None;
        let mut cancelled = false;
        let mut sock_open = true;
        let mut end: Option<Instant> = None;

        loop {
            let finished = report.is_some() || init_dead;
            if finished && out.fd.is_none() && err.fd.is_none() {
                break;
            }
            let now = Instant::now();
            let kill = |reason: Option<LimitReason>,
                        killed: &mut Option<LimitReason>,
                        end: &mut Option<Instant>| {
                if end.is_none() {
                    // The moment of the kill, not `now`: that was taken before the poll which
                    // may have waited up to a CPU-check interval for the output or the
                    // caller's request that triggered it.
                    *end = Some(Instant::now());
                    *killed = reason;
                    if reason.is_some() {
                        // The run's processes are the descendants of what the kill ends (a
                        // zygote run's `G`, whose own memory is the zygote's, or the init).
                        let root = match self.kill {
                            Some(pidfd) => pidfd_pid(pidfd),
                            None => Some(self.init.pid()),
                        };
                        peak_at_kill.set(root.map_or(0, descendants_peak_kib));
                    }
                    match self.kill {
                        Some(fd) => {
                            let _ = rustix::process::pidfd_send_signal(
                                fd,
                                rustix::process::Signal::KILL,
                            );
                        }
                        None => self.init.kill(),
                    }
                } else if killed.is_none() {
                    // The program had already ended (its report was read in the same wake-up,
                    // before the output that passed the cap): the limit was still passed.
                    *killed = reason;
                }
            };
            if !finished && end.is_none() {
                if now >= wall_deadline {
                    kill(Some(LimitReason::Wall), &mut killed, &mut end);
                } else if now >= next_cpu_check {
                    let used = self.run_cpu()?;
                    if used >= self.limits.cpu {
                        kill(Some(LimitReason::Cpu), &mut killed, &mut end);
                    } else {
                        // The slot cannot use CPU time faster than `cpus` times wall time
                        // (its quota, or every CPU), so the limit cannot be reached before
                        // the remaining CPU time divided by that has elapsed.
                        next_cpu_check = now
                            + ((self.limits.cpu - used) / self.cpus)
                                .clamp(CPU_CHECK_MIN, CPU_CHECK_MAX);
                    }
                }
                if now >= next_usage && sock_open && !outbox.full() {
                    next_usage = now + USAGE_EVERY;
                    if let Ok(u) = self.cg.usage(self.base) {
                        outbox.push(&Event::Usage {
                            stage: self.stage,
                            cpu: u
                                .cpu
                                .saturating_sub(own_cpu().saturating_sub(self.own_base)),
                            memory: u.memory_peak,
                            wall: now.saturating_duration_since(start),
                        });
                    }
                }
            }
            if sock_open && !outbox.is_empty() && outbox.flush(self.sock).is_err() {
                sock_open = false;
                cancelled = true;
                kill(None, &mut killed, &mut end);
            }
            let timeout = if finished || end.is_some() {
                None
            } else {
                Some(timespec(
                    wall_deadline
                        .min(next_cpu_check)
                        .min(next_usage)
                        .saturating_duration_since(Instant::now()),
                ))
            };

            // Poll set: report, stdout, stderr, stdin, caller socket, init pidfd. Output is
            // not read while the caller's outbox is full.
            let read_output = !(self.stream && sock_open && outbox.full());
            let want_stdin = pending_at < pending.len() || stdin_closing;
            let mut sock_events = PollFlags::IN;
            if !outbox.is_empty() {
                sock_events |= PollFlags::OUT;
            }
            let wanted: [(Option<BorrowedFd<'_>>, PollFlags); 6] = [
                (
                    (report.is_none() && !init_dead).then(|| self.report.as_fd()),
                    PollFlags::IN,
                ),
                (
                    out.fd.as_ref().filter(|_| read_output).map(AsFd::as_fd),
                    PollFlags::IN,
                ),
                (
                    err.fd.as_ref().filter(|_| read_output).map(AsFd::as_fd),
                    PollFlags::IN,
                ),
                (
                    stdin_fd.as_ref().filter(|_| want_stdin).map(AsFd::as_fd),
                    PollFlags::OUT,
                ),
                (sock_open.then(|| self.sock.as_fd()), sock_events),
                ((!init_dead).then(|| self.init.pidfd.as_fd()), PollFlags::IN),
            ];
            let mut keys = Vec::with_capacity(6);
            let mut fds = Vec::with_capacity(6);
            for (k, (fd, ev)) in wanted.into_iter().enumerate() {
                if let Some(fd) = fd {
                    keys.push(k);
                    fds.push(PollFd::from_borrowed_fd(fd, ev));
                }
            }
            match poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(errno_failure("waiting for the program")(e)),
            }
            let mut ready = [false; 6];
            let mut sock_in = false;
            for (fd, k) in fds.iter().zip(&keys) {
                let r = fd.revents();
                ready[*k] = !r.is_empty();
                if *k == 4 {
                    sock_in = !(r & (PollFlags::IN | PollFlags::HUP | PollFlags::ERR)).is_empty();
                }
            }
            drop(fds);
            let [r_report, r_out, r_err, r_in, _, r_pid] = ready;

            if r_report {
                match read_report(self.report).map_err(io_failure("reading the init's report"))? {
                    Some((init::REPORT_STAGE_DONE, status, exec_errno, peak)) => {
                        report = Some((status, exec_errno));
                        peak_kib = u64::try_from(peak).unwrap_or(0);
                        end.get_or_insert_with(Instant::now);
                    }
                    Some((init::REPORT_NOT_STARTED, errno, index, what)) => {
                        return Err(not_started(errno, index, what, self.files, self.shared));
                    }
                    Some(other) => {
                        return Err(failure(
                            "watching the program",
                            None,
                            format!("unexpected report {other:?}"),
                        ));
                    }
                    None => init_dead = true,
                }
            }
            let streaming = (self.stream && sock_open).then_some(&mut outbox);
            if r_out && out.drain(streaming.map(|o| (o, self.stage))) {
                kill(Some(LimitReason::Output), &mut killed, &mut end);
            }
            let streaming = (self.stream && sock_open).then_some(&mut outbox);
            if r_err && err.drain(streaming.map(|o| (o, self.stage))) {
                kill(Some(LimitReason::Output), &mut killed, &mut end);
            }
            if r_in && let Some(fd) = &stdin_fd {
                if pending_at < pending.len() {
                    match rustix::io::write(fd, &pending[pending_at..]) {
                        Ok(n) => pending_at += n,
                        Err(Errno::AGAIN | Errno::INTR) => {}
                        // EPIPE: the program closed its stdin or exited; the rest is dropped.
                        Err(_) => {
                            pending_at = pending.len();
                            stdin_closing = true;
                        }
                    }
                }
                if pending_at >= pending.len() {
                    pending.clear();
                    pending_at = 0;
                    if stdin_closing {
                        stdin_fd = None;
                    }
                }
            }
            if sock_in {
                let open = self.inbox.fill(self.sock);
                loop {
                    match self.inbox.next() {
                        Ok(Some(Request::Kill)) => {
                            cancelled = true;
                            kill(None, &mut killed, &mut end);
                        }
                        Ok(Some(Request::Stdin(data))) => {
                            if stdin_fd.is_some()
                                && !stdin_closing
                                && pending.len() + data.len() <= STDIN_MAX
                            {
                                pending.extend_from_slice(&data);
                            }
                        }
                        Ok(Some(Request::StdinClose)) => {
                            stdin_closing = true;
                            if pending_at >= pending.len() {
                                stdin_fd = None;
                            }
                        }
                        Ok(Some(Request::Run(_))) => {}
                        Ok(None) => break,
                        Err(_) => {
                            // A caller that speaks nonsense is treated as gone.
                            sock_open = false;
                            break;
                        }
                    }
                }
                // The caller went away: nobody wants the result.
                if !open || !sock_open {
                    sock_open = false;
                    cancelled = true;
                    kill(None, &mut killed, &mut end);
                }
            }
            if r_pid {
                init_dead = true;
                end.get_or_insert_with(Instant::now);
            }
        }
        // What the caller has not taken yet, before the stage's end is reported.
        let blocking = self.sock.set_nonblocking(false);
        if sock_open && blocking.is_ok() && !outbox.is_empty() {
            let _ = self.sock.set_write_timeout(Some(Duration::from_secs(30)));
            let _ = std::io::Write::write_all(self.sock, &outbox.buf[outbox.at..]);
            let _ = self.sock.set_write_timeout(None);
        }
        let end = end.unwrap_or_else(Instant::now);
        let mut usage = self
            .cg
            .usage(self.base)
            .map_err(|e| failure("reading the slot's usage", None, error_chain(&e)))?;
        usage.cpu = usage
            .cpu
            .saturating_sub(own_cpu().saturating_sub(self.own_base));

        let exit = match report {
            Some((_, errno)) if errno != 0 => Exit::Unknown,
            Some((status, _)) => {
                if libc::WIFEXITED(status) {
                    Exit::Code(libc::WEXITSTATUS(status))
                } else if libc::WIFSIGNALED(status) {
                    Exit::Signal(libc::WTERMSIG(status))
                } else {
                    Exit::Unknown
                }
            }
            None if killed.is_some() || cancelled => Exit::Signal(libc::SIGKILL),
            None => Exit::Unknown,
        };
        let wall = end.saturating_duration_since(start);
        let limit = killed.or_else(|| {
            if usage.oom_kills > 0 {
                Some(LimitReason::Memory)
            } else if usage.cpu > self.limits.cpu || exit == Exit::Signal(libc::SIGXCPU) {
                Some(LimitReason::Cpu)
            } else if wall > self.limits.wall {
                Some(LimitReason::Wall)
            } else {
                None
            }
        });
        let exec_errno = report.and_then(|(_, e)| (e != 0).then_some(e));
        let alive = !init_dead && killed.is_none() && !cancelled;
        Ok((
            StageOutcome {
                exit,
                limit,
                cancelled,
                exec_errno,
                stdout: out.buf,
                stderr: err.buf,
                stdout_truncated: out.truncated,
                stderr_truncated: err.truncated,
                cpu: usage.cpu,
                wall,
                // The slot's peak over its usage at the start, and at least the largest
                // resident size of the run's processes (memory cod's own processes free
                // meanwhile must not hide the program's), which counts shared library
                // pages too: never more than the limit.
                memory_peak: usage.memory_peak.max(
                    peak_kib
                        .max(peak_at_kill.get())
                        .saturating_mul(1024)
                        .min(self.limits.memory.get()),
                ),
            },
            alive,
        ))
    }
}
