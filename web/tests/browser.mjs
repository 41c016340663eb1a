// End-to-end test of the web editor in Debian's Chromium (playwright-core, no downloaded
// browser). Needs a running server: the real `cod serve`, or tests/mock-server.mjs.
//
//   COD_URL=http://127.0.0.1:2000/ node web/tests/browser.mjs
//
// Env: COD_URL (required), CHROMIUM (default /usr/bin/chromium), COD_MOCK=1 adds a reconnect
// check that needs the mock's /__mock/* routes, COD_SCREENSHOT=FILE saves a picture at the end.
// Exits 0 when every check passed; prints "N passed, M failed" last.

import { chromium } from "playwright-core";

const url = process.env.COD_URL;
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const OVERALL_MS = 60000;
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
    await typeProgram("while True: pass");
    await page.click("#run");
    await waitFor("body[data-running=1]", () => document.body.dataset.running === "1");
    // Give the server a moment to start it, bounded; a server that sends no "stage" is fine too.
    await page.waitForFunction(() => /running/.test(document.querySelector("#status").textContent), null, { timeout: 5000 })
      .catch(() => {});
    await page.click("#stop");
    await waitFor("the run to end after Stop", () => !document.body.dataset.running);
    const st = await statusOf();
    assert(st.status && !["ok", "running", "ready", "loading"].includes(st.status),
      `after Stop the status is ${JSON.stringify(st)}`);
    console.log(`   status after Stop: ${st.text}`);
  });

  await check("a reload resumes the session", async () => {
    const before = page.url();
    await page.reload({ timeout: STEP_MS });
    await waitFor("body[data-ready=1] after the reload", () => document.body.dataset.ready === "1");
    assert(page.url() === before, `the URL changed from ${before} to ${page.url()}`);
    await waitFor("the endless program in the editor",
      () => [...document.querySelectorAll(".cm-content .cm-line")].map((l) => l.textContent).join("\n") === "while True: pass")
      .catch(async (e) => { throw new Error(`${e.message}; the editor holds ${JSON.stringify(await editorText())}`); });
    const lang = await page.$eval("#language", (s) => s.value);
    assert(lang === "python", `the picker shows ${lang} after the reload`);
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
  }

  if (process.env.COD_SCREENSHOT) await page.screenshot({ path: process.env.COD_SCREENSHOT });
  assert(pageErrors.length === 0, `errors in the page: ${pageErrors.join("; ")}`);
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
