//! `cod worker`: a fleet worker. Takes runs of its runtimes from NATS JetStream and runs
//! them in this machine's sandbox, with the same pool and compile cache as `cod serve`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use cod_core::Config;
use cod_fleet::bus::Bus;
use cod_runtime::Executor;
use cod_server::fleet::{WorkerOptions, serve_jobs};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::cli::WorkerArgs;

/// Holds this process, and so the sandbox helper and the threads it starts later, to
/// `cpus`, each of which it must already be allowed.
fn keep_to_cpus(cpus: &[usize]) -> anyhow::Result<()> {
    use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
    let allowed = sched_getaffinity(None).context("reading the CPUs this process may use")?;
    let mut set = CpuSet::new();
    for &c in cpus {
        anyhow::ensure!(
            allowed.is_set(c),
            "--cpu-list: CPU {c} is not one this process may use (it may use {})",
            super::cpu_list_text(&allowed)
        );
        set.set(c);
    }
    sched_setaffinity(None, &set).context("--cpu-list: keeping to those CPUs")?;
    Ok(())
}

pub(crate) fn worker(mut config: Config, args: WorkerArgs) -> anyhow::Result<ExitCode> {
    if let Some(d) = args.languages_dir {
        config.languages.dir = Some(d);
    }
    config.validate()?;
    if let Some(list) = &args.cpu_list {
        keep_to_cpus(&list.0)?;
    }
    let slots = match args.slots.unwrap_or(config.server.workers) {
        0 => super::cpus(),
        n => n,
    };
    if args.instance > 0 {
        anyhow::ensure!(
            slots <= 1000,
            "--instance: a worker sharing its host takes at most 1000 slots (asked {slots})"
        );
        config.sandbox.uid_base = args
            .instance
            .checked_mul(1000)
            .and_then(|o| config.sandbox.uid_base.checked_add(o))
            .context("--instance: the uid range overflows")?;
    }
    let registry = super::load_registry(&config)?;
    let runtimes = if args.runtimes.is_empty() {
        registry.available_names()
    } else {
        let mut names = Vec::new();
        for r in &args.runtimes {
            let l = cod_runtime::find_language(&registry, r).map_err(|_| {
                anyhow::anyhow!("--runtimes: no language {r:?} (see `cod runtimes`)")
            })?;
            if let Some(why) = &l.unavailable {
                anyhow::bail!("--runtimes: {} cannot run on this host: {why}", l.name);
            }
            names.push(l.name.clone());
        }
        names
    };
    let jail = super::start_jail(&config, slots, Some(&registry))?;
    let cache = super::compile_cache(&config)?;
    let pool = super::start_pool(&config, &jail, &registry);
    let mut executor = Executor::new(jail.clone(), registry, config.limits).with_cache(cache);
    if let Some(pool) = pool {
        executor = executor.with_pool(pool);
    }
    let executor = Arc::new(executor);
    let host = cod_server::fleet::host_name();
    let id = args
        .id
        .unwrap_or_else(|| format!("{host}-{}", std::process::id()));
    let opts = WorkerOptions {
        id: id.clone(),
        host,
        runtimes,
        slots: (0..u32::try_from(slots).context("too many slots")?).collect(),
        version: env!("CARGO_PKG_VERSION").into(),
        prebuild: true,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let drain = CancellationToken::new();
        let on_signal = drain.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            on_signal.cancel();
        });
        let bus = Bus::connect(
            &args.nats,
            &format!("cod worker {id}"),
            super::bus_config(&config),
        )
        .await
        .with_context(|| format!("connecting to {}", args.nats))?;
        info!(worker = %id, nats = %args.nats, slots, "connected to the fleet");
        // The local provider (and anyone watching) knows the worker is up from this line.
        println!("ready {id}");
        serve_jobs(bus, executor, opts, drain).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
