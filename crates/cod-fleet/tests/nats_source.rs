//! The NATS load source against a real nats-server: queues and running jobs per runtime
//! from the job consumers, slots from live workers' heartbeats, arrivals from the stream.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cod_fleet::LoadSource;
use cod_fleet::bus::{Bus, BusConfig, Class, Heartbeat, job_subject, now_ms};
use cod_fleet::nats_source::NatsSource;
use cod_fleet::worker::WorkerId;
use futures_util::StreamExt;

/// Bound on every wait of these tests.
const WAIT: Duration = Duration::from_secs(20);

fn nats_server_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    });
    on_path
        .or_else(|| Some(PathBuf::from("/usr/sbin/nats-server")).filter(|p| p.is_file()))
        .expect("nats-server is missing: scripts/test installs it")
}

/// A nats-server with JetStream on a loopback port, killed when dropped.
struct NatsServer {
    child: Child,
    port: u16,
}

impl NatsServer {
    /// Starts one on a free port, storing in `store`, and waits until it is ready.
    fn start(store: &Path) -> NatsServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        NatsServer::start_on(store, port)
    }

    /// Starts one on `port`, storing in `store`, and waits until it is ready.
    fn start_on(store: &Path, port: u16) -> NatsServer {
        let mut child = Command::new(nats_server_binary())
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting nats-server");
        let stderr = child.stderr.take().unwrap();
        let server = NatsServer { child, port };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut log = Vec::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("Server is ready") {
                    let _ = tx.send(Ok(()));
                }
                log.push(line);
            }
            // It exited; without a ready line, say why.
            let _ = tx.send(Err(log.join("\n")));
        });
        match rx.recv_timeout(WAIT) {
            Ok(Ok(())) => server,
            Ok(Err(log)) => panic!("nats-server exited before it was ready:\n{log}"),
            Err(_) => panic!("nats-server not ready within {WAIT:?}"),
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect(url: &str) -> Bus {
    tokio::time::timeout(
        WAIT,
        Bus::connect(url, "nats-source-test", BusConfig::default()),
    )
    .await
    .expect("connected in time")
    .expect("connects")
}

fn heartbeat(id: &str, slots: u32, busy: u32, at_ms: u64, draining: bool) -> Heartbeat {
    Heartbeat {
        id: id.into(),
        host: "test".into(),
        runtimes: vec!["python".into(), "cpp".into()],
        slots,
        busy,
        load: 0.0,
        version: "0".into(),
        draining,
        done: 0,
        at_ms,
    }
}

async fn put(bus: &Bus, hb: &Heartbeat) {
    bus.workers
        .put(&hb.id, serde_json::to_vec(hb).unwrap().into())
        .await
        .unwrap();
}

async fn publish(bus: &Bus, runtime: &str, class: Class, n: usize) {
    for i in 0..n {
        bus.js
            .publish(job_subject(runtime, class), format!("job {i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

async fn sample(source: &mut NatsSource) -> cod_fleet::LoadSample {
    tokio::time::timeout(WAIT, source.next_sample())
        .await
        .expect("a sample in time")
        .expect("reads the broker")
        .expect("never ends")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_counts_queues_running_jobs_live_slots_and_arrivals() {
    let store = tempfile::tempdir().unwrap();
    let server = NatsServer::start(store.path());
    let bus = connect(&server.url()).await;

    // The consumers first: a work queue keeps only messages some consumer wants.
    let python = bus.consumer("python", Class::Short).await.unwrap();
    bus.consumer("cpp", Class::Long).await.unwrap();
    publish(&bus, "python", Class::Short, 3).await;
    publish(&bus, "cpp", Class::Long, 2).await;

    // One python job taken, not acknowledged yet: running.
    let mut taken = python
        .fetch()
        .max_messages(1)
        .expires(WAIT)
        .messages()
        .await
        .unwrap();
    let job = tokio::time::timeout(WAIT, taken.next())
        .await
        .expect("a job in time")
        .expect("a job")
        .unwrap();
    assert_eq!(job.subject.as_str(), "cod.jobs.python.short");

    let now = now_ms();
    put(&bus, &heartbeat("w-a", 8, 3, now, false)).await;
    put(&bus, &heartbeat("w-b", 4, 1, now, false)).await;
    put(&bus, &heartbeat("w-dead", 16, 16, now - 60_000, false)).await;
    put(&bus, &heartbeat("w-draining", 2, 2, now, true)).await;

    let mut source = NatsSource::new(bus.clone()).with_interval(Duration::from_millis(50));
    let first = sample(&mut source).await;
    assert_eq!(first.arrival_rate, 0.0, "no rate without a previous sample");
    let py = &first.runtimes["python"];
    assert_eq!((py.queued, py.busy), (2, 1), "{first:?}");
    assert!(
        py.oldest_wait > Duration::ZERO && py.oldest_wait < WAIT * 3,
        "{first:?}"
    );
    let cpp = &first.runtimes["cpp"];
    assert_eq!((cpp.queued, cpp.busy), (2, 0), "{first:?}");
    assert!(cpp.oldest_wait > Duration::ZERO, "{first:?}");
    assert_eq!(first.runtimes.len(), 2, "{first:?}");
    // Only the live workers that are not draining.
    assert_eq!((first.total_slots, first.busy_slots), (12, 4), "{first:?}");
    let ids: Vec<&WorkerId> = first.worker_busy.keys().collect();
    assert_eq!(ids, [&WorkerId::from("w-a"), &WorkerId::from("w-b")]);
    assert_eq!(first.worker_busy[&WorkerId::from("w-a")], 3);

    // Arrivals between two samples.
    publish(&bus, "cpp", Class::Long, 4).await;
    let second = sample(&mut source).await;
    assert!(second.arrival_rate > 0.0, "{second:?}");
    assert_eq!(second.runtimes["cpp"].queued, 6, "{second:?}");

    assert_eq!(second.mean_run, None, "no run finished yet: {second:?}");

    // The running job finishes: nothing runs, nothing more arrived. A worker reports runs
    // done: the mean run time follows from its busy slots (Little's law).
    job.ack().await.unwrap();
    let mut a = heartbeat("w-a", 8, 3, now_ms(), false);
    a.done = 10;
    put(&bus, &a).await;
    put(&bus, &heartbeat("w-b", 4, 1, now_ms(), false)).await;
    let third = sample(&mut source).await;
    assert_eq!(third.runtimes["python"].busy, 0, "{third:?}");
    assert_eq!(third.arrival_rate, 0.0, "{third:?}");
    assert!(
        third.mean_run.is_some_and(|m| m > Duration::ZERO),
        "{third:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_is_an_error_per_sample_and_the_source_recovers() {
    let store = tempfile::tempdir().unwrap();
    let server = NatsServer::start(store.path());
    let port = server.port;
    let bus = connect(&server.url()).await;
    bus.consumer("python", Class::Short).await.unwrap();
    let mut source = NatsSource::new(bus.clone()).with_interval(Duration::from_millis(50));
    sample(&mut source).await;

    drop(server);
    let err = tokio::time::timeout(WAIT, source.next_sample())
        .await
        .expect("an answer in time")
        .expect_err("the broker is down");
    assert!(matches!(err, cod_fleet::SourceError::Read(_)), "{err:?}");

    // Back on the same port and store: the client reconnects, samples come again.
    let _server = NatsServer::start_on(store.path(), port);
    let recovered = tokio::time::timeout(WAIT * 2, async {
        loop {
            if let Ok(Some(s)) = source.next_sample().await {
                return s;
            }
        }
    })
    .await
    .expect("samples again once the broker is back");
    assert!(recovered.runtimes.contains_key("python"), "{recovered:?}");
}

/// The manager's day curve outlives the manager: a new one (a restart, a replacement)
/// reads what the last one kept, and nothing before anything was kept.
#[tokio::test]
async fn the_day_curve_is_kept_for_the_next_manager() {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(dir.path());
    let first = connect(&server.url()).await;
    assert!(first.load_curve().await.unwrap().is_none());
    let mut curve = cod_fleet::DayCurve::new(Duration::from_secs(300), 0.5);
    let h = |hours: u64| Duration::from_secs(hours * 3600);
    curve.record(h(14), 22_000.0);
    curve.record(h(24 + 3), 500.0);
    first.save_curve(&curve).await.unwrap();
    drop(first);
    let next = connect(&server.url()).await;
    let kept = next.load_curve().await.unwrap().expect("a kept curve");
    assert_eq!(kept, curve);
    assert_eq!(kept.days(), 1);
    // The day before's peak is ahead of the next day's 13:55.
    assert_eq!(
        kept.ahead(h(24 + 13) + Duration::from_secs(55 * 60), h(0)),
        None
    );
    assert_eq!(
        kept.ahead(
            h(24 + 13) + Duration::from_secs(55 * 60),
            Duration::from_secs(600)
        ),
        Some(22_000.0)
    );
}
