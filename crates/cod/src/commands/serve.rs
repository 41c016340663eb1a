//! `cod serve`: the embedded single-node service.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cod_core::Config;
use cod_core::config::SchedulerPolicy;
use cod_runtime::Executor;
use cod_sched::{ClientLimits, Policy, Scheduler, SchedulerConfig, Ticket};
use cod_server::{AppState, ServerOptions};
use tracing::info;

use crate::cli::ServeArgs;

/// How long running requests may finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Runs a gateway keeps in flight through the fleet at once (its scheduler's slots).
const GATEWAY_FLOW: usize = 1024;
/// How often the metrics exporter drains its histograms.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// The scheduler `config` describes, with `workers` slots.
pub(crate) fn scheduler_config(config: &cod_core::Config, workers: usize) -> SchedulerConfig {
    let s = &config.scheduler;
    SchedulerConfig {
        workers,
        queue: config.server.queue,
        queue_cpu: s.queue_cpu,
        max_wait: s.max_wait,
        policy: match s.policy {
            SchedulerPolicy::Sjf => Policy::Sjf,
            SchedulerPolicy::Fifo => Policy::Fifo,
        },
        aging: s.aging,
        default_expected: s.default_expected,
        client: ClientLimits {
            rate: s.client_rate,
            burst: s.client_burst,
            concurrency: s.client_concurrency,
        },
    }
}

pub(crate) fn serve(mut config: Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    if let Some(l) = args.listen {
        config.server.listen = l;
    }
    if let Some(w) = args.workers {
        config.server.workers = w;
    }
    if let Some(q) = args.queue {
        config.server.queue = q;
    }
    if let Some(d) = args.languages_dir {
        config.languages.dir = Some(d);
    }
    config.validate()?;
    let workers = match config.server.workers {
        0 => super::cpus(),
        n => n,
    };
    // The helper is started before the async runtime: it is a separate process either way,
    // but spawning it first keeps start-up errors simple.
    let registry = super::load_registry(&config)?;
    let gateway = args.nats.clone();
    let local_runs = gateway.is_none() || args.local_worker;
    let jail = if local_runs {
        super::start_jail(&config, workers, Some(&registry))?
    } else {
        super::deferred_jail(&config)?
    };
    if gateway.is_some() {
        // Compiles happen on the workers, with the runs.
        config.sessions.compile_ahead = false;
    }
    for l in registry.all() {
        match &l.unavailable {
            None => info!(language = %l.name, version = %l.version, "language available"),
            Some(why) => tracing::warn!(language = %l.name, reason = %why, "language unavailable"),
        }
    }
    let cache = super::compile_cache(&config)?;
    // A gateway that runs nothing keeps nothing warm (and so never starts the sandbox).
    let pool = if local_runs {
        super::start_pool(&config, &jail, &registry)
    } else {
        None
    };
    let mut executor = Executor::new(jail.clone(), registry, config.limits).with_cache(cache);
    if let Some(pool) = pool {
        executor = executor.with_pool(pool);
    }
    let executor = Arc::new(executor);
    let state = AppState::new(
        executor,
        Scheduler::with_config(scheduler_config(
            &config,
            if gateway.is_some() {
                GATEWAY_FLOW
            } else {
                workers
            },
        )),
        usize::try_from(config.server.max_body.get()).unwrap_or(usize::MAX),
    )
    .with_options(&ServerOptions {
        jobs: config.jobs.clone(),
        auth: config.auth.clone(),
    })
    .with_editor(
        cod_server::ws::Editor::new(cod_server::ws::EditorConfig::from_config(&config.sessions))
            .context("sessions")?,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.server.runtime_threads(super::cpus()))
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        // Listen for SIGTERM and SIGINT before announcing the address: a signal that arrives
        // in between must stop the server cleanly, not kill it.
        let shutdown = shutdown_signal().context("listening for SIGTERM and SIGINT")?;
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("listening on {}", config.server.listen))?;
        let addr = listener.local_addr()?;
        let drain = tokio_util::sync::CancellationToken::new();
        let mut local_worker = None;
        let state = match &gateway {
            None => state,
            Some(url) => {
                let bus = cod_fleet::bus::Bus::connect(url, "cod gateway", super::bus_config(&config))
                    .await
                    .with_context(|| format!("connecting to {url}"))?;
                info!(nats = %url, local_worker = args.local_worker, "fleet gateway: runs go to workers through NATS");
                if args.local_worker {
                    let runtimes = state
                        .executor
                        .registry()
                        .available_names();
                    let host = cod_server::fleet::host_name();
                    let opts = cod_server::fleet::WorkerOptions {
                        id: format!("{host}-{}-local", std::process::id()),
                        host,
                        runtimes,
                        slots: (0..u32::try_from(workers).context("too many workers")?).collect(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        prebuild: true,
                    };
                    local_worker = Some(tokio::spawn(cod_server::fleet::serve_jobs(
                        bus.clone(),
                        state.executor.clone(),
                        opts,
                        drain.clone(),
                    )));
                }
                state.with_remote(cod_server::fleet::RemoteWorker::new(bus, config.server.queue))
            }
        };
        info!(%addr, workers, queue = config.server.queue, cgroup = ?jail.cgroup_mode(), "cod is serving on http://{addr}/");
        // Build what makes compiles faster in the background, one worker slot at a time,
        // like any run; compiles use it once it is there.
        let prebuilds = tokio::spawn({
            let (st, here) = (state.clone(), gateway.is_none());
            // A gateway's local worker builds its own; a plain gateway compiles nothing.
            async move {
                if here {
                    prebuild_all(st).await;
                }
            }
        });
        // Purges expired editor sessions and compacts idle ones, until shutdown.
        let sessions = tokio::spawn(state.editor.clone().maintain());
        cod_server::metrics::install();
        let upkeep = tokio::spawn(cod_server::metrics::upkeep(METRICS_UPKEEP));
        if config.jobs.callback_secret.is_empty() {
            info!("jobs.callback_secret is not set: callbacks are signed with a random key");
        }
        let jobs = state.jobs.clone();
        cod_server::serve(listener, cod_server::app(state), shutdown, SHUTDOWN_GRACE)
            .await
            .context("serving HTTP")?;
        // Accepted asynchronous jobs (and their callbacks) finish before cod exits.
        if jobs.active() > 0 {
            info!(jobs = jobs.active(), "waiting for accepted jobs to finish");
            if !jobs.drain(SHUTDOWN_GRACE).await {
                tracing::warn!(jobs = jobs.active(), "shutdown grace period over; jobs left unfinished");
            }
        }
        drain.cancel();
        if let Some(w) = local_worker {
            info!("draining the local worker");
            let _ = w.await;
        }
        prebuilds.abort();
        sessions.abort();
        upkeep.abort();
        info!("stopped");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Builds every language's prebuild that is missing, each holding a worker slot.
async fn prebuild_all(state: AppState) {
    for lang in state.executor.registry().all() {
        if !lang.prebuild_missing() {
            continue;
        }
        let ticket = Ticket::new(format!("prebuild-{}", lang.name), "cod", lang.name.clone());
        let Ok(permit) = state.scheduler.acquire(ticket, &[]).await else {
            continue;
        };
        let started = std::time::Instant::now();
        match state.executor.prebuild(lang, permit.slot()).await {
            Ok(true) => {
                info!(language = %lang.name, took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX), "prebuild ready")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(language = %lang.name, error = %e, "prebuild failed; compiles run without it")
            }
        }
    }
}

/// Registers for SIGINT and SIGTERM now; the returned future completes on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        info!("shutting down: finishing running requests");
    })
}
