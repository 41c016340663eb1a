//! CodeMirror 6 change sets in their JSON form.
//!
//! `ChangeSet.toJSON()` in `@codemirror/state` turns a change set into an array of parts, one
//! per section of the old document, in order:
//!
//! - `n` keeps the next `n` code units unchanged;
//! - `[n]` deletes the next `n` code units;
//! - `[n, line0, line1, ...]` replaces the next `n` code units with the lines joined by `"\n"`
//!   (`[0, ...]` is a pure insertion).
//!
//! Lengths count UTF-16 code units, as JavaScript strings do, and the lengths of all parts add up
//! to the length of the document the change set applies to. This module only parses and checks
//! the shape; whether a change set fits a document (its length, surrogate pairs) is checked by
//! [`Buffer::apply`](crate::Buffer::apply), which knows the document.

use serde::de::Error as _;
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// Why a change set's JSON was rejected. Each variant names the part (its index in the top-level
/// array) and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ChangeSetError {
    /// the text is not JSON at all
    #[error("changeset is not valid JSON")]
    Json(#[source] serde_json::Error),
    /// the top level is not an array
    #[error("changeset must be an array of parts, got {found}")]
    NotAnArray {
        /// the JSON type that was found instead
        found: &'static str,
    },
    /// a part is neither a number nor an array
    #[error("changeset part {index} must be a length or an array, got {found}")]
    InvalidPart {
        /// index of the part in the changeset
        index: usize,
        /// the JSON type that was found instead
        found: &'static str,
    },
    /// a kept or deleted length is not a non-negative integer
    #[error("changeset part {index}: length must be a non-negative integer, got {found}")]
    InvalidLength {
        /// index of the part in the changeset
        index: usize,
        /// the JSON value that was found instead, as text
        found: String,
    },
    /// an array part has no deleted length
    #[error("changeset part {index}: empty array, expected [deleted length, ...inserted lines]")]
    EmptyChange {
        /// index of the part in the changeset
        index: usize,
    },
    /// an inserted line is not a string
    #[error("changeset part {index}: inserted line {line} must be a string, got {found}")]
    InvalidLine {
        /// index of the part in the changeset
        index: usize,
        /// index of the line within the insertion
        line: usize,
        /// the JSON type that was found instead
        found: &'static str,
    },
    /// an inserted line contains a line break (lines are split on "\n" by the editor)
    #[error("changeset part {index}: inserted line {line} contains a line break")]
    LineBreakInLine {
        /// index of the part in the changeset
        index: usize,
        /// index of the line within the insertion
        line: usize,
    },
    /// the lengths add up to more than fits in a `usize`
    #[error("changeset part {index}: total length overflows")]
    Overflow {
        /// index of the part where the sum overflowed
        index: usize,
    },
    /// a change given to [`ChangeSet::from_changes`] is out of order or out of range
    #[error("change {index} ({from}..{to}) overlaps the previous one or lies outside 0..{doc_len}")]
    BadRange {
        /// index of the change
        index: usize,
        /// its start
        from: usize,
        /// its end
        to: usize,
        /// the document length the changes were given for
        doc_len: usize,
    },
}

/// One section of the old document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Section {
    /// Keep this many code units.
    Keep(usize),
    /// Delete `del` code units and insert `insert` (possibly empty) in their place.
    Replace {
        /// UTF-16 code units deleted.
        del: usize,
        /// The inserted text, lines already joined with `'\n'`.
        insert: String,
    },
}

/// A parsed CodeMirror change set: what to keep, delete and insert, section by section.
///
/// Build it from JSON with [`ChangeSet::from_json`], [`ChangeSet::from_json_str`] or serde
/// (`changes: ChangeSet` in a message struct); serialize it back with serde to get exactly the
/// `toJSON()` form.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChangeSet {
    sections: Vec<Section>,
    len_before: usize,
    len_after: usize,
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn length(index: usize, v: &Value) -> Result<usize, ChangeSetError> {
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| ChangeSetError::InvalidLength {
            index,
            found: v.to_string(),
        })
}

fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

impl ChangeSet {
    /// Parses the `toJSON()` form of a CodeMirror `ChangeSet`.
    pub fn from_json(json: &Value) -> Result<Self, ChangeSetError> {
        let parts = json.as_array().ok_or(ChangeSetError::NotAnArray {
            found: json_type(json),
        })?;
        let mut set = ChangeSet {
            sections: Vec::with_capacity(parts.len()),
            ..Self::default()
        };
        for (index, part) in parts.iter().enumerate() {
            let section = match part {
                Value::Number(_) => Section::Keep(length(index, part)?),
                Value::Array(items) => {
                    let (del, lines) = items
                        .split_first()
                        .ok_or(ChangeSetError::EmptyChange { index })?;
                    let del = length(index, del)?;
                    let mut insert = String::new();
                    for (line, item) in lines.iter().enumerate() {
                        let text = item.as_str().ok_or(ChangeSetError::InvalidLine {
                            index,
                            line,
                            found: json_type(item),
                        })?;
                        if text.contains('\n') {
                            return Err(ChangeSetError::LineBreakInLine { index, line });
                        }
                        if line > 0 {
                            insert.push('\n');
                        }
                        insert.push_str(text);
                    }
                    Section::Replace { del, insert }
                }
                other => {
                    return Err(ChangeSetError::InvalidPart {
                        index,
                        found: json_type(other),
                    });
                }
            };
            set.push(index, section)?;
        }
        Ok(set)
    }

    /// Parses the `toJSON()` form of a change set from JSON text.
    pub fn from_json_str(json: &str) -> Result<Self, ChangeSetError> {
        let value: Value = serde_json::from_str(json).map_err(ChangeSetError::Json)?;
        Self::from_json(&value)
    }

    /// Builds a change set for a document of `doc_len` UTF-16 code units from `(from, to,
    /// insert)` changes in old-document positions, sorted and not overlapping (as
    /// CodeMirror's `ChangeSet.of` takes them, but sorted).
    pub fn from_changes(
        doc_len: usize,
        changes: &[(usize, usize, &str)],
    ) -> Result<Self, ChangeSetError> {
        let mut set = ChangeSet::default();
        let mut pos = 0;
        for (index, &(from, to, insert)) in changes.iter().enumerate() {
            if from < pos || to < from || to > doc_len {
                return Err(ChangeSetError::BadRange {
                    index,
                    from,
                    to,
                    doc_len,
                });
            }
            if from > pos {
                set.push(index, Section::Keep(from - pos))?;
            }
            set.push(
                index,
                Section::Replace {
                    del: to - from,
                    insert: insert.to_owned(),
                },
            )?;
            pos = to;
        }
        if doc_len > pos {
            set.push(changes.len(), Section::Keep(doc_len - pos))?;
        }
        Ok(set)
    }

    fn push(&mut self, index: usize, section: Section) -> Result<(), ChangeSetError> {
        let overflow = || ChangeSetError::Overflow { index };
        let (before, after) = match &section {
            Section::Keep(n) => (*n, *n),
            Section::Replace { del, insert } => (*del, utf16_len(insert)),
        };
        self.len_before = self.len_before.checked_add(before).ok_or_else(overflow)?;
        self.len_after = self.len_after.checked_add(after).ok_or_else(overflow)?;
        self.sections.push(section);
        Ok(())
    }

    /// Length in UTF-16 code units of the document this change set applies to (CodeMirror's
    /// `length`).
    pub fn len_before(&self) -> usize {
        self.len_before
    }

    /// Length in UTF-16 code units of the document after applying it (CodeMirror's
    /// `newLength`).
    pub fn len_after(&self) -> usize {
        self.len_after
    }

    /// Whether the change set changes nothing.
    pub fn is_empty(&self) -> bool {
        self.sections.iter().all(|s| match s {
            Section::Keep(_) => true,
            Section::Replace { del, insert } => *del == 0 && insert.is_empty(),
        })
    }

    /// The changes as `(from, to, insert)` in old-document UTF-16 positions, in document order,
    /// skipping no-op sections.
    pub(crate) fn changes(&self) -> impl Iterator<Item = (usize, usize, &str)> {
        let mut pos = 0;
        self.sections.iter().filter_map(move |s| match s {
            Section::Keep(n) => {
                pos += n;
                None
            }
            Section::Replace { del, insert } => {
                let from = pos;
                pos += del;
                (*del > 0 || !insert.is_empty()).then_some((from, pos, insert.as_str()))
            }
        })
    }

    #[cfg(test)]
    pub(crate) fn sections(&self) -> &[Section] {
        &self.sections
    }
}

impl<'de> Deserialize<'de> for ChangeSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        ChangeSet::from_json(&value).map_err(D::Error::custom)
    }
}

/// Serializes one replacement as `[del, ...lines]`.
struct ReplacePart<'a> {
    del: usize,
    insert: &'a str,
}

impl Serialize for ReplacePart<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(None)?;
        seq.serialize_element(&self.del)?;
        if !self.insert.is_empty() {
            for line in self.insert.split('\n') {
                seq.serialize_element(line)?;
            }
        }
        seq.end()
    }
}

impl Serialize for ChangeSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.sections.len()))?;
        for section in &self.sections {
            match section {
                Section::Keep(n) => seq.serialize_element(n)?,
                Section::Replace { del, insert } => {
                    seq.serialize_element(&ReplacePart { del: *del, insert })?;
                }
            }
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ChangeSet, ChangeSetError> {
        ChangeSet::from_json(&v)
    }

    #[test]
    fn parses_keep_delete_replace_and_insert() {
        let set = parse(json!([3, [2], [1, "ab", "c"], [0, "x"], 4])).expect("valid changeset");
        assert_eq!(
            set.sections(),
            &[
                Section::Keep(3),
                Section::Replace {
                    del: 2,
                    insert: String::new()
                },
                Section::Replace {
                    del: 1,
                    insert: "ab\nc".into()
                },
                Section::Replace {
                    del: 0,
                    insert: "x".into()
                },
                Section::Keep(4),
            ]
        );
        assert_eq!(set.len_before(), 10);
        assert_eq!(set.len_after(), 3 + 4 + 1 + 4);
        let changes: Vec<_> = set.changes().collect();
        assert_eq!(changes, vec![(3, 5, ""), (5, 6, "ab\nc"), (6, 6, "x")]);
    }

    #[test]
    fn lengths_count_utf16_code_units() {
        let set = parse(json!([[0, "😀é"]])).expect("valid changeset");
        assert_eq!(set.len_after(), 3);
    }

    #[test]
    fn round_trips_to_the_same_json() {
        let json = json!([5, [1], [2, "a", "", "b"], [0, "😀"], [3, ""], 7]);
        let set = parse(json.clone()).expect("valid changeset");
        let back = serde_json::to_value(&set).expect("serializes");
        // `[3, ""]` inserts nothing, so it serializes as the deletion `[3]`, as CodeMirror does.
        assert_eq!(back, json!([5, [1], [2, "a", "", "b"], [0, "😀"], [3], 7]));
    }

    #[test]
    fn rejects_malformed_parts_naming_them() {
        let cases = [
            (
                json!({"a": 1}),
                "changeset must be an array of parts, got an object",
            ),
            (
                json!([1, "x"]),
                "changeset part 1 must be a length or an array, got a string",
            ),
            (
                json!([-1]),
                "changeset part 0: length must be a non-negative integer, got -1",
            ),
            (
                json!([1.5]),
                "changeset part 0: length must be a non-negative integer, got 1.5",
            ),
            (
                json!([2, []]),
                "changeset part 1: empty array, expected [deleted length, ...inserted lines]",
            ),
            (
                json!([["1", "a"]]),
                "changeset part 0: length must be a non-negative integer, got \"1\"",
            ),
            (
                json!([[0, "a", 3]]),
                "changeset part 0: inserted line 1 must be a string, got a number",
            ),
            (
                json!([[0, "a\nb"]]),
                "changeset part 0: inserted line 0 contains a line break",
            ),
            (
                json!([u64::MAX, 1]),
                "changeset part 1: total length overflows",
            ),
        ];
        for (json, message) in cases {
            let err = parse(json.clone()).expect_err("malformed changeset");
            assert_eq!(err.to_string(), message, "for {json}");
        }
    }

    #[test]
    fn deserializes_inside_a_message() {
        #[derive(Deserialize)]
        struct Edit {
            version: u64,
            changes: ChangeSet,
        }
        let edit: Edit = serde_json::from_str(r#"{"version":4,"changes":[1,[0,"x"],2]}"#)
            .expect("valid message");
        assert_eq!(edit.version, 4);
        assert_eq!(edit.changes.len_before(), 3);
        let err = serde_json::from_str::<Edit>(r#"{"version":4,"changes":[1,{}]}"#)
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("changeset part 1 must be a length or an array")),
            "{err:?}"
        );
    }

    #[test]
    fn invalid_json_text_is_reported() {
        assert!(matches!(
            ChangeSet::from_json_str("[1,"),
            Err(ChangeSetError::Json(_))
        ));
    }

    #[test]
    fn from_changes_builds_sections_and_checks_ranges() {
        let set =
            ChangeSet::from_changes(10, &[(0, 0, "a"), (2, 4, ""), (4, 5, "b\nc")]).expect("valid");
        assert_eq!(
            serde_json::to_value(&set).expect("serializes"),
            serde_json::json!([[0, "a"], 2, [2], [1, "b", "c"], 5])
        );
        assert!(matches!(
            ChangeSet::from_changes(10, &[(3, 4, ""), (2, 3, "")]),
            Err(ChangeSetError::BadRange { index: 1, .. })
        ));
        assert!(matches!(
            ChangeSet::from_changes(10, &[(3, 11, "")]),
            Err(ChangeSetError::BadRange { index: 0, .. })
        ));
        assert!(
            ChangeSet::from_changes(3, &[(1, 1, "")])
                .expect("valid")
                .is_empty()
        );
    }
}
