//! Judge0's vocabulary: language ids, status ids, the submission's fields, and how a cod
//! run result reads in them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cod_core::limits::{LimitsPolicy, LimitsRequest};
use cod_core::{RunResult, Status};
use serde_json::{Map, Value, json};

use crate::cases::{Comparison, compare};
use crate::jobs::{JobState, Record, rfc3339};

/// The Judge0 version whose API cod speaks (clients pick language ids by it).
pub const JUDGE0_VERSION: &str = "1.13.1";

/// Judge0 CE language ids for cod's languages: (id, cod language). The first id of each
/// language is its current one in Judge0 CE; the others name older compilers of the same
/// language, and clients still send them (the Python SDK's `LanguageAlias.CPP` is 52).
pub const LANGUAGE_IDS: &[(u32, &str)] = &[
    (46, "bash"),
    (50, "c"),
    (49, "c"),
    (48, "c"),
    (54, "cpp"),
    (53, "cpp"),
    (52, "cpp"),
    (62, "java"),
    (63, "javascript"),
    (71, "python"),
    (73, "rust"),
];

/// Judge0's name for a cod language at `version`.
pub fn language_name(cod: &str, version: &str) -> String {
    match cod {
        "bash" => format!("Bash ({version})"),
        "c" => format!("C (GCC {version})"),
        "cpp" => format!("C++ (GCC {version})"),
        "java" => format!("Java (OpenJDK {version})"),
        "javascript" => format!("JavaScript (Node.js {version})"),
        "python" => format!("Python ({version})"),
        "rust" => format!("Rust ({version})"),
        other => format!("{other} ({version})"),
    }
}

/// The cod language of Judge0 language `id`.
pub fn cod_language(id: i64) -> Option<&'static str> {
    LANGUAGE_IDS
        .iter()
        .find(|(i, _)| i64::from(*i) == id)
        .map(|(_, l)| *l)
}

/// The current Judge0 id of cod language `name`.
pub fn judge0_id(name: &str) -> Option<u32> {
    LANGUAGE_IDS
        .iter()
        .find(|(_, l)| *l == name)
        .map(|(i, _)| *i)
}

/// Judge0's statuses.
pub const STATUSES: &[(u32, &str)] = &[
    (1, "In Queue"),
    (2, "Processing"),
    (3, "Accepted"),
    (4, "Wrong Answer"),
    (5, "Time Limit Exceeded"),
    (6, "Compilation Error"),
    (7, "Runtime Error (SIGSEGV)"),
    (8, "Runtime Error (SIGXFSZ)"),
    (9, "Runtime Error (SIGFPE)"),
    (10, "Runtime Error (SIGABRT)"),
    (11, "Runtime Error (NZEC)"),
    (12, "Runtime Error (Other)"),
    (13, "Internal Error"),
    (14, "Exec Format Error"),
];

fn status(id: u32) -> Value {
    let description = STATUSES
        .iter()
        .find(|(i, _)| *i == id)
        .map_or("Internal Error", |(_, d)| d);
    json!({"id": id, "description": description})
}

fn signal_number(name: &str) -> Option<i64> {
    Some(match name {
        "SIGHUP" => 1,
        "SIGINT" => 2,
        "SIGQUIT" => 3,
        "SIGILL" => 4,
        "SIGTRAP" => 5,
        "SIGABRT" => 6,
        "SIGBUS" => 7,
        "SIGFPE" => 8,
        "SIGKILL" => 9,
        "SIGUSR1" => 10,
        "SIGSEGV" => 11,
        "SIGUSR2" => 12,
        "SIGPIPE" => 13,
        "SIGALRM" => 14,
        "SIGTERM" => 15,
        "SIGXCPU" => 24,
        "SIGXFSZ" => 25,
        "SIGSYS" => 31,
        _ => return None,
    })
}

/// Judge0's status id for a finished run, given the expected output.
///
/// cod's `memory_limit` has no Judge0 status: it reads as 12, Runtime Error (Other), with
/// the message saying so (and `cod_status` on request); `output_limit` reads as 8, SIGXFSZ
/// (output past a size limit).
pub fn status_id(result: &RunResult, expected: Option<&str>) -> u32 {
    let r = &result.run;
    match r.status {
        Status::CompileError => 6,
        Status::TimeLimit => 5,
        Status::MemoryLimit => 12,
        Status::OutputLimit => 8,
        Status::InternalError => 13,
        Status::RuntimeError => match r.signal.as_deref() {
            Some("SIGSEGV") => 7,
            Some("SIGXFSZ") => 8,
            Some("SIGFPE") => 9,
            Some("SIGABRT") => 10,
            Some(_) => 12,
            None => 11,
        },
        Status::Ok => match compare(result, expected) {
            Some(Comparison::WrongAnswer) => 4,
            _ => 3,
        },
    }
}

/// Every field `fields=*` returns, in Judge0's order.
pub const ALL_FIELDS: &[&str] = &[
    "source_code",
    "language",
    "stdin",
    "expected_output",
    "stdout",
    "status",
    "created_at",
    "finished_at",
    "time",
    "memory",
    "stderr",
    "token",
    "number_of_runs",
    "cpu_time_limit",
    "cpu_extra_time",
    "wall_time_limit",
    "memory_limit",
    "stack_limit",
    "max_processes_and_or_threads",
    "enable_per_process_and_thread_time_limit",
    "enable_per_process_and_thread_memory_limit",
    "max_file_size",
    "compile_output",
    "exit_code",
    "exit_signal",
    "message",
    "wall_time",
    "compiler_options",
    "command_line_arguments",
    "redirect_stderr_to_stdout",
    "callback_url",
    "additional_files",
    "enable_network",
];

/// Fields answered when none are asked for.
pub const DEFAULT_FIELDS: &[&str] = &[
    "token",
    "time",
    "memory",
    "stdout",
    "stderr",
    "compile_output",
    "message",
    "status",
];

/// Fields that may be asked for by name only: ids, and cod's own verdict.
const EXTRA_FIELDS: &[&str] = &["language_id", "status_id", "cod_status"];

/// Parses `fields=`: `None` → the defaults, `*` → all; unknown names are an error listing
/// them, as Judge0 words it.
pub(crate) fn parse_fields(q: Option<&str>) -> Result<Vec<String>, String> {
    let Some(q) = q.map(str::trim).filter(|q| !q.is_empty()) else {
        return Ok(DEFAULT_FIELDS.iter().map(|f| (*f).to_owned()).collect());
    };
    if q == "*" {
        return Ok(ALL_FIELDS.iter().map(|f| (*f).to_owned()).collect());
    }
    let fields: Vec<String> = q.split(',').map(|f| f.trim().to_owned()).collect();
    let invalid: Vec<&str> = fields
        .iter()
        .map(String::as_str)
        .filter(|f| !ALL_FIELDS.contains(f) && !EXTRA_FIELDS.contains(f))
        .collect();
    if invalid.is_empty() {
        Ok(fields)
    } else {
        Err(format!("invalid fields: [{}]", invalid.join(", ")))
    }
}

/// A submission as it was asked for, echoed by `GET` (limits as resolved).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stored {
    /// The token.
    pub token: String,
    /// The language id asked for.
    pub language_id: u32,
    /// The program.
    pub source_code: String,
    /// Its input.
    pub stdin: Option<String>,
    /// The output it should print.
    pub expected_output: Option<String>,
    /// CPU limit, seconds.
    pub cpu_time_limit: f64,
    /// Accepted and echoed; cod has no grace time.
    pub cpu_extra_time: f64,
    /// Wall-clock limit, seconds.
    pub wall_time_limit: f64,
    /// Memory limit, KB.
    pub memory_limit: u64,
    /// Accepted and echoed; the stack limit is the operator's (`sandbox.stack`).
    pub stack_limit: u64,
    /// Processes and threads.
    pub max_processes_and_or_threads: u64,
    /// Accepted and echoed; cod's limits are always for the whole run.
    pub enable_per_process_and_thread_time_limit: bool,
    /// Accepted and echoed, likewise.
    pub enable_per_process_and_thread_memory_limit: bool,
    /// Size of the writable disk, KB.
    pub max_file_size: u64,
    /// Always empty: cod does not take compiler flags.
    pub compiler_options: Option<String>,
    /// The arguments, as given.
    pub command_line_arguments: Option<String>,
    /// Answer stderr after stdout in `stdout`.
    pub redirect_stderr_to_stdout: bool,
    /// Where the result is PUT.
    pub callback_url: Option<String>,
    /// Accepted and echoed; cod runs a submission once.
    pub number_of_runs: u64,
}

/// A field error, as Rails reports them: `{"field": ["message"]}`.
pub(crate) type FieldErrors = Map<String, Value>;

fn field_error(errors: &mut FieldErrors, field: &str, message: impl Into<String>) {
    let list = errors
        .entry(field.to_owned())
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(a) = list {
        a.push(Value::String(message.into()));
    }
}

/// Reads a number that may come as JSON number or numeric string (form-style clients).
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn boolean(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.as_str() {
            "true" | "1" => Some(true),
            "false" | "0" | "" => Some(false),
            _ => None,
        },
        Value::Null => Some(false),
        _ => None,
    }
}

fn text(
    body: &Map<String, Value>,
    field: &str,
    base64: bool,
    errors: &mut FieldErrors,
) -> Option<String> {
    match body.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if base64 => {
            let cleaned: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            match B64.decode(cleaned) {
                Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
                Err(_) => {
                    field_error(errors, field, "is not valid Base64 (base64_encoded=true)");
                    None
                }
            }
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            field_error(errors, field, "must be a string");
            None
        }
    }
}

/// What a checked submission becomes.
#[derive(Debug)]
pub(crate) struct Checked {
    /// cod's run request.
    pub(crate) request: cod_core::RunRequest,
    /// What `GET` echoes.
    pub(crate) stored: Stored,
}

/// Splits `command_line_arguments` as a shell would (quotes and backslashes; no
/// expansion).
pub fn split_args(s: &str) -> Result<Vec<String>, &'static str> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("has an unterminated ' quote"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err("ends with a backslash"),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("has an unterminated \" quote"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err("ends with a backslash"),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// Checks a submission's JSON body against `policy`. Errors are per field, as Judge0's.
#[allow(clippy::too_many_lines)] // one field after another, each a few lines
pub(crate) fn check(
    body: &Value,
    base64: bool,
    policy: &LimitsPolicy,
    token: String,
) -> Result<Checked, FieldErrors> {
    let mut errors = FieldErrors::new();
    let Some(body) = body.as_object() else {
        field_error(&mut errors, "submission", "must be a JSON object");
        return Err(errors);
    };
    let source = text(body, "source_code", base64, &mut errors);
    if source.as_deref().is_none_or(str::is_empty) && !errors.contains_key("source_code") {
        field_error(&mut errors, "source_code", "can't be blank");
    }
    let stdin = text(body, "stdin", base64, &mut errors);
    let expected_output = text(body, "expected_output", base64, &mut errors);
    let language_id = match body.get("language_id").and_then(number) {
        None => {
            field_error(&mut errors, "language_id", "can't be blank");
            0
        }
        #[allow(clippy::cast_possible_truncation)]
        Some(n) => match cod_language(n as i64) {
            Some(_) if n.fract() == 0.0 => u32::try_from(n as i64).unwrap_or(0),
            _ => {
                field_error(
                    &mut errors,
                    "language_id",
                    format!("language with id {n} doesn't exist"),
                );
                0
            }
        },
    };
    let (d, m) = (&policy.default, &policy.max);
    // A limit in Judge0's unit, converted to cod's, checked against cod's maximum.
    let mut limit = |field: &str, scale: f64, default: u64, max: u64, unit: &str| -> u64 {
        match body.get(field) {
            None | Some(Value::Null) => default,
            Some(v) => match number(v) {
                Some(x) if x > 0.0 => {
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    let cod = (x * scale).ceil() as u64;
                    if cod > max {
                        #[allow(clippy::cast_precision_loss)]
                        let max_there = max as f64 / scale;
                        field_error(
                            &mut errors,
                            field,
                            format!("must be less than or equal to {max_there} {unit}"),
                        );
                        default
                    } else {
                        cod.max(1)
                    }
                }
                Some(_) => {
                    field_error(&mut errors, field, "must be greater than 0");
                    default
                }
                None => {
                    field_error(&mut errors, field, "is not a number");
                    default
                }
            },
        }
    };
    let cpu_ms = limit("cpu_time_limit", 1000.0, d.cpu_ms, m.cpu_ms, "seconds");
    let wall_ms = limit("wall_time_limit", 1000.0, d.wall_ms, m.wall_ms, "seconds");
    let memory_mb = limit("memory_limit", 1.0 / 1024.0, d.memory_mb, m.memory_mb, "KB");
    let processes = limit(
        "max_processes_and_or_threads",
        1.0,
        d.processes,
        m.processes,
        "",
    );
    let disk_mb = limit("max_file_size", 1.0 / 1024.0, d.disk_mb, m.disk_mb, "KB");
    let get_f64 = |f: &str| body.get(f).and_then(number).unwrap_or(0.0);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let get_u64 =
        |f: &str, default: u64| body.get(f).and_then(number).map_or(default, |x| x as u64);
    let get_bool = |f: &str| body.get(f).and_then(boolean).unwrap_or(false);
    if get_bool("enable_network") {
        field_error(
            &mut errors,
            "enable_network",
            "enabling network is not allowed",
        );
    }
    let compiler_options = match body.get("compiler_options") {
        Some(Value::String(s)) if !s.trim().is_empty() => {
            field_error(
                &mut errors,
                "compiler_options",
                "setting compiler options is not allowed",
            );
            None
        }
        _ => None,
    };
    if matches!(body.get("additional_files"), Some(Value::String(s)) if !s.is_empty()) {
        field_error(
            &mut errors,
            "additional_files",
            "additional files are not supported",
        );
    }
    let number_of_runs = get_u64("number_of_runs", 1);
    if number_of_runs > 20 {
        field_error(
            &mut errors,
            "number_of_runs",
            "must be less than or equal to 20",
        );
    }
    let command_line_arguments = match body.get("command_line_arguments") {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let args = match command_line_arguments.as_deref().map(split_args) {
        Some(Ok(a)) => a,
        Some(Err(why)) => {
            field_error(&mut errors, "command_line_arguments", why);
            Vec::new()
        }
        None => Vec::new(),
    };
    let callback_url = match body.get("callback_url") {
        Some(Value::String(u)) if !u.is_empty() => {
            if let Err(why) = crate::callback::Callbacks::check_url(u) {
                field_error(&mut errors, "callback_url", why);
            }
            Some(u.clone())
        }
        _ => None,
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let language = cod_language(i64::from(language_id)).unwrap_or("python");
    #[allow(clippy::cast_precision_loss)]
    let stored = Stored {
        token,
        language_id,
        source_code: source.clone().unwrap_or_default(),
        stdin: stdin.clone(),
        expected_output,
        cpu_time_limit: cpu_ms as f64 / 1000.0,
        cpu_extra_time: get_f64("cpu_extra_time"),
        wall_time_limit: wall_ms as f64 / 1000.0,
        memory_limit: memory_mb * 1024,
        stack_limit: get_u64("stack_limit", 64_000),
        max_processes_and_or_threads: processes,
        enable_per_process_and_thread_time_limit: get_bool(
            "enable_per_process_and_thread_time_limit",
        ),
        enable_per_process_and_thread_memory_limit: get_bool(
            "enable_per_process_and_thread_memory_limit",
        ),
        max_file_size: disk_mb * 1024,
        compiler_options,
        command_line_arguments,
        redirect_stderr_to_stdout: get_bool("redirect_stderr_to_stdout"),
        callback_url,
        number_of_runs: number_of_runs.max(1),
    };
    let request = cod_core::RunRequest {
        language: language.to_owned(),
        source,
        stdin,
        args,
        files: Vec::new(),
        limits: Some(LimitsRequest {
            cpu_ms: Some(cpu_ms),
            wall_ms: Some(wall_ms),
            memory_mb: Some(memory_mb),
            processes: Some(processes),
            disk_mb: Some(disk_mb),
            ..LimitsRequest::default()
        }),
    };
    Ok(Checked { request, stored })
}

fn encode(s: &str, base64: bool) -> Value {
    if base64 {
        Value::String(B64.encode(s.as_bytes()))
    } else {
        Value::String(s.to_owned())
    }
}

fn opt_text(s: Option<&str>, base64: bool) -> Value {
    match s {
        Some(s) if !s.is_empty() => encode(s, base64),
        _ => Value::Null,
    }
}

/// The submission behind `record` with `fields`, text fields in Base64 when `base64`.
#[allow(clippy::too_many_lines)] // one field after another
pub(crate) fn view(
    record: &Record,
    stored: &Stored,
    fields: &[String],
    base64: bool,
    language_version: &str,
) -> Map<String, Value> {
    let result = match &record.output {
        Some(crate::jobs::JobOutput::Run(r)) => Some(&**r),
        _ => None,
    };
    let run = result.map(|r| &r.run);
    let status_id = match record.state {
        JobState::Queued => 1,
        JobState::Running => 2,
        JobState::Cancelled => 13,
        JobState::Done => result.map_or(13, |r| status_id(r, stored.expected_output.as_deref())),
    };
    let (stdout, stderr) = match run {
        Some(r) if stored.redirect_stderr_to_stdout => {
            (format!("{}{}", r.stdout, r.stderr), String::new())
        }
        Some(r) => (r.stdout.clone(), r.stderr.clone()),
        None => (String::new(), String::new()),
    };
    let compile_output = result
        .and_then(|r| r.compile.as_ref())
        .map(|c| format!("{}{}", c.stage.stdout, c.stage.stderr))
        .filter(|s| !s.is_empty());
    let message = match (record.state, run) {
        (JobState::Cancelled, _) => Some("cancelled before it finished".to_owned()),
        (_, Some(r)) if r.status == Status::RuntimeError && r.signal.is_none() => {
            r.exit_code.map(|c| format!("Exited with error status {c}"))
        }
        (_, Some(r)) if r.status == Status::CompileError => None,
        (_, Some(r)) => r.message.clone(),
        _ => None,
    };
    let exit_signal = run.and_then(|r| match r.signal.as_deref() {
        Some(s) => signal_number(s),
        None if matches!(
            r.status,
            Status::TimeLimit | Status::MemoryLimit | Status::OutputLimit
        ) =>
        {
            Some(9)
        }
        None => None,
    });
    let seconds = |ms: u64| {
        #[allow(clippy::cast_precision_loss)]
        let s = ms as f64 / 1000.0;
        Value::String(format!("{s:.3}"))
    };
    let done = record.state == JobState::Done;
    let mut out = Map::new();
    for f in fields {
        let v = match f.as_str() {
            "token" => Value::String(stored.token.clone()),
            "source_code" => encode(&stored.source_code, base64),
            "language_id" => json!(stored.language_id),
            "language" => {
                let cod = cod_language(i64::from(stored.language_id)).unwrap_or("");
                json!({"id": stored.language_id, "name": language_name(cod, language_version)})
            }
            "stdin" => opt_text(stored.stdin.as_deref(), base64),
            "expected_output" => opt_text(stored.expected_output.as_deref(), base64),
            "stdout" => opt_text(done.then_some(stdout.as_str()), base64),
            "stderr" => opt_text(done.then_some(stderr.as_str()), base64),
            "compile_output" => opt_text(compile_output.as_deref(), base64),
            "message" => opt_text(message.as_deref(), base64),
            "status" => status(status_id),
            "status_id" => json!(status_id),
            "created_at" => Value::String(rfc3339(record.created)),
            "finished_at" => record
                .finished
                .map_or(Value::Null, |t| Value::String(rfc3339(t))),
            "time" => run
                .filter(|_| done)
                .map_or(Value::Null, |r| seconds(r.cpu_ms)),
            "wall_time" => run
                .filter(|_| done)
                .map_or(Value::Null, |r| seconds(r.wall_ms)),
            "memory" => run
                .filter(|_| done)
                .map_or(Value::Null, |r| json!(r.memory_kb)),
            "exit_code" => run
                .filter(|r| done && r.status != Status::CompileError)
                .and_then(|r| r.exit_code)
                .map_or(Value::Null, |c| json!(c)),
            "exit_signal" => exit_signal.map_or(Value::Null, |s| json!(s)),
            "number_of_runs" => json!(stored.number_of_runs),
            "cpu_time_limit" => json!(stored.cpu_time_limit),
            "cpu_extra_time" => json!(stored.cpu_extra_time),
            "wall_time_limit" => json!(stored.wall_time_limit),
            "memory_limit" => json!(stored.memory_limit),
            "stack_limit" => json!(stored.stack_limit),
            "max_processes_and_or_threads" => json!(stored.max_processes_and_or_threads),
            "enable_per_process_and_thread_time_limit" => {
                json!(stored.enable_per_process_and_thread_time_limit)
            }
            "enable_per_process_and_thread_memory_limit" => {
                json!(stored.enable_per_process_and_thread_memory_limit)
            }
            "max_file_size" => json!(stored.max_file_size),
            "compiler_options" => json!(stored.compiler_options),
            "command_line_arguments" => json!(stored.command_line_arguments),
            "redirect_stderr_to_stdout" => json!(stored.redirect_stderr_to_stdout),
            "callback_url" => json!(stored.callback_url),
            "additional_files" => Value::Null,
            "enable_network" => json!(false),
            "cod_status" => match (record.state, run) {
                (JobState::Done, Some(r)) => json!(r.status.as_str()),
                (s, _) => json!(s.as_str()),
            },
            _ => continue,
        };
        out.insert(f.clone(), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(status: Status, signal: Option<&str>, exit: Option<i32>, stdout: &str) -> RunResult {
        RunResult {
            run: cod_core::StageReport {
                status,
                signal: signal.map(str::to_owned),
                exit_code: exit,
                stdout: stdout.into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn statuses_follow_judge0() {
        assert_eq!(
            status_id(&result(Status::Ok, None, Some(0), "1\n"), None),
            3
        );
        assert_eq!(
            status_id(&result(Status::Ok, None, Some(0), "1\n"), Some("1")),
            3
        );
        assert_eq!(
            status_id(&result(Status::Ok, None, Some(0), "1\n"), Some("2")),
            4
        );
        assert_eq!(
            status_id(&result(Status::TimeLimit, None, None, ""), None),
            5
        );
        assert_eq!(
            status_id(&result(Status::CompileError, None, None, ""), None),
            6
        );
        for (sig, id) in [
            ("SIGSEGV", 7),
            ("SIGXFSZ", 8),
            ("SIGFPE", 9),
            ("SIGABRT", 10),
            ("SIGILL", 12),
        ] {
            assert_eq!(
                status_id(&result(Status::RuntimeError, Some(sig), None, ""), None),
                id
            );
        }
        assert_eq!(
            status_id(&result(Status::RuntimeError, None, Some(3), ""), None),
            11
        );
        assert_eq!(
            status_id(&result(Status::MemoryLimit, None, None, ""), None),
            12
        );
        assert_eq!(
            status_id(&result(Status::InternalError, None, None, ""), None),
            13
        );
    }

    #[test]
    fn language_ids_are_judge0_ce_ones() {
        assert_eq!(judge0_id("python"), Some(71));
        assert_eq!(judge0_id("c"), Some(50));
        assert_eq!(judge0_id("cpp"), Some(54));
        assert_eq!(judge0_id("java"), Some(62));
        assert_eq!(judge0_id("javascript"), Some(63));
        assert_eq!(judge0_id("rust"), Some(73));
        assert_eq!(judge0_id("bash"), Some(46));
        assert_eq!(cod_language(52), Some("cpp"));
        assert_eq!(cod_language(70), None);
    }

    #[test]
    fn fields_are_checked_by_name() {
        assert_eq!(parse_fields(None).unwrap().len(), DEFAULT_FIELDS.len());
        assert_eq!(parse_fields(Some("*")).unwrap().len(), ALL_FIELDS.len());
        assert_eq!(
            parse_fields(Some("stdout,cod_status")).unwrap(),
            ["stdout", "cod_status"]
        );
        assert_eq!(
            parse_fields(Some("stdout,nope,zip")).unwrap_err(),
            "invalid fields: [nope, zip]"
        );
    }

    #[test]
    fn arguments_split_like_a_shell() {
        assert_eq!(
            split_args(r#"a "b c" 'd e' f\ g"#).unwrap(),
            ["a", "b c", "d e", "f g"]
        );
        assert_eq!(split_args("  ").unwrap(), Vec::<String>::new());
        assert!(split_args("'open").is_err());
    }

    #[test]
    fn submissions_are_checked_field_by_field() {
        let policy = LimitsPolicy::default();
        let body = json!({"source_code": "cHJpbnQoMSk=", "language_id": 71,
                          "cpu_time_limit": 1.5, "memory_limit": 65536, "stdin": "eA=="});
        let c = check(&body, true, &policy, "t".into()).unwrap();
        assert_eq!(c.request.source.as_deref(), Some("print(1)"));
        assert_eq!(c.request.stdin.as_deref(), Some("x"));
        assert_eq!(c.request.language, "python");
        let l = c.request.limits.unwrap();
        assert_eq!((l.cpu_ms, l.memory_mb), (Some(1500), Some(64)));
        assert_eq!(c.stored.memory_limit, 65536);
        let bad = json!({"language_id": 999, "cpu_time_limit": 1e9, "enable_network": true,
                         "compiler_options": "-O3"});
        let e = check(&bad, false, &policy, "t".into()).unwrap_err();
        for f in [
            "source_code",
            "language_id",
            "cpu_time_limit",
            "enable_network",
            "compiler_options",
        ] {
            assert!(e.contains_key(f), "{f} missing from {e:?}");
        }
        let e = check(
            &json!({"source_code": "%%%", "language_id": 71}),
            true,
            &policy,
            "t".into(),
        )
        .unwrap_err();
        assert!(e["source_code"][0].as_str().unwrap().contains("Base64"));
    }
}
