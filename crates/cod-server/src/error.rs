//! Errors at the HTTP boundary: every failure becomes a JSON body with a message that names
//! the problem, and the right status. User faults are 4xx; cod's own faults are a 500 with a
//! generic body (the detail goes to the log).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cod_core::run::RequestError;
use cod_sched::{RejectReason, Rejected};
use serde::de::DeserializeOwned;
use serde_json::json;

/// What went wrong with a request, in the native API's shape `{"error": "..."}`.
#[derive(Debug)]
pub enum ApiError {
    /// The request is malformed or asks for something not allowed (400).
    BadRequest(String),
    /// The body is larger than the configured maximum (413).
    TooLarge(String),
    /// No such route or object (404).
    NotFound(String),
    /// No valid API key (401).
    Unauthorized(String),
    /// The run was cancelled before it finished (409).
    Cancelled(String),
    /// Too many runs are waiting (429, with `Retry-After`), or, for a fleet gateway whose
    /// broker is unreachable, the run cannot be taken now (503, with `Retry-After`).
    Overloaded(Rejected),
    /// cod failed (500); the detail is logged, not sent.
    Internal(String),
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl ApiError {
    /// The status code and the message sent to the client.
    pub fn parts(&self) -> (StatusCode, String) {
        match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m.clone()),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m.clone()),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m.clone()),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m.clone()),
            ApiError::Cancelled(m) => (StatusCode::CONFLICT, m.clone()),
            ApiError::Overloaded(r) if r.reason == RejectReason::BrokerUnreachable => {
                (StatusCode::SERVICE_UNAVAILABLE, overload_message(r))
            }
            ApiError::Overloaded(r) => (StatusCode::TOO_MANY_REQUESTS, overload_message(r)),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; the server log has the details".to_owned(),
            ),
        }
    }

    /// Builds the response with the message under `key` (`error` natively, `message` for
    /// Piston clients).
    pub fn into_response_with_key(self, key: &str) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(error = %detail, "internal error answering a request");
        }
        let (status, message) = self.parts();
        let body = match &self {
            ApiError::Overloaded(r) => json!({ key: message, "reason": r.reason.as_str() }),
            _ => json!({ key: message }),
        };
        let mut resp = (status, Json(body)).into_response();
        if let ApiError::Overloaded(r) = &self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_secs(r)));
        }
        resp
    }
}

/// Whole seconds to wait, at least 1, rounded up.
pub fn retry_secs(r: &Rejected) -> u64 {
    r.retry_after
        .as_secs()
        .saturating_add(u64::from(r.retry_after.subsec_nanos() > 0))
        .max(1)
}

fn overload_message(r: &Rejected) -> String {
    let secs = retry_secs(r);
    match r.reason {
        RejectReason::QueueFull => format!(
            "the server is busy ({} runs waiting); retry after {secs} s",
            r.queued
        ),
        RejectReason::QueueCpu => format!(
            "the server is busy (the {} runs waiting add up to its limit of expected CPU time); retry after {secs} s",
            r.queued
        ),
        RejectReason::WaitTooLong => format!(
            "the server is busy: this run would wait too long behind the {} runs waiting; retry after {secs} s",
            r.queued
        ),
        RejectReason::ClientRate => {
            format!("too many runs from this client (over its rate limit); retry after {secs} s")
        }
        RejectReason::ClientConcurrency => format!(
            "this client already has its limit of runs queued or running; retry after {secs} s"
        ),
        RejectReason::BrokerUnreachable => format!(
            "the fleet's broker (NATS) cannot be reached from this gateway, so the run cannot be stored; retry after {secs} s"
        ),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_response_with_key("error")
    }
}

/// Turns a body rejection into 413 (too large) or 400.
pub fn body_error(rejection: &BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(format!(
            "request body is too large: {}",
            rejection.body_text()
        ))
    } else {
        ApiError::BadRequest(format!(
            "could not read the request body: {}",
            rejection.body_text()
        ))
    }
}

/// Parses JSON, naming the path of the offending field in the message.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest(
            "the request body is empty; expected a JSON object".into(),
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let what = if inner.is_syntax() || inner.is_eof() {
            "malformed JSON"
        } else {
            "invalid request"
        };
        if path == "." || path.is_empty() {
            ApiError::BadRequest(format!("{what}: {inner}"))
        } else {
            ApiError::BadRequest(format!("{what}: {path}: {inner}"))
        }
    })
}

/// A JSON body extractor whose rejections are [`ApiError`]s. It accepts a body without a
/// `Content-Type` too, so that `curl -d '{...}'` works.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|r| body_error(&r))?;
        parse_json(&body).map(ApiJson)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cod_core::RunRequest;

    #[test]
    fn json_errors_name_the_field() {
        let err = parse_json::<RunRequest>(
            br#"{"language":"py","source":"x","limits":{"cpu_ms":"lots"}}"#,
        )
        .unwrap_err();
        let (status, msg) = err.parts();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(msg.contains("limits.cpu_ms"), "{msg}");
        let (_, msg) = parse_json::<RunRequest>(b"{\"language\": ")
            .unwrap_err()
            .parts();
        assert!(msg.starts_with("malformed JSON"), "{msg}");
        let (_, msg) = parse_json::<RunRequest>(b"").unwrap_err().parts();
        assert!(msg.contains("empty"), "{msg}");
        let (_, msg) = parse_json::<RunRequest>(br#"{"source":"x"}"#)
            .unwrap_err()
            .parts();
        assert!(msg.contains("language"), "{msg}");
    }
}
