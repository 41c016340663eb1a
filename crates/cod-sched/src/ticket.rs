//! What the scheduler knows of a run: who asked, for which runtime, and how to guess its
//! length. Everything here is serializable, so that a broker can carry it to other machines.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A run's id, as in logs and in `/api/v1/jobs/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub String);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who submitted a run: an API key's name when authentication is on, else the remote
/// address. Fair share and per-client limits are kept per client.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientId(pub String);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Limits on one client. Zero means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientLimits {
    /// Runs per second accepted from the client, on average.
    pub rate: f64,
    /// Runs the client may submit at once above `rate` (the bucket's size); 0 means
    /// `max(1, rate)`.
    pub burst: u32,
    /// Runs of the client queued or running at once.
    pub concurrency: usize,
}

/// A run as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    /// The run's id.
    pub id: JobId,
    /// Who asked for it.
    pub client: ClientId,
    /// The runtime (language) it needs; queues are kept per runtime.
    pub runtime: String,
    /// A hash of everything that decides what the run does (language, files, input,
    /// arguments, limits): the same content ran before predicts this run's length best.
    pub content: Option<String>,
    /// The longest the run can hold a slot (its limits): caps the estimate.
    #[serde(with = "millis")]
    pub bound: Duration,
    /// Limits on the client; `None` takes the scheduler's defaults.
    pub limits: Option<ClientLimits>,
}

impl Ticket {
    /// A ticket with no content hash, bound or limits of its own.
    pub fn new(
        id: impl Into<String>,
        client: impl Into<String>,
        runtime: impl Into<String>,
    ) -> Ticket {
        Ticket {
            id: JobId(id.into()),
            client: ClientId(client.into()),
            runtime: runtime.into(),
            content: None,
            bound: Duration::MAX,
            limits: None,
        }
    }

    /// Sets the content hash.
    pub fn with_content(mut self, content: impl Into<String>) -> Ticket {
        self.content = Some(content.into());
        self
    }

    /// Sets the bound.
    pub fn with_bound(mut self, bound: Duration) -> Ticket {
        self.bound = bound;
        self
    }

    /// Sets the client's limits.
    pub fn with_limits(mut self, limits: ClientLimits) -> Ticket {
        self.limits = Some(limits);
        self
    }
}

/// Durations as integer milliseconds on the wire.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_cross_the_wire() {
        let t = Ticket::new("j1", "10.0.0.1", "python")
            .with_content("abc")
            .with_bound(Duration::from_millis(1500))
            .with_limits(ClientLimits {
                rate: 2.0,
                burst: 4,
                concurrency: 3,
            });
        let json = serde_json::to_string(&t).expect("serializes");
        assert!(json.contains("\"bound\":1500"), "{json}");
        assert!(json.contains("\"id\":\"j1\""), "{json}");
        let back: Ticket = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, t);
    }
}
