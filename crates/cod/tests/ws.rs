//! The editor's WebSocket protocol over a real socket, against the router on a loopback
//! port: changesets (made by the real CodeMirror, and generated here), resync, resume,
//! limits (text, sessions, message size), expiry, and bad messages. Runs are in `editor.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
mod ws_support;

use std::sync::Arc;
use std::time::Duration;

use cod_core::Bytes;
use cod_server::ws::{CLOSE_SESSION_GONE, Editor, EditorConfig};
use cod_session::{ManualClock, StoreConfig};
use futures_util::SinkExt as _;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use ws_support::{Client, Event, serve};

fn editor(max_text: u64, max_sessions: usize, clock: Option<Arc<ManualClock>>) -> Editor {
    let config = EditorConfig {
        store: StoreConfig {
            max_text_bytes: Bytes(max_text),
            max_sessions,
            idle_expiry: Duration::from_secs(3600),
        },
        compile_ahead: false,
        compile_ahead_delay: Duration::from_millis(300),
    };
    match clock {
        Some(c) => Editor::with_clock(config, c).unwrap(),
        None => Editor::new(config).unwrap(),
    }
}

#[derive(Deserialize)]
struct Fixtures {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    doc: String,
    changes: Value,
    expected: Option<String>,
}

/// The server's text and version of `session`, read by resuming it on a new connection.
async fn server_text(addr: std::net::SocketAddr, session: &str) -> (String, u64) {
    let mut c = Client::connect(addr).await;
    let opened = c.open("python", "", Some(session)).await;
    assert_eq!(opened["session"], session, "{opened}");
    assert_eq!(opened["resumed"], true, "{opened}");
    (
        opened["text"].as_str().unwrap().to_owned(),
        opened["version"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codemirror_changesets_give_codemirror_documents_on_the_server() {
    let server = serve(common::state()).await;
    let fixtures: Fixtures =
        serde_json::from_str(include_str!("../../cod-session/tests/cm/fixtures.json")).unwrap();
    let mut c = Client::connect(server.addr).await;
    let (mut applied, mut rejected) = (0, 0);
    for case in &fixtures.cases {
        let name = &case.name;
        // One connection for all: a new `open` switches it to a new session.
        let opened = c.open("python", &case.doc, None).await;
        let session = opened["session"].as_str().unwrap().to_owned();
        c.send(json!({"type": "edit", "version": 0, "changes": case.changes}))
            .await;
        match &case.expected {
            Some(expected) => {
                let ack = c.expect("ack").await;
                assert_eq!(ack["version"], 1, "{name}");
                assert_eq!(
                    server_text(server.addr, &session).await,
                    (expected.clone(), 1),
                    "{name}"
                );
                applied += 1;
            }
            None => {
                // Refused: an error naming the edit, then the server's (unchanged) text.
                let err = c.expect("error").await;
                assert!(
                    err["error"].as_str().unwrap().starts_with("edit:"),
                    "{name}: {err}"
                );
                let resync = c.expect("resync").await;
                assert_eq!(resync["version"], 0, "{name}");
                assert_eq!(resync["text"], case.doc.as_str(), "{name}");
                rejected += 1;
            }
        }
    }
    assert!(
        applied >= 50 && rejected >= 3,
        "{applied} applied, {rejected} rejected"
    );
}

/// A document as CodeMirror counts it: UTF-16 code units.
fn apply_utf16(doc: &mut Vec<u16>, changes: &[(usize, usize, String)]) {
    for (from, to, insert) in changes.iter().rev() {
        doc.splice(*from..*to, insert.encode_utf16());
    }
}

/// `ChangeSet.toJSON()` of `changes` (sorted, apart) on a document of `len` units: numbers
/// keep, `[n]` deletes n, `[n, lines...]` replaces n with the lines joined by newlines.
fn changeset_json(len: usize, changes: &[(usize, usize, String)]) -> Value {
    let mut out = Vec::new();
    let mut pos = 0;
    for (from, to, insert) in changes {
        if *from > pos {
            out.push(json!(from - pos));
        }
        let mut section = vec![json!(to - from)];
        if !insert.is_empty() {
            section.extend(insert.split('\n').map(|l| json!(l)));
        }
        out.push(Value::Array(section));
        pos = *to;
    }
    if len > pos {
        out.push(json!(len - pos));
    }
    Value::Array(out)
}

/// SplitMix64: deterministic edits.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap()).unwrap()
    }
}

/// A position of `doc` that is not inside a surrogate pair.
fn boundary(doc: &[u16], mut at: usize) -> usize {
    if at > 0 && at < doc.len() && (0xDC00..0xE000).contains(&doc[at]) {
        at -= 1;
    }
    at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_edits_with_non_bmp_text_match_the_client_document() {
    let server = serve(common::state()).await;
    let mut c = Client::connect(server.addr).await;
    let start = "print('héllo 🐍')\n# 日本語 and 😀😀\n";
    let opened = c.open("python", start, None).await;
    let session = opened["session"].as_str().unwrap().to_owned();
    let mut doc: Vec<u16> = start.encode_utf16().collect();
    let mut rng = Rng(7);
    const TYPED: &[&str] = &["a", "😀", "é", "\n", "🐍x\n", "日", "", "  ", "𝄞"];
    let n = 300;
    // Sent one after another without waiting for acks, as the editor does.
    for version in 0..n {
        let ranges = 1 + rng.below(3);
        let mut cuts: Vec<usize> = (0..ranges * 2)
            .map(|_| boundary(&doc, rng.below(doc.len() + 1)))
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut changes = Vec::new();
        for pair in cuts.chunks(2) {
            let (from, to) = (pair[0], *pair.get(1).unwrap_or(&pair[0]));
            // Mostly typing (an insertion), sometimes deleting or replacing a range.
            let to = if rng.below(3) == 0 { to } else { from };
            let insert = TYPED[rng.below(TYPED.len())].to_owned();
            if from == to && insert.is_empty() {
                continue;
            }
            if changes
                .last()
                .is_some_and(|(_, t, _): &(usize, usize, String)| *t >= from)
            {
                continue;
            }
            changes.push((from, to, insert));
        }
        let json = changeset_json(doc.len(), &changes);
        apply_utf16(&mut doc, &changes);
        c.send(json!({"type": "edit", "version": version, "changes": json}))
            .await;
    }
    for version in 1..=n {
        let ack = c.expect("ack").await;
        assert_eq!(ack["version"], version);
    }
    let want = String::from_utf16(&doc).expect("edits never split a surrogate pair");
    assert_eq!(server_text(server.addr, &session).await, (want, n));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_edit_gets_the_servers_text_and_editing_goes_on_from_its_version() {
    let server = serve(common::state()).await;
    let mut a = Client::connect(server.addr).await;
    let opened = a.open("python", "x = 1\n", None).await;
    let session = opened["session"].as_str().unwrap().to_owned();
    // A second editor of the same session, at version 0 too.
    let mut b = Client::connect(server.addr).await;
    b.open("python", "", Some(&session)).await;
    a.send(json!({"type": "edit", "version": 0, "changes": [6, [0, "y = 2", ""]]}))
        .await;
    assert_eq!(a.expect("ack").await["version"], 1);
    // B's edit was made against version 0: never applied, B gets version 1's text.
    b.send(json!({"type": "edit", "version": 0, "changes": [[5, "z = 3"], 1]}))
        .await;
    let resync = b.expect("resync").await;
    assert_eq!(
        resync,
        json!({"type": "resync", "version": 1, "text": "x = 1\ny = 2\n"})
    );
    // Rebased on version 1, B's edit applies.
    b.send(json!({"type": "edit", "version": 1, "changes": [[5, "z = 3"], 7]}))
        .await;
    assert_eq!(b.expect("ack").await["version"], 2);
    assert_eq!(
        server_text(server.addr, &session).await,
        ("z = 3\ny = 2\n".to_owned(), 2)
    );
    // A run must name the current version.
    a.send(json!({"type": "run", "version": 1})).await;
    let err = a.expect("error").await;
    assert_eq!(
        err["error"], "run: version: 1 is not the current version 2",
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_edit_gets_one_answer_in_order_so_moot_edits_can_be_told_apart() {
    let server = serve(common::state()).await;
    let mut a = Client::connect(server.addr).await;
    let opened = a.open("python", "abc", None).await;
    let session = opened["session"].as_str().unwrap().to_owned();
    let mut b = Client::connect(server.addr).await;
    b.open("python", "", Some(&session)).await;
    a.send(json!({"type": "edit", "version": 0, "changes": [[0, "X"], 3]}))
        .await;
    assert_eq!(a.expect("ack").await["version"], 1);
    // B types on its copy ("abc", version 0) without waiting: three edits, and a fourth
    // that does not fit any text (an error, then its resync).
    for (version, edit) in [
        (0, json!([3, [0, "1"]])),
        (1, json!([4, [0, "2"]])),
        (2, json!([5, [0, "3"]])),
        (3, json!([99, [0, "4"]])),
    ] {
        b.send(json!({"type": "edit", "version": version, "changes": edit}))
            .await;
    }
    let mut answers = Vec::new();
    while answers.len() < 4 {
        let v = b.next().await;
        match v["type"].as_str().unwrap() {
            "ack" => answers.push(format!("ack {}", v["version"])),
            "resync" => answers.push(format!("resync {} {}", v["version"], v["text"])),
            "error" => {}
            _ => panic!("unexpected {v}"),
        }
    }
    // The first is stale. The second and third were made on B's text, which the resync
    // replaced, but their versions and lengths happen to fit the server's: they are applied
    // (B must take them as moot and ask again); the fourth fits nothing.
    assert_eq!(
        answers,
        [
            r#"resync 1 "Xabc""#,
            "ack 2",
            "ack 3",
            r#"resync 3 "Xabc23""#
        ]
    );
    // An empty edit against a version the server has passed brings its text.
    b.send(json!({"type": "edit", "version": 1, "changes": [4]}))
        .await;
    assert_eq!(
        b.expect("resync").await,
        json!({"type": "resync", "version": 3, "text": "Xabc23"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_survives_a_disconnect_and_is_resumed_by_id() {
    let server = serve(common::state()).await;
    let mut a = Client::connect(server.addr).await;
    let opened = a.open("py", "print(1)\n", None).await;
    assert_eq!(opened["language"], "python", "aliases resolve: {opened}");
    assert_eq!(opened["resumed"], false);
    assert_eq!(opened["version"], 0);
    let session = opened["session"].as_str().unwrap().to_owned();
    assert_eq!(session.len(), 32, "{session}");
    // Messages are handled in order: once the edit is acked, the language is set.
    a.send(json!({"type": "language", "language": "c"})).await;
    a.send(json!({"type": "edit", "version": 0, "changes": [9, [0, "print(2)", ""]]}))
        .await;
    a.expect("ack").await;
    drop(a);

    // Another connection (a reload): the server's text, version and language win.
    let mut b = Client::connect(server.addr).await;
    let resumed = b.open("python", "something else", Some(&session)).await;
    assert_eq!(
        resumed,
        json!({"type": "opened", "session": session, "version": 1, "language": "c",
               "text": "print(1)\nprint(2)\n", "resumed": true})
    );
    b.send(json!({"type": "edit", "version": 1, "changes": [[0, "// "], 18]}))
        .await;
    assert_eq!(b.expect("ack").await["version"], 2);

    // An unknown id, or one that is not an id at all: a new session with the client's text.
    for bad in ["0123456789abcdef0123456789abcdef", "not-an-id"] {
        let fresh = b.open("python", "mine", Some(bad)).await;
        assert_ne!(fresh["session"], bad);
        assert_ne!(fresh["session"], session.as_str());
        assert_eq!(fresh["resumed"], false);
        assert_eq!(
            (fresh["text"].as_str(), fresh["version"].as_u64()),
            (Some("mine"), Some(0))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_size_and_session_count_are_limited() {
    let st = common::state().with_editor(editor(1024, 2, None));
    let server = serve(st).await;
    let mut c = Client::connect(server.addr).await;

    // Too large to open: an error naming the field; the connection goes on.
    c.send(json!({"type": "open", "language": "python", "text": "x".repeat(2000)}))
        .await;
    let err = c.expect("error").await;
    let msg = err["error"].as_str().unwrap();
    assert!(
        msg.starts_with("open: text:") && msg.contains("2000"),
        "{msg}"
    );

    let first = c.open("python", &"a".repeat(1000), None).await;
    let first = first["session"].as_str().unwrap().to_owned();
    // An edit past the limit is refused and the client is put back on the server's text.
    c.send(json!({"type": "edit", "version": 0, "changes": [1000, [0, "b".repeat(100)]]}))
        .await;
    let err = c.expect("error").await;
    assert!(
        err["error"].as_str().unwrap().contains("over the limit"),
        "{err}"
    );
    let resync = c.expect("resync").await;
    assert_eq!(
        (
            resync["version"].as_u64(),
            resync["text"].as_str().map(str::len)
        ),
        (Some(0), Some(1000))
    );
    c.send(json!({"type": "edit", "version": 0, "changes": [[1000, "ok"]]}))
        .await;
    assert_eq!(c.expect("ack").await["version"], 1);

    // Two sessions at most: a third evicts the least recently used (the first).
    let mut others = Vec::new();
    for _ in 0..2 {
        let mut o = Client::connect(server.addr).await;
        o.open("python", "", None).await;
        others.push(o);
    }
    assert_eq!(server.state.editor.stats().sessions, 2);
    let mut again = Client::connect(server.addr).await;
    let reopened = again.open("python", "new text", Some(&first)).await;
    assert_eq!(reopened["resumed"], false, "evicted: {reopened}");
    assert_ne!(reopened["session"], first.as_str());
    // The first connection's session is gone: it is told so, and closed.
    c.send(json!({"type": "edit", "version": 1, "changes": [[2, ""]]}))
        .await;
    let err = c.expect("error").await;
    assert!(err["error"].as_str().unwrap().contains("is gone"), "{err}");
    match c.event().await {
        Event::Closed(Some(frame)) => assert_eq!(u16::from(frame.code), CLOSE_SESSION_GONE),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_closes_the_connection_not_the_session() {
    let ed = editor(1024, 10, None);
    let max_message = ed.config().max_message();
    let server = serve(common::state().with_editor(ed)).await;
    let mut c = Client::connect(server.addr).await;
    let opened = c.open("python", "print(1)\n", None).await;
    let session = opened["session"].as_str().unwrap().to_owned();
    c.send(json!({"type": "edit", "version": 0, "changes": [9, [0, "x"]]}))
        .await;
    c.expect("ack").await;
    // One byte over: the server reads no further and ends the connection.
    let pad = max_message + 1 - r#"{"type":"stdin","data":""}"#.len();
    let _ =
        c.ws.send(Message::text(
            json!({"type": "stdin", "data": "x".repeat(pad)}).to_string(),
        ))
        .await;
    match c.event().await {
        Event::Closed(_) => {}
        Event::Json(v) => panic!("expected the connection to end, got {v}"),
    }
    // The session is untouched and resumes from another connection.
    assert_eq!(
        server_text(server.addr, &session).await,
        ("print(1)\nx".to_owned(), 1)
    );
    // A message just under the limit is read (and answered: no run is active).
    let mut d = Client::connect(server.addr).await;
    let pad = max_message - r#"{"type":"stdin","data":""}"#.len();
    d.send_text(&json!({"type": "stdin", "data": "x".repeat(pad)}).to_string())
        .await;
    assert_eq!(d.expect("error").await["error"], "stdin: no run is active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_expire_and_maintenance_removes_them() {
    let clock = Arc::new(ManualClock::new());
    let ed = editor(1 << 20, 100, Some(clock.clone()));
    let server = serve(common::state().with_editor(ed.clone())).await;
    let mut c = Client::connect(server.addr).await;
    let opened = c.open("python", "print(1)", None).await;
    let session = opened["session"].as_str().unwrap().to_owned();
    let mut other = Client::connect(server.addr).await;
    other.open("python", "kept", None).await;
    assert_eq!(ed.maintain_once().0, 0, "nothing expired yet");

    clock.advance(Duration::from_secs(3599));
    other
        .send(json!({"type": "edit", "version": 0, "changes": [[0, "x"], 4]}))
        .await;
    other.expect("ack").await;
    clock.advance(Duration::from_secs(2));
    // An hour idle: the first session is purged; the other was used a second ago.
    assert_eq!(ed.maintain_once().0, 1);
    assert_eq!(ed.stats().sessions, 1);
    c.send(json!({"type": "run", "version": 0})).await;
    let err = c.expect("error").await;
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .starts_with(&format!("run: session {session} is gone")),
        "{err}"
    );
    assert!(matches!(c.event().await, Event::Closed(Some(_))));
    // Resuming it opens a new session with the client's text, as the page does on reconnect.
    let mut d = Client::connect(server.addr).await;
    let reopened = d.open("python", "print(1)", Some(&session)).await;
    assert_eq!(reopened["resumed"], false);
    assert_eq!(reopened["text"], "print(1)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_get_an_error_and_the_connection_stays_usable() {
    let server = serve(common::state()).await;
    let mut c = Client::connect(server.addr).await;
    let cases: &[(&str, &str)] = &[
        ("{\"type\": \"open\"", "malformed JSON"),
        ("[1, 2]", "a message is a JSON object"),
        (
            "{\"type\": \"jump\"}",
            "type: unknown message type \"jump\"",
        ),
        ("{\"version\": 1}", "type: missing"),
        (
            r#"{"type": "edit", "version": 0, "changes": []}"#,
            "edit: no session is open",
        ),
        (
            r#"{"type": "run", "version": 0}"#,
            "run: no session is open",
        ),
        (
            r#"{"type": "open", "language": "cobol", "text": ""}"#,
            "open: language: unknown language \"cobol\"",
        ),
        (
            r#"{"type": "open", "language": "python", "txt": ""}"#,
            "open: txt: unknown field",
        ),
        (
            r#"{"type": "stdin", "data": "x"}"#,
            "stdin: no run is active",
        ),
        (
            r#"{"type": "stdin_close"}"#,
            "stdin_close: no run is active",
        ),
    ];
    for (text, want) in cases {
        c.send_text(text).await;
        let err = c.expect("error").await;
        assert!(
            err["error"].as_str().unwrap().starts_with(want),
            "{text}: {err}"
        );
    }
    c.ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    let err = c.expect("error").await;
    assert!(err["error"].as_str().unwrap().contains("binary"), "{err}");
    // A kill without a run is not an error (Stop pressed as a run ends).
    c.send(json!({"type": "kill"})).await;

    // After all that, the protocol works.
    c.open("python", "abc", None).await;
    let more: &[(Value, &str)] = &[
        (
            json!({"type": "edit", "version": "0", "changes": [3]}),
            "edit: version: invalid type",
        ),
        (
            json!({"type": "edit", "version": 0, "changes": {"a": 1}}),
            "edit: changes:",
        ),
        (
            json!({"type": "edit", "version": 0, "changes": [5, [0, "x"]]}),
            "edit: changeset is for a document of 5",
        ),
        (
            json!({"type": "language", "language": "klingon"}),
            "language: language: unknown language",
        ),
        (
            json!({"type": "run", "version": 0, "limits": {"cpu_ms": 99_999_999}}),
            "run: limits.cpu_ms:",
        ),
        (
            json!({"type": "run", "version": 0, "args": "x"}),
            "run: args: invalid type",
        ),
    ];
    for (msg, want) in more {
        c.send(msg.clone()).await;
        let err = c.expect("error").await;
        assert!(
            err["error"].as_str().unwrap().starts_with(want),
            "{msg}: {err}"
        );
        if msg["type"] == "edit" && msg["version"] == 0 {
            // A refused edit is followed by the server's text.
            assert_eq!(c.expect("resync").await["text"], "abc");
        }
    }
    c.send(json!({"type": "edit", "version": 0, "changes": [3, [0, "d"]]}))
        .await;
    assert_eq!(c.expect("ack").await["version"], 1);
}
