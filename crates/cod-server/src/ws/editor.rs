//! What the editor's connections share: the session store, the `[sessions]` settings, the
//! count of compile-aheads running, and the figures tests and metrics read.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cod_core::Bytes;
use cod_core::config::SessionsConfig;
use cod_session::{Clock, SessionStore, StoreConfig, SystemClock};
use tokio::sync::watch;

/// How often [`Editor::maintain`] purges expired sessions and compacts idle ones.
pub const MAINTENANCE_EVERY: Duration = Duration::from_secs(30);
/// A session untouched for this long has its rope compacted (typing leaves its nodes half
/// full; compacting brings it back to its loaded size, see `cod_session`).
pub const COMPACT_AFTER: Duration = Duration::from_secs(60);
/// Most sessions compacted per maintenance round (each copies its text once).
pub const COMPACT_PER_ROUND: usize = 2_000;

/// Settings of the editor's WebSocket and program buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EditorConfig {
    /// Limits of the session store.
    pub store: StoreConfig,
    /// Whether idle compiled-language buffers are compiled ahead of Run.
    pub compile_ahead: bool,
    /// How long a buffer stays unedited before it is compiled ahead.
    pub compile_ahead_delay: Duration,
}

impl Default for EditorConfig {
    fn default() -> Self {
        EditorConfig::from_config(&SessionsConfig::default())
    }
}

impl EditorConfig {
    /// The settings of a `[sessions]` section.
    pub fn from_config(c: &SessionsConfig) -> EditorConfig {
        EditorConfig {
            store: StoreConfig {
                max_text_bytes: c.max_text,
                max_sessions: c.max_sessions,
                idle_expiry: c.idle_expiry,
            },
            compile_ahead: c.compile_ahead,
            compile_ahead_delay: c.compile_ahead_delay,
        }
    }

    /// Largest WebSocket message accepted: an `open` or a resync carries a whole text,
    /// which JSON escaping may lengthen; twice the text limit plus 1 MiB leaves room.
    pub fn max_message(&self) -> usize {
        let text = usize::try_from(self.store.max_text_bytes.get()).unwrap_or(usize::MAX);
        text.saturating_mul(2).saturating_add(1 << 20)
    }
}

/// Counts of what the editor did, for tests and monitoring. Each grows by one per event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EditorCounters {
    /// WebSocket connections accepted.
    pub connections: u64,
    /// Runs started from the editor.
    pub runs: u64,
    /// Compile-aheads started (holding a worker slot).
    pub compile_ahead_started: u64,
    /// Compile-aheads that compiled and cached the program (or its compile errors).
    pub compile_ahead_compiled: u64,
    /// Compile-aheads not needed: the cache already had that program.
    pub compile_ahead_cached: u64,
    /// Compile-aheads stopped by a later edit, a language change or a disconnect.
    pub compile_ahead_cancelled: u64,
    /// Times a compile-ahead was due but no worker slot was idle (it is retried later).
    pub compile_ahead_busy: u64,
}

/// A snapshot of the editor's figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EditorStats {
    /// Sessions held.
    pub sessions: usize,
    /// WebSocket connections open now.
    pub connections: usize,
    /// Bytes of messages queued for clients now, over all connections (what cod holds
    /// because a client reads slower than the server writes).
    pub buffered_bytes: usize,
    /// The most `buffered_bytes` has been since the editor started.
    pub max_buffered_bytes: usize,
    /// The most bytes of streamed output (`stage` and `out` messages) one connection
    /// has held at once since the editor started: what a slow reader makes cod keep,
    /// bounded by [`OUTPUT_BUDGET`](super::OUTPUT_BUDGET).
    pub max_buffered_output_bytes: usize,
    /// Counts of events.
    pub counters: EditorCounters,
}

#[derive(Debug)]
struct Inner {
    store: SessionStore<Arc<dyn Clock>>,
    config: EditorConfig,
    connections: AtomicUsize,
    buffered: AtomicUsize,
    max_buffered: AtomicUsize,
    max_buffered_output: AtomicUsize,
    compiling_ahead: AtomicUsize,
    counters: watch::Sender<EditorCounters>,
}

/// The editor's shared state: cheap to clone (one `Arc`).
#[derive(Clone, Debug)]
pub struct Editor {
    inner: Arc<Inner>,
}

impl Default for Editor {
    fn default() -> Self {
        Editor::new(EditorConfig::default()).expect("the default settings are valid")
    }
}

impl Editor {
    /// An editor with an empty store on the real clock.
    pub fn new(config: EditorConfig) -> Result<Editor, cod_session::ConfigError> {
        Editor::with_clock(config, Arc::new(SystemClock))
    }

    /// An editor whose store reads the time from `clock` (tests move it by hand).
    pub fn with_clock(
        config: EditorConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Editor, cod_session::ConfigError> {
        let store = SessionStore::with_clock(config.store.clone(), clock)?;
        Ok(Editor {
            inner: Arc::new(Inner {
                store,
                config,
                connections: AtomicUsize::new(0),
                buffered: AtomicUsize::new(0),
                max_buffered: AtomicUsize::new(0),
                max_buffered_output: AtomicUsize::new(0),
                compiling_ahead: AtomicUsize::new(0),
                counters: watch::channel(EditorCounters::default()).0,
            }),
        })
    }

    /// The program buffers.
    pub fn store(&self) -> &SessionStore<Arc<dyn Clock>> {
        &self.inner.store
    }

    /// The settings.
    pub fn config(&self) -> &EditorConfig {
        &self.inner.config
    }

    /// The per-session text limit.
    pub fn max_text(&self) -> Bytes {
        self.inner.config.store.max_text_bytes
    }

    /// The current figures.
    pub fn stats(&self) -> EditorStats {
        let i = &self.inner;
        EditorStats {
            sessions: i.store.len(),
            connections: i.connections.load(Ordering::Relaxed),
            buffered_bytes: i.buffered.load(Ordering::Relaxed),
            max_buffered_bytes: i.max_buffered.load(Ordering::Relaxed),
            max_buffered_output_bytes: i.max_buffered_output.load(Ordering::Relaxed),
            counters: *i.counters.borrow(),
        }
    }

    /// The counters, to wait for an event (`wait_for`) instead of polling.
    pub fn watch_counters(&self) -> watch::Receiver<EditorCounters> {
        self.inner.counters.subscribe()
    }

    pub(crate) fn count(&self, f: impl FnOnce(&mut EditorCounters)) {
        self.inner.counters.send_modify(f);
    }

    pub(crate) fn connection_opened(&self) -> ConnectionGuard {
        self.inner.connections.fetch_add(1, Ordering::Relaxed);
        self.count(|c| c.connections += 1);
        ConnectionGuard(self.clone())
    }

    pub(crate) fn buffer(&self, bytes: usize) {
        let now = self.inner.buffered.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.inner.max_buffered.fetch_max(now, Ordering::Relaxed);
    }

    pub(crate) fn unbuffer(&self, bytes: usize) {
        self.inner.buffered.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// A connection now holds `bytes` of streamed output.
    pub(crate) fn output_held(&self, bytes: usize) {
        self.inner
            .max_buffered_output
            .fetch_max(bytes, Ordering::Relaxed);
    }

    /// A place among the compile-aheads running, if fewer than `max` run now.
    pub(crate) fn compile_ahead_place(&self, max: usize) -> Option<AheadPlace> {
        let n = &self.inner.compiling_ahead;
        n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
            (cur < max).then_some(cur + 1)
        })
        .ok()?;
        Some(AheadPlace(self.clone()))
    }

    /// Removes expired sessions and compacts those idle for [`COMPACT_AFTER`]; returns how
    /// many of each.
    pub fn maintain_once(&self) -> (usize, usize) {
        let purged = self.inner.store.purge_expired();
        let compacted = self
            .inner
            .store
            .compact_idle(COMPACT_AFTER, COMPACT_PER_ROUND);
        (purged, compacted)
    }

    /// Runs [`Editor::maintain_once`] every [`MAINTENANCE_EVERY`], on a blocking thread
    /// (compacting copies texts), until dropped. `cod serve` spawns it and aborts it at
    /// shutdown.
    pub async fn maintain(self) {
        let mut every = tokio::time::interval(MAINTENANCE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let editor = self.clone();
            match tokio::task::spawn_blocking(move || editor.maintain_once()).await {
                Ok((purged, compacted)) => {
                    tracing::debug!(
                        purged,
                        compacted,
                        sessions = self.stats().sessions,
                        "sessions maintained"
                    );
                }
                Err(e) => tracing::error!(error = %e, "session maintenance failed"),
            }
        }
    }
}

/// Counts a connection while it lives.
#[derive(Debug)]
pub(crate) struct ConnectionGuard(Editor);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.inner.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A compile-ahead's place among those allowed to run at once.
#[derive(Debug)]
pub(crate) struct AheadPlace(Editor);

impl Drop for AheadPlace {
    fn drop(&mut self) {
        self.0.inner.compiling_ahead.fetch_sub(1, Ordering::AcqRel);
    }
}
