//! `cod bench`: run latency through cod's sandbox against the same work with no sandbox and
//! under bubblewrap, measured in the same process, interleaved, so that the machine's noise
//! hits every contender alike. Prints medians, p99s and ratios; optionally writes JSON.
//!
//! Scenarios: `/usr/bin/true` (pure sandbox overhead) and each available language's hello
//! world (compile + run for compiled languages). The "raw" contender runs the very commands
//! the sandbox would run, on the host, in a fresh temporary directory; "bwrap" runs them in
//! bubblewrap with all namespaces, read-only binds of the same paths and a tmpfs `/tmp`, one
//! bubblewrap per stage.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cod_core::limits::LimitsSpec;
use cod_core::{Config, RunRequest, Status};
use cod_runtime::{Executor, HostLayout, Job, run_in_jail};
use cod_sandbox::{Jail, SandboxSpec, StageSpec};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::cli::BenchArgs;

/// Runs before measuring each scenario, to warm caches.
const WARMUP: usize = 3;

/// Median, p99 and minimum of a set of times.
#[derive(Debug, Serialize)]
pub(crate) struct Stats {
    pub(crate) median_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) min_ms: f64,
}

/// The [`Stats`] of `v` (not empty).
pub(crate) fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let idx = |q: f64| {
        let i = (q * (v.len() - 1) as f64).round();
        // The index is within 0..len by construction.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let i = i as usize;
        i.min(v.len() - 1)
    };
    Stats {
        median_ms: ms(v[idx(0.5)]),
        p99_ms: ms(v[idx(0.99)]),
        min_ms: ms(v[0]),
    }
}

/// The item of `items` whose `key` is their median (the upper middle of an even number),
/// or `None` without any.
pub(crate) fn median_by<T>(items: &[T], key: impl Fn(&T) -> f64) -> Option<&T> {
    let mut v: Vec<&T> = items.iter().collect();
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    v.get(v.len() / 2).copied()
}

#[derive(Debug, Serialize)]
struct Row {
    scenario: String,
    raw: Stats,
    bwrap: Option<Stats>,
    cod: Stats,
    /// cod median / raw median.
    cod_over_raw: f64,
    /// cod median / bwrap median.
    cod_over_bwrap: Option<f64>,
    /// cod median − raw median, ms: the sandbox's cost per run.
    cod_overhead_ms: f64,
    /// bwrap median − raw median, ms.
    bwrap_overhead_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    runs: usize,
    cpus: usize,
    kernel: String,
    cgroup: String,
    rows: Vec<Row>,
    /// Private memory of one idle Python zygote (a warm slot), bytes.
    warm_idle_memory: Option<u64>,
    /// The API suite, if it ran.
    api: Option<super::bench_api::ApiReport>,
    /// The editor suite, if it ran.
    editor: Option<super::bench_editor::EditorReport>,
    /// The scheduler suite, if it ran.
    sched: Option<super::bench_sched::Report>,
    /// The fleet suite, if it ran.
    fleet: Option<super::bench_fleet::FleetReport>,
}

/// One program to measure: the sandbox spec cod runs, and how to replay it outside.
struct Scenario {
    name: String,
    spec: SandboxSpec,
    /// Stages with host paths (for raw and bwrap): argv, env, stdin.
    host_stages: Vec<(Vec<String>, Vec<String>, Vec<u8>)>,
    /// (host path, sandbox path) read-only binds besides the base layout.
    extra_binds: Vec<(PathBuf, PathBuf)>,
    /// (host path, sandbox path) of every bind of the run, to rewrite paths for the host.
    binds: Vec<(PathBuf, PathBuf)>,
}

/// Rewrites sandbox paths in `s` to host paths (`/box` to `work`, bind targets to sources),
/// also after an `=` (`-J-XX:SharedArchiveFile=/opt/...`).
fn to_host(s: &str, work: &Path, binds: &[(PathBuf, PathBuf)]) -> String {
    let map_path = |tok: &str| -> String {
        if tok == "/box" || tok.starts_with("/box/") {
            return format!("{}{}", work.display(), &tok[4..]);
        }
        for (src, dst) in binds {
            let dst = dst.to_string_lossy();
            if tok == dst || tok.starts_with(&format!("{dst}/")) {
                return format!("{}{}", src.display(), &tok[dst.len()..]);
            }
        }
        tok.to_owned()
    };
    let map_one = |tok: &str| -> String {
        match tok.split_once('=') {
            Some((key, path)) if path.starts_with('/') => format!("{key}={}", map_path(path)),
            _ => map_path(tok),
        }
    };
    // PATH-like values are lists.
    s.split(':').map(map_one).collect::<Vec<_>>().join(":")
}

fn write_files(dir: &Path, spec: &SandboxSpec) -> anyhow::Result<()> {
    for f in &spec.files {
        std::fs::write(dir.join(&f.name), &f.content)?;
    }
    Ok(())
}

/// Writes the scenario's files into a fresh directory and runs each stage as the command
/// `command(dir, argv, env)` builds; returns the time the stages took. `how` names the
/// contender in errors.
fn time_stages(
    sc: &Scenario,
    how: &str,
    command: impl Fn(&Path, &[String], &[String]) -> Command,
) -> anyhow::Result<Duration> {
    let dir = tempfile::tempdir()?;
    write_files(dir.path(), &sc.spec)?;
    let start = Instant::now();
    for (argv, env, stdin) in &sc.host_stages {
        let out = pipe_run(&mut command(dir.path(), argv, env), stdin)?;
        if !out.status.success() {
            bail!(
                "{} failed {how}: {}",
                sc.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(start.elapsed())
}

/// Runs the stages on the host, sandbox paths rewritten to host ones.
fn run_raw(sc: &Scenario) -> anyhow::Result<Duration> {
    time_stages(sc, "without a sandbox", |dir, argv, env| {
        let argv: Vec<String> = argv.iter().map(|a| to_host(a, dir, &sc.binds)).collect();
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).env_clear().current_dir(dir);
        for (k, v) in env.iter().filter_map(|kv| kv.split_once('=')) {
            let v = if k == "HOME" || k == "TMPDIR" {
                dir.display().to_string()
            } else {
                to_host(v, dir, &sc.binds)
            };
            cmd.env(k, v);
        }
        cmd
    })
}

fn pipe_run(cmd: &mut Command, stdin: &[u8]) -> anyhow::Result<std::process::Output> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let mut input = child.stdin.take().context("stdin")?;
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output()?;
    let _ = writer.join();
    Ok(out)
}

/// Runs the stages in bubblewrap with isolation equivalent to cod's.
fn run_bwrap(sc: &Scenario, host: &HostLayout) -> anyhow::Result<Duration> {
    time_stages(sc, "under bubblewrap", |dir, argv, env| {
        let mut cmd = Command::new("bwrap");
        cmd.args([
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
        ]);
        for b in host.binds() {
            cmd.arg("--ro-bind").arg(&b.src).arg(&b.dst);
        }
        for l in host.symlinks() {
            cmd.arg("--symlink").arg(&l.target).arg(&l.path);
        }
        for (src, dst) in &sc.extra_binds {
            cmd.arg("--ro-bind").arg(src).arg(dst);
        }
        cmd.args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"])
            .arg("--bind")
            .arg(dir)
            .arg("/box")
            .args(["--chdir", "/box"]);
        for (k, v) in env.iter().filter_map(|kv| kv.split_once('=')) {
            cmd.args(["--setenv", k, v]);
        }
        cmd.arg("--").args(argv);
        cmd
    })
}

async fn run_cod(jail: &Jail, sc: &Scenario, idle: &mut Option<u64>) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let out = run_in_jail(jail, sc.spec.clone())
        .await
        .map_err(|f| anyhow::anyhow!("{f}"))?;
    let elapsed = start.elapsed();
    if let Some(w) = &out.warm {
        *idle = Some(w.idle_memory);
    }
    for (i, s) in out.stages.iter().enumerate() {
        if s.status() != Status::Ok {
            bail!(
                "{} stage {i} ended {:?} in the sandbox: {}",
                sc.name,
                s.status(),
                String::from_utf8_lossy(&s.stderr)
            );
        }
    }
    Ok(elapsed)
}

fn scenarios(
    executor: &Executor,
    host: &HostLayout,
    only: &[String],
) -> anyhow::Result<Vec<Scenario>> {
    let mut out = Vec::new();
    let limits = LimitsSpec::DEFAULT.to_limits();
    if only.is_empty() || only.iter().any(|l| l == "true") {
        out.push(Scenario {
            name: "/usr/bin/true".into(),
            spec: SandboxSpec {
                slot: 0,
                binds: host.binds().to_vec(),
                symlinks: host.symlinks().to_vec(),
                files: vec![],
                shared: vec![],
                stages: vec![StageSpec {
                    argv: vec!["/usr/bin/true".into()],
                    env: vec!["PATH=/usr/bin:/bin".into()],
                    limits,
                    stdin: vec![],
                    collect: Vec::new(),
                    warm: None,
                    interactive: false,
                }],
                disk: limits.disk.get(),
                stream: false,
            },
            host_stages: vec![(
                vec!["/usr/bin/true".into()],
                vec!["PATH=/usr/bin:/bin".into()],
                vec![],
            )],
            extra_binds: vec![],
            binds: vec![],
        });
    }
    for lang in executor.registry().all() {
        if !lang.available() || (!only.is_empty() && !only.contains(&lang.name)) {
            continue;
        }
        let req = RunRequest {
            language: lang.name.clone(),
            source: Some(lang.hello.clone()),
            ..Default::default()
        };
        let job: Job = executor.prepare(&req).map_err(|e| anyhow::anyhow!("{e}"))?;
        let spec = job.sandbox_spec(0, host);
        let extra_binds: Vec<(PathBuf, PathBuf)> = spec
            .binds
            .iter()
            .filter(|b| !host.binds().contains(b))
            .map(|b| (b.src.clone(), b.dst.clone()))
            .collect();
        let binds = spec
            .binds
            .iter()
            .map(|b| (b.src.clone(), b.dst.clone()))
            .collect();
        let host_stages = spec
            .stages
            .iter()
            .map(|s| (s.argv.clone(), s.env.clone(), s.stdin.clone()))
            .collect();
        out.push(Scenario {
            name: format!("{} hello", lang.name),
            spec,
            host_stages,
            extra_binds,
            binds,
        });
    }
    Ok(out)
}

/// The suites of `cod bench`, in the order they run.
const SUITES: [&str; 5] = ["sandbox", "api", "editor", "sched", "fleet"];

pub(crate) fn bench(config: &Config, args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let suites: Vec<&str> = if args.suite.is_empty() {
        SUITES.to_vec()
    } else {
        args.suite.iter().map(String::as_str).collect()
    };
    if let Some(bad) = suites.iter().find(|s| !SUITES.contains(s)) {
        bail!("--suite {bad}: the suites are {}", SUITES.join(", "));
    }
    let registry = super::load_registry(config)?;
    let jail = super::start_jail(config, 1, Some(&registry))?;
    let cgroup = format!("{:?}", jail.cgroup_mode());
    // Slot 0 keeps the warm runtimes, as a server's slots do.
    let _pool = super::start_pool(config, &jail, &registry);
    let executor = Arc::new(Executor::new(jail.clone(), registry, config.limits));
    let host = executor.host().clone();
    let scenarios = if suites.contains(&"sandbox") {
        scenarios(&executor, &host, &args.languages)?
    } else {
        Vec::new()
    };
    let mut warm_idle_memory = None;
    let use_bwrap = !args.no_bwrap
        && Command::new("bwrap")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !use_bwrap && !args.no_bwrap {
        eprintln!(
            "bwrap is not installed (Debian: apt-get install bubblewrap); skipping that baseline"
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let contenders = if use_bwrap { 3 } else { 2 };
    let total = (scenarios.len() * (args.runs + WARMUP) * contenders) as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:24} [{bar:40}] {pos}/{len} {elapsed}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let mut rows = Vec::new();
    for sc in &scenarios {
        bar.set_message(sc.name.clone());
        let (mut raw, mut bw, mut cod) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..args.runs + WARMUP {
            // Interleaved, so that load changes hit all contenders alike.
            let r = run_raw(sc)?;
            bar.inc(1);
            let b = if use_bwrap {
                let b = run_bwrap(sc, &host)?;
                bar.inc(1);
                Some(b)
            } else {
                None
            };
            let c = rt.block_on(run_cod(&jail, sc, &mut warm_idle_memory))?;
            bar.inc(1);
            if i >= WARMUP {
                raw.push(r);
                if let Some(b) = b {
                    bw.push(b);
                }
                cod.push(c);
            }
        }
        let raw = stats(raw);
        let cod = stats(cod);
        let bwrap = (!bw.is_empty()).then(|| stats(bw));
        rows.push(Row {
            scenario: sc.name.clone(),
            cod_over_raw: cod.median_ms / raw.median_ms,
            cod_over_bwrap: bwrap.as_ref().map(|b| cod.median_ms / b.median_ms),
            cod_overhead_ms: cod.median_ms - raw.median_ms,
            bwrap_overhead_ms: bwrap.as_ref().map(|b| b.median_ms - raw.median_ms),
            raw,
            bwrap,
            cod,
        });
    }
    bar.finish_and_clear();
    drop(executor);
    drop(jail);
    let api = if suites.contains(&"api") {
        Some(super::bench_api::run(
            args.runs,
            args.seconds,
            &args.languages,
            use_bwrap,
        )?)
    } else {
        None
    };
    let editor = if suites.contains(&"editor") {
        Some(editor_suite(config, &args)?)
    } else {
        None
    };
    let sched = if suites.contains(&"sched") {
        let opts = super::bench_sched::Options {
            duration: std::time::Duration::from_secs(args.sched_seconds),
            ..Default::default()
        };
        println!();
        Some(super::bench_sched::run(config, &opts, None)?)
    } else {
        None
    };
    let fleet = if suites.contains(&"fleet") {
        Some(super::bench_fleet::run(args.runs, args.seconds)?)
    } else {
        None
    };
    let report = Report {
        fleet,
        editor,
        sched,
        runs: args.runs,
        cpus: super::cpus(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        cgroup,
        rows,
        warm_idle_memory,
        api,
    };
    print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(r: &Report) {
    if !r.rows.is_empty() {
        print_sandbox(r);
    }
    if let Some(m) = r.warm_idle_memory {
        println!(
            "\nA warm Python slot (its zygote) holds {:.1} MiB of its own while idle.",
            m as f64 / f64::from(1 << 20)
        );
    }
    if let Some(api) = &r.api {
        let _ = super::bench_api::print(api, &mut std::io::stdout());
    }
    if let Some(editor) = &r.editor {
        editor.print();
    }
    if let Some(fleet) = &r.fleet {
        let _ = super::bench_fleet::print(fleet, &mut std::io::stdout());
    }
}

/// The editor suite: keystrokes, session memory and Run-to-output latency, on a server
/// in this process with every slot the host has.
fn editor_suite(
    config: &Config,
    args: &BenchArgs,
) -> anyhow::Result<super::bench_editor::EditorReport> {
    let workers = super::cpus();
    let registry = super::load_registry(config)?;
    let jail = super::start_jail(config, workers, Some(&registry))?;
    let mut executor = Executor::new(jail.clone(), registry.clone(), config.limits)
        .with_cache(super::compile_cache(config)?);
    if let Some(pool) = super::start_pool(config, &jail, &registry) {
        executor = executor.with_pool(pool);
    }
    let opts = super::bench_editor::EditorBenchOptions {
        runs: args.runs,
        ..Default::default()
    };
    super::bench_editor::bench_editor(Arc::new(executor), workers, &opts)
}

fn print_sandbox(r: &Report) {
    println!(
        "cod bench: {} runs per contender, {} CPUs, kernel {}, cgroup {}; medians (p99) in ms",
        r.runs, r.cpus, r.kernel, r.cgroup
    );
    println!();
    println!(
        "| scenario | raw | bwrap | cod | cod/raw | cod/bwrap | cod overhead | bwrap overhead |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let f = |s: &Stats| format!("{:.2} ({:.2})", s.median_ms, s.p99_ms);
    let opt = |o: Option<f64>, unit: &str| o.map_or("–".to_owned(), |v| format!("{v:.2}{unit}"));
    for row in &r.rows {
        println!(
            "| {} | {} | {} | {} | {:.2} | {} | {:+.2} ms | {} |",
            row.scenario,
            f(&row.raw),
            row.bwrap.as_ref().map_or("–".to_owned(), f),
            f(&row.cod),
            row.cod_over_raw,
            opt(row.cod_over_bwrap, ""),
            row.cod_overhead_ms,
            row.bwrap_overhead_ms
                .map_or("–".to_owned(), |v| format!("{v:+.2} ms")),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_paths_become_host_paths_in_arguments_lists_and_options() {
        let binds = [(PathBuf::from("/host/rust"), PathBuf::from("/opt/rust"))];
        let work = Path::new("/tmp/w");
        assert_eq!(to_host("/box/main", work, &binds), "/tmp/w/main");
        assert_eq!(
            to_host("/opt/rust/bin:/usr/bin", work, &binds),
            "/host/rust/bin:/usr/bin"
        );
        assert_eq!(
            to_host("-J-XX:SharedArchiveFile=/opt/rust/javac.jsa", work, &binds),
            "-J-XX:SharedArchiveFile=/host/rust/javac.jsa"
        );
        assert_eq!(to_host("-O2", work, &binds), "-O2");
        assert_eq!(to_host("/optional", work, &binds), "/optional");
    }
}
