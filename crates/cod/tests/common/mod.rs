//! Shared set-up for the black-box tests: a real sandbox helper (this package's `cod` binary
//! run as `cod __jail`), the language registry, and helpers to call the router in-process.
#![allow(dead_code, unreachable_pub)]

use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use cod_core::limits::LimitsPolicy;
use cod_runtime::{Executor, Registry};
use cod_sandbox::{Jail, JailConfig};
use cod_sched::Scheduler;
use cod_server::AppState;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

pub mod jobs;
pub mod server;

/// Upper bound for any single awaited operation in a test.
pub const TIMEOUT: Duration = Duration::from_secs(120);

pub fn registry() -> Arc<Registry> {
    static REG: OnceLock<Arc<Registry>> = OnceLock::new();
    REG.get_or_init(|| {
        // As `cod serve` does, with the warm runtimes' files in a directory of the tests.
        let reg = Registry::load(None, &[]).expect("the built-in languages load");
        Arc::new(
            reg.with_warm_files(&std::env::temp_dir().join("cod-tests-warm"))
                .expect("the warm runtimes' files are written"),
        )
    })
    .clone()
}

/// A fresh sandbox helper with `slots` slots (each test gets its own, so slots never clash).
pub fn jail(slots: u32) -> Arc<Jail> {
    jail_with(slots, cod_core::config::DEFAULT_UID_BASE)
}

/// Like [`jail`], with programs running as host uids from `uid_base` (tests that look for
/// leftover processes use a range of their own, since other tests run in parallel).
pub fn jail_with(slots: u32, uid_base: u32) -> Arc<Jail> {
    // As `cod serve` does: each slot keeps a sandbox prepared for every language, and may
    // keep the warm runtimes (which ones: the pool of `state_on`).
    let host = cod_runtime::HostLayout::detect().with_languages(&registry());
    let disk = cod_core::limits::LimitsSpec::DEFAULT.to_limits().disk.get();
    let config = JailConfig {
        slots,
        uid_base,
        prepared: Some(host.layout(disk)),
        warm: cod_runtime::warm_runtimes(&registry(), &host, disk),
        ..Default::default()
    };
    Arc::new(
        Jail::spawn(
            Path::new(env!("CARGO_BIN_EXE_cod")),
            &[OsStr::new("__jail")],
            &config,
        )
        .expect("the sandbox helper starts (tests run as root)"),
    )
}

pub fn state_with(workers: usize, queue: usize, max_body: usize, policy: LimitsPolicy) -> AppState {
    state_on(
        jail(u32::try_from(workers).unwrap()),
        workers,
        queue,
        max_body,
        policy,
    )
}

/// The languages a slot may keep warm here, as `cod serve` computes them.
pub fn warm_runtime_names() -> Vec<String> {
    cod_runtime::warm_runtimes(
        &registry(),
        &cod_runtime::HostLayout::detect().with_languages(&registry()),
        cod_core::limits::LimitsSpec::DEFAULT.to_limits().disk.get(),
    )
    .into_iter()
    .map(|w| w.name)
    .collect()
}

pub fn state_on(
    jail: Arc<Jail>,
    workers: usize,
    queue: usize,
    max_body: usize,
    policy: LimitsPolicy,
) -> AppState {
    // As `cod serve` does: warm runtimes in every slot.
    let names = warm_runtime_names();
    let pool = cod_runtime::Pool::new(jail.clone(), names, Default::default());
    AppState::new(
        Arc::new(Executor::new(jail, registry(), policy).with_pool(pool)),
        Scheduler::new(workers, queue),
        max_body,
    )
}

pub fn state() -> AppState {
    state_with(2, 16, 1 << 20, LimitsPolicy::default())
}

/// A response: status, headers, body as JSON (or `Value::String` of the text).
pub struct Resp {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub json: Value,
}

pub async fn call(state: &AppState, req: Request<Body>) -> Resp {
    let app = cod_server::app(state.clone());
    let resp = tokio::time::timeout(TIMEOUT, app.oneshot(req))
        .await
        .expect("the request finishes in time")
        .expect("the router is infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("a body").to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Resp {
        status,
        headers,
        json,
    }
}

pub async fn post(state: &AppState, path: &str, body: impl Into<Body>) -> Resp {
    let req = Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap();
    call(state, req).await
}

pub async fn post_json(state: &AppState, path: &str, body: &Value) -> Resp {
    post(state, path, body.to_string()).await
}

pub async fn get(state: &AppState, path: &str) -> Resp {
    call(state, Request::get(path).body(Body::empty()).unwrap()).await
}

/// Runs `source` in `language` through `POST /api/v1/run` and returns the result JSON,
/// asserting a 200.
pub async fn run(state: &AppState, language: &str, source: &str, extra: Value) -> Value {
    let mut body = serde_json::json!({"language": language, "source": source});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            body[k] = v;
        }
    }
    let r = post_json(state, "/api/v1/run", &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    r.json
}

/// Host processes whose uid is in `uids`.
pub fn processes_of(uids: std::ops::Range<u32>) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let uid: Option<u32> = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|u| u.parse().ok());
        // A program started ahead for the slot's next run (an idle Node.js waiting in the
        // prepared sandbox) is not a leftover of a run.
        let prestarted = std::fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("/opt/cod/warm/"));
        if uid.is_some_and(|u| uids.contains(&u)) && !prestarted {
            out.push(pid);
        }
    }
    out
}
