//! What a simulated day came to: machine-hours against a fleet sized for the peak, waits,
//! refusals, and a timeline (as CSV) for the plot.

use std::fmt::Write as _;

use serde::Serialize;

/// Percentiles of a measure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// The largest.
    pub max: f64,
    /// How many values.
    pub count: u64,
}

/// The `q` quantile of sorted values (nearest rank); zero when there are none.
pub(super) fn quantile(sorted: &[f32], q: f64) -> f32 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn percentiles(mut v: Vec<f32>) -> Percentiles {
    v.sort_unstable_by(f32::total_cmp);
    let q = |x| f64::from(quantile(&v, x));
    Percentiles {
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        p999: q(0.999),
        max: v.last().copied().map_or(0.0, f64::from),
        count: v.len() as u64,
    }
}

/// Waits of the started runs, ms.
#[derive(Debug, Default)]
pub(super) struct Waits {
    all: Vec<f32>,
    short: Vec<f32>,
    slowdown: Vec<f32>,
}

impl Waits {
    /// A run of `len` seconds waited `ms`.
    pub(super) fn record(&mut self, ms: f32, len: f64) {
        self.all.push(ms);
        if len < 1.0 {
            self.short.push(ms);
        } else {
            #[allow(clippy::cast_possible_truncation)]
            let s = ((f64::from(ms) / 1e3 + len) / len) as f32;
            self.slowdown.push(s);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.all.len()
    }

    pub(super) fn all(&self) -> Percentiles {
        percentiles(self.all.clone())
    }

    pub(super) fn short(&self) -> Percentiles {
        percentiles(self.short.clone())
    }

    pub(super) fn slowdown(&self) -> Percentiles {
        percentiles(self.slowdown.clone())
    }
}

/// One row of the timeline (fleet-wide figures).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the start of the reported time.
    pub t: f64,
    /// Runs arriving per second since the previous row.
    pub arrivals_per_s: f64,
    /// Slots running a run.
    pub busy_slots: f64,
    /// Runs waiting.
    pub queued: f64,
    /// Machines paid for: booting, ready or draining.
    pub machines: u32,
    /// Machines taking runs.
    pub ready: u32,
    /// Machines booting.
    pub booting: u32,
    /// Machines draining.
    pub draining: u32,
    /// The policy's latest target.
    pub target: u32,
    /// 99th percentile of the waits of the runs started since the previous row, ms.
    pub wait_p99_ms: f64,
}

/// The outcome of a simulation (fleet-wide figures, estimated from the simulated gateway).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// Machine-hours paid for (booting, ready and draining machines).
    pub machine_hours: f64,
    /// Machine-hours of a fleet of `peak_machines` for the whole time.
    pub peak_provisioned_machine_hours: f64,
    /// `machine_hours / peak_provisioned_machine_hours`.
    pub ratio: f64,
    /// Waits of all runs (from arrival to a slot), ms.
    pub wait_ms: Percentiles,
    /// Waits of runs under 1 s (compile included), ms.
    pub short_wait_ms: Percentiles,
    /// (wait + run time) / run time, for runs of 1 s or more.
    pub long_slowdown: Percentiles,
    /// Runs refused (429), fleet-wide; the clients retry after `Retry-After`.
    pub rejected: u64,
    /// The most machines at once.
    pub peak_machines: u32,
    /// The highest load of a timeline row, in machines: busy slots over cores per machine.
    pub peak_load_machines: f64,
    /// Runs in the reported time, fleet-wide.
    pub runs: u64,
    /// Runs simulated in full (one gateway's).
    pub simulated_runs: u64,
    /// The highest arrival rate of a timeline row, runs/s.
    pub peak_runs_per_s: f64,
    /// Share of the runs that arrived in the peak window.
    pub peak_share: f64,
    /// Mean time a run held its slot, s.
    pub mean_run_s: f64,
    /// Share of runs under 1 s.
    pub short_share: f64,
    /// Gateways (the fleet is the simulated one times this).
    pub gateways: u32,
    /// Cores of a machine.
    pub cores_per_machine: u32,
    /// Reported hours.
    pub hours: f64,
    /// The timeline.
    #[serde(skip)]
    pub timeline: Vec<Sample>,
}

impl Report {
    /// The timeline as CSV, one row per sample.
    pub fn csv(&self) -> String {
        let mut out = String::from(
            "time_s,hour,arrivals_per_s,busy_slots,load_machines,queued,machines,ready,booting,draining,target,wait_p99_ms\n",
        );
        for s in &self.timeline {
            let _ = writeln!(
                out,
                "{:.0},{:.3},{:.1},{:.0},{:.2},{:.0},{},{},{},{},{},{:.1}",
                s.t,
                s.t / 3600.0,
                s.arrivals_per_s,
                s.busy_slots,
                s.busy_slots / f64::from(self.cores_per_machine.max(1)),
                s.queued,
                s.machines,
                s.ready,
                s.booting,
                s.draining,
                s.target,
                s.wait_p99_ms
            );
        }
        out
    }
}
