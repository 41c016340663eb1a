//! The distributed mode: gateways hand runs to workers through NATS JetStream
//! (docs/fleet.md; names and records in [`cod_fleet::bus`]).
//!
//! - [`RemoteWorker`] is the gateway's side: it publishes each run to the job stream,
//!   relays its live events (and an interactive run's input), and waits for its result.
//! - [`serve_jobs`] is the worker's side: it pulls runs of its runtimes, only as many as
//!   it has free slots, runs them in this machine's sandbox, and stores each result once.
//! - [`SharedCompiles`] shares compiled programs between workers.
//!
//! What crosses the bus: a [`JobMessage`] (postcard: a program's files are bytes, and a
//! 20 KB program stays about 20 KB) on the job's subject; [`WireEvent`]s and
//! [`WireInput`]s (postcard) on the job's own subjects; an [`Envelope`] (JSON, readable
//! with any NATS tool) in the results bucket and on the job's done subject.

mod artifacts;
mod gateway;
mod worker;

use axum::Json;
use axum::extract::State;
use cod_core::RunResult;
use cod_fleet::bus::{Heartbeat, WorkerEntry, now_ms};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;
use crate::jobs::{JobState, JobView, rfc3339};
use crate::worker::WorkItem;

pub use artifacts::SharedCompiles;
pub use gateway::{FleetJob, RemoteWorker};
pub use worker::{WorkerOptions, serve_jobs};

/// A job as it travels to a worker (postcard-encoded).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    /// The run.
    pub item: WorkItem,
    /// Who submitted it.
    pub client: String,
    /// When it was accepted, ms since the Unix epoch.
    pub created_ms: u64,
    /// Send stages and output as they happen (streamed and editor runs).
    #[serde(default)]
    pub stream: bool,
    /// Its standard input comes from [`cod_fleet::bus::input_subject`].
    #[serde(default)]
    pub interactive: bool,
    /// An asynchronous job, which other gateways can be asked about: its worker records
    /// its start in the accepted bucket, and removes its entry once its result is stored.
    #[serde(default)]
    pub tracked: bool,
}

/// An asynchronous job accepted and not finished, as the accepted bucket holds it (JSON):
/// written by the gateway that took it, then by the worker that starts it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// Its language.
    pub language: String,
    /// Who submitted it.
    pub client: String,
    /// When it was accepted, ms since the Unix epoch.
    pub created_ms: u64,
    /// The worker running it, once one started it.
    #[serde(default)]
    pub worker: Option<String>,
    /// When that worker started it, ms since the Unix epoch.
    #[serde(default)]
    pub started_ms: Option<u64>,
    /// Cancelled (through any gateway) before it finished: a worker that has not started
    /// it does not, one running it stops.
    #[serde(default)]
    pub cancelled: bool,
}

impl Accepted {
    /// `job`, accepted and waiting.
    pub fn queued(job: &JobMessage) -> Accepted {
        Accepted {
            language: job.item.language.clone(),
            client: job.client.clone(),
            created_ms: job.created_ms,
            worker: None,
            started_ms: None,
            cancelled: false,
        }
    }
}

/// Writes `entry` as job `id`'s accepted entry; whether the broker stored it within
/// [`worker::SERVER_PATIENCE`].
async fn store_accepted(bus: &cod_fleet::bus::Bus, id: &str, entry: &Accepted) -> bool {
    let bytes = serde_json::to_vec(entry).unwrap_or_default();
    tokio::time::timeout(worker::SERVER_PATIENCE, bus.accepted.put(id, bytes.into()))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// What a worker finds in a tracked job's accepted entry before it starts the job.
#[derive(Debug, PartialEq, Eq)]
enum BeforeStart {
    /// Cancelled through some gateway, or gone (its result stored by an earlier delivery,
    /// or its entry expired): the job is not run.
    Cancelled,
    /// Waiting, its entry at this revision: the worker's note that it started replaces
    /// that revision only ([`note_started`]).
    Waiting(u64),
    /// The broker did not answer: the job runs (never dropped on a doubt), unnoted.
    Unknown,
}

/// Reads job `id`'s accepted entry for a worker about to start it. The worker subscribes to
/// the job's cancel subject first: a cancel the read does not show is written after it, and
/// then announced to the subscription.
async fn before_start(bus: &cod_fleet::bus::Bus, id: &str) -> BeforeStart {
    use async_nats::jetstream::kv::Operation;
    match tokio::time::timeout(worker::SERVER_PATIENCE, bus.accepted.entry(id)).await {
        Ok(Ok(Some(e))) if e.operation == Operation::Put => {
            // An entry that does not parse is not a cancel.
            if serde_json::from_slice::<Accepted>(&e.value).is_ok_and(|a| a.cancelled) {
                BeforeStart::Cancelled
            } else {
                BeforeStart::Waiting(e.revision)
            }
        }
        Ok(Ok(_)) => BeforeStart::Cancelled,
        _ => BeforeStart::Unknown,
    }
}

/// Writes `entry` (the job started) as job `id`'s accepted entry only if the entry is still
/// at `revision`, as [`before_start`] read it: a cancel written since is never replaced.
/// Whether it was written.
async fn note_started(
    bus: &cod_fleet::bus::Bus,
    id: &str,
    entry: &Accepted,
    revision: u64,
) -> bool {
    let bytes = serde_json::to_vec(entry).unwrap_or_default();
    tokio::time::timeout(
        worker::SERVER_PATIENCE,
        bus.accepted.update(id, bytes.into(), revision),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}

/// A time given in ms since the Unix epoch, as job views show it.
fn at_ms(ms: u64) -> String {
    rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

/// A finished job, as stored in the results bucket and announced on its done subject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The run's result.
    pub result: RunResult,
    /// The worker that ran it.
    pub worker: String,
    /// Which delivery of the job this was (1: the first).
    pub attempt: u32,
    /// Who submitted it.
    pub client: String,
    /// When it was accepted, ms since the Unix epoch.
    pub created_ms: u64,
    /// When the worker started it.
    pub started_ms: u64,
    /// When it finished.
    pub finished_ms: u64,
    /// Events the worker sent for this delivery (the gateway waits for them all).
    pub events: u64,
}

/// A live event of a job, numbered from 1 per delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEvent {
    /// Its number.
    pub seq: u64,
    /// Which delivery of the job sent it.
    pub attempt: u32,
    /// What happened.
    pub kind: WireKind,
}

/// What a [`WireEvent`] says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireKind {
    /// A worker took the job.
    Started {
        /// The worker.
        worker: String,
        /// Its slot.
        slot: u32,
    },
    /// A stage started (`compile`: the compile stage, else the run).
    Stage {
        /// Which.
        compile: bool,
    },
    /// Output.
    Out {
        /// Of the compile stage.
        compile: bool,
        /// Standard error (else standard output).
        stderr: bool,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Resources used so far.
    Usage {
        /// Of the compile stage.
        compile: bool,
        /// CPU, ms.
        cpu_ms: u64,
        /// Peak memory, KiB.
        memory_kb: u64,
        /// Wall time, ms.
        wall_ms: u64,
    },
}

/// Input for an interactive job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireInput {
    /// Bytes for its stdin.
    Stdin(Vec<u8>),
    /// End of its stdin.
    Close,
    /// Stop it.
    Kill,
}

/// `GET /api/v1/workers`: the workers runs go to, from their heartbeats (this process
/// alone in the embedded mode).
#[utoipa::path(
    get,
    path = "/api/v1/workers",
    tag = "jobs",
    responses(
        (status = 200, description = "Workers by id: `id`, `host`, `runtimes`, `slots`, `busy`, `load`, `version`, `draining`, `done`, `at_ms`, `state` (`ready`, `draining`, `dead`), `silent_ms`", body = WorkerList),
        (status = 503, description = "A fleet gateway cannot reach its broker now; see `Retry-After`", body = crate::openapi::ErrorBody),
    )
)]
pub async fn list_workers(State(st): State<AppState>) -> Result<Json<WorkerList>, ApiError> {
    let workers = match st.worker.remote() {
        Some(r) => r.workers().await.map_err(ApiError::Overloaded)?,
        None => {
            let stats = st.scheduler.stats();
            let runtimes = st.executor.registry().available_names();
            vec![WorkerEntry {
                heartbeat: Heartbeat {
                    id: "local".into(),
                    host: host_name(),
                    runtimes,
                    slots: u32::try_from(stats.workers).unwrap_or(u32::MAX),
                    busy: u32::try_from(stats.running).unwrap_or(u32::MAX),
                    load: 0.0,
                    version: env!("CARGO_PKG_VERSION").into(),
                    draining: false,
                    done: stats.started,
                    at_ms: now_ms(),
                },
                state: "ready".into(),
                silent_ms: 0,
            }]
        }
    };
    Ok(Json(WorkerList { workers }))
}

/// The answer of `GET /api/v1/workers`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkerList {
    /// By id.
    #[schema(value_type = Vec<Object>)]
    pub workers: Vec<WorkerEntry>,
}

/// This machine's name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// A job another gateway accepted, as `GET /api/v1/jobs/{id}` shows it until its result
/// is stored: queued, running on the worker named, or cancelled.
pub(crate) fn pending_view(id: &str, a: Accepted) -> JobView {
    JobView {
        id: id.to_owned(),
        state: if a.cancelled {
            JobState::Cancelled
        } else if a.worker.is_some() {
            JobState::Running
        } else {
            JobState::Queued
        },
        language: a.language,
        client: a.client,
        created_at: at_ms(a.created_ms),
        started_at: a.started_ms.map(at_ms),
        finished_at: None,
        slot: None,
        expected_ms: 0,
        waited_ms: a.started_ms.map(|s| s.saturating_sub(a.created_ms)),
        usage: None,
        result: None,
        tests: None,
        callback: None,
        worker: a.worker,
        attempt: None,
    }
}

/// A job another gateway accepted, as `GET /api/v1/jobs/{id}` shows it once its result
/// is stored.
pub(crate) fn view_of(id: &str, env: Envelope) -> JobView {
    JobView {
        id: id.to_owned(),
        state: JobState::Done,
        language: env.result.language.clone(),
        client: env.client.clone(),
        created_at: at_ms(env.created_ms),
        started_at: Some(at_ms(env.started_ms)),
        finished_at: Some(at_ms(env.finished_ms)),
        slot: None,
        expected_ms: 0,
        waited_ms: Some(env.started_ms.saturating_sub(env.created_ms)),
        usage: None,
        result: Some(env.result),
        tests: None,
        callback: None,
        worker: Some(env.worker),
        attempt: Some(env.attempt),
    }
}

/// Events a worker sends ahead of the gateway's acknowledgements.
const EVENT_WINDOW: u64 = 64;
/// The gateway acknowledges every this many events.
const ACK_EVERY: u64 = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    /// Binary output survives the trip; the window leaves room for acknowledgements.
    #[test]
    fn events_and_input_round_trip() {
        let e = WireEvent {
            seq: 7,
            attempt: 2,
            kind: WireKind::Out {
                compile: false,
                stderr: true,
                data: vec![0, 0xff, b'\n'],
            },
        };
        let bytes = postcard::to_stdvec(&e).expect("encodes");
        assert_eq!(
            postcard::from_bytes::<WireEvent>(&bytes).expect("decodes"),
            e
        );
        let i = WireInput::Stdin(vec![0xc3, 0x28]);
        let bytes = postcard::to_stdvec(&i).expect("encodes");
        assert_eq!(
            postcard::from_bytes::<WireInput>(&bytes).expect("decodes"),
            i
        );
        const { assert!(ACK_EVERY < EVENT_WINDOW) };
    }

    /// A job with binary files, stdin and limits survives postcard, and a 20 KB program
    /// stays about 20 KB on the wire.
    #[test]
    fn jobs_round_trip_compactly() {
        let job = job();
        let bytes = postcard::to_stdvec(&job).expect("encodes");
        assert!(bytes.len() < 20_200, "{}", bytes.len());
        assert_eq!(
            postcard::from_bytes::<JobMessage>(&bytes).expect("decodes"),
            job
        );
    }

    fn job() -> JobMessage {
        JobMessage {
            item: WorkItem {
                id: "j1.2".into(),
                language: "python".into(),
                files: vec![
                    ("main.py".into(), vec![b'x'; 20_000]),
                    ("b.bin".into(), vec![0, 0xff]),
                ],
                stdin: b"in\n".to_vec(),
                args: vec!["-v".into()],
                limits: cod_core::limits::LimitsSpec::DEFAULT,
                compile_limits: cod_core::limits::LimitsSpec::DEFAULT,
            },
            client: "k".into(),
            created_ms: 1,
            stream: true,
            interactive: false,
            tracked: false,
        }
    }

    /// Debian's `nats-server` with JetStream on a free loopback port (the test script
    /// installs it), killed on drop.
    struct Nats {
        child: std::process::Child,
        url: String,
        _store: tempfile::TempDir,
    }

    impl Drop for Nats {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Nats {
        fn start() -> Nats {
            let bin = std::env::var("PATH")
                .unwrap_or_default()
                .split(':')
                .chain(["/usr/sbin", "/usr/bin"])
                .map(|d| std::path::Path::new(d).join("nats-server"))
                .find(|p| p.is_file())
                .expect("nats-server is missing: scripts/test installs it");
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let store = tempfile::tempdir().expect("a store dir");
            let child = std::process::Command::new(bin)
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(store.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("nats-server starts");
            Nats {
                child,
                url: format!("nats://127.0.0.1:{port}"),
                _store: store,
            }
        }

        /// The bus on this server, once it answers.
        async fn bus(&self) -> cod_fleet::bus::Bus {
            let connect = cod_fleet::bus::Bus::connect(
                &self.url,
                "test",
                cod_fleet::bus::BusConfig::default(),
            );
            tokio::time::timeout(std::time::Duration::from_secs(30), connect)
                .await
                .expect("NATS answers within 30 s")
                .expect("the bus is set up")
        }
    }

    /// A cancel that comes between a worker's look at a job's accepted entry and its note
    /// that the job started is neither missed nor overwritten: the worker, subscribed
    /// before it looked, hears it, and the note is refused, so the entry says cancelled.
    #[tokio::test]
    async fn a_cancel_between_a_workers_look_and_its_start_note_is_kept() {
        let nats = Nats::start();
        let bus = nats.bus().await;
        let queued = Accepted::queued(&job());
        let started = Accepted {
            worker: Some("w1".into()),
            started_ms: Some(2),
            ..queued.clone()
        };

        assert!(store_accepted(&bus, "j1", &queued).await);
        let mut cancels = bus
            .client
            .subscribe(cod_fleet::bus::cancel_subject("j1"))
            .await
            .expect("subscribes");
        let BeforeStart::Waiting(revision) = before_start(&bus, "j1").await else {
            panic!("a queued job is waiting");
        };
        gateway::cancel_job(bus.clone(), "j1".into(), Some(queued.clone())).await;
        let heard = tokio::time::timeout(std::time::Duration::from_secs(10), cancels.next());
        assert!(heard.await.expect("the cancel is heard").is_some());
        assert!(!note_started(&bus, "j1", &started, revision).await);
        assert_eq!(before_start(&bus, "j1").await, BeforeStart::Cancelled);
        let raw = bus.accepted.get("j1").await.expect("read").expect("kept");
        assert!(
            serde_json::from_slice::<Accepted>(&raw)
                .expect("parses")
                .cancelled
        );

        // Not cancelled: the note is written, and every gateway sees the job running.
        assert!(store_accepted(&bus, "j2", &queued).await);
        let BeforeStart::Waiting(revision) = before_start(&bus, "j2").await else {
            panic!("a queued job is waiting");
        };
        assert!(note_started(&bus, "j2", &started, revision).await);
        let raw = bus.accepted.get("j2").await.expect("read").expect("kept");
        assert_eq!(
            serde_json::from_slice::<Accepted>(&raw).expect("parses"),
            started
        );
        // Removed once its result is stored: a later delivery does not run it.
        bus.accepted.purge("j2").await.expect("purged");
        assert_eq!(before_start(&bus, "j2").await, BeforeStart::Cancelled);
    }
}
