//! The HTTP side of cod: the native API, Piston v2 compatibility and the web page.
//!
//! Build the router with [`app`] (tests drive it with `oneshot`); [`serve`] runs it on a
//! listener until a shutdown signal. This crate never runs programs itself: it admits runs
//! through [`cod_sched::Admission`] and hands them to a [`cod_runtime::Executor`].
#![forbid(unsafe_code)]

pub mod error;
pub mod native;
pub mod piston;
mod web;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cod_runtime::Executor;
use cod_sched::Admission;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::error::ApiError;

/// Everything the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Runs jobs in the sandbox.
    pub executor: Arc<Executor>,
    /// Worker slots and the queue.
    pub admission: Admission,
    /// Largest request body, bytes.
    pub max_body: usize,
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
        .route("/api/v1/run", post(native::run))
        .route("/api/v1/runtimes", get(native::runtimes))
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
