// The output pane (stdout, stderr, echoed stdin and notes as spans, merged while the class
// stays the same) and the status line under it.

const MAX_CHARS = 2 * 1024 * 1024; // the server caps output at 1 MiB per stream by default

export class Output {
  constructor(pre) {
    this.pre = pre;
    this.chars = 0;
    this.full = false;
    this.last = null; // last span: appended to while the class is the same
    this.scrollQueued = false;
  }

  clear() {
    this.pre.textContent = "";
    this.chars = 0;
    this.full = false;
    this.last = null;
  }

  /** Appends `text` with `cls` ("stdout", "stderr", "stderr compile", "stdin", "note"). */
  append(text, cls) {
    if (!text || this.full) return;
    if (this.chars + text.length > MAX_CHARS) {
      text = text.slice(0, Math.max(0, MAX_CHARS - this.chars));
      this.full = true;
    }
    const stick = this.atBottom();
    if (this.last && this.last.className === cls) {
      this.last.firstChild.appendData(text);
    } else {
      const span = document.createElement("span");
      span.className = cls;
      span.appendChild(document.createTextNode(text));
      this.pre.appendChild(span);
      this.last = span;
    }
    this.chars += text.length;
    if (this.full) this.note("\n[output too long for the page: the rest is not shown]\n");
    if (stick) this.scrollToEnd();
  }

  /** A message from the page itself, not from the program. */
  note(text) {
    const wasFull = this.full;
    this.full = false;
    this.append(this.endsWithNewline() || this.chars === 0 ? text : "\n" + text, "note");
    this.full = wasFull;
  }

  endsWithNewline() {
    const t = this.last && this.last.firstChild.data;
    return !t || t.endsWith("\n");
  }

  atBottom() {
    const p = this.pre;
    return p.scrollTop + p.clientHeight >= p.scrollHeight - 8;
  }

  scrollToEnd() {
    if (this.scrollQueued) return;
    this.scrollQueued = true;
    requestAnimationFrame(() => {
      this.scrollQueued = false;
      this.pre.scrollTop = this.pre.scrollHeight;
    });
  }
}

/** The status line: a verdict word (data-status holds it for tests) and details. */
export class Status {
  constructor(el) { this.el = el; }

  /** `kind`: "ok" | "bad" | "busy" | "" (muted). */
  set(word, kind, details = [], status = word) {
    this.el.textContent = "";
    this.el.dataset.status = status;
    const b = document.createElement("b");
    b.className = "verdict " + (kind || "");
    b.textContent = word;
    this.el.appendChild(b);
    for (const d of details) {
      if (d === null || d === undefined || d === "") continue;
      const span = document.createElement("span");
      span.className = "detail";
      span.textContent = d;
      this.el.append(" ", span); // the space keeps textContent readable: "ok exit 0 cpu 11 ms"
    }
  }

  /** The verdict of a finished run (the run result of docs/api.md). */
  result(r, firstByteMs) {
    const ok = r.status === "ok";
    const details = [];
    if (r.reason) details.push(r.reason);
    if (r.message && !ok) details.push(r.message);
    if (r.exit_code !== null && r.exit_code !== undefined) details.push(`exit ${r.exit_code}`);
    if (r.signal !== null && r.signal !== undefined) details.push(`signal ${r.signal}`);
    if (typeof r.cpu_ms === "number") details.push(`cpu ${fmtMs(r.cpu_ms)}`);
    if (typeof r.wall_ms === "number") details.push(`wall ${fmtMs(r.wall_ms)}`);
    if (typeof r.memory_kb === "number" && r.memory_kb > 0) details.push(fmtKb(r.memory_kb));
    if (r.compile) {
      if (r.compile.cached) details.push("compiled (cached)");
      else if (typeof r.compile.wall_ms === "number") details.push(`compiled in ${fmtMs(r.compile.wall_ms)}`);
      else details.push("compiled");
    }
    if (typeof firstByteMs === "number") details.push(`first output after ${fmtMs(firstByteMs)}`);
    this.set(r.status || "done", ok ? "ok" : "bad", details, r.status || "done");
  }
}

export function fmtMs(ms) {
  return ms < 10000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

function fmtKb(kb) {
  return kb < 1024 ? `${kb} KiB` : `${(kb / 1024).toFixed(1)} MiB`;
}
