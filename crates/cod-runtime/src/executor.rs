//! Runs jobs in the sandbox from async code.
//!
//! The executor hands each run to the sandbox helper over a fresh socket and awaits its
//! events on a tokio `UnixStream`. Dropping the future (a client that went away, a cancelled
//! job) closes the socket, and the run's supervisor kills the run.
//!
//! Compiled languages go through the compile cache: a cached program runs at once (one
//! stage); otherwise the sandbox compiles and runs, and hands the compiled files back
//! between the two stages, when they are cached and given to identical jobs waiting.

use std::sync::Arc;
use std::time::Duration;

use cod_core::limits::LimitsPolicy;
use cod_core::run::{RequestError, RunRequest};
use cod_core::{RunResult, Status};
use cod_sandbox::protocol::{self, Event, Failure, Request};
use cod_sandbox::{FileEntry, Jail, SandboxOutcome, SandboxSpec, StageOutcome, StageSpec};
use tokio::io::AsyncWriteExt;
use tracing::{Instrument, debug, error, info, info_span};

use crate::cache::{Artifact, ArtifactKey, CompileCache, Lookup, SharedArtifacts};
use crate::job::{HostLayout, Job, stage_env};
use crate::language::{Language, Registry};
use crate::pool::Pool;
use crate::report::{run_result, stage_report};
use crate::template::{Context, expand};

/// Bytes of compiled programs kept in memory when no cache is configured.
const DEFAULT_CACHE_MEMORY: u64 = 64 << 20;

/// Runs jobs through one sandbox helper.
#[derive(Debug)]
pub struct Executor {
    jail: Arc<Jail>,
    registry: Arc<Registry>,
    policy: LimitsPolicy,
    host: HostLayout,
    cache: Arc<CompileCache>,
    pool: Option<Arc<Pool>>,
    shared: std::sync::OnceLock<Arc<dyn SharedArtifacts>>,
}

fn failure(step: &str, e: impl std::fmt::Display) -> Failure {
    Failure {
        step: step.to_owned(),
        errno: None,
        message: e.to_string(),
    }
}

/// Which stage of a run an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StageKind {
    /// Compiling.
    Compile,
    /// Running the program.
    Run,
}

impl StageKind {
    /// `"compile"` or `"run"`.
    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Compile => "compile",
            StageKind::Run => "run",
        }
    }
}

/// Which output stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// What a run reports while it runs (see [`Executor::execute_streaming`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEvent {
    /// A stage started.
    Stage(StageKind),
    /// Output, as the program wrote it (only what fits the output limit).
    Output {
        /// The stage that wrote it.
        stage: StageKind,
        /// Which stream.
        stream: OutStream,
        /// The bytes (a UTF-8 character may be split between two events).
        data: Vec<u8>,
    },
    /// What the stage has used so far, about every 250 ms while it runs.
    Usage {
        /// The stage.
        stage: StageKind,
        /// CPU time, ms.
        cpu_ms: u64,
        /// Peak memory, KiB.
        memory_kb: u64,
        /// Wall time, ms.
        wall_ms: u64,
    },
}

/// What a caller sends a running program (see [`Executor::execute_streaming`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunInput {
    /// Bytes for its stdin.
    Stdin(Vec<u8>),
    /// End its stdin.
    Close,
    /// Stop the run (its result is marked cancelled).
    Kill,
}

/// A run's event and input channels.
#[derive(Debug)]
pub struct RunIo {
    /// Where events go. A slow receiver slows the program down (its output pipe fills); it
    /// never makes anyone buffer without bound.
    pub events: tokio::sync::mpsc::Sender<RunEvent>,
    /// Where stdin comes from; `None` runs the program with the request's stdin only.
    pub input: Option<tokio::sync::mpsc::Receiver<RunInput>>,
}

impl RunIo {
    /// Marks `spec` for streaming (and an interactive last stage, with input).
    fn apply(&self, spec: &mut SandboxSpec) {
        spec.stream = true;
        if self.input.is_some()
            && let Some(last) = spec.stages.last_mut()
        {
            last.interactive = true;
        }
    }
}

/// Sends `spec` to the sandbox and waits for its outcome.
pub async fn run_in_jail(jail: &Jail, spec: SandboxSpec) -> Result<SandboxOutcome, Failure> {
    run_in_jail_with(jail, spec, |_, _, _| {}).await
}

/// Like [`run_in_jail`], calling `on_stage(stage, outcome, artifacts)` when a stage that
/// collects files ends (before the next stage starts).
///
/// A run whose socket closes before any event never reached a supervisor (the helper died
/// with it queued, and was restarted): it is handed over once more.
pub async fn run_in_jail_with(
    jail: &Jail,
    spec: SandboxSpec,
    on_stage: impl FnMut(u32, &StageOutcome, Vec<FileEntry>),
) -> Result<SandboxOutcome, Failure> {
    run_in_jail_io(jail, spec, on_stage, None).await
}

/// Like [`run_in_jail_with`], streaming events to `io` and its input to the program.
pub async fn run_in_jail_io(
    jail: &Jail,
    mut spec: SandboxSpec,
    mut on_stage: impl FnMut(u32, &StageOutcome, Vec<FileEntry>),
    mut io: Option<&mut RunIo>,
) -> Result<SandboxOutcome, Failure> {
    let slot = spec.slot;
    if let Some(io) = &io {
        io.apply(&mut spec);
    }
    let kinds: Vec<StageKind> = match spec.stages.len() {
        2 => vec![StageKind::Compile, StageKind::Run],
        n => vec![StageKind::Run; n],
    };
    let request = Encoded {
        shared: protocol::shared_fds(&spec).map_err(|e| failure("sharing the run's files", e))?,
        frame: protocol::encode(&Request::Run(Box::new(spec)))
            .map_err(|e| failure("encoding the run", e))?,
    };
    let mut pending = Vec::new();
    for _ in 0..2 {
        match attempt(
            jail,
            slot,
            &request,
            &mut on_stage,
            io.as_deref_mut(),
            &kinds,
            &mut pending,
        )
        .await
        {
            Attempt::Lost => continue,
            Attempt::Done(r) => return r,
        }
    }
    Err(failure(
        "the sandbox supervisor ended without a result",
        "the run's socket closed",
    ))
}

/// A run's request as it goes to the supervisor: the frame, and the descriptors of its
/// spec's shared files, which ride on the frame's length prefix.
struct Encoded {
    frame: Vec<u8>,
    shared: Vec<std::os::fd::OwnedFd>,
}

enum Attempt {
    /// The run's socket closed before any event: the run never started.
    Lost,
    /// The run ended (or failed after starting).
    Done(Result<SandboxOutcome, Failure>),
}

fn micros_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn attempt(
    jail: &Jail,
    slot: u32,
    request: &Encoded,
    on_stage: &mut impl FnMut(u32, &StageOutcome, Vec<FileEntry>),
    mut io: Option<&mut RunIo>,
    kinds: &[StageKind],
    pending: &mut Vec<RunInput>,
) -> Attempt {
    use futures_util::StreamExt as _;
    let sock = match jail.connect(slot) {
        Ok(s) => s,
        Err(e) => {
            return Attempt::Done(Err(failure("handing the run to the sandbox helper", e)));
        }
    };
    // The length prefix carries the shared files' descriptors; the rest follows.
    let Encoded { frame, shared } = request;
    if protocol::send_run_head(std::os::fd::AsFd::as_fd(&sock), frame, shared).is_err() {
        return Attempt::Lost;
    }
    let sock = sock
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(sock));
    let sock = match sock {
        Ok(s) => s,
        Err(e) => return Attempt::Done(Err(failure("preparing the run's socket", e))),
    };
    let (read, mut write) = sock.into_split();
    if write.write_all(&frame[4..]).await.is_err() {
        return Attempt::Lost;
    }
    let mut frames = tokio_util::codec::LengthDelimitedCodec::builder()
        .little_endian()
        .length_field_length(4)
        .max_frame_length(protocol::MAX_FRAME)
        .new_read(read);
    let kind = |i: u32| kinds.get(i as usize).copied().unwrap_or(StageKind::Run);
    let last_stage = u32::try_from(kinds.len().saturating_sub(1)).unwrap_or(0);
    let mut started = false;
    // Input goes to the program once its (interactive) last stage runs; until then it waits.
    let mut input_open = io.as_ref().is_some_and(|io| io.input.is_some());
    let mut stdin_ready = false;
    loop {
        let next_input = async {
            match io.as_mut().and_then(|io| io.input.as_mut()) {
                Some(rx) if input_open => rx.recv().await,
                _ => std::future::pending().await,
            }
        };
        let frame = tokio::select! {
            f = frames.next() => f,
            input = next_input => {
                let input = input.unwrap_or(RunInput::Close);
                if input == RunInput::Close {
                    input_open = false;
                }
                if stdin_ready || input == RunInput::Kill {
                    if send_input(&mut write, &input).await.is_err() {
                        input_open = false;
                    }
                } else {
                    pending.push(input);
                }
                continue;
            }
        };
        let event = match frame {
            Some(Ok(body)) => {
                protocol::decode::<Event>(&body).map_err(|e| failure("decoding an event", e))
            }
            Some(Err(e)) => Err(failure("reading an event", e)),
            None if !started => return Attempt::Lost,
            None => Err(failure(
                "the sandbox supervisor ended without a result",
                "the run's socket closed",
            )),
        };
        let send = |e: RunEvent| {
            let tx = io.as_ref().map(|io| io.events.clone());
            async move {
                if let Some(tx) = tx {
                    // A receiver that went away wants no more events; the run goes on.
                    let _ = tx.send(e).await;
                }
            }
        };
        match event {
            Ok(Event::Finished(r)) => return Attempt::Done(r),
            Ok(Event::StageStarted(i)) => {
                started = true;
                send(RunEvent::Stage(kind(i))).await;
                if i == last_stage && io.as_ref().is_some_and(|io| io.input.is_some()) {
                    stdin_ready = true;
                    for input in std::mem::take(pending) {
                        if send_input(&mut write, &input).await.is_err() {
                            break;
                        }
                    }
                }
            }
            Ok(Event::StageFinished {
                stage,
                outcome,
                artifacts,
            }) => {
                started = true;
                on_stage(stage, &outcome, artifacts);
            }
            Ok(Event::Output {
                stage,
                stream,
                data,
            }) => {
                let stream = if stream == 2 {
                    OutStream::Stderr
                } else {
                    OutStream::Stdout
                };
                send(RunEvent::Output {
                    stage: kind(stage),
                    stream,
                    data,
                })
                .await;
            }
            Ok(Event::Usage {
                stage,
                cpu,
                memory,
                wall,
            }) => {
                send(RunEvent::Usage {
                    stage: kind(stage),
                    cpu_ms: micros_ms(cpu),
                    memory_kb: memory / 1024,
                    wall_ms: micros_ms(wall),
                })
                .await;
            }
            Err(f) => return Attempt::Done(Err(f)),
        }
    }
}

/// Sends one input to the supervisor.
async fn send_input(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    input: &RunInput,
) -> std::io::Result<()> {
    let req = match input {
        RunInput::Stdin(d) => Request::Stdin(d.clone()),
        RunInput::Close => Request::StdinClose,
        RunInput::Kill => Request::Kill,
    };
    let frame = protocol::encode(&req).map_err(std::io::Error::other)?;
    write.write_all(&frame).await
}

/// What a compile stage leaves worth caching: the program, or the compiler's verdict that
/// the source is wrong. Limits and cod's own failures depend on the moment; not cached.
fn cacheable(job: &Job, outcome: &StageOutcome, artifacts: Vec<FileEntry>) -> Option<Artifact> {
    let compile = stage_report(outcome, &job.compile_limits, "the compiler");
    match outcome.status() {
        Status::Ok if !artifacts.is_empty() => Some(Artifact::new(artifacts, compile)),
        Status::RuntimeError => Some(Artifact::new(Vec::new(), compile)),
        _ => None,
    }
}

impl Executor {
    /// An executor using `jail` for the languages of `registry` under `policy`, with a
    /// memory-only compile cache (see [`Executor::with_cache`]).
    pub fn new(jail: Arc<Jail>, registry: Arc<Registry>, policy: LimitsPolicy) -> Executor {
        let host = HostLayout::detect().with_languages(&registry);
        let cache = CompileCache::new(DEFAULT_CACHE_MEMORY, None)
            .expect("a memory-only cache needs no I/O");
        Executor {
            jail,
            registry,
            policy,
            host,
            cache,
            pool: None,
            shared: std::sync::OnceLock::new(),
        }
    }

    /// From now on, looks compiled programs up in `shared` after a local miss, and offers
    /// it every compile (a fleet's workers share their compiles this way). Only the first
    /// call has an effect.
    pub fn share_compiles(&self, shared: Arc<dyn SharedArtifacts>) {
        let _ = self.shared.set(shared);
    }

    /// Uses `cache` for compiled programs.
    pub fn with_cache(mut self, cache: Arc<CompileCache>) -> Executor {
        self.cache = cache;
        self
    }

    /// The languages.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The limits policy.
    pub fn policy(&self) -> &LimitsPolicy {
        &self.policy
    }

    /// The sandbox helper.
    pub fn jail(&self) -> &Arc<Jail> {
        &self.jail
    }

    /// What every run binds from the host (all languages' binds included).
    pub fn host(&self) -> &HostLayout {
        &self.host
    }

    /// The compile cache.
    pub fn cache(&self) -> &Arc<CompileCache> {
        &self.cache
    }

    /// Uses `pool` for the warm runtimes (told of every run, to follow the mix).
    pub fn with_pool(mut self, pool: Arc<Pool>) -> Executor {
        self.pool = Some(pool);
        self
    }

    /// The warm runtime pool, if any.
    pub fn pool(&self) -> Option<&Arc<Pool>> {
        self.pool.as_ref()
    }

    /// Slots that keep `language` warm: the scheduler places its runs there when it can.
    /// Call it once per run as it is queued: the pool counts the run then (see
    /// [`crate::Pool::warm_slots`]).
    pub fn warm_slots(&self, language: &str) -> Vec<u32> {
        self.pool
            .as_ref()
            .map(|p| p.warm_slots(language))
            .unwrap_or_default()
    }

    /// Checks a request; errors name the offending field.
    pub fn prepare(&self, req: &RunRequest) -> Result<Job, RequestError> {
        Job::from_request(req, &self.registry, &self.policy)
    }

    /// Runs `job` in worker slot `slot` (which the caller holds exclusively) and reports.
    /// Failures of the sandbox become an `internal_error` result, logged here.
    pub async fn execute(&self, job: &Job, slot: u32) -> RunResult {
        self.execute_io(job, slot, None).await
    }

    /// Like [`Executor::execute`], sending [`RunEvent`]s as the run goes (stages, output as
    /// the program writes it, usage about every 250 ms) and, with `io.input`, feeding the
    /// program's stdin as the caller sends it (after the request's `stdin`; input sent
    /// during compilation waits for the program). The result still carries the whole
    /// (capped) output.
    pub async fn execute_streaming(&self, job: &Job, slot: u32, io: &mut RunIo) -> RunResult {
        self.execute_io(job, slot, Some(io)).await
    }

    async fn execute_io(&self, job: &Job, slot: u32, mut io: Option<&mut RunIo>) -> RunResult {
        let span = info_span!("run", id = %job.id, language = %job.language.name, slot);
        async {
            let result = match job.cache_key() {
                Some(key) => self.execute_compiled(job, slot, key, io).await,
                None => {
                    let spec = job.sandbox_spec(slot, &self.host);
                    run_result(job, self.sandbox(job, spec, io.as_deref_mut()).await, None)
                }
            };
            info!(
                status = result.run.status.as_str(),
                cached = result.compile.as_ref().is_some_and(|c| c.cached),
                cpu_ms = result.run.cpu_ms,
                wall_ms = result.run.wall_ms,
                memory_kb = result.run.memory_kb,
                "run finished"
            );
            result
        }
        .instrument(span)
        .await
    }

    async fn sandbox(
        &self,
        job: &Job,
        spec: SandboxSpec,
        io: Option<&mut RunIo>,
    ) -> Result<SandboxOutcome, Failure> {
        let slot = spec.slot;
        let outcome = run_in_jail_io(&self.jail, spec, |_, _, _| {}, io).await;
        self.after(job, slot, &outcome);
        outcome
    }

    /// Logs a sandbox failure and tells the pool about the run.
    fn after(&self, job: &Job, slot: u32, outcome: &Result<SandboxOutcome, Failure>) {
        match outcome {
            Err(f) => {
                error!(step = %f.step, errno = ?f.errno, error = %f.message, "sandbox failure");
            }
            Ok(o) => {
                if let Some(pool) = &self.pool {
                    pool.record(&job.language.name, slot, o.warm.as_ref());
                }
            }
        }
    }

    /// A compiled language: from the cache, after an identical compile running now, or
    /// compiled here (and cached).
    async fn execute_compiled(
        &self,
        job: &Job,
        slot: u32,
        key: ArtifactKey,
        mut io: Option<&mut RunIo>,
    ) -> RunResult {
        // An identical compile may be abandoned (its client went away): then claim it.
        for _ in 0..3 {
            match self.cache.lookup_or_claim(key) {
                Lookup::Hit(artifact) => return self.run_cached(job, slot, &artifact, io).await,
                Lookup::Wait(mut rx) => {
                    debug!(%key, "waiting for an identical compile");
                    let bound =
                        Duration::from_millis(job.compile_limits.wall_ms) + Duration::from_secs(10);
                    let got = tokio::time::timeout(bound, rx.changed()).await;
                    let artifact = rx.borrow().clone();
                    match (got, artifact) {
                        (Ok(Ok(())), Some(a)) => return self.run_cached(job, slot, &a, io).await,
                        _ => continue,
                    }
                }
                Lookup::Claimed(claim) => {
                    if let Some(shared) = self.shared.get()
                        && let Some(a) = shared.fetch(key).await
                    {
                        debug!(%key, "compiled program from the shared cache");
                        self.cache
                            .stats
                            .shared_hits
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let a = Arc::new(a);
                        claim.fulfil((*a).clone());
                        return self.run_cached(job, slot, &a, io).await;
                    }
                    let mut claim = Some(claim);
                    let spec = job.sandbox_spec(slot, &self.host);
                    let on_stage = |stage, outcome: &StageOutcome, artifacts| {
                        if stage != 0 {
                            return;
                        }
                        if let (Some(c), Some(a)) =
                            (claim.take(), cacheable(job, outcome, artifacts))
                        {
                            if let Some(shared) = self.shared.get() {
                                shared.offer(key, Arc::new(a.clone()));
                            }
                            c.fulfil(a);
                        }
                    };
                    let outcome =
                        run_in_jail_io(&self.jail, spec, on_stage, io.as_deref_mut()).await;
                    self.after(job, slot, &outcome);
                    return run_result(job, outcome, None);
                }
            }
        }
        // Compile without the cache rather than wait any longer.
        let spec = job.sandbox_spec(slot, &self.host);
        run_result(job, self.sandbox(job, spec, io).await, None)
    }

    /// Builds `lang`'s prebuild (a precompiled header, a class-data archive) in slot `slot`
    /// unless it exists; returns whether it built it. The build runs in the sandbox with
    /// the compile limits, and its files are installed by rename, so compiles see all of
    /// them or none.
    pub async fn prebuild(&self, lang: &Language, slot: u32) -> Result<bool, String> {
        let Some((p, dir)) = lang.prebuild() else {
            return Ok(false);
        };
        if lang.prebuilt_ready() {
            return Ok(false);
        }
        let limits = self.policy.compile.to_limits();
        let ctx = Context {
            source: "",
            sources: &[],
            args: &[],
            main: "",
            memory_bytes: limits.memory.get(),
        };
        let compile_env = lang
            .compile
            .as_ref()
            .map(|c| c.env.clone())
            .unwrap_or_default();
        let spec = SandboxSpec {
            slot,
            binds: self.host.binds().to_vec(),
            symlinks: self.host.symlinks().to_vec(),
            shared: Vec::new(),
            files: p
                .sources
                .iter()
                .map(|(name, text)| FileEntry {
                    name: name.clone(),
                    content: text.clone().into_bytes(),
                    executable: false,
                })
                .collect(),
            stages: vec![StageSpec {
                argv: expand(&p.command, &ctx),
                env: stage_env(lang, &compile_env),
                limits,
                stdin: Vec::new(),
                collect: p.artifacts.clone(),
                warm: None,
                interactive: false,
            }],
            disk: limits.disk.get(),
            stream: false,
        };
        let mut collected = None;
        let outcome = run_in_jail_with(&self.jail, spec, |_, outcome, artifacts| {
            collected = Some((outcome.status(), outcome.stderr.clone(), artifacts));
        })
        .await
        .map_err(|f| f.to_string())?;
        let Some((Status::Ok, _, artifacts)) = collected else {
            let why = outcome
                .stages
                .first()
                .map(|s| format!("{:?}: {}", s.status(), String::from_utf8_lossy(&s.stderr)))
                .unwrap_or_default();
            return Err(format!("the build failed: {why}"));
        };
        if artifacts.len() != p.artifacts.len() {
            return Err(format!(
                "the build left {} of its {} files",
                artifacts.len(),
                p.artifacts.len()
            ));
        }
        let base = p
            .into
            .as_ref()
            .map_or(dir.host.clone(), |i| dir.host.join(i));
        for a in artifacts {
            let mut tmp = tempfile::NamedTempFile::new_in(&base).map_err(|e| e.to_string())?;
            std::io::Write::write_all(&mut tmp, &a.content).map_err(|e| e.to_string())?;
            // Readable by the sandboxed compiler (temporary files start as 0600).
            tmp.as_file()
                .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .map_err(|e| e.to_string())?;
            tmp.persist(base.join(&a.name)).map_err(|e| e.to_string())?;
        }
        Ok(true)
    }

    /// Runs `job` with a cached compile.
    async fn run_cached(
        &self,
        job: &Job,
        slot: u32,
        artifact: &Artifact,
        io: Option<&mut RunIo>,
    ) -> RunResult {
        if artifact.files.is_empty() {
            // A cached compile error: nothing to run.
            return run_result(job, Ok(SandboxOutcome::default()), Some(&artifact.compile));
        }
        let spec = job.cached_spec(slot, &self.host, artifact);
        run_result(
            job,
            self.sandbox(job, spec, io).await,
            Some(&artifact.compile),
        )
    }
}

/// What [`Executor::compile_ahead`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompileAhead {
    /// The job's language does not compile (or declares nothing to cache): nothing to do.
    NotCompiled,
    /// The cache already held this compile: the compiler's report from then.
    Cached(cod_core::StageReport),
    /// An identical compile is running now (another run, another editor); it fills the
    /// cache. This call did not wait for it.
    InProgress,
    /// Compiled now and cached: the program, or the compiler's errors (`status` is then
    /// `runtime_error`, as for a run's compile stage).
    Compiled(cod_core::StageReport),
    /// Compiled now, but nothing was cached: the compiler passed a limit, or the sandbox
    /// failed. A run of the job compiles again.
    NotCached(cod_core::StageReport),
}

impl Executor {
    /// Compiles `job`'s sources into the compile cache in slot `slot` (which the caller holds
    /// exclusively) without running the program, so that a later [`Executor::execute`] of
    /// the same sources finds the program built (`compile.cached: true`). Dropping the
    /// future kills the compile; the cache is then left without the entry, and anyone
    /// waiting for it compiles by themselves.
    pub async fn compile_ahead(&self, job: &Job, slot: u32) -> CompileAhead {
        let Some(key) = job.cache_key() else {
            return CompileAhead::NotCompiled;
        };
        let claim = match self.cache.lookup_or_claim(key) {
            Lookup::Hit(artifact) => return CompileAhead::Cached(artifact.compile.clone()),
            Lookup::Wait(_) => return CompileAhead::InProgress,
            Lookup::Claimed(claim) => claim,
        };
        let span = info_span!("compile_ahead", id = %job.id, language = %job.language.name, slot);
        async {
            let mut spec = job.sandbox_spec(slot, &self.host);
            // The compile stage alone: the program is not run.
            spec.stages.truncate(1);
            let mut claim = Some(claim);
            let mut report = None;
            let outcome = run_in_jail_with(&self.jail, spec, |stage, outcome, artifacts| {
                if stage != 0 {
                    return;
                }
                report = Some(stage_report(outcome, &job.compile_limits, "the compiler"));
                if let (Some(c), Some(a)) = (claim.take(), cacheable(job, outcome, artifacts)) {
                    c.fulfil(a);
                }
            })
            .await;
            let cached = claim.is_none();
            let report = match (outcome, report) {
                (_, Some(r)) => r,
                (Ok(o), None) => o
                    .stages
                    .first()
                    .map(|s| stage_report(s, &job.compile_limits, "the compiler"))
                    .unwrap_or_default(),
                (Err(f), None) => {
                    error!(step = %f.step, errno = ?f.errno, error = %f.message, "sandbox failure");
                    cod_core::StageReport {
                        status: Status::InternalError,
                        message: Some(format!("compiling ahead failed: {}", f.message)),
                        ..Default::default()
                    }
                }
            };
            info!(
                status = report.status.as_str(),
                cached,
                wall_ms = report.wall_ms,
                "compiled ahead"
            );
            if cached {
                CompileAhead::Compiled(report)
            } else {
                CompileAhead::NotCached(report)
            }
        }
        .instrument(span)
        .await
    }
}
