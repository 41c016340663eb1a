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

/// Where this gateway's runs go: the sandbox of this process, or the fleet's workers.
#[derive(Clone, Debug)]
pub enum Backend {
    /// This machine's executor (the embedded single-node mode).
    Local(LocalWorker),
    /// Workers on the fleet's bus (`cod serve --nats`).
    Remote(crate::fleet::RemoteWorker),
}

impl Backend {
    /// Slots whose warm runtime for `runtime` is ready (none are known remotely).
    pub fn warm_slots(&self, runtime: &str) -> Vec<u32> {
        match self {
            Backend::Local(w) => w.warm_slots(runtime),
            Backend::Remote(_) => Vec::new(),
        }
    }

    /// The fleet's side, in the distributed mode.
    pub fn remote(&self) -> Option<&crate::fleet::RemoteWorker> {
        match self {
            Backend::Local(_) => None,
            Backend::Remote(r) => Some(r),
        }
    }

    /// Runs `item` in `slot` (a slot of this process, or a place in the fleet's flow),
    /// passing live usage to `events`. `expected` is how long the scheduler expects it
    /// to take: the fleet gives short runs precedence. The fleet cancels `cancel` when the
    /// job is cancelled through another gateway.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run(
        &self,
        item: &WorkItem,
        client: &str,
        slot: u32,
        expected: std::time::Duration,
        events: mpsc::Sender<WorkerEvent>,
        stored: Option<crate::runner::Stored>,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> RunResult {
        match self {
            Backend::Local(w) => {
                // Accepted jobs of the embedded mode live in this process.
                drop(stored);
                w.run(item, slot, events).await
            }
            Backend::Remote(r) => {
                let msg = crate::fleet::JobMessage {
                    item: item.clone(),
                    client: client.to_owned(),
                    created_ms: cod_fleet::bus::now_ms(),
                    stream: false,
                    interactive: false,
                    tracked: false,
                };
                r.run(msg, expected, Some(events), None, stored, Some(cancel))
                    .await
            }
        }
    }

    /// Runs `job` in `slot` with its events and input on `io` (streamed and editor runs).
    pub(crate) async fn run_streaming(
        &self,
        executor: &Executor,
        job: &Job,
        client: &str,
        slot: u32,
        io: &mut RunIo,
    ) -> RunResult {
        match self {
            Backend::Local(_) => executor.execute_streaming(job, slot, io).await,
            Backend::Remote(r) => {
                let msg = crate::fleet::JobMessage {
                    item: WorkItem::from_job(job),
                    client: client.to_owned(),
                    created_ms: cod_fleet::bus::now_ms(),
                    stream: true,
                    interactive: io.input.is_some(),
                    tracked: false,
                };
                // Someone watches it: it goes with the short runs.
                r.run(msg, std::time::Duration::ZERO, None, Some(io), None, None)
                    .await
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

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> WorkItem {
        WorkItem {
            id: "j1".into(),
            language: "python".into(),
            files: vec![
                ("main.py".into(), b"import helper\nprint(input())".to_vec()),
                ("helper.py".into(), vec![0xff, 0x00, b'x']),
            ],
            stdin: b"hi\n".to_vec(),
            args: vec!["-v".into()],
            limits: LimitsSpec::DEFAULT,
            compile_limits: LimitsSpec::DEFAULT,
        }
    }

    /// What crosses the scheduler–worker seam survives a trip through a broker's bytes:
    /// the job (binary files included), the events and the result.
    #[test]
    fn jobs_events_and_results_cross_the_wire() {
        let it = item();
        let json = serde_json::to_vec(&it).expect("serializes");
        let back: WorkItem = serde_json::from_slice(&json).expect("deserializes");
        assert_eq!(back, it);
        assert_eq!(back.content_key(), it.content_key());

        let events = [
            WorkerEvent::Started { slot: 3 },
            WorkerEvent::Usage(Usage {
                cpu_ms: 12,
                memory_kb: 2048,
                wall_ms: 30,
            }),
        ];
        for e in events {
            let json = serde_json::to_string(&e).expect("serializes");
            assert!(json.contains("\"event\":"), "{json}");
            let back: WorkerEvent = serde_json::from_str(&json).expect("deserializes");
            assert_eq!(back, e);
        }

        let mut result = internal_error(&it, "lost");
        result.run.stdout = "partial".into();
        let json = serde_json::to_string(&result).expect("serializes");
        let back: RunResult = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, result);
    }

    /// The history key: the same run gives the same key; anything that changes what the
    /// run does gives another, and a test case (other stdin) is a run of its own.
    #[test]
    fn the_content_key_covers_what_decides_the_run() {
        let base = item();
        let key = base.content_key();
        assert_eq!(key, item().content_key());
        assert_eq!(key.len(), 32);
        let case = base.with_stdin("j1.1".into(), b"other\n".to_vec());
        assert_eq!(case.id, "j1.1");
        assert_eq!(case.files, base.files);
        let mut limits = base.clone();
        limits.limits.cpu_ms /= 2;
        let mut args = base.clone();
        args.args.push("-q".into());
        let mut file = base.clone();
        file.files[1].1.push(b'!');
        // The id is not part of it: the same program under another id is the same run.
        let mut renamed = base.clone();
        renamed.id = "j2".into();
        assert_eq!(renamed.content_key(), key);
        for other in [case, limits, args, file] {
            assert_ne!(other.content_key(), key, "{other:?}");
        }
    }
}
