//! Asynchronous jobs with real runs: results by id, cancellation by id (queued and
//! running, asynchronous and synchronous), live usage in the listing, signed and retried
//! callbacks, batches, test cases compiled once, and API keys.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use cod_core::config::{ApiKeyConfig, AuthConfig, JobsConfig};
use cod_core::limits::LimitsPolicy;
use cod_runtime::Executor;
use cod_sched::{Scheduler, Ticket};
use cod_server::{AppState, ServerOptions};
use common::jobs::*;
use common::*;
use serde_json::{Value, json};
use tokio::sync::mpsc;

fn state_opts(uid_base: u32, workers: usize, options: &ServerOptions) -> AppState {
    AppState::new(
        Arc::new(Executor::new(
            jail_with(u32::try_from(workers).unwrap(), uid_base),
            registry(),
            LimitsPolicy::default(),
        )),
        Scheduler::new(workers, 64),
        1 << 20,
    )
    .with_options(options)
}

const SLEEPER: &str = "import time\nprint('up', flush=True)\ntime.sleep(30)";

#[tokio::test(flavor = "multi_thread")]
async fn a_job_answers_202_then_its_result_by_id() {
    let st = state_at(65_400);
    let r = post_json(
        &st,
        "/api/v1/jobs",
        &json!({"language": "python", "source": "print(input()[::-1])", "stdin": "abc"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let id = r.json["id"].as_str().unwrap().to_owned();
    assert!(
        matches!(r.json["state"].as_str(), Some("queued" | "running")),
        "{}",
        r.json
    );
    wait_done(&st, &id).await;
    let v = get(&st, &format!("/api/v1/jobs/{id}")).await;
    assert_eq!(v.status, StatusCode::OK);
    assert_eq!(v.json["state"], "done");
    assert_eq!(v.json["result"]["stdout"], "cba\n");
    assert_eq!(v.json["result"]["id"], id.as_str());
    for k in [
        "created_at",
        "started_at",
        "finished_at",
        "waited_ms",
        "expected_ms",
        "slot",
    ] {
        assert!(!v.json[k].is_null(), "{k} missing: {}", v.json);
    }
    // `wait=true` answers when done.
    let r = post_json(
        &st,
        "/api/v1/jobs?wait=true",
        &json!({"language": "bash", "source": "echo $((6*7))"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["result"]["stdout"], "42\n");
    // Errors name the field; unknown jobs are 404.
    let r = post_json(
        &st,
        "/api/v1/jobs",
        &json!({"language": "python", "source": "1", "callback_url": "ftp://x"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.json["error"]
            .as_str()
            .unwrap()
            .starts_with("callback_url"),
        "{}",
        r.json
    );
    let r = get(&st, "/api/v1/jobs/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = get(&st, "/api/v1/jobs?state=sleeping").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.json["error"].as_str().unwrap().starts_with("state"),
        "{}",
        r.json
    );
}

/// `DELETE` cancels a running job (its processes die, its slot frees), a queued one (it
/// leaves the queue) and a synchronous run (its caller gets 409).
#[tokio::test(flavor = "multi_thread")]
async fn cancel_by_id_kills_running_and_dequeues_queued_jobs() {
    let uid_base = 64_500;
    let st = state_opts(uid_base, 1, &ServerOptions::default());
    let limits = json!({"wall_ms": 40000, "cpu_ms": 1000});
    let running = submit(
        &st,
        &json!({"language": "python", "source": SLEEPER, "limits": limits}),
    )
    .await;
    wait_started(&st, &running).await;
    tokio::time::timeout(TIMEOUT, async {
        while processes_of(uid_base..uid_base + 1).is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the sleeper starts");
    let queued = submit(&st, &json!({"language": "python", "source": "print(1)"})).await;
    assert_eq!(st.scheduler.stats().queued, 1);
    let r = delete(&st, &format!("/api/v1/jobs/{queued}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["state"], "cancelled");
    assert_eq!(st.scheduler.stats().queued, 0);
    let r = delete(&st, &format!("/api/v1/jobs/{running}")).await;
    assert_eq!(r.json["state"], "cancelled", "{}", r.json);
    assert!(r.json["finished_at"].is_string());
    tokio::time::timeout(Duration::from_secs(20), async {
        while !processes_of(uid_base..uid_base + 1).is_empty() || st.scheduler.stats().running != 0
        {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the cancelled run's processes are killed and its slot is freed");
    // A synchronous run cancelled by id: its caller hears 409.
    let sync = tokio::spawn({
        let st = st.clone();
        async move {
            post_json(&st, "/api/v1/run", &json!({"language": "python", "source": SLEEPER, "limits": {"wall_ms": 40000, "cpu_ms": 1000}})).await
        }
    });
    let id = tokio::time::timeout(TIMEOUT, async {
        loop {
            let l = get(&st, "/api/v1/jobs?state=running").await;
            if let Some(id) = l.json["jobs"][0]["id"].as_str() {
                break id.to_owned();
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the synchronous run is listed while it runs");
    let r = delete(&st, &format!("/api/v1/jobs/{id}")).await;
    assert_eq!(r.json["state"], "cancelled", "{}", r.json);
    let answer = sync.await.unwrap();
    assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.json);
    assert!(answer.json["error"].as_str().unwrap().contains("cancelled"));
    // And a run still works.
    assert_eq!(
        run(&st, "python", "print(5)", json!({})).await["stdout"],
        "5\n"
    );
}

/// `GET /api/v1/jobs?state=running` shows live CPU, memory and wall time of a running job.
#[tokio::test(flavor = "multi_thread")]
async fn running_jobs_are_listed_with_live_usage() {
    let st = state_opts(64_600, 1, &ServerOptions::default());
    let busy = "x = bytearray(30 << 20)\nwhile True:\n    x[0] = (x[0] + 1) % 255";
    let id = submit(&st, &json!({"language": "python", "source": busy, "limits": {"cpu_ms": 20000, "wall_ms": 30000}})).await;
    wait_started(&st, &id).await;
    let usage = tokio::time::timeout(TIMEOUT, async {
        loop {
            let l = get(&st, "/api/v1/jobs?state=running").await;
            let job = l.json["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|j| j["id"] == id.as_str())
                .cloned();
            if let Some(u) = job.as_ref().map(|j| j["usage"].clone())
                && u["cpu_ms"].as_u64().is_some_and(|c| c > 200)
            {
                break (job.unwrap(), u);
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("usage reports arrive while the job runs");
    let (job, u) = usage;
    assert_eq!(job["state"], "running");
    assert!(u["memory_kb"].as_u64().unwrap() > 30 * 1024, "{u}");
    assert!(u["wall_ms"].as_u64().unwrap() > 0, "{u}");
    assert!(job["slot"].is_u64());
    let r = delete(&st, &format!("/api/v1/jobs/{id}")).await;
    assert_eq!(r.json["state"], "cancelled");
}

/// A receiver on 127.0.0.1 that answers the statuses in `plan` in turn (then 200), and
/// reports each request it gets.
async fn receiver(
    plan: Vec<u16>,
) -> (
    String,
    mpsc::UnboundedReceiver<(axum::http::HeaderMap, Vec<u8>)>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let plan = Arc::new(std::sync::Mutex::new(plan.into_iter()));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::any(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let tx = tx.clone();
                let plan = plan.clone();
                async move {
                    let _ = tx.send((headers, body.to_vec()));
                    let code = plan.lock().unwrap().next().unwrap_or(200);
                    StatusCode::from_u16(code).unwrap()
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn callbacks_are_signed_retried_and_their_failures_shown() {
    let options = ServerOptions {
        jobs: JobsConfig {
            callback_secret: "test-secret".into(),
            callback_attempts: 3,
            callback_backoff: Duration::from_millis(20),
            ..JobsConfig::default()
        },
        ..ServerOptions::default()
    };
    let st = state_opts(64_700, 1, &options);
    let (url, mut hits) = receiver(vec![500, 503]).await;
    let id = submit(
        &st,
        &json!({"language": "python", "source": "print('called back')", "callback_url": url}),
    )
    .await;
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let (headers, body) = tokio::time::timeout(TIMEOUT, hits.recv())
            .await
            .unwrap()
            .unwrap();
        let sig = headers["x-cod-signature-256"].to_str().unwrap();
        assert_eq!(
            sig,
            cod_server::callback::sign(b"test-secret", &body),
            "the signature verifies"
        );
        assert_eq!(headers["x-cod-job"], id.as_str());
        bodies.push(body);
    }
    let v: Value = serde_json::from_slice(&bodies[2]).unwrap();
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["result"]["stdout"], "called back\n");
    let view = tokio::time::timeout(TIMEOUT, async {
        loop {
            let v = get(&st, &format!("/api/v1/jobs/{id}")).await.json;
            if v["callback"]["state"] != "pending" {
                break v;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert_eq!(view["callback"]["state"], "delivered", "{view}");
    assert_eq!(view["callback"]["attempts"], 3);

    // A receiver that always fails: after every attempt, the job says so.
    let (url, mut hits) = receiver(vec![502, 502, 502]).await;
    let id = submit(
        &st,
        &json!({"language": "python", "source": "print(1)", "callback_url": url}),
    )
    .await;
    for _ in 0..3 {
        tokio::time::timeout(TIMEOUT, hits.recv())
            .await
            .unwrap()
            .unwrap();
    }
    let view = tokio::time::timeout(TIMEOUT, async {
        loop {
            let v = get(&st, &format!("/api/v1/jobs/{id}")).await.json;
            if v["callback"]["state"] == "failed" {
                break v;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert_eq!(view["callback"]["attempts"], 3);
    assert!(
        view["callback"]["last_error"]
            .as_str()
            .unwrap()
            .contains("502"),
        "{view}"
    );
    assert!(st.jobs.drain(TIMEOUT).await, "callbacks finish");
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_and_test_cases_compiled_once() {
    let st = state_at(65_450);
    let r = post_json(
        &st,
        "/api/v1/jobs/batch",
        &json!({"jobs": [
            {"language": "python", "source": "print('py')"},
            {"language": "bash", "source": "echo sh"},
            {"language": "c", "source": "#include <stdio.h>\nint main(){puts(\"c\");}"},
        ]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let ids: Vec<String> = r.json["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    for (id, out) in ids.iter().zip(["py\n", "sh\n", "c\n"]) {
        assert_eq!(wait_done(&st, id).await["result"]["stdout"], out);
    }
    let listed = get(&st, &format!("/api/v1/jobs?ids={}", ids.join(","))).await;
    assert_eq!(listed.json["jobs"].as_array().unwrap().len(), 3);
    // Errors name the job and the field; the limit on a batch's size holds.
    let r = post_json(&st, "/api/v1/jobs/batch", &json!({"jobs": [{"language": "python", "source": "1"}, {"language": "cobol", "source": "x"}]})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.json["error"]
            .as_str()
            .unwrap()
            .starts_with("jobs[1].language"),
        "{}",
        r.json
    );
    let many: Vec<Value> = (0..21)
        .map(|_| json!({"language": "python", "source": "1"}))
        .collect();
    let r = post_json(&st, "/api/v1/jobs/batch", &json!({"jobs": many})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.json["error"].as_str().unwrap().starts_with("jobs"),
        "{}",
        r.json
    );

    // One C program, three cases: compiled once, each case with its verdict.
    let src = "#include <stdio.h>\nint main(){int n; scanf(\"%d\",&n); printf(\"%d\\n\", n*2); return 0;}";
    let id = submit(
        &st,
        &json!({"language": "c", "source": src, "tests": [
            {"stdin": "1", "expected_output": "2"},
            {"stdin": "21", "expected_output": "42\n"},
            {"stdin": "5", "expected_output": "11"},
            {"stdin": "7"},
        ]}),
    )
    .await;
    let v = wait_done(&st, &id).await;
    let t = &v["tests"];
    assert_eq!(
        (t["accepted"].as_u64(), t["total"].as_u64()),
        (Some(2), Some(4)),
        "{v}"
    );
    let cases = t["cases"].as_array().unwrap();
    let comparisons: Vec<&Value> = cases.iter().map(|c| &c["comparison"]).collect();
    assert_eq!(
        comparisons,
        [
            &json!("accepted"),
            &json!("accepted"),
            &json!("wrong_answer"),
            &Value::Null
        ]
    );
    assert_eq!(cases[3]["stdout"], "14\n");
    assert_eq!(
        cases[0]["compile"]["cached"], false,
        "the first case compiles"
    );
    for c in &cases[1..] {
        assert_eq!(
            c["compile"]["cached"], true,
            "later cases reuse the compile: {c}"
        );
    }
    // A program that does not compile: every case says so.
    let id = submit(&st, &json!({"language": "c", "source": "int main(){ nope }", "tests": [{"stdin": "1"}, {"stdin": "2"}]})).await;
    let v = wait_done(&st, &id).await;
    for c in v["tests"]["cases"].as_array().unwrap() {
        assert_eq!(c["status"], "compile_error", "{c}");
    }
    let r = post_json(
        &st,
        "/api/v1/jobs",
        &json!({"language": "python", "source": "1", "stdin": "x", "tests": [{}]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.json["error"].as_str().unwrap().starts_with("stdin"),
        "{}",
        r.json
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_identify_clients_and_scope_their_jobs() {
    let key = |name: &str, key: &str, concurrency: usize, admin: bool| ApiKeyConfig {
        name: name.into(),
        key: key.into(),
        concurrency,
        admin,
        ..ApiKeyConfig::default()
    };
    let options = ServerOptions {
        auth: AuthConfig {
            enabled: true,
            keys: vec![
                key("alice", "alice-key-0123456789", 1, false),
                key("bob", "bob-key-0123456789ab", 0, false),
                key("ops", "ops-key-0123456789ab", 0, true),
            ],
        },
        ..ServerOptions::default()
    };
    let st = state_opts(64_800, 1, &options);
    let body = json!({"language": "python", "source": "print('hi')"});
    let r = post_from(&st, "10.0.0.9", "/api/v1/run", &body, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.json);
    assert!(r.headers.contains_key("www-authenticate"));
    let r = post_from(
        &st,
        "10.0.0.9",
        "/api/v1/run",
        &body,
        &[("authorization", "Bearer wrong-key-0123456789")],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let alice = [("authorization", "Bearer alice-key-0123456789")];
    let r = post_from(&st, "10.0.0.9", "/api/v1/run", &body, &alice).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["stdout"], "hi\n");
    // Judge0's header works too, and public routes need no key.
    let bob = [("x-auth-token", "bob-key-0123456789ab")];
    let r = post_from(&st, "10.0.0.9", "/api/v1/jobs", &body, &bob).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let bobs = r.json["id"].as_str().unwrap().to_owned();
    assert_eq!(r.json["client"], "bob");
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/openapi.json",
        "/api/docs",
    ] {
        assert_eq!(get(&st, path).await.status, StatusCode::OK, "{path}");
    }
    // Alice cannot see Bob's job; the operator can.
    wait_done(&st, &bobs).await;
    let path = format!("/api/v1/jobs/{bobs}");
    assert_eq!(
        get_from(&st, "10.0.0.9", &path, &alice).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get_from(&st, "10.0.0.9", &path, &bob).await.status,
        StatusCode::OK
    );
    let ops = [("authorization", "Bearer ops-key-0123456789ab")];
    let all = get_from(&st, "10.0.0.9", "/api/v1/jobs", &ops).await;
    assert_eq!(
        all.json["jobs"].as_array().unwrap().len(),
        1,
        "{}",
        all.json
    );
    // Alice's key allows one run at a time.
    let _slot = st
        .scheduler
        .acquire(Ticket::new("h", "holder", "c"), &[])
        .await
        .unwrap();
    let r = post_from(&st, "10.0.0.9", "/api/v1/jobs", &body, &alice).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = post_from(&st, "10.0.0.9", "/api/v1/jobs", &body, &alice).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.json);
    assert_eq!(r.json["reason"], "client_concurrency");
}

/// A client that goes away from a synchronous run that waits in the queue takes it out of
/// the queue (and out of the job list); the slot goes to the next run.
#[tokio::test(flavor = "multi_thread")]
async fn a_disconnected_client_leaves_the_queue() {
    let st = state_opts(64_850, 1, &ServerOptions::default());
    let held = st
        .scheduler
        .acquire(Ticket::new("h", "holder", "c"), &[])
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let st = st.clone();
        async move { run(&st, "python", "print('never')", json!({})).await }
    });
    tokio::time::timeout(TIMEOUT, async {
        while st.scheduler.stats().queued < 1 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the run queues");
    let listed = get(&st, "/api/v1/jobs?state=queued").await;
    assert_eq!(
        listed.json["jobs"].as_array().unwrap().len(),
        1,
        "{}",
        listed.json
    );
    waiting.abort();
    let _ = waiting.await;
    assert_eq!(st.scheduler.stats().queued, 0);
    assert_eq!(st.scheduler.queue_depths().get("python"), None);
    let listed = get(&st, "/api/v1/jobs").await;
    assert_eq!(
        listed.json["jobs"].as_array().unwrap().len(),
        0,
        "{}",
        listed.json
    );
    drop(held);
    assert_eq!(
        run(&st, "python", "print(3)", json!({})).await["stdout"],
        "3\n"
    );
}

/// Over a real connection to a real `cod serve`: a client that closes its connection while
/// its synchronous run runs has the run killed (its processes die, its slot frees), and one
/// that closes while its run waits takes it out of the queue.
#[tokio::test(flavor = "multi_thread")]
async fn closing_the_connection_kills_the_run_or_leaves_the_queue() {
    use tokio::io::AsyncWriteExt;

    let uid_base = 65_800;
    let dir = tempfile::tempdir().unwrap();
    let server = common::server::Server::start(
        &["--workers", "1"],
        &format!("[sandbox]\nuid_base = {uid_base}\n"),
        &[],
        dir.path(),
    );
    let http = common::server::client();
    // Sends a synchronous run on a connection of its own, which is returned open.
    let send_run = |body: Value| {
        let addr = server.addr.clone();
        async move {
            let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let body = body.to_string();
            let req = format!(
                "POST /api/v1/run HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            tcp.write_all(req.as_bytes()).await.unwrap();
            tcp
        }
    };
    let health = || {
        let (http, url) = (http.clone(), server.url("/healthz"));
        async move {
            let v: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            (
                v["running"].as_u64().unwrap(),
                v["queued"].as_u64().unwrap(),
            )
        }
    };
    let running = send_run(json!({"language": "python", "source": SLEEPER,
        "limits": {"wall_ms": 40000, "cpu_ms": 1000}}))
    .await;
    tokio::time::timeout(TIMEOUT, async {
        while processes_of(uid_base..uid_base + 1).is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the sleeper starts");
    let queued = send_run(json!({"language": "python", "source": "print('never')"})).await;
    tokio::time::timeout(TIMEOUT, async {
        while health().await != (1, 1) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("one run runs and one waits");
    let (_, listed) = common::server::get_json(&server.url("/api/v1/jobs")).await;
    let states: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["running", "queued"], "{listed}");

    // The waiting run's client goes away: the run leaves the queue; the other still runs.
    drop(queued);
    tokio::time::timeout(TIMEOUT, async {
        while health().await != (1, 0) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the waiting run leaves the queue");
    assert!(!processes_of(uid_base..uid_base + 1).is_empty());

    // The running run's client goes away: its program is killed and the slot frees, long
    // before the program's 30 s.
    drop(running);
    tokio::time::timeout(Duration::from_secs(20), async {
        while !processes_of(uid_base..uid_base + 1).is_empty() || health().await != (0, 0) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the run is killed and its slot freed");
    let (_, listed) = common::server::get_json(&server.url("/api/v1/jobs")).await;
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 0, "{listed}");
    let metrics = http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l == "cod_cancelled_total 2"),
        "both runs count as cancelled:\n{metrics}"
    );
    // And the slot runs the next program.
    let (_, v) = common::server::post_json(
        &server.url("/api/v1/run"),
        &json!({"language": "python", "source": "print('next')"}),
    )
    .await;
    assert_eq!(v["stdout"], "next\n", "{v}");
}
