//! Worker slots for the editor's runs and compiles, and for streamed runs: the one place
//! that talks to the scheduler on their behalf.
//!
//! A run from the editor or from `?stream=true` waits for its slot like any other run. A
//! compile-ahead is speculative: it takes a slot only if one is free at that very moment,
//! so it never waits in the queue, never overtakes a run, and never makes a run wait
//! behind it for longer than one compile (see [`idle_slot`]).

use std::time::Duration;

use cod_runtime::Job;
use cod_sched::{Rejected, Ticket};
use futures_util::FutureExt as _;

use crate::AppState;
use crate::auth::Caller;

/// A held worker slot; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Permit {
    inner: cod_sched::Permit,
    ticket: Ticket,
}

impl Permit {
    /// The slot number.
    pub(crate) fn slot(&self) -> u32 {
        self.inner.slot()
    }

    /// Who the run is for.
    pub(crate) fn client(&self) -> &str {
        &self.ticket.client.0
    }

    /// The run started in this slot: counted in the metrics with its wait.
    pub(crate) fn started(&self) {
        crate::metrics::started(&self.ticket.runtime, self.inner.waited());
    }

    /// The run ended normally: counted in the metrics, its length goes into the
    /// scheduler's history (a cancelled run's does not), and the slot is freed.
    pub(crate) fn finished(mut self, result: &cod_core::RunResult) {
        crate::metrics::finished(&self.ticket.runtime, self.inner.held(), result);
        self.inner.complete(&self.ticket);
    }
}

/// The scheduler's view of `job` for `caller`: fair share and limits go by its client.
fn ticket(job: &Job, caller: &Caller) -> Ticket {
    // A run holds its slot at most for its wall limits (compile and run) and a margin.
    let bound = Duration::from_millis(job.limits.wall_ms + job.compile_limits.wall_ms)
        + Duration::from_secs(1);
    let mut t = Ticket::new(
        job.id.clone(),
        caller.client.0.clone(),
        job.language.name.clone(),
    )
    .with_bound(bound);
    t.limits = caller.limits;
    t
}

/// Waits for a slot for `job` in the queue, like any run of `caller`. Among free slots it
/// takes one where its runtime is warm, else one other than `avoid` (a slot that has just
/// compiled ahead is still cleaning its sandbox up for a few milliseconds).
pub(crate) async fn run_slot(
    st: &AppState,
    job: &Job,
    caller: &Caller,
    avoid: Option<u32>,
) -> Result<Permit, Rejected> {
    if let Some(remote) = st.worker.remote() {
        remote.admit().inspect_err(|r| {
            crate::metrics::rejected(r.reason);
            tracing::info!(job = %job.id, client = %caller.client, reason = r.reason.as_str(), "run refused by the fleet's admission");
        })?;
    }
    let ticket = ticket(job, caller);
    let mut prefer = st.executor.warm_slots(&job.language.name);
    if prefer.is_empty()
        && let Some(avoid) = avoid
    {
        let workers = u32::try_from(workers(st)).unwrap_or(u32::MAX);
        prefer = (0..workers).filter(|s| *s != avoid).collect();
    }
    let waiter = st.scheduler.enqueue(ticket.clone(), &prefer).inspect_err(|r| {
        crate::metrics::rejected(r.reason);
        tracing::info!(job = %job.id, client = %caller.client, reason = r.reason.as_str(), "run refused");
    })?;
    Ok(Permit {
        inner: waiter.await,
        ticket,
    })
}

/// A slot for `job` if one is free right now and no run waits; `None` (and no place in the
/// queue, no refusal counted) otherwise.
pub(crate) fn idle_slot(st: &AppState, job: &Job, caller: &Caller) -> Option<Permit> {
    let stats = st.scheduler.stats();
    if stats.running >= stats.workers || stats.queued > 0 {
        return None;
    }
    let ticket = ticket(job, caller);
    let waiter = st.scheduler.enqueue_admitted(ticket.clone(), &[]);
    // A free slot is granted at once; otherwise (a run took it meanwhile) dropping the
    // waiter leaves the queue.
    let inner = waiter.now_or_never()?;
    Some(Permit { inner, ticket })
}

/// Slots in all.
pub(crate) fn workers(st: &AppState) -> usize {
    st.scheduler.stats().workers
}
