//! `cod fleet`: the compute resource manager (docs/fleet.md).
//!
//! Measures the load (the fleet's NATS JetStream with `--nats`, else JSON lines on
//! standard input), decides with the autoscaling policy and starts or drains workers
//! through a provider, until SIGINT or SIGTERM (or the end of standard input). Then the
//! local provider drains the workers it started and waits for them; a second signal stops
//! waiting (the workers left are killed).
//!
//! The settings come from `--fleet-config FILE.toml`: sections `[policy]`, `[source]`,
//! `[local]` and `[kubernetes]`, all optional; an unknown key is refused, named. The
//! broker's settings (`dead_after` of heartbeats, the stream's limits) are `[fleet]` of the
//! main configuration, as for gateways and workers.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use cod_fleet::bus::{Bus, BusConfig};

use cod_fleet::nats_source::{DEFAULT_INTERVAL, NatsSource};
use cod_fleet::provider::{LocalConfig, LocalProvider};
use cod_fleet::{
    Autoscaler, JsonLines, LoadSample, LoadSource, Manager, PolicyConfig, Provider, SourceError,
};
use serde::Deserialize;

use crate::cli::FleetArgs;

/// The `--fleet-config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FleetFile {
    /// The autoscaling policy.
    policy: PolicyConfig,
    /// Where the load is measured.
    source: SourceSection,
    /// The local provider.
    local: LocalSection,
    /// The Kubernetes provider.
    #[cfg(feature = "kubernetes")]
    kubernetes: cod_fleet::provider::KubernetesConfig,
    /// The Kubernetes provider: not in this build, its settings are not read.
    #[cfg(not(feature = "kubernetes"))]
    kubernetes: Option<toml::Table>,
}

/// `[source]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct SourceSection {
    /// Interval of the NATS source's samples.
    #[serde(with = "humantime_serde")]
    interval: Duration,
}

impl Default for SourceSection {
    fn default() -> SourceSection {
        SourceSection {
            interval: DEFAULT_INTERVAL,
        }
    }
}

/// `[local]`: the local provider's settings, the command optional (its default depends on
/// `--nats`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LocalSection {
    command: Option<Vec<String>>,
    ready_line: Option<String>,
    #[serde(with = "humantime_serde")]
    drain_timeout: Duration,
    slots: u32,
    id_prefix: String,
    cpus_per_worker: u32,
}

impl Default for LocalSection {
    fn default() -> LocalSection {
        let d = LocalConfig::default();
        LocalSection {
            command: None,
            ready_line: d.ready_line,
            drain_timeout: d.drain_timeout,
            slots: d.slots,
            id_prefix: d.id_prefix,
            cpus_per_worker: d.cpus_per_worker,
        }
    }
}

impl FleetFile {
    fn read(path: &Path) -> anyhow::Result<FleetFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the fleet configuration {}", path.display()))?;
        FleetFile::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses the file's text; an error names the key at fault.
    fn parse(text: &str) -> anyhow::Result<FleetFile> {
        let de = toml::Deserializer::parse(text).context("not valid TOML")?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            if key == "." {
                anyhow::anyhow!("{inner}")
            } else {
                anyhow::anyhow!("at `{key}`: {inner}")
            }
        })
    }
}

/// The local provider's settings: `[local]`, its command by default
/// `<this executable> worker --nats URL --id {id} --instance {index}`, and
/// `--cpu-list {cpus}` with `cpus_per_worker`.
fn local_config(section: LocalSection, nats: Option<&str>) -> anyhow::Result<LocalConfig> {
    let command = match section.command {
        Some(c) => c,
        None => {
            let nats = nats.context(
                "the local provider's workers need the fleet's NATS server: give --nats \
                 (or set local.command in --fleet-config)",
            )?;
            let exe = std::env::current_exe().context("finding this executable")?;
            let mut command = vec![
                exe.to_string_lossy().into_owned(),
                "worker".into(),
                "--nats".into(),
                nats.into(),
                "--id".into(),
                "{id}".into(),
                // Its own sandbox uid range beside the other workers of this host.
                "--instance".into(),
                "{index}".into(),
            ];
            if section.cpus_per_worker > 0 {
                // Its slots, one per CPU of its share by default, on those CPUs alone.
                command.extend(["--cpu-list".into(), "{cpus}".into()]);
            }
            command
        }
    };
    Ok(LocalConfig {
        command,
        ready_line: section.ready_line,
        drain_timeout: section.drain_timeout,
        slots: section.slots,
        id_prefix: section.id_prefix,
        cpus_per_worker: section.cpus_per_worker,
    })
}

/// Where the load comes from.
enum Source {
    /// The fleet's broker: a failed sample is retried at the next interval.
    Nats(Box<NatsSource>),
    /// JSON lines on standard input: ends with it.
    Stdin(JsonLines<tokio::fs::File>),
}

impl Source {
    fn name(&self) -> &'static str {
        match self {
            Source::Nats(_) => "nats",
            Source::Stdin(_) => "stdin",
        }
    }
}

impl LoadSource for Source {
    async fn next_sample(&mut self) -> Result<Option<LoadSample>, SourceError> {
        match self {
            Source::Nats(s) => s.next_sample().await,
            Source::Stdin(s) => s.next_sample().await,
        }
    }
}

/// Runs `cod fleet`.
pub(crate) fn fleet(config: &cod_core::Config, args: FleetArgs) -> anyhow::Result<ExitCode> {
    let file = match &args.fleet_config {
        Some(p) => FleetFile::read(p)?,
        None => FleetFile::default(),
    };
    let policy = Autoscaler::new(file.policy.clone()).context("the autoscaling policy")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cod-fleet")
        .build()
        .context("starting the async runtime")?;
    let outcome = runtime.block_on(run(args, file, policy, super::bus_config(config)));
    // A read of standard input may still block a thread of the runtime: not waited for.
    runtime.shutdown_background();
    outcome
}

async fn run(
    args: FleetArgs,
    file: FleetFile,
    policy: Autoscaler,
    bus_config: BusConfig,
) -> anyhow::Result<ExitCode> {
    // Checked before anything is started or connected.
    let local = match args.provider.as_str() {
        "local" => Some(local_config(file.local, args.nats.as_deref())?),
        "kubernetes" => None,
        other => anyhow::bail!("unknown provider {other:?}: `local` or `kubernetes`"),
    };
    let mut stop = Box::pin(shutdown_signal()?);
    if let Some(addr) = args.metrics_listen {
        serve_metrics(addr).await?;
    }
    let mut source = match &args.nats {
        Some(url) => {
            tracing::info!(nats = %url, "connecting to the fleet's broker");
            let bus = tokio::select! {
                bus = Bus::connect(url, "cod-fleet", bus_config) => {
                    bus.with_context(|| format!("connecting to NATS at {url}"))?
                }
                () = &mut stop => return Ok(ExitCode::SUCCESS),
            };
            Source::Nats(Box::new(
                NatsSource::new(bus).with_interval(file.source.interval),
            ))
        }
        None => Source::Stdin(JsonLines::new(stdin()?)),
    };
    let policy = continue_curve(policy, &source).await;
    let config_path = args.fleet_config.unwrap_or_default();
    if let Some(local) = local {
        tracing::info!(provider = "local", command = ?local.command, source = source.name(),
            config = %config_path.display(), "fleet manager starting");
        let provider = LocalProvider::new(local).context("the local provider")?;
        let mut manager = Manager::new(policy, provider);
        let outcome = drive(&mut manager, &mut source, &mut stop).await;
        tracing::info!("draining the local workers");
        tokio::select! {
            () = manager.provider().shutdown() => tracing::info!("every local worker stopped"),
            () = second_signal() => {
                tracing::warn!("stopping without waiting: the workers left are killed");
            }
        }
        outcome
    } else {
        #[cfg(feature = "kubernetes")]
        let kubernetes = {
            let mut k = file.kubernetes;
            if let Some(n) = args.namespace {
                k.namespace = n;
            }
            if let Some(d) = args.deployment {
                k.deployment = d;
            }
            k
        };
        #[cfg(not(feature = "kubernetes"))]
        let kubernetes = file.kubernetes;
        run_kubernetes(kubernetes, policy, &mut source, &mut stop, &config_path).await
    }
}

#[cfg(feature = "kubernetes")]
async fn run_kubernetes(
    config: cod_fleet::provider::KubernetesConfig,
    policy: Autoscaler,
    source: &mut Source,
    stop: &mut (impl Future<Output = ()> + Unpin),
    config_path: &Path,
) -> anyhow::Result<ExitCode> {
    use cod_fleet::provider::KubernetesProvider;
    tracing::info!(provider = "kubernetes", namespace = %config.namespace,
        deployment = %config.deployment, source = source.name(),
        config = %config_path.display(), "fleet manager starting");
    let provider = KubernetesProvider::connect(config)
        .await
        .context("the Kubernetes provider")?;
    let mut manager = Manager::new(policy, provider);
    let outcome = drive(&mut manager, source, stop).await;
    // The Deployment's pods belong to the cluster: they stay as the last decision left
    // them, for the next manager to take over.
    tracing::info!("the worker Deployment is left at its current size");
    outcome
}

#[cfg(not(feature = "kubernetes"))]
async fn run_kubernetes(
    _config: Option<toml::Table>,
    _policy: Autoscaler,
    _source: &mut Source,
    _stop: &mut (impl Future<Output = ()> + Unpin),
    _config_path: &Path,
) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "this cod was built without the Kubernetes provider: build it with \
         `cargo build --features kubernetes`"
    )
}

/// With the NATS source, the policy with the day curve an earlier manager kept there (a
/// restart does not forget the previous days); else, or without one, `policy` as it is.
async fn continue_curve(policy: Autoscaler, source: &Source) -> Autoscaler {
    let Source::Nats(nats) = source else {
        return policy;
    };
    let prescale = &policy.config().prescale;
    let load = tokio::time::timeout(KEEP_PATIENCE, nats.bus().load_curve()).await;
    match load.unwrap_or_else(|e| Err(cod_fleet::bus::bus_err("reading the day curve")(e))) {
        Ok(Some(kept)) => match kept.reuse(prescale.bucket, prescale.weight) {
            Some(curve) => {
                tracing::info!(
                    days = curve.days(),
                    "continuing the day curve kept by an earlier manager"
                );
                policy.with_curve(curve)
            }
            None => {
                tracing::warn!(
                    "the kept day curve has other buckets than policy.prescale.bucket: learning anew"
                );
                policy
            }
        },
        Ok(None) => policy,
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "the kept day curve could not be read: learning anew");
            policy
        }
    }
}

/// With the NATS source, keeps the manager's day curve there for the next manager; a
/// broker that does not take it within [`KEEP_PATIENCE`] is not waited for (the next
/// bucket, or the next manager, tries again).
async fn keep_curve<P: Provider>(manager: &Manager<P>, source: &Source) {
    let Source::Nats(nats) = source else {
        return;
    };
    let save = nats.bus().save_curve(manager.policy().curve());
    match tokio::time::timeout(KEEP_PATIENCE, save).await {
        Ok(Ok(())) => tracing::debug!("day curve kept"),
        Ok(Err(e)) => tracing::warn!(error = %error_chain(&e), "the day curve could not be kept"),
        Err(_) => tracing::warn!("the day curve could not be kept: the broker did not answer"),
    }
}

/// How long keeping (or reading) the day curve may take.
const KEEP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// Decides on every sample until the source ends or `stop` resolves.
async fn drive<P: Provider>(
    manager: &mut Manager<P>,
    source: &mut Source,
    stop: &mut (impl Future<Output = ()> + Unpin),
) -> anyhow::Result<ExitCode> {
    let mut failing = false;
    // The day curve is kept once per bucket of the day, and on the way out.
    let every = manager.policy().config().prescale.bucket;
    let mut kept = tokio::time::Instant::now();
    loop {
        let next = tokio::select! {
            next = source.next_sample() => next,
            () = &mut *stop => {
                tracing::info!("signal received: stopping");
                keep_curve(manager, source).await;
                return Ok(ExitCode::SUCCESS);
            }
        };
        let sample = match next {
            Ok(Some(sample)) => sample,
            Ok(None) => {
                tracing::info!(source = source.name(), "the load source ended");
                keep_curve(manager, source).await;
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => {
                match (&*source, &e) {
                    // The broker may come back: the next interval tries again.
                    (Source::Nats(_), _) => {
                        tracing::warn!(source = "nats", error = %error_chain(&e),
                            "measuring the load failed; trying again");
                        failing = true;
                    }
                    // A bad line is skipped, the next one may be good.
                    (Source::Stdin(_), SourceError::Parse { .. }) => {
                        tracing::warn!(source = "stdin", error = %error_chain(&e),
                            "skipping a load sample");
                    }
                    (Source::Stdin(_), _) => {
                        return Err(anyhow::Error::new(e).context("reading the load"));
                    }
                }
                continue;
            }
        };
        if std::mem::take(&mut failing) {
            tracing::info!(source = source.name(), "measuring the load again");
        }
        // The manager logs each decision (a holding one at info when its outcome changed).
        if let Err(e) = manager.step(sample).await {
            tracing::error!(provider = manager.provider().name(), error = %error_chain(&e),
                "the provider failed; the next decision tries again");
        }
        if kept.elapsed() >= every {
            keep_curve(manager, source).await;
            kept = tokio::time::Instant::now();
        }
    }
}

/// An error and its causes, `: `-separated.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Standard input, read asynchronously (a duplicate of its descriptor).
fn stdin() -> anyhow::Result<tokio::fs::File> {
    use std::os::fd::AsFd;
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("reading standard input")?;
    Ok(tokio::fs::File::from_std(std::fs::File::from(fd)))
}

/// Resolves on SIGINT or SIGTERM.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Resolves on a further SIGINT or SIGTERM; never if they cannot be handled.
async fn second_signal() {
    match shutdown_signal() {
        Ok(s) => s.await,
        Err(_) => std::future::pending().await,
    }
}

/// Serves the process's metrics (the manager's decisions among them) at `addr/metrics`.
async fn serve_metrics(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let handle = cod_server::metrics::install()
        .context("installing the metrics recorder")?
        .clone();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-listen {addr}"))?;
    tracing::info!(%addr, "metrics at http://{addr}/metrics");
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let h = handle.clone();
            async move { h.render() }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics listener stopped");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults() {
        let f = FleetFile::parse("").expect("parses");
        assert_eq!(f.policy, PolicyConfig::default());
        assert_eq!(f.source.interval, DEFAULT_INTERVAL);
        let local = local_config(f.local, Some("nats://n:4222")).expect("valid");
        assert_eq!(
            &local.command[1..],
            [
                "worker",
                "--nats",
                "nats://n:4222",
                "--id",
                "{id}",
                "--instance",
                "{index}"
            ]
        );
        assert_eq!(local.drain_timeout, LocalConfig::default().drain_timeout);
        assert_eq!(local.cpus_per_worker, 0);

        // A share of the CPUs per worker: the default command keeps each to its own.
        let f = FleetFile::parse("[local]\ncpus_per_worker = 4\n").expect("parses");
        let local = local_config(f.local, Some("nats://n:4222")).expect("valid");
        assert_eq!(local.cpus_per_worker, 4);
        assert_eq!(&local.command[8..], ["--cpu-list", "{cpus}"]);
    }

    #[test]
    fn keys_are_read_and_unknown_ones_named() {
        let f = FleetFile::parse(
            "[policy]\nmin_workers = 2\n[source]\ninterval = \"500ms\"\n\
             [local]\ncommand = [\"w\", \"{id}\"]\nslots = 8\n",
        )
        .expect("parses");
        assert_eq!(f.policy.min_workers, 2);
        assert_eq!(f.source.interval, Duration::from_millis(500));
        let local = local_config(f.local, None).expect("a command needs no --nats");
        assert_eq!(local.command, ["w", "{id}"]);
        assert_eq!(local.slots, 8);

        let err = FleetFile::parse("[policy]\nmin_workerz = 2\n").expect_err("unknown");
        assert!(format!("{err:#}").contains("min_workerz"), "{err:#}");
        let err = FleetFile::parse("[local]\ndrain_timeout = 3\n").expect_err("not a duration");
        assert!(
            format!("{err:#}").contains("local.drain_timeout"),
            "{err:#}"
        );
        let err = FleetFile::parse("[scaling]\n").expect_err("unknown section");
        assert!(format!("{err:#}").contains("scaling"), "{err:#}");
    }

    #[test]
    fn the_default_worker_command_needs_nats() {
        let err = local_config(LocalSection::default(), None).expect_err("no --nats");
        assert!(format!("{err:#}").contains("--nats"), "{err:#}");
    }
}
