//! Streaming runs: the events a run reports while it goes (`stage`, `out`) and its result
//! (`exit`), as JSON, for the editor's WebSocket and for `POST /api/v1/run?stream=true`
//! (newline-delimited JSON). Both read the run through a `RunDriver` and encode it with
//! an `OutputDecoder`, so the two carry the same shapes.
//!
//! Nothing here buffers without bound: a driver holds at most the executor's small event
//! queue, and it is polled only as fast as its consumer writes to the client. A client that
//! reads slowly slows the program down (its output pipe fills), it does not grow memory.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cod_core::{RunRequest, RunResult};
use cod_runtime::{Job, OutStream, RunEvent, RunIo, StageKind};
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiJson};
use crate::ws::slots;

/// Most bytes of program output in one `out` event; larger writes become several events.
pub const MAX_OUT_CHUNK: usize = 16 * 1024;

/// Events the executor may hold for a consumer that has not taken them yet. Each holds at
/// most 64 KiB of output (the sandbox's read size), so a run buffers at most 256 KiB here.
pub(crate) const EVENT_QUEUE: usize = 4;

/// A server message of a run, as JSON: `{"type":"stage",...}`, `{"type":"out",...}`,
/// `{"type":"exit", ...the run result}`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum RunMessage<'a> {
    Stage { stage: &'static str },
    Out { stream: &'static str, data: &'a str },
    Exit(&'a RunResult),
}

fn json(message: &RunMessage<'_>) -> String {
    serde_json::to_string(message).expect("run messages serialize")
}

/// The `exit` message of `result`.
pub(crate) fn exit_message(result: &RunResult) -> String {
    json(&RunMessage::Exit(result))
}

fn stream_name(stream: OutStream) -> &'static str {
    match stream {
        OutStream::Stdout => "stdout",
        OutStream::Stderr => "stderr",
    }
}

/// Turns run events into messages. Program output is bytes, and a write may end inside a
/// UTF-8 character: the incomplete tail (at most 3 bytes) waits for the next event of its
/// stream, so that no character is split between two `out` messages; invalid bytes become
/// U+FFFD, as in the run result.
#[derive(Debug, Default)]
pub(crate) struct OutputDecoder {
    /// The incomplete UTF-8 tail of stdout and of stderr.
    pending: [Vec<u8>; 2],
}

impl OutputDecoder {
    /// The messages of `event` (none for usage reports).
    pub(crate) fn messages(&mut self, event: RunEvent) -> Vec<String> {
        let mut out = Vec::new();
        match event {
            RunEvent::Stage(kind) => {
                // Output of the stage before is complete: nothing waits for more of it.
                self.flush(&mut out);
                let stage = match kind {
                    StageKind::Compile => "compile",
                    StageKind::Run => "run",
                };
                out.push(json(&RunMessage::Stage { stage }));
            }
            RunEvent::Output { stream, data, .. } => {
                let i = usize::from(stream == OutStream::Stderr);
                let mut bytes = std::mem::take(&mut self.pending[i]);
                bytes.extend_from_slice(&data);
                let (text, rest) = decode_utf8(&bytes);
                self.pending[i] = rest.to_vec();
                push_out(&mut out, stream, &text);
            }
            RunEvent::Usage { .. } => {}
        }
        out
    }

    /// The messages that end a run: what output still waits, then `exit`.
    pub(crate) fn finish(&mut self, result: &RunResult) -> Vec<String> {
        let mut out = Vec::new();
        self.flush(&mut out);
        out.push(exit_message(result));
        out
    }

    fn flush(&mut self, out: &mut Vec<String>) {
        for (i, stream) in [OutStream::Stdout, OutStream::Stderr]
            .into_iter()
            .enumerate()
        {
            let rest = std::mem::take(&mut self.pending[i]);
            if !rest.is_empty() {
                push_out(out, stream, &String::from_utf8_lossy(&rest));
            }
        }
    }
}

/// `text` as `out` messages of at most [`MAX_OUT_CHUNK`] bytes each, cut between characters.
fn push_out(out: &mut Vec<String>, stream: OutStream, mut text: &str) {
    while !text.is_empty() {
        let mut cut = text.len().min(MAX_OUT_CHUNK);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let (data, rest) = text.split_at(cut);
        out.push(json(&RunMessage::Out {
            stream: stream_name(stream),
            data,
        }));
        text = rest;
    }
}

/// Decodes `bytes` as UTF-8, replacing invalid sequences with U+FFFD, except an incomplete
/// sequence at the very end, which is returned undecoded.
fn decode_utf8(bytes: &[u8]) -> (String, &[u8]) {
    let mut text = String::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                text.push_str(s);
                return (text, &[]);
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                text.push_str(&String::from_utf8_lossy(valid));
                match e.error_len() {
                    Some(n) => {
                        text.push(char::REPLACEMENT_CHARACTER);
                        rest = &after[n..];
                    }
                    // The input ends inside a character: keep its bytes for later.
                    None => return (text, after),
                }
            }
        }
    }
}

/// One step of a run read through a [`RunDriver`].
#[derive(Debug)]
pub(crate) enum Step {
    /// Something the run reported.
    Event(RunEvent),
    /// The run ended; every event it reported came before.
    Done(Box<RunResult>),
}

/// Drives a streaming run (a future that ends with the result, holding the sender of its
/// events) and hands out its events, then its result, in order. Dropping the driver drops
/// the run, which kills the program.
pub(crate) struct RunDriver {
    run: Option<Pin<Box<dyn Future<Output = RunResult> + Send>>>,
    events: mpsc::Receiver<RunEvent>,
    result: Option<RunResult>,
}

impl RunDriver {
    /// A driver of `run`, whose events arrive on `events`.
    pub(crate) fn new(
        run: impl Future<Output = RunResult> + Send + 'static,
        events: mpsc::Receiver<RunEvent>,
    ) -> RunDriver {
        RunDriver {
            run: Some(Box::pin(run)),
            events,
            result: None,
        }
    }

    /// The next step; `None` after [`Step::Done`]. Cancel-safe: dropping the future loses
    /// nothing.
    pub(crate) async fn next(&mut self) -> Option<Step> {
        loop {
            let Some(run) = self.run.as_mut() else {
                // The run is over: what it reported before it ended, then the result.
                return match self.events.recv().await {
                    Some(e) => Some(Step::Event(e)),
                    None => self.result.take().map(|r| Step::Done(Box::new(r))),
                };
            };
            tokio::select! {
                biased;
                e = self.events.recv() => match e {
                    Some(e) => return Some(Step::Event(e)),
                    // The sender lives in the run until its very end: the run is ending.
                    None => {
                        self.result = Some(run.await);
                        self.run = None;
                    }
                },
                r = run.as_mut() => {
                    self.result = Some(r);
                    self.run = None;
                }
            }
        }
    }
}

/// Starts `job` in the slot `permit` holds, streaming: the driver of the run. The slot is
/// freed when the run ends (or the driver is dropped).
pub(crate) fn start(
    st: &AppState,
    job: Job,
    permit: slots::Permit,
    input: Option<mpsc::Receiver<cod_runtime::RunInput>>,
) -> RunDriver {
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    let executor = st.executor.clone();
    let backend = st.worker.clone();
    let run = async move {
        permit.started();
        let mut io = RunIo { events: tx, input };
        let result = backend
            .run_streaming(&executor, &job, permit.client(), permit.slot(), &mut io)
            .await;
        drop(io);
        permit.finished(&result);
        result
    };
    RunDriver::new(run, rx)
}

/// Whether the query string asks for a stream: `stream=true` (or `1`); `false`, `0` or no
/// `stream` do not.
fn wants_stream(query: Option<&str>) -> Result<bool, ApiError> {
    let Some(query) = query else {
        return Ok(false);
    };
    let mut wants = false;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "stream" {
            continue;
        }
        wants = match value {
            "true" | "1" => true,
            "false" | "0" => false,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "stream: expected true or false, got {other:?}"
                )));
            }
        };
    }
    Ok(wants)
}

/// Middleware on `POST /api/v1/run`: with `?stream=true`, answers newline-delimited JSON
/// events itself; otherwise hands the request on unchanged.
pub(crate) async fn run_or_stream(
    State(st): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    match wants_stream(req.uri().query()) {
        Ok(false) => next.run(req).await,
        Ok(true) => stream_run(st, req)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        Err(e) => e.into_response(),
    }
}

/// `POST /api/v1/run?stream=true`: the run request of `POST /api/v1/run`, answered with
/// `application/x-ndjson`: `{"type":"stage",...}` and `{"type":"out",...}` lines as the
/// run goes, then one `{"type":"exit",...}` line with the whole run result. Bad requests
/// and overload are answered as without `stream` (400, 429), before any line.
async fn stream_run(st: AppState, req: Request) -> Result<Response, ApiError> {
    let (mut parts, body) = req.into_parts();
    let caller = Caller::from_request_parts(&mut parts, &st).await?;
    let req = Request::from_parts(parts, body);
    let ApiJson(body) = ApiJson::<RunRequest>::from_request(req, &st).await?;
    let job = st.executor.prepare(&body)?;
    let span = tracing::info_span!("stream_run", id = %job.id, language = %job.language.name);
    let permit = slots::run_slot(&st, &job, &caller, None)
        .instrument(span)
        .await
        .map_err(ApiError::Overloaded)?;
    let driver = start(&st, job, permit, None);
    let lines = futures_util::stream::unfold(
        (driver, OutputDecoder::default(), VecDeque::new(), false),
        |(mut driver, mut decoder, mut queue, mut done)| async move {
            loop {
                if let Some(line) = queue.pop_front() {
                    let item: Result<Bytes, Infallible> = Ok(Bytes::from(line));
                    return Some((item, (driver, decoder, queue, done)));
                }
                if done {
                    return None;
                }
                match driver.next().await {
                    Some(Step::Event(e)) => queue.extend(decoder.messages(e).into_iter().map(line)),
                    Some(Step::Done(r)) => {
                        queue.extend(decoder.finish(&r).into_iter().map(line));
                        done = true;
                    }
                    None => done = true,
                }
            }
        },
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(lines),
    )
        .into_response())
}

fn line(mut json: String) -> String {
    json.push('\n');
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_between_events_is_kept_whole() {
        let mut d = OutputDecoder::default();
        let snake = "🐍".as_bytes();
        let out = |stream, data: &[u8]| RunEvent::Output {
            stage: StageKind::Run,
            stream,
            data: data.to_vec(),
        };
        let first = d.messages(out(OutStream::Stdout, &[b'a', snake[0], snake[1]]));
        assert_eq!(first, [r#"{"type":"out","stream":"stdout","data":"a"}"#]);
        // Another stream in between does not disturb the pending bytes.
        let other = d.messages(out(OutStream::Stderr, b"e"));
        assert_eq!(other, [r#"{"type":"out","stream":"stderr","data":"e"}"#]);
        let second = d.messages(out(OutStream::Stdout, &[snake[2], snake[3], b'b']));
        assert_eq!(second, [r#"{"type":"out","stream":"stdout","data":"🐍b"}"#]);
        // Invalid bytes become U+FFFD; a dangling start at the end is flushed by exit.
        let bad = d.messages(out(OutStream::Stdout, &[0xff, b'c', 0xe2]));
        assert_eq!(
            bad,
            [
                r#"{"type":"out","stream":"stdout","data":"\ufffdc"}"#
                    .replace("\\ufffd", "\u{fffd}")
            ]
        );
        let end = d.finish(&RunResult::default());
        assert_eq!(end.len(), 2, "{end:?}");
        assert!(end[0].contains('\u{fffd}') && end[1].starts_with(r#"{"type":"exit""#));
    }

    #[test]
    fn long_output_is_cut_into_chunks_between_characters() {
        let mut d = OutputDecoder::default();
        let text = "é".repeat(MAX_OUT_CHUNK); // 2 bytes each
        let msgs = d.messages(RunEvent::Output {
            stage: StageKind::Run,
            stream: OutStream::Stdout,
            data: text.clone().into_bytes(),
        });
        assert_eq!(msgs.len(), 2);
        let mut joined = String::new();
        for m in &msgs {
            let v: serde_json::Value = serde_json::from_str(m).unwrap();
            let data = v["data"].as_str().unwrap();
            assert!(data.len() <= MAX_OUT_CHUNK);
            joined.push_str(data);
        }
        assert_eq!(joined, text);
    }

    #[test]
    fn stage_messages_and_exit_carry_the_type() {
        let mut d = OutputDecoder::default();
        assert_eq!(
            d.messages(RunEvent::Stage(StageKind::Compile)),
            [r#"{"type":"stage","stage":"compile"}"#]
        );
        let exit: serde_json::Value =
            serde_json::from_str(&d.finish(&RunResult::default())[0]).unwrap();
        assert_eq!(exit["type"], "exit");
        assert!(exit.get("stdout").is_some() && exit.get("compile").is_some());
    }

    #[test]
    fn stream_query_values() {
        assert!(!wants_stream(None).unwrap());
        assert!(wants_stream(Some("stream=true")).unwrap());
        assert!(wants_stream(Some("a=b&stream=1")).unwrap());
        assert!(!wants_stream(Some("stream=false")).unwrap());
        let (_, msg) = wants_stream(Some("stream=yes")).unwrap_err().parts();
        assert!(msg.starts_with("stream:"), "{msg}");
    }
}
