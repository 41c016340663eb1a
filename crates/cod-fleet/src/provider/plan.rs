//! A provider that runs nothing: a fleet in memory that follows every decision at once.
//! `cod fleet --dry-run` uses it to show what the policy would do with a stream of loads.

use std::sync::Mutex;

use super::{Provider, ProviderError};
use crate::policy::Decision;
use crate::worker::{WorkerState, WorkerView};

/// A pretend fleet: started workers are ready at once, drained ones gone at once.
#[derive(Debug)]
pub struct PlanProvider {
    slots: u32,
    state: Mutex<(u64, Vec<WorkerView>)>,
}

impl PlanProvider {
    /// A pretend fleet of `initial` ready workers of `slots` slots each.
    pub fn new(initial: u32, slots: u32) -> PlanProvider {
        let workers = (0..u64::from(initial)).map(|n| worker(n, slots)).collect();
        PlanProvider {
            slots,
            state: Mutex::new((u64::from(initial), workers)),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut (u64, Vec<WorkerView>)) -> T) -> T {
        let mut g = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g)
    }
}

fn worker(n: u64, slots: u32) -> WorkerView {
    WorkerView::new(format!("plan-{n:05}"), WorkerState::Ready).with_slots(slots, 0)
}

impl Provider for PlanProvider {
    fn name(&self) -> &'static str {
        "plan"
    }

    async fn workers(&self) -> Result<Vec<WorkerView>, ProviderError> {
        Ok(self.with(|(_, w)| w.clone()))
    }

    async fn apply(&self, decision: &Decision) -> Result<(), ProviderError> {
        let slots = self.slots;
        self.with(|(next, workers)| {
            workers.retain(|w| !decision.drain.contains(&w.id));
            for _ in 0..decision.start {
                workers.push(worker(*next, slots));
                *next += 1;
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Autoscaler, Observation, PolicyConfig};
    use crate::worker::WorkerId;

    #[tokio::test]
    async fn follows_decisions_at_once() {
        let p = PlanProvider::new(2, 64);
        let mut policy = Autoscaler::new(PolicyConfig::default()).expect("valid");
        let obs = Observation {
            arrival_rate: 100.0,
            mean_run: std::time::Duration::from_secs(10),
            workers: p.workers().await.expect("listed"),
            ..Observation::default()
        };
        let d = policy.decide(&obs);
        p.apply(&d).await.expect("applied");
        let w = p.workers().await.expect("listed");
        assert_eq!(w.len(), 18);
        assert!(
            w.iter()
                .all(|w| w.state == WorkerState::Ready && w.slots == 64)
        );
        let gone = WorkerId::from("plan-00000");
        let mut d2 = d.clone();
        d2.start = 0;
        d2.drain = vec![gone.clone()];
        p.apply(&d2).await.expect("applied");
        let w = p.workers().await.expect("listed");
        assert_eq!(w.len(), 17);
        assert!(w.iter().all(|w| w.id != gone));
    }
}
