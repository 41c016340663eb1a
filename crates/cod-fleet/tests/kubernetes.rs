//! The Kubernetes provider against a mock API server that implements what kube-rs calls:
//! `GET /apis/apps/v1/namespaces/{ns}/deployments/{name}` and `GET`/`PATCH` of its `/scale`
//! subresource (a JSON merge patch). There is no cluster here.
#![cfg(feature = "kubernetes")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cod_fleet::provider::{KubernetesConfig, KubernetesError, KubernetesProvider};
use cod_fleet::{Autoscaler, LoadSample, Manager, PolicyConfig, Provider, WorkerState};
use serde_json::{Value, json};

#[derive(Debug, Default)]
struct Cluster {
    replicas: i64,
    ready: i64,
    /// Method, path, query, content type and body of each request.
    requests: Vec<(String, String, String, String, Value)>,
}

type Shared = Arc<Mutex<Cluster>>;

const NS: &str = "cod";
const NAME: &str = "cod-worker";

fn not_found(name: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("deployments.apps \"{name}\" not found"),
            "reason": "NotFound", "details": {"name": name, "group": "apps", "kind": "deployments"},
            "code": 404
        })),
    )
        .into_response()
}

fn log(s: &Shared, method: &str, path: String, query: Option<String>, h: &HeaderMap, body: &[u8]) {
    let ct = h
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = serde_json::from_slice(body).unwrap_or(Value::Null);
    s.lock().expect("lock").requests.push((
        method.into(),
        path,
        query.unwrap_or_default(),
        ct,
        body,
    ));
}

fn scale(c: &Cluster) -> Value {
    json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {"replicas": c.replicas},
        "status": {"replicas": c.replicas, "selector": "app.kubernetes.io/name=cod-worker"}
    })
}

async fn get_deployment(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    h: HeaderMap,
) -> Response {
    log(&s, "GET", format!("{ns}/{name}"), q, &h, b"");
    if ns != NS || name != NAME {
        return not_found(&name);
    }
    let c = s.lock().expect("lock");
    axum::Json(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "replicas": c.replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "cod-worker"}},
            "template": {"metadata": {"labels": {"app.kubernetes.io/name": "cod-worker"}},
                         "spec": {"containers": [{"name": "worker", "image": "cod"}]}}
        },
        "status": {"replicas": c.replicas, "readyReplicas": c.ready}
    }))
    .into_response()
}

async fn get_scale(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    h: HeaderMap,
) -> Response {
    log(&s, "GET", format!("{ns}/{name}/scale"), q, &h, b"");
    if ns != NS || name != NAME {
        return not_found(&name);
    }
    axum::Json(scale(&s.lock().expect("lock"))).into_response()
}

async fn patch_scale(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    log(&s, "PATCH", format!("{ns}/{name}/scale"), q, &h, &body);
    if ns != NS || name != NAME {
        return not_found(&name);
    }
    if h.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/merge-patch+json") {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
    }
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    let mut c = s.lock().expect("lock");
    if let Some(r) = patch.pointer("/spec/replicas").and_then(Value::as_i64) {
        c.replicas = r;
    }
    axum::Json(scale(&c)).into_response()
}

/// A mock API server on a free loopback port, and a provider pointed at it.
async fn cluster(replicas: i64, ready: i64, deployment: &str) -> (Shared, KubernetesProvider) {
    let state: Shared = Arc::new(Mutex::new(Cluster {
        replicas,
        ready,
        ..Cluster::default()
    }));
    let app = Router::new()
        .route(
            "/apis/apps/v1/namespaces/{ns}/deployments/{name}",
            get(get_deployment),
        )
        .route(
            "/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale",
            get(get_scale).patch(patch_scale),
        )
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let kc = kube::Config::new(format!("http://{addr}").parse().expect("a URI"));
    let provider = KubernetesProvider::with_config(
        kc,
        KubernetesConfig {
            namespace: NS.into(),
            deployment: deployment.into(),
            ..KubernetesConfig::default()
        },
    )
    .expect("a client");
    (state, provider)
}

#[tokio::test]
async fn reads_and_scales_the_deployment() {
    let (state, p) = cluster(3, 2, NAME).await;
    let r = p.replicas().await.expect("read");
    assert_eq!((r.wanted, r.ready), (3, 2));
    let w = p.workers().await.expect("listed");
    let states: Vec<WorkerState> = w.iter().map(|w| w.state).collect();
    assert_eq!(
        states,
        [
            WorkerState::Ready,
            WorkerState::Ready,
            WorkerState::Starting
        ]
    );
    assert!(w[0].slots == 64 && w[0].id.0 == "cod-worker/ready-0");

    assert_eq!(p.set_replicas(7).await.expect("scaled"), 7);
    let c = state.lock().expect("lock");
    assert_eq!(c.replicas, 7);
    let (method, path, query, ct, body) = c.requests.last().expect("a request").clone();
    assert_eq!(method, "PATCH");
    assert_eq!(path, "cod/cod-worker/scale");
    assert!(query.contains("fieldManager=cod-fleet"), "{query}");
    assert_eq!(ct, "application/merge-patch+json");
    assert_eq!(body, json!({"spec": {"replicas": 7}}));
}

#[tokio::test]
async fn a_missing_deployment_is_an_error_naming_it() {
    let (_, p) = cluster(1, 1, "nope").await;
    let err = p.replicas().await.expect_err("not found");
    assert!(
        matches!(&err, KubernetesError::Get { namespace, name, .. } if namespace == "cod" && name == "nope"),
        "{err:?}"
    );
    let err = p.set_replicas(2).await.expect_err("not found");
    assert!(
        matches!(&err, KubernetesError::Scale { replicas: 2, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_manager_scales_the_deployment_with_the_load() {
    let (state, p) = cluster(1, 1, NAME).await;
    let policy = Autoscaler::new(PolicyConfig {
        scale_down_delay: Duration::from_secs(60),
        scale_down_step: 1.0,
        ..PolicyConfig::default()
    })
    .expect("valid");
    let mut m = Manager::new(policy, p);
    let sample = |at: f64, arrival: f64| LoadSample {
        at: Some(at),
        arrival_rate: arrival,
        mean_run: Some(Duration::from_secs(10)),
        ..LoadSample::default()
    };
    // 100 runs/s of 10 s: 18 workers of 64.
    let d = m.step(sample(0.0, 100.0)).await.expect("decided");
    assert_eq!(d.target, 18);
    assert_eq!(state.lock().expect("lock").replicas, 18);
    // Pods become ready; the load goes away; after the delay the Deployment shrinks.
    state.lock().expect("lock").ready = 18;
    let d = m.step(sample(10.0, 0.0)).await.expect("decided");
    assert!(!d.acts());
    assert_eq!(state.lock().expect("lock").replicas, 18);
    let d = m.step(sample(100.0, 0.0)).await.expect("decided");
    assert_eq!(d.target, 1);
    assert_eq!(state.lock().expect("lock").replicas, 1);
    let patches = state
        .lock()
        .expect("lock")
        .requests
        .iter()
        .filter(|r| r.0 == "PATCH")
        .count();
    assert_eq!(patches, 2, "only decisions that act patch");
}
