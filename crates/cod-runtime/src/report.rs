//! Turning what the sandbox measured into the run result users read.

use cod_core::limits::LimitsSpec;
use cod_core::verdict::signal_name;
use cod_core::{CompileReport, LimitReason, RunResult, StageReport, Status};
use cod_sandbox::{Exit, Failure, SandboxOutcome, StageOutcome};

use crate::job::Job;

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn describe_signal(sig: i32) -> &'static str {
    match sig {
        libc_sig::SIGSEGV => "segmentation fault",
        libc_sig::SIGABRT => "aborted",
        libc_sig::SIGFPE => "arithmetic error",
        libc_sig::SIGBUS => "bus error",
        libc_sig::SIGILL => "illegal instruction",
        libc_sig::SIGKILL => "killed",
        libc_sig::SIGSYS => "bad system call",
        libc_sig::SIGPIPE => "broken pipe",
        libc_sig::SIGXFSZ => "file size limit exceeded",
        _ => "signal",
    }
}

/// Signal numbers on Linux (this crate does not link libc).
mod libc_sig {
    pub(super) const SIGILL: i32 = 4;
    pub(super) const SIGABRT: i32 = 6;
    pub(super) const SIGBUS: i32 = 7;
    pub(super) const SIGFPE: i32 = 8;
    pub(super) const SIGKILL: i32 = 9;
    pub(super) const SIGSEGV: i32 = 11;
    pub(super) const SIGPIPE: i32 = 13;
    pub(super) const SIGXFSZ: i32 = 25;
    pub(super) const SIGSYS: i32 = 31;
}

/// The report of one stage, with a message that says what happened in words.
pub fn stage_report(o: &StageOutcome, limits: &LimitsSpec, what: &str) -> StageReport {
    let status = o.status();
    let (exit_code, signal) = match o.exit {
        Exit::Code(c) => (Some(c), None),
        Exit::Signal(s) => (None, Some(signal_name(s))),
        Exit::Unknown => (None, None),
    };
    let message = match (status, o.limit) {
        (Status::TimeLimit, Some(LimitReason::Cpu)) => Some(format!(
            "{what} used more than its CPU time limit of {} ms",
            limits.cpu_ms
        )),
        (Status::TimeLimit, _) => Some(format!(
            "{what} ran longer than its wall-clock limit of {} ms",
            limits.wall_ms
        )),
        (Status::MemoryLimit, _) => Some(format!(
            "{what} needed more than its memory limit of {} MiB",
            limits.memory_mb
        )),
        (Status::OutputLimit, _) => Some(format!(
            "{what} wrote more than {} KiB to {}",
            limits.output_kb,
            if o.stdout_truncated {
                "stdout"
            } else {
                "stderr"
            }
        )),
        (Status::InternalError, _) => Some(match o.exec_errno {
            Some(e) => format!(
                "cod could not start {what}: {}",
                std::io::Error::from_raw_os_error(e)
            ),
            None => format!("{what} ended without reporting how"),
        }),
        (_, _) if o.cancelled => Some(format!("{what} was cancelled")),
        (Status::RuntimeError, _) => Some(match o.exit {
            Exit::Code(c) => format!("{what} exited with code {c}"),
            Exit::Signal(s) => format!(
                "{what} was killed by {} ({})",
                signal_name(s),
                describe_signal(s)
            ),
            Exit::Unknown => format!("{what} failed"),
        }),
        _ => None,
    };
    StageReport {
        status,
        reason: o.limit,
        message,
        exit_code,
        signal,
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        stdout_truncated: o.stdout_truncated,
        stderr_truncated: o.stderr_truncated,
        cpu_ms: ms(o.cpu),
        wall_ms: ms(o.wall),
        memory_kb: o.memory_peak / 1024,
    }
}

fn internal(message: String) -> StageReport {
    StageReport {
        status: Status::InternalError,
        message: Some(message),
        ..Default::default()
    }
}

/// The run result of `job` from the sandbox's outcome (or its failure). With
/// `cached_compile`, the compile came from the cache: the outcome holds only the run stage
/// (none after a cached compile error).
pub fn run_result(
    job: &Job,
    outcome: Result<SandboxOutcome, Failure>,
    cached_compile: Option<&StageReport>,
) -> RunResult {
    let mut result = RunResult {
        id: job.id.clone(),
        language: job.language.name.clone(),
        version: job.language.version.clone(),
        ..Default::default()
    };
    let outcome = match outcome {
        Ok(o) => o,
        Err(f) => {
            result.run = internal(format!("the sandbox failed: {f}"));
            return result;
        }
    };
    let mut stages = outcome.stages.iter();
    if job.language.compiled() {
        let compile = match cached_compile {
            // This run spent nothing on it: the times are zero, the compiler's output kept.
            Some(c) => CompileReport {
                stage: StageReport {
                    cpu_ms: 0,
                    wall_ms: 0,
                    memory_kb: 0,
                    message: Some("compiled earlier: taken from the compile cache".into()),
                    ..c.clone()
                },
                cached: true,
            },
            None => {
                let Some(c) = stages.next() else {
                    result.run = internal("the sandbox ended before compiling".into());
                    return result;
                };
                CompileReport {
                    stage: stage_report(c, &job.compile_limits, "the compiler"),
                    cached: false,
                }
            }
        };
        let compile_status = compile.stage.status;
        result.compile = Some(compile);
        match compile_status {
            Status::Ok => {}
            Status::InternalError => {
                result.run = internal("the compiler could not be started".into());
                return result;
            }
            _ => {
                result.run = StageReport {
                    status: Status::CompileError,
                    message: Some("compilation failed; see compile.stderr".into()),
                    ..Default::default()
                };
                return result;
            }
        }
    }
    result.run = match stages.next() {
        Some(r) => stage_report(r, &job.limits, "the program"),
        None => internal("the sandbox ended before running the program".into()),
    };
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn outcome(exit: Exit, limit: Option<LimitReason>) -> StageOutcome {
        StageOutcome {
            exit,
            limit,
            stdout: b"hi\xff".to_vec(),
            cpu: Duration::from_millis(12),
            wall: Duration::from_millis(20),
            memory_peak: 2048 * 1024,
            ..Default::default()
        }
    }

    #[test]
    fn reports_signals_by_name_and_lossy_output() {
        let r = stage_report(
            &outcome(Exit::Signal(11), None),
            &LimitsSpec::DEFAULT,
            "the program",
        );
        assert_eq!(r.status, Status::RuntimeError);
        assert_eq!(r.signal.as_deref(), Some("SIGSEGV"));
        assert_eq!(r.exit_code, None);
        assert_eq!(r.stdout, "hi\u{fffd}");
        assert_eq!((r.cpu_ms, r.wall_ms, r.memory_kb), (12, 20, 2048));
        assert!(r.message.unwrap().contains("segmentation fault"));
    }

    #[test]
    fn a_cancelled_run_says_so_in_words() {
        let mut o = outcome(Exit::Signal(9), None);
        o.cancelled = true;
        let r = stage_report(&o, &LimitsSpec::DEFAULT, "the program");
        assert_eq!(r.message.as_deref(), Some("the program was cancelled"));
    }

    #[test]
    fn reports_limits_with_the_limit_in_words() {
        let r = stage_report(
            &outcome(Exit::Signal(9), Some(LimitReason::Cpu)),
            &LimitsSpec::DEFAULT,
            "the program",
        );
        assert_eq!(r.status, Status::TimeLimit);
        assert_eq!(r.reason, Some(LimitReason::Cpu));
        assert!(r.message.unwrap().contains("5000 ms"));
        let r = stage_report(
            &outcome(Exit::Signal(9), Some(LimitReason::Memory)),
            &LimitsSpec::DEFAULT,
            "the program",
        );
        assert_eq!(r.status, Status::MemoryLimit);
        let r = stage_report(
            &outcome(Exit::Code(0), None),
            &LimitsSpec::DEFAULT,
            "the program",
        );
        assert_eq!(r.status, Status::Ok);
        assert_eq!(r.exit_code, Some(0));
        assert_eq!(r.message, None);
    }
}
