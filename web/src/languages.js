// Syntax modes, by cod runtime name (see languages/*.toml and GET /api/v1/runtimes).
//
// Only the Language objects are used, not the packages' `python()`-style helpers: those add
// completion sources, which this page does not use (no autocompletion popup fights with Enter
// while typing), and leaving them out keeps the bundle small.

import { LanguageSupport, StreamLanguage } from "@codemirror/language";
import { pythonLanguage } from "@codemirror/lang-python";
import { cppLanguage } from "@codemirror/lang-cpp";
import { rustLanguage } from "@codemirror/lang-rust";
import { javascriptLanguage } from "@codemirror/lang-javascript";
import { javaLanguage } from "@codemirror/lang-java";
import { shell } from "@codemirror/legacy-modes/mode/shell";

const cache = new Map();

const byName = {
  python: () => pythonLanguage,
  c: () => cppLanguage,
  cpp: () => cppLanguage,
  rust: () => rustLanguage,
  javascript: () => javascriptLanguage,
  java: () => javaLanguage,
  bash: () => StreamLanguage.define(shell),
};

// A runtime not named above is matched by its file extensions; unknown ones get plain text.
const byExtension = {
  py: "python", c: "c", h: "c", cc: "cpp", cpp: "cpp", cxx: "cpp", hpp: "cpp", rs: "rust",
  js: "javascript", mjs: "javascript", cjs: "javascript", java: "java", sh: "bash", bash: "bash",
};

/** The editor extension that highlights `runtime`'s code (an empty array for plain text). */
export function syntaxFor(runtime) {
  if (!runtime) return [];
  let key = byName[runtime.name] ? runtime.name : null;
  if (!key) {
    for (const ext of runtime.extensions || []) {
      if (byExtension[ext]) { key = byExtension[ext]; break; }
    }
  }
  if (!key) return [];
  if (!cache.has(key)) cache.set(key, new LanguageSupport(byName[key]()));
  return cache.get(key);
}
