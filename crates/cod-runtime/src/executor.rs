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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{Instrument, debug, error, info, info_span};

use crate::cache::{Artifact, ArtifactKey, CompileCache, Lookup};
use crate::job::{HostLayout, Job, stage_env};
use crate::language::{Language, Registry};
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
}

fn failure(step: &str, e: impl std::fmt::Display) -> Failure {
    Failure {
        step: step.to_owned(),
        errno: None,
        message: e.to_string(),
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
    mut on_stage: impl FnMut(u32, &StageOutcome, Vec<FileEntry>),
) -> Result<SandboxOutcome, Failure> {
    let slot = spec.slot;
    let frame = protocol::encode(&Request::Run(Box::new(spec)))
        .map_err(|e| failure("encoding the run", e))?;
    match attempt(jail, slot, &frame, &mut on_stage).await {
        Attempt::Lost => match attempt(jail, slot, &frame, &mut on_stage).await {
            Attempt::Done(r) => r,
            Attempt::Lost => Err(failure(
                "the sandbox supervisor ended without a result",
                "the run's socket closed",
            )),
        },
        Attempt::Done(r) => r,
    }
}

enum Attempt {
    /// The run's socket closed before any event: the run never started.
    Lost,
    /// The run ended (or failed after starting).
    Done(Result<SandboxOutcome, Failure>),
}

async fn attempt(
    jail: &Jail,
    slot: u32,
    frame: &[u8],
    on_stage: &mut impl FnMut(u32, &StageOutcome, Vec<FileEntry>),
) -> Attempt {
    let sock = match jail.connect(slot) {
        Ok(s) => s,
        Err(e) => {
            return Attempt::Done(Err(failure("handing the run to the sandbox helper", e)));
        }
    };
    let sock = sock
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(sock));
    let mut sock = match sock {
        Ok(s) => s,
        Err(e) => return Attempt::Done(Err(failure("preparing the run's socket", e))),
    };
    if sock.write_all(frame).await.is_err() {
        return Attempt::Lost;
    }
    let mut started = false;
    loop {
        let mut header = [0u8; 4];
        if let Err(e) = sock.read_exact(&mut header).await {
            return if started {
                Attempt::Done(Err(failure(
                    "the sandbox supervisor ended without a result",
                    e,
                )))
            } else {
                Attempt::Lost
            };
        }
        let event = async {
            let len = protocol::decode_len(header).map_err(|e| failure("reading an event", e))?;
            let mut body = vec![0u8; len];
            sock.read_exact(&mut body)
                .await
                .map_err(|e| failure("reading an event", e))?;
            protocol::decode::<Event>(&body).map_err(|e| failure("decoding an event", e))
        };
        match event.await {
            Ok(Event::Finished(r)) => return Attempt::Done(r),
            Ok(Event::StageStarted(_)) => started = true,
            Ok(Event::StageFinished {
                stage,
                outcome,
                artifacts,
            }) => {
                started = true;
                on_stage(stage, &outcome, artifacts);
            }
            Err(f) => return Attempt::Done(Err(f)),
        }
    }
}

/// What a compile stage leaves worth caching: the program, or the compiler's verdict that
/// the source is wrong. Limits and cod's own failures depend on the moment; not cached.
fn cacheable(job: &Job, outcome: &StageOutcome, artifacts: Vec<FileEntry>) -> Option<Artifact> {
    let compile = stage_report(outcome, &job.compile_limits, "the compiler");
    match outcome.status() {
        Status::Ok if !artifacts.is_empty() => Some(Artifact {
            files: artifacts,
            compile,
        }),
        Status::RuntimeError => Some(Artifact {
            files: Vec::new(),
            compile,
        }),
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
        }
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

    /// Checks a request; errors name the offending field.
    pub fn prepare(&self, req: &RunRequest) -> Result<Job, RequestError> {
        Job::from_request(req, &self.registry, &self.policy)
    }

    /// Runs `job` in worker slot `slot` (which the caller holds exclusively) and reports.
    /// Failures of the sandbox become an `internal_error` result, logged here.
    pub async fn execute(&self, job: &Job, slot: u32) -> RunResult {
        let span = info_span!("run", id = %job.id, language = %job.language.name, slot);
        async {
            let result = match job.cache_key() {
                Some(key) => self.execute_compiled(job, slot, key).await,
                None => {
                    let spec = job.sandbox_spec(slot, &self.host);
                    run_result(job, self.sandbox(spec).await, None)
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

    async fn sandbox(&self, spec: SandboxSpec) -> Result<SandboxOutcome, Failure> {
        let outcome = run_in_jail(&self.jail, spec).await;
        if let Err(f) = &outcome {
            error!(step = %f.step, errno = ?f.errno, error = %f.message, "sandbox failure");
        }
        outcome
    }

    /// A compiled language: from the cache, after an identical compile running now, or
    /// compiled here (and cached).
    async fn execute_compiled(&self, job: &Job, slot: u32, key: ArtifactKey) -> RunResult {
        // An identical compile may be abandoned (its client went away): then claim it.
        for _ in 0..3 {
            match self.cache.lookup_or_claim(key) {
                Lookup::Hit(artifact) => return self.run_cached(job, slot, &artifact).await,
                Lookup::Wait(mut rx) => {
                    debug!(%key, "waiting for an identical compile");
                    let bound =
                        Duration::from_millis(job.compile_limits.wall_ms) + Duration::from_secs(10);
                    let got = tokio::time::timeout(bound, rx.changed()).await;
                    let artifact = rx.borrow().clone();
                    match (got, artifact) {
                        (Ok(Ok(())), Some(a)) => return self.run_cached(job, slot, &a).await,
                        _ => continue,
                    }
                }
                Lookup::Claimed(claim) => {
                    let mut claim = Some(claim);
                    let spec = job.sandbox_spec(slot, &self.host);
                    let outcome =
                        run_in_jail_with(&self.jail, spec, |stage, outcome, artifacts| {
                            if stage != 0 {
                                return;
                            }
                            if let (Some(c), Some(a)) =
                                (claim.take(), cacheable(job, outcome, artifacts))
                            {
                                c.fulfil(a);
                            }
                        })
                        .await;
                    if let Err(f) = &outcome {
                        error!(step = %f.step, errno = ?f.errno, error = %f.message, "sandbox failure");
                    }
                    return run_result(job, outcome, None);
                }
            }
        }
        // Compile without the cache rather than wait any longer.
        let spec = job.sandbox_spec(slot, &self.host);
        run_result(job, self.sandbox(spec).await, None)
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
            }],
            disk: limits.disk.get(),
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
    async fn run_cached(&self, job: &Job, slot: u32, artifact: &Artifact) -> RunResult {
        if artifact.files.is_empty() {
            // A cached compile error: nothing to run.
            return run_result(job, Ok(SandboxOutcome::default()), Some(&artifact.compile));
        }
        let spec = job.cached_spec(slot, &self.host, artifact);
        run_result(job, self.sandbox(spec).await, Some(&artifact.compile))
    }
}
