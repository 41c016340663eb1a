// End-to-end test of the web editor in Debian's Chromium (playwright-core, no downloaded
// browser). Needs a running server: the real `cod serve`, or tests/mock-server.mjs.
//
// Types programs into the editor as a person would and checks: output streamed while the
// program runs (Run by Ctrl+Enter), stdout and stderr apart, the status line's figures, an
// input() prompt answered in the input line, Ctrl+D as end of input, Stop ending an endless
// loop (killed, well before its time limit), a reload finding the program and its language,
// the language picker's templates and syntax colours, C++ compiled ahead of Run (the server's
// "compiled", then "compiled (cached)" in the status), and that the page uses nothing but cod.
//
//   COD_URL=http://127.0.0.1:2000/ node web/tests/browser.mjs
//
// Env: COD_URL (required), CHROMIUM (default /usr/bin/chromium), COD_MOCK=1 adds checks that
// need the mock's /__mock/* routes (reconnecting, a resync, edits crossing another editor's
// change), COD_SCREENSHOT=FILE saves a picture at the end.
// Exits 0 when every check passed; prints "N passed, M failed" last.

import { chromium } from "playwright-core";

const url = process.env.COD_URL;
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const OVERALL_MS = 120000;
const STEP_MS = 15000;

let passed = 0;
let browser = null;
let page = null;

const hardStop = setTimeout(() => {
  console.error(`browser.mjs: FAIL: the test did not finish within ${OVERALL_MS / 1000} s`);
  console.log(`${passed} passed, 1 failed`);
  process.exit(1);
}, OVERALL_MS);

async function check(name, fn) {
  const t0 = Date.now();
  await fn();
  passed++;
  console.log(`ok ${passed} - ${name} (${Date.now() - t0} ms)`);
}

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

const editorText = () => page.evaluate(() =>
  [...document.querySelectorAll(".cm-content .cm-line")].map((l) => l.textContent).join("\n"));
const outputText = () => page.evaluate(() => document.querySelector("#output").textContent);
const statusOf = () => page.evaluate(() => ({
  status: document.querySelector("#status").dataset.status,
  text: document.querySelector("#status").textContent,
}));

async function waitFor(what, fn, arg, timeout = STEP_MS) {
  try {
    await page.waitForFunction(fn, arg, { timeout, polling: 50 });
  } catch (e) {
    throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
  }
}

/** Waits until `fn(arg)` returns a truthy value in the page, and returns that value. */
async function waitForValue(what, fn, arg, timeout = STEP_MS) {
  try {
    const handle = await page.waitForFunction(fn, arg, { timeout, polling: 50 });
    return await handle.jsonValue();
  } catch (e) {
    throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
  }
}

const received = []; // every JSON message the server sent the page
const frameWaiters = new Set();

/** The first message from the server (already received or to come) that `pred` accepts. */
function waitForFrame(what, pred, timeout = STEP_MS) {
  const had = received.find(pred);
  if (had) return Promise.resolve(had);
  return new Promise((resolve, reject) => {
    const w = {
      pred,
      resolve: (m) => { clearTimeout(timer); frameWaiters.delete(w); resolve(m); },
    };
    const timer = setTimeout(() => {
      frameWaiters.delete(w);
      const seen = received.filter((m) => m.type !== "ack").slice(-10);
      reject(new Error(`timed out after ${timeout} ms waiting for ${what}; last messages: ${JSON.stringify(seen)}`));
    }, timeout);
    frameWaiters.add(w);
  });
}

/** Replaces the editor's text by typing, as a person would. */
async function typeProgram(text) {
  await page.click(".cm-content");
  await page.keyboard.press("ControlOrMeta+a");
  await page.keyboard.press("Backspace");
  await page.keyboard.type(text);
  const got = await editorText();
  assert(got === text, `the editor holds ${JSON.stringify(got)} after typing ${JSON.stringify(text)}`);
}

async function main() {
  assert(url, "set COD_URL to the server's page, e.g. COD_URL=http://127.0.0.1:2000/");
  browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  page = await browser.newPage({ viewport: { width: 1366, height: 768 } });
  // The page works without any external network: everything it uses comes from cod.
  const foreign = [];
  page.on("request", (r) => {
    const u = new URL(r.url());
    if (["http:", "https:"].includes(u.protocol) && u.host !== new URL(url).host) foreign.push(r.url());
  });
  page.on("websocket", (ws) => {
    if (new URL(ws.url()).host !== new URL(url).host) foreign.push(ws.url());
    // What the server sends the page, for checks the page does not show (compile-ahead).
    ws.on("framereceived", ({ payload }) => {
      let m;
      try { m = JSON.parse(String(payload)); } catch (e) { return; }
      received.push(m);
      for (const w of [...frameWaiters]) if (w.pred(m)) w.resolve(m);
    });
  });
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") console.error(`browser console: ${m.text()}`); });

  await check("the page loads and opens a session", async () => {
    await page.goto(url, { timeout: STEP_MS });
    await waitFor("body[data-ready=1]", () => document.body.dataset.ready === "1");
    assert(/[#&]s=[^&]+/.test(page.url()), `the URL carries no session id: ${page.url()}`);
  });

  await check("the language picker lists Python", async () => {
    const options = await page.$$eval("#language option", (os) => os.map((o) => [o.value, o.disabled]));
    const python = options.find(([v]) => v === "python");
    assert(python && !python[1], `no usable python in the picker: ${JSON.stringify(options)}`);
    await page.selectOption("#language", "python");
    assert(await page.$eval("#build", (b) => b.hidden), "the build note stays after the language changed");
  });

  await check("a typed program's output streams while it runs (Ctrl+Enter runs)", async () => {
    await typeProgram('import time\nprint("first", flush=True)\ntime.sleep(2)\nprint("second")');
    await page.keyboard.press("ControlOrMeta+Enter");
    // Seen while the program still sleeps: not at the end, and before "second" is printed.
    const seen = await waitForValue('"first" in the output', () => {
      const out = document.querySelector("#output").textContent;
      return out.includes("first") && { running: document.body.dataset.running === "1", out };
    });
    assert(seen.running && !seen.out.includes("second"),
      `"first" was shown only at the end: ${JSON.stringify(seen)}`);
    await waitFor("the run to end", () => !document.body.dataset.running);
    const out = await outputText();
    assert(out === "first\nsecond\n", `output ${JSON.stringify(out)}`);
    const inStdout = await page.$$eval("#output span.stdout", (ss) => ss.map((s) => s.textContent).join(""));
    assert(inStdout === out, `stdout spans hold ${JSON.stringify(inStdout)}`);
    // The status line: verdict, exit code, CPU and wall time, peak memory.
    const st = await statusOf();
    assert(st.status === "ok", `status is ${JSON.stringify(st)}, expected ok`);
    for (const want of [/^ok\b/, /\bexit 0\b/, /\bcpu \d+ ms\b/, /\bwall \d+(\.\d)? (ms|s)\b/, /\d+(\.\d)? (KiB|MiB)\b/]) {
      assert(want.test(st.text), `the status line ${JSON.stringify(st.text)} lacks ${want}`);
    }
  });

  await check("an interactive program reads a typed line", async () => {
    await typeProgram('name = input("name? ")\nprint("hi", name)');
    await page.click("#run");
    await waitFor('"name? " in the output', () => document.querySelector("#output").textContent.includes("name? "));
    await page.locator("#stdin").pressSequentially("Ada");
    await page.locator("#stdin").press("Enter");
    await waitFor("the run to end", () => !document.body.dataset.running);
    const out = await outputText();
    const st = await statusOf();
    assert(out.includes("hi Ada"), `output ${JSON.stringify(out)} lacks "hi Ada" (status: ${st.text})`);
    assert(out.split("hi Ada").length === 2, `"hi Ada" printed more than once: ${JSON.stringify(out)}`);
    const inStdout = await page.$$eval("#output span.stdout", (ss) => ss.some((s) => s.textContent.includes("hi Ada")));
    assert(inStdout, "\"hi Ada\" is not in a span.stdout");
    assert(st.status === "ok" && /\bok\b/.test(st.text), `status is ${JSON.stringify(st)}, expected ok`);
  });

  await check("Ctrl+D in the input line sends end of input", async () => {
    await page.click("#run");
    await waitFor('"name? " in the output', () => document.querySelector("#output").textContent.includes("name? "));
    await page.locator("#stdin").press("Control+d");
    await waitFor("the run to end", () => !document.body.dataset.running);
    const st = await statusOf();
    const stderr = await page.$$eval("#output span.stderr", (ss) => ss.map((s) => s.textContent).join(""));
    assert(stderr.includes("EOFError"), `no EOFError in span.stderr: ${JSON.stringify(await outputText())}`);
    assert(st.status === "runtime_error", `status is ${JSON.stringify(st)}, expected runtime_error`);
  });

  await check("Stop ends an endless program", async () => {
    await typeProgram('print("spinning", flush=True)\nwhile True: pass');
    await page.click("#run");
    // The program is running once its first line is out.
    await waitFor('"spinning" in the output', () => document.querySelector("#output").textContent.includes("spinning"));
    assert(await page.evaluate(() => document.body.dataset.running === "1"), "the run ended by itself");
    const stopped = Date.now();
    await page.click("#stop");
    // Well before the run's 10 s wall-clock limit would end it.
    await waitFor("the run to end after Stop", () => !document.body.dataset.running, null, 5000);
    const st = await statusOf();
    console.log(`   status after Stop (${Date.now() - stopped} ms): ${st.text}`);
    assert(st.status === "runtime_error" && /\bsignal SIGKILL\b/.test(st.text),
      `after Stop the status is ${JSON.stringify(st)}, expected runtime_error with signal SIGKILL`);
    assert(!await page.$eval("#run", (b) => b.disabled), "Run stays disabled after Stop");
  });

  await check("a reload resumes the session", async () => {
    const want = await editorText();
    const before = page.url();
    await page.reload({ timeout: STEP_MS });
    await waitFor("body[data-ready=1] after the reload", () => document.body.dataset.ready === "1");
    assert(page.url() === before, `the URL changed from ${before} to ${page.url()}`);
    await waitFor("the endless program in the editor",
      (w) => [...document.querySelectorAll(".cm-content .cm-line")].map((l) => l.textContent).join("\n") === w, want)
      .catch(async (e) => { throw new Error(`${e.message}; the editor holds ${JSON.stringify(await editorText())}`); });
    assert(want === 'print("spinning", flush=True)\nwhile True: pass', `the program before the reload was ${JSON.stringify(want)}`);
    const lang = await page.$eval("#language", (s) => s.value);
    assert(lang === "python", `the picker shows ${lang} after the reload`);
  });

  await check("C++ starts from its template, is compiled ahead and runs interactively", async () => {
    const runtimes = await page.evaluate(async () => (await fetch("/api/v1/runtimes")).json());
    const cpp = runtimes.find((r) => r.name === "cpp");
    assert(cpp && cpp.available !== false, `C++ is not available: ${JSON.stringify(cpp)}`);
    // An empty buffer takes the new language's hello-world template.
    await typeProgram("");
    await page.selectOption("#language", "cpp");
    await waitFor("the C++ template in the editor",
      (t) => [...document.querySelectorAll(".cm-content .cm-line")].map((l) => l.textContent).join("\n") === t, cpp.template)
      .catch(async (e) => { throw new Error(`${e.message}; the editor holds ${JSON.stringify(await editorText())}`); });
    // Its syntax mode colours it.
    const tokens = await page.$$eval(".cm-content [class*='tok-']", (ts) => ts.length);
    assert(tokens > 3, `${tokens} highlighted tokens in the C++ template`);
    if (process.env.COD_MOCK !== "1") {
      // Left alone, the buffer is compiled in the background (the server says "compiled").
      await waitForFrame("a compile-ahead of the template",
        (m) => m.type === "compiled" && m.language === "cpp" && m.status === "ok", 30000);
      // The page says so.
      await waitFor("the page to show the program is built",
        () => { const b = document.querySelector("#build"); return !b.hidden && b.dataset.status === "ok"; });
    }
    await page.click("#run");
    await waitFor('the template\'s prompt in the output', () => document.querySelector("#output").textContent.includes("What is your name? "));
    if (process.env.COD_MOCK !== "1") {
      await page.locator("#stdin").pressSequentially("Ada");
      await page.locator("#stdin").press("Enter");
    }
    await waitFor("the run to end", () => !document.body.dataset.running);
    const out = await outputText();
    const st = await statusOf();
    assert(st.status === "ok", `status is ${JSON.stringify(st)}, expected ok (output ${JSON.stringify(out)})`);
    if (process.env.COD_MOCK !== "1") {
      assert(out.includes("Hello, Ada!"), `output ${JSON.stringify(out)} lacks "Hello, Ada!"`);
      // Compiled ahead: Run found the program built.
      assert(/\bcompiled \(cached\)/.test(st.text), `the status line ${JSON.stringify(st.text)} does not say "compiled (cached)"`);
    } else {
      assert(/\bcompiled\b/.test(st.text), `the status line ${JSON.stringify(st.text)} does not say "compiled"`);
    }
    await page.selectOption("#language", "python");
    assert(await page.$eval("#build", (b) => b.hidden), "the build note stays after the language changed");
  });

  if (process.env.COD_MOCK === "1") {
    await check("(mock) text typed while offline reaches the server after reconnecting", async () => {
      const base = new URL(url);
      const mock = async (path) => (await fetch(new URL(path, base))).json();
      await mock("/__mock/drop?refuse=1");
      await waitFor("the page to notice the drop", () => document.body.dataset.ready === "0");
      await page.click(".cm-content");
      await page.keyboard.press("ControlOrMeta+End");
      await page.keyboard.type("\nprint(1)");
      await mock("/__mock/accept");
      await waitFor("the page to reconnect", () => document.body.dataset.ready === "1", null, 20000);
      const want = await editorText();
      const id = new URLSearchParams(new URL(page.url()).hash.slice(1)).get("s");
      let got;
      for (const deadline = Date.now() + 5000; Date.now() < deadline;) {
        got = (await mock("/__mock/state")).sessions.find((s) => s.id === id)?.text;
        if (got === want) break;
        await page.waitForTimeout(50);
      }
      assert(got === want, `server text ${JSON.stringify(got)} != editor text ${JSON.stringify(want)}`);
    });

    await check("(mock) a resync replaces the text and editing goes on from its version", async () => {
      const base = new URL(url);
      const mock = async (path) => (await fetch(new URL(path, base))).json();
      const id = new URLSearchParams(new URL(page.url()).hash.slice(1)).get("s");
      const told = await mock(`/__mock/resync?session=${id}&text=${encodeURIComponent("print('server')")}`);
      assert(told.told === 1, `the mock told ${told.told} sockets`);
      await waitFor("the server's text in the editor",
        () => [...document.querySelectorAll(".cm-content .cm-line")].map((l) => l.textContent).join("\n") === "print('server')");
      await page.click(".cm-content");
      await page.keyboard.press("ControlOrMeta+End");
      await page.keyboard.type("\nprint(2)");
      const want = await editorText();
      let got;
      for (const deadline = Date.now() + 5000; Date.now() < deadline;) {
        got = (await mock("/__mock/state")).sessions.find((s) => s.id === id)?.text;
        if (got === want) break;
        await page.waitForTimeout(50);
      }
      assert(got === want, `server text ${JSON.stringify(got)} != editor text ${JSON.stringify(want)}`);
    });

    /** The server's and the editor's text once no edit is on its way either way. */
    const settled = async (id) => {
      const mock = async (path) => (await fetch(new URL(path, new URL(url)))).json();
      for (const deadline = Date.now() + 10000; ;) {
        const st = await mock("/__mock/state");
        const unanswered = await page.evaluate(() => document.body.dataset.unanswered);
        if (st.queued === 0 && unanswered === "0") {
          return { server: st.sessions.find((s) => s.id === id)?.text, editor: await editorText() };
        }
        assert(Date.now() < deadline, `still ${st.queued} messages at the mock, ${unanswered} edits unanswered`);
        await page.waitForTimeout(50);
      }
    };

    await check("(mock) edits on their way when another editor's change lands are not applied unseen", async () => {
      const mock = async (path) => (await fetch(new URL(path, new URL(url)))).json();
      const id = new URLSearchParams(new URL(page.url()).hash.slice(1)).get("s");
      await page.click(".cm-content");
      await page.keyboard.press("ControlOrMeta+End");
      // One unit longer than the editor's text: the page's second edit matches the server's
      // version and length, so the server applies it although it was made on the old text.
      const other = "#" + await editorText();
      await mock("/__mock/lag?ms=100");
      await mock(`/__mock/edit?session=${id}&text=${encodeURIComponent(other)}`);
      await page.keyboard.type("abc");
      const { server, editor } = await settled(id);
      await mock("/__mock/lag?ms=0");
      assert(server === editor, `server text ${JSON.stringify(server)} != editor text ${JSON.stringify(editor)}`);
      assert(editor.startsWith("#print('server')"), `the other editor's change is not in ${JSON.stringify(editor)}`);
    });

    await check("(mock) answers to edits made before a resync do not undo what was typed after it", async () => {
      const mock = async (path) => (await fetch(new URL(path, new URL(url)))).json();
      const id = new URLSearchParams(new URL(page.url()).hash.slice(1)).get("s");
      await page.click(".cm-content");
      await page.keyboard.press("ControlOrMeta+End");
      const other = "# from another tab\n" + await editorText();
      await mock("/__mock/lag?ms=200");
      await mock(`/__mock/edit?session=${id}&text=${encodeURIComponent(other)}`);
      await page.keyboard.type("xyz");
      // The first edit's resync brings the other tab's text; the answers to the two edits
      // after it are still on their way when the user types on.
      await waitFor("the other tab's text in the editor",
        (t) => [...document.querySelectorAll(".cm-content .cm-line")].map((l) => l.textContent).join("\n") === t, other);
      await page.keyboard.press("ControlOrMeta+End");
      await page.keyboard.type("de");
      const { server, editor } = await settled(id);
      await mock("/__mock/lag?ms=0");
      assert(server === editor, `server text ${JSON.stringify(server)} != editor text ${JSON.stringify(editor)}`);
      assert(editor === other + "de", `the editor holds ${JSON.stringify(editor)}, expected the other tab's text and "de"`);
    });
  }

  if (process.env.COD_SCREENSHOT) await page.screenshot({ path: process.env.COD_SCREENSHOT });
  assert(pageErrors.length === 0, `errors in the page: ${pageErrors.join("; ")}`);
  assert(foreign.length === 0, `the page loaded from elsewhere than cod: ${foreign.join(", ")}`);
}

let failed = 0;
try {
  await main();
} catch (e) {
  failed = 1;
  console.error(`browser.mjs: FAIL: ${e.message}`);
  if (page) {
    try {
      console.error(`  #status: ${JSON.stringify(await statusOf())}`);
      console.error(`  #output: ${JSON.stringify((await outputText()).slice(-2000))}`);
    } catch (_) { /* the page is gone */ }
  }
} finally {
  if (browser) await browser.close().catch(() => {});
  clearTimeout(hardStop);
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
