//! Prometheus metrics, served at `GET /metrics` from the router (no listener of its own).
//!
//! Events (a run started, finished, was refused) are recorded through the `metrics` facade
//! as they happen; levels (queue depth per runtime, running jobs, CPU and memory in use,
//! the warm pool) are read from the scheduler, the job table and the pool at each scrape.

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use cod_core::RunResult;
use cod_sched::RejectReason;
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::AppState;

/// Histogram buckets of waits and run times, seconds.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder as the process's metrics recorder (once; later calls
/// return the same handle). `None` when another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .expect("the buckets are not empty");
            match builder.install_recorder() {
                Ok(h) => {
                    describe();
                    Some(h)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: another recorder is installed; /metrics stays empty");
                    None
                }
            }
        })
        .as_ref()
}

/// Drains histograms every `every` (the exporter needs it when nobody scrapes).
pub async fn upkeep(every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if let Some(h) = install() {
            h.run_upkeep();
        }
    }
}

fn describe() {
    describe_gauge!("cod_workers", "Worker slots (runs at once, one CPU each).");
    describe_gauge!("cod_queue_depth", "Runs waiting for a slot, per runtime.");
    describe_gauge!("cod_queue_runs", "Runs waiting for a slot.");
    describe_gauge!(
        "cod_queue_cpu_seconds",
        Unit::Seconds,
        "Expected CPU time of the waiting runs."
    );
    describe_gauge!("cod_running_jobs", "Runs holding a slot.");
    describe_gauge!(
        "cod_cpus_in_use",
        "CPUs reserved by running runs (one each)."
    );
    describe_gauge!(
        "cod_running_cpu_seconds",
        Unit::Seconds,
        "CPU time used so far by the running runs (from their live usage reports)."
    );
    describe_gauge!(
        "cod_running_memory_bytes",
        Unit::Bytes,
        "Memory of the running runs (peak so far, from their live usage reports)."
    );
    describe_histogram!(
        "cod_job_wait_seconds",
        Unit::Seconds,
        "Time runs waited for a slot, per runtime."
    );
    describe_histogram!(
        "cod_job_run_seconds",
        Unit::Seconds,
        "Time runs held their slot, per runtime."
    );
    describe_counter!("cod_runs_total", "Finished runs, per language and verdict.");
    describe_counter!("cod_rejected_total", "Runs refused with 429, per reason.");
    describe_counter!(
        "cod_cancelled_total",
        "Runs cancelled (by id or by a client that went away)."
    );
    describe_counter!(
        "cod_compile_cache_hits_total",
        "Runs of compiled languages whose program came from the compile cache."
    );
    describe_counter!(
        "cod_compile_cache_misses_total",
        "Runs of compiled languages that compiled."
    );
    describe_counter!(
        "cod_pool_hits_total",
        "Runs that found their runtime warm in their slot."
    );
    describe_counter!(
        "cod_pool_misses_total",
        "Runs of warm-able languages that ran cold."
    );
    describe_gauge!("cod_pool_slots", "Slots keeping a language warm.");
    describe_gauge!(
        "cod_pool_idle_memory_bytes",
        Unit::Bytes,
        "Memory held by idle warm runtimes, per language."
    );
    describe_gauge!(
        "cod_pool_memory_budget_bytes",
        Unit::Bytes,
        "Most memory idle warm runtimes may hold."
    );
    describe_counter!("cod_callbacks_total", "Callback deliveries, per outcome.");
}

/// A run got its slot after waiting `waited`.
pub(crate) fn started(runtime: &str, waited: Duration) {
    histogram!("cod_job_wait_seconds", "runtime" => runtime.to_owned())
        .record(waited.as_secs_f64());
}

/// A run held its slot for `held` and ended with `result`.
pub(crate) fn finished(runtime: &str, held: Duration, result: &RunResult) {
    histogram!("cod_job_run_seconds", "runtime" => runtime.to_owned()).record(held.as_secs_f64());
    counter!(
        "cod_runs_total",
        "language" => result.language.clone(),
        "status" => result.run.status.as_str()
    )
    .increment(1);
    if let Some(c) = &result.compile {
        let name = if c.cached {
            "cod_compile_cache_hits_total"
        } else {
            "cod_compile_cache_misses_total"
        };
        counter!(name, "language" => result.language.clone()).increment(1);
    }
}

/// A run was refused.
pub(crate) fn rejected(reason: RejectReason) {
    counter!("cod_rejected_total", "reason" => reason.as_str()).increment(1);
}

/// A run was cancelled.
pub(crate) fn cancelled() {
    counter!("cod_cancelled_total").increment(1);
}

/// A callback delivery ended with `outcome` (`delivered` or `failed`).
pub(crate) fn callback(outcome: &'static str) {
    counter!("cod_callbacks_total", "outcome" => outcome).increment(1);
}

/// Sets the levels read at scrape time.
fn levels(st: &AppState) {
    let s = st.scheduler.stats();
    #[allow(clippy::cast_precision_loss)]
    {
        gauge!("cod_workers").set(s.workers as f64);
        gauge!("cod_queue_runs").set(s.queued as f64);
        gauge!("cod_running_jobs").set(s.running as f64);
        gauge!("cod_cpus_in_use").set(s.running as f64);
    }
    gauge!("cod_queue_cpu_seconds").set(s.queued_cpu.as_secs_f64());
    let depths = st.scheduler.queue_depths();
    for lang in st.executor.registry().all() {
        let n = depths.get(&lang.name).copied().unwrap_or(0);
        #[allow(clippy::cast_precision_loss)]
        gauge!("cod_queue_depth", "runtime" => lang.name.clone()).set(n as f64);
    }
    let (_, cpu_ms, memory_kb) = st.jobs.running_usage();
    #[allow(clippy::cast_precision_loss)]
    {
        gauge!("cod_running_cpu_seconds").set(cpu_ms as f64 / 1000.0);
        gauge!("cod_running_memory_bytes").set((memory_kb * 1024) as f64);
    }
    if let Some(pool) = st.executor.pool() {
        let p = pool.stats();
        #[allow(clippy::cast_precision_loss)]
        gauge!("cod_pool_memory_budget_bytes").set(p.budget as f64);
        for r in p.runtimes {
            let l = r.language.clone();
            counter!("cod_pool_hits_total", "language" => l.clone()).absolute(r.hits);
            counter!("cod_pool_misses_total", "language" => l.clone()).absolute(r.misses);
            gauge!("cod_pool_slots", "language" => l.clone()).set(f64::from(r.slots));
            #[allow(clippy::cast_precision_loss)]
            gauge!("cod_pool_idle_memory_bytes", "language" => l).set(r.idle_memory as f64);
        }
    }
}

/// `GET /metrics`: the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain"))
)]
pub async fn render(State(st): State<AppState>) -> impl IntoResponse {
    let body = match install() {
        Some(h) => {
            levels(&st);
            h.run_upkeep();
            h.render()
        }
        None => String::new(),
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}
