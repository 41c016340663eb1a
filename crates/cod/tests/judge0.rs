//! Judge0 compatibility: the official Python SDK (PyPI `judge0`, installed in a venv by
//! `scripts/test`) against a real `cod serve`, in wait and async modes and in batches; and
//! the dialect's details in-process: status ids by verdict, Base64, `fields=`, field
//! errors, languages, statuses, `/about`, `/config_info`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::path::PathBuf;
use std::process::Command;

use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::server::Server;
use common::*;
use serde_json::{Value, json};

/// The venv's python with the SDK (`scripts/test` makes it), or `COD_JUDGE0_PYTHON`.
fn sdk_python() -> PathBuf {
    let p = std::env::var_os("COD_JUDGE0_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/judge0-venv/bin/python"),
        PathBuf::from,
    );
    assert!(
        p.exists(),
        "{} is missing: run scripts/test once (it installs the judge0 SDK in a venv)",
        p.display()
    );
    p
}

/// Drives cod with the SDK; prints what it saw as JSON.
const SDK_SCRIPT: &str = r#"
import json, sys
import judge0
from judge0 import Client, LanguageAlias

client = Client(sys.argv[1])  # reads /languages and /config_info
out = {"version": client.version, "languages": sorted(l.id for l in client.languages),
       "sdk": judge0.__version__, "batch_size": client.config.max_submission_batch_size}

# Wait mode as the SDK does it: create, then poll until done.
s = judge0.run(client=client, source_code="print(input()[::-1])", language=71, stdin="abc")
out["sync"] = {"status": int(s.status), "stdout": s.stdout, "time": s.time,
               "memory": s.memory, "token": str(s.token), "created_at": str(s.created_at)}

# Async mode: create now, wait later.
a = judge0.async_run(client=client, language=LanguageAlias.C, stdin="12",
                     source_code='#include <stdio.h>\nint main(){int x; scanf("%d",&x); printf("%d\\n", x*x); return 0;}')
out["async_token"] = str(a.token)
judge0.wait(client=client, submissions=a)
out["async"] = {"status": int(a.status), "stdout": a.stdout}

# Test cases: several submissions, created and fetched through the batch endpoints.
subs = judge0.run(client=client, source_code="print(int(input())*2)", language=71,
                  test_cases=[("1", "2"), ("2", "5"), ("3", "6")])
out["batch"] = [{"status": int(x.status), "stdout": x.stdout} for x in subs]

ce = judge0.run(client=client, source_code="int main(){ nope }", language=LanguageAlias.C)
out["ce"] = {"status": int(ce.status), "compile_output": ce.compile_output}
re = judge0.run(client=client, source_code="import sys\nsys.exit(3)", language=71)
out["re"] = {"status": int(re.status), "exit_code": re.exit_code, "message": re.message}

# Wait mode on the server (wait=true), through the SDK's own HTTP client.
r = client.client.post("/submissions", params={"wait": "true", "base64_encoded": "false"},
                       json={"source_code": "print(6*7)", "language_id": 71}, headers=client.headers)
out["wait_true"] = {"code": r.status_code, "body": r.json()}
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_judge0_python_sdk_works_unchanged() {
    let python = sdk_python();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &["--workers", "2"],
        "[sandbox]\nuid_base = 65000\n",
        &[],
        dir.path(),
    );
    let script = dir.path().join("sdk.py");
    std::fs::write(&script, SDK_SCRIPT).unwrap();
    let url = format!("http://{}", server.addr);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(&script)
            .arg(url)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the SDK script failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], "1.13.1");
    assert_eq!(v["sdk"], "0.0.8");
    for id in [46, 50, 54, 62, 63, 71, 73] {
        assert!(
            v["languages"].as_array().unwrap().contains(&json!(id)),
            "{id}: {v}"
        );
    }
    assert_eq!(v["sync"]["status"], 3, "{v}");
    assert_eq!(v["sync"]["stdout"], "cba\n");
    assert!(v["sync"]["time"].as_f64().is_some() && v["sync"]["memory"].as_f64().unwrap() > 0.0);
    assert_eq!(v["async"]["status"], 3, "{v}");
    assert_eq!(v["async"]["stdout"], "144\n");
    let batch: Vec<(i64, &str)> = v["batch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["status"].as_i64().unwrap(), b["stdout"].as_str().unwrap()))
        .collect();
    assert_eq!(batch, [(3, "2\n"), (4, "4\n"), (3, "6\n")], "{v}");
    assert_eq!(v["ce"]["status"], 6, "{v}");
    assert!(
        v["ce"]["compile_output"]
            .as_str()
            .unwrap()
            .contains("error"),
        "{v}"
    );
    assert_eq!(v["re"]["status"], 11, "{v}");
    assert_eq!(v["re"]["exit_code"], 3);
    assert_eq!(v["wait_true"]["code"], 201, "{v}");
    assert_eq!(v["wait_true"]["body"]["stdout"], "42\n");
    assert_eq!(v["wait_true"]["body"]["status"]["description"], "Accepted");
    // The server saw the batch endpoints, and answers a token it issued.
    let c = server::client();
    let token = v["async_token"].as_str().unwrap();
    let got: Value = c
        .get(server.url(&format!(
            "/submissions/{token}?fields=status,cod_status,language"
        )))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["status"]["id"], 3);
    assert_eq!(got["cod_status"], "ok");
    assert!(
        got["language"]["name"]
            .as_str()
            .unwrap()
            .starts_with("C (GCC"),
        "{got}"
    );
}

use common::server;

async fn submit(st: &cod_server::AppState, query: &str, body: &Value) -> Resp {
    post_json(st, &format!("/submissions?{query}"), body).await
}

#[tokio::test(flavor = "multi_thread")]
async fn verdicts_map_to_judge0_statuses() {
    let st = common::jobs::state_at(65_500);
    let wait = "wait=true&fields=*";
    let cases: &[(&str, i64, &str, Value, i64)] = &[
        // (language id, ..., source, extra, status)
        ("ok", 71, "print(1)", json!({}), 3),
        ("wrong", 71, "print(1)", json!({"expected_output": "2"}), 4),
        (
            "right",
            71,
            "print(1)  ",
            json!({"expected_output": "1\n\n"}),
            3,
        ),
        (
            "tle",
            71,
            "while True: pass",
            json!({"cpu_time_limit": 0.3}),
            5,
        ),
        ("ce", 50, "int main(){ nope }", json!({}), 6),
        (
            "segv",
            50,
            "int main(){ return *(volatile int*)0; }",
            json!({}),
            7,
        ),
        (
            "fpe",
            50,
            "int main(){ volatile int z = 0; return 7 / z; }",
            json!({}),
            9,
        ),
        (
            "abrt",
            50,
            "#include <stdlib.h>\nint main(){ abort(); }",
            json!({}),
            10,
        ),
        ("nzec", 71, "import sys; sys.exit(4)", json!({}), 11),
        (
            "mle",
            71,
            "x = bytearray(200 << 20)",
            json!({"memory_limit": 65536}),
            12,
        ),
    ];
    for (name, lang, src, extra, want) in cases {
        let mut body = json!({"source_code": src, "language_id": lang});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = submit(&st, wait, &body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.json);
        assert_eq!(r.json["status"]["id"], *want, "{name}: {}", r.json);
        assert!(r.json["status"]["description"].is_string());
        for f in [
            "token",
            "stdout",
            "time",
            "memory",
            "created_at",
            "finished_at",
            "language",
            "wall_time",
        ] {
            assert!(r.json.get(f).is_some(), "{name}: no {f} in {}", r.json);
        }
    }
    // cod's own verdict, asked for by name: the memory limit Judge0 cannot express.
    let r = submit(
        &st,
        "wait=true&fields=status,message,cod_status,exit_signal",
        &json!({"source_code": "x = bytearray(200 << 20)", "language_id": 71, "memory_limit": 65536}),
    )
    .await;
    assert_eq!(r.json["cod_status"], "memory_limit", "{}", r.json);
    assert_eq!(r.json["exit_signal"], 9);
    assert!(
        r.json.get("stdout").is_none(),
        "only the fields asked for: {}",
        r.json
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn base64_fields_and_errors_follow_judge0() {
    let st = common::jobs::state_at(65_550);
    let body = json!({"source_code": B64.encode("print(input() + '!')"), "language_id": 71,
                      "stdin": B64.encode("hé"), "command_line_arguments": "a 'b c'"});
    let r = submit(&st, "base64_encoded=true&wait=true", &body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let out = B64.decode(r.json["stdout"].as_str().unwrap()).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), "hé!\n");
    // Without wait: a token, then the submission by token.
    let r = submit(&st, "", &json!({"source_code": "import sys; print(sys.argv[1:])", "language_id": 71, "command_line_arguments": "a 'b c'"})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let token = r.json["token"].as_str().unwrap().to_owned();
    assert_eq!(r.json.as_object().unwrap().len(), 1, "{}", r.json);
    // A UUID v4, as the SDK insists.
    let groups: Vec<usize> = token.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "{token}");
    assert_eq!(&token[14..15], "4", "{token}");
    st.jobs
        .wait_state(&token, |s| s == cod_server::jobs::JobState::Done, TIMEOUT)
        .await
        .unwrap();
    let r = get(&st, &format!("/submissions/{token}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["stdout"], "['a', 'b c']\n");
    let keys: Vec<&String> = r.json.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 8, "the default fields: {keys:?}");
    // Batch: tokens for the valid, errors for the invalid; fetched together.
    let r = post_json(
        &st,
        "/submissions/batch",
        &json!({"submissions": [{"source_code": "print(1)", "language_id": 71}, {"language_id": 71}]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let t1 = r.json[0]["token"].as_str().unwrap().to_owned();
    assert_eq!(r.json[1]["source_code"][0], "can't be blank");
    st.jobs
        .wait_state(&t1, |s| s == cod_server::jobs::JobState::Done, TIMEOUT)
        .await
        .unwrap();
    let r = get(
        &st,
        &format!("/submissions/batch?tokens={t1},nope&fields=stdout,status_id"),
    )
    .await;
    assert_eq!(r.json["submissions"][0]["stdout"], "1\n", "{}", r.json);
    assert_eq!(r.json["submissions"][0]["status_id"], 3);
    assert_eq!(r.json["submissions"][1], Value::Null);
    // Errors: fields, unknown tokens, field errors with 422.
    let r = get(&st, &format!("/submissions/{t1}?fields=stdout,bogus")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json["error"], "invalid fields: [bogus]");
    assert_eq!(
        get(&st, "/submissions/nope").await.status,
        StatusCode::NOT_FOUND
    );
    let r = submit(&st, "", &json!({"source_code": "x", "language_id": 9999, "cpu_time_limit": 99999, "enable_network": true})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);
    for f in ["language_id", "cpu_time_limit", "enable_network"] {
        assert!(r.json[f][0].is_string(), "{f}: {}", r.json);
    }
    let r = post(&st, "/submissions", "{not json").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread")]
async fn languages_statuses_about_and_config() {
    let st = common::jobs::state_at(65_600);
    let langs = get(&st, "/languages").await.json;
    let ids: Vec<i64> = langs
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_i64().unwrap())
        .collect();
    for id in [46, 48, 49, 50, 52, 53, 54, 62, 63, 71, 73] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
    let py = langs
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == 71)
        .unwrap();
    assert!(
        py["name"].as_str().unwrap().starts_with("Python (3."),
        "{py}"
    );
    let one = get(&st, "/languages/54").await.json;
    assert!(
        one["name"].as_str().unwrap().starts_with("C++ (GCC"),
        "{one}"
    );
    assert_eq!(one["is_archived"], false);
    assert_eq!(
        get(&st, "/languages/70").await.status,
        StatusCode::NOT_FOUND
    );
    let statuses = get(&st, "/statuses").await.json;
    assert_eq!(statuses.as_array().unwrap().len(), 14);
    assert_eq!(statuses[2], json!({"id": 3, "description": "Accepted"}));
    assert_eq!(
        statuses[12],
        json!({"id": 13, "description": "Internal Error"})
    );
    assert_eq!(get(&st, "/about").await.json["version"], "1.13.1");
    let c = get(&st, "/config_info").await.json;
    assert_eq!(c["cpu_time_limit"], 5.0);
    assert_eq!(c["memory_limit"], 256 * 1024);
    assert_eq!(c["max_submission_batch_size"], 20);
    assert_eq!(c["enable_wait_result"], true);
}
