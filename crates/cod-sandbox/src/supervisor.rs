//! The supervisor: one process per run, forked by the helper, outside the run's namespaces.
//!
//! It reads the run's spec from the caller's socket, prepares everything the run's init
//! needs (so that the init never allocates), clones the init into new user, PID, mount,
//! network, IPC and UTS namespaces, maps its uid, moves it into the slot's cgroup, and then
//! drives the stages: it feeds stdin, captures stdout and stderr up to their caps, watches
//! wall and CPU time, and kills the init (and with it the whole PID namespace) the moment a
//! limit is passed or the caller cancels. Measurements come from the slot's cgroup.

use std::ffi::CString;
use std::fmt::Display;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cod_core::LimitReason;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::io::Errno;
use rustix::pipe::{PipeFlags, pipe_with};
use rustix::process::{
    Pid, PidfdFlags, Resource, Signal, WaitOptions, pidfd_open, pidfd_send_signal,
};

use crate::cgroup::{Baseline, CgroupLimits, CgroupTree, SlotCgroup};
use crate::client::JailConfig;
use crate::init::{self, CMD_GO, CMD_STAGE, ExecPlan, InitPlan, REPORT_LEN};
use crate::mounts::{MountPlan, Step};
use crate::protocol::{self, Event, Failure, Request};
use crate::seccomp::SeccompPolicy;
use crate::spec::{
    Exit, MAX_STAGES, SANDBOX_ID, SandboxOutcome, SandboxSpec, StageOutcome, StageSpec,
};
use crate::sys;

/// How long the init may take to build the root before the run is declared failed.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a caller may take to send the spec after connecting.
const SPEC_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest interval between two reads of the cgroup's CPU counter.
const CPU_CHECK_MAX: Duration = Duration::from_millis(100);
/// The shortest.
const CPU_CHECK_MIN: Duration = Duration::from_millis(1);
/// Read size for output pipes.
const CHUNK: usize = 64 * 1024;

/// What the helper prepared once and every supervisor inherits.
pub(crate) struct HelperState {
    pub(crate) config: JailConfig,
    pub(crate) cgroups: CgroupTree,
    pub(crate) seccomp: SeccompPolicy,
    pub(crate) staging_root: PathBuf,
    pub(crate) staging_scratch: PathBuf,
}

fn failure(step: impl Into<String>, errno: Option<i32>, cause: impl Display) -> Failure {
    Failure {
        step: step.into(),
        errno,
        message: cause.to_string(),
    }
}

fn io_failure(step: impl Into<String>) -> impl FnOnce(io::Error) -> Failure {
    let step = step.into();
    move |e| failure(step, e.raw_os_error(), e)
}

fn errno_failure(step: impl Into<String>) -> impl FnOnce(Errno) -> Failure {
    let step = step.into();
    move |e| failure(step, Some(e.raw_os_error()), io::Error::from(e))
}

/// The slot a supervisor runs in: forked by the slot's keeper, it already sits in the
/// slot's cgroup and network namespace.
pub(crate) struct SlotContext<'a> {
    /// The slot number.
    pub(crate) slot: u32,
    /// The slot's cgroup.
    pub(crate) cgroup: &'a SlotCgroup,
    /// The keeper's pid (which shares the cgroup).
    pub(crate) keeper: i32,
}

/// The supervisor's main function; never returns.
pub(crate) fn supervise(conn: OwnedFd, state: &HelperState, slot: &SlotContext<'_>) -> ! {
    let mut sock = UnixStream::from(conn);
    let spec = match read_spec(&mut sock) {
        Ok(Some(spec)) => spec,
        Ok(None) => sys::exit_now(0),
        Err(f) => {
            let _ = protocol::write_frame(&mut sock, &Event::Finished(Err(f)));
            sys::exit_now(0)
        }
    };
    let result = run(&spec, state, slot, &mut sock);
    let _ = protocol::write_frame(&mut sock, &Event::Finished(result));
    sys::exit_now(0)
}

fn read_spec(sock: &mut UnixStream) -> Result<Option<SandboxSpec>, Failure> {
    sock.set_read_timeout(Some(SPEC_TIMEOUT))
        .map_err(io_failure("setting a read timeout"))?;
    let req = protocol::read_frame::<Request>(sock)
        .map_err(|e| failure("reading the run request", None, e))?;
    sock.set_read_timeout(None)
        .map_err(io_failure("clearing the read timeout"))?;
    match req {
        None => Ok(None),
        Some(Request::Run(spec)) => Ok(Some(*spec)),
        Some(Request::Kill) => Ok(None),
    }
}

fn validate(spec: &SandboxSpec, slot: u32) -> Result<(), Failure> {
    let bad = |why: String| failure("validating the spec", Some(libc::EINVAL), why);
    if spec.slot != slot {
        return Err(bad(format!(
            "the spec names slot {} but was sent to slot {slot}",
            spec.slot
        )));
    }
    if spec.stages.is_empty() || spec.stages.len() > MAX_STAGES {
        return Err(bad(format!(
            "{} stages (1 to {MAX_STAGES} allowed)",
            spec.stages.len()
        )));
    }
    for (i, s) in spec.stages.iter().enumerate() {
        match s.argv.first() {
            Some(p) if p.starts_with('/') => {}
            _ => return Err(bad(format!("stage {i}: argv[0] must be an absolute path"))),
        }
        if s.limits.cpu.is_zero() || s.limits.wall.is_zero() || s.limits.memory.get() == 0 {
            return Err(bad(format!("stage {i}: limits must be positive")));
        }
    }
    Ok(())
}

fn cstrings(items: &[String], what: &str) -> Result<Vec<CString>, Failure> {
    items
        .iter()
        .map(|s| {
            CString::new(s.as_bytes()).map_err(|_| {
                failure(
                    "validating the spec",
                    Some(libc::EINVAL),
                    format!("{what} contains a NUL byte"),
                )
            })
        })
        .collect()
}

/// Caps `want` at the hard limit this process has (raising it would need privileges in the
/// initial user namespace).
fn rlimit(res: Resource, want: u64) -> (Resource, u64) {
    let max = rustix::process::getrlimit(res).maximum.unwrap_or(u64::MAX);
    (res, want.min(max))
}

fn stage_rlimits(s: &StageSpec, spec: &SandboxSpec, config: &JailConfig) -> Vec<(Resource, u64)> {
    // RLIMIT_CPU is per process; the cgroup watch is the real limit, this is a backstop.
    let cpu_secs = s.limits.cpu.as_secs() + 2;
    vec![
        rlimit(Resource::Cpu, cpu_secs),
        rlimit(Resource::Fsize, spec.disk.max(1 << 20)),
        rlimit(Resource::Nofile, config.open_files),
        rlimit(Resource::Stack, config.stack),
        rlimit(Resource::Core, 0),
        rlimit(Resource::Memlock, 0),
    ]
}

/// A pipe pair: (read end, write end).
fn pipe() -> Result<(OwnedFd, OwnedFd), Failure> {
    pipe_with(PipeFlags::CLOEXEC).map_err(errno_failure("creating a pipe"))
}

/// The run's init: killed and reaped when dropped, so no error path leaks it.
struct InitProcess {
    pid: i32,
    pidfd: OwnedFd,
    reaped: bool,
}

impl InitProcess {
    fn kill(&self) {
        let _ = pidfd_send_signal(&self.pidfd, Signal::KILL);
    }

    /// Kills the init (the kernel then kills every process of its PID namespace) and waits
    /// until the namespace is empty: the init's exit is reported only after its last
    /// process is gone.
    fn kill_and_reap(&mut self) {
        if self.reaped {
            return;
        }
        self.kill();
        if let Some(pid) = Pid::from_raw(self.pid) {
            let wait = || rustix::process::waitpid(Some(pid), WaitOptions::empty());
            while let Err(Errno::INTR) = wait() {}
        }
        self.reaped = true;
    }
}

impl Drop for InitProcess {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// Runs the whole sandbox.
fn run(
    spec: &SandboxSpec,
    st: &HelperState,
    slot: &SlotContext<'_>,
    sock: &mut UnixStream,
) -> Result<SandboxOutcome, Failure> {
    validate(spec, slot.slot)?;
    let cg = slot.cgroup;
    let plan = MountPlan::new(spec, &st.staging_root, &st.staging_scratch)
        .map_err(|e| failure("planning the root filesystem", None, error_chain(&e)))?;

    let (cmd_r, cmd_w) = pipe()?;
    let (rep_r, rep_w) = pipe()?;
    struct StagePipes {
        in_r: OwnedFd,
        in_w: OwnedFd,
        out_r: OwnedFd,
        out_w: OwnedFd,
        err_r: OwnedFd,
        err_w: OwnedFd,
    }
    let mut pipes = Vec::with_capacity(spec.stages.len());
    let mut execs = Vec::with_capacity(spec.stages.len());
    for s in &spec.stages {
        let ((in_r, in_w), (out_r, out_w), (err_r, err_w)) = (pipe()?, pipe()?, pipe()?);
        let argv = cstrings(&s.argv, "argv")?;
        let env = cstrings(&s.env, "env")?;
        let exec = ExecPlan::new(
            argv,
            env,
            stage_rlimits(s, spec, &st.config),
            [in_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
        )
        .ok_or_else(|| failure("validating the spec", Some(libc::EINVAL), "empty argv"))?;
        execs.push(exec);
        pipes.push(StagePipes {
            in_r,
            in_w,
            out_r,
            out_w,
            err_r,
            err_w,
        });
    }
    let mut close_in_init: Vec<RawFd> =
        vec![sock.as_raw_fd(), cmd_w.as_raw_fd(), rep_r.as_raw_fd()];
    for p in &pipes {
        close_in_init.extend([p.in_w.as_raw_fd(), p.out_r.as_raw_fd(), p.err_r.as_raw_fd()]);
    }
    let init_plan = InitPlan {
        mounts: &plan,
        stages: &execs,
        seccomp: &st.seccomp,
        cmd: cmd_r.as_raw_fd(),
        report: rep_w.as_raw_fd(),
        close_first: &close_in_init,
    };

    // No CLONE_NEWNET: the slot's keeper made a network namespace (loopback down, nothing
    // else) that its runs share one after another; creating one per run costs half a
    // millisecond, and no state survives a run in it (see docs/sandbox.md).
    let flags = (libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::SIGCHLD) as u64;
    let pid = sys::clone_raw(flags).map_err(io_failure("creating the namespaces (clone)"))?;
    if pid == 0 {
        init::init_main(&init_plan);
    }
    let pidfd = pidfd_open(
        Pid::from_raw(pid).ok_or_else(|| failure("clone", None, "returned pid 0"))?,
        PidfdFlags::empty(),
    );
    let pidfd = match pidfd {
        Ok(fd) => fd,
        Err(e) => {
            // Without a pidfd the init cannot be watched: end it now.
            let _ = rustix::process::kill_process(
                Pid::from_raw(pid).expect("pid is positive"),
                Signal::KILL,
            );
            let _ = rustix::process::waitpid(Pid::from_raw(pid), WaitOptions::empty());
            return Err(errno_failure("opening a pidfd for the init")(e));
        }
    };
    let mut init = InitProcess {
        pid,
        pidfd,
        reaped: false,
    };
    drop((cmd_r, rep_w));
    let mut stage_fds = Vec::with_capacity(pipes.len());
    for p in pipes {
        drop((p.in_r, p.out_w, p.err_w));
        stage_fds.push((p.in_w, p.out_r, p.err_r));
    }

    // Map the program's uid (1000 inside) to the slot's unprivileged host uid, and the
    // namespace's root (which the init becomes to build the root) to a second one. The host's
    // root stays unmapped.
    let (program_id, init_id) = st.config.host_ids(slot.slot);
    let map = format!("0 {init_id} 1\n{SANDBOX_ID} {program_id} 1\n");
    for file in ["uid_map", "gid_map"] {
        let line = &map;
        std::fs::write(format!("/proc/{pid}/{file}"), line)
            .map_err(io_failure(format!("writing {file}")))?;
    }
    // The init was born in the slot's cgroup (the keeper lives there; migrating a task per
    // run costs an RCU grace period on cgroup v1, up to tens of milliseconds). The keeper and
    // this supervisor share it, so the run's processes are made the OOM killer's first choice.
    std::fs::write(format!("/proc/{pid}/oom_score_adj"), "1000")
        .map_err(io_failure("setting the init's oom_score_adj"))?;
    write_all(&cmd_w, &[CMD_GO]).map_err(io_failure("starting the init"))?;

    wait_ready(&rep_r, &init, &plan)?;

    let mut outcome = SandboxOutcome::default();
    for (i, (s, (in_w, out_r, err_r))) in spec.stages.iter().zip(stage_fds).enumerate() {
        let limits = CgroupLimits {
            memory: s.limits.memory.get(),
            // The keeper, this supervisor and the init are tasks of the slot too.
            pids: s.limits.processes + 3,
        };
        let base = cg
            .prepare(limits)
            .map_err(|e| failure("setting the slot's limits", None, error_chain(&e)))?;
        let own_base = own_cpu();
        let stage_no = u8::try_from(i).expect("at most MAX_STAGES stages");
        // The stage's wall time starts before the init is told to fork the program: taken
        // after, it would miss however long the program ran before this process got the CPU
        // back (whole short programs, on a busy machine).
        let start = Instant::now();
        write_all(&cmd_w, &[CMD_STAGE, stage_no]).map_err(io_failure("starting a stage"))?;
        let _ = protocol::write_frame(sock, &Event::StageStarted(u32::from(stage_no)));
        let watch = Watch {
            start,
            own_base,
            cpus: match st.config.cpus_per_run {
                0 => rustix::thread::sched_getaffinity(None)
                    .map_or(1, |s| s.count())
                    .max(1),
                n => n,
            },
            limits: s.limits,
            cg,
            base: &base,
            init: &init,
            report: &rep_r,
            sock,
        };
        let (o, init_alive) = watch.run(in_w, &s.stdin, out_r, err_r)?;
        let ok = o.status() == cod_core::Status::Ok;
        outcome.stages.push(o);
        if !init_alive || !ok {
            break;
        }
    }
    init.kill_and_reap();
    // The PID namespace is gone, so only the keeper and this supervisor remain in the slot's
    // cgroup; check rather than trust.
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    if let Ok(procs) = cg.procs() {
        crate::cgroup::kill_and_wait(procs.into_iter().filter(|&p| p != me && p != slot.keeper));
    }
    Ok(outcome)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn write_all(fd: &OwnedFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn read_report(fd: &OwnedFd) -> io::Result<Option<(u32, i32, i32, i32)>> {
    let mut buf = [0u8; REPORT_LEN];
    let mut got = 0;
    while got < REPORT_LEN {
        match rustix::io::read(fd, &mut buf[got..]) {
            Ok(0) => return Ok(None),
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(init::parse_report(&buf)))
}

fn wait_ready(rep: &OwnedFd, init: &InitProcess, plan: &MountPlan) -> Result<(), Failure> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(failure(
                "building the root filesystem",
                Some(libc::ETIMEDOUT),
                "timed out",
            ));
        }
        let mut fds = [PollFd::new(rep, PollFlags::IN)];
        match poll(&mut fds, Some(&timespec(left))) {
            Ok(0) | Err(Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(errno_failure("waiting for the init")(e)),
        }
        return match read_report(rep).map_err(io_failure("reading the init's report"))? {
            Some((init::REPORT_READY, ..)) => Ok(()),
            Some((init::REPORT_SETUP_FAILED, step, index, errno)) => {
                let step = Step::from_u32(step.cast_unsigned());
                let what = step.map_or("setting up", Step::describe);
                let item = step
                    .map(|s| plan.describe_item(s, index))
                    .unwrap_or_default();
                Err(failure(
                    format!("{what}{item}"),
                    Some(errno),
                    io::Error::from_raw_os_error(errno),
                ))
            }
            Some(other) => Err(failure(
                "waiting for the init",
                None,
                format!("unexpected report {other:?}"),
            )),
            None => {
                let _ = init;
                Err(failure(
                    "building the root filesystem",
                    None,
                    "the init died",
                ))
            }
        };
    }
}

fn timespec(d: Duration) -> rustix::event::Timespec {
    rustix::event::Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
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
struct Watch<'a> {
    /// When the stage was started.
    start: Instant,
    /// This supervisor's own CPU time when `base` was taken: the supervisor shares the slot's
    /// cgroup, and its own work is not the run's.
    own_base: Duration,
    /// How many CPUs the run can use at once (its quota, or the machine's).
    cpus: u32,
    limits: cod_core::Limits,
    cg: &'a SlotCgroup,
    base: &'a Baseline,
    init: &'a InitProcess,
    report: &'a OwnedFd,
    sock: &'a mut UnixStream,
}

/// CPU time this process has used.
fn own_cpu() -> Duration {
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
    fn run(
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
                    self.init.kill();
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
