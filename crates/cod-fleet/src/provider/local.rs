//! The local provider: worker processes on this host, for tests and small installs.
//!
//! Each worker is a process started from a configurable command line (by default
//! `cod worker`; `{id}` in an argument becomes the worker's id, `{index}` a number unique
//! among the live workers, `{cpus}` its share of the host's CPUs), in a process group of
//! its own. It is `Starting` until it writes a line containing `ready_line` on its standard
//! output (or at once without one), then `Ready`. Draining sends it `SIGTERM` through a
//! pidfd (no pid-reuse race) and waits for it to exit; one still running `drain_timeout`
//! later gets `SIGKILL`, with its whole process group. A worker that exits on its own is
//! forgotten (and reported); dropping the provider kills what is left.
//!
//! One task per worker owns its process, reads its output (at debug level, never above)
//! and reports [`LocalEvent`]s to subscribers.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustix::process::{Pid, PidfdFlags, Signal};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Provider, ProviderError};
use crate::policy::Decision;
use crate::worker::{WorkerId, WorkerState, WorkerView};

/// How local workers are run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// The command that runs one worker: the program, then its arguments. `{id}` in an
    /// argument is replaced by the worker's id, `{index}` by the lowest number from 1 that
    /// no other live worker has (for what must differ per worker on one host), `{cpus}` by
    /// its share of the CPUs (see `cpus_per_worker`).
    pub command: Vec<String>,
    /// A worker is ready once it writes a line containing this on its standard output;
    /// without it, as soon as it runs.
    pub ready_line: Option<String>,
    /// How long a draining worker may take to exit after `SIGTERM` before it is killed.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Slots each worker runs, as reported until its heartbeats say otherwise.
    pub slots: u32,
    /// Worker ids are this prefix, a dash and a number.
    pub id_prefix: String,
    /// CPUs in each worker's share, which `{cpus}` becomes (a list such as `4-7`): worker
    /// `{index}` `i` gets the `i`-th run of this many of the CPUs the provider may use, so
    /// that workers keep to CPUs of their own while there are enough, and share the
    /// first ones again beyond. 0: `{cpus}` is all of them.
    #[serde(default)]
    pub cpus_per_worker: u32,
}

impl Default for LocalConfig {
    fn default() -> LocalConfig {
        LocalConfig {
            command: vec!["cod".into(), "worker".into()],
            ready_line: None,
            drain_timeout: Duration::from_secs(60),
            slots: 1,
            id_prefix: "local".into(),
            cpus_per_worker: 0,
        }
    }
}

/// The local provider failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The command is empty.
    #[error("the local worker command is empty")]
    NoCommand,
    /// The worker process could not be started.
    #[error("starting worker {id} ({program})")]
    Spawn {
        /// The worker.
        id: WorkerId,
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A pidfd for the new process could not be opened.
    #[error("opening a pidfd for worker {id} (pid {pid})")]
    Pidfd {
        /// The worker.
        id: WorkerId,
        /// Its pid.
        pid: u32,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No such worker runs here.
    #[error("no worker {0} runs here")]
    Unknown(WorkerId),
}

/// What happened to a local worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalEvent {
    /// Its process started.
    Started {
        /// The worker.
        id: WorkerId,
        /// Its pid.
        pid: u32,
    },
    /// It is ready.
    Ready {
        /// The worker.
        id: WorkerId,
    },
    /// It was asked to drain (`SIGTERM`).
    Draining {
        /// The worker.
        id: WorkerId,
    },
    /// Its process exited.
    Exited {
        /// The worker.
        id: WorkerId,
        /// Its exit code, if it exited.
        code: Option<i32>,
        /// The signal that ended it, if one did.
        signal: Option<i32>,
        /// Whether it had been asked to drain.
        drained: bool,
        /// Whether it was killed for not exiting within the drain timeout.
        killed: bool,
    },
}

#[derive(Debug)]
struct Entry {
    state: WorkerState,
    drain: Option<oneshot::Sender<()>>,
    /// Its `{index}`: the lowest number from 1 no other live worker has.
    index: u32,
    /// Its `{cpus}`.
    cpus: String,
}

#[derive(Debug)]
struct Shared {
    workers: Mutex<BTreeMap<WorkerId, Entry>>,
    events: broadcast::Sender<LocalEvent>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<WorkerId, Entry>> {
        // A panic while holding the lock leaves a map that is still consistent.
        self.workers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn emit(&self, e: LocalEvent) {
        // No subscriber is fine.
        let _ = self.events.send(e);
    }
}

/// Worker processes on this host.
#[derive(Debug)]
pub struct LocalProvider {
    config: LocalConfig,
    shared: Arc<Shared>,
    tasks: Mutex<JoinSet<()>>,
    next: AtomicU64,
    /// The CPUs this process may use, shared out by `{cpus}`.
    cpus: Vec<usize>,
}

impl LocalProvider {
    /// A provider running `config.command` per worker.
    pub fn new(config: LocalConfig) -> Result<LocalProvider, LocalError> {
        if config.command.is_empty() {
            return Err(LocalError::NoCommand);
        }
        let (events, _) = broadcast::channel(1024);
        Ok(LocalProvider {
            config,
            shared: Arc::new(Shared {
                workers: Mutex::new(BTreeMap::new()),
                events,
            }),
            tasks: Mutex::new(JoinSet::new()),
            next: AtomicU64::new(0),
            cpus: crate::cpus::allowed(),
        })
    }

    /// Events of every worker from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LocalEvent> {
        self.shared.events.subscribe()
    }

    fn tasks(&self) -> MutexGuard<'_, JoinSet<()>> {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts `n` workers; answers their ids once their processes run.
    pub fn start(&self, n: u32) -> Result<Vec<WorkerId>, LocalError> {
        let mut ids = Vec::new();
        for _ in 0..n {
            ids.push(self.start_one()?);
        }
        // Forget the tasks of workers that are gone.
        let mut tasks = self.tasks();
        while tasks.try_join_next().is_some() {}
        Ok(ids)
    }

    /// The `{index}` worker `id` was started with, while it lives.
    pub fn index_of(&self, id: &WorkerId) -> Option<u32> {
        self.shared.lock().get(id).map(|e| e.index)
    }

    /// The `{cpus}` worker `id` was started with, while it lives.
    pub fn cpus_of(&self, id: &WorkerId) -> Option<String> {
        self.shared.lock().get(id).map(|e| e.cpus.clone())
    }

    fn start_one(&self) -> Result<WorkerId, LocalError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = WorkerId(format!("{}-{n:05}", self.config.id_prefix));
        // Workers on one host must not share what is per host, such as the sandbox's uid
        // range: `{index}` is small and unique among the live workers.
        let index = {
            let workers = self.shared.lock();
            let used: std::collections::BTreeSet<u32> = workers.values().map(|e| e.index).collect();
            (1..).find(|i| !used.contains(i)).unwrap_or(1)
        };
        let cpus = crate::cpus::list_text(crate::cpus::share(
            &self.cpus,
            self.config.cpus_per_worker as usize,
            index,
        ));
        let program = &self.config.command[0];
        let mut cmd = Command::new(program);
        cmd.args(self.config.command[1..].iter().map(|a| {
            a.replace("{id}", &id.0)
                .replace("{index}", &index.to_string())
                .replace("{cpus}", &cpus)
        }))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .process_group(0);
        let mut child = cmd.spawn().map_err(|source| LocalError::Spawn {
            id: id.clone(),
            program: program.clone(),
            source,
        })?;
        let pid = child.id().expect("a child just spawned is not reaped");
        let pidfd = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))
            .and_then(|p| Ok(rustix::process::pidfd_open(p, PidfdFlags::empty())?))
            .map_err(|source| LocalError::Pidfd {
                id: id.clone(),
                pid,
                source,
            })?;
        let stdout = child.stdout.take().map(|s| BufReader::new(s).lines());
        let (tx, rx) = oneshot::channel();
        let ready_now = self.config.ready_line.is_none();
        self.shared.lock().insert(
            id.clone(),
            Entry {
                state: if ready_now {
                    WorkerState::Ready
                } else {
                    WorkerState::Starting
                },
                drain: Some(tx),
                index,
                cpus: cpus.clone(),
            },
        );
        tracing::info!(worker = %id, pid, index, cpus, "worker started");
        self.shared.emit(LocalEvent::Started {
            id: id.clone(),
            pid,
        });
        if ready_now {
            self.shared.emit(LocalEvent::Ready { id: id.clone() });
        }
        let supervisor = Supervisor {
            id: id.clone(),
            pid,
            pidfd,
            ready_line: self.config.ready_line.clone(),
            timeout: self.config.drain_timeout,
            shared: self.shared.clone(),
        };
        self.tasks().spawn(supervisor.run(child, stdout, rx));
        Ok(id)
    }

    /// Asks these workers to drain; they exit when their runs are done. Draining a worker
    /// twice is harmless.
    pub fn drain(&self, ids: &[WorkerId]) -> Result<(), LocalError> {
        let mut workers = self.shared.lock();
        for id in ids {
            let e = workers
                .get_mut(id)
                .ok_or_else(|| LocalError::Unknown(id.clone()))?;
            if let Some(tx) = e.drain.take() {
                e.state = WorkerState::Draining;
                // The supervisor is gone only if the process already exited.
                let _ = tx.send(());
                tracing::info!(worker = %id, "worker draining");
                self.shared.emit(LocalEvent::Draining { id: id.clone() });
            }
        }
        Ok(())
    }

    /// Drains every worker and waits until all have exited (each within the drain
    /// timeout, or killed).
    pub async fn shutdown(&self) {
        let ids: Vec<WorkerId> = self.shared.lock().keys().cloned().collect();
        if let Err(e) = self.drain(&ids) {
            // Only a worker that exited in between: nothing left to drain.
            tracing::debug!(error = %e, "draining at shutdown");
        }
        let mut tasks = std::mem::take(&mut *self.tasks());
        while tasks.join_next().await.is_some() {}
    }

    fn snapshot(&self) -> Vec<WorkerView> {
        self.shared
            .lock()
            .iter()
            .map(|(id, e)| WorkerView {
                id: id.clone(),
                state: e.state,
                slots: self.config.slots,
                busy: 0,
            })
            .collect()
    }
}

impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn workers(&self) -> Result<Vec<WorkerView>, ProviderError> {
        Ok(self.snapshot())
    }

    async fn apply(&self, decision: &Decision) -> Result<(), ProviderError> {
        self.drain(&decision.drain)?;
        self.start(decision.start)?;
        Ok(())
    }
}

/// The task that owns one worker's process.
struct Supervisor {
    id: WorkerId,
    pid: u32,
    pidfd: OwnedFd,
    ready_line: Option<String>,
    timeout: Duration,
    shared: Arc<Shared>,
}

async fn next_line(lines: &mut Option<Lines<BufReader<ChildStdout>>>) -> Option<String> {
    match lines {
        Some(l) => l.next_line().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

impl Supervisor {
    async fn run(
        self,
        mut child: Child,
        mut stdout: Option<Lines<BufReader<ChildStdout>>>,
        drain: oneshot::Receiver<()>,
    ) {
        let mut drain = Some(drain);
        let mut deadline: Option<Instant> = None;
        let mut killed = false;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                line = next_line(&mut stdout) => match line {
                    Some(line) => self.line(&line),
                    None => stdout = None,
                },
                asked = async { drain.as_mut().expect("checked").await }, if drain.is_some() => {
                    drain = None;
                    if asked.is_ok() {
                        self.signal(Signal::TERM);
                        deadline = Some(Instant::now() + self.timeout);
                    }
                }
                () = async { tokio::time::sleep_until(deadline.expect("checked")).await },
                    if deadline.is_some() && !killed =>
                {
                    tracing::warn!(worker = %self.id, pid = self.pid, timeout = ?self.timeout,
                        "worker did not exit within its drain timeout: killing it");
                    // The group id is the worker's pid, still reserved: it is not reaped.
                    if let Err(e) = Pid::from_raw(i32::try_from(self.pid).unwrap_or(i32::MAX))
                        .map_or(Ok(()), |p| rustix::process::kill_process_group(p, Signal::KILL))
                    {
                        tracing::warn!(worker = %self.id, error = %e, "killing the worker's group");
                    }
                    killed = true;
                }
            }
        };
        let drained = {
            let mut workers = self.shared.lock();
            workers
                .remove(&self.id)
                .is_some_and(|e| e.state == WorkerState::Draining)
        };
        let (code, signal) = match &status {
            Ok(s) => (s.code(), s.signal()),
            Err(_) => (None, None),
        };
        if drained {
            tracing::info!(worker = %self.id, ?code, ?signal, killed, "worker stopped");
        } else {
            tracing::warn!(worker = %self.id, ?code, ?signal, "worker exited on its own");
        }
        self.shared.emit(LocalEvent::Exited {
            id: self.id,
            code,
            signal,
            drained,
            killed,
        });
    }

    fn line(&self, line: &str) {
        let shown: String = line.chars().take(200).collect();
        tracing::debug!(worker = %self.id, line = %shown, "worker output");
        if self.ready_line.as_deref().is_some_and(|r| line.contains(r)) {
            let mut workers = self.shared.lock();
            if let Some(e) = workers.get_mut(&self.id)
                && e.state == WorkerState::Starting
            {
                e.state = WorkerState::Ready;
                drop(workers);
                tracing::info!(worker = %self.id, "worker ready");
                self.shared.emit(LocalEvent::Ready {
                    id: self.id.clone(),
                });
            }
        }
    }

    fn signal(&self, sig: Signal) {
        if let Err(e) = rustix::process::pidfd_send_signal(&self.pidfd, sig) {
            // ESRCH: it already exited; the wait branch reports it.
            tracing::debug!(worker = %self.id, error = %e, "signalling the worker");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_command_is_refused() {
        let err = LocalProvider::new(LocalConfig {
            command: vec![],
            ..LocalConfig::default()
        })
        .expect_err("empty");
        assert!(matches!(err, LocalError::NoCommand));
    }

    #[test]
    fn the_default_runs_cod_worker() {
        assert_eq!(LocalConfig::default().command, ["cod", "worker"]);
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error_naming_it() {
        let p = LocalProvider::new(LocalConfig {
            command: vec!["/nonexistent/cod".into()],
            ..LocalConfig::default()
        })
        .expect("valid");
        let err = p.start(1).expect_err("no such program");
        assert!(
            matches!(&err, LocalError::Spawn { program, source, .. }
                if program == "/nonexistent/cod" && source.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );
        assert!(p.snapshot().is_empty());
    }

    #[tokio::test]
    async fn draining_an_unknown_worker_is_an_error() {
        let p = LocalProvider::new(LocalConfig::default()).expect("valid");
        let err = p.drain(&[WorkerId::from("nope")]).expect_err("unknown");
        assert!(matches!(err, LocalError::Unknown(id) if id.0 == "nope"));
    }
}
