//! Prebuilt compiler helpers: the precompiled `<bits/stdc++.h>` for C++ and the class-data
//! archive for javac are built once in the sandbox, installed, and then used by compiles,
//! which still produce correct programs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::sync::Arc;

use cod_core::RunRequest;
use cod_core::limits::LimitsPolicy;
use cod_runtime::{Executor, Registry};
use cod_sched::Scheduler;
use cod_server::AppState;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn cpp_header_and_javac_archive_are_built_once_and_used() {
    let root = tempfile::tempdir().unwrap();
    let registry = Arc::new(
        Registry::load(None, &["cpp".into(), "java".into()])
            .unwrap()
            .with_prebuilt(root.path())
            .unwrap(),
    );
    let executor = Arc::new(Executor::new(
        common::jail(2),
        registry.clone(),
        LimitsPolicy::default(),
    ));
    let cpp = registry.get("cpp").unwrap();
    let java = registry.get("java").unwrap();
    assert!(!cpp.prebuilt_ready() && !java.prebuilt_ready());

    // Before: compiles run without the helpers.
    let req = |language: &str, source: &str| RunRequest {
        language: language.into(),
        source: Some(source.into()),
        ..Default::default()
    };
    let bits = "#include <bits/stdc++.h>\nint main() { std::map<int,int> m{{1,2}}; std::cout << m[1] << '\\n'; }";
    let job = executor.prepare(&req("cpp", bits)).unwrap();
    assert!(
        !job.sandbox_spec(0, executor.host()).stages[0]
            .argv
            .iter()
            .any(|a| a.starts_with("-I/opt/cod/prebuilt"))
    );

    // Build both (in slot 0, sandboxed), then again: the second time there is nothing to do.
    assert_eq!(executor.prebuild(cpp, 0).await, Ok(true));
    assert_eq!(executor.prebuild(java, 0).await, Ok(true));
    assert!(cpp.prebuilt_ready() && java.prebuilt_ready());
    assert_eq!(executor.prebuild(cpp, 0).await, Ok(false));
    let gch = std::fs::read_dir(root.path())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("cpp-"))
        .unwrap();
    assert!(
        gch.path()
            .join("bits/stdc++.h.gch")
            .metadata()
            .unwrap()
            .len()
            > 1 << 20
    );

    // After: compiles use them and still produce the right programs.
    let job = executor.prepare(&req("cpp", bits)).unwrap();
    let argv = &job.sandbox_spec(0, executor.host()).stages[0].argv;
    assert!(
        argv.contains(&"-I/opt/cod/prebuilt/cpp".to_owned()),
        "{argv:?}"
    );
    let st = AppState::new(executor.clone(), Scheduler::new(2, 8), 1 << 20);
    let v = common::run(&st, "cpp", bits, json!({})).await;
    assert_eq!(v["status"], "ok", "{v:#}");
    assert_eq!(v["stdout"], "2\n");
    assert_eq!(
        v["compile"]["stderr"], "",
        "GCC accepted the header quietly"
    );
    let v = common::run(&st, "java", "public class Main { public static void main(String[] a) { System.out.println(java.util.List.of(1, 2).size()); } }", json!({})).await;
    assert_eq!(v["status"], "ok", "{v:#}");
    assert_eq!(v["stdout"], "2\n");
    assert_eq!(
        v["compile"]["stderr"], "",
        "the JVM accepted the archive quietly"
    );
}
