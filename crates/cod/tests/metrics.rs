//! Observability: Prometheus metrics at `/metrics` (queue depth per runtime, waits and run
//! times, verdicts, compile cache, rejections, running jobs, CPU and memory in use), and
//! JSON logs whose lines carry the job's id from HTTP to the sandbox.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use cod_core::limits::LimitsPolicy;
use cod_runtime::Executor;
use cod_sched::{Scheduler, Ticket};
use cod_server::AppState;
use common::jobs::*;
use common::server::Server;
use common::*;
use serde_json::{Value, json};

/// The value of the series `name{labels}` (labels as written, or "" for none).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

async fn metrics(st: &AppState) -> String {
    let r = get(st, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    r.json.as_str().expect("text").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_cover_queues_waits_verdicts_cache_and_rejections() {
    let st = AppState::new(
        Arc::new(Executor::new(
            jail_with(2, 65_100),
            registry(),
            LimitsPolicy::default(),
        )),
        Scheduler::new(2, 1),
        1 << 20,
    );
    assert_eq!(
        run(&st, "python", "print(1)", json!({})).await["status"],
        "ok"
    );
    let c = "#include <stdio.h>\nint main(){puts(\"m\");}";
    assert_eq!(
        run(&st, "c", c, json!({})).await["compile"]["cached"],
        false
    );
    assert_eq!(run(&st, "c", c, json!({})).await["compile"]["cached"], true);
    assert_eq!(
        run(&st, "python", "import sys; sys.exit(2)", json!({})).await["status"],
        "runtime_error"
    );
    // A busy job for live usage, a held slot, one run queued, one refused.
    let busy = "x = bytearray(40 << 20)\nwhile True:\n    x[0] = (x[0] + 1) % 255";
    let id = submit(&st, &json!({"language": "python", "source": busy, "limits": {"cpu_ms": 20000, "wall_ms": 30000}})).await;
    wait_started(&st, &id).await;
    let _held = st
        .scheduler
        .acquire(Ticket::new("h", "holder", "c"), &[])
        .await
        .unwrap();
    let queued = submit(&st, &json!({"language": "python", "source": "print(2)"})).await;
    let r = post_json(
        &st,
        "/api/v1/run",
        &json!({"language": "python", "source": "print(3)"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let text = tokio::time::timeout(TIMEOUT, async {
        loop {
            let t = metrics(&st).await;
            if value(&t, "cod_running_memory_bytes").is_some_and(|m| m > 40e6) {
                break t;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("live usage reaches the metrics");
    for (series, at_least) in [
        ("cod_workers", 2.0),
        ("cod_running_jobs", 2.0),
        ("cod_cpus_in_use", 2.0),
        ("cod_queue_runs", 1.0),
        (r#"cod_queue_depth{runtime="python"}"#, 1.0),
        (r#"cod_rejected_total{reason="queue_full"}"#, 1.0),
        (r#"cod_runs_total{language="python",status="ok"}"#, 1.0),
        (
            r#"cod_runs_total{language="python",status="runtime_error"}"#,
            1.0,
        ),
        (r#"cod_compile_cache_hits_total{language="c"}"#, 1.0),
        (r#"cod_compile_cache_misses_total{language="c"}"#, 1.0),
        (r#"cod_job_run_seconds_count{runtime="c"}"#, 2.0),
        (r#"cod_job_wait_seconds_count{runtime="python"}"#, 3.0),
        ("cod_running_cpu_seconds", 0.0),
    ] {
        let v = value(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
        assert!(v >= at_least, "{series} = {v} < {at_least}");
    }
    assert_eq!(value(&text, r#"cod_queue_depth{runtime="c"}"#), Some(0.0));
    assert!(
        text.contains(r#"cod_job_wait_seconds_bucket{runtime="python",le="0.005"}"#),
        "{text}"
    );
    assert!(
        text.contains("# HELP cod_queue_depth"),
        "metrics are described"
    );
    let _ = delete(&st, &format!("/api/v1/jobs/{id}")).await;
    let _ = delete(&st, &format!("/api/v1/jobs/{queued}")).await;
}

/// `--log-format json`: one JSON object per line; a run's lines carry its job's id (the
/// `job` span) and the sandbox run's (the `run` span) — the same id.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_the_job_id_from_http_to_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        &["--workers", "1"],
        "[sandbox]\nuid_base = 65200\n",
        &[("COD_LOG_FORMAT", "json")],
        dir.path(),
    );
    let v: Value = server::client()
        .post(server.url("/api/v1/run"))
        .json(&json!({"language": "python", "source": "print('logged')"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["stdout"], "logged\n");
    let id = v["id"].as_str().unwrap().to_owned();
    // And an asynchronous job, which runs in a task of its own.
    let job: Value = server::client()
        .post(server.url("/api/v1/jobs"))
        .json(&json!({"language": "python", "source": "print('later')"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_id = job["id"].as_str().unwrap().to_owned();
    let lines = server.take_lines();
    let ids = [id.clone(), job_id.clone()];
    let mut found = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut found = std::collections::HashMap::new();
        while let Ok(line) =
            lines.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        {
            let j: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if j["message"] == "run finished" {
                let run_id = j["spans"]
                    .as_array()
                    .and_then(|s| s.iter().find(|s| s["name"] == "run"))
                    .and_then(|s| s["id"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                if ids.contains(&run_id) {
                    found.insert(run_id, j);
                }
                if found.len() == ids.len() {
                    break;
                }
            }
        }
        found
    })
    .await
    .unwrap();
    // The asynchronous job's lines carry the request that made it, then the job and run.
    let later = found
        .remove(&job_id)
        .expect("a `run finished` line of the job");
    let spans = later["spans"].as_array().expect("the span list");
    let http = spans
        .iter()
        .find(|s| s["name"] == "http")
        .expect("the request's span");
    assert_eq!(http["path"], "/api/v1/jobs", "{later}");
    assert!(
        spans
            .iter()
            .any(|s| s["name"] == "job" && s["id"] == job_id.as_str()),
        "{later}"
    );
    let found = found.remove(&id).expect("a `run finished` line");
    let spans = found["spans"].as_array().expect("the span list");
    let job = spans
        .iter()
        .find(|s| s["name"] == "job")
        .expect("a job span");
    assert_eq!(job["id"], id.as_str(), "{found}");
    let run = spans
        .iter()
        .find(|s| s["name"] == "run")
        .expect("a run span");
    assert_eq!(run["id"], id.as_str());
    assert!(spans.iter().any(|s| s["name"] == "http"), "{found}");
    assert_eq!(found["status"], "ok");
}

use common::server;
