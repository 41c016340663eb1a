//! One WebSocket connection: a loop that reads the client's messages in order and answers
//! them, with a writer task draining the [`Outbox`], at most one run task and one
//! compile-ahead task. Written against `Stream`/`Sink` so any message transport drives it.
//!
//! Everything the connection started ends with it: its run is killed, its compile-ahead
//! stopped. Its session stays in the store, to be resumed by id.

use std::time::Duration;

use axum::extract::ws::Message;
use cod_core::RunRequest;
use cod_session::{EditError, OpenError, SessionId, SnapshotError};
use futures_util::{Sink, Stream, StreamExt as _};
use tracing::{Instrument, debug, warn};

use super::ahead::Ahead;
use super::outbox::{self, Closed, Outbox};
use super::protocol::{self, ClientMessage, ServerMessage};
use super::run::{InputError, Placement, RunHandle, STDIN_BEFORE_START};
use crate::AppState;
use crate::auth::Caller;

/// Close code sent when the connection's session is gone (expired or evicted): the client
/// should reconnect and open it again with its text.
pub const CLOSE_SESSION_GONE: u16 = 4000;
/// How long the writer may take to send what is queued once the connection ends.
const WRITER_GRACE: Duration = Duration::from_secs(5);

/// What the loop does after a message.
enum Flow {
    Continue,
    Close,
}

struct Connection {
    st: AppState,
    out: Outbox,
    caller: Caller,
    session: Option<SessionId>,
    run: Option<RunHandle>,
    ahead: Ahead,
}

/// Serves one connection until the client leaves (or its session is gone).
pub(crate) async fn serve<R, S>(st: AppState, caller: Caller, mut incoming: R, sink: S)
where
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
    S: Sink<Message> + Unpin + Send + 'static,
{
    let _counted = st.editor.connection_opened();
    let max_message = st.editor.config().max_message();
    let (out, rx) = Outbox::new(&st.editor, max_message);
    let mut writer = tokio::spawn(outbox::write(sink, rx).in_current_span());
    let ahead = Ahead::new(&st.editor);
    let mut conn = Connection {
        caller,
        st,
        out,
        session: None,
        run: None,
        ahead,
    };
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    loop {
        let due = conn.ahead.due();
        if let Some(at) = due
            && timer.deadline() != at
        {
            timer.as_mut().reset(at);
        }
        let flow = tokio::select! {
            msg = incoming.next() => match msg {
                Some(Ok(Message::Text(text))) => conn.on_text(text.as_str()).await,
                Some(Ok(Message::Binary(_))) => {
                    conn.error("binary frames are not part of the protocol: send JSON text").await
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(Flow::Continue),
                Some(Ok(Message::Close(_))) | None => Ok(Flow::Close),
                Some(Err(e)) => {
                    debug!(error = %e, "connection read failed");
                    Ok(Flow::Close)
                }
            },
            () = &mut timer, if due.is_some() => {
                conn.compile_ahead();
                Ok(Flow::Continue)
            }
        };
        match flow {
            Ok(Flow::Continue) => {}
            Ok(Flow::Close) | Err(Closed) => break,
        }
    }
    // Stop what this connection started, then let the writer send what is queued (a close
    // frame, the last replies), for a bounded time.
    drop(conn);
    if tokio::time::timeout(WRITER_GRACE, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

impl Connection {
    async fn reply(&self, msg: ServerMessage<'_>) -> Result<(), Closed> {
        self.out.reply(msg.to_json()).await
    }

    async fn error(&self, error: impl AsRef<str>) -> Result<Flow, Closed> {
        self.reply(ServerMessage::Error {
            error: error.as_ref(),
        })
        .await?;
        Ok(Flow::Continue)
    }

    async fn on_text(&mut self, text: &str) -> Result<Flow, Closed> {
        let msg = match protocol::parse(text) {
            Ok(m) => m,
            Err(e) => return self.error(e).await,
        };
        match msg {
            ClientMessage::Open(m) => self.open(m).await,
            ClientMessage::Edit(m) => self.edit(m).await,
            ClientMessage::Language(m) => self.language(m).await,
            ClientMessage::Run(m) => self.run(m).await,
            ClientMessage::Stdin(m) => self.stdin(m.data).await,
            ClientMessage::StdinClose => self.stdin_close().await,
            ClientMessage::Kill => {
                if let Some(run) = self.active_run() {
                    run.kill();
                }
                Ok(Flow::Continue)
            }
        }
    }

    /// The session, or an error telling the client to open one.
    async fn session(&self, kind: &str) -> Result<Option<SessionId>, Closed> {
        if self.session.is_none() {
            self.error(format!(
                "{kind}: no session is open on this connection: send \"open\" first"
            ))
            .await?;
        }
        Ok(self.session)
    }

    /// The session vanished (expired or evicted) under this connection: say so and close,
    /// so that the client reconnects and opens a new session with its text.
    async fn session_gone(&mut self, kind: &str) -> Result<Flow, Closed> {
        let id = self
            .session
            .take()
            .map(|s| s.to_string())
            .unwrap_or_default();
        self.error(format!(
            "{kind}: session {id} is gone (expired or evicted): open it again"
        ))
        .await?;
        self.out.close(CLOSE_SESSION_GONE, "session gone");
        Ok(Flow::Close)
    }

    /// The canonical name of language `name` (an alias works too).
    fn language_name(&self, kind: &str, name: &str) -> Result<String, String> {
        let registry = self.st.executor.registry();
        registry.get(name).map(|l| l.name.clone()).ok_or_else(|| {
            format!(
                "{kind}: language: unknown language {name:?}; available: {}",
                registry.available_names().join(", ")
            )
        })
    }

    fn compiled_language(&self, name: &str) -> bool {
        self.st
            .executor
            .registry()
            .get(name)
            .is_some_and(|l| l.compiled())
    }

    async fn open(&mut self, m: protocol::Open) -> Result<Flow, Closed> {
        if self.active_run().is_some() {
            return self
                .error("open: a run is active on this connection: kill it first")
                .await;
        }
        let language = match self.language_name("open", &m.language) {
            Ok(l) => l,
            Err(e) => return self.error(e).await,
        };
        // An id that is not one of ours is as unknown as an expired one: a new session.
        let resume = m
            .session
            .as_deref()
            .and_then(|s| s.parse::<SessionId>().ok());
        let opened = match self
            .st
            .editor
            .store()
            .open(&language, &m.text, resume.as_ref())
        {
            Ok(o) => o,
            Err(e @ OpenError::TooLarge { .. }) => {
                return self.error(format!("open: text: {e}")).await;
            }
            Err(e @ OpenError::Random(_)) => {
                warn!(error = %e, "no session id");
                return self
                    .error("open: the server could not make a session id")
                    .await;
            }
        };
        debug!(session = %opened.id, resumed = opened.resumed, version = opened.version, "session opened");
        self.session = Some(opened.id);
        self.run = None;
        self.reply(ServerMessage::Opened {
            session: opened.id.to_string(),
            version: opened.version,
            language: &opened.language,
            text: &opened.text,
            resumed: opened.resumed,
        })
        .await?;
        self.ahead
            .language_changed(self.compiled_language(&opened.language));
        Ok(Flow::Continue)
    }

    async fn edit(&mut self, m: protocol::Edit) -> Result<Flow, Closed> {
        let Some(id) = self.session("edit").await? else {
            return Ok(Flow::Continue);
        };
        let store = self.st.editor.store();
        match store.edit_json(&id, m.version, &m.changes) {
            Ok(ack) => {
                self.reply(ServerMessage::Ack {
                    version: ack.version,
                })
                .await?;
                let keep = self.active_run().map(|r| r.version);
                self.ahead.changed(ack.version, keep);
                Ok(Flow::Continue)
            }
            Err(EditError::Stale { version, text, .. }) => {
                self.reply(ServerMessage::Resync {
                    version,
                    text: &text,
                })
                .await?;
                Ok(Flow::Continue)
            }
            Err(EditError::NotFound(_)) => self.session_gone("edit").await,
            Err(e) => {
                let error = match &e {
                    EditError::Malformed(_) => format!("edit: changes: {e}"),
                    _ => format!("edit: {e}"),
                };
                self.error(error).await?;
                // The client has applied the change it sent: put it back on the server's text.
                match store.snapshot(&id) {
                    Some(s) => {
                        self.reply(ServerMessage::Resync {
                            version: s.version,
                            text: &s.text,
                        })
                        .await?;
                        Ok(Flow::Continue)
                    }
                    None => self.session_gone("edit").await,
                }
            }
        }
    }

    async fn language(&mut self, m: protocol::Language) -> Result<Flow, Closed> {
        let Some(id) = self.session("language").await? else {
            return Ok(Flow::Continue);
        };
        let language = match self.language_name("language", &m.language) {
            Ok(l) => l,
            Err(e) => return self.error(e).await,
        };
        let store = self.st.editor.store();
        if store.set_language(&id, &language).is_err() {
            return self.session_gone("language").await;
        }
        self.ahead
            .language_changed(self.compiled_language(&language));
        Ok(Flow::Continue)
    }

    /// The run of this connection, if it has not ended.
    fn active_run(&mut self) -> Option<&mut RunHandle> {
        if self.run.as_ref().is_some_and(RunHandle::finished) {
            self.run = None;
        }
        self.run.as_mut()
    }

    async fn run(&mut self, m: protocol::Run) -> Result<Flow, Closed> {
        let Some(id) = self.session("run").await? else {
            return Ok(Flow::Continue);
        };
        if self.active_run().is_some() {
            return self
                .error("run: a run is already active on this connection: kill it first")
                .await;
        }
        let snap = match self.st.editor.store().snapshot_at(&id, m.version) {
            Ok(s) => s,
            Err(SnapshotError::NotCurrent { requested, current }) => {
                return self
                    .error(format!(
                        "run: version: {requested} is not the current version {current}"
                    ))
                    .await;
            }
            Err(SnapshotError::NotFound(_)) => return self.session_gone("run").await,
        };
        let closed_stdin = m.stdin.is_some();
        let req = RunRequest {
            language: snap.language,
            source: Some(snap.text),
            stdin: m.stdin,
            args: m.args,
            files: Vec::new(),
            limits: m.limits,
        };
        let job = match self.st.executor.prepare(&req) {
            Ok(j) => j,
            Err(e) => return self.error(format!("run: {e}")).await,
        };
        self.ahead.run_started();
        self.run = Some(RunHandle::start(
            &self.st,
            job,
            snap.version,
            Placement {
                caller: self.caller.clone(),
                avoid: self.ahead.recent_slot(),
            },
            closed_stdin,
            self.out.clone(),
        ));
        Ok(Flow::Continue)
    }

    async fn stdin(&mut self, data: String) -> Result<Flow, Closed> {
        let Some(run) = self.active_run() else {
            return self.error("stdin: no run is active").await;
        };
        match run.stdin(data) {
            Ok(()) => Ok(Flow::Continue),
            Err(InputError::Closed) => self.error("stdin: the program's input is closed").await,
            Err(InputError::Full) => {
                self.error("stdin: the program is not reading its input; this input was dropped")
                    .await
            }
            Err(InputError::TooEarly) => {
                self.error(format!(
                    "stdin: at most {STDIN_BEFORE_START} bytes wait for a program that has not started; this input was dropped"
                ))
                .await
            }
        }
    }

    async fn stdin_close(&mut self) -> Result<Flow, Closed> {
        let Some(run) = self.active_run() else {
            return self.error("stdin_close: no run is active").await;
        };
        run.close_stdin();
        Ok(Flow::Continue)
    }

    fn compile_ahead(&mut self) {
        let Some(id) = self.session else {
            return;
        };
        self.ahead.start(&self.st, &id, &self.caller, &self.out);
    }
}
