//! Helpers for the scheduler, jobs, Judge0 and metrics tests: requests from a given remote
//! address, async jobs, and waiting on a job's state (an event, with a bounded timeout).

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use cod_server::AppState;
use cod_server::jobs::JobState;
use serde_json::Value;

use super::{Resp, TIMEOUT, call, jail_with, state_on};

/// State like `common::state()` (two slots, warm runtimes, room for 16 waiting runs) whose
/// programs run as host uids from `uid_base`: these suites keep to 64000–66000 so that
/// other suites' searches for leftover processes never see their programs.
pub fn state_at(uid_base: u32) -> AppState {
    state_on(
        jail_with(2, uid_base),
        2,
        16,
        1 << 20,
        cod_core::limits::LimitsPolicy::default(),
    )
}

/// A request as if from `remote` (the client's identity when auth is off).
pub fn from(remote: &str, mut req: Request<Body>) -> Request<Body> {
    let addr: SocketAddr = format!("{remote}:40000").parse().expect("an IP address");
    req.extensions_mut().insert(ConnectInfo(addr));
    req
}

/// `POST path` with a JSON body from `remote`, with extra headers.
pub async fn post_from(
    st: &AppState,
    remote: &str,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> Resp {
    let mut b = Request::post(path).header(header::CONTENT_TYPE, "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    call(
        st,
        from(remote, b.body(Body::from(body.to_string())).unwrap()),
    )
    .await
}

/// `GET path` from `remote` with extra headers.
pub async fn get_from(st: &AppState, remote: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = Request::get(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    call(st, from(remote, b.body(Body::empty()).unwrap())).await
}

/// `DELETE path`.
pub async fn delete(st: &AppState, path: &str) -> Resp {
    call(st, Request::delete(path).body(Body::empty()).unwrap()).await
}

/// Submits an async job from `remote`; returns its id (asserting 202).
pub async fn submit_from(st: &AppState, remote: &str, body: &Value) -> String {
    let r = post_from(st, remote, "/api/v1/jobs", body, &[]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    r.json["id"].as_str().expect("an id").to_owned()
}

/// Submits an async job; returns its id.
pub async fn submit(st: &AppState, body: &Value) -> String {
    submit_from(st, "127.0.0.1", body).await
}

/// Waits until job `id` satisfies `want`; its view as JSON.
pub async fn wait_state(st: &AppState, id: &str, want: impl Fn(JobState) -> bool) -> Value {
    let v = st
        .jobs
        .wait_state(id, want, TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("job {id} did not reach the state in time"));
    serde_json::to_value(v).expect("a view serializes")
}

/// Waits until job `id` is done or cancelled; its view.
pub async fn wait_done(st: &AppState, id: &str) -> Value {
    wait_state(st, id, |s| {
        matches!(s, JobState::Done | JobState::Cancelled)
    })
    .await
}

/// Waits until job `id` has started (or ended).
pub async fn wait_started(st: &AppState, id: &str) -> Value {
    wait_state(st, id, |s| s != JobState::Queued).await
}
