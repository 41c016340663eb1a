//! Compile-ahead: a compiled-language buffer left unedited for `compile_ahead_delay` is
//! compiled in the background, through the compile cache, so that Run usually finds the
//! program built and only has to start it.
//!
//! Choices (docs/ARCHITECTURE.md, "Program buffers and the editor"):
//!
//! - **Only idle slots.** A compile-ahead is speculation; runs are what people wait for. It
//!   takes a worker slot only if one is free at that moment and no run waits
//!   ([`slots::idle_slot`]), so it never queues, never overtakes a run, and delays a run
//!   that arrives meanwhile by one compile at most. At most half the slots (at least one)
//!   compile ahead at once, so a burst of runs finds the other half free.
//! - **Busy: retry later.** When no slot is idle the compile is retried after twice the
//!   delay, then four times, ... up to [`MAX_RETRY_DELAY`], [`MAX_ATTEMPTS`] times.
//! - **Stale: cancelled.** An edit, a language change or a disconnect drops the task: the
//!   sandbox kills the compiler and the slot frees at once. A compile of the version a run
//!   of this connection is waiting for is kept (the run would otherwise compile again).
//! - **Same cache as runs.** The compile goes through [`Executor::compile_ahead`], which
//!   claims the cache key like a run's compile: a run that arrives while it compiles waits
//!   for it instead of compiling twice.
//!
//! [`Executor::compile_ahead`]: cod_runtime::Executor::compile_ahead

use std::time::Duration;

use cod_core::{RunRequest, Status};
use cod_runtime::executor::CompileAhead;
use tokio::time::Instant;
use tracing::Instrument;

use super::editor::Editor;
use super::outbox::Outbox;
use super::protocol::ServerMessage;
use super::slots;
use crate::AppState;

/// Longest wait between two attempts when no slot is idle.
pub(crate) const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// Attempts before a compile-ahead is given up (the next edit starts over).
pub(crate) const MAX_ATTEMPTS: u32 = 8;

/// A compile-ahead running for a connection.
struct Task {
    version: u64,
    language: String,
    slot: u32,
    handle: tokio::task::JoinHandle<()>,
    editor: Editor,
}

impl Drop for Task {
    fn drop(&mut self) {
        if !self.handle.is_finished() {
            self.handle.abort();
            self.editor.count(|c| c.compile_ahead_cancelled += 1);
        }
    }
}

/// A connection's compile-ahead: when it is due, and the one running.
pub(crate) struct Ahead {
    enabled: bool,
    /// The session's language compiles (as this connection last set or saw it).
    compiled: bool,
    delay: Duration,
    due: Option<Instant>,
    attempts: u32,
    task: Option<Task>,
}

impl Ahead {
    pub(crate) fn new(editor: &Editor) -> Ahead {
        let c = editor.config();
        Ahead {
            enabled: c.compile_ahead,
            compiled: false,
            delay: c.compile_ahead_delay,
            due: None,
            attempts: 0,
            task: None,
        }
    }

    /// When the next compile-ahead is due, if one is.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.due
    }

    /// The buffer changed: for a compiled language, a compile is due after the delay; a running
    /// compile of another version is stale and stopped, unless `keep` (the version a run
    /// is waiting for) is its version.
    pub(crate) fn changed(&mut self, version: u64, keep: Option<u64>) {
        if self
            .task
            .as_ref()
            .is_some_and(|t| t.version != version && Some(t.version) != keep)
        {
            self.task = None;
        }
        if self.enabled && self.compiled {
            self.due = Some(Instant::now() + self.delay);
            self.attempts = 0;
        }
    }

    /// The slot of the latest compile-ahead, if one ran: a run right after it had better
    /// take another slot, as that one is still cleaning up.
    pub(crate) fn recent_slot(&self) -> Option<u32> {
        self.task.as_ref().map(|t| t.slot)
    }

    /// The session was opened or its language changed (to one that compiles, or not):
    /// whatever runs compiles the wrong thing.
    pub(crate) fn language_changed(&mut self, compiled: bool) {
        self.task = None;
        self.compiled = compiled;
        self.due = None;
        if self.enabled && compiled {
            self.due = Some(Instant::now() + self.delay);
            self.attempts = 0;
        }
    }

    /// A run of the current version starts: it compiles (or joins the compile running).
    pub(crate) fn run_started(&mut self) {
        self.due = None;
    }

    /// The compile-ahead is due now: starts it if there is something to compile and a slot
    /// is idle; otherwise retries later or gives up.
    pub(crate) fn start(
        &mut self,
        st: &AppState,
        session: &cod_session::SessionId,
        caller: &crate::auth::Caller,
        out: &Outbox,
    ) {
        self.due = None;
        let editor = &st.editor;
        let Some(snap) = editor.store().snapshot(session) else {
            return;
        };
        if self
            .task
            .as_ref()
            .is_some_and(|t| t.version == snap.version && t.language == snap.language)
        {
            return;
        }
        let compiled = st
            .executor
            .registry()
            .get(&snap.language)
            .is_some_and(|l| l.compiled() && l.available());
        if !compiled {
            return;
        }
        let req = RunRequest {
            language: snap.language.clone(),
            source: Some(snap.text),
            ..Default::default()
        };
        let Ok(job) = st.executor.prepare(&req) else {
            return;
        };
        let Some(key) = job.cache_key() else {
            return;
        };
        if let Some(artifact) = st.executor.cache().get(&key) {
            editor.count(|c| c.compile_ahead_cached += 1);
            let msg = compiled_message(snap.version, &snap.language, &artifact.compile, true);
            let out = out.clone();
            // The reply waits for room only if the client does not read: off this loop.
            tokio::spawn(async move {
                let _ = out.reply(msg).await;
            });
            return;
        }
        let max = (slots::workers(st) / 2).max(1);
        let place = editor.compile_ahead_place(max);
        let permit = place
            .as_ref()
            .and_then(|_| slots::idle_slot(st, &job, caller));
        let (Some(place), Some(permit)) = (place, permit) else {
            editor.count(|c| c.compile_ahead_busy += 1);
            self.retry();
            return;
        };
        editor.count(|c| c.compile_ahead_started += 1);
        let (st2, out2) = (st.clone(), out.clone());
        let (version, language) = (snap.version, snap.language.clone());
        let slot = permit.slot();
        let span =
            tracing::info_span!("compile_ahead", id = %job.id, language = %language, version);
        let handle = tokio::spawn(
            async move {
                let done = st2.executor.compile_ahead(&job, permit.slot()).await;
                // The slot first: a run may be waiting for it.
                drop(permit);
                drop(place);
                let msg = match &done {
                    CompileAhead::Compiled(r) => {
                        st2.editor.count(|c| c.compile_ahead_compiled += 1);
                        Some(compiled_message(version, &language, r, false))
                    }
                    CompileAhead::Cached(r) => {
                        st2.editor.count(|c| c.compile_ahead_cached += 1);
                        Some(compiled_message(version, &language, r, true))
                    }
                    CompileAhead::NotCached(r) => {
                        Some(compiled_message(version, &language, r, false))
                    }
                    CompileAhead::InProgress | CompileAhead::NotCompiled => None,
                };
                if let Some(msg) = msg {
                    let _ = out2.reply(msg).await;
                }
            }
            .instrument(span),
        );
        self.task = Some(Task {
            version,
            language: snap.language,
            slot,
            handle,
            editor: editor.clone(),
        });
    }

    fn retry(&mut self) {
        self.attempts += 1;
        if self.attempts >= MAX_ATTEMPTS {
            return;
        }
        let wait = self
            .delay
            .max(Duration::from_millis(50))
            .saturating_mul(1 << self.attempts.min(16))
            .min(MAX_RETRY_DELAY);
        self.due = Some(Instant::now() + wait);
    }
}

/// `{"type":"compiled",...}` for a compile report: `status` is `ok`, `compile_error` (the
/// compiler rejected the program) or the verdict that stopped the compiler.
fn compiled_message(
    version: u64,
    language: &str,
    r: &cod_core::StageReport,
    cached: bool,
) -> String {
    let status = match r.status {
        Status::RuntimeError => "compile_error",
        s => s.as_str(),
    };
    ServerMessage::Compiled {
        version,
        language,
        status,
        cached,
        wall_ms: r.wall_ms,
    }
    .to_json()
}
