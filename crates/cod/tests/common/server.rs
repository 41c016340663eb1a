//! `cod serve` as a real process on a free 127.0.0.1 port, for clients that speak HTTP
//! from outside (the Judge0 SDK) and for its logs.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

/// A running `cod serve`; killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: String,
    /// Every stderr line so far.
    pub log: Arc<Mutex<Vec<String>>>,
    /// Each stderr line as it comes.
    pub lines: mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `cod serve --listen 127.0.0.1:0 ARGS` with `config` (a cod.toml text) and
    /// `env`, and waits (bounded) for it to announce its address.
    pub fn start(args: &[&str], config: &str, env: &[(&str, &str)], dir: &Path) -> Server {
        let cfg = dir.join("cod.toml");
        std::fs::write(&cfg, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cod"));
        cmd.arg("--config")
            .arg(&cfg)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("COD_LOG", "info")
            .env_remove("COD_CONFIG")
            .env_remove("COD_LOG_FORMAT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (addr_tx, addr_rx) = mpsc::channel();
        let (line_tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("serving on http://").nth(1) {
                    let addr = rest.split(['/', ' ', '"']).next().unwrap_or_default();
                    let _ = addr_tx.send(addr.to_owned());
                }
                log2.lock().unwrap().push(line.clone());
                let _ = line_tx.send(line);
            }
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("cod serve announces its address");
        Server {
            child,
            addr,
            log,
            lines,
        }
    }

    /// Takes the stream of stderr lines (for a thread that waits on them); later
    /// callers get an empty, closed stream.
    #[allow(dead_code)]
    pub fn take_lines(&mut self) -> mpsc::Receiver<String> {
        std::mem::replace(&mut self.lines, mpsc::channel().1)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// An HTTP client for tests.
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// POSTs `body` as JSON to `url`: the answer's status and JSON body.
pub async fn post_json(url: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let r = client().post(url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// GETs `url`: the answer's status and JSON body (`null` when it has none).
pub async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let r = client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}
