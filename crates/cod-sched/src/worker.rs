//! The seam between the scheduler and whatever executes runs.
//!
//! A [`Worker`] runs one job in one slot and reports [`WorkerEvent`]s while it does. Jobs,
//! outputs and events are serializable: the in-process worker (the executor behind the
//! HTTP server) passes them by value today; a worker on another machine receives the same
//! values through a broker. [`Scheduler::run`] ties the two together: admission, the wait
//! for a slot (preferring the worker's warm slots), the run, and the run's length going
//! into the scheduler's history.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::scheduler::{Rejected, Scheduler};
use crate::ticket::Ticket;

/// Resources a running job uses, so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time of all its processes, ms.
    pub cpu_ms: u64,
    /// Memory in use (or its peak so far), KiB.
    pub memory_kb: u64,
    /// Wall-clock time since it started, ms.
    pub wall_ms: u64,
}

/// What a worker reports about a job while it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum WorkerEvent {
    /// The job got slot `slot` and started.
    Started {
        /// The slot.
        slot: u32,
    },
    /// Live resource usage.
    Usage(Usage),
}

/// Something that runs jobs in slots: the local executor now, a remote worker later.
pub trait Worker: Send + Sync {
    /// What a run needs.
    type Job: Serialize + DeserializeOwned + Send + Sync;
    /// What a run answers.
    type Output: Serialize + DeserializeOwned + Send;

    /// Slots whose warm runtime for `runtime` is ready: the scheduler prefers them.
    fn warm_slots(&self, runtime: &str) -> Vec<u32>;

    /// Runs `job` in `slot`, which the caller holds exclusively, sending events to
    /// `events` (a full or closed channel must not stop the run). Dropping the future
    /// cancels the run and kills what it started.
    fn run(
        &self,
        job: &Self::Job,
        slot: u32,
        events: mpsc::Sender<WorkerEvent>,
    ) -> impl Future<Output = Self::Output> + Send;
}

impl Scheduler {
    /// Admits `ticket`, waits for a slot (preferring `worker`'s warm slots for its
    /// runtime), and runs `job` there. Events go to `events`, starting with
    /// [`WorkerEvent::Started`]. Dropping the future leaves the queue or cancels the run.
    pub async fn run<W: Worker>(
        &self,
        worker: &W,
        ticket: &Ticket,
        job: &W::Job,
        events: mpsc::Sender<WorkerEvent>,
    ) -> Result<W::Output, Rejected> {
        let prefer = worker.warm_slots(&ticket.runtime);
        let mut permit = self.enqueue(ticket.clone(), &prefer)?.await;
        let _ = events.try_send(WorkerEvent::Started {
            slot: permit.slot(),
        });
        let out = worker.run(job, permit.slot(), events).await;
        permit.complete(ticket);
        Ok(out)
    }
}
