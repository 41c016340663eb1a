//! Piston v2 compatibility, checked against the request and response examples of Piston's
//! API documentation (docs/api-v2.md of engineer-man/piston).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::{Value, json};

async fn node_version(st: &cod_server::AppState) -> String {
    let r = get(st, "/api/v2/runtimes").await;
    r.json
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["language"] == "javascript")
        .unwrap()["version"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn runtimes_have_pistons_shape() {
    let st = state();
    let r = get(&st, "/api/v2/runtimes").await;
    assert_eq!(r.status, StatusCode::OK);
    let list = r.json.as_array().unwrap();
    let bash = list
        .iter()
        .find(|l| l["language"] == "bash")
        .expect("bash is listed");
    assert!(bash["version"].as_str().unwrap().starts_with('5'));
    assert!(bash["aliases"].as_array().unwrap().contains(&json!("sh")));
    let js = list.iter().find(|l| l["language"] == "javascript").unwrap();
    assert!(js["aliases"].as_array().unwrap().contains(&json!("js")));
    // Piston's public prefix works too.
    let r2 = get(&st, "/api/v2/piston/runtimes").await;
    assert_eq!(r2.json, r.json);
}

/// The documented execute example: a named JavaScript file printing its argv.
#[tokio::test(flavor = "multi_thread")]
async fn documented_execute_example() {
    let st = state();
    let version = node_version(&st).await;
    let req = json!({
        "language": "js",
        "version": version,
        "files": [{"name": "my_cool_code.js", "content": "console.log(process.argv)"}],
        "stdin": "",
        "args": ["1", "2", "3"],
        "compile_timeout": 10000,
        "run_timeout": 3000,
        "compile_memory_limit": -1,
        "run_memory_limit": -1
    });
    let r = post_json(&st, "/api/v2/execute", &req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let v = &r.json;
    assert_eq!(v["language"], "javascript");
    assert_eq!(v["version"], version.as_str());
    let run = &v["run"];
    let out = run["stdout"].as_str().unwrap();
    // Node prints argv on one line when it is short (Piston's example paths are longer).
    let compact: String = out.split_whitespace().collect();
    assert_eq!(
        compact, "['/usr/bin/node','/box/my_cool_code.js','1','2','3']",
        "{out}"
    );
    assert_eq!(run["stderr"], "");
    assert_eq!(run["code"], 0);
    assert_eq!(run["signal"], Value::Null);
    assert_eq!(run["output"], run["stdout"]);
    assert!(
        v.get("compile").is_none(),
        "interpreted languages have no compile stage: {v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn compiled_languages_have_a_compile_stage_and_selectors_match() {
    let st = state();
    let r = post_json(&st, "/api/v2/execute", &json!({
        "language": "c",
        "version": "*",
        "files": [{"content": "#include <stdio.h>\nint main(){int x; scanf(\"%d\",&x); printf(\"%d\\n\", x+1); return 2;}"}],
        "stdin": "41"
    })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["run"]["stdout"], "42\n");
    assert_eq!(r.json["run"]["code"], 2);
    assert_eq!(r.json["run"]["status"], "RE");
    assert_eq!(r.json["compile"]["code"], 0);
    assert_eq!(r.json["compile"]["stdout"], "");

    // A compile error is reported in the compile stage.
    let r = post_json(
        &st,
        "/api/v2/execute",
        &json!({
            "language": "c", "version": "12.x", "files": [{"content": "int main( {"}]
        }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_ne!(r.json["compile"]["code"], 0);
    assert!(
        r.json["compile"]["stderr"]
            .as_str()
            .unwrap()
            .contains("error")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_use_pistons_message_field() {
    let st = state();
    let cases = [
        (
            json!({"language": "python", "version": "2.7.0", "files": [{"content": "print 1"}]}),
            "python-2.7.0 runtime is unknown",
        ),
        (
            json!({"language": "brainfuck", "version": "*", "files": [{"content": "+"}]}),
            "brainfuck-* runtime is unknown",
        ),
        (
            json!({"language": "python", "version": "*", "files": []}),
            "files",
        ),
        (
            json!({"language": "python", "files": [{"content": "x"}]}),
            "version",
        ),
        (
            json!({"language": "python", "version": "*", "files": [{"content": "x", "encoding": "rot13"}]}),
            "files[0].encoding",
        ),
        (
            json!({"language": "python", "version": "*", "files": [{"content": "x"}], "run_timeout": 99999999}),
            "run_timeout",
        ),
        (
            json!({"language": "python", "version": "*", "files": [{"content": "x"}], "run_memory_limit": 1_u64 << 50}),
            "run_memory_limit",
        ),
    ];
    for (req, needle) in cases {
        let r = post_json(&st, "/api/v2/execute", &req).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{req} -> {}", r.json);
        let msg = r.json["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no message: {}", r.json));
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn encodings_timeouts_and_memory_limits() {
    let st = state();
    // base64 of "print(2+2)"
    let r = post_json(
        &st,
        "/api/v2/execute",
        &json!({
            "language": "py", "version": "3.x",
            "files": [{"name": "a.py", "content": "cHJpbnQoMisyKQ==", "encoding": "base64"}]
        }),
    )
    .await;
    assert_eq!(r.json["run"]["stdout"], "4\n", "{}", r.json);

    let r = post_json(
        &st,
        "/api/v2/execute",
        &json!({
            "language": "python", "version": "*", "run_timeout": 300,
            "files": [{"content": "import time\ntime.sleep(5)"}]
        }),
    )
    .await;
    assert_eq!(r.json["run"]["status"], "TO", "{}", r.json);
    assert_eq!(r.json["run"]["signal"], "SIGKILL");
    assert_eq!(r.json["run"]["code"], Value::Null);
    assert_eq!(r.json["cod_status"], "time_limit");

    let r = post_json(
        &st,
        "/api/v2/execute",
        &json!({
            "language": "python", "version": "*", "run_memory_limit": 32 << 20,
            "files": [{"content": "a = []\nwhile True:\n    a.append(bytearray(1 << 20))"}]
        }),
    )
    .await;
    assert_eq!(r.json["cod_status"], "memory_limit", "{}", r.json);
    assert_eq!(r.json["run"]["signal"], "SIGKILL");
}
