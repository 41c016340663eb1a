//! Small simulations (a few hours, a few thousand users, 8-core machines), so that they
//! run in a debug build in seconds; `cod simulate` runs the full day.

use std::time::Duration;

use super::*;
use crate::policy::PolicyConfig;

fn h(hours: f64) -> Duration {
    Duration::from_secs_f64(hours * 3600.0)
}

/// Three hours with a one-hour peak from 01:00, 2,000 users, 8-core machines.
fn small() -> SimConfig {
    SimConfig {
        duration: h(3.0),
        warmup_days: 0,
        load: LoadConfig {
            daily_users: 2_000,
            peak_start: h(1.0),
            peak_length: h(1.0),
            ramp: Duration::from_secs(20 * 60),
            think: Duration::from_secs(60),
            ..LoadConfig::default()
        },
        fleet: FleetConfig {
            gateways: 2,
            cores_per_machine: 8,
            boot: Duration::from_secs(120),
            boot_jitter: Duration::from_secs(30),
            initial_machines: 1,
        },
        policy: PolicyConfig {
            slots_per_worker: 8,
            min_workers: 1,
            max_workers: 200,
            ..PolicyConfig::default()
        },
        ..SimConfig::default()
    }
}

#[test]
fn machines_follow_the_load_up_and_down() {
    let mut ticks = Vec::new();
    let r = simulate_with_progress(&small(), &mut |p| ticks.push(p)).expect("simulates");
    // Progress comes about once per simulated minute, in order, and ends at the end.
    let total = h(3.0);
    assert!(ticks.iter().all(|p| p.total == total && p.done <= total));
    assert!(ticks.windows(2).all(|w| w[0].done < w[1].done), "in order");
    assert_eq!(ticks.last().map(|p| p.done), Some(total));
    assert!((170..=182).contains(&ticks.len()), "{}", ticks.len());
    assert!(r.simulated_runs > 5_000, "{}", r.simulated_runs);
    assert_eq!(r.runs, r.simulated_runs * 2);
    assert_eq!(
        r.wait_ms.count,
        r.short_wait_ms.count + r.long_slowdown.count
    );
    assert!(r.peak_machines >= 10, "{}", r.peak_machines);
    assert!(
        r.peak_load_machines > 0.5 * f64::from(r.peak_machines)
            && r.peak_load_machines <= f64::from(r.peak_machines),
        "{} machines for a load of {}",
        r.peak_machines,
        r.peak_load_machines
    );
    // Few machines before the peak and after it, many during it.
    let at = |hour: f64| {
        r.timeline
            .iter()
            .min_by(|a, b| {
                (a.t - hour * 3600.0)
                    .abs()
                    .total_cmp(&(b.t - hour * 3600.0).abs())
            })
            .expect("a timeline")
    };
    let (before, during, after) = (at(0.25), at(1.6), at(2.95));
    assert!(
        during.machines > 3 * before.machines,
        "{before:?} {during:?}"
    );
    assert!(
        after.machines * 3 < during.machines * 2,
        "{during:?} {after:?}"
    );
    // The load never runs far ahead of what is provisioned.
    for s in &r.timeline {
        assert!(s.busy_slots <= f64::from(s.machines * 8) + 1e-9, "{s:?}");
    }
    assert!(r.ratio > 0.0 && r.ratio < 0.8, "{}", r.ratio);
    assert!(
        (r.machine_hours - r.ratio * r.peak_provisioned_machine_hours).abs() < 1e-6,
        "ratio is machine-hours over peak-provisioned machine-hours"
    );
    assert!(r.short_wait_ms.p99 <= 100.0, "{:?}", r.short_wait_ms);
    assert_eq!(r.rejected, 0);
    assert!((0.4..0.6).contains(&r.short_share), "{}", r.short_share);
    // The CSV has a row per minute of the three hours, and the plot is drawn.
    let csv = r.csv();
    assert_eq!(csv.lines().count(), 1 + 181, "{}", &csv[..200]);
    assert!(csv.starts_with("time_s,hour,arrivals_per_s,busy_slots,load_machines,"));
    assert!(svg(&r).contains("<path"));
}

#[test]
fn the_same_seed_gives_the_same_day() {
    let mut c = small();
    c.duration = h(1.5);
    let a = simulate(&c).expect("simulates");
    let b = simulate(&c).expect("simulates");
    assert_eq!(a, b);
    c.seed = 2;
    let other = simulate(&c).expect("simulates");
    assert_ne!(a.simulated_runs, other.simulated_runs);
}

#[test]
fn the_real_ordering_keeps_short_runs_quick_when_machines_are_short() {
    // 18 machines, never more: the peak needs about 22. No bound on the wait, so that
    // every run is admitted and the order alone makes the difference.
    let starved = |policy: cod_sched::Policy| {
        let mut c = small();
        c.duration = h(2.5);
        c.fleet.initial_machines = 18;
        c.policy.min_workers = 18;
        c.policy.max_workers = 18;
        c.scheduler.policy = policy;
        c.scheduler.max_wait = Duration::ZERO;
        simulate(&c).expect("simulates")
    };
    let sjf = starved(cod_sched::Policy::Sjf);
    let fifo = starved(cod_sched::Policy::Fifo);
    assert_eq!(sjf.peak_machines, 18);
    assert!(
        fifo.short_wait_ms.p90 > 10_000.0,
        "FIFO makes short runs wait behind long ones: {:?}",
        fifo.short_wait_ms
    );
    assert!(
        sjf.short_wait_ms.p90 * 10.0 < fifo.short_wait_ms.p90,
        "shortest-expected-first: {:?} vs FIFO {:?}",
        sjf.short_wait_ms,
        fifo.short_wait_ms
    );
    // Aging keeps long runs within a small factor of their own time.
    assert!(sjf.long_slowdown.p99 < 5.0, "{:?}", sjf.long_slowdown);
    assert_eq!(
        (sjf.rejected, fifo.rejected),
        (0, 0),
        "no wait bound: all admitted"
    );
}

#[test]
fn the_previous_day_lets_the_fleet_grow_before_the_peak() {
    let run = |prescale: bool| {
        let mut c = small();
        c.load.daily_users = 1_000;
        c.duration = h(1.5);
        c.warmup_days = 1;
        c.policy.prescale.enabled = prescale;
        // The floor is the point of comparison: no square-root headroom above a trickle.
        c.policy.headroom_sigmas = 0.0;
        simulate(&c).expect("simulates")
    };
    let ahead = run(true);
    let reactive = run(false);
    // Before the peak's ramp begins (00:50), with no load yet, the learned curve has
    // already added machines; the reactive policy is still at its floor.
    let machines_at = |r: &Report, hour: f64| {
        r.timeline
            .iter()
            .find(|s| s.t >= hour * 3600.0)
            .map_or(0, |s| s.machines)
    };
    let (a, r) = (machines_at(&ahead, 0.78), machines_at(&reactive, 0.78));
    assert_eq!(r, 1, "the reactive fleet is at its floor");
    assert!(a >= r + 3, "{a} vs {r}");
}
