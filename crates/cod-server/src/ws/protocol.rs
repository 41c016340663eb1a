//! The messages of `/api/v1/ws`: what a client may send, parsed strictly (an unknown type or
//! field is an error naming it), and what the server sends besides a run's `stage`, `out`
//! and `exit` (those are in [`crate::stream`]). docs/api.md describes them for clients.

use cod_core::LimitsRequest;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `{"type":"open","language":L,"text":T,"session":ID?}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Open {
    #[serde(rename = "type")]
    _kind: String,
    pub(crate) language: String,
    #[serde(default)]
    pub(crate) text: String,
    #[serde(default)]
    pub(crate) session: Option<String>,
}

/// `{"type":"edit","version":N,"changes":<ChangeSet JSON>}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Edit {
    #[serde(rename = "type")]
    _kind: String,
    pub(crate) version: u64,
    pub(crate) changes: Value,
}

/// `{"type":"language","language":L}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Language {
    #[serde(rename = "type")]
    _kind: String,
    pub(crate) language: String,
}

/// `{"type":"run","version":N,"stdin":S?,"args":[...]?,"limits":{...}?}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Run {
    #[serde(rename = "type")]
    _kind: String,
    pub(crate) version: u64,
    #[serde(default)]
    pub(crate) stdin: Option<String>,
    #[serde(default)]
    pub(crate) args: Vec<String>,
    #[serde(default)]
    pub(crate) limits: Option<LimitsRequest>,
}

/// `{"type":"stdin","data":S}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Stdin {
    #[serde(rename = "type")]
    _kind: String,
    pub(crate) data: String,
}

/// A message without fields: `stdin_close`, `kill`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Bare {
    #[serde(rename = "type")]
    _kind: String,
}

/// A client message.
#[derive(Debug)]
pub(crate) enum ClientMessage {
    Open(Open),
    Edit(Edit),
    Language(Language),
    Run(Run),
    Stdin(Stdin),
    StdinClose,
    Kill,
}

/// The message types, for errors.
const TYPES: &str = "open, edit, language, run, stdin, stdin_close, kill";

/// Parses one text frame. The error is the `error` to send back, naming the message type
/// and the field (`edit: version: invalid type: string "3", expected u64`).
pub(crate) fn parse(text: &str) -> Result<ClientMessage, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("malformed JSON: {e}"))?;
    let kind = match value.get("type") {
        Some(Value::String(k)) => k.clone(),
        Some(_) => return Err("type: must be a string".into()),
        None if value.is_object() => {
            return Err(format!("type: missing; expected one of {TYPES}"));
        }
        None => return Err("a message is a JSON object with a \"type\"".into()),
    };
    match kind.as_str() {
        "open" => fields(&kind, value).map(ClientMessage::Open),
        "edit" => fields(&kind, value).map(ClientMessage::Edit),
        "language" => fields(&kind, value).map(ClientMessage::Language),
        "run" => fields(&kind, value).map(ClientMessage::Run),
        "stdin" => fields(&kind, value).map(ClientMessage::Stdin),
        "stdin_close" => fields::<Bare>(&kind, value).map(|_| ClientMessage::StdinClose),
        "kill" => fields::<Bare>(&kind, value).map(|_| ClientMessage::Kill),
        other => Err(format!(
            "type: unknown message type {other:?}; expected one of {TYPES}"
        )),
    }
}

fn fields<T: DeserializeOwned>(kind: &str, value: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            format!("{kind}: {inner}")
        } else {
            format!("{kind}: {path}: {inner}")
        }
    })
}

/// A server message other than a run's.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ServerMessage<'a> {
    /// The session this connection edits.
    Opened {
        session: String,
        version: u64,
        language: &'a str,
        text: &'a str,
        resumed: bool,
    },
    /// An edit was applied; `version` is the new one.
    Ack { version: u64 },
    /// The client's copy is not the server's: here is the server's.
    Resync { version: u64, text: &'a str },
    /// A compile-ahead of `version` ended.
    Compiled {
        version: u64,
        language: &'a str,
        status: &'a str,
        cached: bool,
        wall_ms: u64,
    },
    /// A message could not be used; the connection goes on.
    Error { error: &'a str },
}

impl ServerMessage<'_> {
    /// The message as JSON text.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_and_errors_name_type_and_field() {
        assert!(matches!(
            parse(r#"{"type":"edit","version":3,"changes":[5,[0,"x"]]}"#),
            Ok(ClientMessage::Edit(Edit { version: 3, .. }))
        ));
        assert!(matches!(
            parse(r#"{"type":"kill"}"#),
            Ok(ClientMessage::Kill)
        ));
        let cases = [
            (
                r#"{"type":"edit","version":"3","changes":[]}"#,
                "edit: version:",
            ),
            (
                r#"{"type":"run","version":1,"limits":{"cpu":1}}"#,
                "run: limits.cpu: unknown field",
            ),
            (
                r#"{"type":"run","version":1,"stdn":""}"#,
                "run: stdn: unknown field `stdn`",
            ),
            (r#"{"type":"open"}"#, "open: missing field `language`"),
            (r#"{"type":"stdin"}"#, "stdin: missing field `data`"),
            (
                r#"{"type":"kill","now":true}"#,
                "kill: now: unknown field `now`",
            ),
            (r#"{"type":"jump"}"#, "type: unknown message type \"jump\""),
            (r#"{"version":1}"#, "type: missing"),
            (r#"{"type":7}"#, "type: must be a string"),
            (r#"[1,2]"#, "a message is a JSON object"),
            (r#"{"type":"edit""#, "malformed JSON"),
        ];
        for (text, want) in cases {
            let err = parse(text).expect_err(text);
            assert!(err.starts_with(want), "{text}: {err}");
        }
    }

    #[test]
    fn server_messages_carry_their_type() {
        assert_eq!(
            ServerMessage::Ack { version: 4 }.to_json(),
            r#"{"type":"ack","version":4}"#
        );
        assert_eq!(
            ServerMessage::Error { error: "x" }.to_json(),
            r#"{"type":"error","error":"x"}"#
        );
    }
}
