//! Asynchronous jobs: `POST /api/v1/jobs` (one run, or one program over test cases),
//! `POST /api/v1/jobs/batch`, `GET /api/v1/jobs/{id}`, `GET /api/v1/jobs`,
//! `DELETE /api/v1/jobs/{id}`.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use cod_core::limits::LimitsRequest;
use cod_core::run::{RequestError, RunRequest, SourceFile};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Caller;
use crate::callback::Callbacks;
use crate::cases::TestCase;
use crate::error::{ApiError, ApiJson};
use crate::fleet::FleetJob;
use crate::jobs::{Filter, JobState, JobView};
use crate::runner::{Admitted, CallbackSpec, Submission};
use crate::worker::WorkItem;

/// How long `DELETE` waits for a cancelled job to stop.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// `POST /api/v1/jobs`: a run request, plus `callback_url` and `tests`.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// Language name or alias.
    pub language: String,
    /// The main file's text; without it, the first of `files` is the main file.
    #[serde(default)]
    pub source: Option<String>,
    /// Standard input (not with `tests`).
    #[serde(default)]
    pub stdin: Option<String>,
    /// Command-line arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra files.
    #[serde(default)]
    #[schema(value_type = Vec<crate::openapi::SourceFileSchema>)]
    pub files: Vec<SourceFile>,
    /// Limits; absent fields take the operator's defaults.
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::LimitsSchema>)]
    pub limits: Option<LimitsRequest>,
    /// Where to POST the finished job (signed with `X-Cod-Signature-256`).
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Run the program once per case (compiled once), comparing outputs.
    #[serde(default)]
    pub tests: Option<Vec<TestCase>>,
}

/// `POST /api/v1/jobs/batch`
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Up to `jobs.max_batch` jobs.
    pub jobs: Vec<JobRequest>,
}

/// The ids of a batch's jobs, in order.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    /// One per job.
    pub jobs: Vec<JobId>,
}

/// A job's id.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct JobId {
    /// The id.
    pub id: String,
}

/// A list of jobs.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct JobList {
    /// The jobs, oldest first.
    pub jobs: Vec<JobView>,
}

/// Query of `POST /api/v1/jobs`.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CreateQuery {
    /// Answer when the job is done (200) instead of at once (202).
    #[serde(default)]
    pub wait: bool,
}

/// Query of `GET /api/v1/jobs`.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only jobs in this state: `queued`, `running`, `done` or `cancelled`.
    #[serde(default)]
    pub state: Option<String>,
    /// Only these jobs (comma-separated ids).
    #[serde(default)]
    pub ids: Option<String>,
}

fn prefixed(prefix: &str, e: ApiError) -> ApiError {
    match e {
        ApiError::BadRequest(m) if !prefix.is_empty() => {
            ApiError::BadRequest(format!("{prefix}{m}"))
        }
        other => other,
    }
}

/// Checks `req` into a submission for `caller`; errors name the field after `prefix`.
pub(crate) fn check(
    st: &AppState,
    caller: &Caller,
    req: JobRequest,
    prefix: &str,
) -> Result<Submission, ApiError> {
    let bad = |field: &str, why: String| ApiError::BadRequest(format!("{prefix}{field}: {why}"));
    if let Some(tests) = &req.tests {
        if tests.is_empty() {
            return Err(bad("tests", "must hold at least one case".into()));
        }
        let max = st.jobs.config().max_batch;
        if tests.len() > max {
            return Err(bad("tests", format!("at most {max} cases")));
        }
        if req.stdin.is_some() {
            return Err(bad(
                "stdin",
                "give each case's input in `tests` instead".into(),
            ));
        }
    }
    let callback = match req.callback_url {
        Some(url) => {
            Callbacks::check_url(&url).map_err(|why| bad("callback_url", why))?;
            Some(CallbackSpec {
                url,
                method: reqwest::Method::POST,
            })
        }
        None => None,
    };
    let run = RunRequest {
        language: req.language,
        source: req.source,
        stdin: req.stdin,
        args: req.args,
        files: req.files,
        limits: req.limits,
    };
    let job = st
        .executor
        .prepare(&run)
        .map_err(|e: RequestError| prefixed(prefix, e.into()))?;
    Ok(Submission {
        caller: caller.clone(),
        item: WorkItem::from_job(&job),
        tests: req.tests,
        callback,
        judge0: None,
        keep: true,
    })
}

/// Starts `admitted`, answering at once (202) or when done (200).
async fn answer(st: &AppState, admitted: Admitted, wait: bool) -> (StatusCode, Json<JobView>) {
    let id = admitted.spawn().await;
    if wait {
        // The job runs in its own task: a client that goes away does not cancel it.
        let view = st.jobs.wait_finished(&id, None).await;
        if let Some(v) = view {
            return (StatusCode::OK, Json(v));
        }
    }
    let view = st
        .jobs
        .get(&id, None)
        .expect("a job just admitted is in the table");
    (StatusCode::ACCEPTED, Json(view))
}

/// `POST /api/v1/jobs`
#[utoipa::path(
    post,
    path = "/api/v1/jobs",
    tag = "jobs",
    params(CreateQuery),
    request_body = JobRequest,
    responses(
        (status = 202, description = "Accepted; poll `GET /api/v1/jobs/{id}`", body = JobView),
        (status = 200, description = "With `wait=true`: the finished job", body = JobView),
        (status = 400, description = "Bad input, naming the field", body = crate::openapi::ErrorBody),
        (status = 429, description = "Overloaded; see `Retry-After`", body = crate::openapi::ErrorBody),
        (status = 503, description = "A fleet gateway cannot reach its broker now; see `Retry-After`", body = crate::openapi::ErrorBody),
    )
)]
pub async fn create(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<CreateQuery>,
    ApiJson(req): ApiJson<JobRequest>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    let sub = check(&st, &caller, req, "")?;
    let admitted = st.admit(sub)?;
    Ok(answer(&st, admitted, q.wait).await)
}

/// `POST /api/v1/jobs/batch`: all admitted, or none (429).
#[utoipa::path(
    post,
    path = "/api/v1/jobs/batch",
    tag = "jobs",
    request_body = BatchRequest,
    responses(
        (status = 202, description = "Every job accepted", body = BatchResponse),
        (status = 400, description = "Bad input, naming the field (`jobs[2].language`)", body = crate::openapi::ErrorBody),
        (status = 429, description = "Overloaded: no job of the batch was accepted", body = crate::openapi::ErrorBody),
        (status = 503, description = "A fleet gateway cannot reach its broker now; see `Retry-After`", body = crate::openapi::ErrorBody),
    )
)]
pub async fn batch(
    State(st): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<BatchRequest>,
) -> Result<(StatusCode, Json<BatchResponse>), ApiError> {
    let max = st.jobs.config().max_batch;
    if req.jobs.is_empty() || req.jobs.len() > max {
        return Err(ApiError::BadRequest(format!(
            "jobs: a batch holds 1 to {max} jobs (got {})",
            req.jobs.len()
        )));
    }
    let subs = req
        .jobs
        .into_iter()
        .enumerate()
        .map(|(i, r)| check(&st, &caller, r, &format!("jobs[{i}].")))
        .collect::<Result<Vec<_>, _>>()?;
    // Admit all before starting any: a refusal drops the admitted ones (they leave the
    // queue and their records) and refuses the batch.
    let mut admitted = Vec::with_capacity(subs.len());
    for sub in subs {
        match st.admit(sub) {
            Ok(a) => admitted.push(a),
            Err(e) => {
                for a in admitted {
                    let id = a.id().to_owned();
                    drop(a);
                    st.jobs.forget(&id);
                }
                return Err(e);
            }
        }
    }
    let mut jobs = Vec::with_capacity(admitted.len());
    for a in admitted {
        jobs.push(JobId {
            id: a.spawn().await,
        });
    }
    Ok((StatusCode::ACCEPTED, Json(BatchResponse { jobs })))
}

/// `GET /api/v1/jobs/{id}`
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 404, description = "No such job (or it expired)", body = crate::openapi::ErrorBody),
        (status = 503, description = "A fleet gateway cannot reach its broker now, so it cannot tell; see `Retry-After`", body = crate::openapi::ErrorBody),
    )
)]
pub async fn get(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    if let Some(mut v) = st.jobs.get(&id, caller.scope()) {
        // In the distributed mode a finished run also says who ran it.
        if let Some(remote) = st.worker.remote()
            && v.state == JobState::Done
            && v.result.is_some()
            && let Some(env) = remote.lookup(&id).await
        {
            v.worker = Some(env.worker);
            v.attempt = Some(env.attempt);
        }
        return Ok(Json(v));
    }
    // Accepted by another gateway (or by one that has since stopped).
    match elsewhere(&st, &caller, &id).await? {
        Some(FleetJob::Done(env)) => Ok(Json(crate::fleet::view_of(&id, *env))),
        Some(FleetJob::Pending(a)) => Ok(Json(crate::fleet::pending_view(&id, a))),
        None => Err(not_found(&id)),
    }
}

/// A job of the fleet that this gateway does not hold, if `caller` may see it. With the
/// broker out of reach nobody can say the job does not exist: a 503, not a 404.
async fn elsewhere(st: &AppState, caller: &Caller, id: &str) -> Result<Option<FleetJob>, ApiError> {
    let Some(remote) = st.worker.remote() else {
        return Ok(None);
    };
    let job = remote.fleet_job(id).await.map_err(ApiError::Overloaded)?;
    Ok(job.filter(|j| caller.scope().is_none_or(|c| c.0 == j.client())))
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no job {id:?} (finished jobs are kept for jobs.retention)"
    ))
}

/// `GET /api/v1/jobs`: jobs with live usage, for operators (others see their own).
#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    tag = "jobs",
    params(ListQuery),
    responses(
        (status = 200, description = "Jobs, oldest first", body = JobList),
        (status = 400, description = "Bad query, naming the field", body = crate::openapi::ErrorBody),
    )
)]
pub async fn list(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<JobList>, ApiError> {
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "done" => JobState::Done,
            "cancelled" => JobState::Cancelled,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "state: must be queued, running, done or cancelled (got {other:?})"
                )));
            }
        }),
    };
    let ids: Option<Vec<String>> = q.ids.map(|s| {
        s.split(',')
            .map(|i| i.trim().to_owned())
            .filter(|i| !i.is_empty())
            .collect()
    });
    let jobs = st.jobs.list(&Filter {
        state,
        ids: ids.as_deref(),
        client: caller.scope(),
    });
    Ok(Json(JobList { jobs }))
}

/// `DELETE /api/v1/jobs/{id}`: a queued job leaves the queue, a running one is killed.
#[utoipa::path(
    delete,
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job after cancelling: `cancelled`, or `done` if it finished first", body = JobView),
        (status = 404, description = "No such job", body = crate::openapi::ErrorBody),
        (status = 503, description = "A fleet gateway cannot reach its broker now; see `Retry-After`", body = crate::openapi::ErrorBody),
    )
)]
pub async fn cancel(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let Some(view) = st.jobs.cancel(&id, caller.scope()) else {
        // A fleet job another gateway took: finished, it is shown; unfinished, it is
        // cancelled through the broker (that gateway hears of it too).
        return match elsewhere(&st, &caller, &id).await? {
            Some(FleetJob::Done(env)) => Ok(Json(crate::fleet::view_of(&id, *env))),
            Some(FleetJob::Pending(mut a)) => {
                if !a.cancelled
                    && let Some(remote) = st.worker.remote()
                {
                    remote.cancel_elsewhere(&id, a.clone()).await;
                    a.cancelled = true;
                }
                Ok(Json(crate::fleet::pending_view(&id, a)))
            }
            None => Err(not_found(&id)),
        };
    };
    if matches!(view.state, JobState::Done | JobState::Cancelled) {
        return Ok(Json(view));
    }
    // A synchronous run's record goes when it ends: then show it as cancelled.
    Ok(Json(
        st.jobs
            .wait_finished(&id, Some(CANCEL_WAIT))
            .await
            .unwrap_or(JobView {
                state: JobState::Cancelled,
                usage: None,
                ..view
            }),
    ))
}
