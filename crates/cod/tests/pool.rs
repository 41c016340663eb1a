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
    let names: Vec<String> = warm_runtime_names();
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
    run_warm_with(st, language, source, json!({})).await
}

/// [`run_warm`] with the request's other fields (`opts`).
async fn run_warm_with(
    st: &cod_server::AppState,
    language: &str,
    source: &str,
    opts: serde_json::Value,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let before = stats_of(st, language).hits;
        let v = run(st, language, source, opts.clone()).await;
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
    assert_eq!(v["signal"], serde_json::Value::Null, "{v:#}");

    // `process.exit` in the middle of the program: the rest does not run, and the status
    // is the code's low byte, as the kernel makes it of node's own exit.
    let v = run_warm(
        &st,
        "javascript",
        "console.log('x'); process.exit(300); console.log('not reached');",
    )
    .await;
    assert_eq!(v["stdout"], "x\n", "{v:#}");
    assert_eq!(v["exit_code"], 44, "{v:#}");
    assert_eq!(v["signal"], serde_json::Value::Null, "{v:#}");

    // A program killed by cod keeps its verdict, whatever it named itself.
    let v = run_warm_with(
        &st,
        "javascript",
        "process.title = 'cod-exit 0'; for (;;) {}",
        json!({"limits": {"cpu_ms": 300}}),
    )
    .await;
    assert_eq!(v["status"], "time_limit", "{v:#}");
    assert_eq!(v["signal"], "SIGKILL", "{v:#}");
    // Killed by another signal, it is reported so.
    let v = run_warm(
        &st,
        "javascript",
        "process.title = 'cod-exit 0'; process.kill(process.pid, 'SIGTERM');",
    )
    .await;
    assert_eq!(v["status"], "runtime_error", "{v:#}");
    assert_eq!(v["signal"], "SIGTERM", "{v:#}");
}

/// A Node.js started ahead prints what a fresh `node main.js` prints, byte for byte, though
/// its bootstrap already ran a console of its own (to compile the code a first
/// `console.log` needs before the run): formatting, both streams, and nothing of that
/// console or its sink shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_node_console_prints_as_a_fresh_node_would() {
    let st = state();
    let source = "console.log('%s %d|%o', 'a', 1.5, {x: 1}, -0, 10n, [1, 'a'], { a: { b: [1] } }, \
                  new Map([[1, 2]]), null, undefined, true);\n\
                  console.error('e', new Set([3]));\n\
                  console.count(); console.count(); console.group('g'); console.log('in');\n\
                  console.groupEnd(); console.table([{ a: 1 }]);\n\
                  console.log(typeof Console, typeof sink, typeof c, Object.keys(require.cache));\n\
                  process.stdout.write('end');";
    // The first JavaScript run of a fresh pool is cold: nothing was started ahead for it.
    let before = stats_of(&st, "javascript").hits;
    let cold = run(&st, "javascript", source, json!({})).await;
    assert_eq!(
        stats_of(&st, "javascript").hits,
        before,
        "the first run was warm"
    );
    let warm = run_warm(&st, "javascript", source).await;
    for field in ["status", "exit_code", "stdout", "stderr"] {
        assert_eq!(
            warm[field], cold[field],
            "{field}: warm {warm:#}\ncold {cold:#}"
        );
    }
    assert_eq!(warm["status"], "ok", "{warm:#}");
    let out = warm["stdout"].as_str().unwrap();
    assert!(out.starts_with("a 1.5|{ x: 1 } -0 10n [ 1, 'a' ]"), "{out}");
    assert!(
        out.ends_with("undefined undefined undefined [ '/box/main.js' ]\nend"),
        "{out}"
    );
    assert_eq!(warm["stderr"], "e Set(1) { 3 }\n", "{warm:#}");

    // The editor's template reads its input with readline: the run's stdin reaches it,
    // and the prompt, a tick and the answer come in node's order.
    let template = "const readline = require(\"readline\");\n\
        const rl = readline.createInterface({ input: process.stdin, output: process.stdout });\n\
        rl.question(\"What is your name? \", (name) => {\n\
          console.log(`Hello, ${name}!`);\n\
          rl.close();\n\
        });\n\
        process.nextTick(() => console.log('tick'));";
    let v = run_warm_with(&st, "javascript", template, json!({"stdin": "Bob\nnext\n"})).await;
    assert_eq!(
        v["stdout"], "What is your name? tick\nHello, Bob!\n",
        "{v:#}"
    );
    assert_eq!(v["stderr"], "", "{v:#}");
    assert_eq!(v["status"], "ok", "{v:#}");
}

/// A JVM started ahead runs a compiled (cached) Java program as `java -cp . Main args`
/// does: arguments, stdin, `System.exit` codes, and an uncaught exception printed with the
/// program's own stack frames only, exit code 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_jvm_runs_a_program_as_java_would() {
    let st = state();
    let source = "import java.util.Scanner;\n\
        public class Main {\n\
            public static void main(String[] args) {\n\
                String line = new Scanner(System.in).nextLine();\n\
                System.out.println(String.join(\",\", args) + \" \" + line);\n\
                if (args[0].equals(\"exit\")) System.exit(3);\n\
                if (args[0].equals(\"throw\")) { int[] a = new int[1]; a[2] = 1; }\n\
            }\n\
        }\n";
    let run_java = |args: &'static [&'static str]| {
        let st = st.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let before = stats_of(&st, "java").hits;
                let v = run(
                    &st,
                    "java",
                    source,
                    json!({"args": args, "stdin": "typed\n"}),
                )
                .await;
                if stats_of(&st, "java").hits > before {
                    return v;
                }
                assert!(
                    Instant::now() < deadline,
                    "java was never served warm: {v:#}"
                );
            }
        }
    };
    let v = run_java(&["a", "b"]).await;
    assert_eq!(v["status"], "ok", "{v:#}");
    assert_eq!(v["stdout"], "a,b typed\n", "{v:#}");
    assert_eq!(v["compile"]["cached"], true, "{v:#}");

    let v = run_java(&["exit"]).await;
    assert_eq!(v["stdout"], "exit typed\n", "{v:#}");
    assert_eq!(v["exit_code"], 3, "{v:#}");

    let v = run_java(&["throw"]).await;
    assert_eq!(v["exit_code"], 1, "{v:#}");
    let err = v["stderr"].as_str().unwrap();
    assert_eq!(
        err,
        "Exception in thread \"main\" java.lang.ArrayIndexOutOfBoundsException: \
         Index 2 out of bounds for length 1\n\tat Main.main(Main.java:7)\n",
        "{v:#}"
    );
}

/// Two runtimes started ahead share the slots: when the runs switch from Java to
/// JavaScript, the slots start Node.js ahead instead, after a single cold run per slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_start_ahead_the_runtime_their_runs_ask_for() {
    let st = state();
    let java =
        "public class Main { public static void main(String[] a) { System.out.println(7); } }";
    let deadline = Instant::now() + Duration::from_secs(120);
    // Java until both slots served it warm.
    let mut warm_java = 0;
    while warm_java < 2 {
        let before = stats_of(&st, "java").hits;
        let v = run(&st, "java", java, json!({})).await;
        assert_eq!(v["stdout"], "7\n", "{v:#}");
        warm_java += usize::from(stats_of(&st, "java").hits > before);
        assert!(Instant::now() < deadline, "java was never served warm");
    }
    // Then JavaScript: each slot runs at most one cold before it keeps Node.js ahead.
    let mut cold = 0;
    for _ in 0..6 {
        let before = stats_of(&st, "javascript").hits;
        let v = run(&st, "javascript", "console.log(8)", json!({})).await;
        assert_eq!(v["stdout"], "8\n", "{v:#}");
        cold += usize::from(stats_of(&st, "javascript").hits == before);
    }
    assert!(cold <= 2, "{cold} of 6 JavaScript runs were cold");
}

/// After a burst of concurrent runs (more than there are slots, so that runs queue and the
/// slots never idle), every slot keeps Python warm again: consecutive runs that follow are
/// all served warm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_refills_after_a_burst() {
    let st = state();
    run_warm(&st, "python", "print(0)").await;
    let burst: Vec<_> = (0..12)
        .map(|i| {
            let st = st.clone();
            tokio::spawn(async move {
                let src = format!("import os\nprint({i}, len(os.listdir('.')))");
                (i, run(&st, "python", &src, json!({})).await)
            })
        })
        .collect();
    for h in burst {
        let (i, v) = h.await.unwrap();
        assert_eq!(v["stdout"], format!("{i} 1\n"), "{v:#}");
    }
    // Refilled: within a bounded time, a run is warm, and so are the four after it.
    run_warm(&st, "python", "print(1)").await;
    for _ in 0..4 {
        let before = stats_of(&st, "python").hits;
        let v = run(&st, "python", "print(2)", json!({})).await;
        assert_eq!(v["stdout"], "2\n", "{v:#}");
        assert_eq!(
            stats_of(&st, "python").hits,
            before + 1,
            "a run after the burst was cold"
        );
    }
}

/// The pool follows the runs as they arrive, not as they finish: with both slots held by
/// long C runs, a queue of JavaScript runs turns the slots over to JavaScript (and away from
/// Python) before any of those runs has started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_follows_the_queue_not_the_finished_runs() {
    let st = state();
    let hold = "#include <unistd.h>\nint main(void){sleep(3);return 0;}";
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let st = st.clone();
            tokio::spawn(async move { run(&st, "c", hold, json!({})).await })
        })
        .collect();
    let queued: Vec<_> = (0..10)
        .map(|i| {
            let st = st.clone();
            tokio::spawn(async move {
                run(&st, "javascript", &format!("console.log({i})"), json!({})).await
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (js, py) = (stats_of(&st, "javascript"), stats_of(&st, "python"));
        if js.slots == 2 && py.slots == 0 {
            assert_eq!(
                js.hits + js.misses,
                0,
                "the JavaScript runs started already"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pool did not follow the queue: {js:?} {py:?}"
        );
        tokio::task::yield_now().await;
    }
    for h in busy {
        assert_eq!(h.await.unwrap()["status"], "ok");
    }
    for (i, h) in queued.into_iter().enumerate() {
        assert_eq!(h.await.unwrap()["stdout"], format!("{i}\n"));
    }
}
