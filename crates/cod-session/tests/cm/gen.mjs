// Writes fixtures.json: documents, CodeMirror change sets in their toJSON() form, and the
// documents that the real @codemirror/state produces from them. cod-session's tests
// (tests/codemirror_fixtures.rs) apply the same change sets with the Rust implementation and
// compare. cargo does not need node: the generated file is committed.
//
// How to run (from this directory):  npm ci && node gen.mjs
// The output is deterministic: re-running it with the same @codemirror/state gives the same file.

import { readFileSync, writeFileSync } from "node:fs";
import { ChangeSet, Text } from "@codemirror/state";

const version = JSON.parse(
  readFileSync(new URL("./node_modules/@codemirror/state/package.json", import.meta.url)),
).version;

const toText = (s) => Text.of(s.split("\n"));
const cases = [];

// A case made from CodeMirror change specs (`{from, to, insert}`), as an editor transaction makes
// them; `changes` is exactly what the editor would send.
function add(name, doc, spec) {
  const set = ChangeSet.of(spec, doc.length);
  cases.push({
    name,
    doc,
    changes: set.toJSON(),
    len_before: set.length,
    len_after: set.newLength,
    expected: set.apply(toText(doc)).toString(),
  });
}

// A case from raw JSON that CodeMirror refuses to apply to `doc` (its length is wrong).
function addRejected(name, doc, json) {
  const set = ChangeSet.fromJSON(json);
  let error = null;
  try {
    set.apply(toText(doc));
  } catch (e) {
    error = String(e.message);
  }
  if (error === null) throw new Error(`${name}: CodeMirror accepted it`);
  cases.push({ name, doc, changes: json, len_before: set.length, len_after: set.newLength, expected: null, error });
}

const py = "def f(x):\n    return x * 2\n\nprint(f(21))\n";
add("insert one character", py, { from: 4, insert: "g" });
add("insert at start", py, { from: 0, insert: "# header\n" });
add("insert at end", py, { from: py.length, insert: "print('done')" });
add("delete a range", py, { from: 10, to: 27 });
add("replace a character", py, { from: py.indexOf("2\n"), to: py.indexOf("2\n") + 1, insert: "3" });
add("insert a newline (Enter)", py, { from: 9, insert: "\n" });
add("replace with several lines", py, { from: 10, to: 27, insert: "    y = x\n    return y + y\n" });
add("multi-range: cursors on three lines", py, [
  { from: 0, insert: "# " },
  { from: 10, insert: "# " },
  { from: 28, insert: "# " },
]);
add("multi-range: delete, insert and replace", py, [
  { from: 1, to: 3 },
  { from: 5, insert: "yy" },
  { from: 20, to: 27, insert: "pass" },
  { from: py.length - 1, to: py.length },
]);
add("insert into empty document", "", { from: 0, insert: "hello\nworld" });
add("delete everything", py, { from: 0, to: py.length });

const emoji = "s = \"😀 and 🎉\"\n# 𝄞 clef 中文 é\nprint(s)\n";
const at = (s, needle) => {
  const i = s.indexOf(needle);
  if (i < 0) throw new Error(`no ${needle}`);
  return i;
};
add("emoji: type right before an emoji", emoji, { from: at(emoji, "😀"), insert: "x" });
add("emoji: type right after an emoji", emoji, { from: at(emoji, "😀") + 2, insert: "y" });
add("emoji: delete a whole emoji", emoji, { from: at(emoji, "🎉"), to: at(emoji, "🎉") + 2 });
add("emoji: replace one emoji with another", emoji, { from: at(emoji, "😀"), to: at(emoji, "😀") + 2, insert: "🦀" });
add("emoji: insert emoji after non-BMP text", emoji, { from: at(emoji, "clef"), insert: "🎵" });
add("emoji: edits on both sides of a pair", emoji, [
  { from: at(emoji, "𝄞"), insert: "[" },
  { from: at(emoji, "𝄞") + 2, insert: "]" },
]);
add("emoji: multi-range across lines", emoji, [
  { from: 0, to: 1, insert: "t" },
  { from: at(emoji, " and"), to: at(emoji, " and") + 4, insert: " & 🎈" },
  { from: at(emoji, "中文"), to: at(emoji, "中文") + 2 },
  { from: emoji.length, insert: "😀\n" },
]);
add("emoji: document made only of pairs", "😀😀😀", { from: 2, to: 4, insert: "🎉\n🎉" });

// Seeded random cases: random documents with non-BMP text and random multi-range edits.
let seed = 0x2545f491;
const rand = (n) => {
  seed ^= seed << 13;
  seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  seed >>>= 0;
  return seed % n;
};
const pieces = ["a", "b", "xyz", " ", "\n", "é", "中", "😀", "🎉", "𝄞", "()", "\t"];
const randomText = (n) => Array.from({ length: n }, () => pieces[rand(pieces.length)]).join("");
// Move an offset off the second half of a surrogate pair.
const snap = (s, p) => (p > 0 && p < s.length && (s.charCodeAt(p) & 0xfc00) === 0xdc00 ? p - 1 : p);

for (let i = 0; i < 40; i++) {
  const doc = randomText(rand(30));
  const points = Array.from({ length: 2 * (1 + rand(4)) }, () => snap(doc, rand(doc.length + 1)));
  points.sort((a, b) => a - b);
  const spec = [];
  for (let j = 0; j < points.length; j += 2) {
    spec.push({ from: points[j], to: points[j + 1], insert: randomText(rand(4)) });
  }
  add(`random ${i}`, doc, spec);
}

// Composed change sets, as the editor sends after batching several transactions.
{
  let doc = emoji;
  let set = ChangeSet.empty(doc.length);
  for (let i = 0; i < 5; i++) {
    const cur = set.apply(toText(doc)).toString();
    const p = snap(cur, rand(cur.length + 1));
    set = set.compose(ChangeSet.of({ from: p, insert: ["k", "😀", "\n"][i % 3] }, cur.length));
  }
  cases.push({
    name: "composed: five keystrokes in one message",
    doc,
    changes: set.toJSON(),
    len_before: set.length,
    len_after: set.newLength,
    expected: set.apply(toText(doc)).toString(),
  });
}

addRejected("rejected: change set for a longer document", "abc", [3, [0, "x"], 1]);
addRejected("rejected: change set for a shorter document", "abcd", [[1, "x"], 2]);
addRejected("rejected: emoji counted as one unit", "😀", [1, [0, "x"]]);

const out = { generator: `@codemirror/state ${version}`, cases };
writeFileSync(new URL("./fixtures.json", import.meta.url), JSON.stringify(out, null, 1) + "\n");
console.log(`wrote ${cases.length} cases with @codemirror/state ${version}`);
