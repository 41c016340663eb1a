//! The session store: every open program buffer, keyed by an unguessable id.
//!
//! The server is the authority over each buffer, as in `@codemirror/collab`: an edit is applied
//! only against the version it was made for, otherwise the client gets the current text and
//! version back and resynchronises. Sessions idle for longer than the expiry are gone on the next
//! lookup and are removed in bulk by [`SessionStore::purge_expired`]; when the store is full, the
//! least recently used session makes room for a new one. [`SessionStore::compact_idle`], also
//! called periodically, gives idle buffers back the memory that typing left in half-full rope
//! nodes.
//!
//! One mutex guards the whole map. Every operation under it is `O(log n)` in the text and the
//! number of sessions except those that copy a text out (resume, stale edits, snapshots) and the
//! memory walk, and none of them does I/O, so callers hold it for microseconds.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use cod_core::Bytes;
use parking_lot::Mutex;
use serde::Serialize;

use crate::buffer::{ApplyError, Buffer, compacted};
use crate::changeset::{ChangeSet, ChangeSetError};
use crate::clock::{Clock, SystemClock};
use crate::id::{RandomError, SessionId};

/// Default limit on one session's text: 1 MiB.
pub const DEFAULT_MAX_TEXT_BYTES: Bytes = Bytes::mib(1);
/// Default number of sessions kept before the least recently used one is evicted.
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;
/// Default time after its last use that a session expires: one hour.
pub const DEFAULT_IDLE_EXPIRY: Duration = Duration::from_secs(60 * 60);

/// Limits of a [`SessionStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Largest text a session may hold, in UTF-8 bytes.
    pub max_text_bytes: Bytes,
    /// Most sessions kept at once; opening one more evicts the least recently used.
    pub max_sessions: usize,
    /// A session not used for this long is expired.
    pub idle_expiry: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_text_bytes: DEFAULT_MAX_TEXT_BYTES,
            max_sessions: DEFAULT_MAX_SESSIONS,
            idle_expiry: DEFAULT_IDLE_EXPIRY,
        }
    }
}

/// A [`StoreConfig`] value that would make the store unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `max_text_bytes` is zero
    #[error("max_text_bytes must be at least 1 byte")]
    ZeroTextBytes,
    /// `max_sessions` is zero
    #[error("max_sessions must be at least 1")]
    ZeroSessions,
    /// `idle_expiry` is zero
    #[error("idle_expiry must be longer than zero")]
    ZeroIdleExpiry,
}

impl StoreConfig {
    /// Checks that every limit allows at least something.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_text_bytes.get() == 0 {
            return Err(ConfigError::ZeroTextBytes);
        }
        if self.max_sessions == 0 {
            return Err(ConfigError::ZeroSessions);
        }
        if self.idle_expiry.is_zero() {
            return Err(ConfigError::ZeroIdleExpiry);
        }
        Ok(())
    }
}

/// The result of [`SessionStore::open`]: the session the client now edits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Opened {
    /// The session's id, to send with every later message.
    pub id: SessionId,
    /// The current version: 0 for a new session, the server's for a resumed one.
    pub version: u64,
    /// The session's language (the server's, for a resumed session).
    pub language: String,
    /// The current text (the server's, for a resumed session).
    pub text: String,
    /// Whether an existing session was resumed rather than a new one created.
    pub resumed: bool,
}

/// An accepted edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ack {
    /// The version the edit produced.
    pub version: u64,
}

/// A copy of one version of a session, to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// The session's language.
    pub language: String,
    /// The version of `text`.
    pub version: u64,
    /// The program text.
    pub text: String,
}

/// The session does not exist: it was never opened, or it expired, was evicted or closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no session {id} (unknown, expired or evicted)")]
pub struct SessionNotFound {
    /// The id that was looked up.
    pub id: SessionId,
}

/// Why [`SessionStore::open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// the initial text is over the per-session limit
    #[error("program text is {size} bytes, over the limit of {limit} per session")]
    TooLarge {
        /// the text's UTF-8 size
        size: usize,
        /// the limit
        limit: Bytes,
    },
    /// no id could be generated
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// Why [`SessionStore::edit`] rejected an edit. In every case the text is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// the session does not exist (the client should open it again with its text)
    #[error(transparent)]
    NotFound(#[from] SessionNotFound),
    /// the edit was made against another version; `version` and `text` are the server's
    #[error("edit is based on version {base} but the session is at version {version}")]
    Stale {
        /// the version the client based its edit on
        base: u64,
        /// the session's current version
        version: u64,
        /// the session's current text, for the client to resynchronise
        text: String,
    },
    /// the changeset's JSON is malformed
    #[error(transparent)]
    Malformed(#[from] ChangeSetError),
    /// the changeset does not fit the text, or the result is too large
    #[error(transparent)]
    Rejected(#[from] ApplyError),
}

/// Why [`SessionStore::snapshot_at`] found no text to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// the session does not exist
    #[error(transparent)]
    NotFound(#[from] SessionNotFound),
    /// the session is at another version than the one asked for
    #[error("version {requested} is not current: the session is at version {current}")]
    NotCurrent {
        /// the version asked for
        requested: u64,
        /// the session's current version
        current: u64,
    },
}

/// Memory held by a store, as estimated by [`SessionStore::memory`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryUsage {
    /// Sessions held.
    pub sessions: usize,
    /// Sum of the texts' UTF-8 sizes.
    pub text_bytes: usize,
    /// Approximate heap bytes of the sessions, their ropes and the store's indexes.
    pub heap_bytes: usize,
}

struct Entry {
    buffer: Buffer,
    last_used: Instant,
    /// Position in the LRU order; larger is more recent.
    tick: u64,
}

/// The map and its recency index. `lru` holds exactly one `(tick, id)` for every entry, so its
/// first key is the least recently used session; because the clock is monotonic and read under
/// the lock, it is also the one idle longest.
#[derive(Default)]
struct Sessions {
    map: HashMap<SessionId, Entry>,
    lru: BTreeMap<u64, SessionId>,
    next_tick: u64,
}

impl Sessions {
    fn next_tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    fn remove(&mut self, id: &SessionId) -> Option<Entry> {
        let entry = self.map.remove(id)?;
        self.lru.remove(&entry.tick);
        Some(entry)
    }

    /// The live session `id`, marked as used now; an expired one is removed instead.
    fn touch(
        &mut self,
        id: &SessionId,
        now: Instant,
        expiry: Duration,
    ) -> Result<&mut Entry, SessionNotFound> {
        let not_found = SessionNotFound { id: *id };
        let (old_tick, last_used) = match self.map.get(id) {
            Some(entry) => (entry.tick, entry.last_used),
            None => return Err(not_found),
        };
        if now.saturating_duration_since(last_used) >= expiry {
            self.remove(id);
            return Err(not_found);
        }
        let tick = self.next_tick();
        self.lru.remove(&old_tick);
        self.lru.insert(tick, *id);
        let entry = self.map.get_mut(id).ok_or(not_found)?;
        entry.tick = tick;
        entry.last_used = now;
        Ok(entry)
    }

    fn insert(&mut self, id: SessionId, buffer: Buffer, now: Instant, max_sessions: usize) {
        while self.map.len() >= max_sessions {
            let Some((_, oldest)) = self.lru.pop_first() else {
                break;
            };
            self.map.remove(&oldest);
        }
        let tick = self.next_tick();
        self.lru.insert(tick, id);
        self.map.insert(
            id,
            Entry {
                buffer,
                last_used: now,
                tick,
            },
        );
    }

    fn heap_bytes(&self) -> usize {
        // hashbrown: one slot plus one control byte per bucket; a B-tree leaf is about
        // two-thirds full, so count its entries at 1.5 times their size.
        let map = self.map.capacity() * (size_of::<(SessionId, Entry)>() + 1);
        let lru = self.lru.len() * size_of::<(u64, SessionId)>() * 3 / 2;
        let buffers: usize = self.map.values().map(|e| e.buffer.heap_bytes()).sum();
        map + lru + buffers
    }
}

/// Every open program buffer, shared by the server's connections (`Arc<SessionStore>`).
pub struct SessionStore<C = SystemClock> {
    config: StoreConfig,
    clock: C,
    sessions: Mutex<Sessions>,
}

impl<C> std::fmt::Debug for SessionStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("config", &self.config)
            .field("sessions", &self.sessions.lock().map.len())
            .finish_non_exhaustive()
    }
}

impl SessionStore<SystemClock> {
    /// An empty store on the real clock.
    pub fn new(config: StoreConfig) -> Result<Self, ConfigError> {
        Self::with_clock(config, SystemClock)
    }
}

impl<C: Clock> SessionStore<C> {
    /// An empty store reading the time from `clock`.
    pub fn with_clock(config: StoreConfig, clock: C) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            clock,
            sessions: Mutex::new(Sessions::default()),
        })
    }

    /// The store's limits.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Opens a session. With `resume` naming a live session, that session is returned with the
    /// server's language, text and version, and `language` and `text` are ignored; otherwise
    /// (no id, or an unknown or expired one) a new session with a fresh id holds `text`.
    pub fn open(
        &self,
        language: &str,
        text: &str,
        resume: Option<&SessionId>,
    ) -> Result<Opened, OpenError> {
        if let Some(id) = resume {
            let mut sessions = self.sessions.lock();
            let now = self.clock.now();
            if let Ok(entry) = sessions.touch(id, now, self.config.idle_expiry) {
                return Ok(Opened {
                    id: *id,
                    version: entry.buffer.version(),
                    language: entry.buffer.language().to_owned(),
                    text: entry.buffer.text(),
                    resumed: true,
                });
            }
        }
        let limit = self.config.max_text_bytes;
        if u64::try_from(text.len()).map_or(true, |size| size > limit.get()) {
            return Err(OpenError::TooLarge {
                size: text.len(),
                limit,
            });
        }
        let id = SessionId::random()?;
        let buffer = Buffer::new(language, text);
        let mut sessions = self.sessions.lock();
        let now = self.clock.now();
        sessions.insert(id, buffer, now, self.config.max_sessions);
        Ok(Opened {
            id,
            version: 0,
            language: language.to_owned(),
            text: text.to_owned(),
            resumed: false,
        })
    }

    /// Applies `changes`, made by the client against `base_version`, and returns the new
    /// version. A `base_version` other than the current one is never applied: the error carries
    /// the current version and text instead.
    pub fn edit(
        &self,
        id: &SessionId,
        base_version: u64,
        changes: &ChangeSet,
    ) -> Result<Ack, EditError> {
        let mut sessions = self.sessions.lock();
        let now = self.clock.now();
        let entry = sessions.touch(id, now, self.config.idle_expiry)?;
        let buffer = &mut entry.buffer;
        if buffer.version() != base_version {
            return Err(EditError::Stale {
                base: base_version,
                version: buffer.version(),
                text: buffer.text(),
            });
        }
        let version = buffer.apply(changes, self.config.max_text_bytes)?;
        Ok(Ack { version })
    }

    /// [`edit`](Self::edit) with the changeset still in its JSON form; it is parsed before the
    /// store is locked.
    pub fn edit_json(
        &self,
        id: &SessionId,
        base_version: u64,
        changes: &serde_json::Value,
    ) -> Result<Ack, EditError> {
        let changes = ChangeSet::from_json(changes)?;
        self.edit(id, base_version, &changes)
    }

    /// Changes a session's language; the version stays.
    pub fn set_language(&self, id: &SessionId, language: &str) -> Result<(), SessionNotFound> {
        let mut sessions = self.sessions.lock();
        let now = self.clock.now();
        sessions
            .touch(id, now, self.config.idle_expiry)?
            .buffer
            .set_language(language);
        Ok(())
    }

    /// The session's current language, version and text.
    pub fn snapshot(&self, id: &SessionId) -> Option<Snapshot> {
        let mut sessions = self.sessions.lock();
        let now = self.clock.now();
        let buffer = &sessions
            .touch(id, now, self.config.idle_expiry)
            .ok()?
            .buffer;
        Some(Snapshot {
            language: buffer.language().to_owned(),
            version: buffer.version(),
            text: buffer.text(),
        })
    }

    /// The session's text at `version`, which must be the current one (only the current text is
    /// kept, so a run never gets a text other than the one it names).
    pub fn snapshot_at(&self, id: &SessionId, version: u64) -> Result<Snapshot, SnapshotError> {
        let mut sessions = self.sessions.lock();
        let now = self.clock.now();
        let buffer = &sessions.touch(id, now, self.config.idle_expiry)?.buffer;
        if buffer.version() != version {
            return Err(SnapshotError::NotCurrent {
                requested: version,
                current: buffer.version(),
            });
        }
        Ok(Snapshot {
            language: buffer.language().to_owned(),
            version,
            text: buffer.text(),
        })
    }

    /// Removes a session; returns whether it existed.
    pub fn close(&self, id: &SessionId) -> bool {
        self.sessions.lock().remove(id).is_some()
    }

    /// Removes every expired session and returns how many there were. The server calls this
    /// periodically; lookups already treat expired sessions as gone.
    pub fn purge_expired(&self) -> usize {
        let mut sessions = self.sessions.lock();
        let now = self.clock.now();
        let mut purged = 0;
        // Oldest first: the first live session ends the scan.
        while let Some((_, id)) = sessions.lru.first_key_value() {
            let id = *id;
            let expired = sessions.map.get(&id).is_none_or(|entry| {
                now.saturating_duration_since(entry.last_used) >= self.config.idle_expiry
            });
            if !expired {
                break;
            }
            sessions.lru.pop_first();
            sessions.map.remove(&id);
            purged += 1;
        }
        purged
    }

    /// Rewrites the ropes of up to `max` sessions idle for at least `idle` whose nodes are
    /// sparse into full nodes, and returns how many it rewrote. Typing into a freshly loaded
    /// text splits its full 1 KiB leaves into half-full ones, roughly doubling its memory; this
    /// brings an idle session back to what loading it would take. The copies are built outside
    /// the lock and swapped in only if the session did not change meanwhile; text and version
    /// stay the same. The server calls it periodically, like [`purge_expired`](Self::purge_expired).
    pub fn compact_idle(&self, idle: Duration, max: usize) -> usize {
        let mut work = Vec::new();
        {
            let mut sessions = self.sessions.lock();
            let now = self.clock.now();
            let Sessions { map, lru, .. } = &mut *sessions;
            // Oldest first: the first session used within `idle` ends the scan.
            for id in lru.values() {
                if work.len() >= max {
                    break;
                }
                let Some(entry) = map.get_mut(id) else {
                    continue;
                };
                if now.saturating_duration_since(entry.last_used) < idle {
                    break;
                }
                if entry.buffer.is_sparse() {
                    work.push((*id, entry.buffer.version(), entry.buffer.rope().clone()));
                }
            }
        }
        let work: Vec<_> = work
            .into_iter()
            .map(|(id, version, rope)| (id, version, compacted(&rope)))
            .collect();
        let mut sessions = self.sessions.lock();
        let mut done = 0;
        for (id, version, rope) in work {
            if let Some(entry) = sessions.map.get_mut(&id)
                && entry.buffer.version() == version
            {
                entry.buffer.replace_compacted(rope);
                done += 1;
            }
        }
        done
    }

    /// The number of sessions held, expired ones not yet purged included.
    pub fn len(&self) -> usize {
        self.sessions.lock().map.len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Estimates the memory the sessions hold. Walks every rope's leaves, so it takes about a
    /// millisecond per 10,000 sessions of 20 KB; call it for metrics, not per request.
    pub fn memory(&self) -> MemoryUsage {
        let sessions = self.sessions.lock();
        MemoryUsage {
            sessions: sessions.map.len(),
            text_bytes: sessions.map.values().map(|e| e.buffer.len_bytes()).sum(),
            heap_bytes: sessions.heap_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::clock::ManualClock;

    fn store(config: StoreConfig) -> (SessionStore<Arc<ManualClock>>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        let store = SessionStore::with_clock(config, clock.clone()).expect("valid config");
        (store, clock)
    }

    fn open(store: &SessionStore<Arc<ManualClock>>, text: &str) -> SessionId {
        store.open("python", text, None).expect("opens").id
    }

    fn cs(v: serde_json::Value) -> ChangeSet {
        ChangeSet::from_json(&v).expect("well-formed")
    }

    fn text(store: &SessionStore<Arc<ManualClock>>, id: &SessionId) -> Option<String> {
        store.snapshot(id).map(|s| s.text)
    }

    #[test]
    fn open_edit_and_snapshot() {
        let (store, _) = store(StoreConfig::default());
        let opened = store.open("python", "print(1)", None).expect("opens");
        assert_eq!(
            (opened.version, opened.resumed, opened.text.as_str()),
            (0, false, "print(1)")
        );
        let id = opened.id;
        assert_eq!(
            store
                .edit(&id, 0, &cs(json!([6, [1, "42"], 1])))
                .expect("applies")
                .version,
            1
        );
        assert_eq!(
            store
                .edit_json(&id, 1, &json!([[0, "# 😀", ""], 9]))
                .expect("applies"),
            Ack { version: 2 }
        );
        let snapshot = store.snapshot(&id).expect("live");
        assert_eq!(
            snapshot,
            Snapshot {
                language: "python".into(),
                version: 2,
                text: "# 😀\nprint(42)".into()
            }
        );
        assert_eq!(store.snapshot_at(&id, 2), Ok(snapshot));
        assert_eq!(
            store.snapshot_at(&id, 1),
            Err(SnapshotError::NotCurrent {
                requested: 1,
                current: 2
            })
        );
    }

    #[test]
    fn a_stale_edit_returns_the_current_text_and_changes_nothing() {
        let (store, _) = store(StoreConfig::default());
        let id = open(&store, "ab");
        store
            .edit(&id, 0, &cs(json!([2, [0, "c"]])))
            .expect("applies");
        // A second client edit still based on version 0, for the old 2-unit document.
        match store.edit(&id, 0, &cs(json!([[0, "x"], 2]))) {
            Err(EditError::Stale {
                base: 0,
                version: 1,
                text,
            }) => assert_eq!(text, "abc"),
            other => panic!("expected Stale, got {other:?}"),
        }
        // A version from the future is just as stale.
        assert!(matches!(
            store.edit(&id, 7, &cs(json!([3]))),
            Err(EditError::Stale {
                base: 7,
                version: 1,
                ..
            })
        ));
        assert_eq!(text(&store, &id).as_deref(), Some("abc"));
        assert_eq!(store.snapshot(&id).map(|s| s.version), Some(1));
    }

    #[test]
    fn rejected_edits_name_the_problem_and_leave_the_text() {
        let (store, _) = store(StoreConfig::default());
        let id = open(&store, "hello");
        let err = store
            .edit(&id, 0, &cs(json!([[0, "x"], 9])))
            .expect_err("wrong length");
        assert!(matches!(
            err,
            EditError::Rejected(ApplyError::LengthMismatch { .. })
        ));
        let err = store
            .edit_json(&id, 0, &json!([5, [0, 1]]))
            .expect_err("malformed");
        assert_eq!(
            err.to_string(),
            "changeset part 1: inserted line 0 must be a string, got a number"
        );
        assert!(matches!(err, EditError::Malformed(_)));
        assert_eq!(text(&store, &id).as_deref(), Some("hello"));
        assert_eq!(store.snapshot(&id).map(|s| s.version), Some(0));
    }

    #[test]
    fn resume_returns_the_servers_text_and_version() {
        let (store, _) = store(StoreConfig::default());
        let id = open(&store, "x = 1");
        store
            .edit(&id, 0, &cs(json!([4, [1, "2"]])))
            .expect("applies");
        let resumed = store
            .open("cpp", "stale client text", Some(&id))
            .expect("opens");
        assert_eq!(
            resumed,
            Opened {
                id,
                version: 1,
                language: "python".into(),
                text: "x = 2".into(),
                resumed: true
            }
        );
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn resuming_an_unknown_id_creates_a_new_session_with_the_clients_text() {
        let (store, _) = store(StoreConfig::default());
        let unknown = SessionId::random().expect("random source");
        let opened = store
            .open("rust", "fn main() {}", Some(&unknown))
            .expect("opens");
        assert_ne!(opened.id, unknown, "a client-chosen id is never adopted");
        assert_eq!((opened.version, opened.resumed), (0, false));
        assert_eq!(text(&store, &opened.id).as_deref(), Some("fn main() {}"));
        assert_eq!(text(&store, &unknown), None);
    }

    #[test]
    fn texts_over_the_limit_are_refused_on_open_and_edit() {
        let limit = Bytes(8);
        let (store, _) = store(StoreConfig {
            max_text_bytes: limit,
            ..StoreConfig::default()
        });
        let err = store
            .open("python", "123456789", None)
            .expect_err("too large");
        assert!(matches!(
            err,
            OpenError::TooLarge {
                size: 9,
                limit: Bytes(8)
            }
        ));
        assert_eq!(
            err.to_string(),
            "program text is 9 bytes, over the limit of 8B per session"
        );
        assert!(store.is_empty());
        let id = open(&store, "1234567");
        let err = store
            .edit(&id, 0, &cs(json!([7, [0, "89"]])))
            .expect_err("too large");
        assert!(matches!(
            err,
            EditError::Rejected(ApplyError::TooLarge {
                size: 9,
                limit: Bytes(8)
            })
        ));
        assert!(err.to_string().contains("over the limit of 8B"), "{err}");
        assert_eq!(
            store
                .edit(&id, 0, &cs(json!([7, [0, "8"]])))
                .expect("fits")
                .version,
            1
        );
    }

    #[test]
    fn the_least_recently_used_session_is_evicted_when_full() {
        let (store, _) = store(StoreConfig {
            max_sessions: 3,
            ..StoreConfig::default()
        });
        let a = open(&store, "a");
        let b = open(&store, "b");
        let c = open(&store, "c");
        // Use a, so b is now the least recently used.
        store
            .edit(&a, 0, &cs(json!([1, [0, "!"]])))
            .expect("applies");
        let d = open(&store, "d");
        assert_eq!(store.len(), 3);
        assert_eq!(text(&store, &b), None, "b was least recently used");
        assert!(matches!(
            store.edit(&b, 0, &cs(json!([1]))),
            Err(EditError::NotFound(SessionNotFound { id })) if id == b
        ));
        // Use c, then a: d is now the least recently used.
        store.snapshot(&c);
        store.snapshot(&a);
        let e = open(&store, "e");
        assert_eq!(text(&store, &d), None);
        for (id, want) in [(a, "a!"), (c, "c"), (e, "e")] {
            assert_eq!(text(&store, &id).as_deref(), Some(want));
        }
    }

    #[test]
    fn idle_sessions_expire_on_lookup() {
        let expiry = Duration::from_secs(60);
        let (store, clock) = store(StoreConfig {
            idle_expiry: expiry,
            ..StoreConfig::default()
        });
        let id = open(&store, "x");
        clock.advance(Duration::from_secs(59));
        assert!(
            store.set_language(&id, "ruby").is_ok(),
            "still live, and now used again"
        );
        clock.advance(Duration::from_secs(59));
        assert_eq!(
            store.snapshot(&id).map(|s| s.language).as_deref(),
            Some("ruby")
        );
        clock.advance(expiry);
        assert_eq!(
            store.snapshot_at(&id, 0),
            Err(SnapshotError::NotFound(SessionNotFound { id }))
        );
        assert!(store.is_empty(), "the lookup removed it");
        // Resuming an expired session starts over with the client's text.
        let reopened = store.open("ruby", "puts 1", Some(&id)).expect("opens");
        assert!(!reopened.resumed);
        assert_ne!(reopened.id, id);
    }

    #[test]
    fn purge_removes_only_expired_sessions() {
        let expiry = Duration::from_secs(60);
        let (store, clock) = store(StoreConfig {
            idle_expiry: expiry,
            ..StoreConfig::default()
        });
        let old = [open(&store, "1"), open(&store, "2")];
        clock.advance(Duration::from_secs(40));
        let young = open(&store, "3");
        let used = open(&store, "4");
        clock.advance(Duration::from_secs(10));
        store.snapshot(&old[0]);
        clock.advance(Duration::from_secs(10));
        // Now: old[1] idle 60 s (expired), old[0] 10 s, young 20 s, used 20 s.
        assert_eq!(store.purge_expired(), 1);
        assert_eq!(store.len(), 3);
        assert_eq!(text(&store, &old[1]), None);
        clock.advance(Duration::from_secs(35));
        assert!(store.snapshot(&used).is_some(), "idle 55 s: still live");
        clock.advance(Duration::from_secs(15));
        // Now: young idle 70 s, old[0] 60 s (both expired), used 15 s.
        assert_eq!(store.purge_expired(), 2, "old[0] and young");
        assert_eq!(text(&store, &young), None);
        assert_eq!(text(&store, &used).as_deref(), Some("4"));
        assert_eq!(store.purge_expired(), 0);
    }

    #[test]
    fn idle_sparse_sessions_are_compacted_without_changing_them() {
        let (store, clock) = store(StoreConfig::default());
        let program = "x = 1\n".repeat(4_000);
        let typed = open(&store, &program);
        let fresh = open(&store, &program);
        // One keystroke every 600 bytes splits nearly every full leaf.
        let positions: Vec<_> = (0..40).map(|i| (i * 600, i * 600, "#")).collect();
        let changes = ChangeSet::from_changes(program.len(), &positions).expect("valid");
        store.edit(&typed, 0, &changes).expect("applies");
        let heap = |id| {
            let sessions = store.sessions.lock();
            sessions.map[id].buffer.heap_bytes() as f64 / sessions.map[id].buffer.len_bytes() as f64
        };
        assert!(
            heap(&typed) > 1.5,
            "typing made it sparse: {}",
            heap(&typed)
        );
        let before = store.snapshot(&typed).expect("live");

        clock.advance(Duration::from_secs(30));
        let active = open(&store, &program);
        store.edit(&active, 0, &changes).expect("applies");
        clock.advance(Duration::from_secs(30));
        assert_eq!(
            store.compact_idle(Duration::from_secs(61), 10),
            0,
            "nothing idle for 61 s"
        );
        assert_eq!(
            store.compact_idle(Duration::from_secs(45), 10),
            1,
            "only `typed`"
        );
        assert!(heap(&typed) < 1.2, "compacted: {}", heap(&typed));
        assert!(heap(&active) > 1.5, "recently used: left alone");
        assert!(heap(&fresh) < 1.2);
        assert_eq!(store.snapshot(&typed), Some(before));
        assert_eq!(
            store.compact_idle(Duration::ZERO, 10),
            1,
            "now `active`, not `typed` again"
        );
        assert_eq!(store.compact_idle(Duration::ZERO, 10), 0);
        // Edits continue normally on the compacted rope.
        store
            .edit(&typed, 1, &cs(json!([[0, "😀"], program.len() + 40])))
            .expect("applies");
        assert!(text(&store, &typed).is_some_and(|t| t.starts_with("😀#x = 1")));
    }

    #[test]
    fn bad_configs_are_refused() {
        let bad = [
            (
                StoreConfig {
                    max_text_bytes: Bytes(0),
                    ..StoreConfig::default()
                },
                ConfigError::ZeroTextBytes,
            ),
            (
                StoreConfig {
                    max_sessions: 0,
                    ..StoreConfig::default()
                },
                ConfigError::ZeroSessions,
            ),
            (
                StoreConfig {
                    idle_expiry: Duration::ZERO,
                    ..StoreConfig::default()
                },
                ConfigError::ZeroIdleExpiry,
            ),
        ];
        for (config, want) in bad {
            assert_eq!(SessionStore::new(config).map(|_| ()), Err(want));
        }
    }

    #[test]
    fn memory_counts_texts_and_ropes() {
        let (store, _) = store(StoreConfig::default());
        let program = "x = 1\n".repeat(3_000);
        for _ in 0..10 {
            open(&store, &program);
        }
        let usage = store.memory();
        assert_eq!((usage.sessions, usage.text_bytes), (10, 180_000));
        assert!(usage.heap_bytes > usage.text_bytes, "{usage:?}");
        assert!(usage.heap_bytes < 2 * usage.text_bytes, "{usage:?}");
        store.close(&open(&store, "y"));
        assert_eq!(store.memory().sessions, 10);
    }

    #[test]
    fn the_store_is_shared_across_threads() {
        let (store, _) = store(StoreConfig::default());
        let store = Arc::new(store);
        let id = open(&store, "");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut applied = 0;
                    while applied < 50 {
                        let snap = store.snapshot(&id).expect("live");
                        let len = snap.text.encode_utf16().count();
                        match store.edit(&id, snap.version, &cs(json!([len, [0, "😀"]]))) {
                            Ok(_) => applied += 1,
                            Err(EditError::Stale { .. }) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread finished");
        }
        let snap = store.snapshot(&id).expect("live");
        assert_eq!((snap.version, snap.text), (200, "😀".repeat(200)));
    }
}
