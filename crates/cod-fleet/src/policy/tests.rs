//! The policy's rules, one by one, and invariants over random load.
// Expected values are computed with small floats and counts.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use proptest::prelude::*;

use super::*;

fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

/// `ready` ready workers (64 slots, `busy` each) then `starting` starting ones.
fn fleet(ready: u32, starting: u32, busy: u32) -> Vec<WorkerView> {
    let mut v: Vec<WorkerView> = (0..ready)
        .map(|i| WorkerView::new(format!("w{i:04}"), WorkerState::Ready).with_slots(64, busy))
        .collect();
    v.extend(
        (ready..ready + starting)
            .map(|i| WorkerView::new(format!("w{i:04}"), WorkerState::Starting)),
    );
    v
}

/// A load of `arrival` runs/s of `mean_run` each on `workers`.
fn obs(now: Duration, arrival: f64, mean_run: Duration, workers: Vec<WorkerView>) -> Observation {
    let busy = workers.iter().map(|w| w.busy).sum();
    let total = workers
        .iter()
        .filter(|w| w.state == WorkerState::Ready)
        .map(|w| w.slots)
        .sum();
    Observation {
        now,
        arrival_rate: arrival,
        mean_run,
        busy_slots: busy,
        total_slots: total,
        workers,
        ..Observation::default()
    }
}

fn policy() -> Autoscaler {
    Autoscaler::new(PolicyConfig::default()).expect("the defaults are valid")
}

/// Applies a decision to a simulated fleet: starts are ready at once, drains gone at once.
fn apply(workers: &mut Vec<WorkerView>, d: &Decision, next_id: &mut u32) {
    workers.retain(|w| !d.drain.contains(&w.id));
    for _ in 0..d.start {
        workers
            .push(WorkerView::new(format!("n{next_id:06}"), WorkerState::Ready).with_slots(64, 0));
        *next_id += 1;
    }
}

#[test]
fn bad_configurations_are_refused() {
    let bad = |f: fn(&mut PolicyConfig)| {
        let mut c = PolicyConfig::default();
        f(&mut c);
        Autoscaler::new(c).expect_err("invalid")
    };
    assert_eq!(bad(|c| c.slots_per_worker = 0), PolicyError::NoSlots);
    assert!(matches!(
        bad(|c| c.min_workers = 2000),
        PolicyError::FloorAboveCeiling {
            min: 2000,
            max: 1000
        }
    ));
    assert!(matches!(
        bad(|c| c.target_utilization = 1.5),
        PolicyError::OutOfRange {
            key: "target_utilization",
            ..
        }
    ));
    assert!(matches!(
        bad(|c| c.scale_down_step = 0.0),
        PolicyError::OutOfRange {
            key: "scale_down_step",
            ..
        }
    ));
    assert!(matches!(
        bad(|c| c.prescale.bucket = s(7)),
        PolicyError::OutOfRange { .. }
    ));
    assert_eq!(
        bad(|c| c.startup = Duration::ZERO),
        PolicyError::ZeroDuration("startup")
    );
}

#[test]
fn configuration_reads_from_toml_and_rejects_unknown_keys() {
    let c: PolicyConfig = toml::from_str(
        "min_workers = 3\nstartup = \"4m\"\n[prescale]\nenabled = true\nlookahead = \"15m\"\n",
    )
    .expect("parses");
    assert_eq!(c.min_workers, 3);
    assert_eq!(c.startup, s(240));
    assert!(c.prescale.enabled);
    assert_eq!(c.prescale.lookahead, s(900));
    assert_eq!(c.max_workers, PolicyConfig::default().max_workers);
    let err = toml::from_str::<PolicyConfig>("min_worker = 3\n").expect_err("unknown key");
    assert!(err.to_string().contains("min_worker"), "{err}");
}

#[test]
fn steady_load_wants_its_demand_over_the_target_utilization() {
    let mut p = policy();
    // 100 runs/s of 10 s: 1000 slots; at 90%, 1111.1 slots: 17.4 workers of 64.
    let d = p.decide(&obs(s(0), 100.0, s(10), fleet(2, 0, 0)));
    assert_eq!(d.demand_slots, 1000.0);
    assert_eq!(d.wanted, 18);
    assert_eq!(d.target, 18);
    assert_eq!(d.start, 16);
    assert_eq!(d.reason, Reason::Demand);
    assert!(d.drain.is_empty());
    assert!(d.acts());
}

#[test]
fn a_small_load_gets_more_headroom_than_a_large_one() {
    let wanted = |sigmas: f64, arrival: f64| {
        let mut p = Autoscaler::new(PolicyConfig {
            headroom_sigmas: sigmas,
            ..PolicyConfig::default()
        })
        .expect("valid");
        p.decide(&obs(s(0), arrival, s(10), fleet(1, 0, 0))).wanted
    };
    // 100 busy slots: 100 + 3 x 10 = 130 slots (3 workers of 64), where 90% alone asks
    // 112 (2 workers).
    assert_eq!(wanted(3.0, 10.0), 3);
    assert_eq!(wanted(0.0, 10.0), 2);
    // 10,000 busy slots: 10,300 with the square root, fewer than 90% asks (11,112): the
    // target utilization decides, 174 workers either way.
    assert_eq!(wanted(3.0, 1000.0), 174);
    assert_eq!(wanted(0.0, 1000.0), 174);
    // A headroom out of its range is refused, named.
    let err = Autoscaler::new(PolicyConfig {
        headroom_sigmas: -1.0,
        ..PolicyConfig::default()
    })
    .expect_err("negative");
    assert!(err.to_string().contains("headroom_sigmas"), "{err}");
}

#[test]
fn busy_slots_count_when_the_arrival_rate_says_less() {
    let mut p = policy();
    let d = p.decide(&obs(s(0), 0.0, s(10), fleet(10, 0, 64)));
    assert_eq!(d.demand_slots, 640.0);
    assert_eq!(d.wanted, 12, "640 / 0.9 / 64 = 11.1");
}

#[test]
fn up_at_once_down_after_the_delay_one_step_per_interval() {
    let mut p = policy();
    let mut workers = fleet(2, 0, 0);
    let mut next = 0;
    let d = p.decide(&obs(s(0), 100.0, s(10), workers.clone()));
    apply(&mut workers, &d, &mut next);
    assert_eq!(workers.len(), 18);
    let mut downs = Vec::new();
    for t in (10..=3600).step_by(10) {
        let d = p.decide(&obs(s(t), 0.0, s(10), workers.clone()));
        assert_eq!(d.wanted, 1, "at {t}");
        if t <= 600 {
            assert_eq!((d.target, d.held), (18, Some(Held::Delay)), "at {t}");
        }
        if !d.drain.is_empty() {
            assert_eq!(d.start, 0);
            assert!(d.drain.len() <= (workers.len() / 10).max(1));
            downs.push((t, d.drain.len()));
        }
        apply(&mut workers, &d, &mut next);
        assert!(!workers.is_empty(), "the floor holds at {t}");
    }
    assert_eq!(
        downs.first(),
        Some(&(610, 1)),
        "the first step comes right after the delay"
    );
    for pair in downs.windows(2) {
        assert!(pair[1].0 - pair[0].0 >= 60, "{downs:?}");
    }
    assert_eq!(
        workers.len(),
        1,
        "down to the floor within the hour: {downs:?}"
    );
}

#[test]
fn a_new_manager_keeps_the_fleet_it_found_for_the_delay() {
    let mut p = policy();
    let d = p.decide(&obs(s(0), 0.0, s(10), fleet(10, 0, 0)));
    assert_eq!((d.wanted, d.target, d.held), (1, 10, Some(Held::Delay)));
    let d = p.decide(&obs(s(599), 0.0, s(10), fleet(10, 0, 0)));
    assert_eq!(d.target, 10);
    let d = p.decide(&obs(s(601), 0.0, s(10), fleet(10, 0, 0)));
    assert_eq!((d.target, d.drain.len()), (9, 1));
}

#[test]
fn a_short_dip_does_not_shrink_the_fleet() {
    let mut p = policy();
    let w = fleet(18, 0, 50);
    p.decide(&obs(s(0), 100.0, s(10), w.clone()));
    for t in (10..300).step_by(10) {
        let d = p.decide(&obs(s(t), 5.0, s(10), w.clone()));
        assert!(d.drain.is_empty());
    }
    let d = p.decide(&obs(s(300), 100.0, s(10), w));
    assert_eq!(d.target, 18);
}

#[test]
fn backlog_is_cleared_within_the_horizon() {
    let mut p = policy();
    let mut o = obs(s(0), 10.0, s(10), fleet(4, 0, 64));
    // 6000 CPU-seconds waiting over a 60 s horizon: 100 more slots.
    o.queued_cpu = Some(s(6000));
    o.runtimes.insert(
        "python".into(),
        RuntimeLoad {
            queued: 600,
            oldest_wait: Duration::from_millis(500),
            busy: 256,
        },
    );
    let d = p.decide(&o);
    assert_eq!(d.backlog_slots, 100.0);
    assert_eq!(d.reason, Reason::Backlog);
    // (256 busy + 100) / 0.9 / 64 = 6.2
    assert_eq!(d.wanted, 7);
    // Without the scheduler's estimate, queued × mean run.
    let mut p = policy();
    o.queued_cpu = None;
    let d = p.decide(&o);
    assert_eq!(d.backlog_slots, 100.0);
}

#[test]
fn rising_demand_is_extrapolated_over_the_startup_time() {
    let mut p = policy();
    let mut last = None;
    // Demand rises by one slot per second: 100 → 400 slots over 300 s.
    for t in (0..=300).step_by(10) {
        let arrival = (100.0 + t as f64) / 10.0;
        last = Some(p.decide(&obs(s(t), arrival, s(10), fleet(10, 0, 0))));
    }
    let d = last.expect("decided");
    assert!((d.demand_slots - 400.0).abs() < 1e-9);
    // 180 s of start-up ahead at one slot per second.
    assert!(
        (d.forecast_slots - 580.0).abs() < 1e-6,
        "{}",
        d.forecast_slots
    );
    assert_eq!(d.reason, Reason::Trend);
    assert_eq!(d.wanted, (580.0f64 / 0.9 / 64.0).ceil() as u32);
    // A measured start-up time replaces the configured one.
    let mut o = obs(s(310), 41.0, s(10), fleet(10, 0, 0));
    o.startup = Some(s(600));
    let d = p.decide(&o);
    assert!(d.forecast_slots > 410.0 + 500.0, "{}", d.forecast_slots);
}

#[test]
fn falling_demand_is_not_extrapolated() {
    let mut p = policy();
    let mut d = None;
    for t in (0..=300).step_by(10) {
        let arrival = (400.0 - t as f64) / 10.0;
        d = Some(p.decide(&obs(s(t), arrival, s(10), fleet(10, 0, 0))));
    }
    let d = d.expect("decided");
    assert_eq!(d.forecast_slots, d.demand_slots);
}

#[test]
fn a_long_wait_adds_a_worker_when_nothing_else_would() {
    let mut p = policy();
    let mut o = obs(s(0), 0.1, s(1), fleet(3, 0, 1));
    o.runtimes.insert(
        "java".into(),
        RuntimeLoad {
            queued: 2,
            oldest_wait: s(5),
            busy: 3,
        },
    );
    let d = p.decide(&o);
    assert_eq!((d.wanted, d.reason, d.start), (4, Reason::Urgent, 1));
    // A wait below the threshold does not.
    let mut p = policy();
    o.runtimes.get_mut("java").expect("inserted").oldest_wait = s(1);
    let d = p.decide(&o);
    assert_ne!(d.reason, Reason::Urgent);
    assert_eq!(d.start, 0);
}

#[test]
fn floor_and_ceiling_bound_the_fleet() {
    let mut p = Autoscaler::new(PolicyConfig {
        min_workers: 2,
        max_workers: 5,
        ..PolicyConfig::default()
    })
    .expect("valid");
    let d = p.decide(&obs(s(0), 0.0, s(10), Vec::new()));
    assert_eq!((d.target, d.reason, d.start), (2, Reason::Floor, 2));
    let d = p.decide(&obs(s(10), 10_000.0, s(10), fleet(2, 0, 64)));
    assert_eq!((d.target, d.reason, d.start), (5, Reason::Ceiling, 3));
}

#[test]
fn draining_takes_starting_workers_then_the_least_busy() {
    let workers = vec![
        WorkerView::new("a", WorkerState::Ready).with_slots(64, 60),
        WorkerView::new("b", WorkerState::Ready).with_slots(64, 0),
        WorkerView::new("c", WorkerState::Starting),
        WorkerView::new("d", WorkerState::Ready).with_slots(64, 5),
        WorkerView::new("e", WorkerState::Draining).with_slots(64, 0),
        WorkerView::new("f", WorkerState::Ready).with_slots(64, 0),
    ];
    let ids = |v: Vec<WorkerId>| v.into_iter().map(|w| w.0).collect::<Vec<_>>();
    assert_eq!(ids(victims(&workers, 3)), ["c", "f", "b"]);
    assert_eq!(ids(victims(&workers, 10)), ["c", "f", "b", "d", "a"]);
    // Through the policy: a fleet found idle shrinks after the delay, the draining one
    // not counted.
    let mut p = Autoscaler::new(PolicyConfig {
        scale_down_step: 1.0,
        ..PolicyConfig::default()
    })
    .expect("valid");
    let d = p.decide(&obs(s(0), 0.0, s(1), workers.clone()));
    assert_eq!(d.current, 5);
    let mut quiet = workers.clone();
    for w in &mut quiet {
        w.busy = 0;
    }
    let d = p.decide(&obs(s(700), 0.0, s(1), quiet));
    assert_eq!(d.target, 1);
    assert_eq!(d.drain.len(), 4);
    assert!(!d.drain.contains(&WorkerId::from("e")));
}

#[test]
fn prescaling_grows_the_fleet_before_yesterdays_peak() {
    let config = PolicyConfig {
        prescale: PrescaleConfig {
            enabled: true,
            ..PrescaleConfig::default()
        },
        ..PolicyConfig::default()
    };
    let mut on = Autoscaler::new(config).expect("valid");
    let mut off = policy();
    // Day one: a two-hour peak of 6400 slots at noon, 64 slots otherwise.
    for m in (0..24 * 60).step_by(1) {
        let t = s(m * 60);
        let arrival = if (12 * 60..14 * 60).contains(&m) {
            640.0
        } else {
            6.4
        };
        let w = fleet(10, 0, 0);
        on.decide(&obs(t, arrival, s(10), w.clone()));
        off.decide(&obs(t, arrival, s(10), w));
    }
    // Day two, 11:50, still quiet.
    let t = s(86_400 + 11 * 3600 + 50 * 60);
    let d = on.decide(&obs(t, 6.4, s(10), fleet(2, 0, 0)));
    assert_eq!(d.reason, Reason::Prescale);
    assert!(
        (d.prescale_slots - 6400.0).abs() < 1e-6,
        "{}",
        d.prescale_slots
    );
    assert_eq!(d.target, (6400.0f64 / 0.9 / 64.0).ceil() as u32);
    let d = off.decide(&obs(t, 6.4, s(10), fleet(2, 0, 0)));
    assert_eq!(d.prescale_slots, 0.0);
    assert!(d.target <= 2);
    // At 09:00 the peak is not yet in sight.
    let mut early = Autoscaler::new(PolicyConfig {
        prescale: PrescaleConfig {
            enabled: true,
            ..PrescaleConfig::default()
        },
        ..PolicyConfig::default()
    })
    .expect("valid")
    .with_curve(on.curve().clone());
    let d = early.decide(&obs(s(86_400 + 9 * 3600), 6.4, s(10), fleet(2, 0, 0)));
    assert_ne!(d.reason, Reason::Prescale);
}

#[test]
fn the_mix_follows_runtime_demand() {
    let mut p = policy();
    let mut o = obs(s(0), 50.0, s(10), fleet(8, 0, 60));
    for (rt, busy, queued) in [("python", 300, 60), ("cpp", 120, 0), ("java", 0, 0)] {
        o.runtimes.insert(
            rt.into(),
            RuntimeLoad {
                queued,
                oldest_wait: Duration::from_millis(10),
                busy,
            },
        );
    }
    let d = p.decide(&o);
    let slots = d.target * 64;
    assert_eq!(d.mix.values().sum::<u32>(), slots);
    assert!(!d.mix.contains_key("java"));
    assert_eq!(d.mix["python"] * 120, d.mix["cpp"] * 360, "{:?}", d.mix);
}

#[test]
fn decisions_serialize_for_logs() {
    let mut p = policy();
    let d = p.decide(&obs(s(5), 100.0, s(10), fleet(2, 0, 0)));
    let v = serde_json::to_value(&d).expect("serializes");
    assert_eq!(v["now"], 5.0);
    assert_eq!(v["reason"], "demand");
    assert_eq!(v["target"], 18);
    assert_eq!(v["held"], serde_json::Value::Null);
}

/// One random observation's load.
#[derive(Clone, Debug)]
struct Load {
    dt: u64,
    arrival: f64,
    mean_ms: u64,
    queued: u32,
    wait_ms: u64,
    busy_per_worker: u32,
}

fn load() -> impl Strategy<Value = Load> {
    (
        1u64..120,
        0.0f64..3000.0,
        1u64..60_000,
        0u32..5000,
        0u64..10_000,
        0u32..=64,
    )
        .prop_map(
            |(dt, arrival, mean_ms, queued, wait_ms, busy_per_worker)| Load {
                dt,
                arrival,
                mean_ms,
                queued,
                wait_ms,
                busy_per_worker,
            },
        )
}

fn observe(now: Duration, l: &Load, workers: &[WorkerView]) -> Observation {
    let mut workers = workers.to_vec();
    for w in &mut workers {
        w.busy = l.busy_per_worker.min(w.slots);
    }
    let mut o = obs(now, l.arrival, Duration::from_millis(l.mean_ms), workers);
    o.runtimes.insert(
        "python".into(),
        RuntimeLoad {
            queued: l.queued,
            oldest_wait: Duration::from_millis(l.wait_ms),
            busy: o.busy_slots,
        },
    );
    o
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn decisions_keep_their_invariants(
        start in 0u32..40,
        loads in proptest::collection::vec(load(), 1..120),
        min in 0u32..4,
        prescale in any::<bool>(),
    ) {
        let config = PolicyConfig {
            min_workers: min,
            max_workers: 400,
            prescale: PrescaleConfig { enabled: prescale, ..PrescaleConfig::default() },
            ..PolicyConfig::default()
        };
        let delay = config.scale_down_delay;
        let interval = config.scale_down_interval;
        let mut p = Autoscaler::new(config).expect("valid");
        let mut workers = fleet(start, 0, 0);
        let mut next = 0;
        let mut now = Duration::ZERO;
        let mut history: Vec<(Duration, u32)> = vec![(now, start)];
        let mut last_down: Option<Duration> = None;
        for l in &loads {
            now += s(l.dt);
            let o = observe(now, l, &workers);
            let d = p.decide(&o);
            history.push((now, d.wanted));
            prop_assert_eq!(d.current as usize, workers.len());
            prop_assert!(d.wanted >= min && d.wanted <= 400);
            prop_assert!(d.target >= min);
            prop_assert!(d.target <= d.wanted.max(d.current));
            if d.target > d.current {
                prop_assert_eq!(d.target, d.wanted, "up goes all the way at once");
                prop_assert_eq!(d.start, d.target - d.current);
                prop_assert!(d.drain.is_empty());
            } else if d.target < d.current {
                prop_assert_eq!(d.start, 0);
                prop_assert_eq!(d.drain.len() as u32, d.current - d.target);
                let mut ids = d.drain.clone();
                ids.sort();
                ids.dedup();
                prop_assert_eq!(ids.len(), d.drain.len(), "distinct");
                prop_assert!(d.drain.iter().all(|id| workers.iter().any(|w| &w.id == id)));
                // Every recommendation of the last delay was below the current count.
                for &(t, w) in &history {
                    if t + delay >= now {
                        prop_assert!(w < d.current, "{w} at {t:?} vs {} at {now:?}", d.current);
                    }
                }
                if let Some(t) = last_down {
                    prop_assert!(now >= t + interval);
                }
                let step = ((f64::from(d.current) * 0.1).floor() as u32).max(1);
                prop_assert!(d.current - d.target <= step);
                last_down = Some(now);
            } else {
                prop_assert!(d.start == 0 && d.drain.is_empty());
            }
            apply(&mut workers, &d, &mut next);
        }
    }

    #[test]
    fn more_load_never_wants_fewer_workers(
        base in load(),
        more_arrival in 0.0f64..1000.0,
        more_queued in 0u32..1000,
        more_busy in 0u32..=64,
        workers in 0u32..20,
    ) {
        let w = fleet(workers, 0, 0);
        let o1 = observe(s(100), &base, &w);
        let heavier = Load {
            arrival: base.arrival + more_arrival,
            queued: base.queued + more_queued,
            busy_per_worker: (base.busy_per_worker + more_busy).min(64),
            ..base.clone()
        };
        let o2 = observe(s(100), &heavier, &w);
        let d1 = policy().decide(&o1);
        let d2 = policy().decide(&o2);
        prop_assert!(d2.wanted >= d1.wanted, "{} < {}", d2.wanted, d1.wanted);
        prop_assert!(d2.target >= d1.target);
    }
}
