//! The scheduler under virtual time: ordering, aging, fair share, placement, admission.

use std::task::Waker;

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Polls a waiter once: its permit if the slot was granted.
fn try_take(w: &mut Waiter) -> Option<Permit> {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(w).poll(&mut cx) {
        Poll::Ready(p) => Some(p),
        Poll::Pending => None,
    }
}

fn ticket(id: &str, client: &str, content: &str) -> Ticket {
    Ticket::new(id, client, "python").with_content(content)
}

/// Teaches the scheduler that `content` runs for `d` (virtual time).
async fn seed(s: &Scheduler, content: &str, d: Duration) {
    let t = ticket("seed", "seeder", content);
    let mut p = s.acquire(t.clone(), &[]).await.expect("admitted");
    tokio::time::advance(d).await;
    p.complete(&t);
}

#[tokio::test]
async fn slots_are_exclusive_and_reused() {
    let a = Scheduler::new(2, 4);
    let p1 = a.acquire(Ticket::new("1", "c", "py"), &[]).await.unwrap();
    let p2 = a.acquire(Ticket::new("2", "c", "py"), &[]).await.unwrap();
    assert_ne!(p1.slot(), p2.slot());
    assert!(p1.slot() < 2 && p2.slot() < 2);
    assert_eq!(a.stats().running, 2);
    let freed = p1.slot();
    drop(p1);
    let p3 = a.acquire(Ticket::new("3", "c", "py"), &[]).await.unwrap();
    assert_eq!(p3.slot(), freed);
    assert_eq!(a.stats().started, 3);
}

#[tokio::test]
async fn full_queue_is_refused_with_retry_after() {
    let a = Scheduler::new(1, 2);
    let held = a.acquire(Ticket::new("0", "c", "py"), &[]).await.unwrap();
    let mut w1 = a.enqueue(Ticket::new("1", "c", "py"), &[]).unwrap();
    let mut w2 = a.enqueue(Ticket::new("2", "c", "py"), &[]).unwrap();
    assert_eq!(a.stats().queued, 2);
    assert_eq!(a.queue_depths().get("py"), Some(&2));
    let err = a.enqueue(Ticket::new("3", "c", "py"), &[]).unwrap_err();
    assert_eq!(err.reason, RejectReason::QueueFull);
    assert_eq!(err.queued, 2);
    assert!(err.retry_after >= Duration::from_secs(1));
    assert_eq!(a.stats().rejected, 1);
    drop(held);
    let p1 = try_take(&mut w1).expect("the first waiter gets the slot");
    assert!(try_take(&mut w2).is_none());
    drop(p1);
    assert_eq!(try_take(&mut w2).map(|p| p.slot()), Some(0));
    assert_eq!(a.stats().queued, 0);
    assert!(a.queue_depths().is_empty());
}

#[tokio::test]
async fn cancelled_waiter_leaves_the_queue_and_granted_slot_is_passed_on() {
    let a = Scheduler::new(1, 4);
    let held = a.acquire(Ticket::new("0", "c", "py"), &[]).await.unwrap();
    let w1 = a.enqueue(Ticket::new("1", "c", "py"), &[]).unwrap();
    let w2 = a.enqueue(Ticket::new("2", "c", "py"), &[]).unwrap();
    let mut w3 = a.enqueue(Ticket::new("3", "c", "py"), &[]).unwrap();
    drop(w1);
    assert_eq!(a.stats().queued, 2);
    // The slot goes to w2, which never takes it: dropping w2 hands it to w3.
    drop(held);
    assert_eq!(a.stats().running, 1);
    drop(w2);
    let p3 = try_take(&mut w3).expect("w3 inherits the slot");
    assert_eq!(p3.slot(), 0);
    assert_eq!(a.stats().running, 1);
    drop(p3);
    assert_eq!(a.stats().running, 0);
}

#[tokio::test(start_paused = true)]
async fn short_runs_start_before_long_ones() {
    let s = Scheduler::new(2, 64);
    seed(&s, "long", ms(1000)).await;
    seed(&s, "short", ms(10)).await;
    let h1 = s
        .acquire(Ticket::new("h1", "holder", "c"), &[])
        .await
        .unwrap();
    let h2 = s
        .acquire(Ticket::new("h2", "holder", "c"), &[])
        .await
        .unwrap();
    let mut waiters = Vec::new();
    for i in 0..3 {
        waiters.push(
            s.enqueue(ticket(&format!("long{i}"), "u", "long"), &[])
                .unwrap(),
        );
        tokio::time::advance(ms(1)).await;
    }
    for i in 0..4 {
        waiters.push(
            s.enqueue(ticket(&format!("short{i}"), "u", "short"), &[])
                .unwrap(),
        );
        tokio::time::advance(ms(1)).await;
    }
    let order: Vec<String> = s.queued_ids().into_iter().map(|j| j.0).collect();
    assert_eq!(
        order,
        [
            "short0", "short1", "short2", "short3", "long0", "long1", "long2"
        ]
    );
    drop((h1, h2));
    // Two slots free: the first two shorts start.
    let mut permits = Vec::new();
    for (i, w) in waiters.iter_mut().enumerate() {
        if let Some(p) = try_take(w) {
            permits.push((i, p));
        }
    }
    let started: Vec<usize> = permits.iter().map(|(i, _)| *i).collect();
    assert_eq!(started, [3, 4]);
}

#[tokio::test(start_paused = true)]
async fn fifo_policy_keeps_arrival_order() {
    let mut cfg = SchedulerConfig::new(1, 64);
    cfg.policy = Policy::Fifo;
    let s = Scheduler::with_config(cfg);
    seed(&s, "long", ms(1000)).await;
    seed(&s, "short", ms(10)).await;
    let _h = s
        .acquire(Ticket::new("h", "holder", "c"), &[])
        .await
        .unwrap();
    for (id, c) in [
        ("l0", "long"),
        ("s0", "short"),
        ("l1", "long"),
        ("s1", "short"),
    ] {
        let w = s.enqueue(ticket(id, "u", c), &[]).unwrap();
        std::mem::forget(w);
    }
    let order: Vec<String> = s.queued_ids().into_iter().map(|j| j.0).collect();
    assert_eq!(order, ["l0", "s0", "l1", "s1"]);
}

/// A run in the simulation: its waiter until it starts, then when it ends.
struct Sim {
    id: String,
    submitted: Duration,
    length: Duration,
    waiter: Option<Waiter>,
    permit: Option<(Permit, Duration)>,
    started: Option<Duration>,
    finished: Option<Duration>,
}

/// Steps virtual time by `step` until `until` returns true: calls `arrive` to submit more,
/// ends runs whose time is up, and starts granted runs.
async fn simulate(
    runs: &mut Vec<Sim>,
    step: Duration,
    limit: Duration,
    mut arrive: impl FnMut(Duration, &mut Vec<Sim>),
    until: impl Fn(&[Sim]) -> bool,
) {
    let t0 = Instant::now();
    loop {
        let now = t0.elapsed();
        arrive(now, runs);
        for r in runs.iter_mut() {
            if let Some((_, end)) = &r.permit
                && *end <= now
            {
                let (mut p, _) = r.permit.take().expect("checked");
                p.complete(&ticket(&r.id, "-", "-"));
                r.finished = Some(now);
            }
        }
        for r in runs.iter_mut() {
            if let Some(w) = r.waiter.as_mut()
                && let Some(p) = try_take(w)
            {
                r.waiter = None;
                r.started = Some(now);
                r.permit = Some((p, now + r.length));
            }
        }
        if until(runs) || now > limit {
            return;
        }
        tokio::time::advance(step).await;
    }
}

fn submit(s: &Scheduler, now: Duration, id: String, client: &str, content: &str, len: u64) -> Sim {
    Sim {
        waiter: Some(
            s.enqueue(ticket(&id, client, content), &[])
                .expect("admitted"),
        ),
        id,
        submitted: now,
        length: ms(len),
        permit: None,
        started: None,
        finished: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_long_run_waits_at_most_its_aging_bound_under_a_stream_of_short_ones() {
    let s = Scheduler::new(2, 10_000);
    seed(&s, "long", ms(1000)).await;
    seed(&s, "short", ms(10)).await;
    let mut runs = Vec::new();
    let mut n = 0;
    // Shorts arrive as fast as two slots drain them (so one is always waiting), from the
    // same client as the long run (so fair share plays no part): only aging lets the long
    // run through.
    simulate(
        &mut runs,
        ms(1),
        ms(10_000),
        |now, runs| {
            if now == Duration::ZERO {
                for i in 0..4 {
                    runs.push(submit(&s, now, format!("pre{i}"), "u", "short", 10));
                }
                runs.push(submit(&s, now, "long".into(), "u", "long", 1000));
            } else if now.as_millis() % 5 == 0 {
                n += 1;
                runs.push(submit(&s, now, format!("s{n}"), "u", "short", 10));
            }
        },
        |runs| runs.iter().any(|r| r.id == "long" && r.started.is_some()),
    )
    .await;
    let long = runs.iter().find(|r| r.id == "long").expect("the long run");
    let waited = long.started.expect("the long run started");
    // Its deadline is 2 × 1000 ms after arrival; a slot frees within one short run after.
    assert!(
        waited >= ms(1900),
        "{waited:?}: it should let shorts go first"
    );
    assert!(waited <= ms(2000 + 12), "{waited:?}: aging bound exceeded");
    let overtook = runs
        .iter()
        .filter(|r| r.submitted > Duration::ZERO && r.started.is_some_and(|t| t < waited))
        .count();
    assert!(
        overtook > 100,
        "{overtook} shorts arriving later went first"
    );
}

#[tokio::test(start_paused = true)]
async fn a_burst_from_one_client_does_not_hold_up_another() {
    let s = Scheduler::new(2, 10_000);
    seed(&s, "job", ms(100)).await;
    let mut runs = Vec::new();
    simulate(
        &mut runs,
        ms(5),
        ms(60_000),
        |now, runs| {
            if now == Duration::ZERO {
                for i in 0..50 {
                    runs.push(submit(&s, now, format!("a{i}"), "alice", "job", 100));
                }
            } else if now == ms(300) {
                for i in 0..5 {
                    runs.push(submit(&s, now, format!("b{i}"), "bob", "job", 100));
                }
            }
        },
        |runs| runs.len() == 55 && runs.iter().all(|r| r.finished.is_some()),
    )
    .await;
    let last = |prefix: &str| {
        runs.iter()
            .filter(|r| r.id.starts_with(prefix))
            .filter_map(|r| r.finished)
            .max()
            .expect("finished runs")
    };
    let (a, b) = (last("a"), last("b"));
    // Bob gets one of the two slots: 5 runs of 100 ms take about 500 ms from 300 ms.
    assert!(b <= ms(300 + 600 + 100), "bob's last finished at {b:?}");
    assert!(a >= ms(2700), "alice's last finished at {a:?}");
}

#[tokio::test]
async fn runs_take_a_preferred_slot_when_one_is_free() {
    let s = Scheduler::new(4, 8);
    let p = s.acquire(Ticket::new("1", "c", "py"), &[2]).await.unwrap();
    assert_eq!(p.slot(), 2);
    let q = s
        .acquire(Ticket::new("2", "c", "py"), &[2, 3])
        .await
        .unwrap();
    assert_eq!(q.slot(), 3);
    let r = s.acquire(Ticket::new("3", "c", "py"), &[9]).await.unwrap();
    assert!(r.slot() < 2);
    // A queued run that prefers slot 2 gets it when it frees, though another is free too.
    let _x = s.acquire(Ticket::new("4", "c", "py"), &[]).await.unwrap();
    let mut w = s.enqueue(Ticket::new("5", "c", "py"), &[3]).unwrap();
    drop(q);
    assert_eq!(try_take(&mut w).map(|p| p.slot()), Some(3));
    drop(p);
}

/// A run that prefers no slot (it does not run warm) avoids a slot given back a moment ago,
/// which may still be preparing its next sandbox: back to back, runs go round the slots;
/// spaced out, they stay on the slot given back last.
#[tokio::test(start_paused = true)]
async fn a_run_without_a_preference_avoids_a_slot_just_given_back() {
    let s = Scheduler::new(3, 8);
    let mut order = Vec::new();
    for i in 0..4 {
        let p = s
            .acquire(Ticket::new(i.to_string(), "c", "sh"), &[])
            .await
            .unwrap();
        order.push(p.slot());
    }
    assert_eq!(
        order,
        [0, 2, 1, 0],
        "back to back: the slot free the longest"
    );
    let mut order = Vec::new();
    for i in 0..3 {
        tokio::time::advance(SLOT_SETTLE).await;
        let p = s
            .acquire(Ticket::new(i.to_string(), "c", "sh"), &[])
            .await
            .unwrap();
        order.push(p.slot());
    }
    assert_eq!(order, [0, 0, 0], "spaced out: the slot given back last");
    // A preference still wins: slot 2 was given back long ago, 0 just now.
    let d = s.acquire(Ticket::new("d", "c", "py"), &[0]).await.unwrap();
    assert_eq!(d.slot(), 0);
}

#[tokio::test(start_paused = true)]
async fn client_limits_refuse_with_reasons() {
    let mut cfg = SchedulerConfig::new(4, 64);
    cfg.client = ClientLimits {
        rate: 1.0,
        burst: 2,
        concurrency: 0,
    };
    let s = Scheduler::with_config(cfg);
    let _a = s.acquire(Ticket::new("1", "c", "py"), &[]).await.unwrap();
    let _b = s.acquire(Ticket::new("2", "c", "py"), &[]).await.unwrap();
    let e = s.enqueue(Ticket::new("3", "c", "py"), &[]).unwrap_err();
    assert_eq!(e.reason, RejectReason::ClientRate);
    assert_eq!(e.retry_after, Duration::from_secs(1));
    // Another client is not affected.
    assert!(s.enqueue(Ticket::new("4", "d", "py"), &[]).is_ok());
    tokio::time::advance(ms(1000)).await;
    assert!(s.enqueue(Ticket::new("5", "c", "py"), &[]).is_ok());

    let limited = Ticket::new("6", "e", "py").with_limits(ClientLimits {
        concurrency: 1,
        ..ClientLimits::default()
    });
    let _e = s.acquire(limited.clone(), &[]).await.unwrap();
    let e = s.enqueue(limited, &[]).unwrap_err();
    assert_eq!(e.reason, RejectReason::ClientConcurrency);
}

#[tokio::test(start_paused = true)]
async fn queue_is_bounded_by_expected_cpu_and_wait() {
    let mut cfg = SchedulerConfig::new(1, 64);
    cfg.queue_cpu = ms(1000);
    let s = Scheduler::with_config(cfg);
    let _h = s.acquire(Ticket::new("h", "c", "py"), &[]).await.unwrap();
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(
            s.enqueue(Ticket::new(format!("{i}"), "c", "py"), &[])
                .unwrap(),
        );
    }
    assert_eq!(s.stats().queued_cpu, ms(1000));
    let e = s.enqueue(Ticket::new("5", "c", "py"), &[]).unwrap_err();
    assert_eq!(e.reason, RejectReason::QueueCpu);

    let mut cfg = SchedulerConfig::new(1, 64);
    cfg.max_wait = ms(1000);
    let s = Scheduler::with_config(cfg);
    seed(&s, "long", ms(2000)).await;
    let _h = s.acquire(Ticket::new("h", "c", "py"), &[]).await.unwrap();
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(
            s.enqueue(Ticket::new(format!("{i}"), "c", "py"), &[])
                .unwrap(),
        );
        tokio::time::advance(ms(1)).await;
    }
    // 4 × 250 ms waiting and what is left of the running 250 ms, ahead of a fifth short
    // run: more than a second.
    let e = s.enqueue(Ticket::new("4", "c", "py"), &[]).unwrap_err();
    assert_eq!(e.reason, RejectReason::WaitTooLong);
    // Once the running run is past its expected length, only the waiting ones count.
    tokio::time::advance(ms(300)).await;
    drop(held.pop());
    held.push(s.enqueue(Ticket::new("4", "c", "py"), &[]).unwrap());
    // A long run may wait up to twice its 2 s.
    assert!(s.enqueue(ticket("7", "c", "long"), &[]).is_ok());
}

/// The wait a run is admitted for counts what the running runs have left: a short run
/// that would wait behind two long running ones is refused, and its `Retry-After` says
/// when they are expected to be done. A run past its expected end still counts.
#[tokio::test(start_paused = true)]
async fn the_running_runs_count_in_the_wait() {
    let mut cfg = SchedulerConfig::new(2, 64);
    cfg.max_wait = ms(1000);
    let s = Scheduler::with_config(cfg);
    seed(&s, "long", ms(3000)).await;
    seed(&s, "short", ms(10)).await;
    let l1 = s.acquire(ticket("l1", "a", "long"), &[]).await.unwrap();
    let l2 = s.acquire(ticket("l2", "b", "long"), &[]).await.unwrap();
    assert_eq!((l1.expected(), l2.expected()), (ms(3000), ms(3000)));
    // Nothing waits, but both slots are busy for 3 s more: a short run would wait 3 s.
    let e = s.enqueue(ticket("s", "c", "short"), &[]).unwrap_err();
    assert_eq!(e.reason, RejectReason::WaitTooLong);
    assert_eq!(e.retry_after, ms(2000));
    // Past their expected end, the long runs are late, not done: still refused.
    tokio::time::advance(ms(3500)).await;
    let e = s.enqueue(ticket("s", "c", "short"), &[]).unwrap_err();
    assert_eq!(e.reason, RejectReason::WaitTooLong);
    // One ends: a slot is free and nobody waits, so the short run starts at once.
    drop(l1);
    let mut w = s.enqueue(ticket("s", "c", "short"), &[]).expect("admitted");
    assert!(try_take(&mut w).is_some());
    drop(l2);
}

/// A worker that answers with the slot it ran in, after `len` of virtual time.
struct FakeWorker {
    warm: u32,
    len: Duration,
}

impl crate::Worker for FakeWorker {
    type Job = String;
    type Output = (String, u32);

    fn warm_slots(&self, runtime: &str) -> Vec<u32> {
        if runtime == "python" {
            vec![self.warm]
        } else {
            vec![]
        }
    }

    async fn run(
        &self,
        job: &String,
        slot: u32,
        _events: tokio::sync::mpsc::Sender<crate::WorkerEvent>,
    ) -> (String, u32) {
        tokio::time::sleep(self.len).await;
        (job.clone(), slot)
    }
}

#[tokio::test(start_paused = true)]
async fn worker_runs_in_a_warm_slot_and_teaches_the_history() {
    let s = Scheduler::new(4, 8);
    let w = FakeWorker {
        warm: 3,
        len: ms(700),
    };
    let t = ticket("1", "c", "prog");
    assert_eq!(s.expected(&t), (ms(250), Basis::Default));
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let out = s.run(&w, &t, &"hello".to_owned(), tx).await.unwrap();
    assert_eq!(out, ("hello".to_owned(), 3));
    assert_eq!(
        rx.recv().await,
        Some(crate::WorkerEvent::Started { slot: 3 })
    );
    let (d, basis) = s.expected(&t);
    assert_eq!(basis, Basis::Content);
    assert!(d >= ms(700) && d < ms(710), "{d:?}");
}

#[tokio::test]
async fn try_acquire_takes_only_an_idle_slot() {
    let s = Scheduler::new(2, 8);
    let p = s
        .try_acquire(Ticket::new("a", "c", "cpp"), &[1], 0)
        .expect("idle slot");
    assert_eq!(p.slot(), 1);
    // Keeping one slot free: none left to take.
    assert!(
        s.try_acquire(Ticket::new("b", "c", "cpp"), &[], 1)
            .is_none()
    );
    let q = s.acquire(Ticket::new("c", "c", "py"), &[]).await.unwrap();
    let _w = s.enqueue(Ticket::new("d", "c", "py"), &[]).unwrap();
    drop(p);
    // The freed slot went to the waiting run; nothing is idle.
    assert!(
        s.try_acquire(Ticket::new("e", "c", "cpp"), &[], 0)
            .is_none()
    );
    drop(q);
    assert_eq!(s.stats().running, 1);
}
