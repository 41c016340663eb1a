//! `cod simulate`: a day of the full load, simulated, through the real scheduler and the
//! real autoscaling policy.
//!
//! A discrete-event simulation ([`engine`](self)): simulated time jumps from event to
//! event, so a day takes seconds. Users come in sittings over the day's curve
//! ([`ArrivalCurve`]), run programs whose lengths follow a heavy-tailed distribution
//! ([`RunLengths`]); each run is offered to a [`RunQueue`] — [`SchedQueue`], the real
//! `cod_sched::Scheduler` a gateway runs — and the [`Autoscaler`](crate::Autoscaler) boots
//! and drains machines from what it sees. The [`Report`] compares the machine-hours used
//! with a fleet sized for the peak all day, and gives the waits.

mod config;
mod engine;
mod load;
mod measure;
mod plot;
mod queue;
mod report;
mod rng;
mod sched;

pub use config::{
    FleetConfig, GatewayConfig, LanguageMix, LoadConfig, RunConfig, SimConfig, SimError,
};
pub use load::{ArrivalCurve, RunLengths};
pub use plot::svg;
pub use queue::{Backlog, Refused, RunQueue, RunSpec, Started};
pub use report::{Percentiles, Report, Sample};
pub use rng::Rng;
pub use sched::SchedQueue;

use std::time::Duration;

use cod_sched::{ClientLimits, SchedulerConfig};

/// Simulates `config`'s day through the real scheduler (one gateway's, in full) and policy.
///
/// Runs on a tokio runtime of its own whose clock is paused (the scheduler reads tokio's
/// clock): call it from outside any runtime (or from `spawn_blocking`).
pub fn simulate(config: &SimConfig) -> Result<Report, SimError> {
    simulate_with_progress(config, &mut |_| {})
}

/// How far a simulation has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Simulated time done, warm-up days included.
    pub done: Duration,
    /// Simulated time in all: the warm-up days and the reported duration.
    pub total: Duration,
}

/// [`simulate`], calling `progress` as simulated time passes: about once per simulated
/// minute, and once at the end (`done == total`).
pub fn simulate_with_progress(
    config: &SimConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<Report, SimError> {
    config.validate()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(SimError::Runtime)?;
    // Unconstrained: thousands of waiters are polled between two yields, and tokio's
    // cooperative budget would otherwise make ready ones look pending.
    rt.block_on(tokio::task::unconstrained(async {
        let f = &config.fleet;
        let s = &config.scheduler;
        // The gateway's share of the fleet is at most this: its equal part of the most
        // machines the policy may have (it may use more of fewer machines).
        let per_machine = f.cores_per_machine / f.gateways;
        let slots = usize::try_from(config.policy.max_workers.saturating_mul(per_machine))
            .unwrap_or(usize::MAX);
        let mut queue = SchedQueue::new(SchedulerConfig {
            workers: slots,
            queue: s.queue,
            queue_cpu: s.queue_cpu,
            max_wait: s.max_wait,
            policy: s.policy,
            aging: s.aging,
            default_expected: s.default_expected,
            client: ClientLimits::default(),
        });
        let engine = engine::Engine::new(config, &mut queue)?;
        Ok(engine.run(progress).await)
    }))
}

#[cfg(test)]
mod tests;
