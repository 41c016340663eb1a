// A stand-in for `cod serve`'s web parts, for developing and testing the page without the
// Rust server: serves crates/cod-server/assets, GET /api/v1/runtimes, and the WebSocket
// protocol at /api/v1/ws with fake runs. Sessions live in memory; edits are applied with
// @codemirror/state and their versions checked, like the real program buffers.
//
//   node web/tests/mock-server.mjs [--port N]     (0 or absent: a free port)
//
// Prints "mock-server: listening on http://127.0.0.1:PORT/" once it accepts connections.
//
// Fake runs understand a tiny Python subset, enough for the browser test and templates:
//   X = input("prompt")      writes the prompt, reads a line of stdin (EOF: EOFError)
//   print(a, b, file=sys.stderr)   string literals, f-strings with {var}, variables
//   while True:              runs until killed (or the 10 s wall limit)
//   time.sleep(S)            waits S seconds (`import` lines are ignored)
// Other languages compile first (cached by text) and print what their "hello" prints.
//
// Test-only routes: GET /__mock/state (sessions, protocol violations, messages waiting),
// GET /__mock/drop (close every socket; ?refuse=1 also refuses new ones), GET /__mock/accept
// (accept again), GET /__mock/resync?session=ID&text=T (replace a session's text and send
// "resync"), GET /__mock/edit?session=ID&text=T (replace it silently, as another editor of
// the session would: the page's next edit is stale), GET /__mock/lag?ms=N (handle each
// socket's messages N ms apart, in order, so that edits pile up on their way).

import http from "node:http";
import { createHash, randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { ChangeSet, Text } from "@codemirror/state";
import { WebSocketServer } from "ws";

const assets = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "crates", "cod-server", "assets");
const portArg = process.argv.indexOf("--port");
const port = portArg > 0 ? Number(process.argv[portArg + 1]) : Number(process.env.PORT || 0);

const runtimes = [
  { name: "python", title: "Python", version: "3.11.2", aliases: ["py", "py3", "python3"], extensions: ["py"], compiled: false, available: true,
    template: 'name = input("What is your name? ")\nprint(f"Hello, {name}!")\n' },
  { name: "c", title: "C", version: "12.2.0", aliases: ["gcc"], extensions: ["c", "h"], compiled: true, available: true,
    template: '#include <stdio.h>\n\nint main(void) {\n    printf("Hello, world!\\n");\n    return 0;\n}\n' },
  { name: "cpp", title: "C++", version: "12.2.0", aliases: ["c++", "g++"], extensions: ["cpp", "cc"], compiled: true, available: true,
    template: '#include <iostream>\n#include <string>\n\nint main() {\n    std::string name;\n    std::cout << "What is your name? " << std::flush;\n    std::cin >> name;\n    std::cout << "Hello, " << name << "!\\n";\n}\n' },
  { name: "rust", title: "Rust", version: "1.85.0", aliases: ["rs"], extensions: ["rs"], compiled: true, available: true,
    template: 'fn main() {\n    println!("Hello, world!");\n}\n' },
  { name: "javascript", title: "JavaScript", version: "20.20.2", aliases: ["js", "node"], extensions: ["js"], compiled: false, available: true,
    template: 'console.log("Hello, world!");\n' },
  { name: "java", title: "Java", version: "17.0.16", aliases: [], extensions: ["java"], compiled: true, available: false,
    unavailable_reason: "javac not found on this host", template: 'public class Solution {\n    public static void main(String[] args) {\n        System.out.println("Hello, world!");\n    }\n}\n' },
  { name: "bash", title: "Bash", version: "5.2.15", aliases: ["sh"], extensions: ["sh"], compiled: false, available: true,
    template: 'echo "Hello, world!"\n' },
];
const languageNames = new Map();
for (const r of runtimes) for (const n of [r.name, ...r.aliases]) languageNames.set(n, r.name);

const sessions = new Map(); // id -> {id, doc: Text, version, language, run}
const compiled = new Set(); // compile cache keys
const sockets = new Set();
let refuse = false;
let lag = 0; // ms before each message of a socket is handled
let queued = 0; // messages received and not handled yet
const violations = [];
const stats = { edits: 0, acks: 0, resyncs: 0, runs: 0, opens: 0, resumes: 0 };

function violation(what) {
  violations.push(what);
  console.error(`mock-server: protocol violation: ${what}`);
}

const types = { ".html": "text/html; charset=utf-8", ".js": "application/javascript; charset=utf-8", ".css": "text/css; charset=utf-8" };

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, "http://localhost");
  const json = (code, body) => {
    res.writeHead(code, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  };
  if (url.pathname === "/api/v1/runtimes") return json(200, runtimes);
  if (url.pathname === "/__mock/state") {
    return json(200, {
      violations, stats, queued,
      sessions: [...sessions.values()].map((s) => ({ id: s.id, version: s.version, language: s.language, text: s.doc.toString() })),
    });
  }
  if (url.pathname === "/__mock/drop") {
    refuse = url.searchParams.get("refuse") === "1";
    const n = sockets.size;
    for (const ws of sockets) ws.terminate();
    return json(200, { dropped: n, refusing: refuse });
  }
  if (url.pathname === "/__mock/resync") {
    // The server's text changes under the page (as after a conflict): it must take it.
    const session = sessions.get(url.searchParams.get("session"));
    if (!session) return json(404, { error: "no such session" });
    session.doc = Text.of((url.searchParams.get("text") ?? "").split("\n"));
    session.version++;
    let told = 0;
    for (const ws of sockets) {
      if (ws.session !== session) continue;
      ws.send(JSON.stringify({ type: "resync", version: session.version, text: session.doc.toString() }));
      told++;
    }
    return json(200, { version: session.version, told });
  }
  if (url.pathname === "/__mock/edit") {
    const session = sessions.get(url.searchParams.get("session"));
    if (!session) return json(404, { error: "no such session" });
    session.doc = Text.of((url.searchParams.get("text") ?? "").split("\n"));
    session.version++;
    session.external = true; // stale edits from the page are expected now
    return json(200, { version: session.version });
  }
  if (url.pathname === "/__mock/lag") {
    lag = Number(url.searchParams.get("ms") || 0);
    return json(200, { lag });
  }
  if (url.pathname === "/__mock/accept") {
    refuse = false;
    return json(200, { refusing: false });
  }
  const file = { "/": "index.html", "/index.html": "index.html", "/app.js": "app.js", "/app.css": "app.css" }[url.pathname];
  if (!file || req.method !== "GET") return json(404, { error: `no route ${req.method} ${url.pathname}` });
  try {
    const body = await readFile(join(assets, file));
    res.writeHead(200, { "content-type": types[file.slice(file.lastIndexOf("."))], "cache-control": "no-cache" });
    res.end(body);
  } catch (e) {
    json(500, { error: String(e) });
  }
});

const wss = new WebSocketServer({ noServer: true, maxPayload: 4 << 20 });
server.on("upgrade", (req, socket, head) => {
  if (new URL(req.url, "http://localhost").pathname !== "/api/v1/ws" || refuse) {
    socket.end("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n");
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => connection(ws));
});

function connection(ws) {
  sockets.add(ws);
  let session = null;
  const send = (msg) => { if (ws.readyState === ws.OPEN) ws.send(JSON.stringify(msg)); };
  const error = (text, isViolation = true) => {
    if (isViolation) violation(text);
    send({ type: "error", error: text });
  };
  ws.on("close", () => {
    sockets.delete(ws);
    // As the real server: a run dies with the socket that started it.
    if (session && session.run && session.run.ws === ws) session.run.kill("disconnected");
  });
  // Messages are handled in order, each `lag` ms after the one before.
  let chain = Promise.resolve();
  ws.on("message", (data, isBinary) => {
    queued++;
    chain = chain.then(async () => {
      if (lag) await new Promise((r) => setTimeout(r, lag));
      try { handle(data, isBinary); } finally { queued--; }
    });
  });
  const handle = (data, isBinary) => {
    if (isBinary) return error("binary frames are not part of the protocol");
    let msg;
    try { msg = JSON.parse(data.toString()); } catch (e) { return error(`bad JSON: ${e.message}`); }
    if (!msg || typeof msg !== "object") return error("a message is a JSON object");
    if (msg.type !== "open" && !session) return error(`"${msg.type}" before "open"`);
    switch (msg.type) {
      case "open": {
        const language = languageNames.get(msg.language);
        if (!language) return error(`open: unknown language ${JSON.stringify(msg.language)}`);
        if (typeof msg.text !== "string") return error("open: text must be a string");
        if (session) return error("open: this socket already has a session");
        stats.opens++;
        if (msg.session && sessions.has(msg.session)) {
          stats.resumes++;
          session = sessions.get(msg.session);
        } else {
          session = { id: randomBytes(8).toString("hex"), doc: Text.of(msg.text.split(/\r?\n/)), version: 0, language, run: null };
          sessions.set(session.id, session);
        }
        ws.session = session;
        return send({ type: "opened", session: session.id, version: session.version, language: session.language, text: session.doc.toString() });
      }
      case "edit": {
        stats.edits++;
        if (msg.version !== session.version) {
          stats.resyncs++;
          if (!session.external) violation(`edit at version ${msg.version}, current is ${session.version}`);
          return send({ type: "resync", version: session.version, text: session.doc.toString() });
        }
        let changes;
        try { changes = ChangeSet.fromJSON(msg.changes); } catch (e) { return error(`edit: bad changes: ${e.message}`); }
        if (changes.length !== session.doc.length) {
          stats.resyncs++;
          if (!session.external) violation(`edit for a document of ${changes.length} chars, it has ${session.doc.length}`);
          return send({ type: "resync", version: session.version, text: session.doc.toString() });
        }
        session.doc = changes.apply(session.doc);
        session.version++;
        stats.acks++;
        return send({ type: "ack", version: session.version });
      }
      case "language": {
        const language = languageNames.get(msg.language);
        if (!language) return error(`language: unknown language ${JSON.stringify(msg.language)}`);
        session.language = language;
        return;
      }
      case "run": {
        if (msg.version !== session.version) return error(`run: version ${msg.version} is not the current version ${session.version}`);
        if (session.run) return error("run: a run is already active in this session", false);
        if (msg.stdin !== undefined && typeof msg.stdin !== "string") return error("run: stdin must be a string");
        if (msg.args !== undefined && !Array.isArray(msg.args)) return error("run: args must be an array");
        stats.runs++;
        session.run = startRun(session, ws, send, msg.stdin);
        return;
      }
      case "stdin":
        if (typeof msg.data !== "string") return error("stdin: data must be a string");
        if (!session.run) return error("stdin: no run is active", false);
        return session.run.stdin(msg.data);
      case "stdin_close":
        if (!session.run) return error("stdin_close: no run is active", false);
        return session.run.closeStdin();
      case "kill":
        if (session.run) session.run.kill("killed");
        return;
      default:
        return error(`unknown message type ${JSON.stringify(msg.type)}`);
    }
  };
}

// ---- fake runs ------------------------------------------------------------------------------

function startRun(session, ws, send, initialStdin) {
  const started = Date.now();
  const source = session.doc.toString();
  const runtime = runtimes.find((r) => r.name === session.language);
  let out = { stdout: "", stderr: "" };
  let input = initialStdin ?? "";
  let inputClosed = initialStdin !== undefined;
  let wakeReader = null;
  let done = false;
  let compile = null;
  let wallTimer = null;

  const emit = (stream, data) => {
    if (done) return;
    out[stream] += data;
    send({ type: "out", stream, data });
  };
  const finish = (result) => {
    if (done) return;
    done = true;
    clearTimeout(wallTimer);
    session.run = null;
    const wall = Date.now() - started;
    send({
      type: "exit", status: "ok", reason: null, message: null, exit_code: 0, signal: null,
      stdout: out.stdout, stderr: out.stderr, stdout_truncated: false, stderr_truncated: false,
      cpu_ms: Math.max(1, Math.round(wall * 0.9)), wall_ms: wall, memory_kb: 9120, compile, ...result,
    });
  };
  const run = {
    ws,
    stdin(data) { input += data; if (wakeReader) wakeReader(); },
    closeStdin() { inputClosed = true; if (wakeReader) wakeReader(); },
    kill(why) {
      finish({ status: "runtime_error", exit_code: null, signal: "SIGKILL", message: why === "killed" ? "killed" : "killed: the client went away" });
    },
  };
  wallTimer = setTimeout(() => finish({ status: "time_limit", reason: "wall", exit_code: null, signal: "SIGKILL", message: "wall time limit of 10 s exceeded" }), 10000);

  const readLine = async () => {
    for (;;) {
      const nl = input.indexOf("\n");
      if (nl >= 0) { const line = input.slice(0, nl); input = input.slice(nl + 1); return line; }
      if (inputClosed) { if (input) { const line = input; input = ""; return line; } return null; }
      await new Promise((resolve) => { wakeReader = resolve; });
      wakeReader = null;
      if (done) return null;
    }
  };

  (async () => {
    if (runtime.compiled) {
      send({ type: "stage", stage: "compile" });
      const key = createHash("sha256").update(session.language + "\0" + source).digest("hex");
      const cached = compiled.has(key);
      await new Promise((r) => setImmediate(r));
      if (done) return;
      if (source.includes("compile_error")) {
        compile = { status: "runtime_error", exit_code: 1, signal: null, stdout: "", stderr: "main: error: compile_error is not a thing\n", cpu_ms: 30, wall_ms: 41, memory_kb: 20000, cached: false };
        send({ type: "out", stream: "stderr", data: compile.stderr });
        return finish({ status: "compile_error", exit_code: null, message: "compilation failed" });
      }
      compiled.add(key);
      compile = { status: "ok", exit_code: 0, signal: null, stdout: "", stderr: "", cpu_ms: cached ? 0 : 38, wall_ms: cached ? 0 : 52, memory_kb: 21000, cached };
    }
    send({ type: "stage", stage: "run" });
    if (session.language !== "python") {
      const m = /"((?:[^"\\]|\\.)*)"/.exec(source);
      emit("stdout", (m ? m[1].replace(/\\n/g, "") : "") + "\n");
      return finish({});
    }
    await python(source, { emit, readLine, isDone: () => done, finish });
  })().catch((e) => {
    emit("stderr", `mock-server: ${e.stack}\n`);
    finish({ status: "internal_error", exit_code: null, message: String(e) });
  });
  return run;
}

async function python(source, { emit, readLine, isDone, finish }) {
  const vars = new Map();
  const value = (expr) => {
    expr = expr.trim();
    let m;
    if ((m = /^f?"((?:[^"\\]|\\.)*)"$/.exec(expr)) || (m = /^f?'((?:[^'\\]|\\.)*)'$/.exec(expr))) {
      let s = m[1].replace(/\\n/g, "\n").replace(/\\(.)/g, "$1");
      if (expr.startsWith("f")) s = s.replace(/\{(\w+)\}/g, (_, v) => vars.get(v) ?? "");
      return s;
    }
    if (/^-?\d+$/.test(expr)) return expr;
    if (vars.has(expr)) return vars.get(expr);
    throw new NameError(expr);
  };
  const splitArgs = (s) => s.match(/f?"(?:[^"\\]|\\.)*"|f?'(?:[^'\\]|\\.)*'|[^,]+/g)?.map((a) => a.trim()).filter(Boolean) ?? [];
  class NameError extends Error {}
  try {
    for (const raw of source.split("\n")) {
      const line = raw.replace(/#.*$/, "").trimEnd();
      if (isDone()) return;
      let m;
      if (/^while True\s*:/.test(line)) {
        await new Promise(() => {}); // spins until killed or the wall limit
      } else if ((m = /^(\w+)\s*=\s*input\((.*)\)$/.exec(line))) {
        if (m[2].trim()) emit("stdout", value(m[2]));
        const got = await readLine();
        if (isDone()) return;
        if (got === null) {
          emit("stderr", 'Traceback (most recent call last):\n  File "main.py", line 1, in <module>\nEOFError: EOF when reading a line\n');
          return finish({ status: "runtime_error", exit_code: 1, message: "exited with code 1" });
        }
        vars.set(m[1], got);
      } else if ((m = /^time\.sleep\(([\d.]+)\)$/.exec(line))) {
        await new Promise((r) => setTimeout(r, Number(m[1]) * 1000));
      } else if ((m = /^print\((.*)\)$/.exec(line))) {
        let args = splitArgs(m[1]);
        const toStderr = args.includes("file=sys.stderr");
        args = args.filter((a) => !a.startsWith("file=") && !a.startsWith("flush="));
        emit(toStderr ? "stderr" : "stdout", args.map(value).join(" ") + "\n");
      } else if ((m = /^(\w+)\s*=\s*(.+)$/.exec(line))) {
        vars.set(m[1], value(m[2]));
      }
    }
    finish({});
  } catch (e) {
    if (!(e instanceof NameError)) throw e;
    emit("stderr", `Traceback (most recent call last):\nNameError: name '${e.message}' is not defined\n`);
    finish({ status: "runtime_error", exit_code: 1, message: "exited with code 1" });
  }
}

server.listen(port, "127.0.0.1", () => {
  console.log(`mock-server: listening on http://127.0.0.1:${server.address().port}/`);
});
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => process.exit(0));
