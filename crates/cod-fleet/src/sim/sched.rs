//! The real scheduler behind the simulation's [`RunQueue`]: a `cod_sched::Scheduler`, as a
//! gateway runs it, driven in simulated time.
//!
//! The scheduler reads tokio's clock, so the simulation runs on a runtime whose clock is
//! paused and moves it with `tokio::time::advance`: no wall time passes. Its waiters are
//! polled with a waker each, which records which runs were granted a slot, so nothing is
//! polled in vain.
//!
//! The scheduler's slot count is fixed when it is made, while a gateway's share of the
//! fleet is not: the queue is made with the most slots the share may reach, and slots
//! beyond the share are held by permits of a pseudo-client (`offline`) that never queues. Bringing a slot online
//! drops its permit (the scheduler hands it to the best waiting run); taking a free slot
//! offline takes a permit for exactly that slot. What this costs, and what in `cod-sched`
//! would remove the need: see `docs/simulate.md`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use cod_sched::{Permit, Scheduler, SchedulerConfig, Ticket, Waiter};
use tokio::time::Instant;

use super::queue::{Backlog, Refused, RunQueue, RunSpec, Started};

/// Records the ids of the waiters whose slot arrived.
#[derive(Debug)]
struct Granted {
    id: u64,
    woken: Arc<Mutex<Vec<u64>>>,
}

impl Wake for Granted {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(self.id);
    }
}

#[derive(Debug)]
struct Waiting {
    waiter: Waiter,
    ticket: Ticket,
    waker: Waker,
    runtime: &'static str,
    since: Duration,
}

/// A `cod_sched::Scheduler` in simulated time.
#[derive(Debug)]
pub struct SchedQueue {
    sched: Scheduler,
    epoch: Instant,
    now: Duration,
    woken: Arc<Mutex<Vec<u64>>>,
    waiting: HashMap<u64, Waiting>,
    running: HashMap<u64, (Permit, Ticket)>,
    busy: HashMap<u32, u64>,
    offline: HashMap<u32, Permit>,
    oldest: BTreeMap<&'static str, BTreeSet<(Duration, u64)>>,
    started: Vec<Started>,
}

fn offline_ticket() -> Ticket {
    Ticket::new("offline", "offline", "offline")
}

impl SchedQueue {
    /// A scheduler as `config` says (its `workers` is every slot the fleet could have),
    /// with every slot offline. Must be made inside the simulation's runtime, at time zero.
    pub fn new(config: SchedulerConfig) -> SchedQueue {
        let sched = Scheduler::with_config(config);
        let mut offline = HashMap::new();
        while let Some(p) = sched.try_acquire(offline_ticket(), &[], 0) {
            offline.insert(p.slot(), p);
        }
        SchedQueue {
            sched,
            epoch: Instant::now(),
            now: Duration::ZERO,
            woken: Arc::new(Mutex::new(Vec::new())),
            waiting: HashMap::new(),
            running: HashMap::new(),
            busy: HashMap::new(),
            offline,
            oldest: BTreeMap::new(),
            started: Vec::new(),
        }
    }

    /// The scheduler (for its statistics).
    pub fn scheduler(&self) -> &Scheduler {
        &self.sched
    }

    /// Slots online now (free or busy).
    pub fn online(&self) -> usize {
        self.sched.config().workers - self.offline.len()
    }

    /// Polls the waiters that were granted a slot, in the order they were granted.
    fn collect(&mut self) {
        loop {
            let ids: Vec<u64> = std::mem::take(
                &mut *self
                    .woken
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            if ids.is_empty() {
                return;
            }
            for id in ids {
                self.poll(id);
            }
        }
    }

    /// Polls one waiter; a granted one starts.
    fn poll(&mut self, id: u64) {
        let Some(w) = self.waiting.get_mut(&id) else {
            return;
        };
        let mut cx = Context::from_waker(&w.waker);
        if let Poll::Ready(permit) = Pin::new(&mut w.waiter).poll(&mut cx) {
            let w = self.waiting.remove(&id).expect("just polled");
            if let Some(set) = self.oldest.get_mut(w.runtime) {
                set.remove(&(w.since, id));
            }
            self.start(id, permit, w.ticket);
        }
    }

    fn start(&mut self, id: u64, permit: Permit, ticket: Ticket) {
        let slot = permit.slot();
        self.started.push(Started {
            id,
            slot,
            waited: permit.waited(),
        });
        self.busy.insert(slot, id);
        self.running.insert(id, (permit, ticket));
    }
}

impl RunQueue for SchedQueue {
    fn advance_to(&mut self, now: Duration) -> impl Future<Output = ()> {
        let step = now.saturating_sub(self.now);
        self.now = self.now.max(now);
        async move {
            if !step.is_zero() {
                tokio::time::advance(step).await;
            }
        }
    }

    fn submit(&mut self, run: RunSpec) -> Result<(), Refused> {
        let ticket = Ticket::new(run.id.to_string(), run.client.to_string(), run.runtime)
            .with_content(run.content.to_string())
            .with_bound(run.bound);
        let mut waiter = match self.sched.enqueue(ticket.clone(), &[]) {
            Ok(w) => w,
            Err(r) => {
                return Err(Refused {
                    retry_after: r.retry_after,
                });
            }
        };
        let waker = Waker::from(Arc::new(Granted {
            id: run.id,
            woken: self.woken.clone(),
        }));
        let mut cx = Context::from_waker(&waker);
        match Pin::new(&mut waiter).poll(&mut cx) {
            Poll::Ready(permit) => self.start(run.id, permit, ticket),
            Poll::Pending => {
                let since = self.epoch.elapsed();
                self.oldest
                    .entry(run.runtime)
                    .or_default()
                    .insert((since, run.id));
                self.waiting.insert(
                    run.id,
                    Waiting {
                        waiter,
                        ticket,
                        waker,
                        runtime: run.runtime,
                        since,
                    },
                );
            }
        }
        self.collect();
        Ok(())
    }

    fn finish(&mut self, id: u64, reopen: bool) {
        let Some((mut permit, ticket)) = self.running.remove(&id) else {
            return;
        };
        self.busy.remove(&permit.slot());
        if reopen {
            // Its length goes into the history that orders later runs; the slot goes to
            // the best waiting run.
            permit.complete(&ticket);
            drop(permit);
            self.collect();
        } else {
            // Kept offline. (The scheduler learns a run's length only when its permit is
            // released, which would hand the slot on; a run ending when the share has
            // shrunk is not learned from.)
            self.offline.insert(permit.slot(), permit);
        }
    }

    fn open(&mut self, slots: &[u32]) {
        for s in slots {
            drop(self.offline.remove(s));
        }
        self.collect();
    }

    fn close_idle(&mut self, slots: &[u32]) -> Vec<u32> {
        let mut closed = Vec::new();
        for &s in slots {
            if self.busy.contains_key(&s) || self.offline.contains_key(&s) {
                continue;
            }
            // A free slot exists only while no run waits, so this takes exactly `s`.
            if let Some(p) = self.sched.try_acquire(offline_ticket(), &[s], 0) {
                let got = p.slot();
                self.offline.insert(got, p);
                if got == s {
                    closed.push(s);
                }
            }
        }
        closed
    }

    fn take_started(&mut self, out: &mut Vec<Started>) {
        out.append(&mut self.started);
    }

    fn backlog(&self) -> Backlog {
        let now = self.epoch.elapsed();
        let runtimes = self
            .oldest
            .iter()
            .filter_map(|(rt, set)| {
                let first = set.first()?;
                let n = u32::try_from(set.len()).unwrap_or(u32::MAX);
                Some((*rt, (n, now.saturating_sub(first.0))))
            })
            .collect();
        Backlog {
            runtimes,
            cpu: Some(self.sched.stats().queued_cpu),
        }
    }

    fn refused(&self) -> u64 {
        self.sched.stats().rejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: u64, client: u64, content: u64) -> RunSpec {
        RunSpec {
            id,
            client,
            runtime: "python",
            content,
            bound: Duration::from_secs(300),
        }
    }

    fn started(q: &mut SchedQueue) -> Vec<(u64, u32)> {
        let mut v = Vec::new();
        q.take_started(&mut v);
        v.into_iter().map(|s| (s.id, s.slot)).collect()
    }

    /// Runs `f` on a paused current-thread runtime, as the simulation does.
    fn paused<F: Future<Output = ()>>(f: impl FnOnce() -> F) {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a runtime")
            .block_on(tokio::task::unconstrained(f()));
    }

    #[test]
    fn slots_start_offline_and_open_to_waiting_runs() {
        paused(|| async {
            let mut q = SchedQueue::new(SchedulerConfig::new(4, 100));
            assert_eq!(q.online(), 0);
            q.submit(spec(1, 1, 1)).expect("queued");
            assert!(started(&mut q).is_empty());
            let b = q.backlog();
            assert_eq!(b.runtimes["python"].0, 1);
            q.advance_to(Duration::from_millis(1500)).await;
            assert_eq!(
                q.backlog().runtimes["python"].1,
                Duration::from_millis(1500)
            );
            q.open(&[2]);
            let mut v = Vec::new();
            q.take_started(&mut v);
            assert_eq!(v.len(), 1);
            assert_eq!(
                (v[0].id, v[0].slot, v[0].waited),
                (1, 2, Duration::from_millis(1500))
            );
            assert_eq!(q.online(), 1);
            assert!(q.backlog().runtimes.is_empty());
        });
    }

    #[test]
    fn short_runs_overtake_long_ones_in_simulated_time() {
        paused(|| async {
            let mut q = SchedQueue::new(SchedulerConfig::new(1, 100));
            q.open(&[0]);
            // Teach the scheduler: content 1 runs 20 s, content 2 runs 50 ms.
            let mut t = Duration::ZERO;
            for (id, content, len) in [(1, 1, 20_000), (2, 2, 50)] {
                q.submit(spec(id, 100 + id, content)).expect("queued");
                assert_eq!(started(&mut q), [(id, 0)]);
                t += Duration::from_millis(len);
                q.advance_to(t).await;
                q.finish(id, true);
            }
            // The slot is busy; a long run arrives, then a short one.
            q.submit(spec(3, 7, 1)).expect("queued");
            assert_eq!(started(&mut q), [(3, 0)]);
            q.submit(spec(4, 8, 1)).expect("queued");
            t += Duration::from_millis(1);
            q.advance_to(t).await;
            q.submit(spec(5, 9, 2)).expect("queued");
            assert!(started(&mut q).is_empty());
            t += Duration::from_millis(100);
            q.advance_to(t).await;
            q.finish(3, true);
            assert_eq!(started(&mut q), [(5, 0)], "the short run goes first");
            q.finish(5, true);
            assert_eq!(started(&mut q), [(4, 0)]);
        });
    }

    #[test]
    fn draining_slots_go_offline_when_free_or_when_their_run_ends() {
        paused(|| async {
            let mut q = SchedQueue::new(SchedulerConfig::new(4, 100));
            q.open(&[0, 1, 2, 3]);
            q.submit(spec(1, 1, 1)).expect("queued");
            let slot = started(&mut q)[0].1;
            let others: Vec<u32> = (0..4).filter(|s| *s != slot).collect();
            // Drain everything: the free slots close now, the busy one when its run ends.
            let closed = q.close_idle(&[0, 1, 2, 3]);
            assert_eq!(closed, others);
            assert_eq!(q.online(), 1);
            q.submit(spec(2, 2, 2)).expect("queued");
            assert!(started(&mut q).is_empty(), "no slot for it");
            q.finish(1, false);
            assert_eq!(q.online(), 0);
            assert!(
                started(&mut q).is_empty(),
                "the closed slot is not handed on"
            );
            q.open(&[3]);
            assert_eq!(started(&mut q), [(2, 3)]);
        });
    }

    #[test]
    fn a_full_queue_refuses_with_retry_after() {
        paused(|| async {
            let mut q = SchedQueue::new(SchedulerConfig::new(1, 2));
            q.submit(spec(1, 1, 1)).expect("queued");
            q.submit(spec(2, 2, 2)).expect("queued");
            let r = q.submit(spec(3, 3, 3)).expect_err("full");
            assert!(r.retry_after >= Duration::from_secs(1));
            assert_eq!(q.refused(), 1);
        });
    }
}
