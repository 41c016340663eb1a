//! The local provider end to end, with a stand-in for `cod worker` (this package's
//! `cod-worker-standin` binary): workers start, report ready, drain on SIGTERM and exit; one
//! that ignores SIGTERM is killed after the drain timeout; one that dies is forgotten; and
//! the manager grows and shrinks them with the load.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use cod_fleet::provider::{LocalConfig, LocalEvent, LocalProvider};
use cod_fleet::{Autoscaler, LoadSample, Manager, PolicyConfig, Provider, WorkerId, WorkerState};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

const STANDIN: &str = env!("CARGO_BIN_EXE_cod-worker-standin");

/// Upper bound for any awaited event (`COD_TEST_TIMEOUT` seconds overrides it).
fn timeout() -> Duration {
    std::env::var("COD_TEST_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(30), Duration::from_secs)
}

/// The next event that `pick` accepts, within the timeout.
async fn wait_for<T>(
    rx: &mut broadcast::Receiver<LocalEvent>,
    mut pick: impl FnMut(&LocalEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(timeout(), async {
        loop {
            let e = rx.recv().await.expect("the provider is alive");
            if let Some(t) = pick(&e) {
                return t;
            }
        }
    })
    .await
    .expect("the event came in time")
}

fn provider(extra: &[&str], drain_timeout: Duration) -> LocalProvider {
    provider_with(extra, drain_timeout, 0)
}

fn provider_with(extra: &[&str], drain_timeout: Duration, cpus_per_worker: u32) -> LocalProvider {
    let mut command = vec![STANDIN.to_owned(), "--id".into(), "{id}".into()];
    command.extend(extra.iter().map(|s| (*s).to_owned()));
    LocalProvider::new(LocalConfig {
        command,
        ready_line: Some("ready".into()),
        drain_timeout,
        slots: 2,
        id_prefix: "t".into(),
        cpus_per_worker,
    })
    .expect("a valid configuration")
}

async fn decision(
    decisions: &mut mpsc::UnboundedReceiver<cod_fleet::Decision>,
) -> cod_fleet::Decision {
    tokio::time::timeout(timeout(), decisions.recv())
        .await
        .expect("decided in time")
        .expect("a decision")
}

fn ready(e: &LocalEvent) -> Option<WorkerId> {
    match e {
        LocalEvent::Ready { id } => Some(id.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn workers_start_get_ready_drain_and_exit() {
    let p = provider(&["--drain-ms", "200"], Duration::from_secs(20));
    let mut ev = p.subscribe();
    let ids = p.start(3).expect("started");
    assert_eq!(ids.len(), 3);
    let mut seen = BTreeSet::new();
    while seen.len() < 3 {
        seen.insert(wait_for(&mut ev, ready).await);
    }
    assert_eq!(seen, ids.iter().cloned().collect());
    let w = p.workers().await.expect("listed");
    assert_eq!(w.len(), 3);
    assert!(
        w.iter()
            .all(|w| w.state == WorkerState::Ready && w.slots == 2)
    );

    let asked = Instant::now();
    p.drain(&ids[..2]).expect("drained");
    let states: Vec<WorkerState> = p
        .workers()
        .await
        .expect("listed")
        .iter()
        .map(|w| w.state)
        .collect();
    assert_eq!(
        states,
        [
            WorkerState::Draining,
            WorkerState::Draining,
            WorkerState::Ready
        ]
    );
    let mut exited = BTreeSet::new();
    while exited.len() < 2 {
        let (id, code, drained, killed) = wait_for(&mut ev, |e| match e {
            LocalEvent::Exited {
                id,
                code,
                drained,
                killed,
                ..
            } => Some((id.clone(), *code, *drained, *killed)),
            _ => None,
        })
        .await;
        assert_eq!((code, drained, killed), (Some(0), true, false), "{id}");
        exited.insert(id);
    }
    // They finished their (pretend) runs before exiting.
    assert!(asked.elapsed() >= Duration::from_millis(200));
    assert_eq!(exited, ids[..2].iter().cloned().collect());
    let left = p.workers().await.expect("listed");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, ids[2]);

    p.shutdown().await;
    assert!(p.workers().await.expect("listed").is_empty());
}

#[tokio::test]
async fn a_worker_that_ignores_sigterm_is_killed_after_the_drain_timeout() {
    let p = provider(&["--ignore-term"], Duration::from_millis(300));
    let mut ev = p.subscribe();
    let id = p.start(1).expect("started").remove(0);
    assert_eq!(wait_for(&mut ev, ready).await, id);
    let asked = Instant::now();
    p.drain(std::slice::from_ref(&id)).expect("drained");
    let (signal, drained, killed) = wait_for(&mut ev, |e| match e {
        LocalEvent::Exited {
            signal,
            drained,
            killed,
            ..
        } => Some((*signal, *drained, *killed)),
        _ => None,
    })
    .await;
    assert_eq!((signal, drained, killed), (Some(9), true, true));
    assert!(asked.elapsed() >= Duration::from_millis(300));
    assert!(p.workers().await.expect("listed").is_empty());
}

#[tokio::test]
async fn a_worker_that_dies_on_its_own_is_forgotten() {
    let p = provider(
        &["--exit-after-ms", "50", "--exit-code", "3"],
        Duration::from_secs(5),
    );
    let mut ev = p.subscribe();
    let id = p.start(1).expect("started").remove(0);
    let (gone, code, drained) = wait_for(&mut ev, |e| match e {
        LocalEvent::Exited {
            id, code, drained, ..
        } => Some((id.clone(), *code, *drained)),
        _ => None,
    })
    .await;
    assert_eq!((gone, code, drained), (id, Some(3), false));
    assert!(p.workers().await.expect("listed").is_empty());
}

#[tokio::test]
async fn the_manager_grows_and_shrinks_local_workers_with_the_load() {
    let p = Arc::new(provider(&["--drain-ms", "50"], Duration::from_secs(20)));
    let mut ev = p.subscribe();
    let policy = Autoscaler::new(PolicyConfig {
        slots_per_worker: 2,
        min_workers: 0,
        scale_down_delay: Duration::from_secs(60),
        scale_down_step: 1.0,
        // Workers from the utilization alone, so that the counts below are small and
        // exact (the square-root headroom has its own tests).
        headroom_sigmas: 0.0,
        ..PolicyConfig::default()
    })
    .expect("valid");
    let mut manager = Manager::new(policy, p.clone());
    let (tx, mut rx) = mpsc::channel::<LoadSample>(4);
    let (dtx, mut decisions) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        manager
            .run(&mut rx, move |d| {
                let _ = dtx.send(d.clone());
            })
            .await
    });
    let sample = |at: f64, arrival: f64| LoadSample {
        at: Some(at),
        arrival_rate: arrival,
        mean_run: Some(Duration::from_secs(1)),
        ..LoadSample::default()
    };
    // Load rises: 3 runs/s of 1 s need 3 slots, 3.3 with headroom: two workers of two.
    tx.send(sample(0.0, 3.0)).await.expect("sent");
    let d = decision(&mut decisions).await;
    assert_eq!((d.target, d.start), (2, 2));
    let mut up = BTreeSet::new();
    while up.len() < 2 {
        up.insert(wait_for(&mut ev, ready).await);
    }
    assert_eq!(p.workers().await.expect("listed").len(), 2);

    // Load stops: nothing happens within the delay...
    tx.send(sample(30.0, 0.0)).await.expect("sent");
    let d = decision(&mut decisions).await;
    assert_eq!((d.target, d.drain.len()), (2, 0));
    // ...then both drain and exit.
    tx.send(sample(100.0, 0.0)).await.expect("sent");
    let d = decision(&mut decisions).await;
    assert_eq!(d.target, 0);
    assert_eq!(d.drain.iter().cloned().collect::<BTreeSet<_>>(), up);
    let mut down = BTreeSet::new();
    while down.len() < 2 {
        down.insert(
            wait_for(&mut ev, |e| match e {
                LocalEvent::Exited {
                    id, drained: true, ..
                } => Some(id.clone()),
                _ => None,
            })
            .await,
        );
    }
    assert_eq!(down, up);
    assert!(p.workers().await.expect("listed").is_empty());
    drop(tx);
    let n = tokio::time::timeout(timeout(), task)
        .await
        .expect("the manager ends with its source")
        .expect("joined")
        .expect("ran");
    assert_eq!(n, 3);
}

/// `{index}` is the lowest number from 1 that no live worker has: distinct while workers
/// live side by side (their sandboxes' uid ranges come from it), reused once one is gone.
#[tokio::test]
async fn live_workers_get_distinct_indexes_and_freed_ones_are_reused() {
    let p = provider(&["--drain-ms", "0"], Duration::from_secs(20));
    let mut ev = p.subscribe();
    let ids = p.start(3).expect("started");
    let indexes: Vec<u32> = ids.iter().map(|id| p.index_of(id).expect("live")).collect();
    assert_eq!(indexes, [1, 2, 3]);
    p.drain(&ids[..1]).expect("drained");
    let gone = wait_for(&mut ev, |e| match e {
        LocalEvent::Exited { id, .. } => Some(id.clone()),
        _ => None,
    })
    .await;
    assert_eq!(gone, ids[0]);
    assert_eq!(p.index_of(&ids[0]), None);
    let again = p.start(2).expect("started");
    let indexes: Vec<u32> = again
        .iter()
        .map(|id| p.index_of(id).expect("live"))
        .collect();
    assert_eq!(indexes, [1, 4], "the freed 1 first, then the next free one");
    p.shutdown().await;
}

/// With `cpus_per_worker`, each worker's `{cpus}` is a run of that many of the CPUs the
/// provider may use: distinct while there are enough, the first ones again beyond.
#[tokio::test]
async fn workers_get_shares_of_the_cpus_in_turn() {
    let all = cod_fleet::cpus::allowed();
    assert!(!all.is_empty(), "this process may run on some CPU");
    let p = provider_with(&["--drain-ms", "0"], Duration::from_secs(20), 1);
    let n = u32::try_from(all.len()).expect("a few CPUs") + 1;
    let ids = p.start(n).expect("started");
    let cpus: Vec<String> = ids.iter().map(|id| p.cpus_of(id).expect("live")).collect();
    let mut expected: Vec<String> = all.iter().map(ToString::to_string).collect();
    expected.push(all[0].to_string());
    assert_eq!(cpus, expected);
    p.shutdown().await;

    // Without a share size, every worker may use them all.
    let p = provider(&["--drain-ms", "0"], Duration::from_secs(20));
    let ids = p.start(2).expect("started");
    let everything = cod_fleet::cpus::list_text(all.iter().copied());
    for id in &ids {
        assert_eq!(p.cpus_of(id).as_deref(), Some(everything.as_str()));
    }
    p.shutdown().await;
}
