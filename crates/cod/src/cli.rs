//! Command-line structure (clap derive). Logic lives in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::observability::LogFormat;

/// cod (Compute On Demand): runs untrusted programs quickly, in a real sandbox.
#[derive(Debug, Parser)]
#[command(name = "cod", version, about, long_about = None)]
pub(crate) struct Cli {
    /// Configuration file (TOML); see docs/config.md.
    #[arg(long, global = true, env = "COD_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "COD_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    pub(crate) log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the service: HTTP API, Piston-compatible routes and the web page.
    Serve(ServeArgs),
    /// Compile and run a program file locally, in the same sandbox the service uses.
    Run(RunArgs),
    /// Measure run latency against running the same programs without a sandbox and under
    /// bubblewrap.
    Bench(BenchArgs),
    /// Simulate a day of the full load through the real scheduler and autoscaling policy:
    /// machine-hours against a peak-sized fleet, waits, a CSV and a plot (docs/simulate.md).
    Simulate(SimulateArgs),
    /// Run a fleet worker: takes jobs from NATS JetStream and runs them in this machine's
    /// sandbox (docs/fleet.md).
    Worker(WorkerArgs),
    /// Run the compute resource manager: follows the fleet's load and starts or drains
    /// workers through a provider (docs/fleet.md).
    Fleet(FleetArgs),
    /// List languages and whether this host can run them.
    Runtimes,
    /// Print the configuration in effect, every key written out.
    Config,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:2000].
    #[arg(long, env = "COD_LISTEN")]
    pub(crate) listen: Option<std::net::SocketAddr>,
    /// Runs executed at once (each holds one CPU); 0 means one per CPU.
    #[arg(long, env = "COD_WORKERS")]
    pub(crate) workers: Option<usize>,
    /// Runs that may wait for a worker before new ones get 429.
    #[arg(long, env = "COD_QUEUE")]
    pub(crate) queue: Option<usize>,
    /// Directory of extra language files.
    #[arg(long, env = "COD_LANGUAGES_DIR")]
    pub(crate) languages_dir: Option<PathBuf>,
    /// Run as a fleet gateway on this NATS server (`nats://HOST:PORT`): runs go to
    /// `cod worker`s through JetStream, none runs here unless `--local-worker` is given.
    #[arg(long, env = "COD_NATS", value_name = "URL")]
    pub(crate) nats: Option<String>,
    /// With `--nats`: also run a worker in this process (its slots: `--workers`).
    #[arg(long, requires = "nats")]
    pub(crate) local_worker: bool,
}

#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// The fleet's NATS server (`nats://HOST:PORT`).
    #[arg(long, env = "COD_NATS", value_name = "URL")]
    pub(crate) nats: String,
    /// Runs executed at once (each holds one CPU); 0 means one per CPU.
    #[arg(long, env = "COD_SLOTS")]
    pub(crate) slots: Option<usize>,
    /// Runtimes to take jobs of (comma-separated language names); default: every one
    /// this host can run.
    #[arg(long, value_delimiter = ',')]
    pub(crate) runtimes: Vec<String>,
    /// This worker's id in heartbeats and logs; default: host name and process id.
    #[arg(long, env = "COD_WORKER_ID")]
    pub(crate) id: Option<String>,
    /// Which of several workers on one host this is: its sandbox runs as uids
    /// `sandbox.uid_base + 1000 × N` and up, apart from the other workers' (at most 1000
    /// slots). `cod fleet --provider local` numbers its workers from 1.
    #[arg(long, default_value_t = 0)]
    pub(crate) instance: u32,
    /// The CPUs this worker and its sandboxes keep to, as a list like `0-3,8` (each one
    /// this process may use): workers sharing a host can each take CPUs of their own.
    /// Slots default to one per CPU listed. Default: every CPU this process may use.
    #[arg(long, env = "COD_CPU_LIST", value_name = "LIST", value_parser = parse_cpu_list)]
    pub(crate) cpu_list: Option<CpuList>,
    /// Directory of extra language files.
    #[arg(long, env = "COD_LANGUAGES_DIR")]
    pub(crate) languages_dir: Option<PathBuf>,
}

/// CPU numbers, ascending, each once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CpuList(pub(crate) Vec<usize>);

/// Parses a CPU list in the kernel's format (`0-3,8,10-11`).
pub(crate) fn parse_cpu_list(s: &str) -> Result<CpuList, String> {
    let mut cpus = std::collections::BTreeSet::new();
    for part in s.split(',').map(str::trim) {
        let num = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("{t:?} is not a CPU number (expected a list like 0-3,8)"))
        };
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(part)?, num(part)?),
        };
        if lo > hi {
            return Err(format!("{part:?}: a range goes from low to high"));
        }
        if hi >= rustix::thread::CpuSet::MAX_CPU {
            return Err(format!(
                "CPU {hi} is beyond the {} this system call can name",
                rustix::thread::CpuSet::MAX_CPU
            ));
        }
        cpus.extend(lo..=hi);
    }
    Ok(CpuList(cpus.into_iter().collect()))
}

#[derive(Debug, Args)]
pub(crate) struct FleetArgs {
    /// The fleet's NATS server (`nats://HOST:PORT`): the load is read from its job stream
    /// and worker heartbeats.
    #[arg(long, env = "COD_NATS", value_name = "URL")]
    pub(crate) nats: Option<String>,
    /// Where workers come from: `local` (processes on this host) or `kubernetes`.
    #[arg(long, default_value = "local")]
    pub(crate) provider: String,
    /// Settings of the policy and provider (TOML, see docs/fleet.md).
    #[arg(long, value_name = "FILE.toml")]
    pub(crate) fleet_config: Option<PathBuf>,
    /// With `--provider kubernetes`: the namespace of the worker Deployment (overrides
    /// `kubernetes.namespace`).
    #[arg(long)]
    pub(crate) namespace: Option<String>,
    /// With `--provider kubernetes`: the worker Deployment's name (overrides
    /// `kubernetes.deployment`).
    #[arg(long)]
    pub(crate) deployment: Option<String>,
    /// Serve the decisions' metrics (Prometheus text) at `http://ADDR/metrics`.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args, Default)]
pub(crate) struct LimitArgs {
    /// CPU time limit, ms.
    #[arg(long)]
    pub(crate) cpu_ms: Option<u64>,
    /// Wall-clock limit, ms.
    #[arg(long)]
    pub(crate) wall_ms: Option<u64>,
    /// Memory limit, MiB.
    #[arg(long)]
    pub(crate) memory_mb: Option<u64>,
    /// Processes and threads.
    #[arg(long)]
    pub(crate) processes: Option<u64>,
    /// Output kept per stream, KiB.
    #[arg(long)]
    pub(crate) output_kb: Option<u64>,
    /// Writable disk, MiB.
    #[arg(long)]
    pub(crate) disk_mb: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The program's main file, then any extra files it needs (headers, modules).
    #[arg(required = true)]
    pub(crate) files: Vec<PathBuf>,
    /// Language (name or alias); default: from the main file's extension.
    #[arg(long = "lang", short = 'l')]
    pub(crate) language: Option<String>,
    /// Standard input: a file, or `-` for this process's stdin. Default: empty.
    #[arg(long)]
    pub(crate) stdin: Option<PathBuf>,
    /// Print the whole run result as JSON instead of the program's output.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
    /// Arguments for the program (after `--`).
    #[arg(last = true)]
    pub(crate) args: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Runs per scenario (after warm-up).
    #[arg(long, default_value_t = 30)]
    pub(crate) runs: usize,
    /// Only these languages (comma-separated); default: every available one.
    #[arg(long, value_delimiter = ',')]
    pub(crate) languages: Vec<String>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Skip the bubblewrap baseline even when `bwrap` is installed.
    #[arg(long)]
    pub(crate) no_bwrap: bool,
    /// Which suites (comma-separated): `sandbox` (runs straight through the sandbox), `api`
    /// (a real `cod serve` on loopback), `editor` (keystrokes, session memory, Run to first
    /// output over the WebSocket), `sched` (a mixed overload, cod's order against FIFO) and
    /// `fleet` (a gateway and two workers through NATS against one process; needs
    /// nats-server); default all.
    #[arg(long, value_delimiter = ',')]
    pub(crate) suite: Vec<String>,
    /// Seconds of each throughput measurement of the API suite.
    #[arg(long, default_value_t = 5)]
    pub(crate) seconds: u64,
    /// Seconds of arrivals in the scheduler suite, for each of the two policies.
    #[arg(long, default_value_t = 60)]
    pub(crate) sched_seconds: u64,
}

#[derive(Debug, Args)]
pub(crate) struct SimulateArgs {
    /// The simulation's parameters (TOML; every key optional, see docs/simulate.toml);
    /// default: the design's day (1M users, ~2,220 runs/s at the peak, 64-core machines).
    #[arg(long, value_name = "FILE.toml")]
    pub(crate) config_file: Option<PathBuf>,
    /// Print the report as JSON on stdout instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Write the timeline (machines and load, one row per sample) as CSV here.
    #[arg(long, value_name = "FILE.csv", default_value = "cod-simulate.csv")]
    pub(crate) csv: PathBuf,
    /// Write the plot of the timeline (SVG) here.
    #[arg(long, value_name = "FILE.svg", default_value = "cod-simulate.svg")]
    pub(crate) plot: PathBuf,
    /// Seed of the random numbers, instead of the file's.
    #[arg(long)]
    pub(crate) seed: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::{CpuList, parse_cpu_list};

    #[test]
    fn cpu_lists_read_like_the_kernels_and_bad_ones_say_why() {
        assert_eq!(parse_cpu_list("0-3,8"), Ok(CpuList(vec![0, 1, 2, 3, 8])));
        assert_eq!(parse_cpu_list(" 2 , 0-1,1"), Ok(CpuList(vec![0, 1, 2])));
        assert_eq!(parse_cpu_list("5"), Ok(CpuList(vec![5])));
        for bad in ["", "a", "0-", "3-1", "1,,2", "0-99999"] {
            let e = parse_cpu_list(bad).expect_err(bad);
            assert!(!e.is_empty(), "{bad}");
        }
        assert!(parse_cpu_list("3-1").unwrap_err().contains("low to high"));
        assert!(parse_cpu_list("x").unwrap_err().contains("\"x\""));
    }

    /// Clap's own checks of the definitions (types, names, conflicts), which it otherwise
    /// makes only when a flag is used.
    #[test]
    fn the_command_line_is_well_defined() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
        let cli = <super::Cli as clap::Parser>::try_parse_from([
            "cod",
            "worker",
            "--nats",
            "nats://127.0.0.1:4222",
            "--cpu-list",
            "0-1,3",
        ])
        .unwrap();
        let super::Command::Worker(w) = cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(w.cpu_list, Some(CpuList(vec![0, 1, 3])));
    }

    #[test]
    fn cpu_sets_print_as_lists() {
        let mut set = rustix::thread::CpuSet::new();
        for c in [0, 1, 2, 3, 8, 10, 11] {
            set.set(c);
        }
        assert_eq!(crate::commands::cpu_list_text(&set), "0-3,8,10-11");
        let list = parse_cpu_list(&crate::commands::cpu_list_text(&set)).unwrap();
        assert_eq!(list, CpuList(vec![0, 1, 2, 3, 8, 10, 11]));
    }
}
