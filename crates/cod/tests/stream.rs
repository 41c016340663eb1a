//! Streaming runs through the executor: output as the program writes it, stdin fed while it
//! runs, and kill.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report
#![allow(clippy::cast_precision_loss)] // clock readings as f64 seconds

mod common;

use std::time::{Duration, Instant};

use cod_core::run::RunRequest;
use cod_runtime::{OutStream, RunEvent, RunInput, RunIo, StageKind};
use common::state;
use tokio::sync::mpsc;

fn request(language: &str, source: &str) -> RunRequest {
    serde_json::from_value(serde_json::json!({"language": language, "source": source}))
        .expect("a valid request")
}

/// CLOCK_MONOTONIC in seconds, the clock Python's `time.monotonic()` reads.
fn monotonic() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_flushed_line_arrives_before_the_next_is_printed() {
    let st = state();
    let src = "import time\nfor i in range(5):\n    print(i, time.monotonic(), flush=True)\n    time.sleep(0.1)\n";
    let job = st
        .executor
        .prepare(&request("python", src))
        .expect("a valid job");
    let (tx, mut rx) = mpsc::channel(16);
    let mut io = RunIo {
        events: tx,
        input: None,
    };
    let run = async {
        let r = st.executor.execute_streaming(&job, 0, &mut io).await;
        drop(io);
        r
    };
    let collect = async {
        let mut lines = Vec::new();
        let mut stages = Vec::new();
        while let Some(e) = rx.recv().await {
            match e {
                RunEvent::Stage(s) => stages.push(s),
                RunEvent::Output {
                    stream: OutStream::Stdout,
                    data,
                    ..
                } => {
                    let got = monotonic();
                    for l in String::from_utf8(data).expect("UTF-8").lines() {
                        let printed: f64 = l
                            .split_whitespace()
                            .nth(1)
                            .expect("a time")
                            .parse()
                            .expect("a number");
                        lines.push((printed, got));
                    }
                }
                _ => {}
            }
        }
        (lines, stages)
    };
    let (result, (lines, stages)) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(run, collect)
    })
    .await
    .expect("the run ends");
    assert_eq!(result.run.status.as_str(), "ok", "{result:?}");
    assert_eq!(stages, [StageKind::Run]);
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
    // The result still has the whole output.
    assert_eq!(result.run.stdout.lines().count(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interactive_program_reads_what_is_typed() {
    let st = state();
    let src = "name = input('name? ')\nprint('hi', name)\nprint('bye', input())\n";
    let job = st
        .executor
        .prepare(&request("python", src))
        .expect("a valid job");
    let (tx, mut rx) = mpsc::channel(16);
    let (in_tx, in_rx) = mpsc::channel(16);
    let mut io = RunIo {
        events: tx,
        input: Some(in_rx),
    };
    let run = async {
        let r = st.executor.execute_streaming(&job, 1, &mut io).await;
        drop(io);
        r
    };
    let converse = async {
        let mut out = String::new();
        let mut answered = 0;
        while let Some(e) = rx.recv().await {
            if let RunEvent::Output { data, .. } = e {
                out.push_str(&String::from_utf8_lossy(&data));
                // Answer each prompt only once it was shown.
                if answered == 0 && out.contains("name? ") {
                    in_tx
                        .send(RunInput::Stdin(b"Ada\n".to_vec()))
                        .await
                        .expect("sent");
                    answered = 1;
                } else if answered == 1 && out.contains("hi Ada\n") {
                    in_tx
                        .send(RunInput::Stdin(b"Bob".to_vec()))
                        .await
                        .expect("sent");
                    in_tx.send(RunInput::Close).await.expect("sent");
                    answered = 2;
                }
            }
        }
        out
    };
    let (result, out) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(run, converse)
    })
    .await
    .expect("the run ends");
    assert_eq!(result.run.status.as_str(), "ok", "{result:?}");
    assert_eq!(out, "name? hi Ada\nbye Bob\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_stops_a_running_program() {
    let st = state();
    let job = st
        .executor
        .prepare(&request(
            "python",
            "print('start', flush=True)\nwhile True: pass\n",
        ))
        .expect("a valid job");
    let (tx, mut rx) = mpsc::channel(16);
    let (in_tx, in_rx) = mpsc::channel(4);
    let mut io = RunIo {
        events: tx,
        input: Some(in_rx),
    };
    let started = Instant::now();
    let run = async {
        let r = st.executor.execute_streaming(&job, 0, &mut io).await;
        drop(io);
        r
    };
    let stop = async {
        while let Some(e) = rx.recv().await {
            if matches!(e, RunEvent::Output { .. }) {
                in_tx.send(RunInput::Kill).await.expect("sent");
            }
        }
    };
    let (result, ()) =
        tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(run, stop) })
            .await
            .expect("the run ends");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_ne!(result.run.status.as_str(), "ok", "{result:?}");
    assert!(result.run.stdout.starts_with("start"), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compiled_program_reports_both_stages_and_usage() {
    let st = state();
    let src = "#include <stdio.h>\n#include <time.h>\nint main(){clock_t e=clock()+CLOCKS_PER_SEC*6/10;while(clock()<e);puts(\"done\");}\n";
    let job = st
        .executor
        .prepare(&request("c", src))
        .expect("a valid job");
    let (tx, mut rx) = mpsc::channel(64);
    let mut io = RunIo {
        events: tx,
        input: None,
    };
    let run = async {
        let r = st.executor.execute_streaming(&job, 1, &mut io).await;
        drop(io);
        r
    };
    let collect = async {
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            events.push(e);
        }
        events
    };
    let (result, events) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(run, collect)
    })
    .await
    .expect("the run ends");
    assert_eq!(result.run.status.as_str(), "ok", "{result:?}");
    let stages: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            RunEvent::Stage(s) => Some(*s),
            _ => None,
        })
        .collect();
    assert_eq!(stages, [StageKind::Compile, StageKind::Run]);
    // The program spins for 0.6 s of CPU: at least one usage report while it runs, and
    // its CPU figures grow.
    let usage: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            RunEvent::Usage {
                stage: StageKind::Run,
                cpu_ms,
                ..
            } => Some(*cpu_ms),
            _ => None,
        })
        .collect();
    assert!(!usage.is_empty(), "{events:?}");
    assert!(usage.windows(2).all(|w| w[0] <= w[1]), "{usage:?}");
    assert!(
        usage.last().copied().unwrap_or(0) <= result.run.cpu_ms + 5,
        "{usage:?} vs {result:?}"
    );
}
