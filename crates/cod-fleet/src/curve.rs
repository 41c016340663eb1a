//! The load of previous days by time of day, so that the fleet can grow before the daily
//! peak instead of after it.
//!
//! Each day is cut into buckets (5 minutes by default); the curve keeps, per bucket, the
//! highest demand seen in it today and an exponentially weighted mean of the previous days'
//! highs. The policy asks it for the highest learned demand between now and the time a
//! worker it starts now would be ready. Days are counted from the epoch of the policy's
//! clock (UTC midnight for the real manager, the start for the simulation).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One day.
pub const DAY: Duration = Duration::from_secs(86_400);

/// How pre-scaling behaves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrescaleConfig {
    /// Whether to scale ahead of the previous days' curve at all.
    pub enabled: bool,
    /// Width of a bucket of the day (divides a day).
    #[serde(with = "humantime_serde")]
    pub bucket: Duration,
    /// How far beyond a worker's start-up time to look ahead.
    #[serde(with = "humantime_serde")]
    pub lookahead: Duration,
    /// Weight of the newest day in the learned curve (0 < weight ≤ 1).
    pub weight: f64,
    /// Fraction of the learned demand to provision ahead (0 < factor ≤ 2); the reactive
    /// rules add the rest if the day turns out busier.
    pub factor: f64,
}

impl Default for PrescaleConfig {
    fn default() -> PrescaleConfig {
        PrescaleConfig {
            enabled: false,
            bucket: Duration::from_secs(300),
            lookahead: Duration::from_secs(600),
            weight: 0.5,
            factor: 1.0,
        }
    }
}

/// Highest demand (slots) per bucket of the day: today's, and learned from previous days.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DayCurve {
    bucket_secs: u64,
    weight: f64,
    learned: Vec<Option<f64>>,
    today: Vec<Option<f64>>,
    day: Option<u64>,
    days: u32,
}

impl DayCurve {
    /// An empty curve of buckets `bucket` wide (at least a second, at most a day), the
    /// newest day weighing `weight` in the learned mean.
    pub fn new(bucket: Duration, weight: f64) -> DayCurve {
        let bucket_secs = bucket.as_secs().clamp(1, DAY.as_secs());
        let n = usize::try_from(DAY.as_secs().div_ceil(bucket_secs)).expect("at most 86400");
        DayCurve {
            bucket_secs,
            weight: weight.clamp(f64::MIN_POSITIVE, 1.0),
            learned: vec![None; n],
            today: vec![None; n],
            day: None,
            days: 0,
        }
    }

    fn index(&self, at: Duration) -> usize {
        let secs = at.as_secs() % DAY.as_secs();
        usize::try_from(secs / self.bucket_secs).expect("below the bucket count")
    }

    /// Records that `demand` slots were needed at `now`. Crossing into a new day folds
    /// the day that ended into the learned curve.
    pub fn record(&mut self, now: Duration, demand: f64) {
        let day = now.as_secs() / DAY.as_secs();
        match self.day {
            None => self.day = Some(day),
            Some(d) if d < day => {
                self.fold();
                self.day = Some(day);
            }
            Some(_) => {}
        }
        let i = self.index(now);
        let demand = demand.max(0.0);
        self.today[i] = Some(self.today[i].map_or(demand, |v| v.max(demand)));
    }

    fn fold(&mut self) {
        let w = self.weight;
        for (l, t) in self.learned.iter_mut().zip(self.today.iter_mut()) {
            if let Some(t) = t.take() {
                *l = Some(l.map_or(t, |l| l + (t - l) * w));
            }
        }
        self.days += 1;
    }

    /// Complete days learned so far.
    pub fn days(&self) -> u32 {
        self.days
    }

    /// This curve (one kept by an earlier manager) if it cuts the day into `bucket`s as
    /// the configuration now does, its next days weighing `weight`; `None` if its buckets
    /// differ (the days it learned cannot be mapped onto them).
    pub fn reuse(mut self, bucket: Duration, weight: f64) -> Option<DayCurve> {
        let fresh = DayCurve::new(bucket, weight);
        if self.bucket_secs != fresh.bucket_secs
            || self.learned.len() != fresh.learned.len()
            || self.today.len() != fresh.today.len()
        {
            return None;
        }
        self.weight = fresh.weight;
        Some(self)
    }

    /// The highest learned demand from `now` to `now + horizon` (wrapping past midnight);
    /// `None` before a whole day has been learned or when nothing was seen then.
    pub fn ahead(&self, now: Duration, horizon: Duration) -> Option<f64> {
        if self.days == 0 {
            return None;
        }
        let n = self.learned.len();
        let first = self.index(now);
        let span = usize::try_from(horizon.as_secs() / self.bucket_secs)
            .unwrap_or(n)
            .min(n - 1);
        (0..=span)
            .filter_map(|k| self.learned[(first + k) % n])
            .reduce(f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(hours: f64) -> Duration {
        Duration::from_secs_f64(hours * 3600.0)
    }

    #[test]
    fn a_kept_curve_is_reused_only_with_the_same_buckets() {
        let mut c = DayCurve::new(Duration::from_secs(300), 0.5);
        c.record(h(1.0), 100.0);
        c.record(h(25.0), 10.0);
        let json = serde_json::to_string(&c).expect("serializes");
        let back: DayCurve = serde_json::from_str(&json).expect("parses");
        let again = back
            .clone()
            .reuse(Duration::from_secs(300), 0.25)
            .expect("same buckets");
        assert_eq!(again.days(), 1);
        assert_eq!(again.ahead(h(24.9), h(0.2)), Some(100.0));
        assert!(back.reuse(Duration::from_secs(600), 0.5).is_none());
    }

    #[test]
    fn nothing_is_known_before_a_whole_day() {
        let mut c = DayCurve::new(Duration::from_secs(300), 0.5);
        c.record(h(12.0), 100.0);
        assert_eq!(c.days(), 0);
        assert_eq!(c.ahead(h(11.9), h(1.0)), None);
    }

    #[test]
    fn the_next_day_sees_the_peak_ahead() {
        let mut c = DayCurve::new(Duration::from_secs(300), 0.5);
        for m in 0..(24 * 60) {
            let t = Duration::from_secs(m * 60);
            let load = if (12 * 60..14 * 60).contains(&m) {
                1000.0
            } else {
                10.0
            };
            c.record(t, load);
        }
        c.record(h(24.0), 10.0);
        assert_eq!(c.days(), 1);
        // At 11:40 on day 2, looking 30 minutes ahead, the noon peak is in sight.
        assert_eq!(c.ahead(h(24.0 + 11.0 + 40.0 / 60.0), h(0.5)), Some(1000.0));
        // At 10:00, it is not.
        assert_eq!(c.ahead(h(24.0 + 10.0), h(0.5)), Some(10.0));
        // Wrapping past midnight works.
        assert_eq!(c.ahead(h(24.0 + 23.9), h(12.2)), Some(1000.0));
    }

    #[test]
    fn days_are_averaged_with_the_newest_weighing_most() {
        let mut c = DayCurve::new(Duration::from_secs(3600), 0.5);
        c.record(h(1.0), 100.0);
        c.record(h(25.0), 200.0);
        c.record(h(49.0), 0.0);
        assert_eq!(c.days(), 2);
        assert_eq!(c.ahead(h(49.0), Duration::ZERO), Some(150.0));
        // A bucket keeps the day's highest value.
        c.record(h(49.2), 80.0);
        c.record(h(49.4), 20.0);
        c.record(h(73.0), 0.0);
        assert_eq!(c.ahead(h(73.0), Duration::ZERO), Some(115.0));
    }
}
