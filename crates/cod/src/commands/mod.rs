//! One module per subcommand, and the set-up they share.

mod bench;
mod bench_api;
pub(crate) mod bench_editor;
mod bench_fleet;
mod bench_machine;
pub(crate) mod bench_sched;
mod fleet;
mod run;
mod serve;
mod simulate;
mod worker;

use std::ffi::OsStr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use cod_core::Config;
use cod_runtime::Registry;
use cod_sandbox::{Jail, JailConfig};

use crate::cli::{Cli, Command};
use crate::observability;

/// Runs the chosen subcommand.
pub(crate) fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = load_config(cli.config.as_deref())?;
    let default_level = match cli.command {
        Command::Serve(_) | Command::Worker(_) | Command::Fleet(_) => "info",
        _ => "warn",
    };
    observability::init(cli.log_format, default_level)?;
    match cli.command {
        Command::Serve(args) => serve::serve(config, args),
        Command::Run(args) => run::run(&config, args),
        Command::Bench(args) => bench::bench(&config, args),
        Command::Simulate(args) => simulate::simulate(&args),
        Command::Worker(args) => worker::worker(config, args),
        Command::Fleet(args) => fleet::fleet(&config, args),
        Command::Runtimes => runtimes(&config),
        Command::Config => {
            print!("{}", config.to_toml());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Reads and validates the configuration file, or the defaults without one.
pub(crate) fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        None => Ok(Config::default()),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading the configuration file {}", p.display()))?;
            Config::from_toml(&text).with_context(|| format!("in {}", p.display()))
        }
    }
}

/// Number of CPUs of this machine.
pub(crate) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub(crate) use cod_fleet::cpus::cpu_list_text;

/// Starts the sandbox helper (this binary, re-executed) with `slots` worker slots; with a
/// registry, each slot keeps a sandbox prepared for its languages between runs.
pub(crate) fn start_jail(
    config: &Config,
    slots: usize,
    prepare_for: Option<&Registry>,
) -> anyhow::Result<Arc<Jail>> {
    let (exe, jail_config) = jail_config(config, slots, prepare_for)?;
    let jail = Jail::spawn(&exe, &[OsStr::new(crate::JAIL_ARG)], &jail_config).context(
        "starting the sandbox (cod needs root, user namespaces and cgroups; see docs/sandbox.md)",
    )?;
    self_test(&jail).context("the sandbox does not work on this host (see docs/sandbox.md)")?;
    Ok(Arc::new(jail))
}

/// A jail whose helper starts only if something runs here: a fleet gateway without a
/// local worker needs no sandbox.
pub(crate) fn deferred_jail(config: &Config) -> anyhow::Result<Arc<Jail>> {
    let (exe, jail_config) = jail_config(config, 1, None)?;
    Ok(Arc::new(Jail::deferred(
        &exe,
        &[OsStr::new(crate::JAIL_ARG)],
        &jail_config,
    )))
}

fn jail_config(
    config: &Config,
    slots: usize,
    prepare_for: Option<&Registry>,
) -> anyhow::Result<(std::path::PathBuf, JailConfig)> {
    let exe = std::env::current_exe().context("finding this program's path")?;
    let s = &config.sandbox;
    let jail_config = JailConfig {
        cgroup: s.cgroup,
        cgroup_root: s.cgroup_root.clone(),
        cgroup_name: s.cgroup_name.clone(),
        uid_base: s.uid_base,
        slots: u32::try_from(slots).context("too many workers")?,
        cpus_per_run: s.cpus,
        pin_slots: s.pin_slots,
        stack: s.stack.get(),
        open_files: s.open_files,
        state_dir: s.state_dir.clone().unwrap_or_else(std::env::temp_dir),
        prepared: prepare_for.map(|registry| {
            cod_runtime::HostLayout::detect()
                .with_languages(registry)
                .layout(config.limits.default.to_limits().disk.get())
        }),
        // The runtimes slots may keep warm; which slots do is the pool's choice.
        warm: match prepare_for {
            Some(registry) if config.pool.enabled => warm_runtimes(config, registry),
            _ => Vec::new(),
        },
    };
    Ok((exe, jail_config))
}

/// The runtimes a slot may keep warm, for runs with the configured default limits.
fn warm_runtimes(config: &Config, registry: &Registry) -> Vec<cod_sandbox::WarmRuntime> {
    let defaults = config.limits.default.to_limits();
    cod_runtime::warm_runtimes_with(
        registry,
        &cod_runtime::HostLayout::detect().with_languages(registry),
        defaults.disk.get(),
        defaults.memory.get(),
    )
}

/// The warm runtime pool over `jail` (started with [`start_jail`] for `registry`), which
/// tells the jail's slots what to keep warm; `None` when there is nothing to keep warm.
pub(crate) fn start_pool(
    config: &Config,
    jail: &Arc<Jail>,
    registry: &Registry,
) -> Option<Arc<cod_runtime::Pool>> {
    if !config.pool.enabled {
        return None;
    }
    let names: Vec<String> = warm_runtimes(config, registry)
        .into_iter()
        .map(|w| w.name)
        .collect();
    for l in registry.all() {
        if let Some(why) = &l.warm_unavailable {
            tracing::warn!(language = %l.name, reason = %why, "language runs cold");
        }
    }
    if names.is_empty() {
        return None;
    }
    tracing::info!(languages = ?names, budget = %config.pool.memory, "keeping runtimes warm");
    Some(cod_runtime::Pool::new(
        jail.clone(),
        names,
        config.pool.clone(),
    ))
}

/// Runs `/usr/bin/true` in the sandbox once, so that a host without user namespaces,
/// seccomp or a usable cgroup fails at start-up with the reason, not at the first request.
fn self_test(jail: &Jail) -> anyhow::Result<()> {
    let host = cod_runtime::HostLayout::detect();
    let limits = cod_core::limits::LimitsSpec::DEFAULT.to_limits();
    let spec = cod_sandbox::SandboxSpec {
        slot: 0,
        binds: host.binds().to_vec(),
        symlinks: host.symlinks().to_vec(),
        files: vec![],
        shared: vec![],
        stages: vec![cod_sandbox::StageSpec {
            argv: vec!["/usr/bin/true".into()],
            env: vec![],
            limits,
            stdin: vec![],
            collect: Vec::new(),
            warm: None,
            interactive: false,
        }],
        disk: limits.disk.get(),
        stream: false,
    };
    let outcome = jail.run(&spec)?;
    match outcome
        .stages
        .first()
        .map(cod_sandbox::StageOutcome::status)
    {
        Some(cod_core::Status::Ok) => Ok(()),
        other => anyhow::bail!("a trial run of /usr/bin/true ended {other:?}: {outcome:?}"),
    }
}

/// The fleet's broker settings from `[fleet]`.
pub(crate) fn bus_config(config: &Config) -> cod_fleet::bus::BusConfig {
    let f = &config.fleet;
    cod_fleet::bus::BusConfig {
        ack_wait: f.ack_wait,
        max_deliveries: f.max_deliveries,
        result_ttl: f.result_ttl,
        job_ttl: f.result_ttl,
        heartbeat: f.heartbeat,
        dead_after: f.dead_after,
        replicas: f.replicas,
    }
}

/// The compile cache the configuration describes.
pub(crate) fn compile_cache(config: &Config) -> anyhow::Result<Arc<cod_runtime::CompileCache>> {
    let c = &config.cache;
    let disk = (!c.dir.as_os_str().is_empty()).then(|| (c.dir.clone(), c.disk.get()));
    cod_runtime::CompileCache::new(c.memory.get(), disk)
        .with_context(|| format!("opening the compile cache in {}", c.dir.display()))
}

/// Loads and probes the languages; with `prebuilt`, gives the languages that build
/// something once (a precompiled header, a class-data archive) their directory.
pub(crate) fn load_registry(config: &Config) -> anyhow::Result<Arc<Registry>> {
    let reg = Registry::load(config.languages.dir.as_deref(), &config.languages.enabled)
        .context("loading the language files")?;
    let root = prebuilt_root(config);
    let reg = reg
        .with_prebuilt(&root)
        .with_context(|| format!("creating {}", root.display()))?;
    let warm = root.join("warm");
    let reg = reg
        .with_warm_files(&warm)
        .with_context(|| format!("writing the warm runtimes' files in {}", warm.display()))?;
    Ok(Arc::new(reg))
}

/// Where prebuilt files live: beside the compile cache, or in the temp dir without one.
fn prebuilt_root(config: &Config) -> std::path::PathBuf {
    let dir = &config.cache.dir;
    if dir.as_os_str().is_empty() {
        std::env::temp_dir().join("cod-prebuilt")
    } else {
        dir.join("prebuilt")
    }
}

fn runtimes(config: &Config) -> anyhow::Result<ExitCode> {
    let reg = load_registry(config)?;
    println!(
        "{:<12} {:<10} {:<9} {:<26} NOTES",
        "LANGUAGE", "VERSION", "COMPILED", "ALIASES"
    );
    for l in reg.all() {
        println!(
            "{:<12} {:<10} {:<9} {:<26} {}",
            l.name,
            l.version,
            if l.compiled() { "yes" } else { "no" },
            l.aliases.join(","),
            l.unavailable
                .as_deref()
                .map_or(String::new(), |w| format!("unavailable: {w}")),
        );
    }
    Ok(ExitCode::SUCCESS)
}
