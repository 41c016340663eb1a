//! The queue the simulation offers runs to: a small seam that the real scheduler
//! (`cod-sched`, through [`super::SchedQueue`]) implements, so that the simulated day is
//! ordered and admitted by the same code as a real gateway.
//!
//! Slots are numbered; a slot is online (free or running a run) or offline. The simulation
//! keeps as many online as the gateway's share of the fleet: when the share grows it
//! brings slots online, when it shrinks it takes free ones offline at once and busy ones as
//! their runs end.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

/// A run offered to the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSpec {
    /// The run's id, unique in the simulation.
    pub id: u64,
    /// Who submitted it (a sitting: one user at one editor).
    pub client: u64,
    /// Its runtime.
    pub runtime: &'static str,
    /// A hash of its content: the same program with the same input repeats this.
    pub content: u64,
    /// The longest it may hold a slot (its limits).
    pub bound: Duration,
}

/// A run that got a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Started {
    /// The run.
    pub id: u64,
    /// Its slot.
    pub slot: u32,
    /// How long it waited.
    pub waited: Duration,
}

/// A run the queue refused (an HTTP 429).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    /// When the client is told to retry.
    pub retry_after: Duration,
}

/// The waiting runs, as the autoscaler sees them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Backlog {
    /// Per runtime: runs waiting and how long the oldest has waited.
    pub runtimes: BTreeMap<&'static str, (u32, Duration)>,
    /// Expected CPU time of the waiting runs, if the queue estimates it.
    pub cpu: Option<Duration>,
}

/// Order and admission of runs waiting for slots.
pub trait RunQueue {
    /// Moves the queue's clock to `now` (never backwards).
    fn advance_to(&mut self, now: Duration) -> impl Future<Output = ()>;

    /// Offers a run: queued (and perhaps started at once), or refused.
    fn submit(&mut self, run: RunSpec) -> Result<(), Refused>;

    /// A started run finished. Its slot goes back to the queue when `reopen`, else offline
    /// (the gateway's share has shrunk).
    fn finish(&mut self, id: u64, reopen: bool);

    /// Brings these (offline) slots online.
    fn open(&mut self, slots: &[u32]);

    /// Takes offline those of these slots that are free; answers them.
    fn close_idle(&mut self, slots: &[u32]) -> Vec<u32>;

    /// Appends the runs that got a slot since the last call, in the order they got it.
    fn take_started(&mut self, out: &mut Vec<Started>);

    /// The waiting runs.
    fn backlog(&self) -> Backlog;

    /// Runs refused so far.
    fn refused(&self) -> u64;
}
