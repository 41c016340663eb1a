//! The gateway's side of the bus: publish runs, relay their events, wait for results.
//!
//! **Accepted means stored.** A run is published to the job stream (file storage) with
//! its id as `Nats-Msg-Id` and the gateway waits for JetStream's acknowledgement,
//! retrying a lost one for [`PUBLISH_PATIENCE`] (the duplicate window drops a repeat).
//! From then on the job no longer depends on this gateway: a worker runs it and stores
//! its result whether or not anyone still waits.
//!
//! **Admission.** Every gateway learns the fleet's slots from the heartbeats. It admits a
//! run while its own runs in flight are fewer than those slots plus its queue allowance
//! (`server.queue`), and answers 429 otherwise. Each gateway counts only its own runs: with
//! several gateways the fleet's backlog can reach their allowances added up.
//!
//! **Waiting.** The gateway subscribes to the job's done and event subjects before it
//! publishes, so nothing is missed in the normal case; if a notice is lost (a reconnect),
//! it reads the results bucket every second.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::NATS_MESSAGE_ID;
use cod_core::RunResult;
use cod_fleet::bus::{
    Bus, Class, WorkerEntry, cancel_subject, done_subject, events_ack_subject, events_subject,
    input_subject, job_subject,
};
use cod_runtime::executor::{OutStream, RunEvent, RunInput, RunIo, StageKind};
use cod_sched::{RejectReason, Rejected, Usage, WorkerEvent};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{ACK_EVERY, Envelope, JobMessage, WireEvent, WireInput, WireKind};
use crate::worker::internal_error;

/// How long a gateway keeps trying to hand a run to the broker before it fails the run.
pub(super) const PUBLISH_PATIENCE: Duration = Duration::from_secs(30);
/// How often a waiting gateway reads the results bucket, in case a notice was lost.
const POLL: Duration = Duration::from_secs(1);

/// A job as the fleet's buckets know it.
#[derive(Debug)]
pub enum FleetJob {
    /// Finished: its stored result.
    Done(Box<Envelope>),
    /// Accepted and not finished: queued, or running on the worker named.
    Pending(super::Accepted),
}

impl FleetJob {
    /// Who submitted it.
    pub fn client(&self) -> &str {
        match self {
            FleetJob::Done(e) => &e.client,
            FleetJob::Pending(a) => &a.client,
        }
    }
}

fn broker_unreachable() -> Rejected {
    Rejected {
        reason: RejectReason::BrokerUnreachable,
        queued: 0,
        retry_after: Duration::from_secs(1),
    }
}

/// Runs jobs on the fleet's workers, through the bus.
#[derive(Clone, Debug)]
pub struct RemoteWorker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    bus: Bus,
    /// Runs of this gateway published and not finished.
    inflight: AtomicUsize,
    /// Slots of the fleet's live, non-draining workers, from heartbeats.
    capacity: AtomicUsize,
    /// Runs admitted beyond the fleet's slots.
    queue: usize,
    /// Consumers this gateway has made sure exist, by name.
    consumers: parking_lot::Mutex<std::collections::HashSet<String>>,
}

/// Counts a run in flight until dropped; asks the worker to stop it if it is dropped
/// before the run's result came.
struct InFlight {
    inner: Arc<Inner>,
    id: String,
    finished: bool,
    /// The job's accepted entry, if it has one: marked cancelled, it tells a worker that
    /// has not started the job not to, and every gateway that it was cancelled.
    tracked: Option<super::Accepted>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.inner.inflight.fetch_sub(1, Ordering::Relaxed);
        if !self.finished {
            let bus = self.inner.bus.clone();
            let (id, tracked) = (self.id.clone(), self.tracked.take());
            tokio::spawn(cancel_job(bus, id, tracked));
        }
    }
}

/// Cancels job `id` wherever it is: its accepted entry (if it is tracked) says so first,
/// then the worker running it and the gateway that took it are told.
pub(super) async fn cancel_job(bus: Bus, id: String, tracked: Option<super::Accepted>) {
    if let Some(mut entry) = tracked {
        entry.cancelled = true;
        super::store_accepted(&bus, &id, &entry).await;
    }
    let _ = bus
        .client
        .publish(cancel_subject(&id), "cancel".into())
        .await;
}

impl RemoteWorker {
    /// A gateway on `bus` that admits `queue` runs beyond the fleet's slots. Starts the
    /// task that follows the fleet's capacity (call inside a tokio runtime).
    pub fn new(bus: Bus, queue: usize) -> RemoteWorker {
        let inner = Arc::new(Inner {
            bus,
            inflight: AtomicUsize::new(0),
            capacity: AtomicUsize::new(0),
            queue,
            consumers: parking_lot::Mutex::new(std::collections::HashSet::new()),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(POLL);
            while let Some(inner) = weak.upgrade() {
                if let Ok(list) = inner.bus.worker_list().await {
                    let slots = list
                        .iter()
                        .filter(|w| w.state == "ready")
                        .map(|w| w.heartbeat.slots as usize)
                        .sum();
                    inner.capacity.store(slots, Ordering::Relaxed);
                }
                drop(inner);
                every.tick().await;
            }
        });
        RemoteWorker { inner }
    }

    /// The bus.
    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    /// Runs of this gateway in flight.
    pub fn inflight(&self) -> usize {
        self.inner.inflight.load(Ordering::Relaxed)
    }

    /// Refuses a run when the broker cannot be reached right now (it could not be
    /// stored: better a prompt 503 than a wait of 30 s for the store and a failure),
    /// or when this gateway's runs in flight already fill the fleet's slots and its queue
    /// allowance.
    pub fn admit(&self) -> Result<(), Rejected> {
        self.reachable()?;
        let inflight = self.inflight();
        let capacity = self.inner.capacity.load(Ordering::Relaxed);
        if inflight >= capacity + self.inner.queue {
            return Err(Rejected {
                reason: RejectReason::QueueFull,
                queued: inflight.saturating_sub(capacity),
                retry_after: Duration::from_secs(1),
            });
        }
        Ok(())
    }

    /// The fleet's workers, from their heartbeats; `Err` (a 503 for the client) if the
    /// broker cannot be asked.
    pub async fn workers(&self) -> Result<Vec<WorkerEntry>, Rejected> {
        self.reachable()?;
        self.inner.bus.worker_list().await.map_err(|e| {
            debug!(error = %e, "reading worker heartbeats failed");
            broker_unreachable()
        })
    }

    /// `Err` (a 503 for the client) if the broker cannot be reached right now.
    pub fn reachable(&self) -> Result<(), Rejected> {
        if matches!(
            self.inner.bus.client.connection_state(),
            async_nats::connection::State::Connected
        ) {
            Ok(())
        } else {
            Err(broker_unreachable())
        }
    }

    /// The stored result of job `id`, if it has one.
    pub async fn lookup(&self, id: &str) -> Option<Envelope> {
        self.find(id).await.ok().flatten()
    }

    /// The stored result of job `id`: `Ok(None)` if the broker says it has none, `Err` if
    /// the broker cannot be asked (then nobody can tell whether the job exists).
    pub async fn find(&self, id: &str) -> Result<Option<Envelope>, Rejected> {
        self.read(&self.inner.bus.results, id).await
    }

    /// Entry `id` of `store` (JSON): `Ok(None)` if there is none (or it does not parse),
    /// `Err` if the broker cannot be asked.
    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        store: &async_nats::jetstream::kv::Store,
        id: &str,
    ) -> Result<Option<T>, Rejected> {
        self.reachable()?;
        match store.get(id).await {
            Ok(raw) => Ok(raw.and_then(|raw| serde_json::from_slice(&raw).ok())),
            Err(e) => {
                debug!(job = %id, error = %e, "reading the fleet's record of a job failed");
                Err(broker_unreachable())
            }
        }
    }

    /// Cancels job `id`, which another gateway took and which has not finished (`entry`,
    /// as read from its accepted entry): every gateway then shows it cancelled, a worker
    /// running it stops, one that has not started it does not, and the gateway that took
    /// it cancels its own record.
    pub async fn cancel_elsewhere(&self, id: &str, entry: super::Accepted) {
        cancel_job(self.inner.bus.clone(), id.to_owned(), Some(entry)).await;
    }

    /// Job `id` as the fleet knows it: finished, or an asynchronous job some gateway
    /// accepted and that has not finished. `Ok(None)` if the broker knows no such job,
    /// `Err` if it cannot be asked.
    pub async fn fleet_job(&self, id: &str) -> Result<Option<FleetJob>, Rejected> {
        if let Some(env) = self.find(id).await? {
            return Ok(Some(FleetJob::Done(Box::new(env))));
        }
        let accepted = self.read(&self.inner.bus.accepted, id).await?;
        Ok(accepted.map(FleetJob::Pending))
    }

    /// Publishes `job` and waits for its result, passing usage to `events` and, with `io`,
    /// stages and output to its events and its input to the worker. `stored` is told once
    /// the job stream holds the job.
    pub async fn run(
        &self,
        mut job: JobMessage,
        expected: Duration,
        events: Option<mpsc::Sender<WorkerEvent>>,
        mut io: Option<&mut RunIo>,
        stored: Option<tokio::sync::oneshot::Sender<()>>,
        cancel: Option<&tokio_util::sync::CancellationToken>,
    ) -> RunResult {
        let id = job.item.id.clone();
        let bus = &self.inner.bus;
        let client = &bus.client;
        let subs = tokio::try_join!(
            client.subscribe(done_subject(&id)),
            client.subscribe(events_subject(&id)),
        );
        let (mut done, mut evs) = match subs {
            Ok(s) => s,
            Err(e) => return internal_error(&job.item, &format!("the fleet's broker: {e}")),
        };
        let class = Class::of(expected);
        let subject = job_subject(&job.item.language, class);
        // The subject's consumer exists before its first job, even with no worker yet:
        // the manager measures the backlog on the consumers.
        let name = cod_fleet::bus::consumer_name(&job.item.language, class);
        if !self.inner.consumers.lock().contains(&name) {
            match bus.consumer(&job.item.language, class).await {
                Ok(_) => {
                    self.inner.consumers.lock().insert(name);
                }
                Err(e) => warn!(error = %e, "making the job consumer failed; a worker will"),
            }
        }
        // An asynchronous job: every gateway can tell of it from its accepted entry, made
        // before any worker can start it (the worker's own entry then replaces it). Only a
        // job whose entry was made is tracked: a worker takes a tracked job whose entry is
        // gone for one cancelled before it started.
        let mut tracked = None;
        if stored.is_some() {
            let entry = super::Accepted::queued(&job);
            job.tracked = super::store_accepted(bus, &id, &entry).await;
            tracked = job.tracked.then_some(entry);
        }
        // A tracked job may be cancelled through another gateway: then this one, which
        // waits for its result, cancels its own record of it.
        let mut cancels = match (&tracked, cancel) {
            (Some(_), Some(_)) => client.subscribe(cancel_subject(&id)).await.ok(),
            _ => None,
        };
        let payload: bytes::Bytes = postcard::to_stdvec(&job).unwrap_or_default().into();
        self.inner.inflight.fetch_add(1, Ordering::Relaxed);
        let mut guard = InFlight {
            inner: self.inner.clone(),
            id: id.clone(),
            finished: false,
            tracked,
        };
        if let Err(e) = publish(bus, &subject, &id, payload).await {
            guard.finished = true;
            if job.tracked {
                let _ =
                    tokio::time::timeout(super::worker::SERVER_PATIENCE, bus.accepted.purge(&id))
                        .await;
            }
            return internal_error(
                &job.item,
                &format!("the fleet's broker did not take the run: {e}"),
            );
        }
        if let Some(s) = stored {
            let _ = s.send(());
        }
        let mut input = io.as_mut().and_then(|io| io.input.take());
        let mut poll = tokio::time::interval(POLL);
        poll.tick().await;
        // Per delivery: events received, the last one's number.
        let (mut attempt, mut received, mut last) = (0u32, 0u64, 0u64);
        let envelope: Envelope = loop {
            tokio::select! {
                Some(m) = done.next() => {
                    if let Ok(env) = serde_json::from_slice(&m.payload) {
                        break env;
                    }
                }
                Some(m) = evs.next() => {
                    let Ok(e) = postcard::from_bytes::<WireEvent>(&m.payload) else { continue };
                    if e.attempt != attempt {
                        (attempt, received) = (e.attempt, 0);
                    }
                    received += 1;
                    last = e.seq;
                    relay(e.kind, events.as_ref(), io.as_deref_mut()).await;
                    if received % ACK_EVERY == 0 {
                        let _ = client.publish(events_ack_subject(&id), format!("{attempt} {last}").into()).await;
                    }
                }
                Some(i) = recv(&mut input) => {
                    let w = match i {
                        RunInput::Stdin(b) => WireInput::Stdin(b),
                        RunInput::Close => WireInput::Close,
                        RunInput::Kill => WireInput::Kill,
                    };
                    if let Ok(bytes) = postcard::to_stdvec(&w) {
                        let _ = client.publish(input_subject(&id), bytes.into()).await;
                    }
                }
                _ = poll.tick() => {
                    if let Some(env) = self.lookup(&id).await {
                        break env;
                    }
                }
                Some(_) = next_cancel(&mut cancels) => {
                    // Cancelled through another gateway: the caller's cancellation drops
                    // this wait (and so cancels the job here too).
                    if let Some(c) = cancel {
                        c.cancel();
                    }
                    cancels = None;
                }
            }
        };
        // Output the worker sent before its result: all of it, in order.
        if io.is_some() && (attempt != envelope.attempt || last < envelope.events) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while attempt != envelope.attempt || last < envelope.events {
                let Ok(Some(m)) = tokio::time::timeout_at(deadline, evs.next()).await else {
                    warn!(job = %id, "the run's last events did not arrive");
                    break;
                };
                let Ok(e) = postcard::from_bytes::<WireEvent>(&m.payload) else {
                    continue;
                };
                if e.attempt != envelope.attempt {
                    continue;
                }
                (attempt, last) = (e.attempt, e.seq);
                relay(e.kind, events.as_ref(), io.as_deref_mut()).await;
            }
        }
        guard.finished = true;
        debug!(job = %id, worker = %envelope.worker, attempt = envelope.attempt, "result");
        envelope.result
    }
}

/// The next cancel heard on `sub`; never, without one.
async fn next_cancel(sub: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match sub {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn recv(input: &mut Option<mpsc::Receiver<RunInput>>) -> Option<RunInput> {
    match input {
        Some(rx) => match rx.recv().await {
            Some(i) => Some(i),
            None => {
                // The caller closed its input: nothing more will come.
                *input = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// Passes one event on: usage to the scheduler's events, the rest to the run's stream.
async fn relay(kind: WireKind, events: Option<&mpsc::Sender<WorkerEvent>>, io: Option<&mut RunIo>) {
    let stage = |compile: bool| {
        if compile {
            StageKind::Compile
        } else {
            StageKind::Run
        }
    };
    let event = match kind {
        WireKind::Started { .. } => return,
        WireKind::Stage { compile } => RunEvent::Stage(stage(compile)),
        WireKind::Out {
            compile,
            stderr,
            data,
        } => RunEvent::Output {
            stage: stage(compile),
            stream: if stderr {
                OutStream::Stderr
            } else {
                OutStream::Stdout
            },
            data,
        },
        WireKind::Usage {
            compile,
            cpu_ms,
            memory_kb,
            wall_ms,
        } => {
            if let Some(ev) = events {
                let _ = ev.try_send(WorkerEvent::Usage(Usage {
                    cpu_ms,
                    memory_kb,
                    wall_ms,
                }));
            }
            RunEvent::Usage {
                stage: stage(compile),
                cpu_ms,
                memory_kb,
                wall_ms,
            }
        }
    };
    if let Some(io) = io {
        // Waiting here is the backpressure: a slow reader stops the acknowledgements.
        let _ = io.events.send(event).await;
    }
}

/// Publishes a job and waits for JetStream to store it, retrying for [`PUBLISH_PATIENCE`].
async fn publish(bus: &Bus, subject: &str, id: &str, payload: bytes::Bytes) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + PUBLISH_PATIENCE;
    let mut pause = Duration::from_millis(50);
    loop {
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, id);
        let err = match bus
            .js
            .publish_with_headers(subject.to_owned(), headers, payload.clone())
            .await
        {
            Ok(ack) => match ack.await {
                Ok(_) => return Ok(()),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() + pause > deadline {
            return Err(err);
        }
        warn!(job = %id, error = %err, "publishing the run failed; retrying");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}
