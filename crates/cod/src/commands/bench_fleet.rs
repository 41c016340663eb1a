//! `cod bench --suite fleet`: the distributed path against the single process, in the same
//! run on the same machine. One side is `cod serve` with two slots; the other is a NATS
//! server with JetStream, one `cod serve --nats` gateway and two `cod worker`s of one slot
//! each, all on loopback. Both answer Python `print(1)`: sequential latency (in alternating
//! blocks, see [`LATENCY_BLOCK`]) and throughput with 2 and 4 clients.
//!
//! With two CPUs or more, the comparison runs twice: first with everything free to use every
//! CPU (each worker, like each of the single process's slots, on a CPU of its own); then
//! split as on a fleet, where NATS and the gateways have machines of their own: both
//! workers and the single process on the first CPU, NATS, the gateway and the load on the
//! second. The split shows what the distributed path costs the machines that run the
//! programs; the first, what it costs one machine that does everything.
//!
//! Needs `nats-server` on the PATH or in /usr/sbin (Debian: `apt-get install nats-server`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};

use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

use super::bench::{Stats, median_by, stats};
use super::bench_api::{
    Server, THROUGHPUT_ROUNDS, free_port, post, rate_between, start_server, wait_prebuilt,
};
use super::bench_machine::{MachineCosts, machine_costs};

/// Goal: what the distributed path may add to a warm Python run's median, ms.
const ADDED_MS_GOAL: f64 = 1.0;
/// Goal: the distributed path's throughput over the single process's, at least.
const THROUGHPUT_GOAL: f64 = 0.8;

/// Sequential latency is measured in blocks of this many requests to one path while the
/// other is idle, the paths alternating block by block, so that both see the machine's
/// drift alike. Interleaving request by request would put the distributed path's work after
/// its answer (the job's acknowledgement, a freed worker's look for waiting jobs) into the
/// single process's next request: measured so, the single process's median rose by about
/// 0.5 ms and the added latency looked up to 0.6 ms smaller than the paths alone show.
const LATENCY_BLOCK: usize = 20;
/// The first requests of a block, not counted: the other path's last request may still be
/// finishing its work.
const BLOCK_SETTLE: usize = 2;

/// Throughput of both paths with `clients` clients.
#[derive(Debug, Serialize)]
pub(crate) struct FleetThroughput {
    pub(crate) clients: usize,
    pub(crate) single_per_s: f64,
    pub(crate) fleet_per_s: f64,
    /// fleet / single.
    pub(crate) ratio: f64,
    /// CPU time of the whole machine per run (every process: client, server or gateway,
    /// NATS, workers, sandboxes), ms.
    pub(crate) single_cpu_ms_per_run: f64,
    pub(crate) fleet_cpu_ms_per_run: f64,
}

/// Busy CPU time of the whole machine so far, ms.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct MachineTime {
    /// All of it: user, nice, system, irq and softirq.
    pub(super) busy_ms: f64,
    /// The kernel's part: system, irq and softirq.
    pub(super) kernel_ms: f64,
}

/// [`MachineTime`] from the first line of `/proc/stat`.
pub(super) fn machine_time() -> MachineTime {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    parse_machine_time(stat.lines().next().unwrap_or_default())
}

fn parse_machine_time(line: &str) -> MachineTime {
    // cpu user nice system idle iowait irq softirq steal ...
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let sum = |fields: &[usize]| -> f64 { fields.iter().filter_map(|&i| f.get(i)).sum() };
    // USER_HZ is 100 on Linux.
    MachineTime {
        busy_ms: sum(&[0, 1, 2, 5, 6]) * 10.0,
        kernel_ms: sum(&[2, 5, 6]) * 10.0,
    }
}

/// Busy CPU time of the whole machine so far (user, nice, system, irq, softirq), ms.
pub(super) fn machine_cpu_ms() -> f64 {
    machine_time().busy_ms
}

/// Runs per second and machine CPU ms per run, with `clients` clients (the warm-up
/// counted in neither).
async fn rate_and_cpu(
    client: &reqwest::Client,
    url: &str,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<(f64, f64)> {
    let m = rate_between(client, url, clients, seconds, machine_cpu_ms).await?;
    Ok((m.per_s, (m.after - m.before) / m.runs))
}

/// One comparison of the two paths.
#[derive(Debug, Serialize)]
pub(crate) struct Comparison {
    /// `cod serve`, 2 slots: request to answer.
    pub(crate) single: Stats,
    /// Gateway + 2 workers through NATS.
    pub(crate) fleet: Stats,
    /// fleet median − single median, ms.
    pub(crate) added_ms: f64,
    pub(crate) throughput: Vec<FleetThroughput>,
    pub(crate) latency_met: bool,
    pub(crate) throughput_met: bool,
}

/// The fleet suite's results.
#[derive(Debug, Serialize)]
pub(crate) struct FleetReport {
    /// Every process free to use every CPU.
    #[serde(flatten)]
    pub(crate) shared: Comparison,
    pub(crate) sharing: Sharing,
    /// The same comparison with the work and the rest on CPUs of their own (with two CPUs
    /// or more).
    pub(crate) split: Option<SplitReport>,
    /// What this machine's kernel charges for switching between processes (each hop of
    /// the distributed path pays it) and for a run's memory work, measured before anything
    /// starts (absent when the probe could not be compiled or run).
    pub(crate) machine: Option<MachineCosts>,
}

/// The comparison with the workers on one CPU and NATS, the gateway and the load on
/// another, as on a fleet, where NATS and the gateways have machines of their own; the
/// single process keeps to the workers' CPU.
#[derive(Debug, Serialize)]
pub(crate) struct SplitReport {
    /// The CPU the workers and the single process keep to.
    pub(crate) work_cpu: usize,
    /// The CPU NATS, the gateway and the load keep to.
    pub(crate) rest_cpu: usize,
    #[serde(flatten)]
    pub(crate) paths: Comparison,
}

/// The shared compile cache: compiling a C++ program on a worker against fetching what
/// another worker compiled from the object store.
#[derive(Debug, Serialize)]
pub(crate) struct Sharing {
    /// The compile stage's wall time on the worker, ms (median of fresh programs).
    pub(crate) compile_ms: f64,
    /// Fetching and decoding one such compiled program from the object store, ms.
    pub(crate) fetch: Stats,
    /// Its size, bytes (median).
    pub(crate) bytes: u64,
}

/// Compiles fresh C++ programs on the fleet, then times fetching their compiled programs
/// from the shared store, as a worker without them does.
async fn shared_compiles(
    client: &reqwest::Client,
    fleet: &str,
    nats: &str,
) -> anyhow::Result<Sharing> {
    use futures_util::StreamExt as _;
    use tokio::io::AsyncReadExt as _;
    eprintln!("shared compile cache: compiling fresh C++ programs, fetching them back...");
    let mut compile_ms = Vec::new();
    for i in 0..5 {
        let src = format!(
            "#include <bits/stdc++.h>\nint main() {{ std::cout << \"hi\\n\"; }}\n// {i} {}\n",
            std::process::id()
        );
        let body = json!({"language": "cpp", "source": src});
        let (_, v) = post(client, fleet, &body, "hi\n").await?;
        if v["compile"]["cached"] != false {
            bail!("a fresh C++ program came from the cache: {v}");
        }
        compile_ms.push(v["compile"]["wall_ms"].as_f64().unwrap_or(0.0));
    }
    compile_ms.sort_by(f64::total_cmp);
    let bus = cod_fleet::bus::Bus::connect(nats, "cod bench", cod_fleet::bus::BusConfig::default())
        .await
        .context("connecting to the bench's NATS")?;
    let store = bus
        .artifacts
        .clone()
        .context("the NATS server could not make the shared compile store")?;
    // The workers upload in the background, and a listing that overlaps an upload can wait
    // forever on nats-server 2.9 (its pending count keeps a replaced entry): each listing
    // gets a bound, and the next one sees the uploads finished.
    let mut names = Vec::new();
    for _ in 0..5 {
        let listing = async {
            let mut names = Vec::new();
            let mut list = store.list().await.context("listing shared programs")?;
            while let Some(info) = list.next().await {
                let info = info.context("listing shared programs")?;
                names.push((info.name, info.size));
            }
            anyhow::Ok(names)
        };
        match tokio::time::timeout(Duration::from_secs(5), listing).await {
            Ok(listed) => {
                names = listed?;
                if names.len() >= 5 {
                    break;
                }
            }
            Err(_) => eprintln!("listing the shared programs took over 5 s; again"),
        }
    }
    if names.is_empty() {
        bail!("no compiled program was shared");
    }
    let mut sizes: Vec<u64> = names.iter().map(|(_, s)| *s as u64).collect();
    sizes.sort_unstable();
    let mut fetch = Vec::new();
    for _ in 0..4 {
        for (name, _) in &names {
            let start = Instant::now();
            let read = async {
                let mut o = store.get(name).await.context("fetching a shared program")?;
                let mut bytes = Vec::new();
                o.read_to_end(&mut bytes).await?;
                anyhow::Ok(bytes)
            };
            let bytes = tokio::time::timeout(Duration::from_secs(10), read)
                .await
                .context("fetching a shared program took over 10 s")??;
            let _: cod_runtime::Artifact = postcard::from_bytes(&bytes).context("decoding")?;
            fetch.push(start.elapsed());
        }
    }
    Ok(Sharing {
        compile_ms: compile_ms[compile_ms.len() / 2],
        fetch: stats(fetch),
        bytes: sizes[sizes.len() / 2],
    })
}

/// A child process, stopped with SIGTERM (then waited for) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn nats_server() -> anyhow::Result<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/usr/bin"])
        .map(|d| Path::new(d).join("nats-server"))
        .find(|p| p.is_file())
        .context("nats-server is not installed (Debian: apt-get install nats-server)")
}

/// Starts NATS with JetStream on `port`, storing in `dir`; waits for it to be ready.
fn start_nats(port: u16, dir: &Path) -> anyhow::Result<Proc> {
    let mut child = Command::new(nats_server()?)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting nats-server")?;
    let stderr = child.stderr.take().context("nats-server's stderr")?;
    let proc = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("Server is ready") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .context("nats-server did not get ready within 30 s")?;
    Ok(proc)
}

/// `cod --config <dir>/cod.toml ARGS`, logging to `<dir>/cod.log`.
fn spawn_cod(dir: &Path, config: &str, args: &[&str]) -> anyhow::Result<Proc> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("cod.toml");
    std::fs::write(&path, config)?;
    let log = std::fs::File::create(dir.join("cod.log"))?;
    let child = Command::new(std::env::current_exe()?)
        .arg("--config")
        .arg(&path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting cod")?;
    Ok(Proc(child))
}

/// Waits (up to `within`) until the gateway's worker list satisfies `ok`; `what` names it
/// in the error.
async fn wait_workers(
    client: &reqwest::Client,
    url: &str,
    what: &str,
    within: Duration,
    ok: impl Fn(&[Value]) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(r) = client.get(format!("{url}/api/v1/workers")).send().await
            && let Ok(v) = r.json::<Value>().await
            && v["workers"].as_array().is_some_and(|w| ok(w))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the workers were not {what} within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the suite.
pub(crate) fn run(runs: usize, seconds: u64) -> anyhow::Result<FleetReport> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(runs, seconds))
}

/// NATS, a gateway and two one-slot workers, started by [`start_fleet`].
struct Fleet {
    url: String,
    nats: String,
    // Dropped in this order: the gateway, the workers, then NATS.
    _gateway: Proc,
    _workers: Vec<Proc>,
    _nats: Proc,
}

/// Keeps the calling thread to `cpus` while `start` runs, so that the processes it starts
/// keep to them (a child inherits the CPUs of the thread that started it); `None` changes
/// nothing. `start` must start its processes before its first wait, on this thread.
async fn started_on<T>(
    cpus: Option<&CpuSet>,
    start: impl std::future::Future<Output = T>,
) -> anyhow::Result<T> {
    let Some(cpus) = cpus else {
        return Ok(start.await);
    };
    let was = sched_getaffinity(None).context("reading this thread's CPUs")?;
    sched_setaffinity(None, cpus).context("keeping to the CPUs asked for")?;
    let started = start.await;
    sched_setaffinity(None, &was).context("restoring this thread's CPUs")?;
    Ok(started)
}

/// Keeps every thread of this process, and so whatever they start from now on, to `cpus`.
fn keep_process_to(cpus: &CpuSet) -> anyhow::Result<()> {
    for task in std::fs::read_dir("/proc/self/task").context("listing this process's threads")? {
        let name = task?.file_name();
        let Some(tid) = name.to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        if let Some(tid) = rustix::process::Pid::from_raw(tid) {
            // A thread that ended since the listing is no error.
            match sched_setaffinity(Some(tid), cpus) {
                Ok(()) | Err(rustix::io::Errno::SRCH) => {}
                Err(e) => return Err(e).context("keeping this process to the CPUs asked for"),
            }
        }
    }
    Ok(())
}

/// The one-CPU set of `cpu`.
fn only(cpu: usize) -> CpuSet {
    let mut set = CpuSet::new();
    set.set(cpu);
    set
}

/// Starts NATS, a gateway and two one-slot workers and waits until the workers are ready
/// and idle. Worker `i` gets `--cpu-list worker_cpus[i]` if given; NATS and the gateway keep
/// to `rest` if given.
async fn start_fleet(
    client: &reqwest::Client,
    dir: &Path,
    worker_cpus: [Option<usize>; 2],
    rest: Option<&CpuSet>,
) -> anyhow::Result<Fleet> {
    let nats_port = free_port()?;
    let nats_proc = started_on(rest, async { start_nats(nats_port, &dir.join("nats")) }).await??;
    let nats = format!("nats://127.0.0.1:{nats_port}");
    let mut workers = Vec::new();
    for (i, cpu) in (0u32..).zip(worker_cpus) {
        let d = dir.join(format!("w{i}"));
        let config = format!(
            "[sandbox]\nuid_base = {}\n[cache]\ndir = {:?}\n",
            57_000 + 500 * i,
            d.join("cache")
        );
        let id = format!("bench-w{i}");
        let cpu = cpu.map(|c| c.to_string());
        let mut args = vec![
            "worker",
            "--nats",
            &nats,
            "--slots",
            "1",
            "--runtimes",
            "python,cpp",
            "--id",
            &id,
        ];
        if let Some(cpu) = &cpu {
            args.extend(["--cpu-list", cpu]);
        }
        workers.push(spawn_cod(&d, &config, &args)?);
    }
    let gw_port = free_port()?;
    let gateway = started_on(rest, async {
        spawn_cod(
            &dir.join("gw"),
            &format!("[server]\nlisten = \"127.0.0.1:{gw_port}\"\nqueue = 1024\n"),
            &["serve", "--nats", &nats],
        )
    })
    .await??;
    let url = format!("http://127.0.0.1:{gw_port}");
    wait_workers(client, &url, "all ready", Duration::from_secs(60), |w| {
        w.iter().filter(|w| w["state"] == "ready").count() == 2
    })
    .await?;
    eprintln!("waiting for the workers' prebuilt C++ header...");
    // Their prebuilds hold their slot at first.
    wait_workers(client, &url, "idle", Duration::from_secs(300), |w| {
        w.iter().all(|w| w["busy"] == 0)
    })
    .await?;
    Ok(Fleet {
        url,
        nats,
        _gateway: gateway,
        _workers: workers,
        _nats: nats_proc,
    })
}

/// `cod serve` with two slots, kept to `cpus` if given, once its prebuilt files are there.
async fn start_single(client: &reqwest::Client, cpus: Option<&CpuSet>) -> anyhow::Result<Server> {
    eprintln!("starting cod serve with 2 slots...");
    // `start_server` starts the process before its first wait, so on this thread.
    let single = started_on(cpus, start_server(client, 2, 58_000, true)).await??;
    // Its own prebuilt files (the C++ header, the javac archive) are built in a slot in the
    // background: measured meanwhile, the single process would lose a CPU to a compiler.
    eprintln!("waiting for the single process's prebuilt C++ header and javac archive...");
    wait_prebuilt(&single).await?;
    Ok(single)
}

/// Sequential latency of both paths (see [`LATENCY_BLOCK`]), then their throughput with 2
/// and 4 clients.
async fn compare(
    client: &reqwest::Client,
    single: &str,
    fleet: &str,
    runs: usize,
    seconds: u64,
) -> anyhow::Result<Comparison> {
    let body = json!({"language": "python", "source": "print(1)"});
    eprint!("latency, in alternating blocks of {LATENCY_BLOCK}: ");
    for url in [single, fleet] {
        for _ in 0..20 {
            post(client, url, &body, "1\n").await?;
        }
    }
    let (mut one, mut many) = (Vec::new(), Vec::new());
    let per_block = LATENCY_BLOCK - BLOCK_SETTLE;
    let mut block = 0;
    while one.len() < runs || many.len() < runs {
        let order = if block % 2 == 0 {
            [(single, &mut one), (fleet, &mut many)]
        } else {
            [(fleet, &mut many), (single, &mut one)]
        };
        for (url, times) in order {
            for i in 0..LATENCY_BLOCK {
                let (t, _) = post(client, url, &body, "1\n").await?;
                if i >= BLOCK_SETTLE && times.len() < runs {
                    times.push(t);
                }
            }
        }
        block += 1;
        if block % (100 / per_block).max(1) == 0 {
            eprint!(".");
        }
    }
    eprintln!();
    let mut throughput = Vec::new();
    for clients in [2, 4] {
        eprint!(
            "throughput with {clients} clients, {THROUGHPUT_ROUNDS} rounds of 2 × {seconds} s: "
        );
        let mut rounds = Vec::new();
        for _ in 0..THROUGHPUT_ROUNDS {
            let (single_per_s, single_cpu) = rate_and_cpu(client, single, clients, seconds).await?;
            let (fleet_per_s, fleet_cpu) = rate_and_cpu(client, fleet, clients, seconds).await?;
            rounds.push(FleetThroughput {
                clients,
                single_per_s,
                fleet_per_s,
                ratio: fleet_per_s / single_per_s,
                single_cpu_ms_per_run: single_cpu,
                fleet_cpu_ms_per_run: fleet_cpu,
            });
            eprint!(".");
        }
        eprintln!();
        throughput.extend(median_round(&rounds));
    }
    let (single, fleet) = (stats(one), stats(many));
    let added_ms = fleet.median_ms - single.median_ms;
    Ok(Comparison {
        latency_met: added_ms <= ADDED_MS_GOAL,
        throughput_met: throughput.iter().all(|t| t.ratio >= THROUGHPUT_GOAL),
        single,
        fleet,
        added_ms,
        throughput,
    })
}

/// Each path's median over `rounds` (the middle one, the upper of two), with the CPU per
/// run of that same round, and their ratio; `None` without any rounds.
fn median_round(rounds: &[FleetThroughput]) -> Option<FleetThroughput> {
    let single = median_by(rounds, |t| t.single_per_s)?;
    let fleet = median_by(rounds, |t| t.fleet_per_s)?;
    Some(FleetThroughput {
        clients: single.clients,
        single_per_s: single.single_per_s,
        fleet_per_s: fleet.fleet_per_s,
        ratio: fleet.fleet_per_s / single.single_per_s,
        single_cpu_ms_per_run: single.single_cpu_ms_per_run,
        fleet_cpu_ms_per_run: fleet.fleet_cpu_ms_per_run,
    })
}

async fn run_async(runs: usize, seconds: u64) -> anyhow::Result<FleetReport> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(16)
        .build()?;
    let dir = tempfile::tempdir()?;
    eprintln!("measuring what this machine's kernel charges for switches and forks...");
    let machine = machine_costs(dir.path())
        .inspect_err(|e| eprintln!("no machine figures: {e:#}"))
        .ok();
    eprintln!("starting nats-server, a gateway and 2 workers...");
    // Each one-slot worker keeps to a CPU of its own, as the single process's two slots
    // each keep their processes to one (`sandbox.pin_slots`); with one CPU, both share it.
    let own = cod_fleet::cpus::allowed();
    let worker_cpus = if own.len() >= 2 {
        [Some(own[0]), Some(own[1])]
    } else {
        [None, None]
    };
    let fleet = start_fleet(&client, &dir.path().join("shared"), worker_cpus, None).await?;
    let single = start_single(&client, None).await?;
    let shared = compare(&client, &single.url, &fleet.url, runs, seconds).await?;
    let sharing = shared_compiles(&client, &fleet.url, &fleet.nats).await?;
    drop((single, fleet));
    let split = match own[..] {
        [work, rest, ..] => Some(split(&client, dir.path(), work, rest, runs, seconds).await?),
        _ => None,
    };
    Ok(FleetReport {
        shared,
        sharing,
        split,
        machine,
    })
}

/// The comparison again with the work on one CPU and the rest on another: both workers and
/// the single process keep to `work`; NATS, the gateway and the load to `rest`.
async fn split(
    client: &reqwest::Client,
    dir: &Path,
    work: usize,
    rest: usize,
    runs: usize,
    seconds: u64,
) -> anyhow::Result<SplitReport> {
    eprintln!(
        "again with the workers on CPU {work}, NATS, the gateway and the load on CPU {rest}:"
    );
    let rest_set = only(rest);
    let fleet = start_fleet(
        client,
        &dir.join("split"),
        [Some(work), Some(work)],
        Some(&rest_set),
    )
    .await?;
    let single = start_single(client, Some(&only(work))).await?;
    let all = sched_getaffinity(None).context("reading this thread's CPUs")?;
    keep_process_to(&rest_set)?;
    let compared = compare(client, &single.url, &fleet.url, runs, seconds).await;
    keep_process_to(&all)?;
    Ok(SplitReport {
        work_cpu: work,
        rest_cpu: rest,
        paths: compared?,
    })
}

/// Prints the suite's tables.
pub(crate) fn print(r: &FleetReport, out: &mut impl std::io::Write) -> std::io::Result<()> {
    writeln!(
        out,
        "\nFleet: gateway + 2 workers through NATS JetStream vs one cod serve (2 slots), Python print(1)"
    )?;
    print_paths(out, &r.shared)?;
    writeln!(
        out,
        "shared compile cache: C++ compile on a worker {:.0} ms; fetching it from the object store {:.2} ms (p99 {:.2}), {} bytes",
        r.sharing.compile_ms, r.sharing.fetch.median_ms, r.sharing.fetch.p99_ms, r.sharing.bytes
    )?;
    if let Some(s) = &r.split {
        writeln!(
            out,
            "\nThe same with the work and the rest apart, as on a fleet: both workers and the single process on CPU {}, NATS, the gateway and the load on CPU {}",
            s.work_cpu, s.rest_cpu
        )?;
        print_paths(out, &s.paths)?;
    }
    super::bench_machine::print(r.machine.as_ref(), out)?;
    Ok(())
}

/// One comparison's latency and throughput tables.
fn print_paths(out: &mut impl std::io::Write, c: &Comparison) -> std::io::Result<()> {
    let mark = |met: bool| if met { "✓" } else { "✗" };
    writeln!(out, "| path | median ms | p99 ms |")?;
    writeln!(out, "|---|---|---|")?;
    writeln!(
        out,
        "| single process | {:.2} | {:.2} |",
        c.single.median_ms, c.single.p99_ms
    )?;
    writeln!(
        out,
        "| distributed | {:.2} | {:.2} |",
        c.fleet.median_ms, c.fleet.p99_ms
    )?;
    writeln!(
        out,
        "added median: {:+.2} ms (goal ≤ {ADDED_MS_GOAL} ms) {}",
        c.added_ms,
        mark(c.latency_met)
    )?;
    writeln!(
        out,
        "| clients | single runs/s | distributed runs/s | ratio (goal ≥ {THROUGHPUT_GOAL}) | machine CPU per run, single / distributed |"
    )?;
    writeln!(out, "|---|---|---|---|---|")?;
    for t in &c.throughput {
        writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.2} {} | {:.2} ms / {:.2} ms |",
            t.clients,
            t.single_per_s,
            t.fleet_per_s,
            t.ratio,
            mark(t.ratio >= THROUGHPUT_GOAL),
            t.single_cpu_ms_per_run,
            t.fleet_cpu_ms_per_run
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The machine's busy time counts user, nice, system, irq and softirq ticks (10 ms
    /// each), never idle, iowait or steal; the kernel's part is system, irq and softirq.
    #[test]
    fn machine_time_counts_busy_and_kernel_ticks() {
        let t = parse_machine_time("cpu  100 2 300 9999 7 4 5 8 0 0");
        assert_eq!(
            t,
            MachineTime {
                busy_ms: 4110.0,
                kernel_ms: 3090.0
            }
        );
        assert_eq!(parse_machine_time(""), MachineTime::default());
    }

    /// Each path's throughput is its own median over the rounds, with that round's CPU per
    /// run, and the ratio is taken between the two medians.
    #[test]
    fn throughput_rounds_give_each_path_its_median() {
        let round = |single: f64, fleet: f64| FleetThroughput {
            clients: 4,
            single_per_s: single,
            fleet_per_s: fleet,
            ratio: fleet / single,
            single_cpu_ms_per_run: 2000.0 / single,
            fleet_cpu_ms_per_run: 2000.0 / fleet,
        };
        let t = median_round(&[
            round(700.0, 300.0),
            round(500.0, 450.0),
            round(600.0, 400.0),
        ])
        .unwrap();
        assert_eq!(
            (t.clients, t.single_per_s, t.fleet_per_s),
            (4, 600.0, 400.0)
        );
        assert_eq!(t.ratio, 400.0 / 600.0);
        assert_eq!(t.single_cpu_ms_per_run, 2000.0 / 600.0);
        assert_eq!(t.fleet_cpu_ms_per_run, 2000.0 / 400.0);
        assert!(median_round(&[]).is_none());
    }

    /// The CPUs thread `tid` (this one with `None`) may use, in the kernel's list format.
    fn allowed_list(tid: Option<rustix::process::Pid>) -> String {
        cod_fleet::cpus::cpu_list_text(&sched_getaffinity(tid).unwrap())
    }

    fn comparison(added_ms: f64, ratio: f64) -> Comparison {
        let ms = |m: f64| Stats {
            median_ms: m,
            p99_ms: m,
            min_ms: m,
        };
        Comparison {
            single: ms(2.0),
            fleet: ms(2.0 + added_ms),
            added_ms,
            throughput: vec![FleetThroughput {
                clients: 2,
                single_per_s: 100.0,
                fleet_per_s: 100.0 * ratio,
                ratio,
                single_cpu_ms_per_run: 3.0,
                fleet_cpu_ms_per_run: 4.0,
            }],
            latency_met: added_ms <= ADDED_MS_GOAL,
            throughput_met: ratio >= THROUGHPUT_GOAL,
        }
    }

    #[test]
    fn the_report_keeps_the_shared_comparison_at_its_top_and_prints_both() {
        let r = FleetReport {
            shared: comparison(1.5, 0.6),
            sharing: Sharing {
                compile_ms: 400.0,
                fetch: Stats {
                    median_ms: 2.0,
                    p99_ms: 4.0,
                    min_ms: 1.0,
                },
                bytes: 1000,
            },
            split: Some(SplitReport {
                work_cpu: 0,
                rest_cpu: 1,
                paths: comparison(2.5, 0.9),
            }),
            machine: Some(MachineCosts {
                syscall_us: 0.15,
                fault_us: 2.0,
                cow_fault_us: 3.5,
                fork_8mib_us: 220.0,
                fork_exit_us: 178.0,
                pipe_round_trip_us: 13.0,
            }),
        };
        // Earlier results (benches/results/fleet.json) have the shared comparison's fields
        // at the top: they still do.
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["added_ms"], 1.5);
        assert_eq!(v["throughput"][0]["ratio"], 0.6);
        assert_eq!(v["latency_met"], false);
        assert_eq!(v["split"]["work_cpu"], 0);
        assert_eq!(v["split"]["added_ms"], 2.5);
        assert_eq!(v["split"]["throughput_met"], true);
        let mut out = Vec::new();
        print(&r, &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("added median: +1.50 ms"), "{out}");
        assert!(out.contains("| 2 | 100 | 60 | 0.60 ✗ |"), "{out}");
        assert!(
            out.contains("on CPU 0, NATS, the gateway and the load on CPU 1"),
            "{out}"
        );
        assert!(out.contains("added median: +2.50 ms"), "{out}");
        assert!(out.contains("| 2 | 100 | 90 | 0.90 ✓ |"), "{out}");
        assert!(
            out.contains("a pipe round trip between two processes 13.0 µs"),
            "{out}"
        );
        assert_eq!(v["machine"]["pipe_round_trip_us"], 13.0);
    }

    #[test]
    fn a_process_started_on_a_cpu_keeps_to_it_and_the_thread_gets_its_cpus_back() {
        let all = cod_fleet::cpus::allowed();
        let last = *all.last().unwrap();
        let before = allowed_list(None);
        // The CPUs a process started by `started_on(cpus)` may use.
        let child = |cpus: Option<&CpuSet>| {
            let started = started_on(cpus, async {
                Command::new("grep")
                    .args(["Cpus_allowed_list", "/proc/self/status"])
                    .output()
            });
            let out = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(started)
                .unwrap()
                .unwrap();
            let out = String::from_utf8(out.stdout).unwrap();
            out.split_whitespace().nth(1).unwrap().to_owned()
        };
        assert_eq!(child(Some(&only(last))), last.to_string());
        assert_eq!(allowed_list(None), before);
        // Without CPUs, nothing changes.
        assert_eq!(child(None), before);
    }

    #[test]
    fn keeping_the_process_to_a_cpu_moves_threads_already_running() {
        let all = cod_fleet::cpus::allowed();
        let last = *all.last().unwrap();
        let every = sched_getaffinity(None).unwrap();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            tid_tx.send(rustix::thread::gettid()).unwrap();
            let _ = done_rx.recv();
        });
        let tid = tid_rx.recv().unwrap();
        keep_process_to(&only(last)).unwrap();
        let kept = allowed_list(Some(tid));
        keep_process_to(&every).unwrap();
        let back = allowed_list(Some(tid));
        done_tx.send(()).unwrap();
        other.join().unwrap();
        assert_eq!(kept, last.to_string());
        assert_eq!(back, allowed_list(None));
    }
}
