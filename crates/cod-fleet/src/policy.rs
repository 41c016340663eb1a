//! The autoscaling policy: how many workers the fleet should have, from what it sees.
//!
//! [`Autoscaler::decide`] is pure: it reads no clock and does no I/O. It takes an
//! [`Observation`] (queues per runtime, arrival rate, busy and total slots, the workers,
//! their start-up time; the time is part of the observation) and keeps its own short
//! history (recent demand, recent recommendations, the previous days' curve). The same code
//! runs in `cod fleet` against real workers and in `cod simulate` against a simulated day.
//!
//! The rules, in order:
//!
//! 1. **Demand**: slots in use in steady state, `arrival rate × mean run time` (Little's
//!    law), or the busy slots if more.
//! 2. **Trend**: a worker started now serves only after its start-up time, so a rising
//!    demand is extrapolated that far ahead (least-squares slope over `trend_window`;
//!    only upward).
//! 3. **Backlog**: the CPU time already waiting, spread over `backlog_horizon`.
//! 4. **Pre-scaling** (optional): the highest demand the previous days saw between now and
//!    a start-up time (plus `lookahead`) from now.
//! 5. Workers wanted = `max(need + headroom_sigmas × √need, need / target_utilization) /
//!    slots_per_worker`, rounded up (square-root staffing for small fleets, the target
//!    utilization for large ones); one more
//!    than now when a run has waited longer than `urgent_wait` and the rules above would
//!    not add any; then the floor (`min_workers`) and the ceiling (`max_workers`).
//! 6. **Up fast**: a higher count takes effect at once.
//! 7. **Down slowly**: a lower count takes effect only when every recommendation of the
//!    last `scale_down_delay` was lower than now (the highest of them is the new count), at
//!    most `scale_down_step` of the workers at a time and one step per
//!    `scale_down_interval`.
//! 8. **Drain before stopping**: workers to remove are chosen among those still starting
//!    first, then the ready ones with the fewest busy slots; they drain (finish their runs,
//!    take no new ones) and exit. A draining worker never counts as capacity.
//! 9. **Runtime mix**: the wanted slots are split between runtimes in proportion to their
//!    demand (running plus waiting), see [`crate::mix`].

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::curve::{DayCurve, PrescaleConfig};
use crate::mix;
use crate::worker::{WorkerId, WorkerState, WorkerView};

/// How the policy behaves. Every key has a default; see `docs/fleet.md`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Slots (CPUs) of one worker.
    pub slots_per_worker: u32,
    /// The floor: workers kept however quiet it is.
    pub min_workers: u32,
    /// The ceiling.
    pub max_workers: u32,
    /// Highest share of the slots the fleet aims to keep busy (0 < u ≤ 1); the rest is
    /// headroom for bursts while new workers start.
    pub target_utilization: f64,
    /// Headroom for the random swings of the load, in standard deviations: `need` busy
    /// slots get `need + headroom_sigmas × √need` (square-root staffing: the busy slots of
    /// a stream of independent runs swing by about √need, so a large fleet needs a smaller
    /// share of headroom than a small one). The larger of this and `need /
    /// target_utilization` is wanted. Zero leaves only `target_utilization`.
    pub headroom_sigmas: f64,
    /// A worker's start-up time, until the observations measure it.
    #[serde(with = "humantime_serde")]
    pub startup: Duration,
    /// Waiting CPU time is to be cleared within this time.
    #[serde(with = "humantime_serde")]
    pub backlog_horizon: Duration,
    /// How far back the demand's trend is measured.
    #[serde(with = "humantime_serde")]
    pub trend_window: Duration,
    /// A scale-down happens only after this long of lower recommendations.
    #[serde(with = "humantime_serde")]
    pub scale_down_delay: Duration,
    /// At most this share of the workers is drained in one step (at least one worker).
    pub scale_down_step: f64,
    /// At most one scale-down step per this interval.
    #[serde(with = "humantime_serde")]
    pub scale_down_interval: Duration,
    /// A run that has waited this long makes the fleet grow by one worker even when the
    /// demand does not call for it (zero: never).
    #[serde(with = "humantime_serde")]
    pub urgent_wait: Duration,
    /// Scaling ahead of the previous days' curve.
    pub prescale: PrescaleConfig,
}

impl Default for PolicyConfig {
    fn default() -> PolicyConfig {
        PolicyConfig {
            slots_per_worker: 64,
            min_workers: 1,
            max_workers: 1000,
            target_utilization: 0.9,
            headroom_sigmas: 3.0,
            startup: Duration::from_secs(180),
            backlog_horizon: Duration::from_secs(60),
            trend_window: Duration::from_secs(300),
            scale_down_delay: Duration::from_secs(600),
            scale_down_step: 0.1,
            scale_down_interval: Duration::from_secs(60),
            urgent_wait: Duration::from_secs(2),
            prescale: PrescaleConfig::default(),
        }
    }
}

/// A configuration the policy cannot work with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// `slots_per_worker` is zero.
    #[error("policy.slots_per_worker must be at least 1")]
    NoSlots,
    /// The floor is above the ceiling.
    #[error("policy.min_workers ({min}) is above policy.max_workers ({max})")]
    FloorAboveCeiling {
        /// The floor.
        min: u32,
        /// The ceiling.
        max: u32,
    },
    /// A share is outside its range.
    #[error("policy.{key} must be in {range}, not {value}")]
    OutOfRange {
        /// The key.
        key: &'static str,
        /// The allowed range.
        range: &'static str,
        /// The value given.
        value: f64,
    },
    /// A duration that must not be zero is.
    #[error("policy.{0} must be longer than zero")]
    ZeroDuration(&'static str),
}

impl PolicyConfig {
    /// Checks every value; a policy is only built from a valid configuration.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.slots_per_worker == 0 {
            return Err(PolicyError::NoSlots);
        }
        if self.min_workers > self.max_workers {
            return Err(PolicyError::FloorAboveCeiling {
                min: self.min_workers,
                max: self.max_workers,
            });
        }
        let ranges: [(&'static str, f64, &'static str, bool); 6] = [
            (
                "headroom_sigmas",
                self.headroom_sigmas,
                "[0, 100]",
                (0.0..=100.0).contains(&self.headroom_sigmas),
            ),
            (
                "target_utilization",
                self.target_utilization,
                "(0, 1]",
                self.target_utilization > 0.0 && self.target_utilization <= 1.0,
            ),
            (
                "scale_down_step",
                self.scale_down_step,
                "(0, 1]",
                self.scale_down_step > 0.0 && self.scale_down_step <= 1.0,
            ),
            (
                "prescale.weight",
                self.prescale.weight,
                "(0, 1]",
                self.prescale.weight > 0.0 && self.prescale.weight <= 1.0,
            ),
            (
                "prescale.factor",
                self.prescale.factor,
                "(0, 2]",
                self.prescale.factor > 0.0 && self.prescale.factor <= 2.0,
            ),
            (
                "prescale.bucket (seconds, dividing a day)",
                self.prescale.bucket.as_secs_f64(),
                "[1, 86400]",
                self.prescale.bucket >= Duration::from_secs(1)
                    && self.prescale.bucket <= crate::curve::DAY
                    && crate::curve::DAY
                        .as_secs()
                        .is_multiple_of(self.prescale.bucket.as_secs().max(1)),
            ),
        ];
        for (key, value, range, ok) in ranges {
            if !ok {
                return Err(PolicyError::OutOfRange { key, range, value });
            }
        }
        for (key, d) in [
            ("startup", self.startup),
            ("backlog_horizon", self.backlog_horizon),
            ("trend_window", self.trend_window),
        ] {
            if d.is_zero() {
                return Err(PolicyError::ZeroDuration(key));
            }
        }
        Ok(())
    }
}

/// The queue of one runtime.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeLoad {
    /// Runs waiting.
    #[serde(default)]
    pub queued: u32,
    /// How long the oldest waiting run has waited.
    #[serde(default, with = "humantime_serde")]
    pub oldest_wait: Duration,
    /// Slots running this runtime.
    #[serde(default)]
    pub busy: u32,
}

/// What the policy sees at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    /// The time, since the policy's epoch (UTC midnight of some day for pre-scaling).
    pub now: Duration,
    /// Queues per runtime.
    pub runtimes: BTreeMap<String, RuntimeLoad>,
    /// Runs arriving per second (refused ones included: they are demand too).
    pub arrival_rate: f64,
    /// Mean time a run holds its slot, over the runs finished recently.
    pub mean_run: Duration,
    /// Expected CPU time of the waiting runs, when the scheduler knows it (else the
    /// policy takes `queued × mean_run`).
    pub queued_cpu: Option<Duration>,
    /// Slots in use.
    pub busy_slots: u32,
    /// Slots of ready workers.
    pub total_slots: u32,
    /// The workers, in any state.
    pub workers: Vec<WorkerView>,
    /// Measured start-up time of recent workers, if any.
    pub startup: Option<Duration>,
}

impl Observation {
    /// Runs waiting, all runtimes together.
    pub fn queued(&self) -> u32 {
        self.runtimes.values().map(|r| r.queued).sum()
    }

    /// The longest any waiting run has waited.
    pub fn oldest_wait(&self) -> Duration {
        self.runtimes
            .values()
            .filter(|r| r.queued > 0)
            .map(|r| r.oldest_wait)
            .max()
            .unwrap_or_default()
    }
}

/// Which rule set the wanted number of workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The current demand.
    Demand,
    /// The demand's trend over a start-up time.
    Trend,
    /// The waiting work.
    Backlog,
    /// The previous days' curve.
    Prescale,
    /// A run waited longer than `urgent_wait`.
    Urgent,
    /// The floor.
    Floor,
    /// The ceiling.
    Ceiling,
}

impl Reason {
    /// The snake_case name, as in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Demand => "demand",
            Reason::Trend => "trend",
            Reason::Backlog => "backlog",
            Reason::Prescale => "prescale",
            Reason::Urgent => "urgent",
            Reason::Floor => "floor",
            Reason::Ceiling => "ceiling",
        }
    }
}

/// Why a scale-down did not go all the way to the wanted count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Held {
    /// A recommendation within `scale_down_delay` was higher.
    Delay,
    /// The last step down was less than `scale_down_interval` ago.
    Interval,
    /// At most `scale_down_step` of the workers go at once.
    Step,
}

impl Held {
    /// The snake_case name, as in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Held::Delay => "delay",
            Held::Interval => "interval",
            Held::Step => "step",
        }
    }
}

/// What the policy decided, with the figures it decided from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    /// The observation's time, seconds.
    #[serde(serialize_with = "secs")]
    pub now: Duration,
    /// Workers counted as capacity before the decision (starting or ready).
    pub current: u32,
    /// Workers the load asks for now.
    pub wanted: u32,
    /// Workers the fleet is to have after this decision.
    pub target: u32,
    /// The rule that set `wanted`.
    pub reason: Reason,
    /// Why `target` is above `wanted`, on the way down.
    pub held: Option<Held>,
    /// Workers to start.
    pub start: u32,
    /// Workers to drain, then stop.
    pub drain: Vec<WorkerId>,
    /// Slots in use in steady state (rule 1).
    pub demand_slots: f64,
    /// Demand a start-up time ahead (rule 2).
    pub forecast_slots: f64,
    /// Slots to clear the backlog in time (rule 3).
    pub backlog_slots: f64,
    /// Demand the previous days saw ahead (rule 4).
    pub prescale_slots: f64,
    /// Busy slots over ready slots, as observed.
    pub utilization: f64,
    /// Slots wanted per runtime (rule 9).
    pub mix: BTreeMap<String, u32>,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Decision {
    /// Whether the decision changes the fleet.
    pub fn acts(&self) -> bool {
        self.start > 0 || !self.drain.is_empty()
    }
}

/// The policy with its history. See the module docs for its rules.
#[derive(Clone, Debug)]
pub struct Autoscaler {
    config: PolicyConfig,
    /// Demand samples within the trend window.
    demand: VecDeque<(Duration, f64)>,
    /// Recommendations within the scale-down delay.
    recommended: VecDeque<(Duration, u32)>,
    last_down: Option<Duration>,
    curve: DayCurve,
}

impl Autoscaler {
    /// A policy as `config` says, with no history.
    pub fn new(config: PolicyConfig) -> Result<Autoscaler, PolicyError> {
        config.validate()?;
        let curve = DayCurve::new(config.prescale.bucket, config.prescale.weight);
        Ok(Autoscaler {
            config,
            demand: VecDeque::new(),
            recommended: VecDeque::new(),
            last_down: None,
            curve,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// The day curve learned so far (to keep across restarts).
    pub fn curve(&self) -> &DayCurve {
        &self.curve
    }

    /// Starts from a curve learned before (by an earlier run of the manager).
    pub fn with_curve(mut self, curve: DayCurve) -> Autoscaler {
        self.curve = curve;
        self
    }

    /// Decides how many workers the fleet should have, and which to start or drain.
    pub fn decide(&mut self, obs: &Observation) -> Decision {
        let cfg = &self.config;
        let now = obs.now;
        let spw = f64::from(cfg.slots_per_worker);
        let startup = obs.startup.unwrap_or(cfg.startup);
        let mean_run = obs.mean_run.as_secs_f64();
        let busy = f64::from(obs.busy_slots);
        let current =
            u32::try_from(obs.workers.iter().filter(|w| w.counts()).count()).unwrap_or(u32::MAX);

        // Rule 1: demand.
        let demand = (obs.arrival_rate.max(0.0) * mean_run).max(busy);
        // Rule 2: trend.
        self.demand.push_back((now, demand));
        while self
            .demand
            .front()
            .is_some_and(|&(t, _)| t + cfg.trend_window < now)
        {
            self.demand.pop_front();
        }
        let slope = slope(&self.demand, cfg.trend_window).max(0.0);
        let forecast = demand + slope * startup.as_secs_f64();
        // Rule 3: backlog.
        let queued_cpu = obs
            .queued_cpu
            .map_or(f64::from(obs.queued()) * mean_run, |d| d.as_secs_f64());
        let backlog = queued_cpu / cfg.backlog_horizon.as_secs_f64();
        // Rule 4: the previous days.
        self.curve.record(now, demand + backlog);
        let prescale = if cfg.prescale.enabled {
            self.curve
                .ahead(now, startup + cfg.prescale.lookahead)
                .map_or(0.0, |d| d * cfg.prescale.factor)
        } else {
            0.0
        };

        // Rule 5: workers wanted, and the rule that set them.
        let workers_for = |slots: f64| -> u32 {
            let slots = slots.max(0.0);
            let staffed =
                (slots + cfg.headroom_sigmas * slots.sqrt()).max(slots / cfg.target_utilization);
            let w = (staffed / spw).ceil();
            // Saturating float-to-int conversion; the value is non-negative.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let w = w.max(0.0).min(f64::from(u32::MAX)) as u32;
            w
        };
        let by_demand = workers_for(demand);
        let by_trend = workers_for(forecast);
        let by_backlog = workers_for(forecast + backlog);
        let by_prescale = workers_for(prescale);
        let (mut wanted, mut reason) = if by_prescale > by_backlog {
            (by_prescale, Reason::Prescale)
        } else if by_backlog > by_trend {
            (by_backlog, Reason::Backlog)
        } else if by_trend > by_demand {
            (by_trend, Reason::Trend)
        } else {
            (by_demand, Reason::Demand)
        };
        if !cfg.urgent_wait.is_zero() && obs.oldest_wait() > cfg.urgent_wait && wanted <= current {
            wanted = current.saturating_add(1);
            reason = Reason::Urgent;
        }
        if wanted < cfg.min_workers {
            wanted = cfg.min_workers;
            reason = Reason::Floor;
        }
        if wanted > cfg.max_workers {
            wanted = cfg.max_workers;
            reason = Reason::Ceiling;
        }

        // Rules 6 and 7: up at once, down slowly.
        if self.recommended.is_empty() {
            // A manager that just started has seen no load yet: it keeps what it found for
            // a delay before shrinking it.
            self.recommended.push_back((now, current));
        }
        self.recommended.push_back((now, wanted));
        while self
            .recommended
            .front()
            .is_some_and(|&(t, _)| t + cfg.scale_down_delay < now)
        {
            self.recommended.pop_front();
        }
        let (target, held) = if wanted >= current {
            (wanted, None)
        } else {
            let highest = self
                .recommended
                .iter()
                .map(|&(_, w)| w)
                .max()
                .unwrap_or(wanted);
            if highest >= current {
                (current, Some(Held::Delay))
            } else if self
                .last_down
                .is_some_and(|t| now < t + cfg.scale_down_interval)
            {
                (current, Some(Held::Interval))
            } else {
                // At least one worker per step; the float is small and non-negative.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let step = ((f64::from(current) * cfg.scale_down_step).floor() as u32).max(1);
                let floor = current.saturating_sub(step);
                self.last_down = Some(now);
                if highest < floor {
                    (floor, Some(Held::Step))
                } else if highest > wanted {
                    (highest, Some(Held::Delay))
                } else {
                    (highest, None)
                }
            }
        };

        // Rule 8: whom to drain.
        let drain = if target < current {
            victims(&obs.workers, (current - target) as usize)
        } else {
            Vec::new()
        };
        let start = target.saturating_sub(current);

        // Rule 9: the runtime mix.
        let per_runtime: BTreeMap<String, u32> = obs
            .runtimes
            .iter()
            .map(|(k, r)| (k.clone(), r.busy.saturating_add(r.queued)))
            .collect();
        let mix = mix::split(target.saturating_mul(cfg.slots_per_worker), &per_runtime);

        Decision {
            now,
            current,
            wanted,
            target,
            reason,
            held,
            start,
            drain,
            demand_slots: demand,
            forecast_slots: forecast,
            backlog_slots: backlog,
            prescale_slots: prescale,
            utilization: if obs.total_slots > 0 {
                busy / f64::from(obs.total_slots)
            } else {
                0.0
            },
            mix,
        }
    }
}

/// The least-squares slope of `samples` (units per second); zero with fewer than three
/// samples or when they span less than a quarter of `window`.
fn slope(samples: &VecDeque<(Duration, f64)>, window: Duration) -> f64 {
    let (Some(first), Some(last)) = (samples.front(), samples.back()) else {
        return 0.0;
    };
    if samples.len() < 3 || last.0.saturating_sub(first.0) < window / 4 {
        return 0.0;
    }
    #[allow(clippy::cast_precision_loss)]
    let n = samples.len() as f64;
    let t0 = first.0;
    let xs = samples.iter().map(|&(t, _)| (t - t0).as_secs_f64());
    let mean_x = xs.clone().sum::<f64>() / n;
    let mean_y = samples.iter().map(|&(_, y)| y).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, &(_, y)) in xs.zip(samples.iter()) {
        sxy += (x - mean_x) * (y - mean_y);
        sxx += (x - mean_x) * (x - mean_x);
    }
    if sxx > 0.0 { sxy / sxx } else { 0.0 }
}

/// The `n` workers to drain: starting ones first (the newest first), then ready ones with
/// the fewest busy slots (the newest first among equals). Draining ones are not chosen.
fn victims(workers: &[WorkerView], n: usize) -> Vec<WorkerId> {
    let mut candidates: Vec<&WorkerView> = workers.iter().filter(|w| w.counts()).collect();
    candidates.sort_by(|a, b| {
        let rank = |w: &WorkerView| u8::from(w.state != WorkerState::Starting);
        rank(a)
            .cmp(&rank(b))
            .then(a.busy.cmp(&b.busy))
            .then_with(|| b.id.cmp(&a.id))
    });
    candidates
        .into_iter()
        .take(n)
        .map(|w| w.id.clone())
        .collect()
}

#[cfg(test)]
mod tests;
