//! What the simulated manager measures: the fleet's arrival rate and mean run time, made
//! from one gateway's counts.
//!
//! The real manager reads fleet-wide figures: at the peak some 22,000 runs per decision
//! interval. The simulation runs one gateway of `gateways` in full and multiplies its
//! counts, so a figure made from one interval's counts is `√gateways` times as noisy as the
//! real one (and the mean of a heavy-tailed run time is noisy to begin with: ±13% over one
//! gateway's 700 runs of a peak interval). The policy's scale-down rule keeps the highest
//! recommendation of its delay, so noise in its inputs becomes machines. Each figure is
//! therefore an exponentially weighted average: over a long time constant for the mean run
//! time (its distribution does not change over the day, so this costs no lag to speak of),
//! a short one for the arrival rate (which does; its lag is what the policy's trend rule
//! corrects). The busy slots are passed on as they are: they are the load itself, and an
//! average of them lags the ramp into the peak.

use std::time::Duration;

/// Time constant of the arrival rate's average.
pub(super) const ARRIVALS_TAU: Duration = Duration::from_secs(60);

/// Time constant of the mean run time's average: at the peak, some 40,000 of one
/// gateway's runs, more than the whole fleet finishes in a decision interval.
pub(super) const MEAN_RUN_TAU: Duration = Duration::from_secs(600);

/// An exponentially weighted ratio `Σ amount / Σ weight`, both decaying with `tau`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ewma {
    tau: f64,
    amount: f64,
    weight: f64,
}

impl Ewma {
    /// An average over the time constant `tau` (not zero), with nothing in it yet.
    pub(super) fn new(tau: Duration) -> Ewma {
        Ewma {
            tau: tau.as_secs_f64().max(f64::MIN_POSITIVE),
            amount: 0.0,
            weight: 0.0,
        }
    }

    /// Adds `amount` over `weight` (arrivals over seconds, or run time over runs), after
    /// `elapsed` since the previous addition.
    pub(super) fn add(&mut self, elapsed: Duration, amount: f64, weight: f64) {
        let keep = (-elapsed.as_secs_f64() / self.tau).exp();
        self.amount = self.amount * keep + amount;
        self.weight = self.weight * keep + weight;
    }

    /// The average; `None` before any weight.
    pub(super) fn value(&self) -> Option<f64> {
        (self.weight > 0.0).then(|| self.amount / self.weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_input_is_its_own_average_from_the_first_sample() {
        let mut e = Ewma::new(Duration::from_secs(60));
        assert_eq!(e.value(), None);
        for _ in 0..50 {
            e.add(Duration::from_secs(10), 700.0, 10.0);
            assert!((e.value().expect("a value") - 70.0).abs() < 1e-9);
        }
    }

    #[test]
    fn a_step_is_followed_with_the_time_constant() {
        let tau = Duration::from_secs(60);
        let mut e = Ewma::new(tau);
        for _ in 0..1000 {
            e.add(Duration::from_secs(1), 10.0, 1.0);
        }
        // After a step from 10 to 20, one time constant later the average has moved
        // about 1 - 1/e of the way.
        for _ in 0..60 {
            e.add(Duration::from_secs(1), 20.0, 1.0);
        }
        let v = e.value().expect("a value");
        assert!((v - (20.0 - 10.0 / std::f64::consts::E)).abs() < 0.2, "{v}");
    }

    #[test]
    fn weights_count_not_only_samples() {
        // Two runs of 1 s and one interval with a single run of 31 s: 11 s on average.
        let mut e = Ewma::new(Duration::from_secs(3600));
        e.add(Duration::ZERO, 2.0, 2.0);
        e.add(Duration::ZERO, 31.0, 1.0);
        assert!((e.value().expect("a value") - 11.0).abs() < 1e-9);
    }
}
