//! Worker slots and the bounded queue in front of them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A run was refused because the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{queued} runs are already waiting; retry after {retry_after:?}")]
pub struct Rejected {
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
    /// Runs refused so far.
    pub rejected: u64,
}

#[derive(Debug)]
struct Inner {
    slots: Arc<Semaphore>,
    free: Mutex<Vec<u32>>,
    workers: usize,
    queue: usize,
    waiting: AtomicUsize,
    rejected: AtomicU64,
    /// Exponentially weighted mean of how long a slot is held, microseconds.
    mean_hold_us: AtomicU64,
}

/// Hands out worker slots in arrival order, refusing runs when the queue is full.
#[derive(Debug, Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

/// A held worker slot; dropping it frees the slot for the next run.
#[derive(Debug)]
pub struct Permit {
    slot: u32,
    since: Instant,
    inner: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

impl Permit {
    /// The slot number, below the number of workers.
    pub fn slot(&self) -> u32 {
        self.slot
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let held = u64::try_from(self.since.elapsed().as_micros()).unwrap_or(u64::MAX);
        let old = self.inner.mean_hold_us.load(Ordering::Relaxed);
        // Weight 1/8 for the newest sample.
        let new = if old == 0 {
            held
        } else {
            old - old / 8 + held / 8
        };
        self.inner.mean_hold_us.store(new, Ordering::Relaxed);
        self.inner
            .free
            .lock()
            .expect("the free list is never poisoned: no code panics while holding it")
            .push(self.slot);
    }
}

/// Decrements the waiting count when a waiter stops waiting, admitted or cancelled.
struct Waiting<'a>(&'a AtomicUsize);
impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    /// `workers` slots (at least 1) and room for `queue` waiting runs.
    pub fn new(workers: usize, queue: usize) -> Admission {
        let workers = workers.max(1);
        let slots = u32::try_from(workers).expect("workers fits in u32");
        Admission {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(workers)),
                free: Mutex::new((0..slots).rev().collect()),
                workers,
                queue,
                waiting: AtomicUsize::new(0),
                rejected: AtomicU64::new(0),
                mean_hold_us: AtomicU64::new(0),
            }),
        }
    }

    /// Waits for a slot, or refuses at once when `queue` runs are already waiting.
    /// Cancelling the returned future (dropping it) leaves the queue.
    pub async fn acquire(&self) -> Result<Permit, Rejected> {
        let inner = &self.inner;
        // Fast path: a free slot and nobody waiting.
        let permit = match inner.slots.clone().try_acquire_owned() {
            Ok(p) if inner.waiting.load(Ordering::Acquire) == 0 => p,
            other => {
                drop(other);
                let queued = inner.waiting.fetch_add(1, Ordering::AcqRel);
                let guard = Waiting(&inner.waiting);
                if queued >= inner.queue {
                    drop(guard);
                    inner.rejected.fetch_add(1, Ordering::Relaxed);
                    return Err(Rejected {
                        queued,
                        retry_after: self.retry_after(queued),
                    });
                }
                let p = inner
                    .slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                drop(guard);
                p
            }
        };
        let slot = inner
            .free
            .lock()
            .expect("the free list is never poisoned")
            .pop()
            .expect("a semaphore permit always has a free slot");
        Ok(Permit {
            slot,
            since: Instant::now(),
            inner: inner.clone(),
            _permit: permit,
        })
    }

    /// Estimated wait before `queued` runs ahead have gone through the workers.
    fn retry_after(&self, queued: usize) -> Duration {
        let mean =
            Duration::from_micros(self.inner.mean_hold_us.load(Ordering::Relaxed).max(100_000));
        let rounds = u32::try_from((queued + 1).div_ceil(self.inner.workers)).unwrap_or(u32::MAX);
        (mean * rounds).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// Current counts.
    pub fn stats(&self) -> Stats {
        let i = &self.inner;
        Stats {
            workers: i.workers,
            running: i.workers - i.slots.available_permits(),
            queued: i.waiting.load(Ordering::Acquire),
            queue: i.queue,
            rejected: i.rejected.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_are_exclusive_and_reused() {
        let a = Admission::new(2, 4);
        let p1 = a.acquire().await.unwrap();
        let p2 = a.acquire().await.unwrap();
        assert_ne!(p1.slot(), p2.slot());
        assert!(p1.slot() < 2 && p2.slot() < 2);
        assert_eq!(a.stats().running, 2);
        let freed = p1.slot();
        drop(p1);
        let p3 = a.acquire().await.unwrap();
        assert_eq!(p3.slot(), freed);
    }

    #[tokio::test]
    async fn full_queue_is_refused_with_retry_after() {
        let a = Admission::new(1, 2);
        let held = a.acquire().await.unwrap();
        let w1 = tokio::spawn({
            let a = a.clone();
            async move { a.acquire().await.map(|p| p.slot()) }
        });
        let w2 = tokio::spawn({
            let a = a.clone();
            async move { a.acquire().await.map(|p| p.slot()) }
        });
        // Wait (bounded) until both are queued.
        tokio::time::timeout(Duration::from_secs(5), async {
            while a.stats().queued < 2 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("both waiters queue up");
        let err = a.acquire().await.unwrap_err();
        assert_eq!(err.queued, 2);
        assert!(err.retry_after >= Duration::from_secs(1));
        assert_eq!(a.stats().rejected, 1);
        drop(held);
        assert_eq!(w1.await.unwrap(), Ok(0));
        assert_eq!(w2.await.unwrap(), Ok(0));
        assert_eq!(a.stats().queued, 0);
    }

    #[tokio::test]
    async fn cancelled_waiter_leaves_the_queue() {
        let a = Admission::new(1, 1);
        let held = a.acquire().await.unwrap();
        let waiter = tokio::spawn({
            let a = a.clone();
            async move { a.acquire().await.map(|p| p.slot()) }
        });
        tokio::time::timeout(Duration::from_secs(5), async {
            while a.stats().queued < 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the waiter queues up");
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(a.stats().queued, 0);
        drop(held);
        assert!(a.acquire().await.is_ok());
    }
}
