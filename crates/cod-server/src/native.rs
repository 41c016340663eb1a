//! The native API: `POST /api/v1/run`, `GET /api/v1/runtimes`, `GET /healthz`.

use axum::Json;
use axum::extract::State;
use cod_core::{RunRequest, RunResult};
use cod_runtime::Job;
use serde::Serialize;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiJson};
use crate::jobs::JobOutput;
use crate::runner::Submission;
use crate::worker::WorkItem;

/// One entry of `GET /api/v1/runtimes`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RuntimeInfo {
    /// Canonical name to use in requests.
    pub name: String,
    /// Human name.
    pub title: String,
    /// Version of the toolchain on this host.
    pub version: String,
    /// Other accepted names.
    pub aliases: Vec<String>,
    /// Source file extensions.
    pub extensions: Vec<String>,
    /// Whether runs have a compile stage.
    pub compiled: bool,
    /// Whether the language can be used on this host.
    pub available: bool,
    /// Why not, when it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable_reason: Option<String>,
    /// A starter program.
    pub template: String,
}

/// `GET /api/v1/runtimes`
#[utoipa::path(
    get,
    path = "/api/v1/runtimes",
    tag = "runs",
    responses((status = 200, description = "Languages, versions, aliases, availability", body = Vec<RuntimeInfo>))
)]
pub async fn runtimes(State(st): State<AppState>) -> Json<Vec<RuntimeInfo>> {
    Json(
        st.executor
            .registry()
            .all()
            .iter()
            .map(|l| RuntimeInfo {
                name: l.name.clone(),
                title: l.title.clone(),
                version: l.version.clone(),
                aliases: l.aliases.clone(),
                extensions: l.extensions.clone(),
                compiled: l.compiled(),
                available: l.available(),
                unavailable_reason: l.unavailable.clone(),
                template: l.template.clone(),
            })
            .collect(),
    )
}

/// Runs a prepared job for `caller` through the scheduler and answers when it is done.
pub(crate) async fn run_job(
    st: &AppState,
    caller: Caller,
    job: &Job,
) -> Result<RunResult, ApiError> {
    let admitted = st.admit(Submission {
        caller,
        item: WorkItem::from_job(job),
        tests: None,
        callback: None,
        judge0: None,
        keep: false,
    })?;
    let id = admitted.id().to_owned();
    match admitted.run().await {
        Some(JobOutput::Run(r)) => Ok(*r),
        _ => Err(ApiError::Cancelled(format!(
            "run {id} was cancelled before it finished (DELETE /api/v1/jobs/{id})"
        ))),
    }
}

/// `POST /api/v1/run`
#[utoipa::path(
    post,
    path = "/api/v1/run",
    tag = "runs",
    params(("stream" = Option<bool>, Query, description = "Answer newline-delimited JSON events (`stage`, `out`, then `exit` with the result) as the run goes")),
    request_body = crate::openapi::RunRequestSchema,
    responses(
        (status = 200, description = "The run happened; its verdict is in the body", body = crate::openapi::RunResultSchema),
        (status = 400, description = "Bad input, naming the field", body = crate::openapi::ErrorBody),
        (status = 401, description = "No valid API key (with `[auth]` on)", body = crate::openapi::ErrorBody),
        (status = 409, description = "Cancelled by id before it finished", body = crate::openapi::ErrorBody),
        (status = 413, description = "Body too large", body = crate::openapi::ErrorBody),
        (status = 429, description = "Overloaded; see `Retry-After`", body = crate::openapi::ErrorBody),
        (status = 503, description = "A fleet gateway cannot reach its broker now; see `Retry-After`", body = crate::openapi::ErrorBody),
    )
)]
pub async fn run(
    State(st): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<RunRequest>,
) -> Result<Json<RunResult>, ApiError> {
    let job = st.executor.prepare(&req)?;
    run_job(&st, caller, &job).await.map(Json)
}

/// `GET /healthz`: the service is up; with the worker and queue counts.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "`{\"status\": \"ok\", \"workers\": 2, \"running\": 0, \"queued\": 0}`", body = Object))
)]
pub async fn healthz(State(st): State<AppState>) -> Json<serde_json::Value> {
    let s = st.scheduler.stats();
    Json(serde_json::json!({
        "status": "ok",
        "workers": s.workers,
        "running": s.running,
        "queued": s.queued,
    }))
}

/// `GET /readyz`: whether this server can take runs now. A fleet gateway that cannot reach
/// its broker is up (`/healthz`) but not ready: a load balancer should send its requests
/// to another gateway meanwhile, and restarting it would not help.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "`{\"status\": \"ready\"}`", body = Object),
        (status = 503, description = "A fleet gateway that cannot reach its broker now (`reason`: `broker_unreachable`)", body = crate::openapi::ErrorBody),
    )
)]
pub async fn readyz(State(st): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if let Some(remote) = st.worker.remote() {
        remote.reachable().map_err(ApiError::Overloaded)?;
    }
    Ok(Json(serde_json::json!({"status": "ready"})))
}
