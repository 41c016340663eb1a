//! `cod fleet` as an operator runs it: its settings file, the load as JSON lines on
//! standard input, local workers started and drained.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Bound on every wait of these tests.
const WAIT: Duration = Duration::from_secs(20);

/// Workers that do nothing until they are told to stop.
const SETTINGS: &str = "[policy]\nslots_per_worker = 4\nmax_workers = 2\n\
    [local]\ncommand = [\"sleep\", \"600\"]\ndrain_timeout = \"10s\"\n";

/// A load that asks for more workers than the ceiling.
const BUSY: &[u8] = b"{\"arrival_rate\": 20, \"mean_run\": \"1s\"}\n";

fn cod() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cod"));
    c.env_remove("COD_CONFIG")
        .env_remove("COD_NATS")
        .env("RUST_LOG", "info");
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write(dir: &tempfile::TempDir, name: &str, body: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, body).unwrap();
    p
}

/// `cod fleet` with `SETTINGS`, its standard input and error piped.
fn fleet(dir: &tempfile::TempDir) -> Child {
    fleet_with(dir, SETTINGS)
}

/// `cod fleet` with `settings` as its `--fleet-config`, reading the load from stdin.
fn fleet_with(dir: &tempfile::TempDir, settings: &str) -> Child {
    let cfg = write(dir, "fleet.toml", settings);
    cod()
        .arg("fleet")
        .arg("--fleet-config")
        .arg(&cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The lines of `child`'s standard error, as they come.
fn log_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Appends lines to `log` until one contains `what` (answers true) or the log ends
/// (false); panics after `WAIT`.
fn read_until(lines: &mpsc::Receiver<String>, log: &mut String, what: &str) -> bool {
    loop {
        match lines.recv_timeout(WAIT) {
            Ok(line) => {
                let found = line.contains(what);
                log.push_str(&line);
                log.push('\n');
                if found {
                    return true;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return false,
            Err(e) => panic!("no {what:?} ({e}):\n{log}"),
        }
    }
}

/// Waits for `child` to exit, within `WAIT`.
fn wait(mut child: Child) -> std::process::ExitStatus {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    rx.recv_timeout(WAIT).expect("cod fleet exits").unwrap()
}

#[test]
fn an_unknown_key_or_a_missing_nats_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let cfg = write(
        &d,
        "fleet.toml",
        "[policy]\nmin_workers = 1\nmax_workerz = 3\n",
    );
    let out = cod()
        .arg("fleet")
        .arg("--fleet-config")
        .arg(&cfg)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("policy.max_workerz"),
        "{}",
        text(&out.stderr)
    );

    // The default worker command needs the broker's address.
    let out = cod().arg("fleet").stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--nats"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn load_from_stdin_starts_workers_and_its_end_drains_them() {
    let d = tempfile::tempdir().unwrap();
    let mut child = fleet(&d);
    let lines = log_lines(&mut child);
    let mut stdin = child.stdin.take().unwrap();
    // A bad line is skipped.
    stdin
        .write_all(b"{\"arrival_rate\": 1, \"colour\": 2}\n")
        .unwrap();
    stdin.write_all(BUSY).unwrap();
    drop(stdin);
    let status = wait(child);
    let mut log = String::new();
    assert!(!read_until(&lines, &mut log, "\n"), "the log ends");
    assert!(status.success(), "{log}");
    assert!(log.contains("skipping a load sample"), "{log}");
    assert!(log.contains("autoscaling decision"), "{log}");
    assert!(log.contains("start=2"), "{log}");
    assert_eq!(log.matches("worker started worker=").count(), 2, "{log}");
    assert_eq!(log.matches("worker stopped worker=").count(), 2, "{log}");
}

#[test]
fn sigterm_stops_the_manager_and_drains_its_workers() {
    let d = tempfile::tempdir().unwrap();
    let mut child = fleet(&d);
    let lines = log_lines(&mut child);
    // Standard input stays open: only the signal ends it.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(BUSY).unwrap();
    stdin.flush().unwrap();
    let mut log = String::new();
    for _ in 0..2 {
        assert!(read_until(&lines, &mut log, "worker started"), "{log}");
    }

    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = wait(child);
    drop(stdin);
    assert!(!read_until(&lines, &mut log, "\n"), "the log ends");
    assert!(status.success(), "{log}");
    assert!(log.contains("signal received"), "{log}");
    assert_eq!(log.matches("worker stopped worker=").count(), 2, "{log}");
}

#[test]
fn a_holding_decision_is_logged_when_its_outcome_changes_not_on_every_sample() {
    let d = tempfile::tempdir().unwrap();
    let mut child = fleet_with(
        &d,
        "[policy]\nmin_workers = 0\n[local]\ncommand = [\"sleep\", \"600\"]\n",
    );
    let lines = log_lines(&mut child);
    let mut stdin = child.stdin.take().unwrap();
    // No load three times: the same outcome (no workers), logged once.
    stdin
        .write_all(b"{\"arrival_rate\": 0}\n{\"arrival_rate\": 0}\n{\"arrival_rate\": 0}\n")
        .unwrap();
    drop(stdin);
    let status = wait(child);
    let mut log = String::new();
    assert!(!read_until(&lines, &mut log, "\n"), "the log ends");
    assert!(status.success(), "{log}");
    assert_eq!(log.matches("autoscaling decision").count(), 1, "{log}");
    assert!(log.contains("action=\"hold\""), "{log}");
}
