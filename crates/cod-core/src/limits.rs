//! Per-run limits: what a request may ask for, the operator's defaults and maxima, and the
//! resolved values a sandbox enforces.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Bytes;

/// Limits a request asks for, in the units of the API. Absent fields take the default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    /// CPU time of all processes together, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    /// Wall-clock time, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_ms: Option<u64>,
    /// Memory including swap and the run's files in `/tmp` and the work dir, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Processes and threads alive at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    /// Bytes kept (and allowed) on stdout and on stderr, each, KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_kb: Option<u64>,
    /// Size of the writable work dir and `/tmp` together, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
}

/// A complete set of limits in API units, as written in `cod.toml`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// CPU time, milliseconds.
    pub cpu_ms: u64,
    /// Wall-clock time, milliseconds.
    pub wall_ms: u64,
    /// Memory (swap included), MiB.
    pub memory_mb: u64,
    /// Processes and threads.
    pub processes: u64,
    /// Output per stream, KiB.
    pub output_kb: u64,
    /// Writable disk (tmpfs), MiB.
    pub disk_mb: u64,
}

impl LimitsSpec {
    /// The defaults of DESIGN.md: CPU 5 s, wall 10 s, memory 256 MiB, 64 processes,
    /// output 1 MiB, disk 64 MiB.
    pub const DEFAULT: LimitsSpec = LimitsSpec {
        cpu_ms: 5_000,
        wall_ms: 10_000,
        memory_mb: 256,
        processes: 64,
        output_kb: 1024,
        disk_mb: 64,
    };

    /// The default operator maxima.
    pub const MAX: LimitsSpec = LimitsSpec {
        cpu_ms: 30_000,
        wall_ms: 60_000,
        memory_mb: 2048,
        processes: 256,
        output_kb: 16 * 1024,
        disk_mb: 512,
    };

    /// The default limits of a compile stage.
    pub const COMPILE: LimitsSpec = LimitsSpec {
        cpu_ms: 20_000,
        wall_ms: 30_000,
        memory_mb: 1024,
        processes: 64,
        output_kb: 64,
        disk_mb: 256,
    };

    /// Converts to enforceable limits.
    pub fn to_limits(self) -> Limits {
        Limits {
            cpu: Duration::from_millis(self.cpu_ms),
            wall: Duration::from_millis(self.wall_ms),
            memory: Bytes(self.memory_mb.saturating_mul(Bytes::MIB)),
            processes: self.processes,
            output: Bytes(self.output_kb.saturating_mul(Bytes::KIB)),
            disk: Bytes(self.disk_mb.saturating_mul(Bytes::MIB)),
        }
    }

    fn fields(&self) -> [(&'static str, u64); 6] {
        [
            ("cpu_ms", self.cpu_ms),
            ("wall_ms", self.wall_ms),
            ("memory_mb", self.memory_mb),
            ("processes", self.processes),
            ("output_kb", self.output_kb),
            ("disk_mb", self.disk_mb),
        ]
    }
}

/// Limits a sandbox enforces on one stage of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// CPU time of every process of the stage together.
    pub cpu: Duration,
    /// Wall-clock time.
    pub wall: Duration,
    /// Memory, swap included.
    pub memory: Bytes,
    /// Processes and threads alive at once.
    pub processes: u64,
    /// Bytes kept of stdout and of stderr, each; writing more ends the run.
    pub output: Bytes,
    /// Size of the writable tmpfs (work dir and `/tmp`).
    pub disk: Bytes,
}

/// A limit a request asked for that the operator does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// the value is above the operator's maximum
    #[error("limits.{field} = {value} is above the maximum of {max}")]
    AboveMax {
        /// API name of the field.
        field: &'static str,
        /// What was asked for.
        value: u64,
        /// The operator's maximum.
        max: u64,
    },
    /// the value is zero
    #[error("limits.{field} must be at least 1")]
    Zero {
        /// API name of the field.
        field: &'static str,
    },
}

/// The operator's policy: defaults for requests that say nothing, maxima nobody may exceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsPolicy {
    /// Limits of a request that does not ask for any.
    #[serde(default = "default_limits")]
    pub default: LimitsSpec,
    /// The most a request may ask for.
    #[serde(default = "max_limits")]
    pub max: LimitsSpec,
    /// Limits of compile stages (not settable by requests).
    #[serde(default = "compile_limits")]
    pub compile: LimitsSpec,
}

fn default_limits() -> LimitsSpec {
    LimitsSpec::DEFAULT
}
fn max_limits() -> LimitsSpec {
    LimitsSpec::MAX
}
fn compile_limits() -> LimitsSpec {
    LimitsSpec::COMPILE
}

impl Default for LimitsPolicy {
    fn default() -> Self {
        LimitsPolicy {
            default: LimitsSpec::DEFAULT,
            max: LimitsSpec::MAX,
            compile: LimitsSpec::COMPILE,
        }
    }
}

impl LimitsPolicy {
    /// Checks that defaults are within the maxima and nothing is zero.
    pub fn validate(&self) -> Result<(), String> {
        for ((name, d), (_, m)) in self.default.fields().into_iter().zip(self.max.fields()) {
            if d == 0 || m == 0 {
                return Err(format!("limits: {name} must be at least 1"));
            }
            if d > m {
                return Err(format!(
                    "limits.default.{name} = {d} is above limits.max.{name} = {m}"
                ));
            }
        }
        for (name, c) in self.compile.fields() {
            if c == 0 {
                return Err(format!("limits.compile.{name} must be at least 1"));
            }
        }
        Ok(())
    }

    /// Resolves a request's limits against the defaults and maxima.
    pub fn resolve(&self, req: Option<&LimitsRequest>) -> Result<LimitsSpec, LimitsError> {
        let empty = LimitsRequest::default();
        let req = req.unwrap_or(&empty);
        let pick = |field: &'static str, asked: Option<u64>, default: u64, max: u64| match asked {
            None => Ok(default),
            Some(0) => Err(LimitsError::Zero { field }),
            Some(v) if v > max => Err(LimitsError::AboveMax {
                field,
                value: v,
                max,
            }),
            Some(v) => Ok(v),
        };
        let (d, m) = (&self.default, &self.max);
        Ok(LimitsSpec {
            cpu_ms: pick("cpu_ms", req.cpu_ms, d.cpu_ms, m.cpu_ms)?,
            wall_ms: pick("wall_ms", req.wall_ms, d.wall_ms, m.wall_ms)?,
            memory_mb: pick("memory_mb", req.memory_mb, d.memory_mb, m.memory_mb)?,
            processes: pick("processes", req.processes, d.processes, m.processes)?,
            output_kb: pick("output_kb", req.output_kb, d.output_kb, m.output_kb)?,
            disk_mb: pick("disk_mb", req.disk_mb, d.disk_mb, m.disk_mb)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_limits_take_defaults() {
        let p = LimitsPolicy::default();
        assert_eq!(p.resolve(None), Ok(LimitsSpec::DEFAULT));
        let l = LimitsSpec::DEFAULT.to_limits();
        assert_eq!(l.cpu, Duration::from_secs(5));
        assert_eq!(l.wall, Duration::from_secs(10));
        assert_eq!(l.memory, Bytes::mib(256));
        assert_eq!(l.output, Bytes::mib(1));
        assert_eq!(l.disk, Bytes::mib(64));
        assert_eq!(l.processes, 64);
    }

    #[test]
    fn request_may_lower_and_raise_up_to_max() {
        let p = LimitsPolicy::default();
        let r = LimitsRequest {
            cpu_ms: Some(100),
            memory_mb: Some(p.max.memory_mb),
            ..Default::default()
        };
        let got = p.resolve(Some(&r)).unwrap();
        assert_eq!(got.cpu_ms, 100);
        assert_eq!(got.memory_mb, p.max.memory_mb);
        assert_eq!(got.wall_ms, LimitsSpec::DEFAULT.wall_ms);
    }

    #[test]
    fn above_max_names_the_field() {
        let p = LimitsPolicy::default();
        let r = LimitsRequest {
            wall_ms: Some(p.max.wall_ms + 1),
            ..Default::default()
        };
        let err = p.resolve(Some(&r)).unwrap_err();
        assert!(matches!(
            err,
            LimitsError::AboveMax {
                field: "wall_ms",
                ..
            }
        ));
        assert!(err.to_string().contains("limits.wall_ms"));
        let zero = LimitsRequest {
            processes: Some(0),
            ..Default::default()
        };
        assert_eq!(
            p.resolve(Some(&zero)),
            Err(LimitsError::Zero { field: "processes" })
        );
    }

    #[test]
    fn policy_rejects_default_above_max() {
        let mut p = LimitsPolicy::default();
        p.default.memory_mb = p.max.memory_mb + 1;
        assert!(p.validate().unwrap_err().contains("memory_mb"));
        assert!(LimitsPolicy::default().validate().is_ok());
    }
}
