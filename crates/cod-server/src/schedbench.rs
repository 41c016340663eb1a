//! The scheduler benchmark behind `cod bench`: a mixed load at 1.5× capacity (80 % short
//! Python and C runs, 20 % runs of about 1 s of CPU) offered to cod's scheduler (shortest
//! expected first with aging, fair share, a bounded wait), then — the same arrivals, in the
//! same run — to a plain FIFO queue. Real programs through the [`LocalWorker`].
//!
//! Reported: p50/p99 completion time (arrival to result) of the short runs, the slowdown
//! of the long runs (completion ÷ their own time in a slot), how many runs each refused,
//! and the ratios. Goals: short p99 at most 1/5 of FIFO's; long slowdown at
//! most 3×.

use std::sync::Arc;
use std::time::Duration;

use cod_core::{RunRequest, RunResult, Status};
use cod_runtime::Executor;
use cod_sched::loadtest::{self, Kind, Load, Sample};
use cod_sched::{Policy, Scheduler, SchedulerConfig, Ticket};
use serde::Serialize;

use crate::worker::{LocalWorker, WorkItem};

/// Options of the scheduler benchmark.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long arrivals go on, per policy.
    pub duration: Duration,
    /// Offered load, as a multiple of the slots' capacity.
    pub load: f64,
    /// Worker slots (0: one per CPU).
    pub workers: usize,
    /// CPU time of a long run.
    pub long_cpu: Duration,
    /// cod's `scheduler.max_wait` in the benchmark (the FIFO queue has none).
    pub max_wait: Duration,
    /// Distinct clients the arrivals come from.
    pub clients: usize,
    /// Seed of the arrival sequence.
    pub seed: u64,
    /// Runs that may wait (`server.queue`), for both policies.
    pub queue: usize,
    /// cod's `scheduler.aging`.
    pub aging: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            duration: Duration::from_secs(60),
            load: 1.5,
            workers: 0,
            long_cpu: Duration::from_secs(1),
            max_wait: Duration::from_secs(2),
            clients: 200,
            seed: 1,
            queue: cod_core::config::DEFAULT_QUEUE,
            aging: cod_core::config::DEFAULT_AGING,
        }
    }
}

impl Options {
    /// A few seconds per policy, with shorter long runs: for tests and a quick look.
    pub fn quick() -> Options {
        Options {
            duration: Duration::from_secs(4),
            long_cpu: Duration::from_millis(300),
            max_wait: Duration::from_millis(600),
            ..Options::default()
        }
    }
}

/// One policy's results.
#[derive(Debug, Serialize)]
pub struct PolicyReport {
    /// `fifo` or `sjf`.
    pub policy: &'static str,
    /// Runs offered.
    pub offered: usize,
    /// Runs accepted (and completed).
    pub accepted: usize,
    /// Runs refused with a 429.
    pub refused: usize,
    /// Accepted runs whose output was not the expected one (must be 0).
    pub wrong: usize,
    /// Short runs: median completion time, ms.
    pub short_p50_ms: f64,
    /// Short runs: 99th percentile of completion time, ms.
    pub short_p99_ms: f64,
    /// Long runs: median slowdown (completion ÷ own time in the slot).
    pub long_slowdown_p50: f64,
    /// Long runs: 99th percentile of the slowdown.
    pub long_slowdown_p99: f64,
    /// Long runs: median completion time, ms.
    pub long_p50_ms: f64,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The load offered to each policy.
    pub load: Load,
    /// Worker slots.
    pub workers: usize,
    /// Measured mean time in a slot, ms: short Python, short C, long.
    pub service_ms: [f64; 3],
    /// Runs per second the slots can take at that mix.
    pub capacity: f64,
    /// cod's aging factor.
    pub aging: f64,
    /// cod's `max_wait`, ms.
    pub max_wait_ms: u64,
    /// Runs that may wait, both policies.
    pub queue: usize,
    /// The plain FIFO queue.
    pub fifo: PolicyReport,
    /// cod's scheduler.
    pub sjf: PolicyReport,
    /// sjf short p99 ÷ fifo short p99 (goal ≤ 0.2).
    pub short_p99_ratio: f64,
}

const SHORT_PY: &str = "print(sum(range(20000)))";
const SHORT_C: &str = "#include <stdio.h>\nint main(void){long s=0;for(long i=0;i<200000;i++)s+=i;printf(\"%ld\\n\",s);return 0;}";

fn long_py(iterations: u64) -> String {
    format!("n = 0\nfor i in range({iterations}):\n    n += i\nprint(n % 1000)")
}

fn item(executor: &Executor, language: &str, source: &str) -> Result<WorkItem, String> {
    let job = executor
        .prepare(&RunRequest {
            language: language.into(),
            source: Some(source.into()),
            ..RunRequest::default()
        })
        .map_err(|e| e.to_string())?;
    Ok(WorkItem::from_job(&job))
}

/// Runs `item` once in a free slot of `s`.
async fn once(s: &Scheduler, worker: &LocalWorker, item: &WorkItem) -> RunResult {
    let t = Ticket::new(item.id.clone(), "bench", item.language.clone());
    let (tx, _rx) = tokio::sync::mpsc::channel(64);
    s.run(worker, &t, item, tx)
        .await
        .expect("an idle scheduler admits")
}

fn ms(v: Option<f64>) -> f64 {
    v.unwrap_or(f64::NAN) * 1e3
}

fn report(policy: &'static str, samples: &[Sample]) -> PolicyReport {
    let accepted = samples.iter().filter(|s| s.done.is_some()).count();
    PolicyReport {
        policy,
        offered: samples.len(),
        accepted,
        refused: samples.len() - accepted,
        wrong: samples
            .iter()
            .filter(|s| s.done.is_some() && !s.correct)
            .count(),
        short_p50_ms: ms(loadtest::quantile(
            &loadtest::completions(samples, &[0, 1]),
            0.5,
        )),
        short_p99_ms: ms(loadtest::quantile(
            &loadtest::completions(samples, &[0, 1]),
            0.99,
        )),
        long_slowdown_p50: loadtest::quantile(&loadtest::slowdowns(samples, &[2]), 0.5)
            .unwrap_or(f64::NAN),
        long_slowdown_p99: loadtest::quantile(&loadtest::slowdowns(samples, &[2]), 0.99)
            .unwrap_or(f64::NAN),
        long_p50_ms: ms(loadtest::quantile(
            &loadtest::completions(samples, &[2]),
            0.5,
        )),
    }
}

/// Calibrates the programs, measures what a slot takes of each, and offers the load to
/// FIFO and then to cod's scheduler, each with `workers` slots running on `executor`.
pub async fn measure(
    opts: &Options,
    workers: usize,
    executor: Arc<Executor>,
) -> Result<Report, String> {
    let worker = Arc::new(LocalWorker::new(executor.clone()));
    let idle = Scheduler::new(workers, 0);
    // Calibrate the long run to `long_cpu` of CPU.
    let probe_iters = 2_000_000;
    let probe = once(
        &idle,
        &worker,
        &item(&executor, "python", &long_py(probe_iters))?,
    )
    .await;
    if probe.run.status != Status::Ok {
        return Err(format!("the calibration run failed: {probe:?}"));
    }
    let per_iter = (probe.run.cpu_ms.max(1) as f64) / probe_iters as f64;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let iterations = (opts.long_cpu.as_secs_f64() * 1e3 / per_iter) as u64;
    let long_src = long_py(iterations);
    let expected_long = format!(
        "{}\n",
        (u128::from(iterations) * u128::from(iterations.saturating_sub(1)) / 2) % 1000
    );
    let items = [
        item(&executor, "python", SHORT_PY)?,
        item(&executor, "c", SHORT_C)?,
        item(&executor, "python", &long_src)?,
    ];
    let outputs = [
        format!("{}\n", (0..20_000u64).sum::<u64>()),
        format!("{}\n", (0..200_000u64).sum::<u64>()),
        expected_long,
    ];
    // The mean time each kind holds a slot (the C one compiles once, then is cached).
    let mut service = [0.0; 3];
    for (i, it) in items.iter().enumerate() {
        let mut total = 0.0;
        for _ in 0..4 {
            let t = std::time::Instant::now();
            let r = once(&idle, &worker, it).await;
            if r.run.stdout != outputs[i] {
                return Err(format!("kind {i} answered {r:?}"));
            }
            total += t.elapsed().as_secs_f64();
        }
        service[i] = total / 4.0;
    }
    let shares = [0.4, 0.4, 0.2];
    let mean: f64 = shares.iter().zip(service).map(|(s, t)| s * t).sum();
    #[allow(clippy::cast_precision_loss)]
    let capacity = workers as f64 / mean;
    let load = Load {
        duration: opts.duration,
        rate: opts.load * capacity,
        clients: opts.clients,
        seed: opts.seed,
    };
    let kinds: Vec<Kind<WorkItem>> = ["short-python", "short-c", "long-python"]
        .iter()
        .zip(items)
        .zip(shares)
        .map(|((name, item), share)| Kind {
            name: (*name).to_owned(),
            share,
            ticket: Ticket::new("", "", item.language.clone())
                .with_content(item.content_key())
                .with_bound(Duration::from_millis(item.limits.wall_ms)),
            job: item,
        })
        .collect();
    let queue = opts.queue;
    let mut fifo = SchedulerConfig::new(workers, queue);
    fifo.policy = Policy::Fifo;
    let mut sjf = SchedulerConfig::new(workers, queue);
    sjf.aging = opts.aging;
    sjf.max_wait = opts.max_wait;
    let mut results = Vec::new();
    for (name, cfg) in [("fifo", fifo), ("sjf", sjf.clone())] {
        tracing::info!(policy = name, rate = load.rate, duration = ?load.duration, workers, "scheduler benchmark");
        let s = Scheduler::with_config(cfg);
        loadtest::seed(&s, &worker, &kinds).await;
        let outputs = outputs.clone();
        let samples = loadtest::drive(&s, &worker, &kinds, &load, move |k, r: &RunResult| {
            r.run.status == Status::Ok && r.run.stdout == outputs[k]
        })
        .await;
        results.push(report(name, &samples));
    }
    let sjf_report = results.pop().expect("two policies");
    let fifo_report = results.pop().expect("two policies");
    Ok(Report {
        load,
        workers,
        service_ms: service.map(|s| s * 1e3),
        capacity,
        aging: sjf.aging,
        max_wait_ms: u64::try_from(opts.max_wait.as_millis()).unwrap_or(u64::MAX),
        queue,
        short_p99_ratio: sjf_report.short_p99_ms / fifo_report.short_p99_ms,
        fifo: fifo_report,
        sjf: sjf_report,
    })
}

/// The report as text: a header and a Markdown table.
pub fn table(r: &Report) -> String {
    let mut out = format!(
        "scheduler: {} slots, mixed load at {:.1} runs/s ({:.2}× capacity of {:.1} runs/s) for {:?} per policy\n",
        r.workers,
        r.load.rate,
        r.load.rate / r.capacity,
        r.capacity,
        r.load.duration
    );
    out += &format!(
        "in a slot: short python {:.0} ms, short c {:.0} ms, long {:.0} ms; queue {}, sjf aging {}, max_wait {} ms\n\n",
        r.service_ms[0], r.service_ms[1], r.service_ms[2], r.queue, r.aging, r.max_wait_ms
    );
    out += "| policy | offered | accepted | refused | wrong | short p50 | short p99 | long slowdown p50 | long slowdown p99 |\n";
    out += "|---|---|---|---|---|---|---|---|---|\n";
    for p in [&r.fifo, &r.sjf] {
        out += &format!(
            "| {} | {} | {} | {} | {} | {:.0} ms | {:.0} ms | {:.2}× | {:.2}× |\n",
            p.policy,
            p.offered,
            p.accepted,
            p.refused,
            p.wrong,
            p.short_p50_ms,
            p.short_p99_ms,
            p.long_slowdown_p50,
            p.long_slowdown_p99
        );
    }
    out += &format!(
        "\nshort p99, sjf ÷ fifo: {:.3} (goal ≤ 0.20); long slowdown p50 with sjf: {:.2}× (goal ≤ 3×)\n",
        r.short_p99_ratio, r.sjf.long_slowdown_p50
    );
    out
}
