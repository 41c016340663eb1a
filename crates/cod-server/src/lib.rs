//! The HTTP side of cod: the native API (runs, asynchronous jobs, the editor's WebSocket),
//! Piston v2 and Judge0 compatibility, metrics, the OpenAPI document and the web page.
//!
//! Build the router with [`app`] (tests drive it with `oneshot`); [`serve`] runs it on a
//! listener until a shutdown signal. This crate never runs programs itself: it admits runs
//! through a [`cod_sched::Scheduler`] and hands them to a [`cod_runtime::Executor`]
//! through the [`worker::LocalWorker`].
#![forbid(unsafe_code)]

pub mod auth;
pub mod callback;
pub mod cases;
pub mod error;
pub mod fleet;
pub mod jobs;
pub mod jobs_api;
pub mod judge0;
pub mod metrics;
pub mod native;
pub mod openapi;
pub mod piston;
mod runner;
pub mod schedbench;
pub mod stream;
mod web;
pub mod worker;
pub mod ws;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cod_core::config::{AuthConfig, JobsConfig};
use cod_runtime::Executor;
use cod_sched::Scheduler;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::auth::Auth;
use crate::callback::Callbacks;
use crate::error::ApiError;
use crate::jobs::Jobs;
use crate::worker::{Backend, LocalWorker};

/// Everything the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Runs jobs in the sandbox.
    pub executor: Arc<Executor>,
    /// Worker slots, the queue and its order.
    pub scheduler: Scheduler,
    /// Largest request body, bytes.
    pub max_body: usize,
    /// The editor's program buffers and WebSocket connections (`/api/v1/ws`).
    pub editor: ws::Editor,
    /// Every accepted job, with its state and (for asynchronous ones) its result.
    pub jobs: Arc<Jobs>,
    /// API keys.
    pub auth: Arc<Auth>,
    /// Sends callbacks of finished jobs.
    pub callbacks: Callbacks,
    /// Runs scheduled jobs: on this machine, or on the fleet's workers.
    pub worker: Backend,
}

/// Settings of the job table and of authentication (`[jobs]`, `[auth]`).
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// `[jobs]`
    pub jobs: JobsConfig,
    /// `[auth]`
    pub auth: AuthConfig,
}

impl AppState {
    /// State for `executor` behind `scheduler`, with bodies up to `max_body` bytes.
    pub fn new(executor: Arc<Executor>, scheduler: Scheduler, max_body: usize) -> AppState {
        // Runs are counted from the first one on (installing twice is a no-op).
        metrics::install();
        let jobs = JobsConfig::default();
        AppState {
            worker: Backend::Local(LocalWorker::new(executor.clone())),
            executor,
            scheduler,
            max_body,
            editor: ws::Editor::default(),
            jobs: Arc::new(Jobs::new(jobs.clone())),
            auth: Arc::new(Auth::default()),
            callbacks: Callbacks::new(&jobs),
        }
    }

    /// Uses `options` for jobs and authentication (a key's zero limits take the
    /// scheduler's per-client defaults).
    pub fn with_options(mut self, options: &ServerOptions) -> AppState {
        self.jobs = Arc::new(Jobs::new(options.jobs.clone()));
        self.callbacks = Callbacks::new(&options.jobs);
        self.auth = Arc::new(Auth::new(&options.auth, self.scheduler.config().client));
        self
    }

    /// Sends runs to the fleet's workers through `remote` instead of running them here.
    pub fn with_remote(mut self, remote: fleet::RemoteWorker) -> AppState {
        self.worker = Backend::Remote(remote);
        self
    }

    /// Uses `editor` for the WebSocket's sessions (settings from `[sessions]`).
    pub fn with_editor(mut self, editor: ws::Editor) -> AppState {
        self.editor = editor;
        self
    }
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal("a handler panicked".into()).into_response()
}

async fn not_found(req: Request<axum::body::Body>) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

/// The whole router.
pub fn app(state: AppState) -> Router {
    let max_body = state.max_body;
    let api = Router::new()
        .route("/healthz", get(native::healthz))
        .route("/readyz", get(native::readyz))
        .route(
            "/api/v1/run",
            // `?stream=true` answers newline-delimited JSON events (stream.rs).
            post(native::run).layer(axum::middleware::from_fn_with_state(
                state.clone(),
                stream::run_or_stream,
            )),
        )
        .route("/api/v1/ws", get(ws::upgrade))
        .route("/api/v1/runtimes", get(native::runtimes))
        .route("/api/v1/workers", get(fleet::list_workers))
        .route("/api/v1/jobs", post(jobs_api::create).get(jobs_api::list))
        .route("/api/v1/jobs/batch", post(jobs_api::batch))
        .route(
            "/api/v1/jobs/{id}",
            get(jobs_api::get).delete(jobs_api::cancel),
        )
        .route("/submissions", post(judge0::create))
        .route(
            "/submissions/batch",
            post(judge0::batch_create).get(judge0::batch_show),
        )
        .route("/submissions/{token}", get(judge0::show))
        .route("/languages", get(judge0::languages))
        .route("/languages/all", get(judge0::languages_all))
        .route("/languages/{id}", get(judge0::language))
        .route("/statuses", get(judge0::statuses))
        .route("/about", get(judge0::about))
        .route("/config_info", get(judge0::config_info))
        .route("/metrics", get(metrics::render))
        .route("/api/openapi.json", get(openapi::openapi_json))
        .route("/api/docs", get(openapi::swagger_page))
        .route("/api/docs/swagger-ui-bundle.js", get(openapi::swagger_js))
        .route("/api/docs/swagger-ui.css", get(openapi::swagger_css))
        .route("/api/v2/runtimes", get(piston::runtimes))
        .route("/api/v2/execute", post(piston::execute))
        // Piston's public instance lives under /api/v2/piston; accept that prefix too.
        .route("/api/v2/piston/runtimes", get(piston::runtimes))
        .route("/api/v2/piston/execute", post(piston::execute))
        .route("/", get(web::index))
        .merge(
            Router::new()
                .route("/app.js", get(web::app_js))
                .route("/app.css", get(web::app_css))
                .layer(tower_http::compression::CompressionLayer::new()),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                axum::Json(serde_json::json!({"error": "method not allowed for this route"})),
            )
        })
        // Every route but the public ones needs an API key when `[auth]` is on.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        .with_state(state);
    api.layer(DefaultBodyLimit::max(max_body))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// Serves `app` on `listener` until `shutdown` completes, then lets running requests finish
/// for up to `grace`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    // The remote address identifies clients (fair share, limits) when auth is off.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    // Small writes (an ack, a line of output) go out at once: with Nagle's algorithm a
    // second small write waits for the peer's delayed ACK, up to 40 ms.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY failed");
        }
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = tx.send(());
    });
    let mut server = std::pin::pin!(server.into_future());
    tokio::select! {
        r = &mut server => r,
        () = async {
            let _ = rx.await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(grace = ?grace, "shutdown grace period over; dropping unfinished requests");
            Ok(())
        }
    }
}
