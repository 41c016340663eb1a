//! One run started from the editor: a task that waits for a worker slot, streams the run's
//! events to the client and ends with exactly one `exit` (or, when the run was refused for
//! overload, one `error`). The connection keeps a [`RunHandle`] to feed stdin and to stop
//! the run; dropping the handle (the client went away) drops the task, which kills the
//! program.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use cod_core::{RunResult, StageReport, Status};
use cod_runtime::{Job, RunEvent, RunInput, StageKind};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::outbox::Outbox;
use super::protocol::ServerMessage;
use super::slots;
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::stream::{OutputDecoder, Step, exit_message};

/// Inputs (stdin lines, close, kill) waiting for the program.
const INPUT_QUEUE: usize = 64;
/// Inputs kept free for `stdin_close` and `kill`, which must always fit.
const INPUT_RESERVED: usize = 2;
/// Most stdin bytes accepted before the program runs (they wait in memory until then).
pub(crate) const STDIN_BEFORE_START: usize = 1 << 20;

const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const RUN_STAGE: u8 = 2;
const FINISHED: u8 = 3;

/// Why an input could not be passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InputError {
    /// The program's input is already closed.
    Closed,
    /// The program has not read what was sent before.
    Full,
    /// More input than is kept before the program starts.
    TooEarly,
}

/// The connection's side of a run.
pub(crate) struct RunHandle {
    phase: Arc<AtomicU8>,
    input: mpsc::Sender<RunInput>,
    cancel: Option<oneshot::Sender<()>>,
    stdin_closed: bool,
    kill_sent: bool,
    stdin_before_start: usize,
    /// The buffer version that runs.
    pub(crate) version: u64,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RunHandle {
    fn drop(&mut self) {
        // The connection is gone: the run goes with it.
        self.task.abort();
    }
}

/// Who runs, for the scheduler, and which slot to avoid if another is free.
pub(crate) struct Placement {
    /// Who runs: fair share and limits go by its client.
    pub(crate) caller: Caller,
    /// A slot still cleaning up after this connection's compile-ahead.
    pub(crate) avoid: Option<u32>,
}

/// What a synthesized result needs of a job.
struct JobInfo {
    id: String,
    language: String,
    version: String,
}

impl RunHandle {
    /// Starts `job` (the buffer at `version`) for the client of `out`. With `closed_stdin`,
    /// the job's stdin is all the input there is.
    pub(crate) fn start(
        st: &AppState,
        job: Job,
        version: u64,
        placement: Placement,
        closed_stdin: bool,
        out: Outbox,
    ) -> RunHandle {
        let (input, input_rx) = mpsc::channel(INPUT_QUEUE);
        if closed_stdin {
            let _ = input.try_send(RunInput::Close);
        }
        let (cancel, cancel_rx) = oneshot::channel();
        let phase = Arc::new(AtomicU8::new(QUEUED));
        let span =
            tracing::info_span!("editor_run", id = %job.id, language = %job.language.name, version);
        let task = tokio::spawn(
            drive(
                st.clone(),
                job,
                placement,
                input_rx,
                cancel_rx,
                phase.clone(),
                out,
            )
            .instrument(span),
        );
        RunHandle {
            phase,
            input,
            cancel: Some(cancel),
            stdin_closed: closed_stdin,
            kill_sent: false,
            stdin_before_start: 0,
            version,
            task,
        }
    }

    /// Whether the run has ended (its `exit` is on its way, or already sent).
    pub(crate) fn finished(&self) -> bool {
        self.phase.load(Ordering::Acquire) == FINISHED
    }

    /// Passes `data` to the program's stdin.
    pub(crate) fn stdin(&mut self, data: String) -> Result<(), InputError> {
        if self.stdin_closed {
            return Err(InputError::Closed);
        }
        if self.phase.load(Ordering::Acquire) < RUN_STAGE {
            if self.stdin_before_start + data.len() > STDIN_BEFORE_START {
                return Err(InputError::TooEarly);
            }
            self.stdin_before_start += data.len();
        }
        if self.input.capacity() <= INPUT_RESERVED {
            return Err(InputError::Full);
        }
        self.input
            .try_send(RunInput::Stdin(data.into_bytes()))
            .map_err(|_| InputError::Full)
    }

    /// Ends the program's stdin (again: nothing happens).
    pub(crate) fn close_stdin(&mut self) {
        if !self.stdin_closed {
            self.stdin_closed = true;
            let _ = self.input.try_send(RunInput::Close);
        }
    }

    /// Stops the run. Its `exit` follows: the program's own verdict when the kill reaches
    /// it through the sandbox, else (still queued; or stdin already closed, since the
    /// executor stops reading inputs after the close) one made here.
    pub(crate) fn kill(&mut self) {
        let running = self.phase.load(Ordering::Acquire) >= STARTED;
        if running && !self.stdin_closed && !self.kill_sent {
            self.kill_sent = self.input.try_send(RunInput::Kill).is_ok();
            if self.kill_sent {
                return;
            }
        }
        if let Some(cancel) = self.cancel.take() {
            let _ = cancel.send(());
        }
    }
}

/// The run's task: slot, run, events, exit.
async fn drive(
    st: AppState,
    job: Job,
    placement: Placement,
    input: mpsc::Receiver<RunInput>,
    mut cancel: oneshot::Receiver<()>,
    phase: Arc<AtomicU8>,
    out: Outbox,
) {
    let began = Instant::now();
    let info = JobInfo {
        id: job.id.clone(),
        language: job.language.name.clone(),
        version: job.language.version.clone(),
    };
    let finish = |phase: &AtomicU8| phase.store(FINISHED, Ordering::Release);
    let permit = tokio::select! {
        biased;
        _ = &mut cancel => {
            finish(&phase);
            let r = stopped(&info, began, None, "the run was stopped before it started");
            let _ = out.exit(exit_message(&r)).await;
            return;
        }
        p = slots::run_slot(&st, &job, &placement.caller, placement.avoid) => p,
    };
    let permit = match permit {
        Ok(p) => p,
        Err(rejected) => {
            finish(&phase);
            let (_, why) = ApiError::Overloaded(rejected).parts();
            let error = format!("run: {why}");
            let _ = out
                .reply(ServerMessage::Error { error: &error }.to_json())
                .await;
            return;
        }
    };
    phase.store(STARTED, Ordering::Release);
    st.editor.count(|c| c.runs += 1);
    let mut driver = crate::stream::start(&st, job, permit, Some(input));
    let mut decoder = OutputDecoder::default();
    let mut usage: Option<(u64, u64, u64)> = None;
    loop {
        let step = tokio::select! {
            biased;
            _ = &mut cancel => None,
            s = driver.next() => Some(s),
        };
        let messages = match step {
            // Stopped here: dropping the driver kills the program.
            None => {
                drop(driver);
                finish(&phase);
                let r = stopped(&info, began, usage, "the program was stopped");
                let _ = out.exit(exit_message(&r)).await;
                return;
            }
            Some(None) => return,
            Some(Some(Step::Event(RunEvent::Usage {
                stage: StageKind::Run,
                cpu_ms,
                memory_kb,
                wall_ms,
            }))) => {
                usage = Some((cpu_ms, memory_kb, wall_ms));
                continue;
            }
            Some(Some(Step::Event(e))) => {
                if e == RunEvent::Stage(StageKind::Run) {
                    phase.store(RUN_STAGE, Ordering::Release);
                }
                decoder.messages(e)
            }
            Some(Some(Step::Done(result))) => {
                // Marked before the exit is queued: a client that has the exit may start
                // the next run at once.
                finish(&phase);
                let mut messages = decoder.finish(&result);
                let exit = messages.pop();
                for m in messages {
                    if out.output(m).await.is_err() {
                        return;
                    }
                }
                if let Some(exit) = exit {
                    let _ = out.exit(exit).await;
                }
                return;
            }
        };
        for m in messages {
            if out.output(m).await.is_err() {
                return;
            }
        }
    }
}

/// The result of a run stopped by the client where the sandbox could not report one: the
/// output was streamed already; the figures are the last usage report's.
fn stopped(info: &JobInfo, began: Instant, usage: Option<(u64, u64, u64)>, why: &str) -> RunResult {
    let (cpu_ms, memory_kb, wall_ms) = usage.unwrap_or((
        0,
        0,
        u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX),
    ));
    RunResult {
        id: info.id.clone(),
        language: info.language.clone(),
        version: info.version.clone(),
        run: StageReport {
            status: Status::RuntimeError,
            message: Some(why.to_owned()),
            signal: Some("SIGKILL".to_owned()),
            cpu_ms,
            wall_ms,
            memory_kb,
            ..Default::default()
        },
        compile: None,
    }
}
