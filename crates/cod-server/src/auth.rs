//! Who is calling: an API key's holder when `[auth]` is on, else the remote address.
//!
//! With auth on, a middleware checks `Authorization: Bearer KEY` or `X-Auth-Token: KEY`
//! on every route but the public ones (health, metrics, the page, the API docs) and puts
//! the [`Caller`] in the request's extensions; handlers take it as an extractor. Keys are
//! looked up by their blake3 hash, so the table never compares secrets byte by byte.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cod_core::config::AuthConfig;
use cod_sched::{ClientId, ClientLimits};

use crate::AppState;
use crate::error::ApiError;

/// Paths anyone may fetch, with auth on or off.
const PUBLIC: &[&str] = &[
    "/healthz", "/readyz", "/metrics", "/", "/app.js", "/app.css",
];
/// Path prefixes anyone may fetch.
const PUBLIC_PREFIXES: &[&str] = &["/api/openapi.json", "/api/docs"];

/// The caller of a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Caller {
    /// Fair share and limits go by this.
    pub client: ClientId,
    /// The key's own limits, if it has any.
    pub limits: Option<ClientLimits>,
    /// May see and cancel every client's jobs.
    pub admin: bool,
}

impl Caller {
    /// Whose jobs the caller may see: `None` for everyone's.
    pub fn scope(&self) -> Option<&ClientId> {
        (!self.admin).then_some(&self.client)
    }
}

#[derive(Clone, Debug)]
struct Key {
    name: String,
    limits: ClientLimits,
    admin: bool,
}

/// The API keys.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    enabled: bool,
    keys: HashMap<[u8; 32], Key>,
}

impl Auth {
    /// Keys from `config`; a key's zero limits take `defaults`.
    pub fn new(config: &AuthConfig, defaults: ClientLimits) -> Auth {
        let keys = config
            .keys
            .iter()
            .map(|k| {
                let limits = ClientLimits {
                    rate: if k.rate > 0.0 { k.rate } else { defaults.rate },
                    burst: if k.burst > 0 { k.burst } else { defaults.burst },
                    concurrency: if k.concurrency > 0 {
                        k.concurrency
                    } else {
                        defaults.concurrency
                    },
                };
                (
                    *blake3::hash(k.key.as_bytes()).as_bytes(),
                    Key {
                        name: k.name.clone(),
                        limits,
                        admin: k.admin,
                    },
                )
            })
            .collect();
        Auth {
            enabled: config.enabled,
            keys,
        }
    }

    /// Whether keys are required.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The caller of a request with `headers` from `remote`.
    pub fn identify(
        &self,
        headers: &HeaderMap,
        remote: Option<SocketAddr>,
    ) -> Result<Caller, ApiError> {
        if !self.enabled {
            return Ok(Caller {
                client: ClientId(remote.map_or_else(|| "local".to_owned(), |a| a.ip().to_string())),
                limits: None,
                admin: true,
            });
        }
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .or_else(|| headers.get("x-auth-token").and_then(|v| v.to_str().ok()))
            .map(str::trim);
        let Some(token) = token else {
            return Err(ApiError::Unauthorized(
                "an API key is required: send `Authorization: Bearer KEY` or `X-Auth-Token: KEY`"
                    .into(),
            ));
        };
        let key = self
            .keys
            .get(blake3::hash(token.as_bytes()).as_bytes())
            .ok_or_else(|| ApiError::Unauthorized("the API key is not valid".into()))?;
        Ok(Caller {
            client: ClientId(key.name.clone()),
            limits: Some(key.limits),
            admin: key.admin,
        })
    }
}

fn is_public(path: &str) -> bool {
    PUBLIC.contains(&path) || PUBLIC_PREFIXES.iter().any(|p| path.starts_with(p))
}

fn remote(parts_ext: &axum::http::Extensions) -> Option<SocketAddr> {
    parts_ext
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| *a)
}

/// Middleware: identifies the caller of every non-public route (401 without a valid key
/// when auth is on).
pub(crate) async fn require(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    if is_public(req.uri().path()) {
        return next.run(req).await;
    }
    match st.auth.identify(req.headers(), remote(req.extensions())) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => {
            let mut resp = e.into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(c) = parts.extensions.get::<Caller>() {
            return Ok(c.clone());
        }
        st.auth.identify(&parts.headers, remote(&parts.extensions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cod_core::config::ApiKeyConfig;

    fn auth() -> Auth {
        Auth::new(
            &AuthConfig {
                enabled: true,
                keys: vec![
                    ApiKeyConfig {
                        name: "alice".into(),
                        key: "alice-secret-key-123".into(),
                        concurrency: 3,
                        ..Default::default()
                    },
                    ApiKeyConfig {
                        name: "ops".into(),
                        key: "ops-secret-key-12345".into(),
                        admin: true,
                        ..Default::default()
                    },
                ],
            },
            ClientLimits {
                rate: 5.0,
                burst: 0,
                concurrency: 10,
            },
        )
    }

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        h
    }

    #[test]
    fn keys_identify_callers_with_their_limits() {
        let a = auth();
        let c = a
            .identify(
                &headers("authorization", "Bearer alice-secret-key-123"),
                None,
            )
            .unwrap();
        assert_eq!(c.client.0, "alice");
        assert_eq!(
            c.limits,
            Some(ClientLimits {
                rate: 5.0,
                burst: 0,
                concurrency: 3
            })
        );
        assert!(!c.admin);
        assert_eq!(c.scope(), Some(&ClientId("alice".into())));
        let ops = a
            .identify(&headers("x-auth-token", "ops-secret-key-12345"), None)
            .unwrap();
        assert!(ops.admin && ops.scope().is_none());
        let e = a.identify(&HeaderMap::new(), None).unwrap_err();
        assert!(matches!(e, ApiError::Unauthorized(m) if m.contains("Authorization")));
        let e = a
            .identify(
                &headers("authorization", "Bearer nope-nope-nope-nope"),
                None,
            )
            .unwrap_err();
        assert!(matches!(e, ApiError::Unauthorized(m) if m.contains("not valid")));
    }

    #[test]
    fn without_auth_the_remote_address_is_the_client() {
        let a = Auth::default();
        let c = a
            .identify(&HeaderMap::new(), Some("10.1.2.3:5555".parse().unwrap()))
            .unwrap();
        assert_eq!(c.client.0, "10.1.2.3");
        assert!(c.admin);
        assert_eq!(
            a.identify(&HeaderMap::new(), None).unwrap().client.0,
            "local"
        );
        assert!(is_public("/healthz") && is_public("/api/docs/swagger-ui.css"));
        assert!(!is_public("/api/v1/run") && !is_public("/submissions"));
    }
}
