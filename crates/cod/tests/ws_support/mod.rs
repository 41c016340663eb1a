//! Shared by the editor's tests: the router on a free loopback port, and a WebSocket client
//! that waits for each message with a bounded timeout (`COD_TEST_WAIT_SECS`, default 60).
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use cod_server::AppState;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The longest any awaited message may take.
pub fn wait() -> Duration {
    let secs = std::env::var("COD_TEST_WAIT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// Awaits `f` for at most [`wait`], naming `what` in the failure.
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(wait(), f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {:?} waiting for {what}", wait()),
    }
}

/// The app of `state`, served on 127.0.0.1 at a free port until dropped.
pub struct Server {
    pub addr: SocketAddr,
    pub state: AppState,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn serve(state: AppState) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let addr = listener.local_addr().expect("an address");
    let app = cod_server::app(state.clone());
    let task = tokio::spawn(async move {
        let never = std::future::pending::<()>();
        let _ = cod_server::serve(listener, app, never, Duration::ZERO).await;
    });
    Server { addr, state, task }
}

/// What came from the server.
#[derive(Debug)]
pub enum Event {
    Json(Value),
    Closed(Option<CloseFrame>),
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let (ws, _) = within(
            "the WebSocket handshake",
            tokio_tungstenite::connect_async(format!("ws://{addr}/api/v1/ws")),
        )
        .await
        .expect("the WebSocket upgrade succeeds");
        Client { ws }
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text))
            .await
            .expect("the message is sent");
    }

    /// The next message or the close, skipping pings.
    pub async fn event(&mut self) -> Event {
        loop {
            let msg = within("a server message", self.ws.next()).await;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Event::Json(serde_json::from_str(t.as_str()).expect("JSON"));
                }
                Some(Ok(Message::Close(frame))) => return Event::Closed(frame),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Binary(_))) => panic!("the server sent a binary frame"),
                None | Some(Err(_)) => return Event::Closed(None),
            }
        }
    }

    /// The next message, which must be JSON text.
    pub async fn next(&mut self) -> Value {
        match self.event().await {
            Event::Json(v) => v,
            Event::Closed(f) => panic!("the connection closed: {f:?}"),
        }
    }

    /// The next message, which must be of type `ty`.
    pub async fn expect(&mut self, ty: &str) -> Value {
        let v = self.next().await;
        assert_eq!(v["type"], ty, "expected a {ty:?} message, got {v}");
        v
    }

    /// Messages until one of type `ty` (returned last), skipping `compiled` notices.
    pub async fn until(&mut self, ty: &str) -> (Vec<Value>, Value) {
        let mut before = Vec::new();
        loop {
            let v = self.next().await;
            if v["type"] == ty {
                return (before, v);
            }
            if v["type"] != "compiled" {
                before.push(v);
            }
        }
    }

    pub async fn open(&mut self, language: &str, text: &str, session: Option<&str>) -> Value {
        let mut msg = json!({"type": "open", "language": language, "text": text});
        if let Some(s) = session {
            msg["session"] = json!(s);
        }
        self.send(msg).await;
        self.expect("opened").await
    }

    /// Runs `version` and returns the run's events and its exit.
    pub async fn run(&mut self, version: u64, extra: Value) -> (Vec<Value>, Value) {
        let mut msg = json!({"type": "run", "version": version});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                msg[k] = v;
            }
        }
        self.send(msg).await;
        let (events, exit) = self.until("exit").await;
        for e in &events {
            assert!(
                e["type"] == "stage" || e["type"] == "out",
                "unexpected message during a run: {e}"
            );
        }
        (events, exit)
    }
}

/// Concatenated `data` of the `out` events of `stream`.
pub fn output(events: &[Value], stream: &str) -> String {
    events
        .iter()
        .filter(|e| e["type"] == "out" && e["stream"] == stream)
        .map(|e| e["data"].as_str().expect("data is a string"))
        .collect()
}

/// The `stage` events' stages, in order.
pub fn stages(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "stage")
        .map(|e| e["stage"].as_str().expect("a stage").to_owned())
        .collect()
}
