//! The warm runtime pool through the API: Python and JavaScript runs served by warm
//! runtimes give the answers a fresh interpreter gives, the pool counts them, and its memory
//! budget holds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cod_core::Bytes;
use cod_core::config::PoolConfig;
use cod_core::limits::LimitsPolicy;
use cod_runtime::{Executor, Pool, RuntimeStats};
use common::*;
use serde_json::json;

fn stats_of(st: &cod_server::AppState, language: &str) -> RuntimeStats {
    st.executor
        .pool()
        .expect("a pool")
        .stats()
        .runtimes
        .into_iter()
        .find(|r| r.language == language)
        .unwrap_or_else(|| panic!("{language} is not a warm runtime here"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_runs_are_served_and_counted() {
    let st = state();
    // Runs until one is served warm (the runtimes start in the background).
    let deadline = Instant::now() + Duration::from_secs(60);
    for language in ["python", "javascript"] {
        let source = if language == "python" {
            "import sys\nprint(sys.argv[1:], input())"
        } else {
            "const fs = require('fs');\nconsole.log(process.argv.slice(2), fs.readFileSync(0, 'utf8'))"
        };
        let want = if language == "python" {
            "['a', 'b'] typed\n"
        } else {
            "[ 'a', 'b' ] typed\n"
        };
        loop {
            let before = stats_of(&st, language).hits;
            let v = run(
                &st,
                language,
                source,
                json!({"args": ["a", "b"], "stdin": "typed"}),
            )
            .await;
            assert_eq!(v["status"], "ok", "{v:#}");
            assert_eq!(v["stdout"], want, "{v:#}");
            if stats_of(&st, language).hits > before {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{language} was never served warm"
            );
        }
    }
    let s = stats_of(&st, "python");
    assert!(s.slots >= 1 && s.idle_memory > 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_without_budget_keeps_nothing_warm_and_runs_still_work() {
    let jail = jail(2);
    let names: Vec<String> = cod_runtime::warm_runtimes(
        &registry(),
        &cod_runtime::HostLayout::detect().with_languages(&registry()),
        cod_core::limits::LimitsSpec::DEFAULT.to_limits().disk.get(),
    )
    .into_iter()
    .map(|w| w.name)
    .collect();
    let pool = Pool::new(
        jail.clone(),
        names,
        PoolConfig {
            memory: Bytes::kib(1),
            ..PoolConfig::default()
        },
    );
    let st = cod_server::AppState::new(
        Arc::new(Executor::new(jail, registry(), LimitsPolicy::default()).with_pool(pool)),
        cod_sched::Scheduler::new(2, 8),
        1 << 20,
    );
    for _ in 0..3 {
        let v = run(&st, "python", "print(6 * 7)", json!({})).await;
        assert_eq!(v["stdout"], "42\n", "{v:#}");
    }
    let s = stats_of(&st, "python");
    assert_eq!(s.slots, 0, "{s:?}");
    assert_eq!(s.hits, 0, "{s:?}");
    assert_eq!(s.misses, 3, "{s:?}");
}

/// Runs `source` until a warm runtime serves it (they start in the background).
async fn run_warm(st: &cod_server::AppState, language: &str, source: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let before = stats_of(st, language).hits;
        let v = run(st, language, source, json!({})).await;
        if stats_of(st, language).hits > before {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{language} was never served warm"
        );
    }
}

/// A Node.js started ahead ends a program as `node main.js` does: timers run, every `exit`
/// listener runs and may set the exit code, and an uncaught exception is printed and
/// exits with 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_node_program_ends_as_node_would() {
    let st = state();
    let v = run_warm(
        &st,
        "javascript",
        "process.on('exit', (c) => console.log('bye', c, process.exitCode));\n\
         process.on('exit', () => { process.exitCode = 4; });\n\
         process.exitCode = 3;\n\
         console.log('hi');\n\
         setTimeout(() => console.log('later'), 20);",
    )
    .await;
    assert_eq!(v["stdout"], "hi\nlater\nbye 3 3\n", "{v:#}");
    assert_eq!(v["status"], "runtime_error", "{v:#}");
    assert_eq!(v["exit_code"], 4, "{v:#}");

    let v = run_warm(
        &st,
        "javascript",
        "console.log('a');\nthrow new Error('boom');",
    )
    .await;
    assert_eq!(v["stdout"], "a\n", "{v:#}");
    assert_eq!(v["exit_code"], 1, "{v:#}");
    let err = v["stderr"].as_str().unwrap();
    assert!(err.contains("Error: boom"), "{err}");

    let v = run_warm(&st, "javascript", "process.stdout.write('no newline')").await;
    assert_eq!(v["stdout"], "no newline", "{v:#}");
    assert_eq!(v["status"], "ok", "{v:#}");
}
