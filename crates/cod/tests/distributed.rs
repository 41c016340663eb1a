//! The distributed mode as real processes: a NATS server with JetStream, `cod serve --nats`
//! gateways and `cod worker`s, and every fault the fleet must survive: a worker killed
//! mid-run, a job whose workers keep dying, the NATS server restarted, a gateway killed,
//! a worker draining.
//!
//! Needs `nats-server` (Debian's 2.9; `scripts/test` installs it). The tests run one at a
//! time: each starts several processes on a 2-CPU machine.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
mod ws_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::server::{Server, client, get_json, post_json};
use serde_json::{Value, json};
use serial_test::serial;

/// Bound on any wait in these tests.
const WAIT: Duration = Duration::from_secs(60);

/// Fleet settings short enough for tests: a lost worker's job moves after 1 s.
const FLEET: &str = r#"
[fleet]
ack_wait = "1s"
max_deliveries = 2
heartbeat = "200ms"
dead_after = "1s"
"#;

fn nats_binary() -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin"])
    {
        let p = Path::new(dir).join("nats-server");
        if p.is_file() {
            return p;
        }
    }
    panic!("nats-server is missing: scripts/test installs it (apt-get install nats-server)");
}

/// A child process killed on drop, its stderr kept for the failure report.
struct Proc {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    lines: mpsc::Receiver<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Proc { child, log, lines }
    }

    /// Waits (bounded) for a stderr line containing `what`.
    fn wait_line(&self, what: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(what) => return,
                Ok(_) => {}
                Err(_) => panic!(
                    "no line with {what:?}; log: {:#?}",
                    self.log.lock().unwrap()
                ),
            }
        }
    }

    fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.child.id()).unwrap()).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// Waits (bounded) for the process to exit; its status.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "still running; log: {:#?}",
                self.log.lock().unwrap()
            );
            // The exit is a process state with nothing to block on here but its pidfd;
            // a short pause between checks keeps this simple.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A NATS server with JetStream on a free port, its store in `dir` (kept across restarts).
struct Nats {
    proc: Option<Proc>,
    port: u16,
    dir: PathBuf,
}

impl Nats {
    fn start(dir: &Path) -> Nats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut n = Nats {
            proc: None,
            port,
            dir: dir.join("nats"),
        };
        n.restart();
        n
    }

    fn restart(&mut self) {
        self.proc = None;
        let mut cmd = Command::new(nats_binary());
        cmd.args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-sd",
        ])
        .arg(&self.dir);
        let p = Proc::spawn(cmd);
        p.wait_line("Server is ready");
        self.proc = Some(p);
    }

    fn kill(&mut self) {
        if let Some(p) = &self.proc {
            p.signal(rustix::process::Signal::KILL);
        }
        if let Some(mut p) = self.proc.take() {
            p.wait_exit();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// Languages kept small: no prebuilds to wait for.
fn config(dir: &Path, name: &str, uid_base: u32) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let cfg = d.join("cod.toml");
    std::fs::write(
        &cfg,
        format!(
            "[languages]\nenabled = [\"python\", \"c\"]\n[sandbox]\nuid_base = {uid_base}\n[cache]\ndir = {:?}\n{FLEET}",
            d.join("cache")
        ),
    )
    .unwrap();
    cfg
}

fn worker(dir: &Path, nats: &Nats, id: &str, n: u32, runtimes: &str) -> Proc {
    let p = Proc::spawn(worker_command(dir, nats, id, n, runtimes, &[]));
    p.wait_line("worker ready");
    p
}

fn worker_command(
    dir: &Path,
    nats: &Nats,
    id: &str,
    n: u32,
    runtimes: &str,
    extra: &[&str],
) -> Command {
    let cfg = config(dir, id, 68_000 + 100 * n);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cod"));
    cmd.arg("--config")
        .arg(cfg)
        .args([
            "worker",
            "--nats",
            &nats.url(),
            "--slots",
            "1",
            "--id",
            id,
            "--runtimes",
            runtimes,
        ])
        .args(extra)
        .env("COD_LOG", "info")
        .env_remove("COD_CONFIG")
        .env_remove("COD_LOG_FORMAT");
    cmd
}

fn gateway(dir: &Path, nats: &Nats, name: &str) -> Server {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    Server::start(
        &["--nats", &nats.url()],
        &format!("[languages]\nenabled = [\"python\", \"c\"]\n{FLEET}"),
        &[],
        &d,
    )
}

/// The command names of `pid`'s child processes.
fn children(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        if rest.split(' ').nth(1) == Some(&pid.to_string()) {
            out.push(
                std::fs::read_to_string(e.path().join("cmdline"))
                    .unwrap_or_default()
                    .replace('\0', " "),
            );
        }
    }
    out
}

async fn workers(gw: &Server) -> Vec<Value> {
    let (_, v) = get_json(&gw.url("/api/v1/workers")).await;
    v["workers"].as_array().unwrap().clone()
}

/// Waits (bounded) until the worker list satisfies `ok`; the list.
async fn wait_workers(gw: &Server, what: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let w = workers(gw).await;
        if ok(&w) {
            return w;
        }
        assert!(Instant::now() < deadline, "workers never {what}: {w:#?}");
        // Heartbeats come every 200 ms: the list changes no faster.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn worker_by<'a>(list: &'a [Value], id: &str) -> Option<&'a Value> {
    list.iter().find(|w| w["id"] == id)
}

async fn run(gw: &Server, language: &str, source: &str) -> Value {
    let (status, v) = post_json(
        &gw.url("/api/v1/run"),
        &json!({"language": language, "source": source}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v
}

/// `DELETE /api/v1/jobs/{id}` on `gw`: the status and the JSON body.
async fn cancel(gw: &Server, id: &str) -> (u16, Value) {
    let r = client()
        .delete(gw.url(&format!("/api/v1/jobs/{id}")))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn job(gw: &Server, id: &str) -> Option<Value> {
    let (status, v) = get_json(&gw.url(&format!("/api/v1/jobs/{id}"))).await;
    (status != 404).then_some(v)
}

/// Waits (bounded) until job `id` is done on `gw`.
async fn wait_done(gw: &Server, id: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = job(gw, id).await
            && v["state"] == "done"
        {
            return v;
        }
        assert!(Instant::now() < deadline, "job {id} never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn submit(gw: &Server, source: &str) -> String {
    let (status, v) = post_json(
        &gw.url("/api/v1/jobs"),
        &json!({"language": "python", "source": source}),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

/// Runs go through workers and come back; a worker takes only its runtimes; output streams
/// in order; the workers are listed.
#[tokio::test(flavor = "multi_thread")]
#[serial(fleet)]
async fn runs_go_to_workers_of_their_runtime_and_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let gw = gateway(dir.path(), &nats, "g1");
    let _w1 = worker(dir.path(), &nats, "w1", 1, "python");
    let _w2 = worker(dir.path(), &nats, "w2", 2, "python");
    let _w3 = worker(dir.path(), &nats, "w3", 3, "c");
    let list = wait_workers(&gw, "all ready", |l| {
        ["w1", "w2", "w3"]
            .iter()
            .all(|id| worker_by(l, id).is_some_and(|w| w["state"] == "ready"))
    })
    .await;
    assert_eq!(worker_by(&list, "w3").unwrap()["runtimes"], json!(["c"]));
    // A gateway that runs nothing starts no sandbox helper: it needs no privilege.
    assert_eq!(children(gw.child.id()), Vec::<String>::new());
    assert_eq!(worker_by(&list, "w1").unwrap()["slots"], 1);

    // Six at once on two one-slot Python workers: all answered, each with its own output.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let url = gw.url("/api/v1/run");
        tasks.push(tokio::spawn(async move {
            let body = json!({"language": "python", "source": format!("print({i} * 7)")});
            (i, post_json(&url, &body).await.1)
        }));
    }
    for t in tasks {
        let (i, v) = t.await.unwrap();
        assert_eq!(v["status"], "ok", "{v}");
        assert_eq!(v["stdout"], format!("{}\n", i * 7));
    }
    let c = run(
        &gw,
        "c",
        "#include <stdio.h>\nint main(void){puts(\"from c\");}",
    )
    .await;
    assert_eq!(c["stdout"], "from c\n", "{c}");

    // The C worker ran the C job only; the Python ones shared the rest.
    let list = wait_workers(&gw, "counted", |l| {
        let done = |id| worker_by(l, id).map_or(0, |w| w["done"].as_u64().unwrap());
        done("w1") + done("w2") == 6 && done("w3") == 1
    })
    .await;
    assert!(list.iter().all(|w| w["busy"] == 0), "{list:#?}");

    // A stored result is readable by id, with who ran it.
    let id = c["id"].as_str().unwrap();
    let v = job(&gw, id).await.expect("the run's result is stored");
    assert_eq!(v["state"], "done");
    assert_eq!(v["worker"], "w3");
    assert_eq!(v["attempt"], 1);

    // Streamed output arrives line by line, in order, before the end.
    let r = client()
        .post(gw.url("/api/v1/run?stream=true"))
        .json(&json!({"language": "python", "source":
            "import time\nfor i in range(3):\n    print('line', i, flush=True)\n    time.sleep(0.2)\n"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    let events: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let out: String = events
        .iter()
        .filter(|e| e["type"] == "out")
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert_eq!(out, "line 0\nline 1\nline 2\n", "{body}");
    assert_eq!(events.last().unwrap()["type"], "exit", "{body}");
    let outs = events.iter().filter(|e| e["type"] == "out").count();
    assert!(
        outs >= 3,
        "each flushed line is an event of its own: {body}"
    );
}

/// A worker killed mid-run: its job runs again on another worker and is answered once.
#[tokio::test(flavor = "multi_thread")]
#[serial(fleet)]
async fn a_job_whose_worker_dies_finishes_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let gw = gateway(dir.path(), &nats, "g1");
    let mut w1 = worker(dir.path(), &nats, "w1", 1, "python");
    wait_workers(&gw, "ready", |l| worker_by(l, "w1").is_some()).await;
    let url = gw.url("/api/v1/run");
    let pending = tokio::spawn(async move {
        let source = "import time\ntime.sleep(1.5)\nprint('finished')";
        post_json(&url, &json!({"language": "python", "source": source}))
            .await
            .1
    });
    wait_workers(&gw, "busy", |l| {
        worker_by(l, "w1").is_some_and(|w| w["busy"] == 1)
    })
    .await;
    w1.signal(rustix::process::Signal::KILL);
    w1.wait_exit();
    let _w2 = worker(dir.path(), &nats, "w2", 2, "python");
    let v = tokio::time::timeout(WAIT, pending).await.unwrap().unwrap();
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(v["stdout"], "finished\n");
    let stored = job(&gw, v["id"].as_str().unwrap()).await.unwrap();
    assert_eq!(stored["worker"], "w2");
    assert_eq!(stored["attempt"], 2);
    // Listed dead until its heartbeat expires.
    wait_workers(&gw, "w1 dead", |l| {
        worker_by(l, "w1").is_some_and(|w| w["state"] == "dead")
    })
    .await;
}

/// A job whose workers keep dying ends `internal_error` after `fleet.max_deliveries`.
#[tokio::test(flavor = "multi_thread")]
#[serial(fleet)]
async fn deliveries_of_a_job_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let gw = gateway(dir.path(), &nats, "g1");
    let url = gw.url("/api/v1/run");
    let pending = tokio::spawn(async move {
        let source = "import time\ntime.sleep(30)";
        post_json(&url, &json!({"language": "python", "source": source}))
            .await
            .1
    });
    for (n, id) in ["w1", "w2"].iter().enumerate() {
        let mut w = worker(
            dir.path(),
            &nats,
            id,
            u32::try_from(n).unwrap() + 1,
            "python",
        );
        wait_workers(&gw, "busy", |l| {
            worker_by(l, id).is_some_and(|w| w["busy"] == 1)
        })
        .await;
        w.signal(rustix::process::Signal::KILL);
        w.wait_exit();
    }
    let _w3 = worker(dir.path(), &nats, "w3", 3, "python");
    let v = tokio::time::timeout(WAIT, pending).await.unwrap().unwrap();
    assert_eq!(v["status"], "internal_error", "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("delivered 3 times"),
        "{v}"
    );
    let stored = job(&gw, v["id"].as_str().unwrap()).await.unwrap();
    assert_eq!(stored["attempt"], 3);
}

/// The NATS server restarted (killed, store kept): every accepted job finishes, once, and
/// gateways and workers carry on.
#[tokio::test(flavor = "multi_thread")]
#[serial(fleet)]
async fn a_nats_restart_loses_no_accepted_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(dir.path());
    let gw = gateway(dir.path(), &nats, "g1");
    let _w1 = worker(dir.path(), &nats, "w1", 1, "python");
    wait_workers(&gw, "ready", |l| worker_by(l, "w1").is_some()).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(submit(&gw, &format!("import time\ntime.sleep(0.3)\nprint({i})")).await);
    }
    nats.kill();
    nats.restart();
    for (i, id) in ids.iter().enumerate() {
        let v = wait_done(&gw, id).await;
        assert_eq!(v["result"]["status"], "ok", "{v}");
        assert_eq!(v["result"]["stdout"], format!("{i}\n"));
    }
    // Still serving after the restart.
    let v = run(&gw, "python", "print('after')").await;
    assert_eq!(v["stdout"], "after\n", "{v}");
}

/// NATS, gateways `g1` and `g2`, and worker `w1` (Python), listed by `g1`.
async fn two_gateways_and_a_worker(dir: &Path) -> (Nats, Server, Server, Proc) {
    let nats = Nats::start(dir);
    let g1 = gateway(dir, &nats, "g1");
    let g2 = gateway(dir, &nats, "g2");
    let w1 = worker(dir, &nats, "w1", 1, "python");
    wait_workers(&g1, "ready", |l| worker_by(l, "w1").is_some()).await;
    (nats, g1, g2, w1)
}

/// A gateway killed after accepting jobs: they finish, and another gateway reads them.
#[tokio::test(flavor = "multi_thread")]
#[serial(fleet)]
async fn jobs_of_a_killed_gateway_finish_and_are_read_from_another() {
    let dir = tempfile::tempdir().unwrap();
    let (_nats, g1, g2, _w1) = two_gateways_and_a_worker(dir.path()).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            submit(
                &g1,
                &format!("import time\ntime.sleep(0.2)\nprint('job', {i})"),
            )
            .await,
        );
    }
    drop(g1);
    for (i, id) in ids.iter().enumerate() {
        let v = wait_done(&g2, id).await;
        assert_eq!(v["result"]["stdout"], format!("job {i}\n"), "{v}");
        assert_eq!(v["worker"], "w1");
    }
}

/// Every gateway tells of a job another one took while it waits and runs, not only once
/// it is done.
#[tokio::test(flavor = "multi_thread")]
#[serial(fleet)]
async fn a_job_is_seen_queued_and_running_from_a_gateway_that_did_not_take_it() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let g1 = gateway(dir.path(), &nats, "g1");
    let g2 = gateway(dir.path(), &nats, "g2");
    // No worker yet: the job waits in the stream.
    let id = submit(&g1, "import time\ntime.sleep(2)\nprint('slow')").await;
    let v = job(&g2, &id).await.expect("g2 knows the job g1 took");
    assert_eq!(v["state"], "queued", "{v}");
    assert_eq!(v["language"], "python", "{v}");
    assert!(v["result"].is_null(), "{v}");
    let _w1 = worker(dir.path(), &nats, "w1", 1, "python");
    let deadline = Instant::now() + WAIT;
    let running = loop {
        let v = job(&g2, &id).await.expect("still known");
        if v["state"] != "queued" {
            break v;
        }
        assert!(Instant::now() < deadline, "never left the queue: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(running["state"], "running", "{running}");
    assert_eq!(running["worker"], "w1", "{running}");
    assert!(running["started_at"].is_string(), "{running}");
    let v = wait_done(&g2, &id).await;
    assert_eq!(v["result"]["stdout"], "slow\n", "{v}");
    assert_eq!(v["worker"], "w1", "{v}");
    // Once done, g2 answers a cancel with the finished job, as for its own.
    let (status, v) = cancel(&g2, &id).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "done", "{v}");
    // A job nobody took is still unknown.
    assert!(job(&g2, "no-such-job").await.is_none());
}

/// Waits (bounded) until job `id` on `gw` is in `state`.
async fn wait_state(gw: &Server, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = job(gw, id).await;
        if let Some(v) = &v
            && v["state"] == state
        {
            return v.clone();
        }
        assert!(Instant::now() < deadline, "job {id} never {state}: {v:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A job cancelled, through another gateway, while it waits in the stream: every gateway
/// shows it cancelled, the one that took it too, and the worker that meets it later does
/// not run it.
#[tokio::test(flavor = "multi_thread")]
#[serial(fleet)]
async fn a_job_cancelled_while_it_waits_in_the_stream_never_runs() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let g1 = gateway(dir.path(), &nats, "g1");
    let g2 = gateway(dir.path(), &nats, "g2");
    // No worker yet: the job waits in the stream.
    let cancelled = submit(&g1, "print('cancelled')").await;
    let (status, v) = cancel(&g2, &cancelled).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "cancelled", "{v}");
    wait_state(&g1, &cancelled, "cancelled").await;
    assert_eq!(job(&g2, &cancelled).await.unwrap()["state"], "cancelled");
    let next = submit(&g1, "print('next')").await;
    let _w1 = worker(dir.path(), &nats, "w1", 1, "python");
    // The stream is in order: the worker met the cancelled job first.
    let v = wait_done(&g1, &next).await;
    assert_eq!(v["result"]["stdout"], "next\n", "{v}");
    let list = wait_workers(&g1, "heartbeat after the run", |l| {
        worker_by(l, "w1").is_some_and(|w| w["done"].as_u64() >= Some(1))
    })
    .await;
    assert_eq!(worker_by(&list, "w1").unwrap()["done"], 1, "{list:#?}");
    for gw in [&g1, &g2] {
        let v = job(gw, &cancelled).await.unwrap();
        assert_eq!(v["state"], "cancelled", "it never ran: {v}");
    }
}

/// A running job cancelled through a gateway that did not take it: its worker stops it,
/// nothing is stored as its result, and both gateways show it cancelled.
#[tokio::test(flavor = "multi_thread")]
#[serial(fleet)]
async fn a_running_job_is_cancelled_through_another_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let (_nats, g1, g2, _w1) = two_gateways_and_a_worker(dir.path()).await;
    // It would end by itself after 8 s, storing a result.
    let id = submit(&g1, "import time\ntime.sleep(8)\nprint('ended')").await;
    wait_state(&g2, &id, "running").await;
    let (status, v) = cancel(&g2, &id).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "cancelled", "{v}");
    wait_state(&g1, &id, "cancelled").await;
    // The worker stopped it: free again, and no result came.
    let list = wait_workers(&g1, "idle", |l| {
        worker_by(l, "w1").is_some_and(|w| w["busy"] == 0)
    })
    .await;
    assert_eq!(worker_by(&list, "w1").unwrap()["done"], 0, "{list:#?}");
    for gw in [&g1, &g2] {
        let v = job(gw, &id).await.unwrap();
        assert_eq!(v["state"], "cancelled", "{v}");
        assert!(v["result"].is_null(), "{v}");
    }
}

/// A draining worker finishes its run, takes no new one, and exits 0.
#[tokio::test(flavor = "multi_thread")]
#[serial(fleet)]
async fn a_draining_worker_finishes_its_runs_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let gw = gateway(dir.path(), &nats, "g1");
    let mut w1 = worker(dir.path(), &nats, "w1", 1, "python");
    wait_workers(&gw, "ready", |l| worker_by(l, "w1").is_some()).await;
    let first = submit(&gw, "import time\ntime.sleep(1)\nprint('first')").await;
    wait_workers(&gw, "busy", |l| {
        worker_by(l, "w1").is_some_and(|w| w["busy"] == 1)
    })
    .await;
    w1.signal(rustix::process::Signal::TERM);
    wait_workers(&gw, "draining", |l| {
        worker_by(l, "w1").is_some_and(|w| w["state"] == "draining")
    })
    .await;
    let second = submit(&gw, "print('second')").await;
    let status = w1.wait_exit();
    assert!(status.success(), "{status:?}");
    let v = wait_done(&gw, &first).await;
    assert_eq!(v["result"]["stdout"], "first\n", "{v}");
    // Stored by the drained worker itself before it exited, not by a redelivery.
    assert_eq!(v["worker"], "w1", "{v}");
    assert_eq!(v["attempt"], 1, "{v}");
    assert!(
        job(&gw, &second)
            .await
            .is_some_and(|v| v["state"] != "done"),
        "the drained worker took no new job"
    );
    // Gone from the list at once, and the next worker takes the waiting job.
    wait_workers(&gw, "w1 gone", |l| worker_by(l, "w1").is_none()).await;
    let _w2 = worker(dir.path(), &nats, "w2", 2, "python");
    let v = wait_done(&gw, &second).await;
    assert_eq!(v["result"]["stdout"], "second\n", "{v}");
    assert_eq!(v["worker"], "w2");
}

/// A worker told to drain while its NATS server is gone, with no run in hand, has nothing
/// to wait for: it exits at once rather than hang in a claim that no server answers.
#[tokio::test(flavor = "multi_thread")]
#[serial(fleet)]
async fn a_worker_with_nothing_in_hand_drains_while_nats_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(dir.path());
    let gw = gateway(dir.path(), &nats, "g1");
    let mut w1 = worker(dir.path(), &nats, "w1", 1, "python");
    wait_workers(&gw, "ready", |l| worker_by(l, "w1").is_some()).await;
    nats.kill();
    // A heartbeat has gone unanswered: its one-second sweeps have met the outage too.
    w1.wait_line("heartbeat not stored");
    w1.signal(rustix::process::Signal::TERM);
    let status = w1.wait_exit();
    assert!(status.success(), "{status:?}");
    let log = w1.log.lock().unwrap().clone();
    assert!(log.iter().any(|l| l.contains("worker drained")), "{log:#?}");
    // Its sweeps met the outage several times; it said so once.
    let said = log
        .iter()
        .filter(|l| l.contains("does not answer claims"))
        .count();
    assert_eq!(said, 1, "{log:#?}");
}

/// The `Cpus_allowed_list` of process `pid`.
fn cpus_allowed(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_owned()
}

/// A worker given `--cpu-list` keeps itself, its sandbox helper and its programs to those
/// CPUs; a CPU it may not use stops it with a message naming the flag.
#[tokio::test(flavor = "multi_thread")]
#[serial(fleet)]
async fn a_worker_keeps_to_its_cpu_list() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let gw = gateway(dir.path(), &nats, "g1");
    let allowed = rustix::thread::sched_getaffinity(None).unwrap();
    let last = (0..rustix::thread::CpuSet::MAX_CPU)
        .rev()
        .find(|&c| allowed.is_set(c))
        .unwrap()
        .to_string();
    let w1 = Proc::spawn(worker_command(
        dir.path(),
        &nats,
        "w1",
        1,
        "python",
        &["--cpu-list", &last],
    ));
    w1.wait_line("worker ready");
    wait_workers(&gw, "ready", |l| worker_by(l, "w1").is_some()).await;
    let v = run(
        &gw,
        "python",
        "import os\nprint(sorted(os.sched_getaffinity(0)))",
    )
    .await;
    assert_eq!(v["stdout"], format!("[{last}]\n"), "{v}");
    assert_eq!(cpus_allowed(w1.child.id()), last);
    let jail: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit_once(") ")
                    .and_then(|(_, rest)| rest.split(' ').nth(1))
                    == Some(&w1.child.id().to_string())
            })
        })
        .collect();
    assert!(!jail.is_empty(), "the worker has its sandbox helper");
    for pid in jail {
        assert_eq!(cpus_allowed(pid), last, "child {pid} of the worker");
    }
    // A CPU beyond those this process may use.
    let mut bad = Proc::spawn(worker_command(
        dir.path(),
        &nats,
        "w2",
        2,
        "python",
        &["--cpu-list", "1000"],
    ));
    let status = bad.wait_exit();
    assert!(!status.success());
    bad.wait_line("--cpu-list: CPU 1000 is not one this process may use");
}

/// Waits (bounded) for a line of the gateway's log containing `what`.
fn wait_gateway_line(gw: &Server, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match gw.lines.recv_timeout(left) {
            Ok(l) if l.contains(what) => return,
            Ok(_) => {}
            Err(_) => panic!("no gateway line with {what:?}"),
        }
    }
}

/// A gateway that cannot reach NATS refuses runs at once with a 503 and `Retry-After`,
/// on every API, rather than hold them and fail them later; once NATS is back it serves.
#[tokio::test(flavor = "multi_thread")]
#[serial(fleet)]
async fn a_gateway_without_its_broker_answers_503_and_serves_once_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(dir.path());
    let gw = gateway(dir.path(), &nats, "g1");
    let _w1 = worker(dir.path(), &nats, "w1", 1, "python");
    wait_workers(&gw, "ready", |l| worker_by(l, "w1").is_some()).await;
    let before = submit(&gw, "print('before')").await;
    wait_done(&gw, &before).await;
    nats.kill();
    wait_gateway_line(&gw, "event: disconnected");
    // A job this gateway took is still told from its memory; of any other it cannot say
    // whether it exists.
    let v = wait_done(&gw, &before).await;
    assert_eq!(v["result"]["stdout"], "before\n", "{v}");
    let r = client()
        .get(gw.url("/api/v1/jobs/from-another-gateway"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let (status, v) = get_json(&gw.url("/api/v1/workers")).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["reason"], "broker_unreachable", "{v}");
    // Up, but not ready: a load balancer sends requests elsewhere meanwhile.
    assert_eq!(get_json(&gw.url("/healthz")).await.0, 200);
    let (status, v) = get_json(&gw.url("/readyz")).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["reason"], "broker_unreachable", "{v}");
    let body = json!({"language": "python", "source": "print(1)"});
    for (path, body) in [
        ("/api/v1/run", body.clone()),
        ("/api/v1/jobs", body.clone()),
        ("/api/v1/run?stream=true", body.clone()),
        (
            "/api/v2/execute",
            json!({"language": "python", "version": "*", "files": [{"content": "print(1)"}]}),
        ),
    ] {
        let r = client()
            .post(gw.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 503, "{path}");
        assert_eq!(
            r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
            Some("1"),
            "{path}"
        );
        let v: Value = r.json().await.unwrap();
        let message = v["error"].as_str().or(v["message"].as_str()).unwrap_or("");
        assert!(message.contains("broker"), "{path}: {v}");
    }
    let (_, v) = post_json(&gw.url("/api/v1/run"), &body).await;
    assert_eq!(v["reason"], "broker_unreachable", "{v}");
    nats.restart();
    wait_gateway_line(&gw, "event: connected");
    assert_eq!(get_json(&gw.url("/readyz")).await.0, 200);
    let v = run(&gw, "python", "print('back')").await;
    assert_eq!(v["stdout"], "back\n", "{v}");
    assert!(
        job(&gw, "from-another-gateway").await.is_none(),
        "a 404 again"
    );
}

/// The editor through a gateway: an interactive program answered over the socket, its
/// input relayed to the worker, and Stop ending an endless loop on the worker.
#[tokio::test(flavor = "multi_thread")]
#[serial(fleet)]
async fn the_editor_runs_interactive_programs_on_workers() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let gw = gateway(dir.path(), &nats, "g1");
    let _w1 = worker(dir.path(), &nats, "w1", 1, "python");
    wait_workers(&gw, "ready", |l| worker_by(l, "w1").is_some()).await;
    let mut c = ws_support::Client::connect(gw.addr.parse().unwrap()).await;
    c.open("python", "name = input()\nprint('hi', name)\n", None)
        .await;
    c.send(json!({"type": "run", "version": 0})).await;
    assert_eq!(c.expect("stage").await["stage"], "run");
    c.send(json!({"type": "stdin", "data": "Ada\n"})).await;
    let (events, exit) = c.until("exit").await;
    assert_eq!(ws_support::output(&events, "stdout"), "hi Ada\n", "{exit}");
    assert_eq!(exit["status"], "ok", "{exit}");

    c.send(json!({"type": "edit", "version": 0, "changes": [[33, "print('go', flush=True)", "while True: pass", ""]]})).await;
    assert_eq!(c.expect("ack").await["version"], 1);
    c.send(json!({"type": "run", "version": 1})).await;
    let (_, out) = c.until("out").await;
    assert_eq!(out["data"], "go\n");
    c.send(json!({"type": "kill"})).await;
    let (_, exit) = c.until("exit").await;
    // As in the embedded mode: killed, and said to be cancelled.
    assert_eq!(exit["status"], "runtime_error", "{exit}");
    assert_eq!(exit["signal"], "SIGKILL", "{exit}");
    assert_eq!(exit["message"], "the program was cancelled", "{exit}");
    // The worker is free again.
    wait_workers(&gw, "idle", |l| {
        worker_by(l, "w1").is_some_and(|w| w["busy"] == 0)
    })
    .await;
}

/// What one worker compiled, another runs without compiling: the shared compile cache.
#[tokio::test(flavor = "multi_thread")]
#[serial(fleet)]
async fn compiled_programs_are_shared_between_workers() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let gw = gateway(dir.path(), &nats, "g1");
    let src = "#include <stdio.h>\nint main(void){puts(\"shared\");}\n";
    let mut w1 = worker(dir.path(), &nats, "w1", 1, "c");
    wait_workers(&gw, "ready", |l| worker_by(l, "w1").is_some()).await;
    let first = run(&gw, "c", src).await;
    assert_eq!(first["stdout"], "shared\n", "{first}");
    assert_eq!(first["compile"]["cached"], false, "{first}");
    w1.signal(rustix::process::Signal::TERM);
    assert!(w1.wait_exit().success());

    // A new worker with an empty cache of its own.
    let _w2 = worker(dir.path(), &nats, "w2", 2, "c");
    wait_workers(&gw, "w2 ready", |l| worker_by(l, "w2").is_some()).await;
    let second = run(&gw, "c", src).await;
    assert_eq!(second["stdout"], "shared\n", "{second}");
    assert_eq!(second["compile"]["cached"], true, "{second}");
    let stored = job(&gw, second["id"].as_str().unwrap()).await.unwrap();
    assert_eq!(stored["worker"], "w2");
}

/// `cod fleet --provider local` on the live load: runs waiting with no worker make it
/// start real `cod worker`s (each with its own uid range, `--instance {index}`), which run
/// them; once the load is gone the workers are drained and exit.
#[tokio::test(flavor = "multi_thread")]
#[serial(fleet)]
async fn the_manager_starts_workers_for_the_load_and_drains_them_after() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let gw = gateway(dir.path(), &nats, "g1");
    let worker_cfg = config(dir.path(), "managed", 68_600);
    let fleet_cfg = dir.path().join("fleet.toml");
    std::fs::write(
        &fleet_cfg,
        format!(
            r#"[policy]
slots_per_worker = 1
min_workers = 0
max_workers = 2
startup = "1s"
trend_window = "2s"
scale_down_delay = "1s"
scale_down_step = 1.0
scale_down_interval = "1s"
urgent_wait = "100ms"
[source]
interval = "200ms"
[local]
command = [{exe:?}, "--config", {cfg:?}, "worker", "--nats", {url:?}, "--slots", "1", "--runtimes", "python", "--id", "{{id}}", "--instance", "{{index}}", "--cpu-list", "{{cpus}}"]
ready_line = "ready"
drain_timeout = "30s"
slots = 1
cpus_per_worker = 1
"#,
            exe = env!("CARGO_BIN_EXE_cod"),
            cfg = worker_cfg,
            url = nats.url(),
        ),
    )
    .unwrap();
    let manager_cfg = config(dir.path(), "manager", 68_700);
    let fleet = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cod"));
        cmd.arg("--config")
            .arg(&manager_cfg)
            .args(["fleet", "--nats", &nats.url(), "--fleet-config"])
            .arg(&fleet_cfg)
            .env("COD_LOG", "info")
            .env_remove("COD_CONFIG")
            .env_remove("COD_LOG_FORMAT");
        Proc::spawn(cmd)
    };
    let mut manager = fleet();

    // No worker yet: the runs wait in the stream.
    assert!(workers(&gw).await.is_empty());
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(
            submit(
                &gw,
                &format!("import time\ntime.sleep(0.3)\nprint('run', {i})"),
            )
            .await,
        );
    }
    manager.wait_line("worker started");
    let list = wait_workers(&gw, "a managed worker", |l| !l.is_empty()).await;
    assert!(
        list[0]["id"].as_str().unwrap().starts_with("local-"),
        "{list:#?}"
    );
    // The first worker keeps to the first CPU of the manager's (`cpus_per_worker = 1`).
    let pid: u32 = {
        let log = manager.log.lock().unwrap();
        let line = log.iter().find(|l| l.contains("worker started")).unwrap();
        let at = line.find("pid=").unwrap() + 4;
        let digits: String = line[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap()
    };
    let first = cod_fleet::cpus::allowed()[0].to_string();
    assert_eq!(cpus_allowed(pid), first);
    for (i, id) in ids.iter().enumerate() {
        let v = wait_done(&gw, id).await;
        assert_eq!(v["result"]["stdout"], format!("run {i}\n"), "{v}");
    }
    // The load is gone: the worker is drained, exits, and leaves the list.
    manager.wait_line("worker stopped");
    wait_workers(&gw, "none left", <[Value]>::is_empty).await;

    // Stopped, the manager keeps its day curve in the broker; the next one goes on from it
    // rather than learning the previous days again.
    manager.signal(rustix::process::Signal::TERM);
    assert!(manager.wait_exit().success());
    let next = fleet();
    next.wait_line("continuing the day curve kept by an earlier manager");
}

/// `cod serve --nats --local-worker`: one process is a gateway and a worker on the bus,
/// listed among the workers and running runs like any other.
#[tokio::test(flavor = "multi_thread")]
#[serial(fleet)]
async fn a_gateway_with_a_local_worker_runs_jobs_itself() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let d = dir.path().join("g1");
    std::fs::create_dir_all(&d).unwrap();
    let gw = Server::start(
        &["--nats", &nats.url(), "--local-worker", "--workers", "1"],
        &format!(
            "[languages]\nenabled = [\"python\", \"c\"]\n[sandbox]\nuid_base = 68800\n[cache]\ndir = {:?}\n{FLEET}",
            d.join("cache")
        ),
        &[],
        &d,
    );
    let list = wait_workers(&gw, "its own worker", |l| l.len() == 1).await;
    assert!(
        list[0]["id"].as_str().unwrap().ends_with("-local"),
        "{list:#?}"
    );
    assert_eq!(list[0]["slots"], 1);
    let v = run(&gw, "python", "print(6 * 7)").await;
    assert_eq!(v["stdout"], "42\n", "{v}");
    let stored = job(&gw, v["id"].as_str().unwrap()).await.unwrap();
    assert_eq!(stored["worker"], list[0]["id"]);
}
