//! The simulated users: when sittings start over the day, and how long their runs take.
//!
//! **The day.** Activity is a mix of an everyday curve (24 hourly weights, interpolated)
//! and a peak (a window of `peak_length` from `peak_start`, with raised-cosine shoulders of
//! `ramp` centred on its edges), mixed so that `peak_share` of the runs fall in the window.
//! Sittings start so that their runs (spread over the sitting, a think time apart) follow
//! that curve: a sitting starts half a sitting ahead of the activity it contributes to.
//!
//! **Run times.** Log-normal with the configured median, its spread solved so that the
//! mean of the runs, cut at the limit (`max`: longer programs are killed there), is the
//! configured mean. A sitting draws its program's length once; its runs vary around it by
//! `jitter`, so that a person's history predicts their next run, as the scheduler assumes.

use std::time::Duration;

use super::config::{LoadConfig, RunConfig, SimError};
use super::rng::{Rng, normal_cdf};

const DAY: f64 = 86_400.0;
const MINUTES: usize = 1440;

/// Sittings per second over the day, fleet-wide.
#[derive(Clone, Debug)]
pub struct ArrivalCurve {
    /// Runs per second at each minute of the day (the target curve).
    runs: Vec<f64>,
    /// Sittings per second at each minute of the day.
    sittings: Vec<f64>,
    max_sittings: f64,
    window: (f64, f64),
}

/// The peak's shape: 1 inside the window, 0 outside, raised-cosine shoulders of `ramp`
/// centred on the edges (so that it integrates to the window's length).
fn bump(t: f64, start: f64, end: f64, ramp: f64) -> f64 {
    let half = ramp / 2.0;
    if ramp <= 0.0 {
        return if (start..end).contains(&t) { 1.0 } else { 0.0 };
    }
    if t < start - half || t >= end + half {
        0.0
    } else if t < start + half {
        0.5 * (1.0 - (std::f64::consts::PI * (t - (start - half)) / ramp).cos())
    } else if t < end - half {
        1.0
    } else {
        0.5 * (1.0 + (std::f64::consts::PI * (t - (end - half)) / ramp).cos())
    }
}

/// The everyday curve at `t` seconds (hourly weights at each hour's start, interpolated).
fn everyday(t: f64, hourly: &[f64]) -> f64 {
    let h = (t / 3600.0).rem_euclid(24.0);
    // Truncation to the hour below is intended.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let i = h.floor() as usize % 24;
    let f = h - h.floor();
    hourly[i] * (1.0 - f) + hourly[(i + 1) % 24] * f
}

impl ArrivalCurve {
    /// The curve for `load`, with `mean_runs` runs per sitting and `sitting` the mean
    /// length of a sitting.
    pub fn new(load: &LoadConfig, mean_runs: f64, sitting: Duration) -> ArrivalCurve {
        let start = load.peak_start.as_secs_f64();
        let end = start + load.peak_length.as_secs_f64();
        let ramp = load.ramp.as_secs_f64();
        // Minute midpoints; the window may wrap past midnight.
        let at = |m: usize| {
            #[allow(clippy::cast_precision_loss)]
            let t = (m as f64 + 0.5) * 60.0;
            t
        };
        let in_window = |t: f64| (start..end).contains(&t) || (start..end).contains(&(t + DAY));
        let peak = |t: f64| bump(t, start, end, ramp) + bump(t + DAY, start, end, ramp);
        let base: Vec<f64> = (0..MINUTES)
            .map(|m| everyday(at(m), &load.hourly))
            .collect();
        let bumps: Vec<f64> = (0..MINUTES).map(|m| peak(at(m))).collect();
        let share = |v: &[f64]| {
            let total: f64 = v.iter().sum();
            let inside: f64 = (0..MINUTES)
                .filter(|&m| in_window(at(m)))
                .map(|m| v[m])
                .sum();
            (inside / total, total)
        };
        let (b_in, b_total) = share(&base);
        let (p_in, p_total) = share(&bumps);
        // (1 - a) b_in + a p_in = peak_share.
        let a = ((load.peak_share - b_in) / (p_in - b_in)).clamp(0.0, 1.0);
        #[allow(clippy::cast_precision_loss)]
        let runs_per_day = load.daily_users as f64 * load.sittings_per_user * mean_runs;
        let runs: Vec<f64> = (0..MINUTES)
            .map(|m| {
                let shape = (1.0 - a) * base[m] / b_total + a * bumps[m] / p_total;
                runs_per_day * shape / 60.0
            })
            .collect();
        // A sitting started at t runs until t + sitting: it starts half a sitting ahead.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let lead = (sitting.as_secs_f64() / 2.0 / 60.0).round() as usize;
        let sittings: Vec<f64> = (0..MINUTES)
            .map(|m| runs[(m + lead) % MINUTES] / mean_runs)
            .collect();
        let max_sittings = sittings.iter().copied().fold(0.0, f64::max);
        ArrivalCurve {
            runs,
            sittings,
            max_sittings,
            window: (start, end),
        }
    }

    fn lookup(table: &[f64], t: Duration) -> f64 {
        let s = t.as_secs_f64().rem_euclid(DAY) / 60.0 - 0.5;
        let s = s.rem_euclid(1440.0);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let i = s.floor() as usize % MINUTES;
        let f = s - s.floor();
        table[i] * (1.0 - f) + table[(i + 1) % MINUTES] * f
    }

    /// Sittings starting per second at `t`, fleet-wide.
    pub fn sittings_per_second(&self, t: Duration) -> f64 {
        ArrivalCurve::lookup(&self.sittings, t)
    }

    /// The most sittings per second at any time of the day.
    pub fn max_sittings_per_second(&self) -> f64 {
        self.max_sittings
    }

    /// The runs per second the curve aims at, at `t`.
    pub fn runs_per_second(&self, t: Duration) -> f64 {
        ArrivalCurve::lookup(&self.runs, t)
    }

    /// Whether `t` is in the peak window.
    pub fn in_peak(&self, t: Duration) -> bool {
        let s = t.as_secs_f64().rem_euclid(DAY);
        (self.window.0..self.window.1).contains(&s)
            || (self.window.0..self.window.1).contains(&(s + DAY))
    }
}

/// How long runs take.
#[derive(Clone, Debug)]
pub struct RunLengths {
    mu: f64,
    sigma: f64,
    jitter: f64,
    max: f64,
}

/// The mean of a log-normal (log-mean `m`, log-sd `s`) cut at `c`.
fn capped_mean(m: f64, s: f64, c: f64) -> f64 {
    let lc = c.ln();
    (m + s * s / 2.0).exp() * normal_cdf((lc - m - s * s) / s)
        + c * (1.0 - normal_cdf((lc - m) / s))
}

impl RunLengths {
    /// Run lengths as `runs` says: the spread that gives the mean is solved for.
    pub fn new(runs: &RunConfig) -> Result<RunLengths, SimError> {
        let m = runs.median.as_secs_f64().ln();
        let c = runs.max.as_secs_f64();
        let target = runs.mean.as_secs_f64();
        let j = runs.jitter;
        let (mut lo, mut hi) = (j.max(1e-3), 8.0);
        if capped_mean(m, hi, c) < target {
            return Err(SimError::Invalid {
                key: "runs.mean",
                why: "too high for this median and max",
            });
        }
        if capped_mean(m, lo, c) > target {
            return Err(SimError::Invalid {
                key: "runs.jitter",
                why: "too large for this median and mean",
            });
        }
        for _ in 0..100 {
            let mid = (lo + hi) / 2.0;
            if capped_mean(m, mid, c) < target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let total = (lo + hi) / 2.0;
        Ok(RunLengths {
            // The runs' log-mean is the median's; the sitting's program sits above it by
            // half the jitter's variance, which each run takes back.
            mu: m + j * j / 2.0,
            sigma: (total * total - j * j).max(0.0).sqrt(),
            jitter: j,
            max: c,
        })
    }

    /// A sitting's program: its typical run time, seconds.
    pub fn program(&self, rng: &mut Rng) -> f64 {
        (self.mu + self.sigma * rng.normal()).exp()
    }

    /// One run of `program`, seconds, cut at the limit.
    pub fn run(&self, program: f64, rng: &mut Rng) -> f64 {
        let x = program * (self.jitter * rng.normal() - self.jitter * self.jitter / 2.0).exp();
        x.clamp(1e-3, self.max)
    }

    /// The mean run time this distribution has (cut at the limit).
    pub fn mean(&self) -> f64 {
        let s = (self.sigma * self.sigma + self.jitter * self.jitter).sqrt();
        capped_mean(self.mu - self.jitter * self.jitter / 2.0, s, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curve_puts_the_peak_share_in_the_window_and_integrates_to_the_day() {
        let load = LoadConfig::default();
        let curve = ArrivalCurve::new(&load, 15.0, Duration::from_secs(2700));
        let (mut total, mut inside) = (0.0, 0.0);
        for m in 0..1440 {
            let t = Duration::from_secs(m * 60 + 30);
            let r = curve.runs_per_second(t) * 60.0;
            total += r;
            if curve.in_peak(t) {
                inside += r;
            }
        }
        let expected = 1e6 * 2.67 * 15.0;
        assert!(
            (total / expected - 1.0).abs() < 1e-3,
            "{total} vs {expected}"
        );
        assert!((inside / total - 0.8).abs() < 1e-3, "{}", inside / total);
        // The peak is about 2,220 runs/s; the quietest hour is far below it.
        let peak = (0..1440)
            .map(|m| curve.runs_per_second(Duration::from_secs(m * 60)))
            .fold(0.0, f64::max);
        assert!((2000.0..2600.0).contains(&peak), "{peak}");
        let night = curve.runs_per_second(Duration::from_secs(4 * 3600));
        assert!(night < peak / 30.0, "{night}");
        // Sittings lead the runs by half a sitting.
        let s = curve.sittings_per_second(Duration::from_secs(14 * 3600 - 1380));
        let r = curve.runs_per_second(Duration::from_secs(14 * 3600)) / 15.0;
        assert!((s / r - 1.0).abs() < 0.01, "{s} vs {r}");
        assert!(curve.max_sittings_per_second() >= s);
    }

    #[test]
    fn the_shoulders_are_smooth_and_symmetric() {
        assert_eq!(bump(0.0, 100.0, 200.0, 20.0), 0.0);
        assert!((bump(100.0, 100.0, 200.0, 20.0) - 0.5).abs() < 1e-12);
        assert_eq!(bump(150.0, 100.0, 200.0, 20.0), 1.0);
        assert!((bump(200.0, 100.0, 200.0, 20.0) - 0.5).abs() < 1e-12);
        assert_eq!(bump(211.0, 100.0, 200.0, 20.0), 0.0);
        let area: f64 = (0..3000)
            .map(|i| bump(f64::from(i) / 10.0, 100.0, 200.0, 20.0) / 10.0)
            .sum();
        assert!((area - 100.0).abs() < 0.01, "{area}");
    }

    #[test]
    fn run_lengths_have_the_configured_median_and_mean() {
        let cfg = RunConfig::default();
        let lengths = RunLengths::new(&cfg).expect("solvable");
        assert!((lengths.mean() - 10.0).abs() < 1e-3, "{}", lengths.mean());
        let mut rng = Rng::new(11);
        let mut v: Vec<f64> = (0..400_000)
            .map(|_| {
                let p = lengths.program(&mut rng);
                lengths.run(p, &mut rng)
            })
            .collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        v.sort_by(f64::total_cmp);
        let median = v[v.len() / 2];
        assert!((median - 1.0).abs() < 0.03, "median {median}");
        // A heavy tail converges slowly: within 5%.
        assert!((mean - 10.0).abs() < 0.5, "mean {mean}");
        assert_eq!(
            *v.last().expect("runs"),
            300.0,
            "the longest are cut at the limit"
        );
        let short = v.iter().filter(|&&x| x < 1.0).count() as f64 / v.len() as f64;
        assert!((short - 0.5).abs() < 0.01);
    }

    #[test]
    fn impossible_means_are_refused() {
        let cfg = RunConfig {
            mean: Duration::from_secs(299),
            ..RunConfig::default()
        };
        assert!(matches!(
            RunLengths::new(&cfg),
            Err(SimError::Invalid {
                key: "runs.mean",
                ..
            })
        ));
    }
}
