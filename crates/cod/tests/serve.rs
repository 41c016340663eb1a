//! `cod serve` as a real process: the README's example, the server's own environment kept
//! out of runs, and a clean shutdown that removes the sandbox's cgroups and directories.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cod"))
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "2"])
        .args(extra)
        .env("COD_TEST_SECRET", "hunter2")
        .env("COD_LOG", "info")
        .env_remove("COD_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("serving on http://").nth(1) {
                let addr = rest.split(['/', ' ']).next().unwrap_or_default();
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("cod serve announces its address");
    Server { child, addr }
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_example_and_environment_isolation() {
    let server = start(&[]);
    let c = client();
    let url = format!("http://{}/api/v1/run", server.addr);
    let v: serde_json::Value = c
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"language":"python","source":"print(input()*2)","stdin":"ab"}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(v["stdout"], "abab\n");

    let probe = "import os\nprint(any('hunter2' in v for v in os.environ.values()), 'COD_TEST_SECRET' in os.environ)";
    let v: serde_json::Value = c
        .post(&url)
        .json(&serde_json::json!({"language": "python", "source": probe}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["stdout"], "False False\n",
        "the server's environment leaked: {v}"
    );
    // A program cannot reach the very server that runs it.
    let port = server.addr.rsplit(':').next().unwrap();
    let probe = format!(
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    print('reached')\nexcept OSError as e:\n    print(type(e).__name__, e.errno)"
    );
    let v: serde_json::Value = c
        .post(&url)
        .json(&serde_json::json!({"language": "python", "source": probe}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["stdout"], "PermissionError 1\n", "{v}");
    let page = c
        .get(format!("http://{}/", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
}

fn helper_pid(parent: u32) -> u32 {
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // The fourth field after the parenthesised name is the parent pid.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let ppid: u32 = after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if ppid == parent && cmdline.windows(6).any(|w| w == b"__jail") {
            return pid;
        }
    }
    panic!("no sandbox helper under pid {parent}");
}

#[test]
fn sigterm_stops_cleanly_and_removes_cgroups_and_staging() {
    let mut server = start(&[]);
    let helper = helper_pid(server.child.id());
    let cgroup = Path::new("/sys/fs/cgroup/memory/cod").join(helper.to_string());
    let staging = std::env::temp_dir().join(format!("cod-jail-{helper}"));
    assert!(cgroup.exists(), "{} exists while serving", cgroup.display());
    assert!(staging.exists());
    let rc = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(rc.success());
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    // The helper exits once the server has closed its socket; wait for it through its pidfd
    // by polling /proc (bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while Path::new("/proc").join(helper.to_string()).exists()
        && std::time::Instant::now() < deadline
    {
        std::thread::yield_now();
    }
    assert!(!cgroup.exists(), "{} left behind", cgroup.display());
    assert!(!staging.exists(), "{} left behind", staging.display());
}
