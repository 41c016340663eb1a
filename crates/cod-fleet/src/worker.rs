//! Workers as the manager sees them: an id, a state in their life, their slots.
//!
//! A worker is one `cod worker` process (a machine's worth of slots, one per CPU). It is
//! `Starting` from the moment a provider asks for it until it serves, `Ready` while it takes
//! runs, and `Draining` once asked to stop: it finishes the runs it has, takes no new ones,
//! and exits. The policy counts only `Starting` and `Ready` workers as capacity.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A worker's id, as in heartbeats, logs and the provider's own names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(pub String);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for WorkerId {
    fn from(s: &str) -> WorkerId {
        WorkerId(s.to_owned())
    }
}

/// Where a worker is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Asked for, not serving yet (a machine booting, a process starting).
    Starting,
    /// Taking runs.
    Ready,
    /// Finishing its runs before it stops; takes no new ones.
    Draining,
}

impl WorkerState {
    /// The snake_case name, as in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Ready => "ready",
            WorkerState::Draining => "draining",
        }
    }
}

/// One worker, as the policy sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerView {
    /// Its id.
    pub id: WorkerId,
    /// Its state.
    pub state: WorkerState,
    /// Slots it runs (0 when not known yet).
    #[serde(default)]
    pub slots: u32,
    /// Slots in use.
    #[serde(default)]
    pub busy: u32,
}

impl WorkerView {
    /// A worker with no slot information.
    pub fn new(id: impl Into<String>, state: WorkerState) -> WorkerView {
        WorkerView {
            id: WorkerId(id.into()),
            state,
            slots: 0,
            busy: 0,
        }
    }

    /// Sets its slots and how many are busy.
    pub fn with_slots(mut self, slots: u32, busy: u32) -> WorkerView {
        self.slots = slots;
        self.busy = busy;
        self
    }

    /// Whether the worker counts as capacity (starting or ready, not draining).
    pub fn counts(&self) -> bool {
        self.state != WorkerState::Draining
    }
}
