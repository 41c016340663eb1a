//! The fleet's broker: names, settings and records on NATS JetStream that gateways, workers
//! and the manager agree on (docs/fleet.md).
//!
//! - **Jobs**: stream [`JOBS_STREAM`] (work-queue retention, file storage), one subject per
//!   runtime and class, `cod.jobs.<runtime>.<class>` ([`job_subject`]), each read by one
//!   durable pull consumer `run-<runtime>-<class>` ([`consumer_name`]) that every worker
//!   keeping that runtime pulls from. A job is a message whose `Nats-Msg-Id` is its id, so
//!   a publish retried after a lost acknowledgement is stored once.
//! - **Results**: KV bucket [`RESULTS_BUCKET`], key = job id, written once
//!   (`create`): the first finished run of a job is its result, a redelivered duplicate's is
//!   dropped. The bucket republishes each stored result on [`done_subject`], which tells
//!   the waiting gateway at once.
//! - **Live events** of a job (started, usage, and for streamed runs stages and output) on
//!   [`events_subject`], acknowledged on [`events_ack_subject`]; an interactive job's input
//!   on [`input_subject`]; a gateway cancels a job on [`cancel_subject`].
//! - **Accepted asynchronous jobs** not finished yet: KV bucket [`ACCEPTED_BUCKET`], key =
//!   job id, written by the gateway that took the job (before it answers `202`) and by the
//!   worker that starts it, removed once its result is stored: what every other gateway
//!   tells of the job meanwhile.
//! - **Workers** heartbeat a [`Heartbeat`] into KV bucket [`WORKERS_BUCKET`], key = worker
//!   id; one not heard from for [`BusConfig::dead_after`] is dead.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, kv, stream};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};

/// The work-queue stream of jobs.
pub const JOBS_STREAM: &str = "COD_JOBS";
/// The KV bucket of finished jobs' results.
pub const RESULTS_BUCKET: &str = "cod_results";
/// The KV bucket of the fleet manager's state: its learned day curve, under [`CURVE_KEY`].
pub const MANAGER_BUCKET: &str = "cod_manager";
/// The key of the learned day curve in [`MANAGER_BUCKET`].
pub const CURVE_KEY: &str = "curve";
/// The KV bucket of asynchronous jobs accepted and not finished.
pub const ACCEPTED_BUCKET: &str = "cod_accepted";
/// The KV bucket of worker heartbeats.
pub const WORKERS_BUCKET: &str = "cod_workers";
/// The object store of compiled programs, by compile-cache key, shared by all workers.
pub const ARTIFACTS_BUCKET: &str = "cod_artifacts";
/// Most bytes the shared compiled programs hold; the oldest go first.
pub const ARTIFACTS_BYTES: i64 = 1 << 30;

/// A job's class: workers take short jobs before long ones of any runtime they keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Expected to run under [`SHORT_RUN`].
    Short,
    /// Everything else.
    Long,
}

/// Runs expected to take less than this are [`Class::Short`].
pub const SHORT_RUN: Duration = Duration::from_secs(1);

impl Class {
    /// Both classes, in the order workers take them.
    pub const ALL: [Class; 2] = [Class::Short, Class::Long];

    /// The class of a run expected to take `expected`.
    pub fn of(expected: Duration) -> Class {
        if expected < SHORT_RUN {
            Class::Short
        } else {
            Class::Long
        }
    }

    /// Its subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Short => "short",
            Class::Long => "long",
        }
    }
}

/// A name as one subject token: only `[A-Za-z0-9_-]` kept, anything else becomes `_`.
pub fn token(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The subject jobs of `runtime` and `class` are published on.
pub fn job_subject(runtime: &str, class: Class) -> String {
    format!("cod.jobs.{}.{}", token(runtime), class.as_str())
}

/// The durable consumer that hands out jobs of `runtime` and `class`.
pub fn consumer_name(runtime: &str, class: Class) -> String {
    format!("run-{}-{}", token(runtime), class.as_str())
}

/// Where a job's result is announced once it is stored: the results bucket republishes
/// each stored entry there (`$KV.cod_results.<key>` becomes `cod.done.<key>`), so a job
/// id that is a valid key (ids are; `[A-Za-z0-9_=.-]`) keeps its dots.
pub fn done_subject(job: &str) -> String {
    let valid = !job.is_empty()
        && !job.starts_with('.')
        && !job.ends_with('.')
        && !job.contains("..")
        && job
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=' | '.'));
    if valid {
        format!("cod.done.{job}")
    } else {
        format!("cod.done.{}", token(job))
    }
}

/// Where a job's live events go.
pub fn events_subject(job: &str) -> String {
    format!("cod.ev.{}", token(job))
}

/// Where a gateway asks for a job to be cancelled.
pub fn cancel_subject(job: &str) -> String {
    format!("cod.cancel.{}", token(job))
}

/// Where a gateway sends an interactive job's standard input.
pub fn input_subject(job: &str) -> String {
    format!("cod.in.{}", token(job))
}

/// Where a gateway acknowledges a job's events (the worker stops sending while too many
/// are unacknowledged: output has backpressure end to end).
pub fn events_ack_subject(job: &str) -> String {
    format!("cod.evack.{}", token(job))
}

/// Settings shared by every process of a fleet (`[fleet]` in the configuration).
#[derive(Clone, Debug, PartialEq)]
pub struct BusConfig {
    /// A delivered job not acknowledged (or reported in progress) for this long goes to
    /// another worker. Workers report progress every third of it.
    pub ack_wait: Duration,
    /// Deliveries of one job before it ends `internal_error` instead of running again.
    pub max_deliveries: u32,
    /// How long results stay readable.
    pub result_ttl: Duration,
    /// How long a job may wait in the stream before it is dropped.
    pub job_ttl: Duration,
    /// Interval of worker heartbeats.
    pub heartbeat: Duration,
    /// A worker not heard from for this long is dead.
    pub dead_after: Duration,
    /// Copies of the stream and buckets JetStream keeps (1: one server; 3: a cluster).
    pub replicas: usize,
}

impl Default for BusConfig {
    fn default() -> BusConfig {
        BusConfig {
            ack_wait: Duration::from_secs(10),
            max_deliveries: 3,
            result_ttl: Duration::from_secs(3600),
            job_ttl: Duration::from_secs(3600),
            heartbeat: Duration::from_secs(1),
            dead_after: Duration::from_secs(5),
            replicas: 1,
        }
    }
}

/// What a worker says about itself, every [`BusConfig::heartbeat`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Its id.
    pub id: String,
    /// The machine it runs on.
    pub host: String,
    /// Runtimes it takes jobs of.
    pub runtimes: Vec<String>,
    /// Runs it can hold at once.
    pub slots: u32,
    /// Runs it holds now.
    pub busy: u32,
    /// The host's 1-minute load average.
    pub load: f64,
    /// The `cod` version it runs.
    pub version: String,
    /// Finishing its runs before it exits; takes no new ones.
    pub draining: bool,
    /// Runs it finished since it started.
    pub done: u64,
    /// When it was sent, ms since the Unix epoch.
    pub at_ms: u64,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A worker as a gateway lists it: its last heartbeat and whether it is alive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerEntry {
    /// The last heartbeat.
    #[serde(flatten)]
    pub heartbeat: Heartbeat,
    /// `ready`, `draining` or `dead` (no heartbeat for [`BusConfig::dead_after`]).
    pub state: String,
    /// Milliseconds since its last heartbeat.
    pub silent_ms: u64,
}

/// The broker could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct BusError {
    /// What was being done.
    pub what: &'static str,
    /// The client's error.
    pub message: String,
}

/// `Result::map_err` helper: names what failed.
pub fn bus_err<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> BusError {
    move |e| BusError {
        what,
        message: e.to_string(),
    }
}

/// A connection to the fleet's broker, with its stream and buckets in place.
#[derive(Clone)]
pub struct Bus {
    /// The core NATS client.
    pub client: async_nats::Client,
    /// JetStream on it.
    pub js: jetstream::Context,
    /// The job stream.
    pub jobs: stream::Stream,
    /// Results by job id.
    pub results: kv::Store,
    /// Asynchronous jobs accepted and not finished, by job id.
    pub accepted: kv::Store,
    /// Heartbeats by worker id.
    pub workers: kv::Store,
    /// Compiled programs by compile-cache key; `None` when the server could not make the
    /// store (too little JetStream storage): workers then compile for themselves.
    pub artifacts: Option<async_nats::jetstream::object_store::ObjectStore>,
    /// The settings.
    pub config: BusConfig,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Bus {
    /// Connects to `url` (retrying until the server answers) and makes the stream and
    /// buckets if they do not exist yet: any process of the fleet may start first.
    pub async fn connect(url: &str, name: &str, config: BusConfig) -> Result<Bus, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connect(url)
            .await
            .map_err(bus_err("connecting to NATS"))?;
        Bus::with_client(client, config).await
    }

    /// [`Bus::connect`] on a client already connected.
    pub async fn with_client(
        client: async_nats::Client,
        config: BusConfig,
    ) -> Result<Bus, BusError> {
        let js = jetstream::new(client.clone());
        let jobs = js
            .get_or_create_stream(stream::Config {
                name: JOBS_STREAM.into(),
                subjects: vec!["cod.jobs.>".into()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                max_age: config.job_ttl,
                duplicate_window: Duration::from_secs(120),
                num_replicas: config.replicas,
                ..Default::default()
            })
            .await
            .map_err(bus_err("creating the job stream"))?;
        let results = bucket(&js, RESULTS_BUCKET, config.result_ttl, config.replicas).await?;
        // A job not taken within job_ttl leaves the stream: its entry goes as well.
        let accepted = bucket(&js, ACCEPTED_BUCKET, config.job_ttl, config.replicas).await?;
        // Heartbeats of a worker gone for long are of no use: they expire.
        let workers = bucket(
            &js,
            WORKERS_BUCKET,
            (config.dead_after * 12).max(Duration::from_secs(60)),
            config.replicas,
        )
        .await?;
        let artifacts = match artifact_store(&js, config.replicas).await {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!(error = %e, "no shared compile cache: each worker compiles for itself");
                None
            }
        };
        Ok(Bus {
            client,
            js,
            jobs,
            results,
            accepted,
            workers,
            artifacts,
            config,
        })
    }

    /// The manager's bucket, made if it does not exist (only the manager uses it).
    async fn manager_bucket(&self) -> Result<kv::Store, BusError> {
        bucket(
            &self.js,
            MANAGER_BUCKET,
            Duration::ZERO,
            self.config.replicas,
        )
        .await
    }

    /// The manager's day curve as an earlier manager left it, if any.
    pub async fn load_curve(&self) -> Result<Option<crate::DayCurve>, BusError> {
        let kv = self.manager_bucket().await?;
        match kv
            .get(CURVE_KEY)
            .await
            .map_err(bus_err("reading the day curve"))?
        {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(bus_err("reading the day curve")),
        }
    }

    /// Keeps the manager's day curve for the next manager (a restart, a replacement).
    pub async fn save_curve(&self, curve: &crate::DayCurve) -> Result<(), BusError> {
        let bytes = serde_json::to_vec(curve).map_err(bus_err("keeping the day curve"))?;
        self.manager_bucket()
            .await?
            .put(CURVE_KEY, bytes.into())
            .await
            .map_err(bus_err("keeping the day curve"))?;
        Ok(())
    }

    /// The pull consumer of jobs of `runtime` and `class`, made if it does not exist.
    pub async fn consumer(
        &self,
        runtime: &str,
        class: Class,
    ) -> Result<consumer::Consumer<consumer::pull::Config>, BusError> {
        let name = consumer_name(runtime, class);
        self.jobs
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: job_subject(runtime, class),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.config.ack_wait,
                    // Unbounded: the worker that gets the last allowed delivery answers
                    // the job itself (`internal_error`), so no delivery goes unanswered.
                    max_deliver: -1,
                    max_ack_pending: -1,
                    ..Default::default()
                },
            )
            .await
            .map_err(bus_err("creating a job consumer"))
    }

    /// Every worker with a heartbeat in the bucket, by id. Bounded: a broker that does
    /// not answer within 5 s is an error, never a hang.
    pub async fn worker_list(&self) -> Result<Vec<WorkerEntry>, BusError> {
        tokio::time::timeout(Duration::from_secs(5), self.read_workers())
            .await
            .map_err(bus_err("listing workers"))?
    }

    async fn read_workers(&self) -> Result<Vec<WorkerEntry>, BusError> {
        // The bucket's keys, from the stream's subject counts: one request, no consumer.
        let prefix = format!("$KV.{WORKERS_BUCKET}.");
        let stream = self
            .js
            .get_stream(format!("KV_{WORKERS_BUCKET}"))
            .await
            .map_err(bus_err("listing workers"))?;
        let subjects: Vec<(String, usize)> = stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(bus_err("listing workers"))?
            .try_collect()
            .await
            .map_err(bus_err("listing workers"))?;
        let keys: Vec<String> = subjects
            .into_iter()
            .filter_map(|(s, _)| s.strip_prefix(&prefix).map(str::to_owned))
            .collect();
        let now = now_ms();
        let dead_ms = u64::try_from(self.config.dead_after.as_millis()).unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for k in keys {
            let Some(raw) = self
                .workers
                .get(&k)
                .await
                .map_err(bus_err("reading a heartbeat"))?
            else {
                continue;
            };
            let Ok(hb) = serde_json::from_slice::<Heartbeat>(&raw) else {
                continue;
            };
            let silent_ms = now.saturating_sub(hb.at_ms);
            let state = if silent_ms > dead_ms {
                "dead"
            } else if hb.draining {
                "draining"
            } else {
                "ready"
            };
            out.push(WorkerEntry {
                heartbeat: hb,
                state: state.into(),
                silent_ms,
            });
        }
        out.sort_by(|a, b| a.heartbeat.id.cmp(&b.heartbeat.id));
        Ok(out)
    }
}

/// The shared compiled programs: an object store whose stream drops the oldest objects
/// when full (it is a cache), made as the client makes object stores otherwise.
async fn artifact_store(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<async_nats::jetstream::object_store::ObjectStore, BusError> {
    if let Ok(store) = js.get_object_store(ARTIFACTS_BUCKET).await {
        return Ok(store);
    }
    let made = js
        .create_stream(stream::Config {
            name: format!("OBJ_{ARTIFACTS_BUCKET}"),
            subjects: vec![
                format!("$O.{ARTIFACTS_BUCKET}.C.>"),
                format!("$O.{ARTIFACTS_BUCKET}.M.>"),
            ],
            max_bytes: ARTIFACTS_BYTES,
            max_age: Duration::from_secs(7 * 24 * 3600),
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            allow_rollup: true,
            allow_direct: true,
            num_replicas: replicas,
            ..Default::default()
        })
        .await;
    // Another process may have made it first: either way it is there now.
    if let Err(e) = &made {
        tracing::debug!(error = %e, "creating the compiled-program store");
    }
    js.get_object_store(ARTIFACTS_BUCKET)
        .await
        .map_err(bus_err("opening the compiled-program store"))
}

async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, BusError> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    // The bucket's stream, laid out as `create_key_value` does. That call first reads the
    // account's info, whose reply from nats-server 2.9 lacks fields the client requires;
    // the stream itself is the same on every server version.
    match js
        .create_stream(stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age,
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: replicas,
            // A stored result is announced by the server itself, at once, on the job's
            // done subject: only what was stored, and without waiting for the worker.
            republish: (name == RESULTS_BUCKET).then(|| stream::Republish {
                source: format!("$KV.{name}.>"),
                destination: "cod.done.>".into(),
                headers_only: false,
            }),
            ..Default::default()
        })
        .await
    {
        Ok(_) => js
            .get_key_value(name)
            .await
            .map_err(bus_err("opening a KV bucket")),
        // Another process made it first.
        Err(_) => js
            .get_key_value(name)
            .await
            .map_err(bus_err("creating a KV bucket")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_subject_tokens() {
        assert_eq!(job_subject("python", Class::Short), "cod.jobs.python.short");
        assert_eq!(
            job_subject("c++ 17.x", Class::Long),
            "cod.jobs.c___17_x.long"
        );
        assert_eq!(consumer_name("cpp", Class::Long), "run-cpp-long");
        assert_eq!(done_subject("a.b*>"), "cod.done.a_b__");
        assert_eq!(done_subject("66143f.2"), "cod.done.66143f.2");
        assert_eq!(Class::of(Duration::from_millis(999)), Class::Short);
        assert_eq!(Class::of(SHORT_RUN), Class::Long);
    }
}
