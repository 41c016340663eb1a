//! One path for every run, whatever route it came in by: admission by the scheduler (or a
//! 429), a record in the job table, the wait for a slot, the run on the worker with its
//! live usage, metrics, the result, and for asynchronous jobs the callback.
//!
//! A synchronous caller awaits the returned future: if it goes away, the future is dropped,
//! which leaves the queue or kills the run. An asynchronous job runs in a task of its own,
//! counted for the shutdown drain; cancelling it by id goes through its token.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cod_core::{RunResult, Status};
use cod_sched::{Ticket, Waiter, WorkerEvent};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use crate::AppState;
use crate::auth::Caller;
use crate::cases::{TestCase, TestsResult};
use crate::error::ApiError;
use crate::jobs::{CallbackState, CallbackView, Finisher, JobOutput, JobState, Record};
use crate::judge0::Stored as Judge0Stored;
use crate::metrics;
use crate::worker::WorkItem;

/// Told when a job is stored durably (see [`Admitted::spawn`]).
pub(crate) type Stored = tokio::sync::oneshot::Sender<()>;

/// Where and how to call back when an asynchronous job finishes.
#[derive(Clone, Debug)]
pub(crate) struct CallbackSpec {
    pub(crate) url: String,
    /// Native callbacks are POSTed; Judge0's are PUT, as Judge0 does.
    pub(crate) method: reqwest::Method,
}

/// A checked job, ready to be admitted.
#[derive(Debug)]
pub(crate) struct Submission {
    pub(crate) caller: Caller,
    pub(crate) item: WorkItem,
    pub(crate) tests: Option<Vec<TestCase>>,
    pub(crate) callback: Option<CallbackSpec>,
    pub(crate) judge0: Option<Arc<Judge0Stored>>,
    /// Keep the record (and result) after it finishes.
    pub(crate) keep: bool,
}

/// An admitted job.
pub(crate) struct Admitted {
    st: AppState,
    sub: Submission,
    ticket: Ticket,
    waiter: Waiter,
    cancel: CancellationToken,
}

impl Admitted {
    /// The job's id.
    pub(crate) fn id(&self) -> &str {
        &self.sub.item.id
    }
}

fn ticket(caller: &Caller, item: &WorkItem) -> Ticket {
    // A run holds its slot at most for its wall limits (compile and run) and a margin.
    let bound = Duration::from_millis(item.limits.wall_ms + item.compile_limits.wall_ms)
        + Duration::from_secs(1);
    let mut t = Ticket::new(
        item.id.clone(),
        caller.client.0.clone(),
        item.language.clone(),
    )
    .with_content(item.content_key())
    .with_bound(bound);
    t.limits = caller.limits;
    t
}

impl AppState {
    /// Admits `sub` (or refuses it with a 429) and records it as queued.
    pub(crate) fn admit(&self, sub: Submission) -> Result<Admitted, ApiError> {
        let ticket = ticket(&sub.caller, &sub.item);
        if let Some(remote) = self.worker.remote() {
            remote.admit().map_err(|r| {
                metrics::rejected(r.reason);
                tracing::info!(job = %sub.item.id, client = %sub.caller.client, reason = r.reason.as_str(), "run refused by the fleet's admission");
                ApiError::Overloaded(r)
            })?;
        }
        let prefer = self.worker.warm_slots(&sub.item.language);
        let waiter = self
            .scheduler
            .enqueue(ticket.clone(), &prefer)
            .map_err(|r| {
                metrics::rejected(r.reason);
                tracing::info!(job = %sub.item.id, client = %sub.caller.client, reason = r.reason.as_str(), "run refused");
                ApiError::Overloaded(r)
            })?;
        let cancel = CancellationToken::new();
        self.jobs.insert(Record {
            id: sub.item.id.clone(),
            client: sub.caller.client.clone(),
            language: sub.item.language.clone(),
            state: JobState::Queued,
            created: SystemTime::now(),
            started: None,
            finished: None,
            slot: None,
            expected: waiter.expected(),
            waited: None,
            usage: None,
            output: None,
            callback: sub.callback.as_ref().map(|c| CallbackView {
                url: c.url.clone(),
                state: CallbackState::Pending,
                attempts: 0,
                last_error: None,
            }),
            cancel: cancel.clone(),
            done: tokio::sync::watch::Sender::new(JobState::Queued),
            keep: sub.keep,
            judge0: sub.judge0.clone(),
        });
        Ok(Admitted {
            st: self.clone(),
            sub,
            ticket,
            waiter,
            cancel,
        })
    }
}

/// Cancels a synchronous job if its caller goes away before the end (the future is
/// dropped: the run has left the queue or been killed), and removes its record.
struct SyncGuard {
    st: AppState,
    id: String,
    armed: bool,
}

impl Drop for SyncGuard {
    fn drop(&mut self) {
        if self.armed {
            metrics::cancelled();
            tracing::info!(job = %self.id, "job cancelled: its client went away");
            self.st.jobs.finish(&self.id, JobState::Cancelled, None);
        }
    }
}

impl Admitted {
    /// Runs the job here, for a caller that waits: `None` when it was cancelled.
    pub(crate) async fn run(self) -> Option<JobOutput> {
        let id = self.sub.item.id.clone();
        let jobs = self.st.jobs.clone();
        // Dropped before the end (the caller went away): recorded as cancelled.
        let mut guard = SyncGuard {
            st: self.st.clone(),
            id: id.clone(),
            armed: true,
        };
        let (state, output) = self.execute(None).await;
        guard.armed = false;
        jobs.finish(&id, state, output)
    }

    /// Runs the job in a task of its own; returns its id once the job is stored where it
    /// survives this process (in the distributed mode: in the job stream), so that an
    /// accepted job is never lost.
    pub(crate) async fn spawn(self) -> String {
        if self.st.worker.remote().is_none() {
            // The embedded mode: accepted jobs live in this process, queued or not.
            return self.spawn_with(None);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let id = self.spawn_with(Some(tx));
        // Dropped unsent (a failure the job's result reports): go on.
        let _ = rx.await;
        id
    }

    fn spawn_with(self, stored: Option<Stored>) -> String {
        let id = self.sub.item.id.clone();
        let st = self.st.clone();
        let tracked = st.jobs.track();
        let finisher = Finisher::new(st.jobs.clone(), id.clone());
        let callback = self.sub.callback.clone();
        let judge0 = self.sub.judge0.clone();
        let job_id = id.clone();
        // In the request's span: the job's log lines carry the request that made it.
        let task = async move {
            let _tracked = tracked;
            let (state, output) = self.execute(stored).await;
            st.jobs.finish(&job_id, state, output);
            finisher.done();
            if let Some(cb) = callback {
                let body = match &judge0 {
                    Some(j) => crate::judge0::callback_body(&st, &job_id, j),
                    None => st
                        .jobs
                        .get(&job_id, None)
                        .and_then(|v| serde_json::to_vec(&v).ok()),
                };
                if let Some(body) = body {
                    st.callbacks
                        .deliver(&st.jobs, &job_id, &cb.url, cb.method, body)
                        .await;
                }
            }
        };
        tokio::spawn(task.in_current_span());
        id
    }

    async fn execute(self, stored: Option<Stored>) -> (JobState, Option<JobOutput>) {
        let Admitted {
            st,
            sub,
            ticket,
            waiter,
            cancel,
        } = self;
        let span = info_span!("job", id = %sub.item.id, client = %sub.caller.client, language = %sub.item.language);
        async move {
            let out = match &sub.tests {
                None => run_one(
                    &st,
                    &sub.item.id,
                    &ticket,
                    &sub.item,
                    waiter,
                    &cancel,
                    stored,
                )
                .await
                .map(|r| JobOutput::Run(Box::new(r))),
                Some(cases) => run_cases(&st, &ticket, &sub.item, cases, waiter, &cancel, stored)
                    .await
                    .map(|t| JobOutput::Tests(Box::new(t))),
            };
            match out {
                Some(o) => (JobState::Done, Some(o)),
                None => {
                    metrics::cancelled();
                    tracing::info!("job cancelled");
                    (JobState::Cancelled, None)
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// Waits for the slot and runs `item`, updating record `record`; `None` if cancelled.
async fn run_one(
    st: &AppState,
    record: &str,
    ticket: &Ticket,
    item: &WorkItem,
    waiter: Waiter,
    cancel: &CancellationToken,
    stored: Option<Stored>,
) -> Option<RunResult> {
    let mut permit = tokio::select! {
        p = waiter => p,
        () = cancel.cancelled() => return None,
    };
    st.jobs.started(record, permit.slot(), permit.waited());
    metrics::started(&item.language, permit.waited());
    let (tx, mut rx) = mpsc::channel(16);
    let run = st.worker.run(
        item,
        &ticket.client.0,
        permit.slot(),
        permit.expected(),
        tx,
        stored,
        cancel,
    );
    tokio::pin!(run);
    let result = loop {
        tokio::select! {
            r = &mut run => break r,
            () = cancel.cancelled() => return None,
            Some(event) = rx.recv() => {
                if let WorkerEvent::Usage(u) = event {
                    st.jobs.usage(record, u);
                }
            }
        }
    };
    metrics::finished(&item.language, permit.held(), &result);
    if result.run.status != Status::InternalError {
        permit.complete(ticket);
    }
    Some(result)
}

/// Runs every case: the first alone (it compiles, and its compile is cached), then the
/// rest at once, each in a slot of its own. `None` if cancelled.
async fn run_cases(
    st: &AppState,
    ticket: &Ticket,
    item: &WorkItem,
    cases: &[TestCase],
    waiter: Waiter,
    cancel: &CancellationToken,
    stored: Option<Stored>,
) -> Option<TestsResult> {
    let record = item.id.clone();
    let case_item = |i: usize, c: &TestCase| {
        item.with_stdin(
            format!("{}.{i}", item.id),
            c.stdin.clone().unwrap_or_default().into_bytes(),
        )
    };
    let first_item = case_item(0, &cases[0]);
    let first_ticket = Ticket {
        id: cod_sched::JobId(first_item.id.clone()),
        content: Some(first_item.content_key()),
        ..ticket.clone()
    };
    let first = run_one(
        st,
        &record,
        &first_ticket,
        &first_item,
        waiter,
        cancel,
        stored,
    )
    .await?;
    let mut results = vec![first.clone()];
    if first.run.status == Status::CompileError {
        // The program does not compile: every case has the same answer.
        for i in 1..cases.len() {
            let mut r = first.clone();
            r.id = format!("{}.{i}", item.id);
            results.push(r);
        }
        return Some(TestsResult::new(cases, results));
    }
    let mut set = JoinSet::new();
    for (i, c) in cases.iter().enumerate().skip(1) {
        let it = case_item(i, c);
        let t = Ticket {
            id: cod_sched::JobId(it.id.clone()),
            content: Some(it.content_key()),
            ..ticket.clone()
        };
        // Admitted with the job: the later cases are not refused.
        let w = st
            .scheduler
            .enqueue_admitted(t.clone(), &st.worker.warm_slots(&it.language));
        let (st, record, cancel) = (st.clone(), record.clone(), cancel.clone());
        set.spawn(
            async move { (i, run_one(&st, &record, &t, &it, w, &cancel, None).await) }
                .in_current_span(),
        );
    }
    let mut rest: Vec<(usize, RunResult)> = Vec::with_capacity(cases.len() - 1);
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, Some(r))) => rest.push((i, r)),
            Ok((_, None)) => return None,
            Err(e) => {
                tracing::error!(error = %e, "a test case's task failed");
                let mut r = crate::worker::internal_error(item, "a test case's task failed");
                r.id = format!("{}.?", item.id);
                rest.push((usize::MAX, r));
            }
        }
    }
    rest.sort_by_key(|(i, _)| *i);
    results.extend(rest.into_iter().map(|(_, r)| r));
    Some(TestsResult::new(cases, results))
}
