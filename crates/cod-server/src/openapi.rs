//! The OpenAPI 3.1 document of every route (`GET /api/openapi.json`) and the Swagger UI
//! page that reads it (`GET /api/docs`), served from assets built into the binary: no CDN,
//! no network at build time.
//!
//! cod-core's request and result types carry no schema derive (that crate stays free of
//! web dependencies); the `*Schema` types here describe them, and a test checks that they
//! name exactly the fields the real types serialize.

use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::OpenApi as Doc;
use utoipa::{OpenApi, ToSchema};

/// An error: `{"error": "..."}` naming the field; on 429 and 503 also `reason`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What is wrong, naming the field (`limits.cpu_ms: ...`).
    pub error: String,
    /// On 429: `queue_full`, `queue_cpu`, `wait_too_long`, `client_rate` or
    /// `client_concurrency`; on 503 (a fleet gateway): `broker_unreachable`.
    pub reason: Option<String>,
}

/// A file of a program.
#[derive(Serialize, ToSchema)]
pub struct SourceFileSchema {
    /// A plain file name; optional for the main file.
    pub name: Option<String>,
    /// Its text.
    pub content: String,
}

/// Limits a request may ask for; absent ones take the operator's defaults.
#[derive(Serialize, ToSchema)]
pub struct LimitsSchema {
    /// CPU time, ms.
    pub cpu_ms: Option<u64>,
    /// Wall-clock time, ms.
    pub wall_ms: Option<u64>,
    /// Memory with swap, MiB.
    pub memory_mb: Option<u64>,
    /// Processes and threads.
    pub processes: Option<u64>,
    /// Output kept per stream, KiB.
    pub output_kb: Option<u64>,
    /// Writable disk, MiB.
    pub disk_mb: Option<u64>,
}

/// `POST /api/v1/run`'s body.
#[derive(Serialize, ToSchema)]
pub struct RunRequestSchema {
    /// Language name or alias (`python`, `py`, `c++`, ...).
    pub language: String,
    /// The main file's text (or give it as the first of `files`).
    pub source: Option<String>,
    /// Standard input.
    pub stdin: Option<String>,
    /// Command-line arguments.
    pub args: Option<Vec<String>>,
    /// Extra files beside the main one.
    pub files: Option<Vec<SourceFileSchema>>,
    /// Limits.
    pub limits: Option<LimitsSchema>,
}

/// A verdict.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusSchema {
    /// Exited 0 within every limit.
    Ok,
    /// Non-zero exit or a signal.
    RuntimeError,
    /// CPU or wall time ran out (`reason` says which).
    TimeLimit,
    /// Killed by the memory limit.
    MemoryLimit,
    /// Wrote more than the output limit.
    OutputLimit,
    /// The compiler refused the program.
    CompileError,
    /// cod failed; not the program's fault.
    InternalError,
}

/// The compile stage of a compiled language.
#[derive(Serialize, ToSchema)]
pub struct CompileReportSchema {
    /// The compiler's verdict.
    pub status: StatusSchema,
    /// `cpu`, `wall`, `memory` or `output` when a limit ended it.
    pub reason: Option<String>,
    /// In words.
    pub message: Option<String>,
    /// Exit code.
    pub exit_code: Option<i32>,
    /// Signal name.
    pub signal: Option<String>,
    /// Compiler stdout.
    pub stdout: String,
    /// Compiler stderr.
    pub stderr: String,
    /// Whether stdout was cut.
    pub stdout_truncated: bool,
    /// Whether stderr was cut.
    pub stderr_truncated: bool,
    /// CPU ms.
    pub cpu_ms: u64,
    /// Wall ms.
    pub wall_ms: u64,
    /// Peak memory, KiB.
    pub memory_kb: u64,
    /// Whether the compiled program came from the cache.
    pub cached: bool,
}

/// What a run did.
#[derive(Serialize, ToSchema)]
pub struct RunResultSchema {
    /// The run's id, as in logs and `/api/v1/jobs/{id}`.
    pub id: String,
    /// Canonical language name.
    pub language: String,
    /// Its version.
    pub version: String,
    /// The verdict.
    pub status: StatusSchema,
    /// `cpu`, `wall`, `memory` or `output` when a limit ended the run.
    pub reason: Option<String>,
    /// The verdict in words.
    pub message: Option<String>,
    /// Exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Signal name (`SIGSEGV`), when one ended it.
    pub signal: Option<String>,
    /// Standard output (capped).
    pub stdout: String,
    /// Standard error (capped).
    pub stderr: String,
    /// Whether stdout was cut at the cap.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at the cap.
    pub stderr_truncated: bool,
    /// CPU time, ms.
    pub cpu_ms: u64,
    /// Wall time, ms.
    pub wall_ms: u64,
    /// Peak memory, KiB.
    pub memory_kb: u64,
    /// The compile stage, for compiled languages.
    pub compile: Option<CompileReportSchema>,
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "cod (Compute On Demand)",
        description = "Runs untrusted programs in a sandbox: native API, async jobs, Piston v2 and Judge0 compatibility. See docs/api.md."
    ),
    paths(
        crate::native::run,
        crate::native::runtimes,
        crate::native::healthz,
        crate::native::readyz,
        crate::fleet::list_workers,
        crate::jobs_api::create,
        crate::jobs_api::batch,
        crate::jobs_api::get,
        crate::jobs_api::list,
        crate::jobs_api::cancel,
        crate::piston::execute,
        crate::piston::runtimes,
        crate::judge0::create,
        crate::judge0::show,
        crate::judge0::batch_create,
        crate::judge0::batch_show,
        crate::judge0::languages,
        crate::judge0::languages_all,
        crate::judge0::language,
        crate::judge0::statuses,
        crate::judge0::about,
        crate::judge0::config_info,
        crate::metrics::render,
        openapi_json,
        swagger_page,
    ),
    components(schemas(
        ErrorBody,
        RunRequestSchema,
        RunResultSchema,
        crate::native::RuntimeInfo,
        crate::jobs::JobView,
        crate::cases::TestsResult,
        crate::fleet::WorkerList,
    )),
    tags(
        (name = "runs", description = "Run a program and wait for its result"),
        (name = "jobs", description = "Asynchronous jobs, batches, test cases, monitoring"),
        (name = "piston", description = "Piston v2 compatibility"),
        (name = "judge0", description = "Judge0 compatibility"),
        (name = "operations", description = "Health, metrics, this document"),
    )
)]
struct ApiDoc;

/// Routes that answer exactly as another documented one: (alias, documented path).
const ALIASES: &[(&str, &str)] = &[
    ("/api/v2/piston/execute", "/api/v2/execute"),
    ("/api/v2/piston/runtimes", "/api/v2/runtimes"),
];

/// Routes whose handlers live outside this crate's annotated modules (the page, its
/// assets, the editor's WebSocket): (path, tag, what it answers).
const PLAIN_GETS: &[(&str, &str, &str)] = &[
    ("/", "web", "The web editor's page (HTML)"),
    ("/app.js", "web", "The web editor's script"),
    ("/app.css", "web", "The web editor's style sheet"),
    (
        "/api/v1/ws",
        "web",
        "The editor's WebSocket (program buffers, edits, run, stdin, kill, output events); see docs/api.md",
    ),
    (
        "/api/docs/swagger-ui-bundle.js",
        "operations",
        "Swagger UI's script (gzip when accepted)",
    ),
    (
        "/api/docs/swagger-ui.css",
        "operations",
        "Swagger UI's style sheet (gzip when accepted)",
    ),
];

/// The OpenAPI document.
pub fn document() -> Doc {
    use utoipa::openapi::HttpMethod;
    use utoipa::openapi::path::{OperationBuilder, PathItem};
    use utoipa::openapi::response::ResponseBuilder;
    let mut doc = ApiDoc::openapi();
    for (alias, path) in ALIASES {
        if let Some(item) = doc.paths.paths.get(*path).cloned() {
            doc.paths.paths.insert((*alias).to_owned(), item);
        }
    }
    for (path, tag, what) in PLAIN_GETS {
        let op = OperationBuilder::new()
            .summary(Some(*what))
            .tag(*tag)
            .response("200", ResponseBuilder::new().description(*what).build())
            .build();
        doc.paths
            .paths
            .insert((*path).to_owned(), PathItem::new(HttpMethod::Get, op));
    }
    doc
}

/// `GET /api/openapi.json`
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object)))]
pub async fn openapi_json() -> Response {
    static JSON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let body = JSON.get_or_init(|| {
        document()
            .to_pretty_json()
            .expect("the document serializes")
    });
    ([(header::CONTENT_TYPE, "application/json")], body.as_str()).into_response()
}

const SWAGGER_INDEX: &str = include_str!("../assets/swagger/index.html");
const SWAGGER_JS_GZ: &[u8] = include_bytes!("../assets/swagger/swagger-ui-bundle.js.gz");
const SWAGGER_CSS_GZ: &[u8] = include_bytes!("../assets/swagger/swagger-ui.css.gz");

/// `GET /api/docs`: Swagger UI over this document.
#[utoipa::path(get, path = "/api/docs", tag = "operations",
    responses((status = 200, description = "Swagger UI (HTML), served without any CDN", content_type = "text/html")))]
pub async fn swagger_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SWAGGER_INDEX,
    )
        .into_response()
}

/// A gzip-compressed asset: as is to clients that accept gzip, inflated for the others.
fn gzipped(headers: &HeaderMap, content_type: &'static str, gz: &'static [u8]) -> Response {
    let accepts = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let cache = (header::CACHE_CONTROL, "public, max-age=86400");
    if accepts {
        return (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CONTENT_ENCODING, "gzip"),
                cache,
            ],
            gz,
        )
            .into_response();
    }
    let mut plain = Vec::new();
    let inflated = std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz), &mut plain);
    match inflated {
        Ok(_) => ([(header::CONTENT_TYPE, content_type), cache], plain).into_response(),
        Err(e) => crate::error::ApiError::Internal(format!("inflating a built-in asset: {e}"))
            .into_response(),
    }
}

/// `GET /api/docs/swagger-ui-bundle.js`
pub(crate) async fn swagger_js(headers: HeaderMap) -> Response {
    gzipped(
        &headers,
        "application/javascript; charset=utf-8",
        SWAGGER_JS_GZ,
    )
}

/// `GET /api/docs/swagger-ui.css`
pub(crate) async fn swagger_css(headers: HeaderMap) -> Response {
    gzipped(&headers, "text/css; charset=utf-8", SWAGGER_CSS_GZ)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn keys(v: &serde_json::Value) -> BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    fn props(doc: &serde_json::Value, schema: &str) -> BTreeSet<String> {
        keys(&doc["components"]["schemas"][schema]["properties"])
    }

    /// The hand-written schemas name exactly the fields the real types carry.
    #[test]
    fn schemas_match_the_real_types() {
        let doc = serde_json::to_value(document()).unwrap();
        let result = cod_core::RunResult {
            compile: Some(cod_core::CompileReport::default()),
            ..Default::default()
        };
        let v = serde_json::to_value(&result).unwrap();
        assert_eq!(props(&doc, "RunResultSchema"), keys(&v));
        assert_eq!(props(&doc, "CompileReportSchema"), keys(&v["compile"]));
        let req = cod_core::RunRequest {
            language: "c".into(),
            source: Some(String::new()),
            stdin: Some(String::new()),
            args: vec![String::new()],
            files: vec![cod_core::SourceFile::default()],
            limits: Some(cod_core::LimitsRequest {
                cpu_ms: Some(1),
                wall_ms: Some(1),
                memory_mb: Some(1),
                processes: Some(1),
                output_kb: Some(1),
                disk_mb: Some(1),
            }),
        };
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(props(&doc, "RunRequestSchema"), keys(&v));
        assert_eq!(props(&doc, "LimitsSchema"), keys(&v["limits"]));
        let f = serde_json::to_value(cod_core::SourceFile {
            name: Some("a".into()),
            content: String::new(),
        })
        .unwrap();
        assert_eq!(props(&doc, "SourceFileSchema"), keys(&f));
    }

    #[test]
    fn document_is_openapi_3_1() {
        let doc = serde_json::to_value(document()).unwrap();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        assert!(doc["paths"]["/api/v2/piston/execute"]["post"].is_object());
    }
}
