//! Worker slots, the queue in front of them, and the order runs leave it in.
//!
//! Every run holds one slot (one CPU) while it runs. A run that finds no free slot waits in
//! its client's queue; when a slot frees, the scheduler picks the next run:
//!
//! - **Shortest expected first, with aging.** A run's deadline is its arrival plus
//!   `aging` times its expected length; within a client, runs leave in deadline order. A
//!   short run overtakes a long one that arrived a little earlier, and a long run overtakes
//!   every run that arrives after its deadline, so it waits about `aging` times its
//!   expected length at most: no starvation.
//! - **Fair share between clients.** Each client has a clock that advances, each time one
//!   of its runs starts, by that run's expected length times the number of active clients
//!   over the number of slots: a client using more than its share has a clock in the
//!   future. A client's next run competes with `max(deadline, clock + aging × expected)`,
//!   so one client's burst delays others by its share, not by its size.
//! - **Placement.** Among the free slots, a run takes one it prefers (where its runtime
//!   is warm) when there is one; a run that is not warm avoids a slot given back a moment
//!   ago, which may still be preparing its next sandbox.
//!
//! Admission happens before queueing: a per-client concurrency limit and rate limit, a
//! bounded queue (by count and by expected CPU time), and a bound on how long the run
//! would wait: for the waiting runs that go before it and for what the running runs have
//! left of their expected lengths (at least half of it), spread over the slots. A refused
//! run gets a reason and when to retry; an admitted run is never dropped by the scheduler:
//! it waits until it gets a slot or its owner stops waiting (dropping the [`Waiter`]
//! leaves the queue).
//!
//! `Policy::Fifo` turns all of this into a plain first-come-first-served queue (for
//! comparisons).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::estimate::{Basis, Estimator};
use crate::ticket::{ClientId, ClientLimits, JobId, Ticket};

/// How long a slot given back takes to be ready for a run that is not warm (its keeper
/// prepares the next sandbox: namespaces, mounts, the program's process): see
/// `State::take_free`.
const SLOT_SETTLE: Duration = Duration::from_millis(3);

/// The order runs leave the queue in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Shortest expected first, with aging and fair share between clients.
    #[default]
    Sjf,
    /// First come, first served; no fair share.
    Fifo,
}

/// How the scheduler behaves.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    /// Slots: runs executing at once (at least 1).
    pub workers: usize,
    /// Runs that may wait for a slot.
    pub queue: usize,
    /// Expected CPU time of all waiting runs together; zero means no bound.
    pub queue_cpu: Duration,
    /// Longest a run may be expected to wait behind the work ahead of it (the waiting runs
    /// that go first and the rest of the running ones); the bound is
    /// `max(max_wait, aging × its expected time)`; zero means no bound.
    pub max_wait: Duration,
    /// The order.
    pub policy: Policy,
    /// How many times its expected time a run waits before runs arriving later no longer
    /// overtake it.
    pub aging: f64,
    /// The expected time of a run of a runtime never seen.
    pub default_expected: Duration,
    /// Limits on each client, unless its ticket brings its own.
    pub client: ClientLimits,
}

impl SchedulerConfig {
    /// `workers` slots, room for `queue` waiting runs, and defaults for the rest.
    pub fn new(workers: usize, queue: usize) -> SchedulerConfig {
        SchedulerConfig {
            workers,
            queue,
            queue_cpu: Duration::ZERO,
            max_wait: Duration::ZERO,
            policy: Policy::Sjf,
            aging: 2.0,
            default_expected: Duration::from_millis(250),
            client: ClientLimits::default(),
        }
    }
}

/// Why a run was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// `queue` runs already wait.
    QueueFull,
    /// The waiting runs already add up to `queue_cpu` of expected CPU time.
    QueueCpu,
    /// The work ahead would keep the run waiting longer than allowed.
    WaitTooLong,
    /// The client submits faster than its rate limit.
    ClientRate,
    /// The client already has its limit of runs queued or running.
    ClientConcurrency,
    /// A fleet gateway cannot reach its broker (NATS) at the moment, so it cannot store
    /// the run; never given by the scheduler itself.
    BrokerUnreachable,
}

impl RejectReason {
    /// The snake_case name, as in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::QueueFull => "queue_full",
            RejectReason::QueueCpu => "queue_cpu",
            RejectReason::WaitTooLong => "wait_too_long",
            RejectReason::ClientRate => "client_rate",
            RejectReason::ClientConcurrency => "client_concurrency",
            RejectReason::BrokerUnreachable => "broker_unreachable",
        }
    }
}

/// A run was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("run refused ({}): {queued} runs are waiting; retry after {retry_after:?}", reason.as_str())]
pub struct Rejected {
    /// Why.
    pub reason: RejectReason,
    /// How many runs were waiting.
    pub queued: usize,
    /// When a retry is likely to be admitted.
    pub retry_after: Duration,
}

/// Counts for monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Slots in all.
    pub workers: usize,
    /// Slots in use.
    pub running: usize,
    /// Runs waiting for a slot.
    pub queued: usize,
    /// Capacity of the queue.
    pub queue: usize,
    /// Expected CPU time of the waiting runs.
    pub queued_cpu: Duration,
    /// Runs refused so far.
    pub rejected: u64,
    /// Runs started so far.
    pub started: u64,
}

/// What a waiter receives with its slot.
#[derive(Debug)]
struct Grant {
    slot: u32,
    order: u64,
    waited: Duration,
}

#[derive(Debug)]
struct Entry {
    ticket: Ticket,
    expected: Duration,
    enqueued: Instant,
    prefer: Vec<u32>,
    tx: oneshot::Sender<Grant>,
}

#[derive(Debug)]
struct Client {
    /// Waiting runs by (key, sequence number).
    queue: BTreeMap<(u64, u64), Entry>,
    /// Fair-share clock, µs since the scheduler's epoch.
    clock: u64,
    running: usize,
    limits: ClientLimits,
    tokens: f64,
    refilled: Instant,
}

impl Client {
    fn new(now: Instant, limits: ClientLimits) -> Client {
        Client {
            queue: BTreeMap::new(),
            clock: 0,
            running: 0,
            limits,
            tokens: Self::burst(&limits),
            refilled: now,
        }
    }

    fn burst(limits: &ClientLimits) -> f64 {
        if limits.burst > 0 {
            f64::from(limits.burst)
        } else {
            limits.rate.max(1.0)
        }
    }

    fn refill(&mut self, now: Instant) {
        let burst = Self::burst(&self.limits);
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.limits.rate).min(burst);
        self.refilled = now;
    }

    /// Nothing waiting or running, no fair-share debt, a full bucket: can be forgotten.
    fn idle(&mut self, now: Instant, now_us: u64) -> bool {
        if !self.queue.is_empty() || self.running > 0 || self.clock > now_us {
            return false;
        }
        if self.limits.rate > 0.0 {
            self.refill(now);
            return self.tokens >= Self::burst(&self.limits);
        }
        true
    }
}

#[derive(Debug)]
struct State {
    /// Free slots, in the order they were given back.
    free: Vec<u32>,
    /// When each slot was last given back (`None`: never taken).
    free_since: Vec<Option<Instant>>,
    /// Per slot, while a run holds it: the run's expected length and when it started.
    busy: Vec<Option<(Duration, Instant)>>,
    running: usize,
    queued: usize,
    queued_cpu: Duration,
    depth: BTreeMap<String, usize>,
    clients: HashMap<ClientId, Client>,
    estimator: Estimator,
    seq: u64,
    started: u64,
    rejected: u64,
}

#[derive(Debug)]
struct Inner {
    config: SchedulerConfig,
    epoch: Instant,
    state: Mutex<State>,
}

/// Hands out worker slots in the order described in the module docs.
#[derive(Debug, Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn scale(d: Duration, by: f64) -> u64 {
    // Float to integer: saturating by definition of `as` for floats; values are small.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let v = (d.as_secs_f64() * 1e6 * by.max(0.0)) as u64;
    v
}

impl Scheduler {
    /// `workers` slots (at least 1), room for `queue` waiting runs, defaults for the rest.
    pub fn new(workers: usize, queue: usize) -> Scheduler {
        Scheduler::with_config(SchedulerConfig::new(workers, queue))
    }

    /// A scheduler as `config` says.
    pub fn with_config(mut config: SchedulerConfig) -> Scheduler {
        config.workers = config.workers.max(1);
        let slots = u32::try_from(config.workers).expect("workers fits in u32");
        let estimator = Estimator::new(config.default_expected);
        Scheduler {
            inner: Arc::new(Inner {
                epoch: Instant::now(),
                state: Mutex::new(State {
                    free: (0..slots).rev().collect(),
                    free_since: vec![None; config.workers],
                    busy: vec![None; config.workers],
                    running: 0,
                    queued: 0,
                    queued_cpu: Duration::ZERO,
                    depth: BTreeMap::new(),
                    clients: HashMap::new(),
                    estimator,
                    seq: 0,
                    started: 0,
                    rejected: 0,
                }),
                config,
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.inner.config
    }

    /// Waits for a slot, preferring the slots in `prefer`; refuses at once when the run is
    /// not admitted. Dropping the future leaves the queue.
    pub async fn acquire(&self, ticket: Ticket, prefer: &[u32]) -> Result<Permit, Rejected> {
        Ok(self.enqueue(ticket, prefer)?.await)
    }

    /// Admits `ticket` and queues it, or refuses it. Await the [`Waiter`] for the slot;
    /// drop it to leave the queue.
    pub fn enqueue(&self, ticket: Ticket, prefer: &[u32]) -> Result<Waiter, Rejected> {
        self.enqueue_inner(ticket, prefer, true)
    }

    /// Queues `ticket` without the queue bounds (the client's limits still apply to its
    /// rate, not here): for the later parts of a run already admitted, such as the test
    /// cases after the first of a batch.
    pub fn enqueue_admitted(&self, ticket: Ticket, prefer: &[u32]) -> Waiter {
        self.enqueue_inner(ticket, prefer, false)
            .expect("a run admitted before is not refused")
    }

    fn enqueue_inner(
        &self,
        ticket: Ticket,
        prefer: &[u32],
        admit: bool,
    ) -> Result<Waiter, Rejected> {
        let inner = &self.inner;
        let cfg = &inner.config;
        let now = Instant::now();
        let mut guard = inner.state.lock();
        let s = &mut *guard;
        let (expected, basis) = s.estimator.estimate(&ticket);
        let seq = s.seq;
        let arrival = micros(now.saturating_duration_since(inner.epoch));
        let key = match cfg.policy {
            Policy::Fifo => seq,
            Policy::Sjf => arrival.saturating_add(scale(expected, cfg.aging)),
        };
        if admit && let Err(reason) = self.admit(s, &ticket, expected, key, now) {
            s.rejected += 1;
            let queued = s.queued;
            gc_client(s, &ticket.client, now, micros(now - inner.epoch));
            return Err(Rejected {
                reason: reason.0,
                queued,
                retry_after: reason
                    .1
                    .clamp(Duration::from_secs(1), Duration::from_secs(300)),
            });
        }
        s.seq += 1;
        let (tx, rx) = oneshot::channel();
        let client = ticket.client.clone();
        let runtime = ticket.runtime.clone();
        *s.depth.entry(runtime).or_default() += 1;
        s.queued += 1;
        s.queued_cpu += expected;
        let limits = ticket.limits.unwrap_or(cfg.client);
        let c = s
            .clients
            .entry(client.clone())
            .or_insert_with(|| Client::new(now, limits));
        c.limits = limits;
        c.queue.insert(
            (key, seq),
            Entry {
                ticket,
                expected,
                enqueued: now,
                prefer: prefer.to_vec(),
                tx,
            },
        );
        dispatch(inner, s, now);
        Ok(Waiter {
            inner: inner.clone(),
            client,
            key: (key, seq),
            expected,
            basis,
            rx,
            done: false,
        })
    }

    /// Checks the client's limits and the queue's bounds; takes a token from the client's
    /// bucket when admitted.
    fn admit(
        &self,
        s: &mut State,
        ticket: &Ticket,
        expected: Duration,
        key: u64,
        now: Instant,
    ) -> Result<(), (RejectReason, Duration)> {
        let cfg = &self.inner.config;
        let limits = ticket.limits.unwrap_or(cfg.client);
        let workers = u32::try_from(cfg.workers).unwrap_or(u32::MAX);
        let must_wait = s.free.is_empty() || s.queued > 0;
        if must_wait {
            // What the running runs are expected to hold their slots for still: a run that
            // waits waits for them too. (A sum over every slot: only worth it here.)
            let left = s.running_left(now);
            let mean_wait = (s.queued_cpu + left) / workers;
            if s.queued >= cfg.queue {
                return Err((RejectReason::QueueFull, mean_wait + expected));
            }
            if !cfg.queue_cpu.is_zero() && s.queued > 0 && s.queued_cpu + expected > cfg.queue_cpu {
                return Err((
                    RejectReason::QueueCpu,
                    (s.queued_cpu + expected - cfg.queue_cpu) / workers,
                ));
            }
            if !cfg.max_wait.is_zero() {
                // The expected CPU time of the runs that leave the queue before this one.
                let ahead: Duration = s
                    .clients
                    .values()
                    .flat_map(|c| c.queue.iter())
                    .filter(|((k, _), _)| *k <= key)
                    .map(|(_, e)| e.expected)
                    .sum();
                let wait = (ahead + left) / workers;
                let allowed = cfg
                    .max_wait
                    .max(Duration::from_secs_f64(expected.as_secs_f64() * cfg.aging));
                if wait > allowed {
                    return Err((RejectReason::WaitTooLong, wait - allowed));
                }
            }
        }
        let c = s
            .clients
            .entry(ticket.client.clone())
            .or_insert_with(|| Client::new(now, limits));
        c.limits = limits;
        if limits.concurrency > 0 && c.queue.len() + c.running >= limits.concurrency {
            return Err((RejectReason::ClientConcurrency, expected));
        }
        if limits.rate > 0.0 {
            c.refill(now);
            if c.tokens < 1.0 {
                let secs = (1.0 - c.tokens) / limits.rate;
                return Err((RejectReason::ClientRate, Duration::from_secs_f64(secs)));
            }
            c.tokens -= 1.0;
        }
        Ok(())
    }

    /// Takes a free slot at once, preferring `prefer`, but only when no run is waiting
    /// and at least `keep_free` other slots stay free: for work that must never delay a
    /// run, such as compiling ahead of "Run". Not admitted through the queue's bounds.
    pub fn try_acquire(&self, ticket: Ticket, prefer: &[u32], keep_free: usize) -> Option<Permit> {
        let inner = &self.inner;
        let now = Instant::now();
        let mut guard = inner.state.lock();
        let s = &mut *guard;
        if s.queued > 0 || s.free.len() <= keep_free {
            return None;
        }
        let (expected, _) = s.estimator.estimate(&ticket);
        let limits = ticket.limits.unwrap_or(inner.config.client);
        let c = s
            .clients
            .entry(ticket.client.clone())
            .or_insert_with(|| Client::new(now, limits));
        c.running += 1;
        let slot = s.take_free(prefer, now);
        s.occupy(slot, expected, now);
        s.running += 1;
        s.started += 1;
        Some(Permit {
            inner: inner.clone(),
            client: ticket.client,
            slot,
            order: s.started,
            waited: Duration::ZERO,
            expected,
            since: now,
            completed: None,
        })
    }

    /// The expected time `ticket` would hold a slot, and what the guess is based on.
    pub fn expected(&self, ticket: &Ticket) -> (Duration, Basis) {
        self.inner.state.lock().estimator.estimate(ticket)
    }

    /// Current counts.
    pub fn stats(&self) -> Stats {
        let s = self.inner.state.lock();
        Stats {
            workers: self.inner.config.workers,
            running: s.running,
            queued: s.queued,
            queue: self.inner.config.queue,
            queued_cpu: s.queued_cpu,
            rejected: s.rejected,
            started: s.started,
        }
    }

    /// Waiting runs per runtime (what the runtime pool sizes its warm runtimes by).
    pub fn queue_depths(&self) -> BTreeMap<String, usize> {
        self.inner.state.lock().depth.clone()
    }

    /// Ids of the waiting runs, in the order they would start if no run arrived.
    pub fn queued_ids(&self) -> Vec<JobId> {
        let s = self.inner.state.lock();
        let mut all: Vec<(u64, u64, JobId)> = s
            .clients
            .values()
            .flat_map(|c| {
                c.queue.iter().map(|((k, seq), e)| {
                    (
                        client_key(&self.inner.config, c, *k, e),
                        *seq,
                        e.ticket.id.clone(),
                    )
                })
            })
            .collect();
        all.sort();
        all.into_iter().map(|(_, _, id)| id).collect()
    }
}

/// The key a client's head run competes with.
fn client_key(cfg: &SchedulerConfig, c: &Client, key: u64, e: &Entry) -> u64 {
    match cfg.policy {
        Policy::Fifo => key,
        Policy::Sjf => key.max(c.clock.saturating_add(scale(e.expected, cfg.aging))),
    }
}

/// Hands free slots to the best waiting runs.
fn dispatch(inner: &Inner, s: &mut State, now: Instant) {
    let cfg = &inner.config;
    let now_us = micros(now.saturating_duration_since(inner.epoch));
    while !s.free.is_empty() && s.queued > 0 {
        let active = s
            .clients
            .values()
            .filter(|c| !c.queue.is_empty() || c.running > 0)
            .count()
            .max(1);
        let Some((_, _, client)) = s
            .clients
            .iter()
            .filter_map(|(id, c)| {
                c.queue
                    .first_key_value()
                    .map(|(&(k, seq), e)| (client_key(cfg, c, k, e), seq, id))
            })
            .min()
            .map(|(k, seq, id)| (k, seq, id.clone()))
        else {
            break;
        };
        let c = s
            .clients
            .get_mut(&client)
            .expect("the client was just found");
        let (_, entry) = c.queue.pop_first().expect("the client has a waiting run");
        // Per active client's share of the slots.
        #[allow(clippy::cast_precision_loss)]
        let share = active as f64 / cfg.workers as f64;
        c.clock = c
            .clock
            .max(now_us)
            .saturating_add(scale(entry.expected, share));
        c.running += 1;
        s.queued -= 1;
        s.queued_cpu = s.queued_cpu.saturating_sub(entry.expected);
        if let Some(d) = s.depth.get_mut(&entry.ticket.runtime) {
            *d -= 1;
            if *d == 0 {
                s.depth.remove(&entry.ticket.runtime);
            }
        }
        let slot = s.take_free(&entry.prefer, now);
        s.occupy(slot, entry.expected, now);
        s.running += 1;
        s.started += 1;
        let grant = Grant {
            slot,
            order: s.started,
            waited: now.saturating_duration_since(entry.enqueued),
        };
        if entry.tx.send(grant).is_err() {
            // Only a waiter forgotten without being dropped gets here: undo.
            if let Some(c) = s.clients.get_mut(&client) {
                c.running -= 1;
            }
            s.running -= 1;
            s.vacate(slot);
        }
    }
}

/// Forgets `id` if it is idle; every so often, every idle client.
fn gc_client(s: &mut State, id: &ClientId, now: Instant, now_us: u64) {
    if s.clients.get_mut(id).is_some_and(|c| c.idle(now, now_us)) {
        s.clients.remove(id);
    }
    if s.seq.is_multiple_of(1024) && s.clients.len() > 64 {
        s.clients.retain(|_, c| !c.idle(now, now_us));
    }
}

/// A queued run; resolves to its [`Permit`]. Dropping it leaves the queue (or frees the
/// slot it was just given).
#[derive(Debug)]
pub struct Waiter {
    inner: Arc<Inner>,
    client: ClientId,
    key: (u64, u64),
    expected: Duration,
    basis: Basis,
    rx: oneshot::Receiver<Grant>,
    done: bool,
}

impl Waiter {
    /// The expected time the run will hold its slot.
    pub fn expected(&self) -> Duration {
        self.expected
    }

    /// What the expectation is based on.
    pub fn basis(&self) -> Basis {
        self.basis
    }
}

impl Future for Waiter {
    type Output = Permit;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Permit> {
        let grant = match Pin::new(&mut self.rx).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(g) => g.expect("the scheduler keeps a waiter's sender until it grants"),
        };
        self.done = true;
        Poll::Ready(Permit {
            inner: self.inner.clone(),
            client: self.client.clone(),
            slot: grant.slot,
            order: grant.order,
            waited: grant.waited,
            expected: self.expected,
            since: Instant::now(),
            completed: None,
        })
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let now = Instant::now();
        let inner = &self.inner;
        let mut guard = inner.state.lock();
        let s = &mut *guard;
        let removed = s
            .clients
            .get_mut(&self.client)
            .and_then(|c| c.queue.remove(&self.key));
        if let Some(e) = removed {
            s.queued -= 1;
            s.queued_cpu = s.queued_cpu.saturating_sub(e.expected);
            if let Some(d) = s.depth.get_mut(&e.ticket.runtime) {
                *d -= 1;
                if *d == 0 {
                    s.depth.remove(&e.ticket.runtime);
                }
            }
        } else if let Ok(grant) = self.rx.try_recv() {
            // Granted a slot but never took it: hand it on.
            release(s, &self.client, grant.slot);
            dispatch(inner, s, now);
        }
        gc_client(s, &self.client, now, micros(now - inner.epoch));
    }
}

fn release(s: &mut State, client: &ClientId, slot: u32) {
    if let Some(c) = s.clients.get_mut(client) {
        c.running = c.running.saturating_sub(1);
    }
    s.running = s.running.saturating_sub(1);
    s.vacate(slot);
}

impl State {
    /// `slot` is taken by a run expected to hold it for `expected`.
    fn occupy(&mut self, slot: u32, expected: Duration, now: Instant) {
        if let Some(b) = self.busy.get_mut(slot as usize) {
            *b = Some((expected, now));
        }
    }

    /// Takes a free slot (there is one) for a run that prefers `prefer` (where its runtime
    /// is warm): the first of those that is free. A run that is not warm takes the sandbox
    /// its slot prepared after its last run, which takes a couple of milliseconds: it goes
    /// to the slot given back last if that one has had [`SLOT_SETTLE`] since (its memory
    /// is the one in the caches), else to the slot free the longest. Measured through
    /// the API (2 slots): a bash `echo` sent back to back answered 1 ms sooner than on the
    /// slot just given back; always taking the one free the longest made runs 5 to 20 ms
    /// apart 0.1 ms slower. A warm run keeps to its preferred slots: taking the one free
    /// the longest made back-to-back warm Python runs slower.
    fn take_free(&mut self, prefer: &[u32], now: Instant) -> u32 {
        let idx = prefer
            .iter()
            .find_map(|p| self.free.iter().position(|f| f == p))
            .unwrap_or_else(|| {
                let last = self.free.len() - 1;
                let settled = self
                    .free_since
                    .get(self.free[last] as usize)
                    .copied()
                    .flatten()
                    .is_none_or(|t| now.saturating_duration_since(t) >= SLOT_SETTLE);
                if settled { last } else { 0 }
            });
        self.free.remove(idx)
    }

    /// `slot` is free again.
    fn vacate(&mut self, slot: u32) {
        if let Some(b) = self.busy.get_mut(slot as usize) {
            *b = None;
        }
        if let Some(t) = self.free_since.get_mut(slot as usize) {
            *t = Some(Instant::now());
        }
        self.free.push(slot);
    }

    /// The expected time the running runs still hold their slots, all together. Each
    /// counts for what is left of its expected length, but for at least half of it (what
    /// is left, on average, of a run seen at a random moment): a run past its expected
    /// end is late, not done. Counting late runs as done admits long runs into waits that
    /// overrun when lengths vary, and overdue long runs go before every short run that
    /// arrives after them.
    fn running_left(&self, now: Instant) -> Duration {
        self.busy
            .iter()
            .flatten()
            .map(|(expected, since)| {
                expected
                    .saturating_sub(now.saturating_duration_since(*since))
                    .max(*expected / 2)
            })
            .sum()
    }
}

/// A held worker slot; dropping it frees the slot for the next run.
#[derive(Debug)]
pub struct Permit {
    inner: Arc<Inner>,
    client: ClientId,
    slot: u32,
    order: u64,
    waited: Duration,
    expected: Duration,
    since: Instant,
    completed: Option<Ticket>,
}

impl Permit {
    /// The slot number, below the number of workers.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// How long the run waited in the queue.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// How long the run was expected to hold the slot.
    pub fn expected(&self) -> Duration {
        self.expected
    }

    /// How long the slot has been held.
    pub fn held(&self) -> Duration {
        self.since.elapsed()
    }

    /// The number of runs started before this one, plus one.
    pub fn order(&self) -> u64 {
        self.order
    }

    /// Marks the run as finished normally: when the permit is dropped, how long it held
    /// the slot goes into the history that `ticket`'s future runs are estimated from.
    /// (A cancelled run's length says nothing about the program, so it is not recorded.)
    pub fn complete(&mut self, ticket: &Ticket) {
        self.completed = Some(ticket.clone());
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let now = Instant::now();
        let held = now.saturating_duration_since(self.since);
        let inner = &self.inner;
        let mut guard = inner.state.lock();
        let s = &mut *guard;
        if let Some(t) = self.completed.take() {
            s.estimator.record(&t, held);
        }
        release(s, &self.client, self.slot);
        dispatch(inner, s, now);
        gc_client(s, &self.client, now, micros(now - inner.epoch));
    }
}

#[cfg(test)]
mod tests;
