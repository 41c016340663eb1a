//! Judge0 compatibility: `/submissions` (single, `wait`, batch), `/languages`,
//! `/statuses`, `/about`, `/config_info`, with Judge0's field names, status ids and
//! language ids, so that Judge0 clients (the official Python SDK among them) work
//! unchanged. Submissions are asynchronous jobs of the job table (the token is the job's
//! id), kept for `jobs.retention`.
//!
//! What cod adds: `cod_status` (cod's own verdict, including `memory_limit`, which Judge0
//! lacks) when asked for in `fields`. What cod does not do: compiler options, additional
//! files, network, several runs per submission (accepted and echoed, run once).

mod model;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub use model::{
    ALL_FIELDS, DEFAULT_FIELDS, JUDGE0_VERSION, LANGUAGE_IDS, STATUSES, Stored, cod_language,
    judge0_id, language_name, split_args, status_id,
};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, body_error, parse_json};
use crate::runner::{CallbackSpec, Submission};
use crate::worker::WorkItem;

type Params = Query<HashMap<String, String>>;

fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name).is_some_and(|v| v == "true")
}

fn fields(q: &HashMap<String, String>) -> Result<Vec<String>, ApiError> {
    model::parse_fields(q.get("fields").map(String::as_str)).map_err(ApiError::BadRequest)
}

fn unprocessable(errors: Value) -> Response {
    (StatusCode::UNPROCESSABLE_ENTITY, Json(errors)).into_response()
}

/// A cod request error, as the Judge0 field it came from.
fn field_of(cod_field: &str) -> &str {
    match cod_field {
        "limits.cpu_ms" => "cpu_time_limit",
        "limits.wall_ms" => "wall_time_limit",
        "limits.memory_mb" => "memory_limit",
        "limits.processes" => "max_processes_and_or_threads",
        "limits.disk_mb" => "max_file_size",
        "source" | "files[0].name" => "source_code",
        "args" => "command_line_arguments",
        "language" => "language_id",
        other => other,
    }
}

/// Checks one submission body into a job for `caller`, or Judge0's field errors.
fn submission(
    st: &AppState,
    caller: &Caller,
    body: &Value,
    base64: bool,
) -> Result<Submission, Value> {
    let token = uuid::Uuid::new_v4().to_string();
    let checked =
        model::check(body, base64, st.executor.policy(), token.clone()).map_err(Value::Object)?;
    let mut job = st.executor.prepare(&checked.request).map_err(|e| {
        let (field, why) = match &e {
            cod_core::RequestError::Missing { field, why } => (field.clone(), (*why).to_owned()),
            cod_core::RequestError::Invalid { field, why } => (field.clone(), why.clone()),
        };
        json!({ field_of(&field): [why] })
    })?;
    job.id = token;
    let stored = checked.stored;
    Ok(Submission {
        caller: caller.clone(),
        item: WorkItem::from_job(&job),
        tests: None,
        callback: stored.callback_url.clone().map(|url| CallbackSpec {
            url,
            method: reqwest::Method::PUT,
        }),
        judge0: Some(Arc::new(stored)),
        keep: true,
    })
}

fn language_version(st: &AppState, stored: &Stored) -> String {
    cod_language(i64::from(stored.language_id))
        .and_then(|l| st.executor.registry().get(l))
        .map(|l| l.version.clone())
        .unwrap_or_default()
}

/// The submission `token` as `caller` may see it, with `fields`.
fn show_one(
    st: &AppState,
    caller: &Caller,
    token: &str,
    fields: &[String],
    base64: bool,
) -> Option<Value> {
    st.jobs
        .with(token, |r| {
            let stored = r.judge0.clone()?;
            if caller.scope().is_some_and(|c| *c != r.client) {
                return None;
            }
            Some(Value::Object(model::view(
                r,
                &stored,
                fields,
                base64,
                &language_version(st, &stored),
            )))
        })
        .flatten()
}

/// The body of a Judge0 callback: the default fields, Base64-encoded, as Judge0 sends.
pub(crate) fn callback_body(st: &AppState, token: &str, stored: &Stored) -> Option<Vec<u8>> {
    let fields: Vec<String> = DEFAULT_FIELDS.iter().map(|f| (*f).to_owned()).collect();
    let version = language_version(st, stored);
    st.jobs
        .with(token, |r| model::view(r, stored, &fields, true, &version))
        .and_then(|v| serde_json::to_vec(&v).ok())
}

/// `POST /submissions`
#[utoipa::path(
    post,
    path = "/submissions",
    tag = "judge0",
    params(
        ("base64_encoded" = Option<bool>, Query, description = "`source_code`, `stdin`, `expected_output` are sent, and text fields answered, in Base64"),
        ("wait" = Option<bool>, Query, description = "Answer with the finished submission"),
        ("fields" = Option<String>, Query, description = "Comma-separated fields, or `*` (with `wait=true`)"),
    ),
    request_body(content = Object, description = "A Judge0 submission: `source_code`, `language_id`, `stdin`, `expected_output`, `cpu_time_limit`, `wall_time_limit`, `memory_limit`, `callback_url`, ..."),
    responses(
        (status = 201, description = "`{\"token\": ...}`, or with `wait=true` the submission", body = Object),
        (status = 422, description = "Field errors: `{\"language_id\": [\"...\"]}`", body = Object),
        (status = 429, description = "Overloaded; see `Retry-After`", body = crate::openapi::ErrorBody),
        (status = 503, description = "A fleet gateway cannot reach its broker now; see `Retry-After`", body = crate::openapi::ErrorBody),
    )
)]
pub async fn create(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Params,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let base64 = flag(&q, "base64_encoded");
    let fields = fields(&q)?;
    let body = body.map_err(|r| body_error(&r))?;
    let value: Value = parse_json(&body)?;
    let sub = match submission(&st, &caller, &value, base64) {
        Ok(s) => s,
        Err(errors) => return Ok(unprocessable(errors)),
    };
    let token = st.admit(sub)?.spawn().await;
    if !flag(&q, "wait") {
        return Ok((StatusCode::CREATED, Json(json!({"token": token}))).into_response());
    }
    // The submission runs in its own task: a client that goes away does not cancel it.
    st.jobs.wait_finished(&token, None).await;
    let v =
        show_one(&st, &caller, &token, &fields, base64).unwrap_or_else(|| json!({"token": token}));
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// `GET /submissions/{token}`
#[utoipa::path(
    get,
    path = "/submissions/{token}",
    tag = "judge0",
    params(
        ("token" = String, Path, description = "The submission's token"),
        ("base64_encoded" = Option<bool>, Query, description = "Text fields in Base64"),
        ("fields" = Option<String>, Query, description = "Comma-separated fields, or `*`; `cod_status` adds cod's verdict"),
    ),
    responses(
        (status = 200, description = "The submission", body = Object),
        (status = 404, description = "No such submission", body = crate::openapi::ErrorBody),
    )
)]
pub async fn show(
    State(st): State<AppState>,
    caller: Caller,
    Path(token): Path<String>,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    let fields = fields(&q)?;
    show_one(&st, &caller, &token, &fields, flag(&q, "base64_encoded"))
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no submission with token {token:?}")))
}

/// `POST /submissions/batch`
#[utoipa::path(
    post,
    path = "/submissions/batch",
    tag = "judge0",
    params(("base64_encoded" = Option<bool>, Query, description = "Text fields in Base64")),
    request_body(content = Object, description = "`{\"submissions\": [...]}`"),
    responses(
        (status = 201, description = "One `{\"token\": ...}` (or field errors) per submission", body = Object),
        (status = 400, description = "Not 1 to `jobs.max_batch` submissions", body = crate::openapi::ErrorBody),
        (status = 422, description = "No submission was valid", body = Object),
        (status = 429, description = "Overloaded: none was accepted", body = crate::openapi::ErrorBody),
        (status = 503, description = "A fleet gateway cannot reach its broker now; see `Retry-After`", body = crate::openapi::ErrorBody),
    )
)]
pub async fn batch_create(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Params,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let base64 = flag(&q, "base64_encoded");
    let body = body.map_err(|r| body_error(&r))?;
    let value: Value = parse_json(&body)?;
    let list = value
        .get("submissions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let max = st.jobs.config().max_batch;
    if list.is_empty() || list.len() > max {
        return Err(ApiError::BadRequest(if list.is_empty() {
            "there should be at least one submission in a batch".into()
        } else {
            format!("number of submissions in a batch should be less than or equal to {max}")
        }));
    }
    let checked: Vec<Result<Submission, Value>> = list
        .iter()
        .map(|s| submission(&st, &caller, s, base64))
        .collect();
    if checked.iter().all(Result::is_err) {
        let errors: Vec<Value> = checked.into_iter().filter_map(Result::err).collect();
        return Ok(unprocessable(Value::Array(errors)));
    }
    // Admit every valid one, or none.
    let mut admitted = Vec::new();
    let mut answer = Vec::with_capacity(checked.len());
    for c in checked {
        match c {
            Ok(sub) => match st.admit(sub) {
                Ok(a) => {
                    answer.push(Value::Null);
                    admitted.push((answer.len() - 1, a));
                }
                Err(e) => {
                    for (_, a) in admitted {
                        let id = a.id().to_owned();
                        drop(a);
                        st.jobs.forget(&id);
                    }
                    return Err(e);
                }
            },
            Err(errors) => answer.push(errors),
        }
    }
    for (i, a) in admitted {
        answer[i] = json!({"token": a.spawn().await});
    }
    Ok((StatusCode::CREATED, Json(Value::Array(answer))).into_response())
}

/// `GET /submissions/batch?tokens=...`
#[utoipa::path(
    get,
    path = "/submissions/batch",
    tag = "judge0",
    params(
        ("tokens" = String, Query, description = "Comma-separated tokens"),
        ("base64_encoded" = Option<bool>, Query, description = "Text fields in Base64"),
        ("fields" = Option<String>, Query, description = "Comma-separated fields, or `*`"),
    ),
    responses(
        (status = 200, description = "`{\"submissions\": [...]}`, `null` for unknown tokens", body = Object),
        (status = 400, description = "Not 1 to `jobs.max_batch` tokens", body = crate::openapi::ErrorBody),
    )
)]
pub async fn batch_show(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    let fields = fields(&q)?;
    let tokens: Vec<&str> = q
        .get("tokens")
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let max = st.jobs.config().max_batch;
    if tokens.is_empty() {
        return Err(ApiError::BadRequest(
            "tokens: there should be at least one submission in a batch".into(),
        ));
    }
    if tokens.len() > max {
        return Err(ApiError::BadRequest(format!(
            "tokens: number of submissions in a batch should be less than or equal to {max}"
        )));
    }
    let base64 = flag(&q, "base64_encoded");
    let subs: Vec<Value> = tokens
        .iter()
        .map(|t| show_one(&st, &caller, t, &fields, base64).unwrap_or(Value::Null))
        .collect();
    Ok(Json(json!({ "submissions": subs })))
}

fn languages_list(st: &AppState) -> Vec<Value> {
    let mut out: Vec<Value> = LANGUAGE_IDS
        .iter()
        .filter_map(|(id, cod)| {
            let l = st.executor.registry().get(cod)?;
            l.available()
                .then(|| json!({"id": id, "name": language_name(cod, &l.version)}))
        })
        .collect();
    out.sort_by_key(|v| v["name"].as_str().map(str::to_owned));
    out
}

/// `GET /languages`
#[utoipa::path(get, path = "/languages", tag = "judge0",
    responses((status = 200, description = "`[{\"id\": 71, \"name\": \"Python (3.11.2)\"}, ...]`", body = Object)))]
pub async fn languages(State(st): State<AppState>) -> Json<Vec<Value>> {
    Json(languages_list(&st))
}

/// `GET /languages/all`
#[utoipa::path(get, path = "/languages/all", tag = "judge0",
    responses((status = 200, description = "Every language id cod accepts", body = Object)))]
pub async fn languages_all(State(st): State<AppState>) -> Json<Vec<Value>> {
    Json(
        languages_list(&st)
            .into_iter()
            .map(|mut v| {
                v["is_archived"] = json!(false);
                v
            })
            .collect(),
    )
}

/// `GET /languages/{id}`
#[utoipa::path(get, path = "/languages/{id}", tag = "judge0",
    params(("id" = u32, Path, description = "Judge0 language id")),
    responses(
        (status = 200, description = "`{\"id\", \"name\", \"is_archived\", \"source_file\", \"compile_cmd\", \"run_cmd\"}`", body = Object),
        (status = 404, description = "No such language", body = crate::openapi::ErrorBody),
    ))]
pub async fn language(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let l = id
        .parse::<i64>()
        .ok()
        .and_then(cod_language)
        .and_then(|cod| st.executor.registry().get(cod))
        .filter(|l| l.available())
        .ok_or_else(|| ApiError::NotFound(format!("no language with id {id:?}")))?;
    Ok(Json(json!({
        "id": id.parse::<i64>().unwrap_or_default(),
        "name": language_name(&l.name, &l.version),
        "is_archived": false,
        "source_file": format!("main.{}", l.extensions.first().map_or("txt", String::as_str)),
        "compile_cmd": Value::Null,
        "run_cmd": l.run_program(),
    })))
}

/// `GET /statuses`
#[utoipa::path(get, path = "/statuses", tag = "judge0",
    responses((status = 200, description = "`[{\"id\": 3, \"description\": \"Accepted\"}, ...]`", body = Object)))]
pub async fn statuses() -> Json<Vec<Value>> {
    Json(
        STATUSES
            .iter()
            .map(|(id, d)| json!({"id": id, "description": d}))
            .collect(),
    )
}

/// `GET /about`
#[utoipa::path(get, path = "/about", tag = "judge0",
    responses((status = 200, description = "The Judge0 API version cod speaks, and cod's", body = Object)))]
pub async fn about() -> Json<Value> {
    Json(json!({
        "version": JUDGE0_VERSION,
        "homepage": "https://judge0.com",
        "source_code": "https://github.com/judge0/judge0",
        "maintainer": "cod (Compute On Demand), speaking Judge0's API",
        "cod_version": env!("CARGO_PKG_VERSION"),
    }))
}

/// `GET /config_info`
#[utoipa::path(get, path = "/config_info", tag = "judge0",
    responses((status = 200, description = "Judge0's configuration fields, from cod's limits", body = Object)))]
pub async fn config_info(State(st): State<AppState>) -> Json<Value> {
    let p = st.executor.policy();
    let (d, m) = (&p.default, &p.max);
    #[allow(clippy::cast_precision_loss)]
    let secs = |ms: u64| ms as f64 / 1000.0;
    let jobs = st.jobs.config();
    Json(json!({
        "maintenance_mode": false,
        "enable_wait_result": true,
        "enable_compiler_options": false,
        "allowed_languages_for_compile_options": [],
        "enable_command_line_arguments": true,
        "enable_submission_delete": false,
        "enable_callbacks": true,
        "callbacks_max_tries": jobs.callback_attempts,
        "callbacks_timeout": jobs.callback_timeout.as_secs_f64(),
        "enable_additional_files": false,
        "max_queue_size": st.scheduler.config().queue,
        "cpu_time_limit": secs(d.cpu_ms),
        "max_cpu_time_limit": secs(m.cpu_ms),
        "cpu_extra_time": 0.0,
        "max_cpu_extra_time": 0.0,
        "wall_time_limit": secs(d.wall_ms),
        "max_wall_time_limit": secs(m.wall_ms),
        "memory_limit": d.memory_mb * 1024,
        "max_memory_limit": m.memory_mb * 1024,
        "stack_limit": 64000,
        "max_stack_limit": 64000,
        "max_processes_and_or_threads": d.processes,
        "max_max_processes_and_or_threads": m.processes,
        "enable_per_process_and_thread_time_limit": false,
        "allow_enable_per_process_and_thread_time_limit": false,
        "enable_per_process_and_thread_memory_limit": false,
        "allow_enable_per_process_and_thread_memory_limit": false,
        "max_file_size": d.disk_mb * 1024,
        "max_max_file_size": m.disk_mb * 1024,
        "number_of_runs": 1,
        "max_number_of_runs": 20,
        "redirect_stderr_to_stdout": false,
        "max_extract_size": 0,
        "enable_batched_submissions": true,
        "max_submission_batch_size": jobs.max_batch,
        "submission_cache_duration": 0.0,
        "use_docs_as_homepage": false,
        "enable_network": false,
        "allow_enable_network": false,
    }))
}
