//! `cod bench`'s scheduler part: starts the sandbox and the executor as `cod serve` does and
//! runs [`cod_server::schedbench`] (the mixed 1.5× overload against FIFO), printing its
//! table and optionally writing its JSON.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use cod_core::Config;
use cod_runtime::Executor;
pub(crate) use cod_server::schedbench::{Options, Report};

/// Runs the benchmark with `opts` (its `queue` and `aging` taken from `config`), prints
/// the table, writes the report as JSON to `json` if given, and returns it.
pub(crate) fn run(config: &Config, opts: &Options, json: Option<&Path>) -> anyhow::Result<Report> {
    let opts = Options {
        queue: config.server.queue,
        aging: config.scheduler.aging,
        ..opts.clone()
    };
    let workers = match opts.workers {
        0 => super::cpus(),
        n => n,
    };
    let registry = super::load_registry(config)?;
    for lang in ["python", "c"] {
        if !registry.get(lang).is_some_and(|l| l.available()) {
            anyhow::bail!("the scheduler benchmark needs {lang}, which is not available here");
        }
    }
    let jail = super::start_jail(config, workers, Some(&registry))?;
    let mut executor = Executor::new(jail.clone(), registry.clone(), config.limits)
        .with_cache(super::compile_cache(config)?);
    if let Some(pool) = super::start_pool(config, &jail, &registry) {
        executor = executor.with_pool(pool);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = rt
        .block_on(cod_server::schedbench::measure(
            &opts,
            workers,
            Arc::new(executor),
        ))
        .map_err(|e| anyhow::anyhow!("the scheduler benchmark failed: {e}"))?;
    print!("{}", cod_server::schedbench::table(&report));
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}
