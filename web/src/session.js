// The program buffer on the server, kept in step with the editor over the WebSocket at
// /api/v1/ws (protocol: docs/api.md, "WebSocket").
//
// Versions: `version` is the version the next edit applies to. Every local change is sent at
// once as {"type":"edit","version":N,...} and `version` becomes N+1 without waiting for the ack
// (edits are pipelined; the socket keeps them in order). `acked` is the last version the server
// confirmed. Nothing is sent before the server's "opened"; the text typed meanwhile is
// reconciled when it arrives.
//
// The server answers every edit, in order, with "ack" or "resync" (an "error" comes before the
// resync of a refused edit). So the page pairs each answer with its edit (`pending`). A resync
// replaces the text, which makes the edits still in flight moot: they were made on text that
// is gone. While edits made after the resync are on their way, the answers to the moot ones
// are ignored (a later resync would otherwise wipe out what was typed since the first). Should
// a moot edit have been applied (its version happened to be the server's), the page asks for
// the server's text again with an empty edit against its own version, which the server has
// passed.

import { ChangeSet } from "@codemirror/state";

const MIN_BACKOFF_MS = 250;
const MAX_BACKOFF_MS = 10000;

/**
 * One change that turns `from` into `to` (common prefix and suffix kept), never splitting a
 * UTF-16 surrogate pair, as ChangeSet JSON against a document of `from.length`.
 */
export function diffChanges(from, to) {
  const max = Math.min(from.length, to.length);
  let start = 0;
  while (start < max && from.charCodeAt(start) === to.charCodeAt(start)) start++;
  if (start > 0 && isHighSurrogate(from.charCodeAt(start - 1))) start--;
  let end = 0;
  while (end < max - start && from.charCodeAt(from.length - 1 - end) === to.charCodeAt(to.length - 1 - end)) end++;
  if (end > 0 && isLowSurrogate(from.charCodeAt(from.length - end))) end--;
  const change = { from: start, to: from.length - end, insert: to.slice(start, to.length - end) };
  return ChangeSet.of(change, from.length).toJSON();
}

function isHighSurrogate(c) { return c >= 0xd800 && c < 0xdc00; }
function isLowSurrogate(c) { return c >= 0xdc00 && c < 0xe000; }

export class Session {
  /**
   * hooks:
   *  - text(): the editor's current text
   *  - language(): the picker's current language
   *  - setServerText(text): replace the editor's text without sending it back
   *  - opened({session, language, resumed}): a session is established on this socket
   *  - connection(state, detail): "connecting" | "open" | "closed" (detail: retry delay in ms)
   *  - message(msg): every other server message (stage, out, exit, error, ...)
   *  - unanswered(n): the number of edits sent and not answered yet changed
   */
  constructor(url, sessionId, hooks) {
    this.url = url;
    this.id = sessionId || null;
    this.hooks = hooks;
    this.ws = null;
    this.opened = false; // this socket has received "opened"
    this.established = false; // a session was opened at least once on this page
    this.version = 0;
    this.acked = 0;
    // One entry per edit sent on this socket and not answered yet: true when it was made on a
    // text a resync has replaced since (its answer no longer concerns the editor).
    this.pending = [];
    this.languageDirty = false; // the language changed while no session was open
    this.attempts = 0;
    this.retryTimer = null;
    this.pendingOpenWithSession = false;
    window.addEventListener("online", () => { if (!this.ws) this.connectNow(); });
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.hooks.connection("connecting");
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (e) {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    this.setPending([]);
    ws.onopen = () => this.sendOpen();
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      let msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      if (msg && typeof msg === "object") this.receive(msg);
    };
    ws.onclose = () => {
      if (ws !== this.ws) return;
      this.ws = null;
      this.opened = false;
      this.scheduleReconnect();
    };
  }

  connectNow() {
    this.attempts = 0;
    this.connect();
  }

  scheduleReconnect() {
    const base = Math.min(MAX_BACKOFF_MS, MIN_BACKOFF_MS * 2 ** this.attempts);
    const delay = Math.round(base / 2 + Math.random() * (base / 2));
    this.attempts++;
    this.hooks.connection("closed", delay);
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  sendOpen() {
    const msg = { type: "open", language: this.hooks.language(), text: this.hooks.text() };
    if (this.id) msg.session = this.id;
    this.pendingOpenWithSession = !!this.id;
    this.sendRaw(msg);
  }

  sendRaw(msg) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  /** Sends a message that needs an established session; false when there is none. */
  send(msg) {
    return this.opened && this.sendRaw(msg);
  }

  /** The editor changed the text (called once per transaction, in order). */
  localChange(changes) {
    if (!this.opened) return; // reconciled on the next "opened"
    this.sendEdit(changes.toJSON());
  }

  /** Sends an edit against `version` (the text as the editor has it). */
  sendEdit(changesJson) {
    if (!this.sendRaw({ type: "edit", version: this.version, changes: changesJson })) return false;
    this.version++;
    this.setPending([...this.pending, false]);
    return true;
  }

  /** The edits on their way (see `pending`), and who wants to know how many. */
  setPending(pending) {
    this.pending = pending;
    if (this.hooks.unanswered) this.hooks.unanswered(pending.length);
  }

  /** The answer to the oldest edit on its way arrived: whether that edit was moot. */
  answered() {
    const [moot, ...rest] = this.pending;
    this.setPending(rest);
    return !!moot;
  }

  setLanguage(language) {
    if (!this.send({ type: "language", language })) this.languageDirty = true;
  }

  receive(msg) {
    switch (msg.type) {
      case "opened": return this.onOpened(msg);
      case "ack": {
        if (this.answered()) {
          // An edit made on replaced text was applied: the server's text is not the editor's.
          // Unless an edit made since will be answered with it, ask for it: an empty edit
          // against the editor's version, which the server has passed, gets a resync.
          if (!this.pending.some((moot) => !moot)) this.sendEdit(ChangeSet.empty(this.hooks.text().length).toJSON());
          return;
        }
        if (typeof msg.version === "number") this.acked = msg.version;
        return;
      }
      case "resync":
        // The answer to an edit made on replaced text, while edits made since are on their
        // way: their answers will tell. (With none on its way, the editor's text is still the
        // one of the resync before, and this one is as new or newer.)
        if (this.answered() && this.pending.some((moot) => !moot)) return;
        if (typeof msg.text === "string" && typeof msg.version === "number") {
          this.hooks.setServerText(msg.text);
          this.version = this.acked = msg.version;
          this.setPending(this.pending.map(() => true));
        }
        return;
      case "error":
        if (!this.opened && this.pendingOpenWithSession) {
          // The session could not be resumed (unknown or expired id): start a new one.
          this.id = null;
          this.hooks.message(msg);
          this.sendOpen();
          return;
        }
        return this.hooks.message(msg);
      default:
        return this.hooks.message(msg);
    }
  }

  onOpened(msg) {
    const serverText = typeof msg.text === "string" ? msg.text : "";
    const serverVersion = typeof msg.version === "number" ? msg.version : 0;
    const resumedSame = !!this.id && msg.session === this.id;
    const local = this.hooks.text();

    // Whose text wins:
    // - a new session (the server made it from our "open"): ours, if typed since the open;
    // - a reconnect of this page where the server holds no edit we did not make (its version
    //   lies between our last ack and our last sent edit): ours, sent as one edit, so what was
    //   typed while the socket was down is kept;
    // - otherwise (a reload resuming a session, or a session edited elsewhere): the server's.
    let keepLocal;
    if (!resumedSame) keepLocal = true;
    else if (this.established) keepLocal = serverVersion >= this.acked && serverVersion <= this.version;
    else keepLocal = false;

    this.id = msg.session;
    this.version = this.acked = serverVersion;
    this.setPending([]);
    this.opened = true;
    this.attempts = 0;
    if (keepLocal) {
      if (local !== serverText) this.sendEdit(diffChanges(serverText, local));
    } else {
      this.hooks.setServerText(serverText);
    }
    // A language picked while no session was open wins over the one the server remembers.
    let language = msg.language;
    if (this.languageDirty) {
      this.languageDirty = false;
      language = undefined;
      this.sendRaw({ type: "language", language: this.hooks.language() });
    }
    this.established = true;
    this.hooks.connection("open");
    this.hooks.opened({ session: this.id, language, resumed: resumedSame && !keepLocal });
  }
}
