//! A load generator for comparing scheduling policies: Poisson arrivals of a mix of run
//! kinds from many clients, admitted and run through a [`Scheduler`] and a [`Worker`],
//! measured as completion time (arrival to result) and slowdown (completion ÷ the run's
//! own time in its slot). `cod bench` drives it with real programs; the tests drive it with
//! a fake worker in virtual time.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::scheduler::Scheduler;
use crate::ticket::Ticket;
use crate::worker::Worker;

/// One kind of run in the mix.
#[derive(Clone, Debug)]
pub struct Kind<J> {
    /// Its name in reports.
    pub name: String,
    /// Its share of arrivals (shares are normalised).
    pub share: f64,
    /// The ticket runs of this kind get (id and client are set per arrival).
    pub ticket: Ticket,
    /// The job.
    pub job: J,
}

/// The load.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Load {
    /// How long arrivals go on.
    #[serde(serialize_with = "secs")]
    pub duration: Duration,
    /// Arrivals per second, on average (exponential gaps).
    pub rate: f64,
    /// Distinct clients the arrivals come from, in turn.
    pub clients: usize,
    /// Seed of the arrival sequence: the same seed gives the same arrivals.
    pub seed: u64,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// What happened to one arrival.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Index of its kind.
    pub kind: usize,
    /// When it arrived, after the start.
    pub arrived: Duration,
    /// `None` when it was refused; else (completion time, time in its slot).
    pub done: Option<(Duration, Duration)>,
    /// Whether the output passed the kind's check.
    pub correct: bool,
}

/// A small deterministic generator (xorshift64*), enough for arrival times and kinds.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A uniform value in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        #[allow(clippy::cast_precision_loss)] // 53 bits: exact
        let f = v as f64 / (1u64 << 53) as f64;
        f
    }
}

/// The arrivals of `load` over `shares`: (time after start, kind index).
pub fn arrivals(load: &Load, shares: &[f64]) -> Vec<(Duration, usize)> {
    let total: f64 = shares.iter().sum();
    let mut rng = Rng::new(load.seed);
    let mut t = 0.0;
    let mut out = Vec::new();
    loop {
        t += -(1.0 - rng.next_f64()).ln() / load.rate;
        if t >= load.duration.as_secs_f64() {
            return out;
        }
        let mut pick = rng.next_f64() * total;
        let kind = shares
            .iter()
            .position(|s| {
                pick -= s;
                pick < 0.0
            })
            .unwrap_or(shares.len() - 1);
        out.push((Duration::from_secs_f64(t), kind));
    }
}

/// Runs each kind once, one after another, so that the scheduler's history knows them.
pub async fn seed<W: Worker + 'static>(
    scheduler: &Scheduler,
    worker: &Arc<W>,
    kinds: &[Kind<W::Job>],
) {
    for (i, k) in kinds.iter().enumerate() {
        let mut t = k.ticket.clone();
        t.id = crate::ticket::JobId(format!("seed-{i}"));
        let (tx, _rx) = mpsc::channel(64);
        let _ = scheduler.run(worker.as_ref(), &t, &k.job, tx).await;
    }
}

/// Offers `load` of `kinds` to `scheduler` and `worker`; `check` says whether an output
/// is right for its kind. Waits for every accepted run to finish.
pub async fn drive<W>(
    scheduler: &Scheduler,
    worker: &Arc<W>,
    kinds: &[Kind<W::Job>],
    load: &Load,
    check: impl Fn(usize, &W::Output) -> bool + Send + Sync + 'static,
) -> Vec<Sample>
where
    W: Worker + 'static,
    W::Job: Clone + 'static,
{
    let shares: Vec<f64> = kinds.iter().map(|k| k.share).collect();
    let plan = arrivals(load, &shares);
    let check = Arc::new(check);
    let start = Instant::now();
    let mut set = JoinSet::new();
    let mut refused = Vec::new();
    for (n, (at, kind)) in plan.into_iter().enumerate() {
        tokio::time::sleep_until(start + at).await;
        let k = &kinds[kind];
        let mut ticket = k.ticket.clone();
        ticket.id = crate::ticket::JobId(format!("{}-{n}", k.name));
        ticket.client = crate::ticket::ClientId(format!("user-{}", n % load.clients.max(1)));
        let prefer = worker.warm_slots(&ticket.runtime);
        let waiter = match scheduler.enqueue(ticket.clone(), &prefer) {
            Ok(w) => w,
            Err(_) => {
                refused.push(Sample {
                    kind,
                    arrived: at,
                    done: None,
                    correct: true,
                });
                continue;
            }
        };
        let (worker, job, check) = (worker.clone(), k.job.clone(), check.clone());
        let arrived = start + at;
        set.spawn(async move {
            let mut permit = waiter.await;
            let began = Instant::now();
            let (tx, _rx) = mpsc::channel(64);
            let out = worker.run(&job, permit.slot(), tx).await;
            let held = began.elapsed();
            permit.complete(&ticket);
            drop(permit);
            Sample {
                kind,
                arrived: at,
                done: Some((arrived.elapsed(), held)),
                correct: check(kind, &out),
            }
        });
    }
    let mut samples = refused;
    while let Some(s) = set.join_next().await {
        samples.push(s.expect("a load task does not panic"));
    }
    samples.sort_by_key(|s| s.arrived);
    samples
}

/// The `q`-quantile (0..=1) of `values` (nearest rank); `None` when empty.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// Completion times (seconds) of the finished runs of the kinds in `which`.
pub fn completions(samples: &[Sample], which: &[usize]) -> Vec<f64> {
    samples
        .iter()
        .filter(|s| which.contains(&s.kind))
        .filter_map(|s| s.done.map(|(c, _)| c.as_secs_f64()))
        .collect()
}

/// Slowdowns (completion ÷ time in the slot) of the finished runs of the kinds in `which`.
pub fn slowdowns(samples: &[Sample], which: &[usize]) -> Vec<f64> {
    samples
        .iter()
        .filter(|s| which.contains(&s.kind))
        .filter_map(|s| s.done)
        .map(|(c, h)| c.as_secs_f64() / h.as_secs_f64().max(1e-6))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{Policy, SchedulerConfig};
    use crate::worker::WorkerEvent;

    /// Runs take exactly their job's length in virtual time.
    struct Sleeper;

    impl Worker for Sleeper {
        type Job = u64;
        type Output = u64;

        fn warm_slots(&self, _: &str) -> Vec<u32> {
            Vec::new()
        }

        async fn run(&self, ms: &u64, _: u32, _: mpsc::Sender<WorkerEvent>) -> u64 {
            tokio::time::sleep(Duration::from_millis(*ms)).await;
            *ms
        }
    }

    fn kinds() -> Vec<Kind<u64>> {
        let k = |name: &str, share, ms| Kind {
            name: name.into(),
            share,
            ticket: Ticket::new("", "", "x").with_content(name),
            job: ms,
        };
        vec![k("short", 0.8, 20), k("long", 0.2, 1000)]
    }

    #[test]
    fn arrivals_follow_rate_and_shares() {
        let load = Load {
            duration: Duration::from_secs(100),
            rate: 10.0,
            clients: 1,
            seed: 7,
        };
        let a = arrivals(&load, &[0.8, 0.2]);
        assert!((900..1100).contains(&a.len()), "{}", a.len());
        let long = a.iter().filter(|(_, k)| *k == 1).count();
        assert!((150..250).contains(&long), "{long}");
        assert_eq!(
            a,
            arrivals(&load, &[0.8, 0.2]),
            "the same seed, the same arrivals"
        );
        assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0], 0.5), Some(2.0));
        assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0], 0.99), Some(4.0));
    }

    /// The scheduler benchmark in virtual time: 80 % runs of 20 ms, 20 % of 1 s, at 1.5× the
    /// capacity of 2 slots. Shortest-first with aging and a bounded wait beats FIFO.
    #[tokio::test(start_paused = true)]
    async fn sjf_with_aging_beats_fifo_on_the_mixed_overload() {
        let capacity = 2.0 / (0.8 * 0.020 + 0.2 * 1.0);
        let load = Load {
            duration: Duration::from_secs(60),
            rate: 1.5 * capacity,
            clients: 200,
            seed: 1,
        };
        let worker = Arc::new(Sleeper);
        let mut fifo = SchedulerConfig::new(2, 64);
        fifo.policy = Policy::Fifo;
        let mut sjf = SchedulerConfig::new(2, 64);
        sjf.max_wait = Duration::from_secs(2);
        let mut results = Vec::new();
        for cfg in [fifo, sjf] {
            let s = Scheduler::with_config(cfg);
            seed(&s, &worker, &kinds()).await;
            let samples = drive(&s, &worker, &kinds(), &load, |k, out| *out == [20, 1000][k]).await;
            assert!(samples.iter().all(|s| s.correct));
            let p99 = quantile(&completions(&samples, &[0]), 0.99).unwrap();
            let slow = quantile(&slowdowns(&samples, &[1]), 0.5).unwrap();
            results.push((p99, slow));
        }
        let ((fifo_p99, fifo_slow), (sjf_p99, sjf_slow)) = (results[0], results[1]);
        assert!(
            sjf_p99 <= fifo_p99 / 5.0,
            "short p99: sjf {sjf_p99:.3} s vs fifo {fifo_p99:.3} s"
        );
        assert!(
            sjf_slow <= 3.0,
            "long slowdown p50 {sjf_slow:.2} (fifo {fifo_slow:.2})"
        );
    }
}
