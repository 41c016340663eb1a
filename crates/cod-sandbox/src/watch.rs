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
use crate::init;
use crate::protocol::{self, Failure, Request};
use crate::sandbox::{InitProcess, read_report};
use crate::spec::{Exit, FileEntry, StageOutcome};
use crate::supervisor::{errno_failure, error_chain, failure, io_failure, timespec};

/// The longest interval between two reads of the cgroup's CPU counter.
const CPU_CHECK_MAX: Duration = Duration::from_millis(100);
/// The shortest.
const CPU_CHECK_MIN: Duration = Duration::from_millis(1);
/// Read size for output pipes.
const CHUNK: usize = 64 * 1024;

/// Describes a stage the init could not start.
fn not_started(errno: i32, index: i32, what: i32, files: &[FileEntry]) -> Failure {
    let cause = io::Error::from_raw_os_error(errno);
    match what {
        init::NOT_STARTED_FILE => {
            let name = usize::try_from(index)
                .ok()
                .and_then(|i| files.get(i))
                .map_or("?", |f| f.name.as_str());
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
}

impl Capture {
    fn new(fd: OwnedFd, cap: usize) -> io::Result<Self> {
        set_nonblocking(&fd)?;
        Ok(Capture {
            fd: Some(fd),
            buf: Vec::new(),
            cap,
            truncated: false,
        })
    }

    /// Reads what is available. Returns true when the cap was passed by this read.
    fn drain(&mut self) -> bool {
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
                    self.buf.extend_from_slice(&chunk[..n.min(room)]);
                    if n > room && !self.truncated {
                        self.truncated = true;
                        passed = true;
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

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
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
}

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
        let mut out = Capture::new(out_r, output_cap).map_err(io_failure("preparing stdout"))?;
        let mut err = Capture::new(err_r, output_cap).map_err(io_failure("preparing stderr"))?;
        let mut stdin_fd = if stdin.is_empty() {
            None
        } else {
            set_nonblocking(&stdin_w).map_err(io_failure("preparing stdin"))?;
            Some(stdin_w)
        };
        let mut stdin_pos = 0usize;

        let start = self.start;
        let wall_deadline = start + self.limits.wall;
        let mut next_cpu_check = start + self.limits.cpu.clamp(CPU_CHECK_MIN, CPU_CHECK_MAX);
        let mut report: Option<(i32, i32)> = None;
        let mut init_dead = false;
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
            }
            let timeout = if finished || end.is_some() {
                None
            } else {
                Some(timespec(
                    wall_deadline
                        .min(next_cpu_check)
                        .saturating_duration_since(Instant::now()),
                ))
            };

            // Poll set: report, stdout, stderr, stdin, caller socket, init pidfd.
            let wanted: [(Option<BorrowedFd<'_>>, PollFlags); 6] = [
                (
                    (report.is_none() && !init_dead).then(|| self.report.as_fd()),
                    PollFlags::IN,
                ),
                (out.fd.as_ref().map(AsFd::as_fd), PollFlags::IN),
                (err.fd.as_ref().map(AsFd::as_fd), PollFlags::IN),
                (stdin_fd.as_ref().map(AsFd::as_fd), PollFlags::OUT),
                (sock_open.then(|| self.sock.as_fd()), PollFlags::IN),
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
            for (fd, k) in fds.iter().zip(&keys) {
                ready[*k] = !fd.revents().is_empty();
            }
            drop(fds);
            let [r_report, r_out, r_err, r_in, r_sock, r_pid] = ready;

            if r_report {
                match read_report(self.report).map_err(io_failure("reading the init's report"))? {
                    Some((init::REPORT_STAGE_DONE, status, exec_errno, _)) => {
                        report = Some((status, exec_errno));
                        end.get_or_insert_with(Instant::now);
                    }
                    Some((init::REPORT_NOT_STARTED, errno, index, what)) => {
                        return Err(not_started(errno, index, what, self.files));
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
            if r_out && out.drain() {
                kill(Some(LimitReason::Output), &mut killed, &mut end);
            }
            if r_err && err.drain() {
                kill(Some(LimitReason::Output), &mut killed, &mut end);
            }
            if r_in && let Some(fd) = &stdin_fd {
                match rustix::io::write(fd, &stdin[stdin_pos..]) {
                    Ok(n) => stdin_pos += n,
                    Err(Errno::AGAIN | Errno::INTR) => {}
                    // EPIPE: the program closed its stdin or exited; the rest is dropped.
                    Err(_) => stdin_pos = stdin.len(),
                }
                if stdin_pos >= stdin.len() {
                    stdin_fd = None;
                }
            }
            if r_sock {
                match protocol::read_frame::<Request>(self.sock) {
                    Ok(Some(Request::Kill)) => {
                        cancelled = true;
                        kill(None, &mut killed, &mut end);
                    }
                    Ok(Some(Request::Run(_))) => {}
                    // The caller went away: nobody wants the result.
                    Ok(None) | Err(_) => {
                        sock_open = false;
                        cancelled = true;
                        kill(None, &mut killed, &mut end);
                    }
                }
            }
            if r_pid {
                init_dead = true;
                end.get_or_insert_with(Instant::now);
            }
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
                memory_peak: usage.memory_peak,
            },
            alive,
        ))
    }
}
