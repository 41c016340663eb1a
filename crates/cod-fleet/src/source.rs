//! Where the manager's view of the load comes from.
//!
//! A [`LoadSource`] yields [`LoadSample`]s, one per decision: queues per runtime, arrival
//! rate, busy and total slots, busy slots per worker. The fleet's NATS source
//! ([`crate::nats_source`]: JetStream stream and consumer state, the heartbeat bucket)
//! implements it in the distributed mode; here are the sources that need no broker: JSON
//! lines from a reader (`cod fleet` without `--nats` reads its stdin), a channel, and a
//! list.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader, Lines};
use tokio::sync::mpsc;

use crate::policy::RuntimeLoad;
use crate::worker::WorkerId;

/// The load at one moment, as measured outside the provider.
///
/// As a JSON line (every field but `arrival_rate` may be left out):
///
/// ```json
/// {"at": 3600, "arrival_rate": 120.5, "mean_run": "9s", "busy_slots": 1100,
///  "total_slots": 1280, "queued_cpu": "40s",
///  "runtimes": {"python": {"queued": 4, "oldest_wait": "120ms", "busy": 700}},
///  "worker_busy": {"local-00001": 63}, "startup": "2m"}
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSample {
    /// Seconds since the policy's epoch; absent: now (seconds since the Unix epoch).
    #[serde(default)]
    pub at: Option<f64>,
    /// Runs arriving per second.
    pub arrival_rate: f64,
    /// Mean time a run holds its slot, recently.
    #[serde(default, with = "humantime_serde")]
    pub mean_run: Option<Duration>,
    /// Slots in use.
    #[serde(default)]
    pub busy_slots: u32,
    /// Slots of ready workers.
    #[serde(default)]
    pub total_slots: u32,
    /// Expected CPU time of the waiting runs.
    #[serde(default, with = "humantime_serde")]
    pub queued_cpu: Option<Duration>,
    /// Queues per runtime.
    #[serde(default)]
    pub runtimes: BTreeMap<String, RuntimeLoad>,
    /// Busy slots per worker (from heartbeats).
    #[serde(default)]
    pub worker_busy: BTreeMap<WorkerId, u32>,
    /// Measured start-up time of recent workers.
    #[serde(default, with = "humantime_serde")]
    pub startup: Option<Duration>,
}

/// Reading the load failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The input could not be read.
    #[error("reading load samples")]
    Read(#[source] io::Error),
    /// A line is not a load sample.
    #[error("load sample on line {line} is not valid")]
    Parse {
        /// The line number, from 1.
        line: u64,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Something that measures the load.
pub trait LoadSource: Send {
    /// The next sample, when it is due; `None` when the source has ended.
    fn next_sample(
        &mut self,
    ) -> impl Future<Output = Result<Option<LoadSample>, SourceError>> + Send;
}

/// Samples as JSON lines; blank lines and lines starting with `#` are skipped.
#[derive(Debug)]
pub struct JsonLines<R> {
    lines: Lines<BufReader<R>>,
    line: u64,
}

impl<R: AsyncRead + Unpin> JsonLines<R> {
    /// Samples read from `reader`.
    pub fn new(reader: R) -> JsonLines<R> {
        JsonLines {
            lines: BufReader::new(reader).lines(),
            line: 0,
        }
    }
}

impl<R: AsyncRead + Unpin + Send> LoadSource for JsonLines<R> {
    async fn next_sample(&mut self) -> Result<Option<LoadSample>, SourceError> {
        loop {
            let Some(text) = self.lines.next_line().await.map_err(SourceError::Read)? else {
                return Ok(None);
            };
            self.line += 1;
            let t = text.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            return serde_json::from_str(t)
                .map(Some)
                .map_err(|source| SourceError::Parse {
                    line: self.line,
                    source,
                });
        }
    }
}

impl LoadSource for mpsc::Receiver<LoadSample> {
    async fn next_sample(&mut self) -> Result<Option<LoadSample>, SourceError> {
        Ok(self.recv().await)
    }
}

impl LoadSource for VecDeque<LoadSample> {
    async fn next_sample(&mut self) -> Result<Option<LoadSample>, SourceError> {
        Ok(self.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn json_lines_are_read_with_defaults_and_comments() {
        let input = b"# a quiet start\n\n{\"at\": 10, \"arrival_rate\": 2.5, \"mean_run\": \"8s\",\
            \"runtimes\": {\"python\": {\"queued\": 3, \"oldest_wait\": \"1500ms\"}},\
            \"worker_busy\": {\"w1\": 4}}\n{\"arrival_rate\": 0}\n";
        let mut src = JsonLines::new(&input[..]);
        let s = src.next_sample().await.expect("reads").expect("a sample");
        assert_eq!(s.at, Some(10.0));
        assert_eq!(s.arrival_rate, 2.5);
        assert_eq!(s.mean_run, Some(Duration::from_secs(8)));
        assert_eq!(s.runtimes["python"].queued, 3);
        assert_eq!(
            s.runtimes["python"].oldest_wait,
            Duration::from_millis(1500)
        );
        assert_eq!(s.runtimes["python"].busy, 0);
        assert_eq!(s.worker_busy[&WorkerId::from("w1")], 4);
        let s = src.next_sample().await.expect("reads").expect("a sample");
        assert_eq!(s, LoadSample::default());
        assert!(src.next_sample().await.expect("reads").is_none());
    }

    #[tokio::test]
    async fn a_bad_line_is_an_error_with_its_number() {
        let input = b"{\"arrival_rate\": 1}\n{\"arrival_rate\": 1, \"colour\": 3}\n";
        let mut src = JsonLines::new(&input[..]);
        assert!(src.next_sample().await.expect("reads").is_some());
        let err = src.next_sample().await.expect_err("unknown field");
        assert!(matches!(err, SourceError::Parse { line: 2, .. }), "{err:?}");
    }
}
