//! The editor's part of `cod bench`: program buffers and run latency from the editor,
//! measured against this build's router on a loopback port, through a real WebSocket.
//!
//! - **Keystrokes** into a 20 KB program: bytes on the wire each way (TCP payload: the
//!   WebSocket frame with its header and mask, counted by a wrapper around the client's
//!   socket), the round trip edit → ack, and the server's time to parse and apply one edit
//!   (`cod_session::bench::keystroke_bench`: the message's JSON text to the store's ack,
//!   the code the WebSocket handler runs, timed without the socket's noise).
//! - **Memory** of 10,000 sessions of 20 KB, each typed into: the store's estimate (kept
//!   within 5% of a counting allocator by `cod-session/tests/memory.rs`) and this process's
//!   resident memory growth, against the text itself. No counting allocator is installed in
//!   the binary: it would tax every allocation of `cod serve` for a benchmark's sake.
//! - **Run latency** from the editor: the `run` message sent → the first `out` received,
//!   for Python hello and for C++ hello once its compile-ahead has finished (and, for
//!   comparison, C++ run a second after an edit, as a person might, and C++ run right
//!   after an edit, compiling then), with how many runs found their program built. Python
//!   and C++ compiled ahead take turns, one run each, so that a busy machine weighs on both
//!   alike.
//!
//! How to run: `cod bench` calls [`bench_editor`]; its unit test runs a small version
//! (`COD_BENCH_EDITOR_FULL=1 cargo test --release -p cod --bin cod editor_bench -- --nocapture`
//! runs the full one and prints the table).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use cod_runtime::Executor;
use cod_sched::Scheduler;
use cod_server::AppState;
use cod_server::ws::{Editor, EditorConfig};
use cod_session::bench::{
    EDITS_PER_SESSION, keystroke_bench, measure_compacted_memory, measure_memory_for_sessions,
    sample_program,
};
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// The program size the goals are stated for.
pub(crate) const PROGRAM_BYTES: usize = 20_000;
/// Longest wait for any one answer of the server.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Runs before measuring each latency scenario.
const WARMUP: usize = 3;

/// How much to measure.
#[derive(Clone, Debug)]
pub(crate) struct EditorBenchOptions {
    /// Keystrokes sent over the socket (and applied in the store's own benchmark).
    pub(crate) keystrokes: usize,
    /// Sessions for the memory figure.
    pub(crate) sessions: usize,
    /// Runs per latency scenario.
    pub(crate) runs: usize,
}

impl Default for EditorBenchOptions {
    fn default() -> Self {
        EditorBenchOptions {
            keystrokes: 2_000,
            sessions: 10_000,
            runs: 20,
        }
    }
}

/// Medians (and more) of one measured quantity.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Spread {
    /// Median.
    pub(crate) median: f64,
    /// 99th percentile.
    pub(crate) p99: f64,
    /// Smallest.
    pub(crate) min: f64,
}

fn spread(mut v: Vec<f64>) -> Spread {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        // The index lies within 0..len by construction.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let i = (q * (v.len().saturating_sub(1)) as f64).round() as usize;
        v.get(i.min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Spread {
        median: at(0.5),
        p99: at(0.99),
        min: v.first().copied().unwrap_or(0.0),
    }
}

/// Per keystroke into a 20 KB program.
#[derive(Debug, Serialize)]
pub(crate) struct KeystrokeReport {
    /// Size of the program typed into.
    pub(crate) program_bytes: usize,
    /// Keystrokes sent over the socket.
    pub(crate) keystrokes: usize,
    /// Bytes client → server per keystroke (the edit's frame).
    pub(crate) wire_up_bytes: Spread,
    /// Bytes server → client per keystroke (the ack's frame).
    pub(crate) wire_down_bytes: Spread,
    /// Edit sent → ack received, µs (loopback).
    pub(crate) round_trip_us: Spread,
    /// The server's time to parse and apply one edit message, µs: median.
    pub(crate) apply_median_us: f64,
    /// The same, 99th percentile.
    pub(crate) apply_p99_us: f64,
}

/// Memory of many sessions.
#[derive(Debug, Serialize)]
pub(crate) struct MemoryReport {
    /// Sessions held.
    pub(crate) sessions: usize,
    /// Keystrokes typed into each at random places.
    pub(crate) keystrokes_each: usize,
    /// Their texts together, bytes.
    pub(crate) text_bytes: usize,
    /// The store's estimate of its heap, bytes.
    pub(crate) estimate_bytes: usize,
    /// Growth of this process's resident memory while the sessions were made, bytes.
    pub(crate) rss_bytes: usize,
    /// The store's estimate after `compact_idle` (what idle sessions settle to), bytes.
    pub(crate) compacted_estimate_bytes: usize,
}

/// One run-latency scenario.
#[derive(Debug, Serialize)]
pub(crate) struct LatencyRow {
    /// What was run.
    pub(crate) scenario: String,
    /// Runs measured.
    pub(crate) runs: usize,
    /// `run` sent → first `out` received, ms.
    pub(crate) first_byte_ms: Spread,
    /// `run` sent → `exit` received, ms.
    pub(crate) exit_ms: Spread,
    /// The program's own wall time as the sandbox measured it (`exit.wall_ms`), ms.
    pub(crate) program_wall_ms: Spread,
    /// For compile-ahead: the edit's ack → `compiled`, ms.
    pub(crate) compile_ahead_ms: Option<Spread>,
    /// For a compiled language: runs that found their program built (`compile.cached`:
    /// compiled ahead, or joining the compile-ahead still running).
    pub(crate) built_ahead: Option<usize>,
}

/// Everything [`bench_editor`] measured.
#[derive(Debug, Serialize)]
pub(crate) struct EditorReport {
    /// Keystrokes.
    pub(crate) keystroke: KeystrokeReport,
    /// Memory of sessions.
    pub(crate) memory: MemoryReport,
    /// Run latency from the editor.
    pub(crate) latency: Vec<LatencyRow>,
}

/// Measures the editor with `executor` (its compile cache included) on `workers` slots.
/// Starts its own tokio runtime: call it outside any runtime. Languages missing on this
/// host are left out of the latency table.
pub(crate) fn bench_editor(
    executor: Arc<Executor>,
    workers: usize,
    opts: &EditorBenchOptions,
) -> anyhow::Result<EditorReport> {
    // Memory first, on a quiet heap.
    let memory = memory(opts.sessions);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let editor = Editor::new(EditorConfig::default()).context("the editor's settings")?;
        let state = AppState::new(executor, Scheduler::new(workers.max(1), 64), 4 << 20)
            .with_editor(editor);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a loopback port")?;
        let addr = listener.local_addr()?;
        let app = cod_server::app(state.clone());
        let never = std::future::pending::<()>();
        let server = tokio::spawn(cod_server::serve(listener, app, never, Duration::ZERO));
        let result = async {
            let keystroke = keystrokes(addr, opts.keystrokes).await?;
            let latency = latency(&state, addr, opts.runs).await?;
            anyhow::Ok((keystroke, latency))
        }
        .await;
        server.abort();
        let (keystroke, latency) = result?;
        Ok(EditorReport {
            keystroke,
            memory,
            latency,
        })
    })
}

/// A socket that counts the bytes it carries.
struct Counted {
    inner: TcpStream,
    read: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &r {
            self.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A WebSocket client of the editor's protocol.
struct Client<S> {
    ws: WebSocketStream<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn send(&mut self, v: &Value) -> anyhow::Result<()> {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .context("sending a message")
    }

    async fn next(&mut self) -> anyhow::Result<Value> {
        loop {
            let msg = tokio::time::timeout(ANSWER_TIMEOUT, self.ws.next())
                .await
                .context("no answer from the server")?;
            match msg {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                other => bail!("the connection ended: {other:?}"),
            }
        }
    }

    /// The next message of type `ty`; errors on an `error`.
    async fn until(&mut self, ty: &str) -> anyhow::Result<Value> {
        loop {
            let v = self.next().await?;
            if v["type"] == ty {
                return Ok(v);
            }
            if v["type"] == "error" {
                bail!("the server answered {v}");
            }
        }
    }

    async fn open(&mut self, language: &str, text: &str) -> anyhow::Result<Value> {
        self.send(&json!({"type": "open", "language": language, "text": text}))
            .await?;
        self.until("opened").await
    }
}

async fn connect(
    addr: std::net::SocketAddr,
) -> anyhow::Result<Client<tokio_tungstenite::MaybeTlsStream<TcpStream>>> {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/v1/ws"))
        .await
        .context("connecting to the WebSocket")?;
    Ok(Client { ws })
}

/// A deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        usize::try_from(z % (n.max(1) as u64)).unwrap_or(0)
    }
}

async fn keystrokes(addr: std::net::SocketAddr, n: usize) -> anyhow::Result<KeystrokeReport> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (read, written) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let counted = Counted {
        inner: stream,
        read: read.clone(),
        written: written.clone(),
    };
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/api/v1/ws"), counted)
        .await
        .context("the WebSocket handshake")?;
    let mut c = Client { ws };
    let program = sample_program(PROGRAM_BYTES);
    c.open("python", &program).await?;
    // The client's document in UTF-16 units, as CodeMirror counts.
    let mut doc: Vec<u16> = program.encode_utf16().collect();
    let mut rng = Rng(0x5EED);
    const TYPED: &[&str] = &["e", "t", "a", "o", " ", "(", ")", "=", "\n", "1", "😀"];
    let (mut up, mut down, mut rtt) = (Vec::new(), Vec::new(), Vec::new());
    for version in 0..n {
        let mut at = rng.below(doc.len() + 1);
        if at < doc.len() && (0xDC00..0xE000).contains(&doc[at]) {
            at -= 1;
        }
        let typed = TYPED[rng.below(TYPED.len())];
        let set = cod_session::ChangeSet::from_changes(doc.len(), &[(at, at, typed)])
            .context("a keystroke inside the document")?;
        let msg = json!({"type": "edit", "version": version, "changes": set});
        doc.splice(at..at, typed.encode_utf16());
        let (w0, r0, t0) = (
            written.load(Ordering::Relaxed),
            read.load(Ordering::Relaxed),
            Instant::now(),
        );
        c.send(&msg).await?;
        let ack = c.until("ack").await?;
        rtt.push(t0.elapsed().as_secs_f64() * 1e6);
        if ack["version"] != version + 1 {
            bail!("unexpected ack {ack}");
        }
        up.push((written.load(Ordering::Relaxed) - w0) as f64);
        down.push((read.load(Ordering::Relaxed) - r0) as f64);
    }
    let k = keystroke_bench(PROGRAM_BYTES, n.max(1000));
    Ok(KeystrokeReport {
        program_bytes: PROGRAM_BYTES,
        keystrokes: n,
        wire_up_bytes: spread(up),
        wire_down_bytes: spread(down),
        round_trip_us: spread(rtt),
        apply_median_us: k.median.as_secs_f64() * 1e6,
        apply_p99_us: k.p99.as_secs_f64() * 1e6,
    })
}

/// Resident memory of this process, bytes.
fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn memory(sessions: usize) -> MemoryReport {
    let m = measure_memory_for_sessions(sessions, PROGRAM_BYTES, EDITS_PER_SESSION, rss_bytes);
    let c = measure_compacted_memory(sessions, PROGRAM_BYTES, EDITS_PER_SESSION, || 0);
    MemoryReport {
        sessions: m.estimate.sessions,
        keystrokes_each: EDITS_PER_SESSION,
        text_bytes: m.estimate.text_bytes,
        estimate_bytes: m.estimate.heap_bytes,
        rss_bytes: m.measured_heap_bytes,
        compacted_estimate_bytes: c.estimate.heap_bytes,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// What [`run_once`] measured.
struct RunFigures {
    first_byte: Duration,
    exit: Duration,
    /// The program's wall time in the exit, ms.
    wall_ms: f64,
    /// The exit's `compile.cached`.
    cached: bool,
}

/// One run from the editor: sends `run` for `version` and times its first byte and exit.
async fn run_once<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Client<S>,
    version: u64,
) -> anyhow::Result<RunFigures> {
    let t0 = Instant::now();
    c.send(&json!({"type": "run", "version": version})).await?;
    let mut first = None;
    loop {
        let v = c.next().await?;
        match v["type"].as_str() {
            Some("out") if first.is_none() => first = Some(t0.elapsed()),
            Some("exit") => {
                if v["status"] != "ok" {
                    bail!("the run failed: {v}");
                }
                let first = first.context("the run printed nothing")?;
                #[allow(clippy::cast_precision_loss)] // milliseconds
                let wall_ms = v["wall_ms"].as_u64().unwrap_or(0) as f64;
                return Ok(RunFigures {
                    first_byte: first,
                    exit: t0.elapsed(),
                    wall_ms,
                    cached: v["compile"]["cached"] == true,
                });
            }
            Some("error") => bail!("the server answered {v}"),
            _ => {}
        }
    }
}

/// The program of `language` with its text changed at iteration `i` (a comment), so that
/// each run is of a new version, never compiled before.
fn variant(hello: &str, comment: &str, i: usize) -> String {
    format!("{comment} run {i}\n{hello}")
}

async fn latency(
    st: &AppState,
    addr: std::net::SocketAddr,
    runs: usize,
) -> anyhow::Result<Vec<LatencyRow>> {
    let registry = st.executor.registry();
    let hello = |name: &str| {
        registry
            .get(name)
            .filter(|l| l.available())
            .map(|l| l.hello.clone())
    };
    // The two the goal compares take turns, one run each: whatever else the machine does
    // meanwhile weighs on both alike. C++ compiled at Run comes after, on its own: its
    // compiles would otherwise burden the others' runs.
    let mut compared = Vec::new();
    if let Some(py) = hello("python") {
        compared.push(
            Scenario::open(addr, "python hello", "python", &py, "#", Mode::Interpreted).await?,
        );
    }
    let cpp = hello("cpp");
    if let Some(cpp) = &cpp {
        compared.push(
            Scenario::open(
                addr,
                "cpp hello, compiled ahead",
                "cpp",
                cpp,
                "//",
                Mode::AfterCompileAhead,
            )
            .await?,
        );
    }
    for i in 0..WARMUP + runs {
        for s in &mut compared {
            s.step(i, i >= WARMUP).await?;
        }
    }
    let mut rows: Vec<LatencyRow> = compared.into_iter().map(Scenario::row).collect();
    if let Some(cpp) = &cpp {
        let others = [
            (
                "cpp hello, Run 1 s after the edit",
                Mode::RunAfterPause(Duration::from_secs(1)),
            ),
            ("cpp hello, Run at once (compiles)", Mode::RunAtOnce),
        ];
        for (name, mode) in others {
            let mut s = Scenario::open(addr, name, "cpp", cpp, "//", mode).await?;
            for i in 0..WARMUP + runs {
                s.step(i, i >= WARMUP).await?;
            }
            rows.push(s.row());
        }
    }
    Ok(rows)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Run at once (an interpreted language).
    Interpreted,
    /// Run once the server said it has compiled the version ahead.
    AfterCompileAhead,
    /// Run this long after the edit's ack, as a person would: the compile-ahead may be
    /// done, running, or (shorter than its delay) not started.
    RunAfterPause(Duration),
    /// Run at once after the edit: the run compiles.
    RunAtOnce,
}

/// One latency scenario: its own connection and session, and what it measured so far.
struct Scenario {
    name: String,
    mode: Mode,
    comment: String,
    hello: String,
    /// Distinct texts per scenario and process: nothing is cached from before.
    salt: String,
    c: Client<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    text: String,
    version: u64,
    /// The language compiles.
    compiled: bool,
    first_byte: Vec<f64>,
    exit: Vec<f64>,
    wall: Vec<f64>,
    ahead: Vec<f64>,
    built_ahead: usize,
}

impl Scenario {
    async fn open(
        addr: std::net::SocketAddr,
        name: &str,
        language: &str,
        hello: &str,
        comment: &str,
        mode: Mode,
    ) -> anyhow::Result<Scenario> {
        let mut c = connect(addr).await?;
        let salt = format!("{} {}", std::process::id(), name);
        let first = variant(hello, comment, 0);
        let opened = c
            .open(language, &format!("{comment} {salt}\n{first}"))
            .await?;
        Ok(Scenario {
            name: name.to_owned(),
            mode,
            comment: comment.to_owned(),
            hello: hello.to_owned(),
            salt,
            text: opened["text"].as_str().unwrap_or_default().to_owned(),
            version: opened["version"].as_u64().unwrap_or(0),
            c,
            compiled: mode != Mode::Interpreted,
            first_byte: Vec::new(),
            exit: Vec::new(),
            wall: Vec::new(),
            ahead: Vec::new(),
            built_ahead: 0,
        })
    }

    /// Types version `i + 1` of the program and runs it; `measured`: keeps the figures.
    async fn step(&mut self, i: usize, measured: bool) -> anyhow::Result<()> {
        let c = &mut self.c;
        // Type a new version: replace the whole text (one edit, as a paste would).
        let next = format!(
            "{} {}\n{}",
            self.comment,
            self.salt,
            variant(&self.hello, &self.comment, i + 1)
        );
        let len = self.text.encode_utf16().count();
        let mut replace = vec![json!(len)];
        // CodeMirror's JSON gives an inserted text line by line.
        replace.extend(next.split('\n').map(|l| json!(l)));
        c.send(&json!({"type": "edit", "version": self.version, "changes": [replace]}))
            .await?;
        let ack = c.until("ack").await?;
        let acked = Instant::now();
        self.version = ack["version"].as_u64().context("an ack has a version")?;
        self.text = next;
        if self.mode == Mode::AfterCompileAhead {
            loop {
                let done = c.until("compiled").await?;
                if done["version"] == self.version {
                    if done["status"] != "ok" {
                        bail!("compiling ahead failed: {done}");
                    }
                    break;
                }
            }
            if measured {
                self.ahead.push(ms(acked.elapsed()));
            }
        }
        if let Mode::RunAfterPause(pause) = self.mode {
            // The user looks the program over before pressing Run (the time is what is
            // measured here, not a wait for something).
            tokio::time::sleep(pause).await;
        }
        let r = run_once(c, self.version).await?;
        if measured {
            self.first_byte.push(ms(r.first_byte));
            self.exit.push(ms(r.exit));
            self.wall.push(r.wall_ms);
            self.built_ahead += usize::from(r.cached);
        }
        Ok(())
    }

    fn row(self) -> LatencyRow {
        LatencyRow {
            scenario: self.name,
            runs: self.first_byte.len(),
            first_byte_ms: spread(self.first_byte),
            exit_ms: spread(self.exit),
            program_wall_ms: spread(self.wall),
            compile_ahead_ms: (!self.ahead.is_empty()).then(|| spread(self.ahead)),
            built_ahead: self.compiled.then_some(self.built_ahead),
        }
    }
}

impl EditorReport {
    /// Prints the figures with their goals.
    pub(crate) fn print(&self) {
        let k = &self.keystroke;
        println!(
            "\neditor: keystrokes into a {} KB program ({} over a loopback WebSocket)",
            k.program_bytes / 1000,
            k.keystrokes
        );
        println!(
            "  on the wire per keystroke: {:.0} B up (edit), {:.0} B down (ack), median; goal <= 200 B",
            k.wire_up_bytes.median, k.wire_down_bytes.median
        );
        println!(
            "  server apply (parse + apply): {:.2} us median, {:.2} us p99; goal <= 50 us",
            k.apply_median_us, k.apply_p99_us
        );
        println!(
            "  edit -> ack round trip: {:.0} us median, {:.0} us p99",
            k.round_trip_us.median, k.round_trip_us.p99
        );
        let m = &self.memory;
        let ratio = |b: usize| b as f64 / m.text_bytes.max(1) as f64;
        println!(
            "editor: {} sessions of {} KB, {} keystrokes each: text {:.1} MB; estimate {:.1} MB ({:.2}x), \
             RSS growth {:.1} MB ({:.2}x), after compact_idle {:.2}x; goal <= 2.5x",
            m.sessions,
            PROGRAM_BYTES / 1000,
            m.keystrokes_each,
            m.text_bytes as f64 / 1e6,
            m.estimate_bytes as f64 / 1e6,
            ratio(m.estimate_bytes),
            m.rss_bytes as f64 / 1e6,
            ratio(m.rss_bytes),
            ratio(m.compacted_estimate_bytes),
        );
        println!("editor: Run pressed -> first output byte over the WebSocket, ms");
        println!(
            "  {:<36} {:>5} {:>16} {:>16} {:>16} {:>18} {:>12}",
            "scenario",
            "runs",
            "first byte",
            "exit",
            "program wall",
            "compile-ahead",
            "built ahead"
        );
        for r in &self.latency {
            let fmt = |s: &Spread| format!("{:.1} ({:.1})", s.median, s.p99);
            println!(
                "  {:<36} {:>5} {:>16} {:>16} {:>16} {:>18} {:>12}",
                r.scenario,
                r.runs,
                fmt(&r.first_byte_ms),
                fmt(&r.exit_ms),
                fmt(&r.program_wall_ms),
                r.compile_ahead_ms.as_ref().map_or("-".to_owned(), fmt),
                r.built_ahead
                    .map_or("-".to_owned(), |n| format!("{n}/{}", r.runs)),
            );
        }
        println!(
            "  (median (p99); python and cpp compiled ahead take turns; goal: C++ compiled ahead no slower than Python)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sandbox helper, from the `cod` binary beside this test's (`target/<profile>/cod`,
    /// built with the tests): a unit test's own executable is the test harness.
    fn jail(registry: &cod_runtime::Registry) -> Arc<cod_sandbox::Jail> {
        let exe = std::env::current_exe().unwrap();
        let cod = exe.parent().and_then(|d| d.parent()).unwrap().join("cod");
        assert!(
            cod.exists(),
            "{} is missing: build the cod binary first",
            cod.display()
        );
        let host = cod_runtime::HostLayout::detect().with_languages(registry);
        let disk = cod_core::limits::LimitsSpec::DEFAULT.to_limits().disk.get();
        let config = cod_sandbox::JailConfig {
            slots: 2,
            prepared: Some(host.layout(disk)),
            warm: cod_runtime::warm_runtimes(registry, &host, disk),
            ..Default::default()
        };
        Arc::new(
            cod_sandbox::Jail::spawn(&cod, &[std::ffi::OsStr::new(crate::JAIL_ARG)], &config)
                .expect("the sandbox helper starts (tests run as root)"),
        )
    }

    /// A small run of the whole benchmark against the real sandbox (as root, like every
    /// sandbox test). `COD_BENCH_EDITOR_FULL=1` runs the full size and prints the table.
    #[test]
    fn editor_bench_measures_every_figure() {
        let full = std::env::var_os("COD_BENCH_EDITOR_FULL").is_some();
        let opts = if full {
            EditorBenchOptions::default()
        } else {
            EditorBenchOptions {
                keystrokes: 200,
                sessions: 200,
                runs: 3,
            }
        };
        let mut config = cod_core::Config::default();
        config.cache.dir = std::path::PathBuf::new();
        let registry = super::super::load_registry(&config).unwrap();
        // As `cod serve` has it: slots keep Python warm.
        let jail = jail(&registry);
        let mut executor = Executor::new(jail.clone(), registry.clone(), config.limits);
        if let Some(pool) = super::super::start_pool(&config, &jail, &registry) {
            executor = executor.with_pool(pool);
        }
        let executor = Arc::new(executor);
        let report = bench_editor(executor, 2, &opts).unwrap();
        report.print();
        let k = &report.keystroke;
        assert!(
            k.wire_up_bytes.median > 30.0 && k.wire_up_bytes.median <= 200.0,
            "{k:?}"
        );
        assert!(k.wire_down_bytes.median > 0.0, "{k:?}");
        let m = &report.memory;
        assert_eq!(m.sessions, opts.sessions);
        assert!(
            m.estimate_bytes as f64 <= 2.5 * m.text_bytes as f64,
            "{m:?}"
        );
        assert!(!report.latency.is_empty());
        for r in &report.latency {
            assert!(
                r.first_byte_ms.median > 0.0 && r.first_byte_ms.median <= r.exit_ms.median,
                "{r:?}"
            );
            // Compiled ahead, every run finds its program built; run at once, none does.
            if r.scenario.contains("compiled ahead") {
                assert_eq!(r.built_ahead, Some(r.runs), "{r:?}");
            } else if r.scenario.contains("Run at once") {
                assert_eq!(r.built_ahead, Some(0), "{r:?}");
            }
        }
    }
}
