//! The native API's run request and run result (`POST /api/v1/run`).

use serde::{Deserialize, Serialize};

use crate::limits::LimitsRequest;
use crate::verdict::{LimitReason, Status};

/// Most extra files a request may carry.
pub const MAX_FILES: usize = 64;
/// Most program arguments a request may carry.
pub const MAX_ARGS: usize = 1024;
/// Longest file name, in bytes.
pub const MAX_FILE_NAME: usize = 128;

/// A request to run one program.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Language name or alias (`python`, `py`, `c++`, ...).
    pub language: String,
    /// The main source file's text. Without it, the first of `files` is the main file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Standard input given to the program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Command-line arguments after the program.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extra files written beside the main file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<SourceFile>,
    /// Limits for this run; absent fields take the operator's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsRequest>,
}

/// One file of a program.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    /// File name, without directories. Optional for the main file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// File contents.
    pub content: String,
}

/// A request that cannot be run as given. The message names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// a required field is absent or empty
    #[error("{field}: {why}")]
    Missing {
        /// The field, as written in the request.
        field: String,
        /// What is expected instead.
        why: &'static str,
    },
    /// a field has a value cod will not accept
    #[error("{field}: {why}")]
    Invalid {
        /// The field, as written in the request.
        field: String,
        /// Why it is refused.
        why: String,
    },
}

impl RequestError {
    fn invalid(field: impl Into<String>, why: impl Into<String>) -> Self {
        RequestError::Invalid {
            field: field.into(),
            why: why.into(),
        }
    }
}

/// Checks that `name` can be a file in the work directory: no directories, no `..`, no NUL,
/// not hidden, at most [`MAX_FILE_NAME`] bytes.
pub fn check_file_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_FILE_NAME {
        return Err(format!("must be at most {MAX_FILE_NAME} bytes"));
    }
    if name.contains('/') || name.contains('\\') {
        return Err("must be a plain file name without directories".into());
    }
    if name.starts_with('.') {
        return Err("must not start with '.'".into());
    }
    if name.chars().any(|c| c.is_control()) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

impl RunRequest {
    /// Checks everything that does not depend on the server's configuration.
    pub fn validate(&self) -> Result<(), RequestError> {
        if self.language.trim().is_empty() {
            return Err(RequestError::Missing {
                field: "language".into(),
                why: "required, e.g. \"python\" (see GET /api/v1/runtimes)",
            });
        }
        if self.source.is_none() && self.files.is_empty() {
            return Err(RequestError::Missing {
                field: "source".into(),
                why: "required: give `source`, or the main file as the first of `files`",
            });
        }
        if self.files.len() > MAX_FILES {
            return Err(RequestError::invalid(
                "files",
                format!("at most {MAX_FILES} files"),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, f) in self.files.iter().enumerate() {
            match &f.name {
                Some(name) => {
                    check_file_name(name)
                        .map_err(|why| RequestError::invalid(format!("files[{i}].name"), why))?;
                    if !seen.insert(name.as_str()) {
                        return Err(RequestError::invalid(
                            format!("files[{i}].name"),
                            format!("{name:?} appears twice"),
                        ));
                    }
                }
                None if i == 0 && self.source.is_none() => {}
                None => {
                    return Err(RequestError::Missing {
                        field: format!("files[{i}].name"),
                        why: "required for every file but the main one",
                    });
                }
            }
        }
        if self.args.len() > MAX_ARGS {
            return Err(RequestError::invalid(
                "args",
                format!("at most {MAX_ARGS} arguments"),
            ));
        }
        if let Some(i) = self.args.iter().position(|a| a.contains('\0')) {
            return Err(RequestError::invalid(
                format!("args[{i}]"),
                "must not contain NUL bytes",
            ));
        }
        Ok(())
    }
}

/// What one stage (compile or run) of a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageReport {
    /// Verdict of this stage.
    pub status: Status,
    /// For `time_limit`: whether CPU or wall time ran out; set for every limit cod enforced.
    #[serde(default)]
    pub reason: Option<LimitReason>,
    /// A sentence for people, e.g. "killed after 2000 ms of CPU time (limit 2000 ms)".
    #[serde(default)]
    pub message: Option<String>,
    /// Exit code, when the program exited by itself.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Signal that ended the program (`"SIGSEGV"`), when one did.
    #[serde(default)]
    pub signal: Option<String>,
    /// Standard output (invalid UTF-8 is replaced with U+FFFD), at most the output limit.
    pub stdout: String,
    /// Standard error, likewise.
    pub stderr: String,
    /// Whether stdout was cut at the output limit.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at the output limit.
    pub stderr_truncated: bool,
    /// CPU time of all processes, milliseconds.
    pub cpu_ms: u64,
    /// Wall-clock time, milliseconds.
    pub wall_ms: u64,
    /// Peak memory of the stage, KiB, as the memory cgroup saw it.
    pub memory_kb: u64,
}

/// The compile stage of a compiled language.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompileReport {
    /// What the compiler did.
    #[serde(flatten)]
    pub stage: StageReport,
    /// Whether the compiled program came from the artifact cache.
    pub cached: bool,
}

/// The answer to a run request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunResult {
    /// Id of the run, as in logs.
    pub id: String,
    /// Canonical language name.
    pub language: String,
    /// Language version.
    pub version: String,
    /// Verdict of the run and what the program did.
    #[serde(flatten)]
    pub run: StageReport,
    /// The compile stage, for compiled languages.
    #[serde(default)]
    pub compile: Option<CompileReport>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> Result<RunRequest, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn minimal_request_is_valid() {
        let r = req(r#"{"language":"python","source":"print(1)"}"#).unwrap();
        assert_eq!(r.validate(), Ok(()));
    }

    #[test]
    fn files_only_request_uses_first_file() {
        let r = req(
            r#"{"language":"c","files":[{"content":"int main(){}"},{"name":"a.h","content":""}]}"#,
        )
        .unwrap();
        assert_eq!(r.validate(), Ok(()));
    }

    #[test]
    fn errors_name_the_field() {
        let missing = req(r#"{"language":"python"}"#).unwrap().validate();
        assert!(missing.unwrap_err().to_string().starts_with("source:"));
        let blank = req(r#"{"language":" ","source":""}"#).unwrap().validate();
        assert!(blank.unwrap_err().to_string().starts_with("language:"));
        let bad = req(r#"{"language":"c","source":"","files":[{"name":"../x","content":""}]}"#)
            .unwrap()
            .validate();
        assert!(bad.unwrap_err().to_string().starts_with("files[0].name:"));
        let dup = req(r#"{"language":"c","source":"","files":[{"name":"a","content":""},{"name":"a","content":""}]}"#)
            .unwrap()
            .validate();
        assert!(dup.unwrap_err().to_string().starts_with("files[1].name:"));
        let nul = req(r#"{"language":"c","source":"","args":["ok","a\u0000b"]}"#)
            .unwrap()
            .validate();
        assert!(nul.unwrap_err().to_string().starts_with("args[1]:"));
    }

    #[test]
    fn unknown_fields_are_rejected_by_name() {
        let err = req(r#"{"language":"python","source":"","stdn":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("stdn"), "{err}");
        let err = req(r#"{"language":"python","source":"","limits":{"cpu":1}}"#).unwrap_err();
        assert!(err.to_string().contains("cpu"), "{err}");
    }

    #[test]
    fn file_names() {
        assert!(check_file_name("main.py").is_ok());
        for bad in ["", ".hidden", "a/b", "a\\b", "x\ny", &"a".repeat(200)] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn result_serializes_every_documented_field() {
        let r = RunResult {
            id: "r1".into(),
            language: "c".into(),
            version: "12".into(),
            run: StageReport {
                status: Status::Ok,
                ..Default::default()
            },
            compile: Some(CompileReport::default()),
        };
        let v = serde_json::to_value(&r).unwrap();
        for k in [
            "status",
            "exit_code",
            "signal",
            "stdout",
            "stderr",
            "stdout_truncated",
            "stderr_truncated",
            "cpu_ms",
            "wall_ms",
            "memory_kb",
            "compile",
            "reason",
        ] {
            assert!(v.get(k).is_some(), "missing {k} in {v}");
        }
        assert_eq!(v["status"], "ok");
        assert_eq!(v["compile"]["cached"], false);
        assert_eq!(v["compile"]["status"], "internal_error");
    }
}
