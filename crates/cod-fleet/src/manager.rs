//! The manager's loop: measure, decide, act, and say so.
//!
//! Each [`LoadSample`] from the [`LoadSource`] is joined with the provider's view of its
//! workers into an [`Observation`]; the [`Autoscaler`] decides; the decision is logged with
//! every input it was made from (tracing fields), recorded as metrics (the `metrics`
//! facade: the binary installs the exporter), and handed to the [`Provider`].
//!
//! The source paces the loop: the NATS source yields a sample per interval, a JSON-lines
//! reader as fast as lines come.

use std::time::{Duration, SystemTime};

use crate::policy::{Autoscaler, Decision, Observation};
use crate::provider::{Provider, ProviderError};
use crate::source::{LoadSample, LoadSource, SourceError};
use crate::worker::{WorkerState, WorkerView};

/// The manager failed.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The load could not be read.
    #[error("reading the load")]
    Source(#[from] SourceError),
    /// The provider failed.
    #[error("provider")]
    Provider(#[from] ProviderError),
}

/// The policy, a provider, and what they last saw.
#[derive(Debug)]
pub struct Manager<P> {
    policy: Autoscaler,
    provider: P,
    mean_run: Duration,
    /// The last decision's outcome, to log a holding one at info only when it changed.
    last: Option<Outcome>,
}

/// What a decision came to: workers wanted, the target, why, and what held it.
type Outcome = (u32, u32, crate::policy::Reason, Option<crate::policy::Held>);

impl<P: Provider> Manager<P> {
    /// A manager deciding with `policy` and acting through `provider`.
    pub fn new(policy: Autoscaler, provider: P) -> Manager<P> {
        Manager {
            policy,
            provider,
            mean_run: Duration::ZERO,
            last: None,
        }
    }

    /// The provider.
    pub fn provider(&self) -> &P {
        &self.provider
    }

    /// The policy (and its history).
    pub fn policy(&self) -> &Autoscaler {
        &self.policy
    }

    /// Decides from one sample and carries the decision out.
    pub async fn step(&mut self, sample: LoadSample) -> Result<Decision, ManagerError> {
        let d = self.decide(sample).await?;
        if d.acts() {
            self.provider.apply(&d).await?;
        }
        Ok(d)
    }

    /// Decides from one sample without acting.
    async fn decide(&mut self, sample: LoadSample) -> Result<Decision, ManagerError> {
        let now = sample.at.map_or_else(
            || {
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
            },
            |s| Duration::from_secs_f64(s.max(0.0)),
        );
        if let Some(m) = sample.mean_run {
            self.mean_run = m;
        }
        let mut workers: Vec<WorkerView> = self.provider.workers().await?;
        for w in &mut workers {
            if let Some(&b) = sample.worker_busy.get(&w.id) {
                w.busy = b;
            }
        }
        let obs = Observation {
            now,
            runtimes: sample.runtimes,
            arrival_rate: sample.arrival_rate,
            mean_run: self.mean_run,
            queued_cpu: sample.queued_cpu,
            busy_slots: sample.busy_slots,
            total_slots: sample.total_slots,
            workers,
            startup: sample.startup,
        };
        let d = self.policy.decide(&obs);
        let outcome = (d.wanted, d.target, d.reason, d.held);
        let changed = self.last.replace(outcome) != Some(outcome);
        record(self.provider.name(), &obs, &d, changed);
        Ok(d)
    }

    /// Runs until `source` ends: every sample gets a decision, carried out and passed to
    /// `on_decision`. A provider failure is logged and the loop goes on (the next decision
    /// retries); a source failure ends it. Answers the number of decisions.
    pub async fn run<S: LoadSource>(
        &mut self,
        source: &mut S,
        mut on_decision: impl FnMut(&Decision) + Send,
    ) -> Result<u64, ManagerError> {
        let mut n = 0;
        while let Some(sample) = source.next_sample().await? {
            let d = self.decide(sample).await?;
            if d.acts()
                && let Err(e) = self.provider.apply(&d).await
            {
                tracing::error!(provider = self.provider.name(), error = ?e,
                    start = d.start, drain = d.drain.len(), "the provider failed to act");
            }
            on_decision(&d);
            n += 1;
        }
        Ok(n)
    }
}

/// Logs a decision with its inputs (at info when it acts or its outcome `changed`, at
/// debug otherwise) and records it as metrics.
fn record(provider: &'static str, obs: &Observation, d: &Decision, changed: bool) {
    let action = if d.start > 0 {
        "up"
    } else if !d.drain.is_empty() {
        "down"
    } else {
        "hold"
    };
    macro_rules! decision_event {
        ($level:ident) => {
            tracing::$level!(
                provider,
                action,
                now_s = d.now.as_secs_f64(),
                current = d.current,
                wanted = d.wanted,
                target = d.target,
                reason = d.reason.as_str(),
                held = d.held.map(|h| h.as_str()),
                start = d.start,
                drain = ?d.drain,
                demand_slots = d.demand_slots,
                forecast_slots = d.forecast_slots,
                backlog_slots = d.backlog_slots,
                prescale_slots = d.prescale_slots,
                arrival_rate = obs.arrival_rate,
                mean_run_ms = obs.mean_run.as_secs_f64() * 1e3,
                queued = obs.queued(),
                oldest_wait_ms = obs.oldest_wait().as_secs_f64() * 1e3,
                busy_slots = obs.busy_slots,
                total_slots = obs.total_slots,
                utilization = d.utilization,
                mix = ?d.mix,
                "autoscaling decision"
            )
        };
    }
    if d.acts() || changed {
        decision_event!(info);
    } else {
        decision_event!(debug);
    }

    metrics::counter!("cod_fleet_decisions_total", "action" => action, "reason" => d.reason.as_str())
        .increment(1);
    metrics::counter!("cod_fleet_workers_started_total").increment(u64::from(d.start));
    metrics::counter!("cod_fleet_workers_drained_total").increment(d.drain.len() as u64);
    metrics::gauge!("cod_fleet_workers_target").set(d.target);
    metrics::gauge!("cod_fleet_workers_wanted").set(d.wanted);
    for state in [
        WorkerState::Starting,
        WorkerState::Ready,
        WorkerState::Draining,
    ] {
        #[allow(clippy::cast_precision_loss)]
        let n = obs.workers.iter().filter(|w| w.state == state).count() as f64;
        metrics::gauge!("cod_fleet_workers", "state" => state.as_str()).set(n);
    }
    metrics::gauge!("cod_fleet_demand_slots").set(d.demand_slots);
    metrics::gauge!("cod_fleet_forecast_slots").set(d.forecast_slots);
    metrics::gauge!("cod_fleet_backlog_slots").set(d.backlog_slots);
    metrics::gauge!("cod_fleet_prescale_slots").set(d.prescale_slots);
    metrics::gauge!("cod_fleet_utilization").set(d.utilization);
    metrics::gauge!("cod_fleet_arrival_rate").set(obs.arrival_rate);
    metrics::gauge!("cod_fleet_queued").set(obs.queued());
    for (runtime, slots) in &d.mix {
        metrics::gauge!("cod_fleet_mix_slots", "runtime" => runtime.clone()).set(*slots);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::policy::PolicyConfig;
    use crate::provider::PlanProvider;

    fn sample(at: f64, arrival: f64) -> LoadSample {
        LoadSample {
            at: Some(at),
            arrival_rate: arrival,
            mean_run: Some(Duration::from_secs(10)),
            ..LoadSample::default()
        }
    }

    #[tokio::test]
    async fn the_plan_fleet_follows_load_up_and_back_down() {
        let policy = Autoscaler::new(PolicyConfig::default()).expect("valid");
        let mut m = Manager::new(policy, PlanProvider::new(1, 64));
        let mut source: VecDeque<LoadSample> = VecDeque::new();
        source.push_back(sample(0.0, 100.0));
        for t in (10..=4000).step_by(10) {
            source.push_back(sample(f64::from(t), 0.0));
        }
        let mut sizes = Vec::new();
        let n = m
            .run(&mut source, |d| sizes.push((d.now.as_secs(), d.target)))
            .await
            .expect("runs");
        assert_eq!(n, 401);
        assert_eq!(sizes[0], (0, 18));
        assert_eq!(sizes.last(), Some(&(4000, 1)));
        assert_eq!(m.provider().workers().await.expect("listed").len(), 1);
        // The mean run time carries over from samples that give it.
        let mut s = sample(4010.0, 50.0);
        s.mean_run = None;
        let d = m.step(s).await.expect("decides");
        assert_eq!(d.demand_slots, 500.0);
    }

    #[tokio::test]
    async fn heartbeat_busy_counts_reach_the_policy() {
        let policy = Autoscaler::new(PolicyConfig {
            scale_down_step: 1.0,
            ..PolicyConfig::default()
        })
        .expect("valid");
        let mut m = Manager::new(policy, PlanProvider::new(3, 64));
        m.step(sample(0.0, 0.0)).await.expect("decides");
        let mut s = sample(700.0, 0.0);
        s.worker_busy.insert("plan-00000".into(), 5);
        s.worker_busy.insert("plan-00001".into(), 0);
        s.worker_busy.insert("plan-00002".into(), 9);
        let d = m.step(s).await.expect("decides");
        // Down to the floor of one: the busiest stays.
        let drained: Vec<&str> = d.drain.iter().map(|w| w.0.as_str()).collect();
        assert_eq!(drained, ["plan-00001", "plan-00000"]);
    }
}
