//! `cod bench --suite api`: what a user of the service feels, through `POST /api/v1/run` of a
//! real `cod serve` on loopback, against running the same programs locally (and, where the
//! goal says so, under bubblewrap), measured interleaved in the same run.
//!
//! Two servers are started from this very binary: one as configured by default (warm
//! runtimes, compile cache, prebuilt headers) and, for the throughput comparison, one with
//! the pool disabled. First-run scenarios change a comment in the source on every run, so
//! that each one compiles; "cached" scenarios send the same source every time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};

use super::bench::{Stats, median_by, stats};
use super::bench_machine::{MachineCosts, machine_costs};

/// One row of the API suite.
#[derive(Debug, Serialize)]
pub(crate) struct ApiRow {
    /// What was run.
    pub(crate) scenario: String,
    /// Its baseline, in words.
    pub(crate) baseline: String,
    /// The baseline's times.
    pub(crate) base: Stats,
    /// cod's times, request to answer.
    pub(crate) cod: Stats,
    /// cod median / baseline median.
    pub(crate) ratio: f64,
    /// The goal, in words.
    pub(crate) goal: String,
    /// Whether the goal is met in this run.
    pub(crate) met: bool,
}

/// Runs per second.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Throughput {
    /// Concurrent clients.
    pub(crate) clients: usize,
    /// With warm runtimes.
    pub(crate) warm_per_s: f64,
    /// Without (every run starts the interpreter).
    pub(crate) cold_per_s: f64,
    /// Raw `python3 -c 'print(1)'` with as many processes at once.
    pub(crate) raw_per_s: f64,
    /// As many bare fork servers in `/usr/bin/python3` at once, with the warm runtime's
    /// preloads: no sandbox, no API, only a fork per run (see [`fork_rate`]).
    pub(crate) fork_per_s: f64,
    /// Where the CPU of a warm run goes.
    pub(crate) warm_cpu: CpuPerRun,
}

/// CPU time per run while runs come back to back, ms: what bounds throughput once the
/// machine's CPUs are busy.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct CpuPerRun {
    /// The whole machine's (every process and the kernel's own threads).
    pub(crate) machine_ms: f64,
    /// Of that, the time the machine's CPUs spent in the kernel (system calls, page faults,
    /// interrupts), for every process.
    pub(crate) kernel_ms: f64,
    /// `cod serve`'s own threads: HTTP, scheduling, talking to the sandbox.
    pub(crate) server_ms: f64,
    /// Every process below it: the sandbox's helper, keepers, supervisors, zygotes and the
    /// runs' own processes.
    pub(crate) sandbox_ms: f64,
    /// This process: the load's clients.
    pub(crate) client_ms: f64,
    /// CPUs this machine has.
    pub(crate) cpus: usize,
}

impl CpuPerRun {
    /// The runs per second the machine could serve at this cost, all CPUs busy.
    pub(crate) fn ceiling_per_s(&self) -> f64 {
        self.cpus as f64 * 1000.0 / self.machine_ms.max(1e-9)
    }
}

/// CPU time of a process tree so far, ms.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct TreeCpu {
    /// The root's own threads.
    root_ms: f64,
    /// Every process below it, those already reaped included.
    below_ms: f64,
}

/// One process's `/proc/<pid>/stat`: its pid, parent, own CPU ticks (user + system) and
/// its reaped children's.
fn parse_stat(text: &str) -> Option<(u32, u32, u64, u64)> {
    let pid = text.split_whitespace().next()?.parse().ok()?;
    // The name may hold spaces and parentheses: the fields follow its last `)`.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok());
    let ppid = u32::try_from(num(1)?).ok()?;
    Some((pid, ppid, num(11)? + num(12)?, num(13)? + num(14)?))
}

/// The CPU time of `root` and of every process below it (reaped ones count in their
/// parent's children's time), ms.
fn tree_cpu(root: u32) -> TreeCpu {
    let mut procs = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(text) = std::fs::read_to_string(e.path().join("stat"))
            && let Some(p) = parse_stat(&text)
        {
            procs.push(p);
        }
    }
    let parent: std::collections::HashMap<u32, u32> =
        procs.iter().map(|&(pid, ppid, ..)| (pid, ppid)).collect();
    let below = |mut pid: u32| {
        while let Some(&up) = parent.get(&pid) {
            if up == root {
                return true;
            }
            if up == 0 || up == pid {
                return false;
            }
            pid = up;
        }
        false
    };
    // USER_HZ is 100 on Linux.
    let ms = |ticks: u64| ticks as f64 * 10.0;
    let mut t = TreeCpu::default();
    for &(pid, _, own, reaped) in &procs {
        if pid == root {
            t.root_ms += ms(own);
            t.below_ms += ms(reaped);
        } else if below(pid) {
            t.below_ms += ms(own + reaped);
        }
    }
    t
}

/// The API suite's results.
#[derive(Debug, Serialize)]
pub(crate) struct ApiReport {
    pub(crate) rows: Vec<ApiRow>,
    pub(crate) throughput: Vec<Throughput>,
    /// What this machine's kernel charges for a fork per run's memory work and for
    /// switching between processes, measured right before the throughput (absent when the
    /// probe could not be compiled or run).
    pub(crate) machine: Option<MachineCosts>,
    /// Size of Rust hello: statically linked (rustc's default) / cod's (libstd shared).
    pub(crate) rust_static_bytes: u64,
    pub(crate) rust_dynamic_bytes: u64,
}

/// A `cod serve` started for the bench.
pub(super) struct Server {
    child: Child,
    pub(super) url: String,
    _dir: tempfile::TempDir,
    cache: PathBuf,
}

impl Server {
    /// The `cod serve` process.
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM: the server drains and its helper removes its cgroups.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(super) async fn start_server(
    client: &reqwest::Client,
    workers: usize,
    uid_base: u32,
    pool: bool,
) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let cache = dir.path().join("cache");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nworkers = {workers}\nqueue = 1024\n\n\
         [sandbox]\nuid_base = {uid_base}\n\n[cache]\ndir = {cache:?}\n\n[pool]\nenabled = {pool}\n"
    );
    let path = dir.path().join("cod.toml");
    std::fs::write(&path, config)?;
    let log = std::fs::File::create(dir.path().join("serve.log"))?;
    let child = Command::new(std::env::current_exe()?)
        .arg("--config")
        .arg(&path)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting cod serve")?;
    let server = Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
        cache,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("{}/healthz", server.url)).send().await
            && r.status().is_success()
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("cod serve did not answer /healthz within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(server)
}

/// Waits until the server's prebuilt files (the C++ header, the javac archive) exist.
pub(super) async fn wait_prebuilt(server: &Server) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let want = ["stdc++.h.gch", "javac.jsa"];
    loop {
        let found: Vec<&str> = want
            .iter()
            .copied()
            .filter(|f| find_file(&server.cache.join("prebuilt"), f))
            .collect();
        if found.len() == want.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the prebuilt files did not appear within 300 s (found {found:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn find_file(dir: &Path, name: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let p = e.path();
        p.file_name().is_some_and(|n| n == name) || (p.is_dir() && find_file(&p, name))
    })
}

/// One request; checks the run ended `ok` with `expect` on stdout.
pub(super) async fn post(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
    expect: &str,
) -> anyhow::Result<(Duration, Value)> {
    let start = Instant::now();
    let r = client
        .post(format!("{url}/api/v1/run"))
        .json(body)
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await?;
    let took = start.elapsed();
    if !status.is_success() || v["status"] != "ok" || v["stdout"] != expect {
        bail!("{body} answered {status}: {v}");
    }
    Ok((took, v))
}

fn run_local(cmd: &mut Command, expect: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    let took = start.elapsed();
    if !out.status.success() || String::from_utf8_lossy(&out.stdout) != expect {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

/// A local command with a clean environment, run in `dir`.
fn local(dir: &Path, argv: &[&str]) -> Command {
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..])
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", dir)
        .env("LANG", "C.UTF-8");
    c
}

/// `sh -c` in `dir` (a compile and a run, as one would type them).
fn shell(dir: &Path, script: &str) -> Command {
    local(dir, &["/bin/sh", "-c", script])
}

const C_HELLO: &str = "#include <stdio.h>\nint main(void) { puts(\"Hello, world!\"); return 0; }\n";
const CPP_BITS: &str =
    "#include <bits/stdc++.h>\nint main() { std::cout << \"Hello, world!\" << std::endl; }\n";
const RUST_HELLO: &str = "fn main() { println!(\"Hello, world!\"); }\n";
const JAVA_HELLO: &str = "public class Main {\n    public static void main(String[] args) {\n        System.out.println(\"Hello, world!\");\n    }\n}\n";
const HELLO: &str = "Hello, world!\n";

struct Case {
    scenario: &'static str,
    baseline: String,
    goal: &'static str,
    /// Whether cod/baseline `ratio` and cod's median (ms) meet the goal.
    check: fn(f64, f64) -> bool,
    language: &'static str,
    source: &'static str,
    /// Whether each run gets a fresh comment (so it compiles).
    fresh: bool,
    /// The comment syntax for `fresh`.
    comment: &'static str,
    expect: &'static str,
    /// Prepares the baseline's directory once (writes files, compiles).
    setup: Box<SetupFn>,
    /// The baseline command for run `i`.
    base: Box<BaseFn>,
}

/// Prepares a baseline's directory.
type SetupFn = dyn Fn(&Path) -> anyhow::Result<()>;
/// Builds the baseline command for run `i` in a directory.
type BaseFn = dyn Fn(&Path, usize) -> anyhow::Result<Command>;

fn rustc() -> PathBuf {
    Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| PathBuf::from("/usr"), |s| PathBuf::from(s.trim()))
        .join("bin/rustc")
}

fn cases(bwrap: bool) -> Vec<Case> {
    let mut v = vec![
        Case {
            scenario: "python print(1)",
            baseline: "local /usr/bin/python3 -c 'print(1)'".into(),
            goal: "≤ 0.25 × local",
            check: |r, _| r <= 0.25,
            language: "python",
            source: "print(1)",
            fresh: false,
            comment: "#",
            expect: "1\n",
            setup: Box::new(|_| Ok(())),
            base: Box::new(|d, _| Ok(local(d, &["/usr/bin/python3", "-c", "print(1)"]))),
        },
        Case {
            scenario: "C hello, cached",
            baseline: if bwrap {
                "the same binary under bubblewrap".into()
            } else {
                "the same binary run locally".into()
            },
            goal: "≤ 3 ms and ≤ 0.5 × bubblewrap",
            check: |r, ms| ms <= 3.0 && r <= 0.5,
            language: "c",
            source: C_HELLO,
            fresh: false,
            comment: "//",
            expect: HELLO,
            setup: Box::new(|d| {
                std::fs::write(d.join("main.c"), C_HELLO)?;
                run_local(&mut shell(d, "gcc -O2 -o main main.c"), "")?;
                Ok(())
            }),
            base: Box::new(move |d, _| {
                if bwrap {
                    Ok(bwrap_cmd(d, &["/box/main"]))
                } else {
                    Ok(local(d, &["./main"]))
                }
            }),
        },
        Case {
            scenario: "C hello, first run",
            baseline: "local gcc -O2 main.c && ./main".into(),
            goal: "≤ 1.1 × local",
            check: |r, _| r <= 1.1,
            language: "c",
            source: C_HELLO,
            fresh: true,
            comment: "//",
            expect: HELLO,
            setup: Box::new(|_| Ok(())),
            base: Box::new(|d, i| {
                std::fs::write(d.join("main.c"), format!("{C_HELLO}// {i}\n"))?;
                Ok(shell(d, "gcc -O2 -o main main.c -lm && ./main"))
            }),
        },
        Case {
            scenario: "C++ <bits/stdc++.h> hello, first run",
            baseline: "local g++ -O2 (no precompiled header) && ./main".into(),
            goal: "≤ 0.35 × local",
            check: |r, _| r <= 0.35,
            language: "cpp",
            source: CPP_BITS,
            fresh: true,
            comment: "//",
            expect: HELLO,
            setup: Box::new(|_| Ok(())),
            base: Box::new(|d, i| {
                std::fs::write(d.join("main.cpp"), format!("{CPP_BITS}// {i}\n"))?;
                Ok(shell(d, "g++ -O2 -std=gnu++20 -o main main.cpp && ./main"))
            }),
        },
        Case {
            scenario: "Rust hello, first run",
            baseline: "local rustc -O (static std) && ./main".into(),
            goal: "≤ 0.8 × local",
            check: |r, _| r <= 0.8,
            language: "rust",
            source: RUST_HELLO,
            fresh: true,
            comment: "//",
            expect: HELLO,
            setup: Box::new(|_| Ok(())),
            base: Box::new(|d, i| {
                std::fs::write(d.join("main.rs"), format!("{RUST_HELLO}// {i}\n"))?;
                let rustc = rustc();
                Ok(shell(
                    d,
                    &format!(
                        "{} --edition 2021 -O -o main main.rs && ./main",
                        rustc.display()
                    ),
                ))
            }),
        },
        Case {
            scenario: "Java hello Main, first run",
            baseline: "local javac Main.java && java Main".into(),
            goal: "≤ 0.6 × local",
            check: |r, _| r <= 0.6,
            language: "java",
            source: JAVA_HELLO,
            fresh: true,
            comment: "//",
            expect: HELLO,
            setup: Box::new(|_| Ok(())),
            base: Box::new(|d, i| {
                std::fs::write(d.join("Main.java"), format!("{JAVA_HELLO}// {i}\n"))?;
                Ok(shell(d, "javac Main.java && java Main"))
            }),
        },
        Case {
            scenario: "JavaScript console.log(1)",
            baseline: "local node -e 'console.log(1)'".into(),
            goal: "≤ 0.25 × local",
            check: |r, _| r <= 0.25,
            language: "javascript",
            source: "console.log(1)",
            fresh: false,
            comment: "//",
            expect: "1\n",
            setup: Box::new(|_| Ok(())),
            base: Box::new(|d, _| Ok(local(d, &["/usr/bin/node", "-e", "console.log(1)"]))),
        },
    ];
    v.retain(|c| c.language != "c" || Path::new("/usr/bin/gcc").exists());
    v
}

/// bubblewrap with cod's isolation, `dir` as `/box`.
fn bwrap_cmd(dir: &Path, argv: &[&str]) -> Command {
    let mut c = Command::new("bwrap");
    c.args([
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--symlink",
        "usr/bin",
        "/bin",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--bind",
    ])
    .arg(dir)
    .args(["/box", "--chdir", "/box", "--"])
    .args(argv);
    c
}

/// Runs the suite; `only` restricts it to these languages (empty: all).
pub(crate) fn run(
    runs: usize,
    seconds: u64,
    only: &[String],
    bwrap: bool,
) -> anyhow::Result<ApiReport> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(runs, seconds, only, bwrap))
}

async fn run_async(
    runs: usize,
    seconds: u64,
    only: &[String],
    bwrap: bool,
) -> anyhow::Result<ApiReport> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(16)
        .build()?;
    let workers = super::cpus();
    eprintln!("starting cod serve ({workers} workers, warm runtimes on)...");
    let server = start_server(&client, workers, 58_000, true).await?;
    eprintln!("waiting for the prebuilt C++ header and javac archive...");
    wait_prebuilt(&server).await?;
    let mut rows = Vec::new();
    for case in cases(bwrap) {
        if !only.is_empty() && !only.iter().any(|l| l == case.language) {
            continue;
        }
        eprint!("{}: ", case.scenario);
        let dir = tempfile::tempdir()?;
        (case.setup)(dir.path())?;
        let (mut base, mut cod) = (Vec::new(), Vec::new());
        let warmup = if case.fresh { 1 } else { 20 };
        for i in 0..runs + warmup {
            let src = if case.fresh {
                format!(
                    "{}{} run {i} {}\n",
                    case.source,
                    case.comment,
                    std::process::id()
                )
            } else {
                case.source.to_owned()
            };
            let body = json!({"language": case.language, "source": src});
            let (c, v) = post(&client, &server.url, &body, case.expect).await?;
            if case.fresh && v["compile"]["cached"] == true {
                bail!("{}: a fresh source came from the cache", case.scenario);
            }
            let b = run_local(&mut (case.base)(dir.path(), i)?, case.expect)?;
            if i >= warmup {
                cod.push(c);
                base.push(b);
            }
            eprint!(".");
        }
        eprintln!();
        let (base, cod) = (stats(base), stats(cod));
        let ratio = cod.median_ms / base.median_ms;
        rows.push(ApiRow {
            scenario: case.scenario.into(),
            baseline: case.baseline.clone(),
            met: (case.check)(ratio, cod.median_ms),
            goal: case.goal.into(),
            ratio,
            base,
            cod,
        });
    }
    let (rust_static_bytes, rust_dynamic_bytes) = rust_sizes().unwrap_or((0, 0));

    let mut throughput = Vec::new();
    let mut machine = None;
    if only.is_empty() || only.iter().any(|l| l == "python") {
        eprintln!("starting a second cod serve with warm runtimes off...");
        let cold = start_server(&client, workers, 58_500, false).await?;
        // Its prebuilds hold a slot and the CPU for seconds: not during a measurement.
        wait_prebuilt(&cold).await?;
        eprintln!("measuring what this machine's kernel charges for forks and switches...");
        let dir = tempfile::tempdir()?;
        machine = machine_costs(dir.path())
            .inspect_err(|e| eprintln!("no machine figures: {e:#}"))
            .ok();
        for clients in [2, 4] {
            eprint!(
                "throughput with {clients} clients, {THROUGHPUT_ROUNDS} rounds of 4 × {seconds} s: "
            );
            let mut rounds = Vec::new();
            for _ in 0..THROUGHPUT_ROUNDS {
                let (warm_per_s, warm_cpu) =
                    rate_and_split(&client, &server, clients, seconds).await?;
                let cold_per_s = rate(&client, &cold.url, clients, seconds).await?;
                let raw_per_s = raw_rate(clients, seconds)?;
                let fork_per_s = fork_rate(
                    clients,
                    Duration::from_secs(seconds),
                    &python_preload(),
                    "print(1)",
                    "1\n",
                )?;
                rounds.push(Throughput {
                    clients,
                    warm_per_s,
                    cold_per_s,
                    raw_per_s,
                    fork_per_s,
                    warm_cpu,
                });
                eprint!(".");
            }
            eprintln!();
            throughput.extend(median_round(&rounds));
        }
    }
    Ok(ApiReport {
        rows,
        throughput,
        machine,
        rust_static_bytes,
        rust_dynamic_bytes,
    })
}

/// Rounds of the throughput comparison. Each round measures every contender once, one
/// after another, so that a slow or quick spell of a shared machine falls on all of them;
/// the report gives each one's median over the rounds.
pub(super) const THROUGHPUT_ROUNDS: usize = 3;

/// Each contender's median over `rounds` (the middle one, the upper of two), or `None`
/// without any. The warm runtimes' CPU split is the one of their median round, so that its
/// parts still add up.
fn median_round(rounds: &[Throughput]) -> Option<Throughput> {
    let of = |key: fn(&Throughput) -> f64| median_by(rounds, key).map(key);
    Some(Throughput {
        cold_per_s: of(|t| t.cold_per_s)?,
        raw_per_s: of(|t| t.raw_per_s)?,
        fork_per_s: of(|t| t.fork_per_s)?,
        ..*median_by(rounds, |t| t.warm_per_s)?
    })
}

/// Completed `print(1)` runs per second with `clients` sequential clients at once.
pub(super) async fn rate(
    client: &reqwest::Client,
    url: &str,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<f64> {
    warm_up(client, url).await?;
    timed_rate(url, clients, seconds).await
}

/// A timed load and what `read` gave right before and right after it.
pub(super) struct Measured<T> {
    pub(super) per_s: f64,
    /// The runs answered between the two readings (at least 1).
    pub(super) runs: f64,
    pub(super) before: T,
    pub(super) after: T,
}

/// [`rate`], with `read` taken around the timed load alone (after the warm-up), so that
/// what it reads divides by the runs it counted.
pub(super) async fn rate_between<T>(
    client: &reqwest::Client,
    url: &str,
    clients: usize,
    seconds: u64,
    read: impl Fn() -> T,
) -> anyhow::Result<Measured<T>> {
    warm_up(client, url).await?;
    let before = read();
    let start = Instant::now();
    let per_s = timed_rate(url, clients, seconds).await?;
    let runs = (per_s * start.elapsed().as_secs_f64()).max(1.0);
    Ok(Measured {
        per_s,
        runs,
        before,
        after: read(),
    })
}

/// [`rate`] on `server`, and where the CPU of each run went meanwhile.
async fn rate_and_split(
    client: &reqwest::Client,
    server: &Server,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<(f64, CpuPerRun)> {
    let me = std::process::id();
    let read = || {
        (
            super::bench_fleet::machine_time(),
            tree_cpu(server.pid()),
            tree_cpu(me),
        )
    };
    let m = rate_between(client, &server.url, clients, seconds, read).await?;
    let ((machine, tree, own), (machine2, tree2, own2), runs) = (m.before, m.after, m.runs);
    Ok((
        m.per_s,
        CpuPerRun {
            machine_ms: (machine2.busy_ms - machine.busy_ms) / runs,
            kernel_ms: (machine2.kernel_ms - machine.kernel_ms) / runs,
            server_ms: (tree2.root_ms - tree.root_ms) / runs,
            sandbox_ms: (tree2.below_ms - tree.below_ms) / runs,
            client_ms: (own2.root_ms - own.root_ms) / runs,
            cpus: super::cpus(),
        },
    ))
}

/// Every slot serves a few runs first.
async fn warm_up(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let body = json!({"language": "python", "source": "print(1)"});
    for _ in 0..20 {
        post(client, url, &body, "1\n").await?;
    }
    Ok(())
}

/// Runs per second of `print(1)` over `seconds`, `clients` sequential clients at once.
async fn timed_rate(url: &str, clients: usize, seconds: u64) -> anyhow::Result<f64> {
    // The load costs its clients little, so that the CPU goes to what is measured (as
    // `wrk`'s does): each client is one kept-alive HTTP/1.1 connection, all of them on one
    // thread, and each answer is checked without building a JSON tree.
    let addr = url
        .strip_prefix("http://")
        .context("the server's address")?
        .to_owned();
    let load = std::thread::spawn(move || -> anyhow::Result<f64> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let start = Instant::now();
            let end = start + Duration::from_secs(seconds);
            let one = |addr: String| async move {
                let stream = tokio::net::TcpStream::connect(&addr).await?;
                stream.set_nodelay(true)?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await?;
                tokio::spawn(conn);
                let mut n = 0u64;
                while Instant::now() < end {
                    let request = hyper::Request::post("/api/v1/run")
                        .header(hyper::header::HOST, &addr)
                        .header(hyper::header::CONTENT_TYPE, "application/json")
                        .body(http_body_util::Full::new(bytes_of(PRINT_1)))?;
                    sender.ready().await?;
                    let r = sender.send_request(request).await?;
                    let status = r.status();
                    let body = http_body_util::BodyExt::collect(r.into_body())
                        .await?
                        .to_bytes();
                    if !status.is_success() || !answered_1(&body) {
                        bail!(
                            "print(1) answered {status}: {}",
                            String::from_utf8_lossy(&body)
                        );
                    }
                    n += 1;
                }
                anyhow::Ok(n)
            };
            let all =
                futures_util::future::try_join_all((0..clients).map(|_| one(addr.clone()))).await?;
            Ok(all.iter().sum::<u64>() as f64 / start.elapsed().as_secs_f64())
        })
    });
    tokio::task::spawn_blocking(move || load.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the load's thread panicked"))?
}

/// `b` as the body type hyper's client sends.
fn bytes_of(b: &'static [u8]) -> hyper::body::Bytes {
    hyper::body::Bytes::from_static(b)
}

/// The throughput runs' request.
const PRINT_1: &[u8] = br#"{"language":"python","source":"print(1)"}"#;

/// Whether a run's answer says it ended `ok` with `1` on stdout; it reads those two
/// fields alone (borrowed where the JSON has no escapes).
fn answered_1(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Answer<'a> {
        #[serde(borrow)]
        status: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        stdout: std::borrow::Cow<'a, str>,
    }
    serde_json::from_slice::<Answer<'_>>(body).is_ok_and(|a| a.status == "ok" && a.stdout == "1\n")
}

/// Local `python3 -c 'print(1)'` runs per second with `clients` processes at once.
fn raw_rate(clients: usize, seconds: u64) -> anyhow::Result<f64> {
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(move || {
                    let dir = tempfile::tempdir()?;
                    let mut n = 0u64;
                    while Instant::now() < end {
                        run_local(
                            &mut local(dir.path(), &["/usr/bin/python3", "-c", "print(1)"]),
                            "1\n",
                        )?;
                        n += 1;
                    }
                    anyhow::Ok(n)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .sum::<anyhow::Result<u64>>()
    })?;
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// The modules the built-in Python language's warm runtime imports ahead.
fn python_preload() -> Vec<String> {
    cod_runtime::language::Registry::load(None, &[])
        .ok()
        .and_then(|r| Some(r.get("python")?.warm()?.preload.clone()))
        .unwrap_or_default()
}

/// The fork server [`fork_rate`] runs: `argv[1]` seconds, `argv[2]` the source, `argv[3]`
/// its expected output, then the modules to import first. Each run is a fork that runs the
/// compiled source with its output on a pipe, read and checked by the server; it prints
/// the runs it completed.
const FORK_SERVER: &str = r#"
import os, sys, time
for m in sys.argv[4:]:
    __import__(m)
code = compile(sys.argv[2], 'main.py', 'exec')
expect = sys.argv[3].encode()
end = time.monotonic() + float(sys.argv[1])
n = 0
while time.monotonic() < end:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        # The child never returns to the loop, whatever the source does.
        status = 1
        try:
            os.close(r)
            os.dup2(w, 1)
            os.close(w)
            exec(code, {'__name__': '__main__'})
            sys.stdout.flush()
            status = 0
        except BaseException:
            import traceback
            traceback.print_exc()
        os._exit(status)
    os.close(w)
    out = b''
    while True:
        b = os.read(r, 4096)
        if not b:
            break
        out += b
    os.close(r)
    if os.waitpid(pid, 0)[1] != 0 or out != expect:
        sys.exit('a run printed %r' % out)
    n += 1
print(n)
"#;

/// Runs per second of `clients` bare fork servers at once in `/usr/bin/python3`, each
/// importing `preload` and then, for each run, forking a child that runs `source`
/// (compiled once) and checking that it printed `expect`. No sandbox and no API: what
/// forking a warm interpreter per run costs this machine on its own, the floor under the
/// warm runtimes' throughput.
fn fork_rate(
    clients: usize,
    time: Duration,
    preload: &[String],
    source: &str,
    expect: &str,
) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let secs = format!("{:.3}", time.as_secs_f64());
    let start = Instant::now();
    let children = (0..clients)
        .map(|_| {
            local(
                dir.path(),
                &["/usr/bin/python3", "-c", FORK_SERVER, &secs, source, expect],
            )
            .args(preload)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting /usr/bin/python3")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Every server is waited for before any is judged: none is left running.
    let outputs: Vec<_> = children
        .into_iter()
        .map(std::process::Child::wait_with_output)
        .collect();
    let mut total = 0u64;
    for out in outputs {
        let out = out?;
        let text = String::from_utf8_lossy(&out.stdout);
        match text.trim().parse::<u64>() {
            Ok(n) if out.status.success() => total += n,
            _ => bail!(
                "the fork server failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Sizes of Rust hello built by rustc's default (static std) and as cod builds it (std as
/// a shared library).
fn rust_sizes() -> anyhow::Result<(u64, u64)> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("main.rs"), RUST_HELLO)?;
    let rustc = rustc();
    let build = |out: &str, extra: &[&str]| -> anyhow::Result<u64> {
        let st = Command::new(&rustc)
            .args(["--edition", "2021", "-O", "-o", out, "main.rs"])
            .args(extra)
            .current_dir(dir.path())
            .status()?;
        if !st.success() {
            bail!("rustc failed");
        }
        Ok(std::fs::metadata(dir.path().join(out))?.len())
    };
    Ok((
        build("static", &[])?,
        build("dynamic", &["-C", "prefer-dynamic", "-C", "rpath"])?,
    ))
}

/// Prints the suite as a Markdown table.
pub(crate) fn print(r: &ApiReport, out: &mut impl std::io::Write) -> std::io::Result<()> {
    writeln!(
        out,
        "\nThrough the API (`POST /api/v1/run` on loopback), medians (p99) in ms:\n"
    )?;
    writeln!(
        out,
        "| scenario | baseline | baseline ms | cod ms | cod / baseline | goal | met |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|")?;
    for row in &r.rows {
        writeln!(
            out,
            "| {} | {} | {:.2} ({:.2}) | {:.2} ({:.2}) | {:.2} | {} | {} |",
            row.scenario,
            row.baseline,
            row.base.median_ms,
            row.base.p99_ms,
            row.cod.median_ms,
            row.cod.p99_ms,
            row.ratio,
            row.goal,
            if row.met { "yes" } else { "no" }
        )?;
    }
    if r.rust_static_bytes > 0 {
        writeln!(
            out,
            "\nRust hello binary: {} bytes static (rustc's default), {} bytes as cod builds it \
             (std shared): {:.0}× smaller.",
            r.rust_static_bytes,
            r.rust_dynamic_bytes,
            r.rust_static_bytes as f64 / r.rust_dynamic_bytes.max(1) as f64
        )?;
    }
    if !r.throughput.is_empty() {
        writeln!(
            out,
            "\nThroughput of Python `print(1)` through the API, runs/s:\n"
        )?;
        writeln!(
            out,
            "| clients | warm runtimes | cold (pool off) | warm / cold | local python3 | fork server, no sandbox or API | warm / fork server |"
        )?;
        writeln!(out, "|---|---|---|---|---|---|---|")?;
        for t in &r.throughput {
            writeln!(
                out,
                "| {} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} | {:.2} |",
                t.clients,
                t.warm_per_s,
                t.cold_per_s,
                t.warm_per_s / t.cold_per_s.max(1e-9),
                t.raw_per_s,
                t.fork_per_s,
                t.warm_per_s / t.fork_per_s.max(1e-9),
            )?;
        }
        writeln!(
            out,
            "\nCPU per warm run, ms (runs back to back, so CPU bounds throughput):\n"
        )?;
        writeln!(
            out,
            "| clients | whole machine | of which in the kernel | cod serve's threads | sandbox and programs | the load's clients | rest (kernel threads, other processes) | ceiling on {} CPUs, runs/s |",
            r.throughput.first().map_or(0, |t| t.warm_cpu.cpus)
        )?;
        writeln!(out, "|---|---|---|---|---|---|---|---|")?;
        for t in &r.throughput {
            let c = t.warm_cpu;
            writeln!(
                out,
                "| {} | {:.2} | {:.2} ({:.0}%) | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} |",
                t.clients,
                c.machine_ms,
                c.kernel_ms,
                100.0 * c.kernel_ms / c.machine_ms.max(1e-9),
                c.server_ms,
                c.sandbox_ms,
                c.client_ms,
                (c.machine_ms - c.server_ms - c.sandbox_ms - c.client_ms).max(0.0),
                c.ceiling_per_s()
            )?;
        }
    }
    super::bench_machine::print(r.machine.as_ref(), out)?;
    out.flush()
}

#[cfg(test)]
mod cpu_tests {
    use super::*;

    /// The throughput row takes each contender's median over the rounds, each on its own
    /// (a quick spell for one contender does not pick the others' rounds), and the CPU
    /// split of the warm runtimes' median round.
    #[test]
    fn throughput_rounds_give_each_contender_its_median() {
        let round = |warm: f64, cold: f64, raw: f64, fork: f64| Throughput {
            clients: 2,
            warm_per_s: warm,
            cold_per_s: cold,
            raw_per_s: raw,
            fork_per_s: fork,
            warm_cpu: CpuPerRun {
                machine_ms: 2000.0 / warm,
                ..CpuPerRun::default()
            },
        };
        let t = median_round(&[
            round(700.0, 90.0, 150.0, 2000.0),
            round(500.0, 140.0, 170.0, 1400.0),
            round(600.0, 120.0, 110.0, 1700.0),
        ])
        .unwrap();
        assert_eq!(
            (
                t.clients,
                t.warm_per_s,
                t.cold_per_s,
                t.raw_per_s,
                t.fork_per_s
            ),
            (2, 600.0, 120.0, 150.0, 1700.0)
        );
        assert_eq!(t.warm_cpu.machine_ms, 2000.0 / 600.0);
        assert!(median_round(&[]).is_none());
    }

    /// A throughput answer counts only if the run ended `ok` with `1` on stdout.
    #[test]
    fn only_a_good_print_1_counts() {
        assert!(answered_1(
            br#"{"id":"x","status":"ok","exit_code":0,"stdout":"1\n","stderr":"","compile":null}"#
        ));
        assert!(!answered_1(br#"{"status":"ok","stdout":"2\n"}"#));
        assert!(!answered_1(br#"{"status":"runtime_error","stdout":"1\n"}"#));
        assert!(!answered_1(br#"{"status":"ok"}"#));
        assert!(!answered_1(b"not json"));
    }

    /// The fork server completes runs that print what is expected, with the preloads
    /// imported, and fails on a run that prints anything else, a run that raises (its
    /// traceback shown), or a module that is missing.
    #[test]
    fn the_fork_server_counts_only_runs_that_printed_the_answer() {
        let t = Duration::from_millis(300);
        let json = ["json".to_owned()];
        let rate =
            fork_rate(2, t, &json, "import json; print(json.dumps(1))", "1\n").expect("runs");
        assert!(rate >= 1.0, "{rate} runs/s");
        let err = fork_rate(1, t, &[], "print(2)", "1\n").expect_err("a wrong answer fails");
        assert!(err.to_string().contains("printed b'2\\n'"), "{err:#}");
        let err = fork_rate(1, t, &[], "raise ValueError('boom')", "1\n")
            .expect_err("a run that raises fails");
        assert!(err.to_string().contains("ValueError: boom"), "{err:#}");
        let missing = ["no_such_module_here".to_owned()];
        assert!(fork_rate(1, t, &missing, "print(1)", "1\n").is_err());
    }

    /// The built-in Python's preloads are the ones the fork server imports.
    #[test]
    fn the_fork_server_imports_the_warm_runtimes_preloads() {
        let p = python_preload();
        assert!(p.iter().any(|m| m == "json"), "{p:?}");
    }

    /// The fields come after the name's last `)`, whatever the name holds.
    #[test]
    fn stat_lines_parse_past_odd_names() {
        let line = "4242 (a) b (c)) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 40 7 3 20 0 1 0";
        assert_eq!(parse_stat(line), Some((4242, 17, 290, 10)));
        assert_eq!(parse_stat("12 (x) S"), None);
    }

    /// A child that burns CPU and is reaped counts below this process, not as its own.
    #[test]
    fn a_reaped_childs_cpu_counts_below_its_parent() {
        let me = std::process::id();
        let before = tree_cpu(me);
        let status = Command::new("/bin/sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .status()
            .expect("sh runs");
        assert!(status.success());
        let after = tree_cpu(me);
        assert!(
            after.below_ms - before.below_ms >= 50.0,
            "{before:?} -> {after:?}"
        );
    }
}
