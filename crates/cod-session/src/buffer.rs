//! One program buffer: a rope, its language and its version.
//!
//! [`Buffer::apply`] is the only way text changes. It checks a whole change set against the
//! document before touching the rope, so a rejected change set leaves the text exactly as it
//! was; it never applies part of one.

use cod_core::Bytes;
use ropey::{Rope, RopeBuilder};

use crate::changeset::ChangeSet;

/// Why a well-formed change set does not fit this buffer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// the change set was made for a document of another length
    #[error(
        "changeset is for a document of {changeset} UTF-16 code units but the buffer has {document}"
    )]
    LengthMismatch {
        /// length the change set expects (its `len_before`)
        changeset: usize,
        /// the buffer's length
        document: usize,
    },
    /// a change starts or ends between the two halves of a surrogate pair
    #[error("change boundary at UTF-16 offset {offset} falls inside a surrogate pair")]
    SplitsSurrogatePair {
        /// the offending offset in the old document, in UTF-16 code units
        offset: usize,
    },
    /// the edited text would exceed the per-session size limit
    #[error("edited text would be {size} bytes, over the limit of {limit} per session")]
    TooLarge {
        /// UTF-8 size the text would have
        size: usize,
        /// the limit
        limit: Bytes,
    },
}

/// Size in bytes of every ropey 1.x tree node, leaf or internal, with its `Arc` counters
/// (`TARGET_TOTAL_SIZE` in ropey's `src/tree/mod.rs`; a compile-time assertion there keeps it).
const ROPE_NODE_BYTES: usize = 1024;
/// Text a leaf holds inline before its small-string spills to a separate allocation
/// (ropey's `MAX_BYTES`: the node size less the `Arc` counters, the enum tag and the
/// small-vector header; 992 if another crate turns on smallvec's `union` feature, which only
/// moves the rare spill threshold).
const ROPE_LEAF_INLINE_BYTES: usize = 984;
/// Children per internal node at most (ropey's `MAX_CHILDREN` on 64-bit targets).
const ROPE_MAX_CHILDREN: usize = 24;

/// Approximate heap bytes of a rope: one node per leaf (plus any spilled leaf text) and the
/// internal nodes above them, counted as if internal nodes were full. A test that counts real
/// allocations (`tests/memory.rs`) keeps this within a few percent.
pub(crate) fn rope_heap_bytes(rope: &Rope) -> usize {
    let mut leaves = 0usize;
    let mut spilled = 0usize;
    for chunk in rope.chunks() {
        leaves += 1;
        if chunk.len() > ROPE_LEAF_INLINE_BYTES {
            spilled += chunk.len();
        }
    }
    // An empty rope still has its (empty) root leaf; `chunks()` yields nothing for it.
    let leaves = leaves.max(1);
    let mut internal = 0;
    let mut level = leaves;
    while level > 1 {
        level = level.div_ceil(ROPE_MAX_CHILDREN);
        internal += level;
    }
    (leaves + internal) * ROPE_NODE_BYTES + spilled
}

/// One session's program text with its language and version.
///
/// The version starts at 0 and grows by one for every applied change set, so a client and the
/// server agree on which text a version names.
#[derive(Debug, Clone)]
pub struct Buffer {
    rope: Rope,
    language: String,
    version: u64,
    /// Known to have nodes about as full as they can be, since the last edit.
    dense: bool,
}

/// A copy of `rope` in full leaves, as loading the text fresh would make it.
pub(crate) fn compacted(rope: &Rope) -> Rope {
    let mut builder = RopeBuilder::new();
    for chunk in rope.chunks() {
        builder.append(chunk);
    }
    builder.finish()
}

impl Buffer {
    /// A buffer holding `text`, at version 0.
    pub fn new(language: impl Into<String>, text: &str) -> Self {
        Self {
            rope: Rope::from_str(text),
            language: language.into(),
            version: 0,
            dense: true,
        }
    }

    /// The language name the client chose (for example `"python"`).
    pub fn language(&self) -> &str {
        &self.language
    }

    /// Changes the language; the version stays, as the text did not change.
    pub fn set_language(&mut self, language: impl Into<String>) {
        self.language = language.into();
    }

    /// The number of change sets applied since the buffer was opened.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The whole text, copied out of the rope.
    pub fn text(&self) -> String {
        self.rope.to_string()
    }

    /// Length of the text in UTF-8 bytes.
    pub fn len_bytes(&self) -> usize {
        self.rope.len_bytes()
    }

    /// Length of the text in UTF-16 code units, CodeMirror's `doc.length`.
    pub fn len_utf16(&self) -> usize {
        self.rope.len_utf16_cu()
    }

    /// Approximate heap bytes held by this buffer (rope nodes and the language name).
    pub fn heap_bytes(&self) -> usize {
        rope_heap_bytes(&self.rope) + self.language.capacity()
    }

    /// Whether the rope holds notably more node space than text (typing splits full 1 KiB leaves
    /// into half-full ones); checks once per edit and remembers a negative answer.
    pub(crate) fn is_sparse(&mut self) -> bool {
        if self.dense {
            return false;
        }
        let sparse =
            rope_heap_bytes(&self.rope) > self.rope.len_bytes() * 5 / 4 + 2 * ROPE_NODE_BYTES;
        self.dense = !sparse;
        sparse
    }

    /// The rope; cloning it is cheap, as clones share nodes until one side changes.
    pub(crate) fn rope(&self) -> &Rope {
        &self.rope
    }

    /// Replaces the rope with `rope`, which must hold the same text (a compacted copy).
    pub(crate) fn replace_compacted(&mut self, rope: Rope) {
        debug_assert_eq!(rope.len_bytes(), self.rope.len_bytes());
        self.rope = rope;
        self.dense = true;
    }

    /// The char index at UTF-16 `offset`, which must be `<= len_utf16()` and not inside a
    /// surrogate pair.
    fn char_at(&self, offset: usize) -> Result<usize, ApplyError> {
        // ropey maps an offset inside a pair to the char containing it; mapping back then gives
        // the pair's start, not `offset`.
        let char_idx = self.rope.utf16_cu_to_char(offset);
        if self.rope.char_to_utf16_cu(char_idx) == offset {
            Ok(char_idx)
        } else {
            Err(ApplyError::SplitsSurrogatePair { offset })
        }
    }

    /// The nearest UTF-16 offset at or before `offset` (clamped to the length) that is not
    /// inside a surrogate pair.
    pub(crate) fn boundary_at_or_before(&self, offset: usize) -> usize {
        let offset = offset.min(self.len_utf16());
        self.rope
            .char_to_utf16_cu(self.rope.utf16_cu_to_char(offset))
    }

    /// Applies `changes` and returns the new version, or rejects them without changing
    /// anything: when they were made for a document of another length, when a change boundary
    /// splits a surrogate pair, or when the result would be larger than `max_bytes`.
    pub fn apply(&mut self, changes: &ChangeSet, max_bytes: Bytes) -> Result<u64, ApplyError> {
        let document = self.len_utf16();
        if changes.len_before() != document {
            return Err(ApplyError::LengthMismatch {
                changeset: changes.len_before(),
                document,
            });
        }
        // Resolve every change to char indices in the old text first; ranges are sorted and
        // disjoint, and every offset is <= `document`, so the conversions below cannot panic.
        let mut resolved = Vec::new();
        let (mut deleted, mut inserted) = (0usize, 0usize);
        for (from, to, insert) in changes.changes() {
            let start = self.char_at(from)?;
            let end = if to == from { start } else { self.char_at(to)? };
            deleted += self.rope.char_to_byte(end) - self.rope.char_to_byte(start);
            inserted = inserted.saturating_add(insert.len());
            resolved.push((start, end, insert));
        }
        let size = (self.rope.len_bytes() - deleted).saturating_add(inserted);
        if u64::try_from(size).map_or(true, |size| size > max_bytes.get()) {
            return Err(ApplyError::TooLarge {
                size,
                limit: max_bytes,
            });
        }
        // Apply back to front so that earlier char indices stay valid.
        for &(start, end, insert) in resolved.iter().rev() {
            if end > start {
                self.rope.remove(start..end);
            }
            if !insert.is_empty() {
                self.rope.insert(start, insert);
            }
        }
        self.version += 1;
        self.dense = false;
        Ok(self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const LIMIT: Bytes = Bytes::mib(1);

    fn changes(v: serde_json::Value) -> ChangeSet {
        ChangeSet::from_json(&v).expect("well-formed changeset")
    }

    fn applied(text: &str, v: serde_json::Value) -> Result<String, ApplyError> {
        let mut buffer = Buffer::new("python", text);
        buffer.apply(&changes(v), LIMIT).map(|_| buffer.text())
    }

    #[test]
    fn insert_delete_and_replace() {
        assert_eq!(
            applied("print(1)", json!([6, [0, "x, "], 2])),
            Ok("print(x, 1)".into())
        );
        assert_eq!(applied("print(1)", json!([5, [3]])), Ok("print".into()));
        assert_eq!(
            applied("a = 1\nb = 2", json!([4, [1, "10"], 6])),
            Ok("a = 10\nb = 2".into())
        );
        assert_eq!(
            applied("x", json!([1, [0, "", "def f():", "    pass"]])),
            Ok("x\ndef f():\n    pass".into())
        );
        assert_eq!(applied("", json!([[0, "hello"]])), Ok("hello".into()));
        assert_eq!(applied("gone", json!([[4]])), Ok(String::new()));
    }

    #[test]
    fn multi_range_changes_use_old_document_positions() {
        // "abcdefghij": replace b, delete d and e, insert before h, replace i with two lines.
        let out = applied(
            "abcdefghij",
            json!([1, [1, "B"], 1, [2], 2, [0, "!"], 1, [1, "J", "K"], 1]),
        );
        assert_eq!(out, Ok("aBcfg!hJ\nKj".into()));
    }

    #[test]
    fn versions_count_applied_change_sets() {
        let mut buffer = Buffer::new("c", "ab");
        assert_eq!(buffer.version(), 0);
        assert_eq!(buffer.apply(&changes(json!([2, [0, "c"]])), LIMIT), Ok(1));
        assert_eq!(buffer.apply(&changes(json!([3])), LIMIT), Ok(2));
        assert!(buffer.apply(&changes(json!([9])), LIMIT).is_err());
        assert_eq!(buffer.version(), 2);
        buffer.set_language("cpp");
        assert_eq!((buffer.language(), buffer.version()), ("cpp", 2));
    }

    #[test]
    fn non_bmp_text_round_trips_around_the_edit() {
        // "😀" and "𝄞" take two UTF-16 code units each.
        let doc = "😀a𝄞b😀";
        assert_eq!(Buffer::new("py", doc).len_utf16(), 8);
        // Insert between the emoji and "a" (offset 2), and right after "𝄞" (offset 5).
        assert_eq!(
            applied(doc, json!([2, [0, "1"], 3, [0, "2"], 3])),
            Ok("😀1a𝄞2b😀".into())
        );
        // Delete a whole pair, replace one with another.
        assert_eq!(
            applied(doc, json!([3, [2], 1, [2, "🎉"]])),
            Ok("😀ab🎉".into())
        );
        // Insert emoji into ASCII text and then type after it.
        let mut buffer = Buffer::new("py", "ab");
        buffer
            .apply(&changes(json!([1, [0, "🦀"], 1])), LIMIT)
            .expect("applies");
        buffer
            .apply(&changes(json!([3, [0, "x"], 1])), LIMIT)
            .expect("applies");
        assert_eq!(buffer.text(), "a🦀xb");
        assert_eq!(buffer.len_utf16(), 5);
    }

    #[test]
    fn boundaries_inside_a_surrogate_pair_are_rejected_and_change_nothing() {
        let doc = "a😀b";
        let cases = [
            json!([2, [0, "x"], 2]), // insert between the halves
            json!([1, [1], 2]),      // delete the high half
            json!([2, [1], 1]),      // delete the low half
            json!([2, [2, "y"]]),    // replace from the middle
            json!([[2, "z"], 2]),    // replace up to the middle
        ];
        for case in cases {
            let mut buffer = Buffer::new("py", doc);
            let err = buffer.apply(&changes(case.clone()), LIMIT);
            assert!(
                matches!(err, Err(ApplyError::SplitsSurrogatePair { offset: 2 })),
                "{case}: {err:?}"
            );
            assert_eq!(
                (buffer.text().as_str(), buffer.version()),
                (doc, 0),
                "{case}"
            );
        }
    }

    #[test]
    fn a_change_set_of_the_wrong_length_is_rejected_and_changes_nothing() {
        let mut buffer = Buffer::new("py", "hello");
        let err = buffer.apply(&changes(json!([[0, "x"], 6])), LIMIT);
        assert_eq!(
            err,
            Err(ApplyError::LengthMismatch {
                changeset: 6,
                document: 5
            })
        );
        let err = buffer.apply(&changes(json!([[0, "x"], 4])), LIMIT);
        assert_eq!(
            err,
            Err(ApplyError::LengthMismatch {
                changeset: 4,
                document: 5
            })
        );
        assert_eq!((buffer.text().as_str(), buffer.version()), ("hello", 0));
        // Non-BMP text: 2 code units, not 1 char or 4 bytes.
        let mut buffer = Buffer::new("py", "😀");
        assert!(matches!(
            buffer.apply(&changes(json!([1])), LIMIT),
            Err(ApplyError::LengthMismatch {
                changeset: 1,
                document: 2
            })
        ));
        assert_eq!(buffer.apply(&changes(json!([2])), LIMIT), Ok(1));
    }

    #[test]
    fn results_over_the_size_limit_are_rejected_naming_it() {
        let mut buffer = Buffer::new("py", "12345678");
        let limit = Bytes(10);
        // Replacing 3 bytes with 5 gives 10 bytes: allowed.
        assert_eq!(
            buffer.apply(&changes(json!([[3, "abcde"], 5])), limit),
            Ok(1)
        );
        // One more byte is not; a 4-byte emoji counts as 4 bytes.
        let err = buffer.apply(&changes(json!([10, [0, "😀"]])), limit);
        assert_eq!(err, Err(ApplyError::TooLarge { size: 14, limit }));
        assert_eq!(
            err.map_err(|e| e.to_string()),
            Err("edited text would be 14 bytes, over the limit of 10B per session".into())
        );
        assert_eq!(buffer.text(), "abcde45678");
        // Deleting while inserting is judged on the result.
        assert_eq!(
            buffer.apply(&changes(json!([[4], 6, [0, "😀"]])), limit),
            Ok(2)
        );
        assert_eq!(buffer.text(), "e45678😀");
    }

    #[test]
    fn heap_estimate_counts_rope_nodes() {
        let small = Buffer::new("py", "x");
        assert_eq!(small.heap_bytes(), ROPE_NODE_BYTES + 2);
        let big = Buffer::new("py", &"0123456789".repeat(2_000));
        let estimate = big.heap_bytes();
        assert!(
            (20_000..2 * 20_000 + 2 * ROPE_NODE_BYTES).contains(&estimate),
            "{estimate}"
        );
    }

    /// A reference implementation on UTF-16 code units: applies `sections` literally.
    fn reference_apply(doc: &[u16], set: &ChangeSet) -> Vec<u16> {
        let mut out = Vec::new();
        let mut pos = 0;
        for section in set.sections() {
            match section {
                crate::changeset::Section::Keep(n) => {
                    out.extend_from_slice(&doc[pos..pos + n]);
                    pos += n;
                }
                crate::changeset::Section::Replace { del, insert } => {
                    out.extend(insert.encode_utf16());
                    pos += del;
                }
            }
        }
        out
    }

    fn text_strategy() -> impl Strategy<Value = String> {
        let ch = prop_oneof![
            4 => proptest::char::range('a', 'z'),
            1 => Just('\n'),
            1 => Just('é'),
            1 => Just('中'),
            2 => Just('😀'),
            1 => Just('𝄞'),
            1 => proptest::char::range('\u{10000}', '\u{10FFFF}'),
        ];
        proptest::collection::vec(ch, 0..40).prop_map(|v| v.into_iter().collect())
    }

    /// Picks change ranges from raw cut points: sorted, paired, turned into `(from, to, text)`.
    fn changeset_for(doc: &[u16], cuts: &[(usize, usize, String)], snap: bool) -> ChangeSet {
        let mut points: Vec<usize> = cuts
            .iter()
            .flat_map(|(a, b, _)| [a % (doc.len() + 1), b % (doc.len() + 1)])
            .map(|p| {
                // Move an offset off the low half of a pair when asked to stay valid.
                let low = p < doc.len() && (0xDC00..0xE000).contains(&doc[p]);
                if snap && low { p - 1 } else { p }
            })
            .collect();
        points.sort_unstable();
        let changes: Vec<(usize, usize, &str)> = points
            .chunks(2)
            .zip(cuts)
            .map(|(pair, (_, _, text))| (pair[0], pair[1], text.as_str()))
            .collect();
        ChangeSet::from_changes(doc.len(), &changes).expect("sorted ranges inside the document")
    }

    fn splits_pair(doc: &[u16], set: &ChangeSet) -> bool {
        set.changes().any(|(from, to, _)| {
            [from, to]
                .iter()
                .any(|&p| p > 0 && p < doc.len() && (0xDC00..0xE000).contains(&doc[p]))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn rope_matches_a_utf16_reference(
            doc in text_strategy(),
            steps in proptest::collection::vec(
                proptest::collection::vec((any::<usize>(), any::<usize>(), text_strategy()), 0..5),
                1..6,
            ),
        ) {
            let mut buffer = Buffer::new("py", &doc);
            let mut reference: Vec<u16> = doc.encode_utf16().collect();
            for cuts in &steps {
                let set = changeset_for(&reference, cuts, true);
                prop_assert_eq!(set.len_after(), reference_apply(&reference, &set).len());
                reference = reference_apply(&reference, &set);
                buffer.apply(&set, LIMIT).expect("valid changes apply");
                prop_assert_eq!(buffer.text(), String::from_utf16(&reference).expect("valid UTF-16"));
                prop_assert_eq!(buffer.len_utf16(), reference.len());
            }
            prop_assert_eq!(buffer.version(), steps.len() as u64);
        }

        #[test]
        fn arbitrary_offsets_apply_exactly_or_are_rejected_whole(
            doc in text_strategy(),
            cuts in proptest::collection::vec((any::<usize>(), any::<usize>(), text_strategy()), 1..5),
        ) {
            let reference: Vec<u16> = doc.encode_utf16().collect();
            let set = changeset_for(&reference, &cuts, false);
            let mut buffer = Buffer::new("py", &doc);
            let result = buffer.apply(&set, LIMIT);
            if splits_pair(&reference, &set) {
                prop_assert!(
                    matches!(result, Err(ApplyError::SplitsSurrogatePair { .. })),
                    "{:?}", result
                );
                prop_assert_eq!(buffer.text(), doc);
                prop_assert_eq!(buffer.version(), 0);
            } else {
                prop_assert_eq!(result, Ok(1));
                let expected = String::from_utf16(&reference_apply(&reference, &set))
                    .expect("no pair was split");
                prop_assert_eq!(buffer.text(), expected);
            }
        }
    }
}
