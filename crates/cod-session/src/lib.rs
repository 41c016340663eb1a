//! Program buffers for the web editor: the server's copy of every open program.
//!
//! The editor (CodeMirror 6) streams each change as a `ChangeSet` in its JSON form; the server
//! applies it to the session's buffer and acknowledges the new version, so "Run" only has to
//! name a version. The server is the authority: an edit made against an old version is refused
//! with the current text, and the client resynchronises (the `@codemirror/collab` model with a
//! single writer, no CRDT).
//!
//! - [`changeset`]: parsing and serializing CodeMirror's `ChangeSet.toJSON()` form;
//! - [`buffer`]: one rope with its language and version, and applying change sets to it;
//! - [`store`]: all sessions, with size limits, LRU eviction and idle expiry;
//! - [`bench`](mod@bench): the keystroke and memory measurements `cod bench` reports.
//!
//! # Why ropey
//!
//! Buffers are [`ropey`] 1.x ropes (the choice in DESIGN.md). CodeMirror positions count UTF-16
//! code units; ropey keeps a UTF-16 count in every tree node, always, and indexes by char, so a
//! CodeMirror offset becomes a char index in `O(log n)` (`utf16_cu_to_char`) and an offset that
//! falls inside a surrogate pair shows up by converting back (`char_to_utf16_cu`). `crop` converts
//! UTF-16 offsets only behind an optional feature and edits by byte offsets, so the same checks
//! would have to be rebuilt on byte boundaries. Ropey's nodes are fixed 1 KiB blocks: a loaded 20 KB program takes
//! about 1.13 times its size, and typing, which splits full leaves, up to about 2.15 times until
//! [`SessionStore::compact_idle`] rewrites idle buffers (see [`bench`](mod@bench)).
//!
//! This crate does no I/O and knows nothing of HTTP; `cod-server` puts a [`SessionStore`] behind
//! its WebSocket.

pub mod bench;
pub mod buffer;
pub mod changeset;
pub mod clock;
pub mod id;
pub mod store;

pub use buffer::{ApplyError, Buffer};
pub use changeset::{ChangeSet, ChangeSetError};
#[cfg(any(test, feature = "test-util"))]
pub use clock::ManualClock;
pub use clock::{Clock, SystemClock};
pub use id::{ParseSessionIdError, RandomError, SessionId};
pub use store::{
    Ack, ConfigError, EditError, MemoryUsage, OpenError, Opened, SessionNotFound, SessionStore,
    Snapshot, SnapshotError, StoreConfig,
};
