//! The supervisor: one process per run, forked by the slot's keeper, outside the run's
//! namespaces.
//!
//! It reads the run's spec from the caller's socket, prepares a sandbox (see `sandbox.rs`),
//! hands the init the run's files, and drives the stages one by one (see `watch.rs`),
//! reporting each stage's outcome. Everything the init needs is prepared here so that the
//! init never allocates.

use std::fmt::Display;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::SendFlags;
use rustix::pipe::{PipeFlags, pipe_with};
use rustix::process::Resource;

use crate::cgroup::{CgroupLimits, CgroupTree, SlotCgroup};
use crate::client::JailConfig;
use crate::init;
use crate::keeper::{EXIT_COLD_WANTED, EXIT_WARM, EXIT_WARM_DOUBT};
use crate::protocol::{self, Event, Failure, Request};
use crate::sandbox::{Sandbox, ZygoteHandle};
use crate::seccomp::SeccompPolicy;
use crate::spec::{Layout, MAX_STAGES, SandboxOutcome, SandboxSpec, StageOutcome, StageSpec};
use crate::sys;
use crate::watch::{Inbox, Watch, own_cpu};

/// How long a caller may take to send the spec after connecting.
const SPEC_TIMEOUT: Duration = Duration::from_secs(30);

/// What the helper prepared once and every supervisor inherits.
pub(crate) struct HelperState {
    pub(crate) config: JailConfig,
    pub(crate) cgroups: CgroupTree,
    pub(crate) seccomp: SeccompPolicy,
    pub(crate) staging_root: PathBuf,
    pub(crate) staging_scratch: PathBuf,
    /// The CPUs the helper may use, as it started: programs run on all of them.
    pub(crate) cpus: rustix::thread::CpuSet,
}

impl HelperState {
    /// Whether each slot's own processes keep to one CPU (see `JailConfig::pin_slots`):
    /// only in a jail with a slot for every CPU, since several small jails on one machine
    /// (fleet workers of one slot, say) would otherwise all hold their slot 0 to one CPU.
    pub(crate) fn pins_slots(&self) -> bool {
        self.config.pin_slots && self.config.slots >= self.cpus.count()
    }
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

pub(crate) fn failure(step: impl Into<String>, errno: Option<i32>, cause: impl Display) -> Failure {
    Failure {
        step: step.into(),
        errno,
        message: cause.to_string(),
    }
}

pub(crate) fn io_failure(step: impl Into<String>) -> impl FnOnce(io::Error) -> Failure {
    let step = step.into();
    move |e| failure(step, e.raw_os_error(), e)
}

pub(crate) fn errno_failure(step: impl Into<String>) -> impl FnOnce(Errno) -> Failure {
    let step = step.into();
    move |e| failure(step, Some(e.raw_os_error()), io::Error::from(e))
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub(crate) fn timespec(d: Duration) -> rustix::event::Timespec {
    rustix::event::Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

/// The supervisor's main function for one run; never returns. `prepared` is a sandbox made
/// ahead of the run, used when the spec's layout matches it.
///
/// `zygotes` are the slot's ready warm runtimes; the exit code tells the keeper whether one
/// was used and how it went (see `keeper::EXIT_WARM`).
pub(crate) fn supervise(
    conn: std::os::fd::OwnedFd,
    state: &HelperState,
    slot: &SlotContext<'_>,
    prepared: Option<Sandbox>,
    zygotes: Vec<ZygoteHandle>,
    zygote_pids: &[i32],
) -> ! {
    let mut prepared = prepared;
    let code = supervise_one(conn, state, slot, &mut prepared, zygotes, zygote_pids);
    drop(prepared);
    sys::exit_now(code.code())
}

/// How a run went, for the keeper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Served {
    /// Nothing ran (the caller went away before sending a spec, or sent a bad one).
    Nothing,
    /// A cold run: its sandbox is gone.
    Cold,
    /// Warm runtime `i`, started ahead in the prepared sandbox, ran it (and is gone).
    Prestarted(i32),
    /// Warm runtime `i` ran it and is fine; this supervisor may take another run.
    Warm(i32),
    /// Warm runtime `i` misbehaved; the run went cold.
    WarmDoubt(i32),
    /// A cold run of warm runtime `i` (one started ahead), which the prepared sandbox did
    /// not hold: the slot should start that one ahead next.
    ColdWanted(i32),
}

impl Served {
    /// The supervisor's exit code for this outcome.
    pub(crate) fn code(self) -> i32 {
        match self {
            Served::Nothing | Served::Cold => 0,
            Served::Warm(i) | Served::Prestarted(i) => EXIT_WARM + i,
            Served::WarmDoubt(i) => EXIT_WARM_DOUBT + i,
            Served::ColdWanted(i) => EXIT_COLD_WANTED + i,
        }
    }
}

/// Serves one run; returns how it went. A prepared sandbox that the run used is taken
/// from `prepared` (and gone once this returns); one the run did not use stays.
pub(crate) fn supervise_one(
    conn: std::os::fd::OwnedFd,
    state: &HelperState,
    slot: &SlotContext<'_>,
    prepared: &mut Option<Sandbox>,
    zygotes: Vec<ZygoteHandle>,
    zygote_pids: &[i32],
) -> Served {
    let mut sock = UnixStream::from(conn);
    let spec = match read_spec(&mut sock) {
        Ok(Some(spec)) => spec,
        Ok(None) => return Served::Nothing,
        Err(f) => {
            let _ = protocol::write_frame(&mut sock, &Event::Finished(Err(f)));
            return Served::Nothing;
        }
    };
    // The sandbox outlives the answer: tearing its namespaces down takes a while and the
    // caller need not wait for it. The slot's keeper hands out its next run only once this
    // one is cleaned up, so that run still starts on a clean slot.
    let mut used = None;
    // The zygote that served the run, told to park the next one once the run is over.
    let mut park = None;
    // A zygote run's pipe that ends once the run's memory is freed.
    let mut last_run = None;
    let (result, served) = match pick_zygote(&spec, state, zygotes) {
        Some(z) => {
            let index = i32::try_from(z.index).unwrap_or(0);
            let zygote_cmd = z.cmd.try_clone().ok();
            let result = run_warm(&spec, state, slot, &mut sock, z, &mut last_run);
            if zygote_failed(&result) {
                // The zygote died or misbehaved (its keeper replaces it): the run is not
                // lost, it runs again the usual way.
                let fitting = prepared.take().filter(|p| p.fits(&spec));
                let cold = run(&spec, state, slot, &mut sock, fitting, &mut used);
                (cold, Served::WarmDoubt(index))
            } else {
                park = zygote_cmd;
                (result, Served::Warm(index))
            }
        }
        None => match prestarted_for(prepared.as_ref(), &spec, state) {
            // The program is started already in the prepared sandbox.
            Some((index, idle_memory)) => {
                let mut result = run(&spec, state, slot, &mut sock, prepared.take(), &mut used);
                if result.is_err() {
                    // It could not take the run (it died waiting, say): run it the usual
                    // way in a fresh sandbox, and the run is not lost.
                    if let Some(mut s) = used.take() {
                        s.init.kill_and_reap();
                    }
                    let cold = run(&spec, state, slot, &mut sock, None, &mut used);
                    return finish_run(
                        sock,
                        cold,
                        Served::WarmDoubt(i32::try_from(index).unwrap_or(0)),
                        used,
                        prepared,
                        slot,
                        zygote_pids,
                    );
                }
                if let Ok(o) = &mut result {
                    o.warm = Some(crate::spec::WarmUse {
                        runtime: state.config.warm[index].name.clone(),
                        idle_memory,
                    });
                }
                (
                    result,
                    Served::Prestarted(i32::try_from(index).unwrap_or(0)),
                )
            }
            None => {
                // A program started ahead for another run is ended: the sandbox is still
                // ready for this one. (A prepared sandbox that does not fit is dropped here,
                // killing its init.)
                let fitting = prepared
                    .take()
                    .filter(|p| p.layout_fits(&spec))
                    .and_then(|mut p| p.drop_prestarted().ok().map(|()| p))
                    .filter(|p| p.fits(&spec));
                let served = match started_ahead_kind(&spec, state) {
                    Some(i) => Served::ColdWanted(i32::try_from(i).unwrap_or(0)),
                    None => Served::Cold,
                };
                (
                    run(&spec, state, slot, &mut sock, fitting, &mut used),
                    served,
                )
            }
        },
    };
    let served = finish_run(sock, result, served, used, prepared, slot, zygote_pids);
    // The run is accounted for and the slot checked: the zygote may start the next run's
    // processes now.
    if let Some(cmd) = park {
        let _ = rustix::net::send(&cmd, &[init::CMD_PARK], SendFlags::NOSIGNAL);
    }
    // The run's memory is unmapped after its result went out (see `zygote.rs`): the slot
    // takes its next run once that is done, so that it is in none of that run's limits or
    // figures.
    if let Some(freed) = last_run {
        let _ = sys::wait_readable(&freed, RUN_MEMORY_FREED_WAIT);
    }
    served
}

/// How long a supervisor waits for a zygote run's memory to be freed after the result went
/// out (the pipe it holds then has no writer left): unmapping takes about a millisecond per
/// 10 MiB.
const RUN_MEMORY_FREED_WAIT: Duration = Duration::from_secs(30);

/// Sends the result, then tears down the run's sandbox and checks the slot.
fn finish_run(
    mut sock: UnixStream,
    result: Result<SandboxOutcome, Failure>,
    served: Served,
    used: Option<Sandbox>,
    prepared: &Option<Sandbox>,
    slot: &SlotContext<'_>,
    zygote_pids: &[i32],
) -> Served {
    let _ = protocol::write_frame(&mut sock, &Event::Finished(result));
    drop(sock);
    if let Some(mut sandbox) = used {
        sandbox.init.kill_and_reap();
    }
    // The prepared sandbox a warm run left unused is this supervisor's, not a leftover:
    // its init and the program started ahead in it (its PID namespace).
    let mut ours = zygote_pids.to_vec();
    ours.extend(prepared.as_ref().map(|p| p.init.pid()));
    let keep_ns = prepared.as_ref().and_then(|p| pid_namespace(p.init.pid()));
    kill_leftovers(slot, &ours, keep_ns);
    served
}

/// The PID namespace `pid` lives in (the inode of `/proc/PID/ns/pid`).
fn pid_namespace(pid: i32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|m| m.ino())
}

/// Whether a run in a zygote failed because of the zygote rather than the program: cod
/// could not start it there, or the zygote vanished before reporting how it ended.
fn zygote_failed(result: &Result<SandboxOutcome, Failure>) -> bool {
    match result {
        Err(_) => true,
        Ok(o) => o.stages.first().is_none_or(|s| {
            s.exit == crate::spec::Exit::Unknown
                && s.exec_errno.is_none()
                && s.limit.is_none()
                && !s.cancelled
        }),
    }
}

/// The runtime index (and its idle memory) of the program started ahead in `prepared`, if
/// `spec` is a run of it: one stage naming its runtime and program, the same layout and
/// environment.
fn prestarted_for(
    prepared: Option<&Sandbox>,
    spec: &SandboxSpec,
    st: &HelperState,
) -> Option<(usize, u64)> {
    let p = prepared?;
    let pre = p.prestarted.as_ref()?;
    let w = st.config.warm.get(pre.index)?;
    let [stage] = spec.stages.as_slice() else {
        return None;
    };
    let options = match &w.kind {
        crate::spec::WarmKind::Prestart { options, .. } => options.as_slice(),
        crate::spec::WarmKind::Python { .. } => &[],
    };
    let fits = stage.warm.as_deref() == Some(w.name.as_str())
        && stage.argv.first().map(String::as_str) == Some(w.program())
        && stage.argv.get(1..=options.len()) == Some(options)
        && stage.env == w.env
        && p.layout_fits(spec);
    fits.then_some((pre.index, pre.idle_memory))
}

/// The warm runtime started ahead (not a zygote) that `spec`'s single stage names, if any.
fn started_ahead_kind(spec: &SandboxSpec, st: &HelperState) -> Option<usize> {
    let [stage] = spec.stages.as_slice() else {
        return None;
    };
    let name = stage.warm.as_deref()?;
    st.config
        .warm
        .iter()
        .position(|w| w.name == name && !w.forks())
}

/// The zygote that can take `spec`, if any.
fn pick_zygote(
    spec: &SandboxSpec,
    st: &HelperState,
    zygotes: Vec<ZygoteHandle>,
) -> Option<ZygoteHandle> {
    let [stage] = spec.stages.as_slice() else {
        return None;
    };
    let name = stage.warm.as_deref()?;
    let index = st.config.warm.iter().position(|w| {
        w.name == name
            && w.layout.binds == spec.binds
            && w.layout.symlinks == spec.symlinks
            && stage.argv.first().map(String::as_str) == Some(w.program())
    })?;
    zygotes
        .into_iter()
        .find(|z| usize::try_from(z.index).ok() == Some(index))
}

/// Kills what is left in the slot's cgroup after a run: anything but cod's own processes
/// (this supervisor, the keeper, the slot's zygotes and the runs they parked). The run's PID
/// namespace is gone by then, so this finds nothing unless something escaped it: check
/// rather than trust.
///
/// A zygote's child is the `G` of a run (pid 1 of its PID namespace), and a child of that
/// is its `H` (or the holder of `H`'s memory): a warm run's `G` has killed and reaped
/// everything else of its run before the zygote reports, so what is there now is a run
/// parked for later, or the last run's holder, killed and freeing its memory.
fn kill_leftovers(slot: &SlotContext<'_>, zygote_pids: &[i32], keep_ns: Option<u64>) {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    if let Ok(procs) = slot.cgroup.procs() {
        let parked = |p: i32| {
            let g = parent(p);
            g.is_some_and(|g| zygote_pids.contains(&g))
                || g.and_then(parent).is_some_and(|z| zygote_pids.contains(&z))
        };
        crate::cgroup::kill_and_wait(procs.into_iter().filter(|p| {
            *p != me
                && *p != slot.keeper
                && !zygote_pids.contains(p)
                && (keep_ns.is_none() || pid_namespace(*p) != keep_ns)
                && !parked(*p)
        }));
    }
}

/// The parent of `pid` (from `/proc/PID/stat`), if it still exists.
fn parent(pid: i32) -> Option<i32> {
    sys::proc_stat(pid)?.split_whitespace().nth(1)?.parse().ok()
}

/// Runs a single-stage spec in a zygote (see `zygote.rs`).
fn run_warm(
    spec: &SandboxSpec,
    st: &HelperState,
    slot: &SlotContext<'_>,
    sock: &mut UnixStream,
    zygote: ZygoteHandle,
    last_run: &mut Option<OwnedFd>,
) -> Result<SandboxOutcome, Failure> {
    validate(spec, slot.slot)?;
    let index = zygote.index as usize;
    let mut sandbox = Sandbox::borrow_zygote(zygote, st.config.warm[index].layout.clone());
    sandbox.drain_stale();
    sandbox.set_disk(spec.disk)?;
    sandbox.put_files(&spec.files)?;
    sandbox.put_shared(&spec.shared)?;
    let mut outcome = SandboxOutcome::default();
    let mut inbox = Inbox::default();
    let (o, _) = run_stage(
        &mut sandbox,
        st,
        slot,
        spec,
        0,
        &spec.stages[0],
        sock,
        &mut inbox,
    )?;
    outcome.stages.push(o);
    *last_run = sandbox.last_run.take();
    outcome.warm = Some(crate::spec::WarmUse {
        runtime: st.config.warm[index].name.clone(),
        idle_memory: sandbox.zygote_idle_memory,
    });
    Ok(outcome)
}

fn read_spec(sock: &mut UnixStream) -> Result<Option<SandboxSpec>, Failure> {
    sock.set_read_timeout(Some(SPEC_TIMEOUT))
        .map_err(io_failure("setting a read timeout"))?;
    let req = protocol::read_run_request(sock)
        .map_err(|e| failure("reading the run request", None, e))?;
    sock.set_read_timeout(None)
        .map_err(io_failure("clearing the read timeout"))?;
    match req {
        None => Ok(None),
        Some(Request::Run(spec)) => Ok(Some(*spec)),
        Some(Request::Kill | Request::Stdin(_) | Request::StdinClose) => Ok(None),
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
        if s.argv.iter().chain(&s.env).any(|a| a.contains('\0')) {
            return Err(bad(format!(
                "stage {i}: argv and env must not contain NUL bytes"
            )));
        }
        if s.argv.len() > init::MAX_ARGS || s.env.len() > init::MAX_ENV {
            return Err(bad(format!(
                "stage {i}: at most {} arguments and {} environment entries",
                init::MAX_ARGS,
                init::MAX_ENV
            )));
        }
        if s.limits.cpu.is_zero() || s.limits.wall.is_zero() || s.limits.memory.get() == 0 {
            return Err(bad(format!("stage {i}: limits must be positive")));
        }
    }
    Ok(())
}

/// Caps `want` at the hard limit this process has (raising it would need privileges in the
/// initial user namespace).
fn rlimit(res: Resource, want: u64) -> (Resource, u64) {
    let max = rustix::process::getrlimit(res).maximum.unwrap_or(u64::MAX);
    (res, want.min(max))
}

fn stage_rlimits(s: &StageSpec, disk: u64, config: &JailConfig) -> Vec<(Resource, u64)> {
    // RLIMIT_CPU is per process; the cgroup watch is the real limit, this is a backstop.
    let cpu_secs = s.limits.cpu.as_secs() + 2;
    vec![
        rlimit(Resource::Cpu, cpu_secs),
        rlimit(Resource::Fsize, disk.max(1 << 20)),
        rlimit(Resource::Nofile, config.open_files),
        rlimit(Resource::Stack, config.stack),
        rlimit(Resource::Core, 0),
        rlimit(Resource::Memlock, 0),
    ]
}

/// Limits a program started ahead begins with: the largest any run may have (its run then
/// lowers them to its own, which needs no privilege).
pub(crate) fn prestart_rlimits(config: &JailConfig) -> Vec<(Resource, u64)> {
    vec![
        rlimit(Resource::Cpu, u64::MAX),
        rlimit(Resource::Fsize, u64::MAX),
        rlimit(Resource::Nofile, config.open_files),
        rlimit(Resource::Stack, config.stack),
        rlimit(Resource::Core, 0),
        rlimit(Resource::Memlock, 0),
    ]
}

/// Runs the whole sandbox.
fn run(
    spec: &SandboxSpec,
    st: &HelperState,
    slot: &SlotContext<'_>,
    sock: &mut UnixStream,
    prepared: Option<Sandbox>,
    used: &mut Option<Sandbox>,
) -> Result<SandboxOutcome, Failure> {
    validate(spec, slot.slot)?;
    let sandbox = match prepared {
        Some(p) => p,
        None => Sandbox::prepare(st, slot, Layout::of(spec), &[sock.as_raw_fd()])?,
    };
    let sandbox = used.insert(sandbox);
    sandbox.set_disk(spec.disk)?;
    sandbox.put_files(&spec.files)?;
    sandbox.put_shared(&spec.shared)?;
    let mut outcome = SandboxOutcome::default();
    let mut inbox = Inbox::default();
    for (i, stage) in spec.stages.iter().enumerate() {
        let (o, init_alive) = run_stage(sandbox, st, slot, spec, i, stage, sock, &mut inbox)?;
        let ok = o.status() == cod_core::Status::Ok;
        outcome.stages.push(o);
        if !init_alive {
            // Killed (a limit, or the caller): its processes die with the init's namespace,
            // which takes a moment; none of them outlives the answer. (A run that ended on
            // its own left none: the init killed and reaped them before reporting.)
            sandbox.init.kill_and_reap();
            break;
        }
        if !ok {
            break;
        }
    }
    Ok(outcome)
}

/// Runs stage `i` in the prepared sandbox and watches it.
#[allow(clippy::too_many_arguments)]
fn run_stage(
    sandbox: &mut Sandbox,
    st: &HelperState,
    slot: &SlotContext<'_>,
    spec: &SandboxSpec,
    i: usize,
    stage: &StageSpec,
    sock: &mut UnixStream,
    inbox: &mut Inbox,
) -> Result<(StageOutcome, bool), Failure> {
    let cg = slot.cgroup;
    // A process the init forked ahead for this stage is the program's already.
    let forked_ahead = std::mem::take(&mut sandbox.parked_program);
    let limits = CgroupLimits {
        memory: stage.limits.memory.get(),
        // On top of the tasks already in the slot (keeper, this supervisor, the init).
        pids: stage.limits.processes - u64::from(forked_ahead && stage.limits.processes > 0),
    };
    // A program started ahead may still be starting: its start-up is not the run's.
    if let Some(pre) = &sandbox.prestarted {
        Sandbox::wait_prestarted(pre)?;
    }
    let base = cg
        .prepare(limits)
        .map_err(|e| failure("setting the slot's limits", None, error_chain(&e)))?;
    let own_base = own_cpu();
    let rlimits = stage_rlimits(stage, spec.disk, &st.config);
    let (start, in_w, out_r, err_r) = match sandbox.prestarted.take() {
        // The program is running already, waiting for its arguments.
        Some(pre) => {
            let start = Instant::now();
            sandbox.go(pre.args, &rlimits, &stage.argv)?;
            (start, pre.stdin, pre.stdout, pre.stderr)
        }
        None => {
            let pipe = || pipe_with(PipeFlags::CLOEXEC).map_err(errno_failure("creating a pipe"));
            let ((in_r, in_w), (out_r, out_w), (err_r, err_w)) = (pipe()?, pipe()?, pipe()?);
            let plan = init::encode_plan(&rlimits, &stage.argv, &stage.env);
            // The stage's wall time starts before the init is told to fork the program:
            // taken after, it would miss however long the program ran before this process
            // got the CPU back (whole short programs, on a busy machine).
            let start = Instant::now();
            sandbox.start_stage(&plan, [in_r.as_fd(), out_w.as_fd(), err_w.as_fd()])?;
            drop((in_r, out_w, err_w));
            (start, in_w, out_r, err_r)
        }
    };
    // A zygote answers with a pidfd of the run's own init, which is what a limit kills.
    let run_init = if sandbox.is_zygote() {
        sandbox.stage_started()?
    } else {
        None
    };
    let stage_no = u32::try_from(i).expect("at most MAX_STAGES stages");
    let _ = protocol::write_frame(sock, &Event::StageStarted(stage_no));
    let watch = Watch {
        start,
        own_base,
        cpus: match st.config.cpus_per_run {
            // The helper's CPUs: this supervisor may be held to its slot's one.
            0 => st.cpus.count().max(1),
            n => n,
        },
        limits: stage.limits,
        cg,
        base: &base,
        init: &sandbox.init,
        kill: run_init.as_ref().map(|(pidfd, _)| pidfd),
        report: &sandbox.report,
        sock,
        files: &spec.files,
        shared: &spec.shared,
        stage: stage_no,
        stream: spec.stream,
        interactive: stage.interactive,
        inbox,
    };
    let (outcome, alive) = watch.run(in_w, &stage.stdin, out_r, err_r)?;
    sandbox.last_run = run_init.map(|(_, freed)| freed);
    if !stage.collect.is_empty() {
        // Artifacts of a successful stage only; a failed collection (too large, say) hands
        // back none, and the caller then has nothing to cache.
        let artifacts = if outcome.status() == cod_core::Status::Ok {
            crate::artifacts::collect(sandbox.init.pid(), &stage.collect).unwrap_or_default()
        } else {
            Vec::new()
        };
        let _ = protocol::write_frame(
            sock,
            &Event::StageFinished {
                stage: stage_no,
                outcome: Box::new(outcome.clone()),
                artifacts,
            },
        );
    }
    Ok((outcome, alive))
}
