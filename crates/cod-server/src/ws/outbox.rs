//! What a connection sends, and how much of it may wait for a slow client.
//!
//! Every message goes through one queue to one writer task, which hands it to the socket
//! (batching what is already queued, then flushing). The queue is bounded in bytes, not
//! messages, by two budgets: program output (`stage`, `out`, `exit`) and replies to the
//! client's own messages (`opened`, `ack`, `resync`, `error`, `compiled`). A message waits
//! for room in its budget before it is queued; its bytes are given back once the writer has
//! handed it to the socket. So:
//!
//! - a client that reads output slowly slows the run (its task waits for room, the
//!   executor's event queue fills, the program blocks on a full pipe) and cod holds at
//!   most [`OUTPUT_BUDGET`] bytes of its output here;
//! - a client that sends edits and never reads the replies stops being read once the
//!   replies fill their budget;
//! - output filling its budget never delays the reading of `kill` or `stdin`.
//!
//! Behind the queue, tungstenite holds at most its write buffer plus one message
//! ([`WRITE_BUFFER`]): its sink flushes before accepting more.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::ws::{CloseFrame, Message};
use futures_util::{Sink, SinkExt as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::editor::Editor;

/// Bytes of run messages a connection may hold for its client.
pub const OUTPUT_BUDGET: usize = 256 * 1024;
/// Bytes tungstenite gathers before writing to the socket.
pub const WRITE_BUFFER: usize = 64 * 1024;

/// The writer is gone (the connection closed): nothing more can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

/// A queued message with the budget it holds.
pub(crate) struct Outgoing {
    message: Message,
    held: Held,
}

/// Budget held by a queued message; given back when dropped.
struct Held {
    _permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
    /// The connection's count of streamed output bytes, for `stage` and `out`.
    output: Option<Arc<AtomicUsize>>,
    editor: Editor,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.editor.unbuffer(self.bytes);
        if let Some(o) = &self.output {
            o.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}

/// Which budget a message takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A run's `stage` and `out`.
    Output,
    /// A run's `exit`: from the output budget (all of it when larger), but not counted as
    /// streamed output: it is the run result, whose size the output limits bound.
    Exit,
    /// A reply.
    Reply,
}

/// The sending side of a connection; cheap to clone (run and compile tasks hold one).
#[derive(Clone)]
pub(crate) struct Outbox {
    tx: mpsc::UnboundedSender<Outgoing>,
    output: Arc<Semaphore>,
    replies: Arc<Semaphore>,
    replies_budget: usize,
    output_bytes: Arc<AtomicUsize>,
    editor: Editor,
}

impl Outbox {
    /// An outbox and the receiver its writer drains. Replies may hold up to two of the
    /// largest messages (`max_message`: a resync carries a whole text).
    pub(crate) fn new(
        editor: &Editor,
        max_message: usize,
    ) -> (Outbox, mpsc::UnboundedReceiver<Outgoing>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let replies_budget = max_message.saturating_mul(2).min(u32::MAX as usize);
        let outbox = Outbox {
            tx,
            output: Arc::new(Semaphore::new(OUTPUT_BUDGET)),
            replies: Arc::new(Semaphore::new(replies_budget)),
            replies_budget,
            output_bytes: Arc::new(AtomicUsize::new(0)),
            editor: editor.clone(),
        };
        (outbox, rx)
    }

    /// Queues a run's `stage` or `out`, waiting for room.
    pub(crate) async fn output(&self, text: String) -> Result<(), Closed> {
        self.send(Kind::Output, text).await
    }

    /// Queues a run's `exit`, waiting for room.
    pub(crate) async fn exit(&self, text: String) -> Result<(), Closed> {
        self.send(Kind::Exit, text).await
    }

    /// Queues a reply, waiting for room.
    pub(crate) async fn reply(&self, text: String) -> Result<(), Closed> {
        self.send(Kind::Reply, text).await
    }

    async fn send(&self, kind: Kind, text: String) -> Result<(), Closed> {
        let (budget, size) = match kind {
            Kind::Output | Kind::Exit => (&self.output, OUTPUT_BUDGET),
            Kind::Reply => (&self.replies, self.replies_budget),
        };
        let bytes = text.len();
        // A message larger than the whole budget waits until everything before it is out.
        let want = u32::try_from(bytes.clamp(1, size)).unwrap_or(u32::MAX);
        let permit = budget
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|_| Closed)?;
        self.editor.buffer(bytes);
        let output = (kind == Kind::Output).then(|| {
            let now = self.output_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
            self.editor.output_held(now);
            self.output_bytes.clone()
        });
        let held = Held {
            _permit: Some(permit),
            bytes,
            output,
            editor: self.editor.clone(),
        };
        self.tx
            .send(Outgoing {
                message: Message::Text(text.into()),
                held,
            })
            .map_err(|_| Closed)
    }

    /// Queues a close frame; the writer sends it after what is queued, then stops.
    pub(crate) fn close(&self, code: u16, reason: &str) {
        let _ = self.tx.send(Outgoing {
            message: Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })),
            held: Held {
                _permit: None,
                bytes: 0,
                output: None,
                editor: self.editor.clone(),
            },
        });
    }
}

/// Writes queued messages to `sink` until every [`Outbox`] is dropped, a close frame is
/// sent, or the socket fails. Messages already queued go out together, with one flush.
pub(crate) async fn write<S>(mut sink: S, mut rx: mpsc::UnboundedReceiver<Outgoing>)
where
    S: Sink<Message> + Unpin,
{
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(Outgoing { message, held }) = next.take() {
            let closing = matches!(message, Message::Close(_));
            if sink.feed(message).await.is_err() {
                return;
            }
            drop(held);
            if closing {
                let _ = sink.close().await;
                return;
            }
            next = rx.try_recv().ok();
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}
