//! `GET /api/v1/ws`: the editor's WebSocket. The server keeps each open program in a
//! session (a rope in [`cod_session`]'s store), the editor streams CodeMirror changesets to
//! it, and "Run" names a version; runs stream their output back and read stdin from the
//! socket. The protocol is in docs/api.md ("WebSocket"); in short:
//!
//! | client | server |
//! |---|---|
//! | `open {language, text, session?}` | `opened {session, version, language, text, resumed}` |
//! | `edit {version, changes}` | `ack {version}`, or `resync {version, text}` |
//! | `language {language}` | — |
//! | `run {version, stdin?, args?, limits?}` | `stage`, `out`..., `exit {run result}` |
//! | `stdin {data}`, `stdin_close`, `kill` | (the run's events) |
//! | anything unusable | `error {error}`; the connection goes on |
//!
//! and, unasked, `compiled {version, language, status, cached, wall_ms}` when a
//! compile-ahead ends.
//!
//! - [`editor`]: the state connections share ([`Editor`]);
//! - `connection`: one connection's loop; `protocol`: its messages;
//! - `outbox`: what it sends, bounded in bytes; `run`: a run's task; `ahead`: compile-ahead;
//! - `slots`: worker slots from the scheduler.

mod ahead;
mod connection;
pub mod editor;
mod outbox;
mod protocol;
mod run;
pub(crate) mod slots;

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::Response;
use futures_util::StreamExt as _;
use tracing::Instrument;

pub use connection::CLOSE_SESSION_GONE;
pub use editor::{Editor, EditorConfig, EditorCounters, EditorStats};
pub use outbox::{OUTPUT_BUDGET, WRITE_BUFFER};

use crate::AppState;
use crate::auth::Caller;

/// `GET /api/v1/ws`: upgrades to the editor's WebSocket.
pub async fn upgrade(State(st): State<AppState>, caller: Caller, ws: WebSocketUpgrade) -> Response {
    let max_message = st.editor.config().max_message();
    let span = tracing::info_span!("ws", client = %caller.client);
    ws.max_message_size(max_message)
        .max_frame_size(max_message)
        // tungstenite's sink flushes before it takes another message, so it holds at most
        // this plus one message (an `exit` carries the whole run result: up to the output
        // limits, which bound it).
        .write_buffer_size(WRITE_BUFFER)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| {
            async move {
                let (sink, stream) = socket.split();
                connection::serve(st, caller, stream, sink).await;
            }
            .instrument(span)
        })
}
