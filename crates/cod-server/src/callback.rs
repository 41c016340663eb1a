//! Callbacks: when an asynchronous job with a `callback_url` finishes, its result is sent
//! there, signed, and retried with exponential backoff until a 2xx answer or the last
//! attempt. Where delivery stands (attempts, last error, `delivered`/`failed`) is shown on
//! the job.
//!
//! The signature is GitHub's scheme: `X-Cod-Signature-256: sha256=<hex>`, the HMAC-SHA256
//! of the exact body bytes under `jobs.callback_secret`.

use std::sync::Arc;
use std::time::Duration;

use cod_core::config::JobsConfig;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tracing::{info, warn};

use crate::jobs::{CallbackState, CallbackView, Jobs};

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-cod-signature-256";
/// The header carrying the job's id.
pub const JOB_HEADER: &str = "x-cod-job";

/// Sends callbacks.
#[derive(Clone)]
pub struct Callbacks {
    client: reqwest::Client,
    secret: Arc<Vec<u8>>,
    attempts: u32,
    backoff: Duration,
}

impl std::fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Callbacks")
            .field("attempts", &self.attempts)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl Callbacks {
    /// Callbacks as `config` says. An empty secret is replaced by a random one (logged as
    /// such: receivers cannot verify it).
    pub fn new(config: &JobsConfig) -> Callbacks {
        // reqwest is built without a default TLS provider; install ring once.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let secret = if config.callback_secret.is_empty() {
            uuid::Uuid::new_v4().as_bytes().to_vec()
        } else {
            config.callback_secret.as_bytes().to_vec()
        };
        let client = reqwest::Client::builder()
            .timeout(config.callback_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a plain HTTP client builds");
        Callbacks {
            client,
            secret: Arc::new(secret),
            attempts: config.callback_attempts,
            backoff: config.callback_backoff,
        }
    }

    /// Checks that `url` can be a callback URL; the error says why not.
    pub fn check_url(url: &str) -> Result<(), String> {
        let u = reqwest::Url::parse(url).map_err(|e| format!("is not a URL: {e}"))?;
        if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
            return Err("must be an http:// or https:// URL with a host".into());
        }
        Ok(())
    }

    /// Delivers `body` to `url` with `method` for job `id`, recording progress on the job.
    pub(crate) async fn deliver(
        &self,
        jobs: &Jobs,
        id: &str,
        url: &str,
        method: reqwest::Method,
        body: Vec<u8>,
    ) {
        let signature = sign(&self.secret, &body);
        let mut wait = self.backoff;
        for attempt in 1..=self.attempts {
            let sent = self
                .client
                .request(method.clone(), url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, &signature)
                .header(JOB_HEADER, id)
                .body(body.clone())
                .send()
                .await;
            let error = match sent {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("the receiver answered {}", r.status())),
                Err(e) => Some(format!("the request failed: {e}")),
            };
            let last = attempt == self.attempts;
            let state = match (&error, last) {
                (None, _) => CallbackState::Delivered,
                (Some(_), true) => CallbackState::Failed,
                (Some(_), false) => CallbackState::Pending,
            };
            jobs.update(id, |r| {
                r.callback = Some(CallbackView {
                    url: url.to_owned(),
                    state,
                    attempts: attempt,
                    last_error: error.clone(),
                });
            });
            match (error, last) {
                (None, _) => {
                    info!(job = %id, attempt, "callback delivered");
                    crate::metrics::callback("delivered");
                    return;
                }
                (Some(e), true) => {
                    warn!(job = %id, attempt, error = %e, "callback failed; giving up");
                    crate::metrics::callback("failed");
                    return;
                }
                (Some(e), false) => {
                    warn!(job = %id, attempt, error = %e, retry_in = ?wait, "callback failed; retrying");
                }
            }
            tokio::time::sleep(wait).await;
            wait = wait.saturating_mul(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn only_http_urls_with_a_host() {
        assert!(Callbacks::check_url("http://127.0.0.1:9/cb").is_ok());
        assert!(Callbacks::check_url("https://example.invalid/x").is_ok());
        assert!(Callbacks::check_url("ftp://x/").is_err());
        assert!(Callbacks::check_url("not a url").is_err());
    }
}
