//! The in-process worker: runs scheduled jobs on this machine's [`Executor`].
//!
//! A job crosses the scheduler–worker seam as a [`WorkItem`], a serializable description of
//! a checked run (language by name, files, input, arguments, limits), and comes back as a
//! [`RunResult`]; live usage comes as [`WorkerEvent::Usage`]. A worker on another machine
//! would receive the same values through a broker and rebuild the job the same way.

use std::sync::Arc;

use cod_core::RunResult;
use cod_core::limits::LimitsSpec;
use cod_core::run::RequestError;
use cod_runtime::executor::{RunEvent, RunIo};
use cod_runtime::{Executor, Job, JobFile, find_language};
use cod_sched::{Usage, Worker, WorkerEvent};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// A checked run, as it travels to a worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkItem {
    /// The run's id.
    pub id: String,
    /// Canonical language name.
    pub language: String,
    /// Files, the main one first: (name, contents).
    pub files: Vec<(String, Vec<u8>)>,
    /// Standard input.
    pub stdin: Vec<u8>,
    /// Program arguments.
    pub args: Vec<String>,
    /// Limits of the run stage.
    pub limits: LimitsSpec,
    /// Limits of the compile stage.
    pub compile_limits: LimitsSpec,
}

impl WorkItem {
    /// The description of `job`.
    pub fn from_job(job: &Job) -> WorkItem {
        WorkItem {
            id: job.id.clone(),
            language: job.language.name.clone(),
            files: job.files.clone(),
            stdin: job.stdin.clone(),
            args: job.args.clone(),
            limits: job.limits,
            compile_limits: job.compile_limits,
        }
    }

    /// The same item with other standard input (a test case).
    pub fn with_stdin(&self, id: String, stdin: Vec<u8>) -> WorkItem {
        WorkItem {
            id,
            stdin,
            ..self.clone()
        }
    }

    /// Rebuilds the job against `executor`'s languages.
    pub fn to_job(&self, executor: &Executor) -> Result<Job, RequestError> {
        let language = find_language(executor.registry(), &self.language)?;
        let files = self
            .files
            .iter()
            .map(|(name, content)| JobFile {
                name: Some(name.clone()),
                content: content.clone(),
            })
            .collect();
        let mut job = Job::new(
            language,
            files,
            |i| format!("files[{}]", i + 1),
            self.stdin.clone(),
            self.args.clone(),
            self.limits,
            self.compile_limits,
        )?;
        job.id.clone_from(&self.id);
        Ok(job)
    }

    /// A hash of everything that decides what the run does: the scheduler's history of
    /// run lengths is keyed by it.
    pub fn content_key(&self) -> String {
        let mut h = blake3::Hasher::new();
        let mut field = |b: &[u8]| {
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        };
        field(self.language.as_bytes());
        for (name, content) in &self.files {
            field(name.as_bytes());
            field(content);
        }
        field(&self.stdin);
        for a in &self.args {
            field(a.as_bytes());
        }
        field(format!("{:?}{:?}", self.limits, self.compile_limits).as_bytes());
        h.finalize().to_hex()[..32].to_owned()
    }
}

/// Runs [`WorkItem`]s on this machine.
#[derive(Clone, Debug)]
pub struct LocalWorker {
    executor: Arc<Executor>,
}

impl LocalWorker {
    /// A worker for `executor`.
    pub fn new(executor: Arc<Executor>) -> LocalWorker {
        LocalWorker { executor }
    }
}

impl Worker for LocalWorker {
    type Job = WorkItem;
    type Output = RunResult;

    fn warm_slots(&self, runtime: &str) -> Vec<u32> {
        self.executor.warm_slots(runtime)
    }

    async fn run(
        &self,
        item: &WorkItem,
        slot: u32,
        events: mpsc::Sender<WorkerEvent>,
    ) -> RunResult {
        let job = match item.to_job(&self.executor) {
            Ok(j) => j,
            Err(e) => {
                // Checked when it was accepted: only a language removed since gets here.
                return internal_error(item, &format!("the job no longer checks: {e}"));
            }
        };
        let (tx, mut rx) = mpsc::channel(64);
        let mut io = RunIo {
            events: tx,
            input: None,
        };
        let run = self.executor.execute_streaming(&job, slot, &mut io);
        tokio::pin!(run);
        // Drain events while the run goes (a full channel would slow the program down);
        // pass usage on, drop output (the result carries it).
        loop {
            tokio::select! {
                result = &mut run => return result,
                Some(event) = rx.recv() => {
                    if let RunEvent::Usage { cpu_ms, memory_kb, wall_ms, .. } = event {
                        let _ = events.try_send(WorkerEvent::Usage(Usage {
                            cpu_ms,
                            memory_kb,
                            wall_ms,
                        }));
                    }
                }
            }
        }
    }
}

/// An `internal_error` result for `item`.
pub(crate) fn internal_error(item: &WorkItem, message: &str) -> RunResult {
    RunResult {
        id: item.id.clone(),
        language: item.language.clone(),
        run: cod_core::StageReport {
            status: cod_core::Status::InternalError,
            message: Some(message.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    }
}
