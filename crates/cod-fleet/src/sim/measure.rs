//! What the simulated manager measures: the fleet's busy slots, arrival rate and mean run
//! time, made from one gateway's counts.
//!
//! The real manager reads fleet-wide figures: the sums over `gateways` independent
//! gateways, whose random swings partly cancel, so that the sum swings `√gateways` times
//! less, relative to its size, than one gateway's count. One gateway's count times
//! `gateways` would keep its swings whole: at the peak, busy slots that move by ±4% from
//! minute to minute (±15 machines) where the fleet's move by less than 1%. The policy scales
//! up at once and down only after its delay, so such swings would become machines.
//!
//! - **Busy slots**: the busy slots a gateway is expected to have are its share of the
//!   arrival rate times the mean run time (Little's law, with the two figures below); this
//!   gateway's deviation from that is its swing, and the others' are as large and
//!   independent of it.
//!   The fleet's figure is the expectation times `gateways` and the swing times
//!   `√gateways` ([`fleet_figure`]); the same model says when the fleet is full
//!   ([`share`]). The expectation follows a ramp with the arrival rate's lag.
//! - **Arrival rate and mean run time**: exponentially weighted averages, over a long time
//!   constant for the mean run time (its distribution does not change over the day, so this
//!   costs no lag to speak of; the mean of a heavy-tailed run time is noisy to begin with,
//!   ±13% over one gateway's 700 runs of a peak interval), a short one for the arrival rate
//!   (which does change; its lag is what the policy's trend rule corrects).

use std::time::Duration;

/// Time constant of the arrival rate's average.
pub(super) const ARRIVALS_TAU: Duration = Duration::from_secs(60);

/// Time constant of the mean run time's average: at the peak, some 40,000 of one
/// gateway's runs, more than the whole fleet finishes in a decision interval.
pub(super) const MEAN_RUN_TAU: Duration = Duration::from_secs(600);

/// The fleet's figure from one gateway's `own`, when a gateway is expected to have `mean`:
/// the expectation times `gateways`, the deviation from it times `√gateways` (never
/// negative).
pub(super) fn fleet_figure(own: f64, mean: f64, gateways: u32) -> f64 {
    let g = f64::from(gateways);
    g * mean + g.sqrt() * (own - mean)
}

/// The busy slots one gateway may have before a fleet of `slots` is full, with the fleet's
/// busy slots as [`fleet_figure`] makes them: the largest `own` with
/// `fleet_figure(own, mean, gateways) ≤ slots`.
pub(super) fn share(slots: f64, mean: f64, gateways: u32) -> u32 {
    let g = f64::from(gateways);
    let s = (mean + (slots - g * mean) / g.sqrt()).floor().max(0.0);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let s = s.min(f64::from(u32::MAX)) as u32;
    s
}

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
    fn the_fleet_swings_sqrt_gateways_times_less_than_one_gateway_times_gateways() {
        // A gateway at its average: the fleet is 32 of it.
        assert!((fleet_figure(700.0, 700.0, 32) - 22_400.0).abs() < 1e-9);
        // 26 slots above it (one standard deviation of a Poisson count of 700): the
        // fleet is 147 above its own (√32 × 26), not 832 (32 × 26).
        let up = fleet_figure(726.0, 700.0, 32) - 22_400.0;
        assert!((up - 26.0 * 32f64.sqrt()).abs() < 1e-9, "{up}");
        // Below it as much: as much lower.
        assert!((fleet_figure(674.0, 700.0, 32) - 22_400.0 + up).abs() < 1e-9);
        let idle = fleet_figure(0.0, 100.0, 32);
        assert!(
            (idle - (3200.0 - 100.0 * 32f64.sqrt())).abs() < 1e-9,
            "{idle}"
        );
        // One gateway is the fleet.
        assert!((fleet_figure(7.0, 3.0, 1) - 7.0).abs() < 1e-9);
    }

    #[test]
    fn the_share_fills_the_fleet_and_no_more() {
        for (slots, mean, g) in [
            (25_600.0, 700.0, 32),
            (25_600.0, 800.0, 32),
            (256.0, 3.0, 32),
            (144.0, 70.0, 2),
            (64.0, 64.0, 1),
        ] {
            let s = share(slots, mean, g);
            let at = fleet_figure(f64::from(s), mean, g);
            let above = fleet_figure(f64::from(s + 1), mean, g);
            assert!(at <= slots && above > slots, "{slots} {mean} {g}: {s}");
        }
        // At the peak, a fleet 14% above the load leaves this gateway 565 more slots
        // than it has runs; its equal part of every machine would leave it 100.
        assert_eq!(share(25_600.0, 700.0, 32), 700 + 565);
        // A full fleet leaves it its equal part; an overfull one, less; none, nothing.
        assert_eq!(share(22_400.0, 700.0, 32), 700);
        assert!(share(20_000.0, 700.0, 32) < 625);
        assert_eq!(share(0.0, 10.0, 32), 0);
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
