//! How long a run will hold its slot, guessed from history: the same content before, then
//! the client's recent runs in that runtime, then the runtime's recent runs, then a default.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::Duration;

use serde::Serialize;

use crate::ticket::{ClientId, Ticket};

/// Most entries kept per kind of history; the oldest go first.
const MAX_ENTRIES: usize = 20_000;

/// Where an estimate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// The same content ran before.
    Content,
    /// The client's recent runs in this runtime.
    Client,
    /// Recent runs of this runtime.
    Runtime,
    /// Nothing known: the configured default.
    Default,
}

/// An exponentially weighted mean, microseconds.
#[derive(Clone, Copy, Debug)]
struct Mean(f64);

impl Mean {
    fn add(&mut self, sample: Duration, weight: f64) {
        self.0 += (sample.as_secs_f64() * 1e6 - self.0) * weight;
    }

    fn get(self) -> Duration {
        Duration::from_secs_f64(self.0.max(0.0) / 1e6)
    }
}

/// A map that forgets its oldest keys beyond [`MAX_ENTRIES`].
#[derive(Debug)]
struct Bounded<K> {
    map: HashMap<K, Mean>,
    order: VecDeque<K>,
}

impl<K: Hash + Eq + Clone> Bounded<K> {
    fn new() -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&self, k: &K) -> Option<Duration> {
        self.map.get(k).map(|m| m.get())
    }

    fn add(&mut self, k: &K, sample: Duration, weight: f64) {
        if let Some(m) = self.map.get_mut(k) {
            m.add(sample, weight);
            return;
        }
        if self.order.len() >= MAX_ENTRIES
            && let Some(old) = self.order.pop_front()
        {
            self.map.remove(&old);
        }
        self.order.push_back(k.clone());
        self.map.insert(k.clone(), Mean(sample.as_secs_f64() * 1e6));
    }
}

/// The history of run lengths.
#[derive(Debug)]
pub(crate) struct Estimator {
    default: Duration,
    by_content: Bounded<String>,
    by_client: Bounded<(ClientId, String)>,
    by_runtime: HashMap<String, Mean>,
}

impl Estimator {
    pub(crate) fn new(default: Duration) -> Estimator {
        Estimator {
            default,
            by_content: Bounded::new(),
            by_client: Bounded::new(),
            by_runtime: HashMap::new(),
        }
    }

    /// The expected time `t` holds its slot, capped by its bound.
    pub(crate) fn estimate(&self, t: &Ticket) -> (Duration, Basis) {
        let content = t.content.as_ref().and_then(|c| self.by_content.get(c));
        let (d, basis) = if let Some(d) = content {
            (d, Basis::Content)
        } else if let Some(d) = self.by_client.get(&(t.client.clone(), t.runtime.clone())) {
            (d, Basis::Client)
        } else if let Some(m) = self.by_runtime.get(&t.runtime) {
            (m.get(), Basis::Runtime)
        } else {
            (self.default, Basis::Default)
        };
        (d.min(t.bound).max(Duration::from_micros(100)), basis)
    }

    /// Records that `t` held its slot for `held`.
    pub(crate) fn record(&mut self, t: &Ticket, held: Duration) {
        if let Some(c) = &t.content {
            // The same program with the same input: the last runs say the most.
            self.by_content.add(c, held, 0.5);
        }
        self.by_client
            .add(&(t.client.clone(), t.runtime.clone()), held, 0.3);
        match self.by_runtime.get_mut(&t.runtime) {
            Some(m) => m.add(held, 0.1),
            None => {
                self.by_runtime
                    .insert(t.runtime.clone(), Mean(held.as_secs_f64() * 1e6));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn content_then_client_then_runtime_then_default() {
        let mut e = Estimator::new(ms(250));
        let a = Ticket::new("1", "alice", "python").with_content("h1");
        assert_eq!(e.estimate(&a), (ms(250), Basis::Default));
        e.record(&a, ms(900));
        assert_eq!(e.estimate(&a), (ms(900), Basis::Content));
        // Alice's other programs in Python: her history.
        let a2 = Ticket::new("2", "alice", "python").with_content("h2");
        assert_eq!(e.estimate(&a2), (ms(900), Basis::Client));
        // Bob's: the runtime's.
        let b = Ticket::new("3", "bob", "python").with_content("h3");
        assert_eq!(e.estimate(&b).1, Basis::Runtime);
        // Another runtime: the default.
        let c = Ticket::new("4", "bob", "c");
        assert_eq!(e.estimate(&c), (ms(250), Basis::Default));
        // The bound caps the estimate.
        let capped = Ticket::new("5", "alice", "python")
            .with_content("h1")
            .with_bound(ms(100));
        assert_eq!(e.estimate(&capped).0, ms(100));
    }

    #[test]
    fn means_follow_recent_runs() {
        let mut e = Estimator::new(ms(250));
        let t = Ticket::new("1", "a", "c").with_content("x");
        e.record(&t, ms(1000));
        for _ in 0..10 {
            e.record(&t, ms(10));
        }
        let (d, _) = e.estimate(&t);
        assert!(d < ms(20), "{d:?}");
    }

    #[test]
    fn history_is_bounded() {
        let mut b = Bounded::new();
        for i in 0..(MAX_ENTRIES + 10) {
            b.add(&i, ms(1), 0.5);
        }
        assert_eq!(b.map.len(), MAX_ENTRIES);
        assert!(b.get(&0).is_none());
        assert!(b.get(&(MAX_ENTRIES + 9)).is_some());
    }
}
