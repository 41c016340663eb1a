//! Runs from the editor's WebSocket, in the real sandbox: output streamed as it is written
//! (and cut at the output limit), interactive stdin, kill, a disconnect during a run, a slow
//! reader, compile-ahead, and `POST /api/v1/run?stream=true` (its events, and a client that
//! hangs up). The protocol without runs is in `ws.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report
#![allow(clippy::cast_precision_loss)] // clock readings as f64 seconds

mod common;
mod ws_support;

use std::time::{Duration, Instant};

use cod_core::Bytes;
use cod_core::limits::LimitsPolicy;
use cod_server::ws::{Editor, EditorConfig, OUTPUT_BUDGET};
use cod_session::StoreConfig;
use serde_json::{Value, json};
use ws_support::{Client, output, serve, stages, within};

/// A change replacing the whole document of `len` units with `text` (in CodeMirror's JSON
/// form, an inserted text is given line by line).
fn replace_all(len: usize, text: &str) -> Value {
    let mut part = vec![json!(len)];
    part.extend(text.split('\n').map(|l| json!(l)));
    Value::Array(part)
}

/// CLOCK_MONOTONIC in seconds, the clock Python's `time.monotonic()` reads.
fn monotonic() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

fn editor(compile_ahead: bool, delay_ms: u64) -> Editor {
    Editor::new(EditorConfig {
        store: StoreConfig::default(),
        compile_ahead,
        compile_ahead_delay: Duration::from_millis(delay_ms),
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_flushed_line_arrives_before_the_next_is_printed() {
    let server = serve(common::state()).await;
    let mut c = Client::connect(server.addr).await;
    let src = "import time\nfor i in range(5):\n    print(i, time.monotonic(), flush=True)\n    time.sleep(0.1)\n";
    c.open("python", src, None).await;
    c.send(json!({"type": "run", "version": 0})).await;
    let mut lines = Vec::new();
    let exit = loop {
        let v = c.next().await;
        match v["type"].as_str().unwrap() {
            "out" => {
                let got = monotonic();
                assert_eq!(v["stream"], "stdout", "{v}");
                for l in v["data"].as_str().unwrap().lines() {
                    let printed: f64 = l.split_whitespace().nth(1).unwrap().parse().unwrap();
                    lines.push((printed, got));
                }
            }
            "exit" => break v,
            "stage" => assert_eq!(v["stage"], "run"),
            other => panic!("unexpected {other}: {v}"),
        }
    };
    assert_eq!(exit["status"], "ok", "{exit}");
    assert_eq!(lines.len(), 5, "{lines:?}");
    for w in lines.windows(2) {
        let ((_, got), (next_printed, _)) = (w[0], w[1]);
        assert!(
            got < next_printed,
            "a line arrived after the next was printed: {lines:?}"
        );
    }
    for (printed, got) in &lines {
        assert!(
            got - printed < 0.05,
            "a line took {:.3} s to arrive",
            got - printed
        );
    }
    // The exit carries the whole run result, output included.
    assert_eq!(exit["stdout"].as_str().unwrap().lines().count(), 5);
    assert_eq!(exit["language"], "python");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interactive_program_is_answered_over_the_socket() {
    let server = serve(common::state()).await;
    let mut c = Client::connect(server.addr).await;
    c.open("python", "name = input()\nprint(\"hi\", name)\n", None)
        .await;
    c.send(json!({"type": "run", "version": 0})).await;
    // The program waits for input while the user types.
    assert_eq!(c.expect("stage").await["stage"], "run");
    c.send(json!({"type": "stdin", "data": "Ada"})).await;
    c.send(json!({"type": "stdin", "data": "\n"})).await;
    let (events, exit) = c.until("exit").await;
    assert_eq!(output(&events, "stdout"), "hi Ada\n");
    assert_eq!(exit["status"], "ok", "{exit}");
    assert_eq!(exit["stdout"], "hi Ada\n");

    // A run message's own stdin is all the input: the program sees its end.
    let (events, exit) = c.run(0, json!({"stdin": "Bob\n"})).await;
    assert_eq!(output(&events, "stdout"), "hi Bob\n", "{exit}");
    let (events, exit) = c.run(0, json!({"stdin": ""})).await;
    assert_eq!(exit["status"], "runtime_error", "{exit}");
    assert!(output(&events, "stderr").contains("EOFError"), "{events:?}");

    // stdin_close ends the input of an interactive run; more stdin is an error.
    c.send(json!({"type": "run", "version": 0})).await;
    c.send(json!({"type": "stdin_close"})).await;
    c.send(json!({"type": "stdin", "data": "late"})).await;
    let (_, err) = c.until("error").await;
    assert_eq!(err["error"], "stdin: the program's input is closed");
    let (_, exit) = c.until("exit").await;
    assert_eq!(exit["status"], "runtime_error", "{exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_stops_a_run_and_is_followed_by_its_exit() {
    let server = serve(common::state()).await;
    let mut c = Client::connect(server.addr).await;
    let src = "print('start', flush=True)\nwhile True: pass\n";
    c.open("python", src, None).await;
    for close_first in [false, true] {
        c.send(json!({"type": "run", "version": 0})).await;
        // A second run while one is active is refused.
        c.send(json!({"type": "run", "version": 0})).await;
        let (mut refused, mut started) = (false, false);
        while !(refused && started) {
            let v = c.next().await;
            match v["type"].as_str().unwrap() {
                "error" => {
                    let e = v["error"].as_str().unwrap();
                    assert!(e.starts_with("run: a run is already active"), "{v}");
                    refused = true;
                }
                "out" => {
                    assert_eq!(v["data"], "start\n");
                    started = true;
                }
                "stage" => {}
                _ => panic!("unexpected {v}"),
            }
        }
        if close_first {
            c.send(json!({"type": "stdin_close"})).await;
        }
        let killed = Instant::now();
        c.send(json!({"type": "kill"})).await;
        let (_, exit) = c.until("exit").await;
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "{:?}",
            killed.elapsed()
        );
        assert_eq!(exit["status"], "runtime_error", "{exit}");
        assert_eq!(exit["signal"], "SIGKILL", "{exit}");
        // The connection is free for the next run.
    }
    let (events, exit) = {
        c.send(json!({"type": "edit", "version": 0, "changes": [[src.len(), "print('again')"]]}))
            .await;
        c.expect("ack").await;
        c.run(1, json!({})).await
    };
    assert_eq!(output(&events, "stdout"), "again\n", "{exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_during_a_run_kills_it_and_frees_its_slot() {
    // One worker: the next run can only start once the abandoned one is gone.
    let st = common::state_with(1, 4, 1 << 20, LimitsPolicy::default());
    let server = serve(st).await;
    let mut a = Client::connect(server.addr).await;
    a.open(
        "python",
        "print('spinning', flush=True)\nwhile True: pass\n",
        None,
    )
    .await;
    a.send(json!({"type": "run", "version": 0})).await;
    a.until("out").await;
    drop(a);
    let mut b = Client::connect(server.addr).await;
    b.open("python", "print('next')", None).await;
    let started = Instant::now();
    let (events, exit) = b.run(0, json!({})).await;
    assert_eq!(output(&events, "stdout"), "next\n", "{exit}");
    // Well before the abandoned run's 10 s wall limit.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_holds_the_program_back_not_server_memory() {
    let server = serve(common::state()).await;
    let mut c = Client::connect(server.addr).await;
    // 12 MiB of output, far more than the socket takes while the client dawdles.
    let mib = 12;
    let src = format!(
        "import sys\nb = b'x' * 65535 + b'\\n'\nfor i in range({}):\n    sys.stdout.buffer.write(b)\n    sys.stdout.flush()\n",
        mib * 16
    );
    c.open("python", &src, None).await;
    c.send(json!({"type": "run", "version": 0, "limits": {"output_kb": 16384}}))
        .await;
    let mut received = 0usize;
    let exit = loop {
        let v = c.next().await;
        match v["type"].as_str().unwrap() {
            "out" => {
                received += v["data"].as_str().unwrap().len();
                // A slow client: it takes 2 ms over every 16 KiB message (the sleep is the
                // behaviour under test, not a wait for an event).
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            "exit" => break v,
            _ => {}
        }
    };
    let stats = server.state.editor.stats();
    assert_eq!(exit["status"], "ok", "{}", exit["message"]);
    println!("{stats:?}; the program's wall time {} ms", exit["wall_ms"]);
    assert_eq!(received, mib << 20);
    // What cod held of the output for the client at any time: its budget, not the 12 MiB
    // the program wrote (the `exit` carries the whole result, which the output limits
    // bound; it is not streamed output).
    assert!(
        stats.max_buffered_output_bytes <= OUTPUT_BUDGET,
        "cod held {} bytes of output for a slow client",
        stats.max_buffered_output_bytes
    );
    assert!(stats.max_buffered_output_bytes > 0);
    // The program was held back by the reader: 768 messages at 2 ms or more each.
    assert!(
        exit["wall_ms"].as_u64().unwrap() >= 1000,
        "{}",
        exit["wall_ms"]
    );
    assert_eq!(server.state.editor.stats().buffered_bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_output_stops_at_the_output_limit() {
    let server = serve(common::state()).await;
    let mut c = Client::connect(server.addr).await;
    // 1 MiB to stdout against a limit of 16 KiB.
    let src = "import sys\nfor i in range(1024):\n    sys.stdout.write('y' * 1023 + '\\n')\n    sys.stdout.flush()\n";
    c.open("python", src, None).await;
    let (events, exit) = c.run(0, json!({"limits": {"output_kb": 16}})).await;
    assert_eq!(exit["status"], "output_limit", "{}", exit["message"]);
    assert_eq!(exit["stdout_truncated"], true);
    let streamed = output(&events, "stdout");
    assert!(
        !streamed.is_empty() && streamed.len() <= 16 * 1024,
        "{} bytes streamed",
        streamed.len()
    );
    assert_eq!(streamed, exit["stdout"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compile_ahead_builds_an_idle_buffer_so_run_only_starts_it() {
    let st = common::state().with_editor(editor(true, 50));
    let server = serve(st).await;
    let mut c = Client::connect(server.addr).await;
    let src = "#include <stdio.h>\nint main(void) { puts(\"ahead\"); return 0; }\n";
    c.open("c", src, None).await;
    // Left alone, the buffer is compiled in the background.
    let compiled = c.expect("compiled").await;
    assert_eq!(
        (
            compiled["version"].as_u64(),
            compiled["status"].as_str(),
            compiled["cached"].as_bool()
        ),
        (Some(0), Some("ok"), Some(false)),
        "{compiled}"
    );
    assert_eq!(compiled["language"], "c");
    let (events, exit) = c.run(0, json!({})).await;
    assert_eq!(stages(&events), ["run"], "no compile stage: {events:?}");
    assert_eq!(exit["compile"]["cached"], true, "{exit}");
    assert_eq!(output(&events, "stdout"), "ahead\n");

    // A compile error found ahead is reported as such, and a run reports it too.
    c.send(json!({"type": "edit", "version": 0, "changes": [[0, "oops "], src.len()]}))
        .await;
    c.expect("ack").await;
    let compiled = c.expect("compiled").await;
    assert_eq!(
        (compiled["version"].as_u64(), compiled["status"].as_str()),
        (Some(1), Some("compile_error")),
        "{compiled}"
    );
    let (_, exit) = c.run(1, json!({})).await;
    assert_eq!(exit["status"], "compile_error", "{exit}");
    assert!(
        exit["compile"]["stderr"].as_str().unwrap().contains("oops"),
        "{exit}"
    );

    let counters = server.state.editor.stats().counters;
    assert_eq!(counters.compile_ahead_compiled, 2, "{counters:?}");
    assert_eq!(counters.compile_ahead_cancelled, 0, "{counters:?}");
}

/// About ten seconds of constant evaluation in g++ (it ends in an error about the
/// evaluation limit; what matters is that it takes long).
const SLOW_CPP: &str = "constexpr long spin(long n, long k) { long s = k; for (long i = 0; i < n; ++i) for (long j = 0; j < 100000; ++j) s += i ^ j; return s; }\nconstexpr long a = spin(30, 1), b = spin(30, 2);\nint main() { return a + b == 1; }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_edit_cancels_a_stale_compile_ahead() {
    // One worker: the compile-ahead takes the only slot.
    let st =
        common::state_with(1, 4, 1 << 20, LimitsPolicy::default()).with_editor(editor(true, 50));
    let server = serve(st).await;
    let editor = server.state.editor.clone();
    let mut counters = editor.watch_counters();
    let mut c = Client::connect(server.addr).await;
    c.open("cpp", SLOW_CPP, None).await;
    within(
        "the compile-ahead to start",
        counters.wait_for(|c| c.compile_ahead_started == 1),
    )
    .await
    .unwrap();
    // The user types: the compile of version 0 is stale.
    let fast = "#include <cstdio>\nint main() { std::puts(\"fresh\"); }\n";
    let edited = Instant::now();
    c.send(json!({"type": "edit", "version": 0, "changes": [replace_all(SLOW_CPP.len(), fast)]}))
        .await;
    c.expect("ack").await;
    within(
        "the stale compile to be cancelled",
        counters.wait_for(|c| c.compile_ahead_cancelled == 1),
    )
    .await
    .unwrap();
    // Its slot is free at once: version 1 is compiled ahead and runs, long before the
    // stale compile would have ended.
    let compiled = c.expect("compiled").await;
    assert_eq!(
        (compiled["version"].as_u64(), compiled["status"].as_str()),
        (Some(1), Some("ok")),
        "{compiled}"
    );
    let (events, exit) = c.run(1, json!({})).await;
    assert_eq!(output(&events, "stdout"), "fresh\n", "{exit}");
    assert!(
        edited.elapsed() < Duration::from_secs(8),
        "{:?}",
        edited.elapsed()
    );
    // Nothing of the stale compile reached the cache.
    let stale = server
        .state
        .executor
        .prepare(&serde_json::from_value(json!({"language": "cpp", "source": SLOW_CPP})).unwrap())
        .unwrap();
    assert!(
        server
            .state
            .executor
            .cache()
            .get(&stale.cache_key().unwrap())
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_uses_exactly_the_version_it_names_and_its_language() {
    let server = serve(common::state()).await;
    let mut c = Client::connect(server.addr).await;
    c.open("python", "print('v0')", None).await;
    c.send(json!({"type": "edit", "version": 0, "changes": [[11, "print('v1')"]]}))
        .await;
    c.expect("ack").await;
    c.send(json!({"type": "run", "version": 0})).await;
    assert_eq!(
        c.expect("error").await["error"],
        "run: version: 0 is not the current version 1"
    );
    let (events, _) = c.run(1, json!({"args": ["a"]})).await;
    assert_eq!(output(&events, "stdout"), "v1\n");
    // Another language for the same buffer, and its compiler's output while compiling.
    c.send(json!({"type": "language", "language": "c"})).await;
    let (events, exit) = c.run(1, json!({})).await;
    assert_eq!(exit["status"], "compile_error", "{exit}");
    assert_eq!(stages(&events), ["compile"]);
    assert!(output(&events, "stderr").contains("error"), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_true_answers_newline_delimited_events() {
    let st = common::state();
    let server = serve(st).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let url = format!("http://{}/api/v1/run?stream=true", server.addr);
    let src = "import time, sys\nprint('a', time.monotonic(), flush=True)\ntime.sleep(0.3)\nprint('b', time.monotonic(), file=sys.stderr)\n";
    let resp = within(
        "the response to start",
        client
            .post(&url)
            .json(&json!({"language": "python", "source": src}))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let mut resp = resp;
    let mut buf = Vec::new();
    let mut lines: Vec<(Value, f64)> = Vec::new();
    while let Some(chunk) = within("a line", resp.chunk()).await.unwrap() {
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            lines.push((serde_json::from_slice(&line).unwrap(), monotonic()));
        }
    }
    assert!(buf.is_empty(), "the body ends with a newline");
    let types: Vec<&str> = lines
        .iter()
        .map(|(v, _)| v["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["stage", "out", "out", "exit"], "{lines:?}");
    let (a, got_a) = &lines[1];
    assert_eq!(a["stream"], "stdout");
    let (b, _) = &lines[2];
    assert_eq!(b["stream"], "stderr");
    let printed_b: f64 = b["data"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(*got_a < printed_b, "'a' arrived only after 'b' was printed");
    let exit = &lines[3].0;
    assert_eq!(exit["status"], "ok", "{exit}");
    assert!(exit["stdout"].as_str().unwrap().starts_with("a "));

    // Bad input is answered as without `stream`: a 400 naming the field, before any line.
    let bad = client
        .post(&url)
        .json(&json!({"language": "python", "source": "", "limits": {"cpu_ms": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let v: Value = bad.json().await.unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("limits.cpu_ms"),
        "{v}"
    );
    let bad = client
        .post(format!("http://{}/api/v1/run?stream=maybe", server.addr))
        .json(&json!({"language": "python", "source": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // Without `stream`, the usual single answer.
    let plain: Value = client
        .post(format!("http://{}/api/v1/run", server.addr))
        .json(&json!({"language": "python", "source": "print(42)"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(plain["stdout"], "42\n", "{plain}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_true_client_that_goes_away_cancels_its_run() {
    // One worker: the next run can only start once the abandoned one is gone.
    let st = common::state_with(1, 4, 1 << 20, LimitsPolicy::default());
    let server = serve(st).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let url = format!("http://{}/api/v1/run?stream=true", server.addr);
    let src = "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.05)\n";
    let mut resp = within(
        "the response to start",
        client
            .post(&url)
            .json(&json!({"language": "python", "source": src}))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    // Read until the program has printed, then hang up.
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("tick") {
        let chunk = within("a tick", resp.chunk()).await.unwrap();
        got.extend_from_slice(&chunk.expect("the stream goes on while the program runs"));
    }
    drop(resp);
    let gone = Instant::now();
    let next: Value = within(
        "the next run",
        client
            .post(format!("http://{}/api/v1/run", server.addr))
            .json(&json!({"language": "python", "source": "print('next')"}))
            .send(),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(next["stdout"], "next\n", "{next}");
    // Well before the abandoned run's 10 s wall limit would have freed the worker.
    assert!(
        gone.elapsed() < Duration::from_secs(5),
        "the worker was busy for {:?} after the client left",
        gone.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_texts_open_up_to_the_limit() {
    // The default limit (1 MiB) fits in a WebSocket message with room to spare.
    let st = common::state().with_editor(
        Editor::new(EditorConfig {
            store: StoreConfig {
                max_text_bytes: Bytes::mib(1),
                ..StoreConfig::default()
            },
            compile_ahead: false,
            compile_ahead_delay: Duration::from_millis(300),
        })
        .unwrap(),
    );
    let server = serve(st).await;
    let mut c = Client::connect(server.addr).await;
    let unit = "# \"quoted\" and \\ escaped 😀\n";
    let text = unit.repeat((1 << 20) / unit.len());
    assert!(text.len() > (1 << 20) - unit.len());
    let opened = c.open("python", &text, None).await;
    assert_eq!(opened["text"].as_str().unwrap().len(), text.len());
}
