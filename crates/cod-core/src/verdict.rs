//! Verdicts: the one-word answer to "what happened to my program".

use serde::{Deserialize, Serialize};

/// The verdict of a run or of one of its stages. The default, `internal_error`, is what a
/// result says until something better is known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Exited with code 0 within every limit.
    Ok,
    /// Exited with a non-zero code or was killed by a signal it caused.
    RuntimeError,
    /// Used more CPU time or wall time than allowed (`reason` says which).
    TimeLimit,
    /// Needed more memory than allowed and was killed by the memory cgroup.
    MemoryLimit,
    /// Wrote more than the output cap to stdout or stderr.
    OutputLimit,
    /// The compile stage did not produce a program.
    CompileError,
    /// cod itself failed; the program is not to blame.
    #[default]
    InternalError,
}

impl Status {
    /// The wire name (`"time_limit"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::RuntimeError => "runtime_error",
            Status::TimeLimit => "time_limit",
            Status::MemoryLimit => "memory_limit",
            Status::OutputLimit => "output_limit",
            Status::CompileError => "compile_error",
            Status::InternalError => "internal_error",
        }
    }
}

/// Which limit ended a run that was stopped by cod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitReason {
    /// CPU time (all processes of the run together).
    Cpu,
    /// Wall-clock time.
    Wall,
    /// Memory, swap included.
    Memory,
    /// Bytes written to stdout or stderr.
    Output,
}

/// Name of a signal as users know it (`SIGSEGV`), or `SIG<n>` for unnamed ones.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        16 => "SIGSTKFLT",
        17 => "SIGCHLD",
        18 => "SIGCONT",
        19 => "SIGSTOP",
        20 => "SIGTSTP",
        21 => "SIGTTIN",
        22 => "SIGTTOU",
        23 => "SIGURG",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        26 => "SIGVTALRM",
        27 => "SIGPROF",
        28 => "SIGWINCH",
        29 => "SIGIO",
        30 => "SIGPWR",
        31 => "SIGSYS",
        _ => return format!("SIG{sig}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_serde() {
        for s in [
            Status::Ok,
            Status::RuntimeError,
            Status::TimeLimit,
            Status::MemoryLimit,
            Status::OutputLimit,
            Status::CompileError,
            Status::InternalError,
        ] {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(11), "SIGSEGV");
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(40), "SIG40");
    }
}
