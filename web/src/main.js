// The cod web editor: language picker, editor, Run/Stop, streamed output, interactive stdin.
// Talks to the server over the WebSocket at /api/v1/ws (see session.js); the session id is in
// the URL fragment (#s=<id>) so a reload resumes the same program.

import { createEditor } from "./editor.js";
import { syntaxFor } from "./languages.js";
import { Output, Status, fmtMs } from "./output.js";
import { Session } from "./session.js";

const $ = (id) => document.getElementById(id);
const body = document.body;
const picker = $("language");
const runButton = $("run");
const stopButton = $("stop");
const stdinInput = $("stdin");
const eofButton = $("eof");
const conn = $("conn");
const build = $("build");
const output = new Output($("output"));
const status = new Status($("status"));

const runtimes = new Map(); // name -> runtime from GET /api/v1/runtimes
let current = null; // the picked language's name
let editor = null;
let session = null;
let run = null; // the active run: {stage, streamed, startedAt, firstByteMs, stdinClosed, answered}

// ---- URL ------------------------------------------------------------------------------------

function sessionFromUrl() {
  return new URLSearchParams(location.hash.slice(1)).get("s");
}

function putSessionInUrl(id) {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get("s") === id) return;
  params.set("s", id);
  history.replaceState(history.state, "", "#" + params.toString());
}

// A pasted link to another session: load it properly rather than mixing two buffers.
window.addEventListener("hashchange", () => {
  if (session && sessionFromUrl() !== session.id) location.reload();
});

// ---- runtimes and the picker ----------------------------------------------------------------

async function loadRuntimes() {
  for (let attempt = 0; ; attempt++) {
    try {
      const res = await fetch("/api/v1/runtimes", { headers: { accept: "application/json" } });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const list = await res.json();
      if (!Array.isArray(list)) throw new Error("not a list");
      return list;
    } catch (e) {
      const delay = Math.min(10000, 500 * 2 ** attempt);
      status.set("cannot load languages", "bad", [String(e.message || e), `retrying in ${Math.round(delay / 1000)} s`], "error");
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

function fillPicker(list) {
  picker.textContent = "";
  for (const rt of list) {
    if (!rt || typeof rt.name !== "string") continue;
    runtimes.set(rt.name, rt);
    const opt = document.createElement("option");
    opt.value = rt.name;
    const label = `${rt.title || rt.name}${rt.version ? " " + rt.version : ""}`;
    opt.textContent = rt.available === false ? `${label} (unavailable)` : label;
    opt.disabled = rt.available === false;
    if (rt.available === false && rt.unavailable_reason) opt.title = rt.unavailable_reason;
    picker.appendChild(opt);
  }
}

/** A runtime name for `name`, which may be an alias; null if unknown. */
function resolveLanguage(name) {
  if (!name) return null;
  if (runtimes.has(name)) return name;
  for (const rt of runtimes.values()) if ((rt.aliases || []).includes(name)) return rt.name;
  return null;
}

function initialLanguage() {
  const usable = (n) => runtimes.has(n) && runtimes.get(n).available !== false;
  let saved = null;
  try { saved = localStorage.getItem("cod.language"); } catch (e) { /* storage disabled */ }
  if (saved && usable(saved)) return saved;
  if (usable("python")) return "python";
  for (const rt of runtimes.values()) if (rt.available !== false) return rt.name;
  return runtimes.size ? runtimes.keys().next().value : "python";
}

function template(name) {
  const rt = runtimes.get(name);
  return rt && typeof rt.template === "string" ? rt.template : "";
}

function showLanguage(name) {
  current = name;
  if (picker.value !== name) picker.value = name;
  editor.setSyntax(syntaxFor(runtimes.get(name)));
}

const trimEnd = (s) => s.replace(/\s+$/, "");

picker.addEventListener("change", () => {
  const prev = current;
  const next = picker.value;
  if (next === prev) return;
  const text = editor.text();
  // An untouched template (or nothing) is replaced by the new language's template.
  const untouched = trimEnd(text) === "" || (runtimes.has(prev) && trimEnd(text) === trimEnd(template(prev)));
  showLanguage(next);
  session.setLanguage(next);
  showBuild(null);
  try { localStorage.setItem("cod.language", next); } catch (e) { /* storage disabled */ }
  if (untouched && template(next) !== text) editor.setLocalText(template(next));
  editor.focus();
});

// ---- compile-ahead --------------------------------------------------------------------------

/** What the server's compile-ahead said of the text as it is (nothing once it changes). */
function showBuild(msg) {
  if (!msg) {
    build.hidden = true;
    delete build.dataset.status;
    return;
  }
  const status = msg.status === "ok" || msg.status === "compile_error" ? msg.status : "failed";
  build.dataset.status = status;
  build.textContent = status === "ok" ? "compiled, ready to run"
    : status === "compile_error" ? "does not compile: Run shows why" : "could not compile ahead";
  build.title = msg.cached ? "built before (from the compile cache)"
    : typeof msg.wall_ms === "number" ? `compiled in ${fmtMs(msg.wall_ms)} while you paused` : "";
  build.hidden = false;
}

// ---- runs -----------------------------------------------------------------------------------

function setRunning(on) {
  if (on) body.dataset.running = "1";
  else delete body.dataset.running;
  runButton.disabled = on;
  stopButton.disabled = !on;
  const canType = on && !(run && run.stdinClosed);
  stdinInput.disabled = !canType;
  eofButton.disabled = !canType;
  stdinInput.placeholder = on
    ? (canType ? "type a line, Enter sends it; Ctrl+D sends end of input" : "input closed")
    : "input for the running program";
}

function startRun() {
  if (run) return;
  if (!session || !session.opened) {
    status.set("not connected", "bad", ["the run was not sent: waiting for the server"], "error");
    return;
  }
  output.clear();
  run = { stage: null, streamed: false, startedAt: performance.now(), firstByteMs: null, stdinClosed: false, answered: false };
  session.send({ type: "run", version: session.version, args: [] });
  status.set("starting…", "busy", [], "running");
  setRunning(true);
}

function stopRun() {
  if (!run) return;
  session.send({ type: "kill" });
  status.set("stopping…", "busy", [], "running");
}

function endRun() {
  run = null;
  setRunning(false);
}

function sendStdin(data) {
  if (!run || run.stdinClosed || !data) return;
  if (session.send({ type: "stdin", data })) output.append(data, "stdin");
}

function closeStdin() {
  if (!run || run.stdinClosed) return;
  const pending = stdinInput.value;
  stdinInput.value = "";
  if (pending) sendStdin(pending);
  session.send({ type: "stdin_close" });
  run.stdinClosed = true;
  output.note("[end of input]\n");
  setRunning(true);
}

stdinInput.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.ctrlKey && !e.metaKey && !e.isComposing) {
    e.preventDefault();
    const line = stdinInput.value;
    stdinInput.value = "";
    sendStdin(line + "\n");
  } else if (e.key === "d" && e.ctrlKey && !e.metaKey && !e.altKey) {
    // As in a terminal: Ctrl+D sends a pending partial line, or closes the input when empty.
    e.preventDefault();
    if (stdinInput.value) {
      sendStdin(stdinInput.value);
      stdinInput.value = "";
    } else {
      closeStdin();
    }
  }
});

eofButton.addEventListener("click", closeStdin);
runButton.addEventListener("click", startRun);
stopButton.addEventListener("click", stopRun);
document.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !e.defaultPrevented) {
    e.preventDefault();
    startRun();
  }
});

function onServerMessage(msg) {
  switch (msg.type) {
    case "stage":
      if (!run) return;
      run.stage = msg.stage;
      run.answered = true;
      status.set(msg.stage === "compile" ? "compiling…" : "running…", "busy", [], "running");
      return;
    case "out": {
      if (typeof msg.data !== "string") return;
      let cls = msg.stream === "stderr" ? "stderr" : "stdout";
      if (run) {
        run.streamed = true;
        run.answered = true;
        if (run.firstByteMs === null) run.firstByteMs = performance.now() - run.startedAt;
        if (run.stage === "compile") cls += " compile";
      }
      output.append(msg.data, cls);
      return;
    }
    case "exit":
      return finishRun(msg);
    case "compiled":
      // Of the text as the editor has it, and its language: a compile-ahead of an older
      // version or another language says nothing of it.
      if (msg.version === session.version && resolveLanguage(msg.language) === current) showBuild(msg);
      return;
    case "error":
      status.set("error", "bad", [String(msg.error ?? "unknown error")], "error");
      // A rejected run request (nothing started): the page is no longer waiting for it.
      if (run && !run.answered) endRun();
      return;
    default:
      return; // unknown messages are ignored, so the server can add new ones
  }
}

function finishRun(r) {
  // The result may repeat the whole output: print it only if nothing was streamed.
  if (!run || !run.streamed) {
    const c = r.compile;
    if (c && r.status === "compile_error") {
      output.append(c.stdout, "stdout compile");
      output.append(c.stderr, "stderr compile");
    }
    output.append(r.stdout, "stdout");
    output.append(r.stderr, "stderr");
  }
  if (r.stdout_truncated || r.stderr_truncated) output.note("[output truncated by the output limit]\n");
  status.result(r, run ? run.firstByteMs : null);
  endRun();
}

// ---- connection -----------------------------------------------------------------------------

function onConnection(state, delay) {
  conn.dataset.state = state;
  if (state === "open") {
    conn.textContent = "connected";
  } else if (state === "connecting") {
    conn.textContent = "connecting…";
  } else {
    conn.textContent = `offline, retrying in ${Math.max(1, Math.round(delay / 1000))} s`;
    body.dataset.ready = "0";
    if (run) {
      output.note("[connection lost: the run's end is unknown]\n");
      status.set("disconnected", "bad", ["the connection to the server dropped during the run"], "disconnected");
      endRun();
    }
  }
}

function onOpened({ session: id, language, resumed }) {
  putSessionInUrl(id);
  const lang = resolveLanguage(language);
  if (lang && lang !== current) showLanguage(lang);
  editor.setEditable(true);
  $("editor").classList.remove("loading");
  if (!run && (status.el.dataset.status === "loading" || status.el.dataset.status === "error")) {
    status.set("ready", "", [resumed ? "session resumed" : "new session", "Ctrl+Enter runs"], "ready");
  }
  body.dataset.ready = "1";
}

function socketUrl() {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/api/v1/ws`;
}

async function boot() {
  status.set("loading", "busy", [], "loading");
  setRunning(false);
  fillPicker(await loadRuntimes());
  const resume = sessionFromUrl();
  current = initialLanguage();
  picker.value = current;
  const host = $("editor");
  if (resume) host.classList.add("loading");
  editor = createEditor(host, {
    doc: template(current),
    syntax: syntaxFor(runtimes.get(current)),
    editable: !resume, // the server's text replaces this one on a resume
    onLocalChange: (changes) => {
      session.localChange(changes);
      showBuild(null);
    },
    onRun: startRun,
  });
  session = new Session(socketUrl(), resume, {
    text: () => editor.text(),
    language: () => current,
    setServerText: (text) => {
      editor.setServerText(text);
      showBuild(null);
    },
    opened: onOpened,
    connection: onConnection,
    message: onServerMessage,
    unanswered: (n) => { body.dataset.unanswered = String(n); },
  });
  session.connect();
  if (!resume) editor.focus();
}

boot();
