//! Piston v2 compatibility: `GET /api/v2/runtimes` and `POST /api/v2/execute`, with Piston's
//! field names, so that existing Piston clients work unchanged. Errors use Piston's shape,
//! `{"message": "..."}`.
//!
//! Mapping: `run_timeout` is the run's wall-clock limit and `run_cpu_time` its CPU limit (ms);
//! `run_memory_limit` is bytes (`-1` means the default); compile limits may only lower the
//! operator's compile limits. `files[].encoding` may be `utf8`, `base64` or `hex`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use cod_core::limits::LimitsSpec;
use cod_core::{LimitReason, RunResult, StageReport, Status};
use cod_runtime::{Job, JobFile, find_language};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, body_error, parse_json};
use crate::native::run_job;

/// An error in Piston's shape.
#[derive(Debug)]
pub struct PistonError(ApiError);

impl IntoResponse for PistonError {
    fn into_response(self) -> Response {
        self.0.into_response_with_key("message")
    }
}

impl From<ApiError> for PistonError {
    fn from(e: ApiError) -> Self {
        PistonError(e)
    }
}

fn bad(msg: impl Into<String>) -> PistonError {
    PistonError(ApiError::BadRequest(msg.into()))
}

/// One entry of `GET /api/v2/runtimes`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PistonRuntime {
    /// Language name.
    pub language: String,
    /// Version.
    pub version: String,
    /// Other names.
    pub aliases: Vec<String>,
}

/// `GET /api/v2/runtimes`: the available languages.
#[utoipa::path(
    get,
    path = "/api/v2/runtimes",
    tag = "piston",
    responses((status = 200, description = "Piston v2's runtime list", body = Object))
)]
pub async fn runtimes(State(st): State<AppState>) -> Json<Vec<PistonRuntime>> {
    Json(
        st.executor
            .registry()
            .all()
            .iter()
            .filter(|l| l.available())
            .map(|l| PistonRuntime {
                language: l.name.clone(),
                version: l.version.clone(),
                aliases: l.aliases.clone(),
            })
            .collect(),
    )
}

/// A file in a Piston request.
#[derive(Debug, Deserialize)]
pub struct PistonFile {
    /// File name.
    #[serde(default)]
    pub name: Option<String>,
    /// Contents, in `encoding`.
    pub content: String,
    /// `utf8` (default), `base64` or `hex`.
    #[serde(default)]
    pub encoding: Option<String>,
}

/// `POST /api/v2/execute` request.
#[derive(Debug, Deserialize)]
pub struct ExecuteRequest {
    /// Language name or alias.
    pub language: String,
    /// SemVer selector of the version (`"*"`, `"3.x"`, `"3.11.2"`).
    pub version: String,
    /// Files; the first is the main one.
    pub files: Vec<PistonFile>,
    /// Standard input.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Wall-clock limit of the run stage, ms.
    #[serde(default)]
    pub run_timeout: Option<i64>,
    /// Wall-clock limit of the compile stage, ms.
    #[serde(default)]
    pub compile_timeout: Option<i64>,
    /// CPU limit of the run stage, ms.
    #[serde(default)]
    pub run_cpu_time: Option<i64>,
    /// CPU limit of the compile stage, ms.
    #[serde(default)]
    pub compile_cpu_time: Option<i64>,
    /// Memory limit of the run stage, bytes (`-1`: default).
    #[serde(default)]
    pub run_memory_limit: Option<i64>,
    /// Memory limit of the compile stage, bytes (`-1`: default).
    #[serde(default)]
    pub compile_memory_limit: Option<i64>,
}

/// One stage of a Piston response.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PistonStage {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// stdout then stderr.
    pub output: String,
    /// Exit code, or null when a signal ended the program.
    pub code: Option<i32>,
    /// Signal name, or null.
    pub signal: Option<String>,
    /// Why cod stopped the stage, if it did.
    pub message: Option<String>,
    /// Piston's short status: `RE`, `SG`, `TO`, `OL`, `EL`, `XX`, or null when it succeeded.
    pub status: Option<String>,
    /// CPU time, ms.
    pub cpu_time: u64,
    /// Wall time, ms.
    pub wall_time: u64,
    /// Peak memory, bytes.
    pub memory: u64,
}

/// `POST /api/v2/execute` response.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecuteResponse {
    /// Canonical language name.
    pub language: String,
    /// Version used.
    pub version: String,
    /// The run stage.
    pub run: PistonStage,
    /// The compile stage, for compiled languages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compile: Option<PistonStage>,
    /// cod's verdict (`ok`, `time_limit`, ...), which Piston lacks.
    pub cod_status: Status,
}

fn stage(r: &StageReport) -> PistonStage {
    let status = match (r.status, r.reason) {
        (Status::Ok, _) => None,
        (Status::TimeLimit, _) => Some("TO"),
        (Status::OutputLimit, _) if r.stdout_truncated => Some("OL"),
        (Status::OutputLimit, _) => Some("EL"),
        (Status::MemoryLimit, _) | (_, Some(LimitReason::Memory)) => Some("SG"),
        (Status::RuntimeError, _) if r.signal.is_some() => Some("SG"),
        (Status::RuntimeError, _) => Some("RE"),
        (Status::CompileError, _) => Some("RE"),
        (Status::InternalError, _) => Some("XX"),
    };
    // Limits end the program with SIGKILL; say so as Piston does.
    let signal = r.signal.clone().or_else(|| {
        matches!(
            r.status,
            Status::TimeLimit | Status::MemoryLimit | Status::OutputLimit
        )
        .then(|| "SIGKILL".to_owned())
    });
    PistonStage {
        output: format!("{}{}", r.stdout, r.stderr),
        stdout: r.stdout.clone(),
        stderr: r.stderr.clone(),
        code: if signal.is_some() { None } else { r.exit_code },
        signal,
        message: r.message.clone(),
        status: status.map(str::to_owned),
        cpu_time: r.cpu_ms,
        wall_time: r.wall_ms,
        memory: r.memory_kb * 1024,
    }
}

/// The response for a finished run.
pub fn response(result: &RunResult) -> ExecuteResponse {
    ExecuteResponse {
        language: result.language.clone(),
        version: result.version.clone(),
        run: stage(&result.run),
        compile: result.compile.as_ref().map(|c| stage(&c.stage)),
        cod_status: result.run.status,
    }
}

/// Parses a version, padding `3.11` to `3.11.0`.
fn loose_version(v: &str) -> Option<semver::Version> {
    let parts = v.split('.').count();
    let padded = match parts {
        1 => format!("{v}.0.0"),
        2 => format!("{v}.0"),
        _ => v.to_owned(),
    };
    semver::Version::parse(&padded).ok()
}

fn version_matches(selector: &str, version: &str) -> bool {
    let selector = selector.trim();
    if selector.is_empty() || selector == "*" || selector == "latest" || selector == version {
        return true;
    }
    // Piston uses node-semver, where a bare "3.10.0" means exactly that version and "3.10"
    // means 3.10.x; the semver crate reads bare versions as caret ranges, so translate.
    let is_bare = selector.chars().all(|c| c.is_ascii_digit() || c == '.');
    let translated = match (is_bare, selector.split('.').count()) {
        (true, 3) => format!("={selector}"),
        (true, _) => format!("{selector}.*"),
        (false, _) => selector.to_owned(),
    };
    match (
        semver::VersionReq::parse(&translated),
        loose_version(version),
    ) {
        (Ok(req), Some(v)) => req.matches(&v),
        _ => false,
    }
}

/// A limit in ms from Piston: absent or negative means the default; 0 and values above the
/// maximum are refused.
fn ms_limit(field: &str, v: Option<i64>, default: u64, max: u64) -> Result<u64, PistonError> {
    match v {
        None => Ok(default),
        Some(n) if n < 0 => Ok(default),
        Some(0) => Err(bad(format!("{field} must be greater than 0"))),
        Some(n) => {
            let n = n.cast_unsigned();
            if n > max {
                Err(bad(format!(
                    "{field} cannot exceed the configured limit of {max}"
                )))
            } else {
                Ok(n)
            }
        }
    }
}

/// A memory limit in bytes from Piston, as MiB (rounded up).
fn mem_limit(
    field: &str,
    v: Option<i64>,
    default_mb: u64,
    max_mb: u64,
) -> Result<u64, PistonError> {
    match v {
        None => Ok(default_mb),
        Some(n) if n < 0 => Ok(default_mb),
        Some(0) => Err(bad(format!("{field} must be greater than 0"))),
        Some(n) => {
            let mb = n.cast_unsigned().div_ceil(1 << 20);
            if mb > max_mb {
                Err(bad(format!(
                    "{field} cannot exceed the configured limit of {}",
                    max_mb << 20
                )))
            } else {
                Ok(mb)
            }
        }
    }
}

fn decode(i: usize, f: &PistonFile) -> Result<Vec<u8>, PistonError> {
    match f.encoding.as_deref().unwrap_or("utf8") {
        "utf8" | "utf-8" => Ok(f.content.clone().into_bytes()),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(f.content.trim())
            .map_err(|e| bad(format!("files[{i}].content is not valid base64: {e}"))),
        "hex" => hex::decode(f.content.trim())
            .map_err(|e| bad(format!("files[{i}].content is not valid hex: {e}"))),
        other => Err(bad(format!(
            "files[{i}].encoding must be one of utf8, base64, hex (got {other:?})"
        ))),
    }
}

fn job(st: &AppState, req: ExecuteRequest) -> Result<Job, PistonError> {
    let registry = st.executor.registry();
    let language = find_language(registry, &req.language).map_err(|_| {
        bad(format!(
            "{}-{} runtime is unknown",
            req.language, req.version
        ))
    })?;
    if !version_matches(&req.version, &language.version) {
        return Err(bad(format!(
            "{}-{} runtime is unknown",
            req.language, req.version
        )));
    }
    if req.files.is_empty() {
        return Err(bad("files is required as a non-empty array"));
    }
    let mut files = Vec::with_capacity(req.files.len());
    for (i, f) in req.files.iter().enumerate() {
        if let Some(name) = &f.name {
            cod_core::run::check_file_name(name)
                .map_err(|why| bad(format!("files[{i}].name {why}")))?;
        }
        let name = match (i, &f.name) {
            // Piston picks a name for unnamed files; cod names extra ones file<i>.
            (0, n) => n.clone(),
            (_, Some(n)) => Some(n.clone()),
            (_, None) => Some(format!("file{i}.{}", language.extensions[0])),
        };
        files.push(JobFile {
            name,
            content: decode(i, f)?,
        });
    }
    let policy = st.executor.policy();
    let (d, m, c) = (&policy.default, &policy.max, &policy.compile);
    let limits = LimitsSpec {
        wall_ms: ms_limit("run_timeout", req.run_timeout, d.wall_ms, m.wall_ms)?,
        cpu_ms: ms_limit("run_cpu_time", req.run_cpu_time, d.cpu_ms, m.cpu_ms)?,
        memory_mb: mem_limit(
            "run_memory_limit",
            req.run_memory_limit,
            d.memory_mb,
            m.memory_mb,
        )?,
        ..*d
    };
    let compile_limits = LimitsSpec {
        wall_ms: ms_limit("compile_timeout", req.compile_timeout, c.wall_ms, c.wall_ms)?,
        cpu_ms: ms_limit("compile_cpu_time", req.compile_cpu_time, c.cpu_ms, c.cpu_ms)?,
        memory_mb: mem_limit(
            "compile_memory_limit",
            req.compile_memory_limit,
            c.memory_mb,
            c.memory_mb,
        )?,
        ..*c
    };
    if req.args.iter().any(|a| a.contains('\0')) {
        return Err(bad("args must not contain NUL bytes"));
    }
    Job::new(
        language,
        files,
        |i| format!("files[{}]", i + 1),
        req.stdin.unwrap_or_default().into_bytes(),
        req.args,
        limits,
        compile_limits,
    )
    .map_err(|e| bad(e.to_string()))
}

/// `POST /api/v2/execute`
#[utoipa::path(
    post,
    path = "/api/v2/execute",
    tag = "piston",
    request_body(content = Object, description = "Piston v2's execute request"),
    responses(
        (status = 200, description = "Piston v2's execute response, plus `cod_status`", body = Object),
        (status = 400, description = "`{\"message\": \"...\"}`", body = Object),
        (status = 429, description = "Overloaded; see `Retry-After`", body = Object),
        (status = 503, description = "A fleet gateway cannot reach its broker now; see `Retry-After`", body = Object),
    )
)]
pub async fn execute(
    State(st): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ExecuteResponse>, PistonError> {
    let body = body.map_err(|r| body_error(&r))?;
    let req: ExecuteRequest = parse_json(&body)?;
    let job = job(&st, req)?;
    let result = run_job(&st, caller, &job).await?;
    Ok(Json(response(&result)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_selectors() {
        assert!(version_matches("*", "3.11.2"));
        assert!(version_matches("3.11.2", "3.11.2"));
        assert!(version_matches("3.x", "3.11.2"));
        assert!(version_matches("3", "3.11.2"));
        assert!(version_matches(">=3.10", "3.11.2"));
        assert!(version_matches("12", "12.2.0"));
        assert!(!version_matches("3.10.0", "3.11.2"));
        assert!(!version_matches("2.x", "3.11.2"));
        assert!(version_matches("3.11", "3.11.2"));
        assert!(!version_matches("3.10", "3.11.2"));
        assert!(version_matches("~3.11.0", "3.11.2"));
        assert!(version_matches("1.95.0", "1.95.0"));
    }

    #[test]
    fn limits_follow_piston_units() {
        assert_eq!(ms_limit("run_timeout", Some(-1), 10, 20).unwrap(), 10);
        assert_eq!(ms_limit("run_timeout", Some(3000), 10, 5000).unwrap(), 3000);
        let e = ms_limit("run_timeout", Some(9000), 10, 5000).unwrap_err();
        assert!(e.0.parts().1.contains("run_timeout"));
        assert_eq!(mem_limit("run_memory_limit", Some(1), 256, 512).unwrap(), 1);
        assert_eq!(
            mem_limit("run_memory_limit", Some(128 << 20), 256, 512).unwrap(),
            128
        );
        assert!(mem_limit("run_memory_limit", Some(1 << 40), 256, 512).is_err());
    }

    #[test]
    fn stage_status_codes() {
        let mut r = StageReport {
            status: Status::RuntimeError,
            exit_code: Some(1),
            stdout: "a".into(),
            stderr: "b".into(),
            ..Default::default()
        };
        let s = stage(&r);
        assert_eq!(
            (s.status.as_deref(), s.code, s.output.as_str()),
            (Some("RE"), Some(1), "ab")
        );
        r.status = Status::TimeLimit;
        r.exit_code = None;
        let s = stage(&r);
        assert_eq!(
            (s.status.as_deref(), s.signal.as_deref(), s.code),
            (Some("TO"), Some("SIGKILL"), None)
        );
        r.status = Status::Ok;
        r.exit_code = Some(0);
        let s = stage(&r);
        assert_eq!((s.status, s.code, s.signal), (None, Some(0), None));
    }
}
