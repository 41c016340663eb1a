//! Measurements for `cod bench`: the cost of one keystroke and the memory of many sessions.
//!
//! The project's goals for program buffers are at most 200 bytes on the wire per keystroke, at
//! most 50 µs (median) to apply one, and at most 2.5 times the text's size in memory for 10,000
//! sessions of 20 KB. These functions measure the first two directly. Memory is estimated from
//! the ropes' node structure by [`memory_for_sessions`]; a library cannot install a counting
//! global allocator, so [`measure_memory_for_sessions`] takes the caller's allocation counter
//! (the `cap` crate's `Cap::allocated` in a binary or test) and reports both numbers.
//! `tests/memory.rs` checks that they agree, and
//! `cargo run --release -p cod-session --example session_bench` prints every number.

use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::buffer::Buffer;
use crate::changeset::ChangeSet;
use crate::store::{MemoryUsage, SessionStore, StoreConfig};

/// What one keystroke costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeystrokeStats {
    /// Edits measured.
    pub edits: usize,
    /// Median time to parse one edit message and apply it to the store.
    pub median: Duration,
    /// 99th percentile of the same.
    pub p99: Duration,
    /// Median size of one `{"type":"edit","version":N,"changes":[...]}` message.
    pub median_message_bytes: usize,
    /// Largest such message.
    pub max_message_bytes: usize,
}

/// Memory of many sessions, estimated and, when the caller counts allocations, measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMeasurement {
    /// The store's own estimate ([`SessionStore::memory`]).
    pub estimate: MemoryUsage,
    /// Bytes the caller's allocation counter grew by while the sessions were created and kept.
    pub measured_heap_bytes: usize,
}

/// The edit message a client sends, as the server would parse it.
#[derive(Deserialize)]
struct EditMessage {
    #[serde(rename = "type")]
    _kind: String,
    version: u64,
    changes: ChangeSet,
}

/// A small deterministic generator (SplitMix64), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..=max`.
    fn up_to(&mut self, max: usize) -> usize {
        let bound = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
        usize::try_from(self.next() % bound).unwrap_or(max)
    }
}

/// A program of about `len` bytes (cut at a char boundary) that looks like source code, with
/// a little non-ASCII text so UTF-16 positions differ from byte positions.
pub fn sample_program(len: usize) -> String {
    const BLOCK: &str = "def fib(n: int) -> int:\n    \"\"\"Return the n-th Fibonacci number 🐍.\"\"\"\n    \
        a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n\
        print([fib(i) for i in range(20)], \"résumé\")\n\n";
    let mut text = BLOCK.repeat(len / BLOCK.len() + 1);
    let mut cut = len.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text
}

/// A keystroke at a random place in `client`'s document: mostly letters and spaces, sometimes
/// Enter or an emoji. Returns the change set and its message for `version`.
fn keystroke(client: &Buffer, version: u64, rng: &mut Rng) -> (ChangeSet, String) {
    const TYPED: &[&str] = &[
        "e", "t", "a", "o", "i", "n", " ", "s", "r", "(", ")", "=", ":", "_", "1", "\n", "😀",
    ];
    let at = client.boundary_at_or_before(rng.up_to(client.len_utf16()));
    let typed = TYPED[rng.up_to(TYPED.len() - 1)];
    let changes = ChangeSet::from_changes(client.len_utf16(), &[(at, at, typed)])
        .expect("one insertion inside the document");
    let json = serde_json::to_string(&changes).expect("a changeset serializes");
    let message = format!(r#"{{"type":"edit","version":{version},"changes":{json}}}"#);
    (changes, message)
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let idx = (sorted.len().saturating_sub(1) * p) / 100;
    sorted.get(idx).copied().unwrap_or_default()
}

/// Types `n` single characters at random positions into one session holding a program of
/// `text_len` bytes and times each edit from the message's JSON text to the store's ack.
pub fn keystroke_bench(text_len: usize, n: usize) -> KeystrokeStats {
    let store = SessionStore::new(StoreConfig::default()).expect("the default config is valid");
    let program = sample_program(text_len);
    let id = store
        .open("python", &program, None)
        .expect("a default-sized program opens")
        .id;
    let mut client = Buffer::new("python", &program);
    let mut rng = Rng(0x5EED);
    let mut times = Vec::with_capacity(n);
    let mut sizes = Vec::with_capacity(n);
    for _ in 0..n {
        let (changes, message) = keystroke(&client, client.version(), &mut rng);
        sizes.push(message.len());
        let start = Instant::now();
        let edit: EditMessage = serde_json::from_str(&message).expect("the message parses");
        let ack = store.edit(&id, edit.version, &edit.changes);
        times.push(start.elapsed());
        let ack = ack.expect("a keystroke at the current version applies");
        client
            .apply(&changes, store.config().max_text_bytes)
            .expect("the client applies it too");
        debug_assert_eq!(ack.version, client.version());
    }
    times.sort_unstable();
    sizes.sort_unstable();
    KeystrokeStats {
        edits: n,
        median: percentile(&times, 50),
        p99: percentile(&times, 99),
        median_message_bytes: sizes.get(sizes.len() / 2).copied().unwrap_or(0),
        max_message_bytes: sizes.last().copied().unwrap_or(0),
    }
}

/// Keystrokes [`memory_for_sessions`] types into every session. A freshly loaded rope has full
/// 1 KiB leaves; a keystroke into a full leaf splits it in two half-full ones, and 50 keystrokes
/// at random places in 20 KB split nearly every leaf once, which is close to the worst case
/// (further typing fills the halves again).
pub const EDITS_PER_SESSION: usize = 50;

/// Fills a store with `n` sessions of `text_len`-byte programs, types
/// [`EDITS_PER_SESSION`] characters at random places into each, and returns the store's
/// estimate of their memory.
pub fn memory_for_sessions(n: usize, text_len: usize) -> MemoryUsage {
    measure_memory_for_sessions(n, text_len, EDITS_PER_SESSION, || 0).estimate
}

/// As [`memory_for_sessions`] with `edits` keystrokes per session, also measuring with
/// `allocated`, the caller's count of bytes currently allocated (for example
/// `cap::Cap::allocated` on the global allocator).
pub fn measure_memory_for_sessions(
    n: usize,
    text_len: usize,
    edits: usize,
    allocated: impl Fn() -> usize,
) -> MemoryMeasurement {
    measure(n, text_len, edits, false, allocated)
}

/// As [`measure_memory_for_sessions`], then [`SessionStore::compact_idle`] on every session
/// before measuring: the memory of sessions that were typed into and then left idle.
pub fn measure_compacted_memory(
    n: usize,
    text_len: usize,
    edits: usize,
    allocated: impl Fn() -> usize,
) -> MemoryMeasurement {
    measure(n, text_len, edits, true, allocated)
}

fn measure(
    n: usize,
    text_len: usize,
    edits: usize,
    compact: bool,
    allocated: impl Fn() -> usize,
) -> MemoryMeasurement {
    let config = StoreConfig {
        max_sessions: n.max(1),
        ..StoreConfig::default()
    };
    let program = sample_program(text_len);
    let template = Buffer::new("python", &program);
    let mut rng = Rng(0x3E3);
    let before = allocated();
    let store = SessionStore::new(config).expect("a valid config");
    for _ in 0..n {
        let id = store
            .open("python", &program, None)
            .expect("the program fits")
            .id;
        // A clone shares the template's nodes, so the client's copy costs little.
        let mut client = template.clone();
        for _ in 0..edits {
            let (changes, _) = keystroke(&client, client.version(), &mut rng);
            store
                .edit(&id, client.version(), &changes)
                .expect("applies");
            client
                .apply(&changes, store.config().max_text_bytes)
                .expect("applies");
        }
    }
    if compact {
        store.compact_idle(Duration::ZERO, usize::MAX);
    }
    let measured_heap_bytes = allocated().saturating_sub(before);
    MemoryMeasurement {
        estimate: store.memory(),
        measured_heap_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_programs_have_the_asked_size() {
        for len in [0, 1, 100, 20_000] {
            let text = sample_program(len);
            assert!(
                text.len() <= len && text.len() + 4 > len,
                "{len}: {}",
                text.len()
            );
        }
        assert!(sample_program(20_000).contains('🐍'));
    }

    #[test]
    fn keystroke_bench_reports_small_messages() {
        let stats = keystroke_bench(20_000, 200);
        assert_eq!(stats.edits, 200);
        assert!(stats.median <= stats.p99);
        assert!(
            stats.median_message_bytes > 40 && stats.median_message_bytes <= 200,
            "{stats:?}"
        );
        assert!(stats.max_message_bytes <= 200, "{stats:?}");
    }

    #[test]
    fn compaction_brings_typed_sessions_back_to_their_loaded_size() {
        let typed = measure_memory_for_sessions(10, 20_000, EDITS_PER_SESSION, || 0).estimate;
        let compacted = measure_compacted_memory(10, 20_000, EDITS_PER_SESSION, || 0).estimate;
        assert_eq!(typed.text_bytes, compacted.text_bytes);
        assert!(
            compacted.heap_bytes * 10 < typed.heap_bytes * 7,
            "{typed:?} {compacted:?}"
        );
    }

    #[test]
    fn memory_for_sessions_counts_every_session() {
        let usage = memory_for_sessions(20, 20_000);
        assert_eq!(usage.sessions, 20);
        // Each session grew by its keystrokes (an emoji is 4 bytes, Enter 1).
        assert!(
            usage.text_bytes >= 20 * (20_000 - 4 + EDITS_PER_SESSION),
            "{usage:?}"
        );
        assert!(usage.heap_bytes > usage.text_bytes, "{usage:?}");
    }
}
