//! The native API: `POST /api/v1/run`, `GET /api/v1/runtimes`, `GET /healthz`.

use axum::Json;
use axum::extract::State;
use cod_core::{RunRequest, RunResult};
use cod_runtime::Job;
use serde::Serialize;

use crate::AppState;
use crate::error::{ApiError, ApiJson};

/// One entry of `GET /api/v1/runtimes`.
#[derive(Debug, Serialize)]
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

/// Runs a prepared job once a worker slot is free.
pub(crate) async fn run_job(st: &AppState, job: &Job) -> Result<RunResult, ApiError> {
    let permit = st.admission.acquire().await.map_err(ApiError::Overloaded)?;
    Ok(st.executor.execute(job, permit.slot()).await)
}

/// `POST /api/v1/run`
pub async fn run(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<RunRequest>,
) -> Result<Json<RunResult>, ApiError> {
    let job = st.executor.prepare(&req)?;
    run_job(&st, &job).await.map(Json)
}

/// `GET /healthz`: the service is up; with the worker and queue counts.
pub async fn healthz(State(st): State<AppState>) -> Json<serde_json::Value> {
    let s = st.admission.stats();
    Json(serde_json::json!({
        "status": "ok",
        "workers": s.workers,
        "running": s.running,
        "queued": s.queued,
    }))
}
