// The CodeMirror 6 editor: a lean setup (no autocompletion, no lint), colours from CSS
// variables (see app.css) so light and dark follow prefers-color-scheme, and a way to replace
// the text with the server's without the change being sent back as an edit.

import { EditorView } from "codemirror";
import { Annotation, Compartment, EditorState, Prec, Transaction } from "@codemirror/state";
import {
  crosshairCursor, drawSelection, dropCursor, highlightActiveLine, highlightActiveLineGutter,
  highlightSpecialChars, keymap, lineNumbers, rectangularSelection,
} from "@codemirror/view";
import { defaultKeymap, history, historyKeymap, indentWithTab } from "@codemirror/commands";
import { bracketMatching, indentOnInput, indentUnit, syntaxHighlighting } from "@codemirror/language";
import { closeBrackets, closeBracketsKeymap } from "@codemirror/autocomplete";
import { highlightSelectionMatches, searchKeymap } from "@codemirror/search";
import { classHighlighter } from "@lezer/highlight";

/** Marks transactions that carry the server's text: they are not sent back as edits. */
const fromServer = Annotation.define();

const theme = EditorView.theme({
  "&": { height: "100%", color: "var(--fg)", backgroundColor: "var(--editor-bg)" },
  ".cm-scroller": { fontFamily: "var(--mono)", fontSize: "var(--code-size)", lineHeight: "1.5" },
  ".cm-content": { caretColor: "var(--caret)", padding: "8px 0" },
  ".cm-cursor, .cm-dropCursor": { borderLeftColor: "var(--caret)", borderLeftWidth: "2px" },
  ".cm-gutters": { backgroundColor: "var(--editor-bg)", color: "var(--muted)", border: "none" },
  ".cm-lineNumbers .cm-gutterElement": { padding: "0 10px 0 14px" },
  ".cm-activeLine": { backgroundColor: "var(--active-line)" },
  ".cm-activeLineGutter": { backgroundColor: "var(--active-line)", color: "var(--fg)" },
  ".cm-selectionBackground": { backgroundColor: "var(--selection-blur)" },
  "&.cm-focused > .cm-scroller > .cm-selectionLayer .cm-selectionBackground": {
    backgroundColor: "var(--selection)",
  },
  ".cm-selectionMatch": { backgroundColor: "var(--match)" },
  "&.cm-focused .cm-matchingBracket": { backgroundColor: "var(--match)", outline: "1px solid var(--muted)" },
  "&.cm-focused": { outline: "none" },
  ".cm-panels": { backgroundColor: "var(--panel)", color: "var(--fg)" },
  ".cm-searchMatch": { backgroundColor: "var(--search)" },
});

const dark = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;

/**
 * Creates the editor in `parent`.
 * `onLocalChange(changes)` gets the ChangeSet of every user transaction that changed the text,
 * in order; `onRun()` is bound to Ctrl/Cmd+Enter.
 */
export function createEditor(parent, { doc, syntax, editable, onLocalChange, onRun }) {
  const language = new Compartment();
  const readOnly = new Compartment();
  const scheme = new Compartment();

  const view = new EditorView({
    parent,
    state: EditorState.create({
      doc,
      extensions: [
        Prec.highest(keymap.of([{ key: "Mod-Enter", preventDefault: true, run: () => { onRun(); return true; } }])),
        lineNumbers(),
        highlightActiveLineGutter(),
        highlightSpecialChars(),
        history(),
        drawSelection(),
        dropCursor(),
        EditorState.allowMultipleSelections.of(true),
        indentOnInput(),
        indentUnit.of("    "),
        syntaxHighlighting(classHighlighter),
        bracketMatching(),
        closeBrackets(),
        rectangularSelection(),
        crosshairCursor(),
        highlightActiveLine(),
        highlightSelectionMatches(),
        keymap.of([...closeBracketsKeymap, ...defaultKeymap, ...searchKeymap, ...historyKeymap, indentWithTab]),
        theme,
        scheme.of(EditorView.darkTheme.of(!!(dark && dark.matches))),
        language.of(syntax),
        readOnly.of(EditorView.editable.of(editable)),
        EditorView.contentAttributes.of({ "aria-label": "Program", "data-testid": "editor" }),
        EditorView.updateListener.of((update) => {
          if (!update.docChanged) return;
          for (const tr of update.transactions) {
            if (tr.docChanged && !tr.annotation(fromServer)) onLocalChange(tr.changes);
          }
        }),
      ],
    }),
  });

  if (dark) {
    dark.addEventListener("change", () => {
      view.dispatch({ effects: scheme.reconfigure(EditorView.darkTheme.of(dark.matches)) });
    });
  }

  return {
    view,
    text: () => view.state.doc.toString(),
    /** Replaces the whole text with the server's; not sent as an edit, not undoable. */
    setServerText(text) {
      if (text === view.state.doc.toString()) return;
      view.dispatch({
        changes: { from: 0, to: view.state.doc.length, insert: text },
        annotations: [fromServer.of(true), Transaction.addToHistory.of(false)],
      });
    },
    /** Replaces the whole text as a user edit (sent to the server, undoable). */
    setLocalText(text) {
      view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: text }, userEvent: "input.replace" });
    },
    setSyntax(ext) { view.dispatch({ effects: language.reconfigure(ext) }); },
    setEditable(on) { view.dispatch({ effects: readOnly.reconfigure(EditorView.editable.of(on)) }); },
    focus() { view.focus(); },
  };
}
