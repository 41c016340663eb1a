//! The native HTTP API end to end, in-process, with the real sandbox: results, bad input,
//! body limits, overload, cancellation.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::time::Duration;

use axum::http::{StatusCode, header};
use cod_core::limits::LimitsPolicy;
use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn readme_example_answers_every_field() {
    let st = state();
    let r = post(
        &st,
        "/api/v1/run",
        r#"{"language":"python","source":"print(input()*2)","stdin":"ab"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let v = &r.json;
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(v["stdout"], "abab\n");
    assert_eq!(v["stderr"], "");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["signal"], Value::Null);
    assert_eq!(v["stdout_truncated"], false);
    assert_eq!(v["stderr_truncated"], false);
    assert_eq!(v["language"], "python");
    assert!(v["version"].as_str().unwrap().starts_with("3."));
    for k in ["cpu_ms", "wall_ms", "memory_kb"] {
        assert!(v[k].as_u64().is_some(), "{k} missing in {v}");
    }
    assert!(v["memory_kb"].as_u64().unwrap() > 0);
    assert!(v["wall_ms"].as_u64().unwrap() < 10_000);
    assert_eq!(v["compile"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn body_without_content_type_is_accepted() {
    let st = state();
    let req = axum::http::Request::post("/api/v1/run")
        .body(axum::body::Body::from(
            r#"{"language":"py","source":"print(6*7)"}"#,
        ))
        .unwrap();
    let r = call(&st, req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["stdout"], "42\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn compiled_language_reports_the_compile_stage() {
    let st = state();
    let v = run(
        &st,
        "c",
        "#include <stdio.h>\nint main(){puts(\"hi\");return 4;}",
        json!({}),
    )
    .await;
    assert_eq!(v["status"], "runtime_error", "{v}");
    assert_eq!(v["exit_code"], 4);
    assert_eq!(v["stdout"], "hi\n");
    assert_eq!(v["compile"]["status"], "ok");
    assert_eq!(v["compile"]["cached"], false);
    assert!(v["compile"]["wall_ms"].as_u64().is_some());

    let v = run(&st, "c", "int main(){ this is not C }", json!({})).await;
    assert_eq!(v["status"], "compile_error", "{v}");
    assert_eq!(v["compile"]["status"], "runtime_error");
    assert!(
        v["compile"]["stderr"].as_str().unwrap().contains("error"),
        "{v}"
    );
    assert_eq!(v["stdout"], "");
    assert_eq!(v["exit_code"], Value::Null);
}

/// A program reading past its input sees the input's end at once, whether the request gave
/// some stdin, an empty one or none (not a read that waits for the wall limit).
#[tokio::test(flavor = "multi_thread")]
async fn a_program_reading_past_its_stdin_sees_its_end() {
    let st = state();
    for extra in [json!({}), json!({"stdin": ""})] {
        let v = run(&st, "python", "print(input())", extra.clone()).await;
        assert_eq!(v["status"], "runtime_error", "{extra}: {v}");
        assert!(v["stderr"].as_str().unwrap().contains("EOFError"), "{v}");
        let v = run(&st, "bash", "read a; echo \"read: $?\"", extra.clone()).await;
        assert_eq!(v["stdout"], "read: 1\n", "{extra}: {v}");
        let src = "#include <stdio.h>\nint main(){printf(\"%d\\n\", getchar());}";
        let v = run(&st, "c", src, extra).await;
        assert_eq!(v["stdout"], "-1\n", "{v}");
    }
    let v = run(
        &st,
        "python",
        "print(input())\nprint(input())",
        json!({"stdin": "ab"}),
    )
    .await;
    assert_eq!(v["stdout"], "ab\n", "{v}");
    assert!(v["stderr"].as_str().unwrap().contains("EOFError"), "{v}");
}

/// Every kind of bad input gets a 4xx JSON error naming the problem.
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_400_naming_the_field() {
    let st = state_with(1, 4, 4096, LimitsPolicy::default());
    let cases: &[(&str, &str)] = &[
        ("{\"language\": ", "malformed JSON"),
        ("[1,2]", "invalid request"),
        ("", "empty"),
        (r#"{"source":"print(1)"}"#, "language"),
        (r#"{"language":"python"}"#, "source"),
        (r#"{"language":"cobol","source":"x"}"#, "language"),
        (
            r#"{"language":"python","source":"x","limits":{"cpu_ms":999999999}}"#,
            "limits.cpu_ms",
        ),
        (
            r#"{"language":"python","source":"x","limits":{"memory_mb":0}}"#,
            "limits.memory_mb",
        ),
        (
            r#"{"language":"python","source":"x","limits":{"cpu_ms":"fast"}}"#,
            "limits.cpu_ms",
        ),
        (
            r#"{"language":"python","source":"x","limits":{"cpus":1}}"#,
            "cpus",
        ),
        (
            r#"{"language":"python","source":"x","stdn":"typo"}"#,
            "stdn",
        ),
        (
            r#"{"language":"python","source":"x","files":[{"name":"../etc/passwd","content":""}]}"#,
            "files[0].name",
        ),
        (
            r#"{"language":"python","source":"x","files":[{"content":""}]}"#,
            "files[0].name",
        ),
        (
            r#"{"language":"python","source":"x","args":["a\u0000b"]}"#,
            "args[0]",
        ),
        (r#"{"language":42,"source":"x"}"#, "language"),
    ];
    for (body, needle) in cases {
        let r = post(&st, "/api/v1/run", *body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body} -> {}", r.json);
        let msg = r.json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field for {body}: {}", r.json));
        assert!(
            msg.contains(needle),
            "{body}: {msg:?} does not mention {needle}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_body_gets_413_json() {
    let st = state_with(1, 4, 4096, LimitsPolicy::default());
    let big = json!({"language":"python","source": "#".repeat(10_000)}).to_string();
    let r = post(&st, "/api/v1/run", big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.json);
    assert!(r.json["error"].as_str().unwrap().contains("too large"));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_routes_and_methods_get_json_errors() {
    let st = state();
    let r = get(&st, "/api/v1/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.json["error"].as_str().unwrap().contains("/api/v1/nope"));
    let r = get(&st, "/api/v1/run").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.json["error"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn runtimes_list_languages_versions_aliases_and_availability() {
    let st = state();
    let r = get(&st, "/api/v1/runtimes").await;
    assert_eq!(r.status, StatusCode::OK);
    let list = r.json.as_array().unwrap();
    let names: Vec<&str> = list.iter().map(|l| l["name"].as_str().unwrap()).collect();
    for n in ["python", "c", "cpp", "rust", "javascript", "java", "bash"] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    let py = list.iter().find(|l| l["name"] == "python").unwrap();
    assert_eq!(py["available"], true);
    assert!(py["aliases"].as_array().unwrap().contains(&json!("py")));
    assert!(py["version"].as_str().unwrap().starts_with('3'));
    let cpp = list.iter().find(|l| l["name"] == "cpp").unwrap();
    assert!(cpp["aliases"].as_array().unwrap().contains(&json!("c++")));
    assert_eq!(cpp["compiled"], true);

    let h = get(&st, "/healthz").await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.json["status"], "ok");
    let r = get(&st, "/readyz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["status"], "ready");
}

#[tokio::test(flavor = "multi_thread")]
async fn web_page_is_served_without_external_resources() {
    let st = state();
    let r = get(&st, "/").await;
    assert_eq!(r.status, StatusCode::OK);
    let html = r.json.as_str().unwrap();
    assert!(html.contains("/api/v1/run"));
    assert!(
        !html.contains("https://"),
        "the page must not load anything from the network"
    );
}

/// With every worker busy and no queue, a run gets 429 with Retry-After; a client that goes
/// away cancels its run, whose processes are killed.
#[tokio::test(flavor = "multi_thread")]
async fn overload_gets_429_and_disconnect_cancels_the_run() {
    let uid_base = 61_000;
    let st = state_on(
        jail_with(1, uid_base),
        1,
        0,
        1 << 20,
        LimitsPolicy::default(),
    );
    let slow = tokio::spawn({
        let st = st.clone();
        async move {
            run(
                &st,
                "python",
                "import time\ntime.sleep(30)",
                json!({"limits":{"wall_ms":40000,"cpu_ms":1000}}),
            )
            .await
        }
    });
    tokio::time::timeout(TIMEOUT, async {
        while processes_of(uid_base..uid_base + 1).is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the slow run starts");
    assert_eq!(st.scheduler.stats().running, 1);

    let r = post(
        &st,
        "/api/v1/run",
        r#"{"language":"python","source":"print(1)"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.json);
    let retry: u64 = r.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert!(r.json["error"].as_str().unwrap().contains("busy"));
    assert!(st.scheduler.stats().rejected >= 1);

    // The client goes away: the handler future is dropped with the run's socket.
    slow.abort();
    let _ = slow.await;
    tokio::time::timeout(Duration::from_secs(20), async {
        while !processes_of(uid_base..uid_base + 1).is_empty() || st.scheduler.stats().running != 0
        {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the cancelled run's processes are killed and its slot is freed");
    let r = post(
        &st,
        "/api/v1/run",
        r#"{"language":"python","source":"print(1)"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["stdout"], "1\n");
}

/// The embedded mode lists itself as its one worker, with its slots and runtimes.
#[tokio::test(flavor = "multi_thread")]
async fn the_single_process_lists_itself_as_its_worker() {
    let st = state();
    let r = get(&st, "/api/v1/workers").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let w = r.json["workers"].as_array().unwrap();
    assert_eq!(w.len(), 1, "{}", r.json);
    assert_eq!(w[0]["id"], "local");
    assert_eq!(w[0]["state"], "ready");
    assert_eq!(w[0]["slots"], st.scheduler.stats().workers);
    assert!(
        w[0]["runtimes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "python"),
        "{}",
        r.json
    );
}
