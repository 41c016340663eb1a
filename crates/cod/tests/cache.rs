//! The compile cache through the API: an unchanged program skips compilation, a changed one
//! does not, compile errors are remembered, identical compiles arriving together run once,
//! and a cache on disk serves a new process.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use cod_core::limits::LimitsPolicy;
use cod_runtime::{CompileCache, Executor};
use cod_sched::Scheduler;
use cod_server::AppState;
use common::*;
use serde_json::json;

const HELLO: &str =
    "#include <stdio.h>\nint main(void) { int unused; printf(\"hi %d\\n\", 7); return 0; }";

fn state_with_cache(cache: Arc<CompileCache>) -> AppState {
    let jail = jail(2);
    AppState::new(
        Arc::new(Executor::new(jail, registry(), LimitsPolicy::default()).with_cache(cache)),
        Scheduler::new(2, 16),
        1 << 20,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unchanged_program_skips_compilation() {
    let st = state();
    let first = run(&st, "c", HELLO, json!({})).await;
    assert_eq!(first["status"], "ok", "{first:#}");
    assert_eq!(first["compile"]["cached"], false);
    assert_eq!(first["stdout"], "hi 7\n");

    let second = run(
        &st,
        "c",
        HELLO,
        json!({"stdin": "other input is not part of the key"}),
    )
    .await;
    assert_eq!(second["status"], "ok", "{second:#}");
    assert_eq!(second["compile"]["cached"], true);
    assert_eq!(second["compile"]["status"], "ok");
    assert_eq!(
        second["compile"]["wall_ms"], 0,
        "this run spent nothing compiling"
    );
    assert_eq!(second["stdout"], "hi 7\n");
    // The compiler's warnings are kept with the program.
    assert_eq!(second["compile"]["stderr"], first["compile"]["stderr"]);

    let changed = run(&st, "c", &HELLO.replace("hi", "ho"), json!({})).await;
    assert_eq!(changed["compile"]["cached"], false);
    assert_eq!(changed["stdout"], "ho 7\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn compile_errors_are_remembered_and_limits_are_not() {
    let st = state();
    let bad = "int main(void) { return nope; }";
    let first = run(&st, "c", bad, json!({})).await;
    assert_eq!(first["status"], "compile_error");
    assert_eq!(first["compile"]["cached"], false);
    let second = run(&st, "c", bad, json!({})).await;
    assert_eq!(second["status"], "compile_error");
    assert_eq!(second["compile"]["cached"], true);
    assert!(
        second["compile"]["stderr"]
            .as_str()
            .unwrap()
            .contains("nope")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn java_classes_are_cached_too() {
    let st = state();
    let src = "public class Hello { public static void main(String[] a) { System.out.println(new Inner().x); } static class Inner { int x = 5; } }";
    let first = run(&st, "java", src, json!({})).await;
    assert_eq!(first["stdout"], "5\n", "{first:#}");
    let second = run(&st, "java", src, json!({})).await;
    assert_eq!(second["stdout"], "5\n", "{second:#}");
    assert_eq!(second["compile"]["cached"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_compiles_arriving_together_run_once() {
    let cache = CompileCache::new(64 << 20, None).unwrap();
    let st = state_with_cache(cache.clone());
    let src = "#include <stdio.h>\nint main(void) { puts(\"together\"); return 0; }";
    let runs = (0..4).map(|_| {
        let st = st.clone();
        tokio::spawn(async move { run(&st, "c", src, json!({})).await })
    });
    let mut cached = 0;
    for r in runs {
        let v = r.await.unwrap();
        assert_eq!(v["stdout"], "together\n", "{v:#}");
        if v["compile"]["cached"] == true {
            cached += 1;
        }
    }
    assert_eq!(cache.stats.misses.load(Ordering::Relaxed), 1, "one compile");
    assert_eq!(cached, 3, "the others used its result");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_disk_level_serves_a_new_process() {
    let dir = tempfile::tempdir().unwrap();
    let open = || CompileCache::new(1 << 20, Some((dir.path().to_owned(), 64 << 20))).unwrap();
    let src = "#include <stdio.h>\nint main(void) { puts(\"from disk\"); return 0; }";
    let first = run(&state_with_cache(open()), "c", src, json!({})).await;
    assert_eq!(first["compile"]["cached"], false);
    // A fresh cache over the same directory, as after a restart.
    let again = open();
    let second = run(&state_with_cache(again.clone()), "c", src, json!({})).await;
    assert_eq!(second["compile"]["cached"], true, "{second:#}");
    assert_eq!(second["stdout"], "from disk\n");
    assert_eq!(again.stats.disk_hits.load(Ordering::Relaxed), 1);
}
