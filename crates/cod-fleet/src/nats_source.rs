//! The load of a fleet on NATS JetStream, as the manager sees it.
//!
//! [`NatsSource`] yields one [`LoadSample`] per interval (2 s by default), measured from
//! the broker alone:
//!
//! - **Queued** per runtime: the sum of `num_pending` (messages not delivered yet) of the
//!   runtime's job consumers, `run-<runtime>-<class>` on stream [`JOBS_STREAM`].
//! - **Running** per runtime: the sum of `num_ack_pending` (delivered, not acknowledged).
//! - **Oldest wait** per runtime: the age of the first message not delivered yet of each
//!   consumer (a message get by subject from the consumer's delivered sequence on), the
//!   longest of the runtime's consumers.
//! - **Arrival rate**: the increase of the stream's last sequence per second since the
//!   previous sample (zero in the first sample). A publish stored once under its
//!   `Nats-Msg-Id` counts once; redeliveries do not count.
//! - **Slots**: busy and total slots, and busy slots per worker, from the heartbeats of
//!   live workers that are not draining ([`Bus::worker_list`]).
//! - **Mean run time**: Little's law over the same workers, mean busy slots over runs
//!   finished per second (the increase of their heartbeats' `done`), smoothed; absent
//!   while no run finished.
//!
//! A failure to read the broker is a [`SourceError::Read`] for that sample; the next call
//! tries again, so the caller decides whether to go on.

use std::collections::BTreeMap;
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer;
use futures_util::TryStreamExt;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::bus::{Bus, BusError, JOBS_STREAM, bus_err};
use crate::policy::RuntimeLoad;
use crate::source::{LoadSample, LoadSource, SourceError};
use crate::worker::WorkerId;

/// How often [`NatsSource`] measures, unless told otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// Weight of the newest measurement in the smoothed mean run time.
const MEAN_RUN_WEIGHT: f64 = 0.3;

/// The runtime a job consumer serves, from its name `run-<runtime>-<class>`; `None` for
/// any other consumer.
pub fn consumer_runtime(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("run-")?;
    let (runtime, class) = rest.rsplit_once('-')?;
    if runtime.is_empty() || !matches!(class, "short" | "long") {
        return None;
    }
    Some(runtime)
}

/// What the previous sample saw, for rates.
#[derive(Debug)]
struct Previous {
    at: Instant,
    last_sequence: u64,
    busy_slots: u32,
    done: BTreeMap<String, u64>,
}

/// The fleet's load, read from the job stream, its consumers and the worker heartbeats.
#[derive(Debug)]
pub struct NatsSource {
    bus: Bus,
    interval: Duration,
    ticker: Option<Interval>,
    previous: Option<Previous>,
    mean_run: Option<Duration>,
}

impl NatsSource {
    /// A source measuring through `bus` every [`DEFAULT_INTERVAL`].
    pub fn new(bus: Bus) -> NatsSource {
        NatsSource {
            bus,
            interval: DEFAULT_INTERVAL,
            ticker: None,
            previous: None,
            mean_run: None,
        }
    }

    /// Measures every `interval` instead (at least a millisecond).
    pub fn with_interval(mut self, interval: Duration) -> NatsSource {
        self.interval = interval.max(Duration::from_millis(1));
        self.ticker = None;
        self
    }

    /// The interval between samples.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The bus it reads.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Measures the load now, without waiting for the interval.
    pub async fn measure(&mut self) -> Result<LoadSample, BusError> {
        let mut runtimes: BTreeMap<String, RuntimeLoad> = BTreeMap::new();
        let consumers: Vec<consumer::Info> = self
            .bus
            .jobs
            .consumers()
            .try_collect()
            .await
            .map_err(bus_err("listing the job consumers"))?;
        for c in &consumers {
            let Some(runtime) = consumer_runtime(&c.name) else {
                continue;
            };
            let oldest_wait = if c.num_pending > 0 {
                self.oldest_wait(c).await?
            } else {
                Duration::ZERO
            };
            let load = runtimes.entry(runtime.to_owned()).or_default();
            load.queued = load
                .queued
                .saturating_add(u32::try_from(c.num_pending).unwrap_or(u32::MAX));
            load.busy = load
                .busy
                .saturating_add(u32::try_from(c.num_ack_pending).unwrap_or(u32::MAX));
            load.oldest_wait = load.oldest_wait.max(oldest_wait);
        }

        let info = self
            .bus
            .jobs
            .get_info()
            .await
            .map_err(bus_err("reading the job stream"))?;
        let last_sequence = info.state.last_sequence;

        let workers = self.bus.worker_list().await?;
        let mut busy_slots = 0u32;
        let mut total_slots = 0u32;
        let mut worker_busy = BTreeMap::new();
        let mut done = BTreeMap::new();
        for w in workers.iter().filter(|w| w.state == "ready") {
            let hb = &w.heartbeat;
            busy_slots = busy_slots.saturating_add(hb.busy);
            total_slots = total_slots.saturating_add(hb.slots);
            worker_busy.insert(WorkerId(hb.id.clone()), hb.busy);
            done.insert(hb.id.clone(), hb.done);
        }

        let now = Instant::now();
        let mut arrival_rate = 0.0;
        if let Some(prev) = &self.previous {
            let secs = now.duration_since(prev.at).as_secs_f64();
            if secs > 0.0 {
                #[allow(clippy::cast_precision_loss)]
                let arrived = last_sequence.saturating_sub(prev.last_sequence) as f64;
                arrival_rate = arrived / secs;
                // Runs finished by the workers seen both times (a restarted worker
                // counts from zero again: skipped).
                let finished: u64 = done
                    .iter()
                    .filter_map(|(id, &d)| prev.done.get(id).and_then(|&p| d.checked_sub(p)))
                    .sum();
                if finished > 0 {
                    let mean_busy = (f64::from(busy_slots) + f64::from(prev.busy_slots)) / 2.0;
                    #[allow(clippy::cast_precision_loss)]
                    let per_second = finished as f64 / secs;
                    let measured = mean_busy / per_second;
                    let smoothed = self.mean_run.map_or(measured, |m| {
                        MEAN_RUN_WEIGHT * measured + (1.0 - MEAN_RUN_WEIGHT) * m.as_secs_f64()
                    });
                    self.mean_run = Duration::try_from_secs_f64(smoothed).ok();
                }
            }
        }
        self.previous = Some(Previous {
            at: now,
            last_sequence,
            busy_slots,
            done,
        });

        tracing::debug!(
            stream = JOBS_STREAM,
            consumers = consumers.len(),
            last_sequence,
            arrival_rate,
            busy_slots,
            total_slots,
            workers = worker_busy.len(),
            "fleet load measured"
        );
        Ok(LoadSample {
            at: None,
            arrival_rate,
            mean_run: self.mean_run,
            busy_slots,
            total_slots,
            queued_cpu: None,
            runtimes,
            worker_busy,
            startup: None,
        })
    }

    /// How long the first message `c` has not delivered yet has been in the stream.
    async fn oldest_wait(&self, c: &consumer::Info) -> Result<Duration, BusError> {
        let subject = c.config.filter_subject.as_str();
        if subject.is_empty() {
            return Ok(Duration::ZERO);
        }
        let from = c.delivered.stream_sequence.saturating_add(1);
        match self
            .bus
            .jobs
            .get_first_raw_message_by_subject(subject, from)
            .await
        {
            Ok(m) => {
                let published = m.time.unix_timestamp_nanos();
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let now = i128::try_from(now).unwrap_or(i128::MAX);
                let age = u64::try_from(now.saturating_sub(published).max(0)).unwrap_or(u64::MAX);
                Ok(Duration::from_nanos(age))
            }
            // Taken (or expired) between the consumer's info and the get.
            Err(e)
                if e.kind()
                    == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound =>
            {
                Ok(Duration::ZERO)
            }
            Err(e) => Err(bus_err("reading the oldest waiting job")(e)),
        }
    }
}

impl LoadSource for NatsSource {
    /// Waits for the next interval (the first sample comes at once), then measures.
    async fn next_sample(&mut self) -> Result<Option<LoadSample>, SourceError> {
        let interval = self.interval;
        let ticker = self.ticker.get_or_insert_with(|| {
            let mut t = tokio::time::interval(interval);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
        ticker.tick().await;
        self.measure()
            .await
            .map(Some)
            .map_err(|e| SourceError::Read(io::Error::other(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Class, consumer_name};

    #[test]
    fn runtimes_come_from_consumer_names() {
        assert_eq!(consumer_runtime("run-python-short"), Some("python"));
        assert_eq!(consumer_runtime("run-c-17-long"), Some("c-17"));
        assert_eq!(
            consumer_runtime(&consumer_name("c++ 17", Class::Long)),
            Some("c___17")
        );
        assert_eq!(consumer_runtime("run--short"), None);
        assert_eq!(consumer_runtime("run-python-medium"), None);
        assert_eq!(consumer_runtime("audit"), None);
    }
}
