//! The job table: every run the server has accepted, from the moment it is queued until
//! its result expires. Synchronous runs (`/api/v1/run`, Piston) are listed while they run
//! and forgotten when answered; asynchronous jobs keep their result for
//! `jobs.retention`. Operators list jobs with their live usage and cancel them by id.
//!
//! A job's state only moves forward: `queued` → `running` → `done`, or `cancelled` from
//! either of the first two. An accepted job always reaches `done` or `cancelled`: its task
//! holds a `Finisher` whose drop records an internal error if the task ended otherwise.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use cod_core::RunResult;
use cod_core::config::JobsConfig;
use cod_sched::{ClientId, Usage};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::cases::TestsResult;
use crate::judge0::Stored as Judge0Stored;

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a worker slot.
    Queued,
    /// Running in a slot.
    Running,
    /// Finished: the result is there.
    Done,
    /// Cancelled by its owner or an operator before it finished.
    Cancelled,
}

impl JobState {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Cancelled => "cancelled",
        }
    }

    fn finished(self) -> bool {
        matches!(self, JobState::Done | JobState::Cancelled)
    }
}

/// What a finished job produced.
#[derive(Clone, Debug)]
pub enum JobOutput {
    /// One run.
    Run(Box<RunResult>),
    /// Test cases of one program.
    Tests(Box<TestsResult>),
}

/// Where a job's callback stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallbackState {
    /// Not delivered yet (the job runs, or attempts go on).
    Pending,
    /// A 2xx answer came back.
    Delivered,
    /// Every attempt failed.
    Failed,
}

/// A job's callback, as shown on the job.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CallbackView {
    /// Where it goes.
    pub url: String,
    /// Where it stands.
    pub state: CallbackState,
    /// Attempts made so far.
    pub attempts: u32,
    /// What went wrong the last time, if it did.
    pub last_error: Option<String>,
}

/// Live resource usage of a running job.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageView {
    /// Wall-clock time since it got its slot, ms.
    pub wall_ms: u64,
    /// CPU time of its processes, ms (from the sandbox's reports; absent before the first).
    pub cpu_ms: Option<u64>,
    /// Peak memory so far, KiB (likewise).
    pub memory_kb: Option<u64>,
}

/// One job as the API shows it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct JobView {
    /// The job's id.
    pub id: String,
    /// Where it is in its life.
    pub state: JobState,
    /// Canonical language name.
    pub language: String,
    /// Who submitted it: the API key's name, or the remote address.
    pub client: String,
    /// When it was accepted (RFC 3339).
    pub created_at: String,
    /// When it got a slot.
    pub started_at: Option<String>,
    /// When it finished or was cancelled.
    pub finished_at: Option<String>,
    /// The worker slot it runs (or ran) in.
    pub slot: Option<u32>,
    /// How long the scheduler expects it to hold a slot, ms.
    pub expected_ms: u64,
    /// How long it waited for a slot, ms.
    pub waited_ms: Option<u64>,
    /// While it runs: resources used so far.
    pub usage: Option<UsageView>,
    /// When it is done: the run's result (for a job with `tests`, see `tests`).
    #[schema(value_type = Option<Object>)]
    pub result: Option<RunResult>,
    /// When it is done, for a job with `tests`: each case's result.
    pub tests: Option<TestsResult>,
    /// The callback, if the job has one.
    pub callback: Option<CallbackView>,
    /// In the distributed mode, read from the results bucket: the worker that ran it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// In the distributed mode: which delivery of the job gave the result (1: the first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

/// A job's record.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) id: String,
    pub(crate) client: ClientId,
    pub(crate) language: String,
    pub(crate) state: JobState,
    pub(crate) created: SystemTime,
    pub(crate) started: Option<(SystemTime, Instant)>,
    pub(crate) finished: Option<SystemTime>,
    pub(crate) slot: Option<u32>,
    pub(crate) expected: Duration,
    pub(crate) waited: Option<Duration>,
    pub(crate) usage: Option<Usage>,
    pub(crate) output: Option<JobOutput>,
    pub(crate) callback: Option<CallbackView>,
    pub(crate) cancel: CancellationToken,
    /// The state, for waiters on the end.
    pub(crate) done: tokio::sync::watch::Sender<JobState>,
    /// Kept after it finishes (asynchronous jobs); synchronous runs are dropped.
    pub(crate) keep: bool,
    /// The Judge0 submission it came from, if it did.
    pub(crate) judge0: Option<Arc<Judge0Stored>>,
}

impl Record {
    pub(crate) fn view(&self) -> JobView {
        let usage = match (self.state, self.started) {
            (JobState::Running, Some((_, at))) => Some(UsageView {
                wall_ms: millis(at.elapsed()),
                cpu_ms: self.usage.map(|u| u.cpu_ms),
                memory_kb: self.usage.map(|u| u.memory_kb),
            }),
            _ => None,
        };
        let (result, tests) = match &self.output {
            Some(JobOutput::Run(r)) => (Some((**r).clone()), None),
            Some(JobOutput::Tests(t)) => (None, Some((**t).clone())),
            None => (None, None),
        };
        JobView {
            id: self.id.clone(),
            state: self.state,
            language: self.language.clone(),
            client: self.client.0.clone(),
            created_at: rfc3339(self.created),
            started_at: self.started.map(|(t, _)| rfc3339(t)),
            finished_at: self.finished.map(rfc3339),
            slot: self.slot,
            expected_ms: millis(self.expected),
            waited_ms: self.waited.map(millis),
            usage,
            result,
            tests,
            callback: self.callback.clone(),
            worker: None,
            attempt: None,
        }
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// RFC 3339 with milliseconds, UTC (`2024-05-01T12:00:00.123Z`), as Judge0 writes times.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[derive(Debug, Default)]
struct Table {
    records: HashMap<String, Record>,
    /// Finished kept jobs, oldest first.
    finished: VecDeque<(Instant, String)>,
}

/// Every accepted job.
#[derive(Debug)]
pub struct Jobs {
    config: JobsConfig,
    table: Mutex<Table>,
    /// Tasks of asynchronous jobs and callbacks still going.
    active: AtomicUsize,
    idle: Notify,
}

/// A filter for [`Jobs::list`].
#[derive(Debug, Default)]
pub(crate) struct Filter<'a> {
    pub(crate) state: Option<JobState>,
    pub(crate) ids: Option<&'a [String]>,
    /// Only this client's jobs (`None`: everyone's).
    pub(crate) client: Option<&'a ClientId>,
}

impl Jobs {
    /// An empty table that keeps results as `config` says.
    pub fn new(config: JobsConfig) -> Jobs {
        Jobs {
            config,
            table: Mutex::new(Table::default()),
            active: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &JobsConfig {
        &self.config
    }

    /// Adds a queued job.
    pub(crate) fn insert(&self, record: Record) {
        let mut t = self.table.lock();
        Self::expire(&mut t, &self.config);
        t.records.insert(record.id.clone(), record);
    }

    /// Runs `f` on the job `id` if it exists.
    pub(crate) fn update<R>(&self, id: &str, f: impl FnOnce(&mut Record) -> R) -> Option<R> {
        self.table.lock().records.get_mut(id).map(f)
    }

    /// Marks `id` as started in `slot`.
    pub(crate) fn started(&self, id: &str, slot: u32, waited: Duration) {
        self.update(id, |r| {
            if r.state == JobState::Queued {
                r.state = JobState::Running;
                r.done.send_replace(JobState::Running);
                r.started = Some((SystemTime::now(), Instant::now()));
                r.slot = Some(slot);
                r.waited = Some(waited);
            }
        });
    }

    /// Records live usage of `id`.
    pub(crate) fn usage(&self, id: &str, usage: Usage) {
        self.update(id, |r| r.usage = Some(usage));
    }

    /// Finishes `id` with `state` and `output`; forgets it unless it is kept. Hands
    /// `output` back (a copy of it when the job is kept).
    pub(crate) fn finish(
        &self,
        id: &str,
        state: JobState,
        output: Option<JobOutput>,
    ) -> Option<JobOutput> {
        let mut t = self.table.lock();
        let Some(r) = t.records.get_mut(id) else {
            return output;
        };
        if r.state.finished() {
            return output;
        }
        r.state = state;
        r.finished = Some(SystemTime::now());
        r.usage = None;
        r.done.send_replace(state);
        if r.keep {
            r.output.clone_from(&output);
            t.finished.push_back((Instant::now(), id.to_owned()));
        } else {
            t.records.remove(id);
        }
        Self::expire(&mut t, &self.config);
        output
    }

    /// Waits (up to `timeout`, or for good with `None`) until `id` is finished; its view
    /// then, if it still exists.
    pub(crate) async fn wait_finished(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Option<JobView> {
        let mut rx = self.update(id, |r| r.done.subscribe())?;
        let finished = rx.wait_for(|s| s.finished());
        match timeout {
            Some(t) => {
                let _ = tokio::time::timeout(t, finished).await;
            }
            None => {
                let _ = finished.await;
            }
        }
        self.get(id, None)
    }

    /// Waits (up to `timeout`) until job `id`'s state satisfies `want`; its view then
    /// (`None` if there is no such job or the time ran out).
    pub async fn wait_state(
        &self,
        id: &str,
        want: impl Fn(JobState) -> bool,
        timeout: Duration,
    ) -> Option<JobView> {
        let mut rx = self.update(id, |r| r.done.subscribe())?;
        let reached = tokio::time::timeout(timeout, rx.wait_for(|s| want(*s))).await;
        match reached {
            Ok(Ok(_)) => self.get(id, None),
            _ => None,
        }
    }

    /// The view of job `id`, whoever owns it.
    pub fn view(&self, id: &str) -> Option<JobView> {
        self.get(id, None)
    }

    /// Removes `id` whatever its state (a job whose batch was refused).
    pub(crate) fn forget(&self, id: &str) {
        self.table.lock().records.remove(id);
    }

    /// Cancels `id`: a queued job leaves the queue, a running one is killed. Returns the
    /// job's view, or `None` when there is no such job (or `client` may not see it).
    pub(crate) fn cancel(&self, id: &str, client: Option<&ClientId>) -> Option<JobView> {
        let t = self.table.lock();
        let r = t.records.get(id)?;
        if client.is_some_and(|c| *c != r.client) {
            return None;
        }
        if !r.state.finished() {
            r.cancel.cancel();
        }
        Some(r.view())
    }

    /// The view of `id`, if `client` (or anyone, with `None`) may see it.
    pub(crate) fn get(&self, id: &str, client: Option<&ClientId>) -> Option<JobView> {
        let mut t = self.table.lock();
        Self::expire(&mut t, &self.config);
        t.records
            .get(id)
            .filter(|r| client.is_none_or(|c| *c == r.client))
            .map(Record::view)
    }

    /// Runs `f` on the record of `id` without copying it out.
    pub(crate) fn with<R>(&self, id: &str, f: impl FnOnce(&Record) -> R) -> Option<R> {
        let mut t = self.table.lock();
        Self::expire(&mut t, &self.config);
        t.records.get(id).map(f)
    }

    /// Jobs matching `filter`, oldest first.
    pub(crate) fn list(&self, filter: &Filter<'_>) -> Vec<JobView> {
        let mut t = self.table.lock();
        Self::expire(&mut t, &self.config);
        let mut out: Vec<&Record> = t
            .records
            .values()
            .filter(|r| filter.state.is_none_or(|s| s == r.state))
            .filter(|r| filter.ids.is_none_or(|ids| ids.contains(&r.id)))
            .filter(|r| filter.client.is_none_or(|c| *c == r.client))
            .collect();
        out.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        out.into_iter().map(Record::view).collect()
    }

    /// Live totals over running jobs: (count, CPU ms, memory KiB) from their usage reports.
    pub(crate) fn running_usage(&self) -> (usize, u64, u64) {
        let t = self.table.lock();
        t.records
            .values()
            .filter(|r| r.state == JobState::Running)
            .fold((0, 0, 0), |(n, c, m), r| {
                let u = r.usage.unwrap_or_default();
                (n + 1, c + u.cpu_ms, m + u.memory_kb)
            })
    }

    /// Drops finished jobs past their retention, and the oldest beyond `max_kept`.
    fn expire(t: &mut Table, config: &JobsConfig) {
        while let Some((at, id)) = t.finished.front() {
            if at.elapsed() < config.retention && t.finished.len() <= config.max_kept {
                break;
            }
            let id = id.clone();
            t.finished.pop_front();
            t.records.remove(&id);
        }
    }

    /// Counts a task that must finish before shutdown; the guard uncounts it.
    pub(crate) fn track(self: &Arc<Self>) -> Tracked {
        self.active.fetch_add(1, Ordering::AcqRel);
        Tracked(self.clone())
    }

    /// Waits until every asynchronous job and callback has finished, or `timeout`.
    /// Returns whether all did.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.idle.notified();
                if self.active.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// Asynchronous jobs and callbacks still going.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }
}

/// A task counted by [`Jobs::drain`].
#[derive(Debug)]
pub(crate) struct Tracked(Arc<Jobs>);

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Finishes a job with an internal error if it is dropped before [`Finisher::done`]: an
/// accepted job never silently disappears, even if its task panics or is aborted.
#[derive(Debug)]
pub(crate) struct Finisher {
    jobs: Arc<Jobs>,
    id: String,
    armed: bool,
}

impl Finisher {
    pub(crate) fn new(jobs: Arc<Jobs>, id: String) -> Finisher {
        Finisher {
            jobs,
            id,
            armed: true,
        }
    }

    /// The job ended as it should; nothing to record on drop.
    pub(crate) fn done(mut self) {
        self.armed = false;
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        if self.armed {
            tracing::error!(job = %self.id, "a job's task ended without a result");
            let language = self
                .jobs
                .update(&self.id, |r| r.language.clone())
                .unwrap_or_default();
            let result = RunResult {
                id: self.id.clone(),
                language,
                run: cod_core::StageReport {
                    status: cod_core::Status::InternalError,
                    message: Some("the job's task ended without a result".into()),
                    ..Default::default()
                },
                ..Default::default()
            };
            self.jobs.finish(
                &self.id,
                JobState::Done,
                Some(JobOutput::Run(Box::new(result))),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, client: &str, keep: bool) -> Record {
        Record {
            id: id.into(),
            client: ClientId(client.into()),
            language: "python".into(),
            state: JobState::Queued,
            created: SystemTime::now(),
            started: None,
            finished: None,
            slot: None,
            expected: Duration::from_millis(20),
            waited: None,
            usage: None,
            output: None,
            callback: None,
            cancel: CancellationToken::new(),
            done: tokio::sync::watch::Sender::new(JobState::Queued),
            keep,
            judge0: None,
        }
    }

    #[test]
    fn jobs_move_forward_and_expire() {
        let jobs = Jobs::new(JobsConfig {
            max_kept: 2,
            ..JobsConfig::default()
        });
        for (id, keep) in [("a", true), ("b", true), ("c", true), ("s", false)] {
            jobs.insert(record(id, "x", keep));
        }
        jobs.started("a", 1, Duration::from_millis(5));
        let v = jobs.get("a", None).unwrap();
        assert_eq!(
            (v.state, v.slot, v.waited_ms),
            (JobState::Running, Some(1), Some(5))
        );
        assert!(v.usage.is_some_and(|u| u.cpu_ms.is_none()));
        jobs.usage(
            "a",
            Usage {
                cpu_ms: 7,
                memory_kb: 900,
                wall_ms: 9,
            },
        );
        assert_eq!(jobs.running_usage(), (1, 7, 900));
        assert_eq!(
            jobs.list(&Filter {
                state: Some(JobState::Running),
                ..Default::default()
            })
            .len(),
            1
        );
        for id in ["a", "b", "c", "s"] {
            jobs.finish(id, JobState::Done, None);
        }
        // A finished job cannot move again.
        jobs.finish("c", JobState::Cancelled, None);
        assert_eq!(jobs.get("c", None).unwrap().state, JobState::Done);
        // The synchronous run is gone; of the kept ones, the oldest beyond max_kept too.
        assert!(jobs.get("s", None).is_none());
        assert!(jobs.get("a", None).is_none());
        assert!(jobs.get("b", None).is_some());
        // Another client does not see it.
        assert!(jobs.get("b", Some(&ClientId("y".into()))).is_none());
    }

    #[test]
    fn finished_jobs_are_kept_for_the_retention_only() {
        // A retention of zero: a finished job is gone at the next look; an unfinished
        // one stays whatever its age.
        let jobs = Jobs::new(JobsConfig {
            retention: Duration::ZERO,
            ..JobsConfig::default()
        });
        jobs.insert(record("done", "x", true));
        jobs.insert(record("waiting", "x", true));
        jobs.finish("done", JobState::Done, None);
        assert!(jobs.get("done", None).is_none());
        assert_eq!(
            jobs.get("waiting", None).map(|v| v.state),
            Some(JobState::Queued)
        );
        // The default keeps it.
        let jobs = Jobs::new(JobsConfig::default());
        jobs.insert(record("done", "x", true));
        jobs.finish("done", JobState::Done, None);
        assert_eq!(
            jobs.get("done", None).map(|v| v.state),
            Some(JobState::Done)
        );
    }

    #[test]
    fn a_dropped_finisher_records_an_internal_error() {
        let jobs = Arc::new(Jobs::new(JobsConfig::default()));
        jobs.insert(record("j", "x", true));
        drop(Finisher::new(jobs.clone(), "j".into()));
        let v = jobs.get("j", None).unwrap();
        assert_eq!(v.state, JobState::Done);
        assert_eq!(
            v.result.unwrap().run.status,
            cod_core::Status::InternalError
        );
        jobs.insert(record("k", "x", true));
        Finisher::new(jobs.clone(), "k".into()).done();
        assert_eq!(jobs.get("k", None).unwrap().state, JobState::Queued);
    }

    #[test]
    fn times_are_rfc3339_with_milliseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
    }
}
