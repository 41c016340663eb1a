//! Runs jobs in the sandbox from async code.
//!
//! The executor hands each run to the sandbox helper over a fresh socket and awaits its
//! events on a tokio `UnixStream`. Dropping the future (a client that went away, a cancelled
//! job) closes the socket, and the run's supervisor kills the run.

use std::sync::Arc;

use cod_core::RunResult;
use cod_core::limits::LimitsPolicy;
use cod_core::run::{RequestError, RunRequest};
use cod_sandbox::protocol::{self, Event, Failure, Request};
use cod_sandbox::{Jail, SandboxOutcome, SandboxSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{Instrument, error, info, info_span};

use crate::job::{HostLayout, Job};
use crate::language::Registry;
use crate::report::run_result;

/// Runs jobs through one sandbox helper.
#[derive(Debug)]
pub struct Executor {
    jail: Arc<Jail>,
    registry: Arc<Registry>,
    policy: LimitsPolicy,
    host: HostLayout,
}

fn failure(step: &str, e: impl std::fmt::Display) -> Failure {
    Failure {
        step: step.to_owned(),
        errno: None,
        message: e.to_string(),
    }
}

/// Sends `spec` to the sandbox and waits for its outcome. A run whose socket closes before
/// any event never reached a supervisor (the helper died with it queued, and was restarted):
/// it is handed over once more.
pub async fn run_in_jail(jail: &Jail, spec: SandboxSpec) -> Result<SandboxOutcome, Failure> {
    let slot = spec.slot;
    let frame = protocol::encode(&Request::Run(Box::new(spec)))
        .map_err(|e| failure("encoding the run", e))?;
    match attempt(jail, slot, &frame).await {
        Attempt::Lost => match attempt(jail, slot, &frame).await {
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

async fn attempt(jail: &Jail, slot: u32, frame: &[u8]) -> Attempt {
    let sock = match jail.connect(slot) {
        Ok(s) => s,
        Err(e) => return Attempt::Done(Err(failure("handing the run to the sandbox helper", e))),
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
            Err(f) => return Attempt::Done(Err(f)),
        }
    }
}

impl Executor {
    /// An executor using `jail` for the languages of `registry` under `policy`.
    pub fn new(jail: Arc<Jail>, registry: Arc<Registry>, policy: LimitsPolicy) -> Executor {
        let host = HostLayout::detect().with_languages(&registry);
        Executor {
            jail,
            registry,
            policy,
            host,
        }
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

    /// Checks a request; errors name the offending field.
    pub fn prepare(&self, req: &RunRequest) -> Result<Job, RequestError> {
        Job::from_request(req, &self.registry, &self.policy)
    }

    /// Runs `job` in worker slot `slot` (which the caller holds exclusively) and reports.
    /// Failures of the sandbox become an `internal_error` result, logged here.
    pub async fn execute(&self, job: &Job, slot: u32) -> RunResult {
        let span = info_span!("run", id = %job.id, language = %job.language.name, slot);
        async {
            let spec = job.sandbox_spec(slot, &self.host);
            let outcome = run_in_jail(&self.jail, spec).await;
            if let Err(f) = &outcome {
                error!(step = %f.step, errno = ?f.errno, error = %f.message, "sandbox failure");
            }
            let result = run_result(job, outcome);
            info!(
                status = result.run.status.as_str(),
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
}
