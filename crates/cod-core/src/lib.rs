//! Shared vocabulary of cod: what a run request is, what limits and verdicts mean, what a
//! run result reports, and the configuration tree.
//!
//! This crate performs no I/O: it parses and validates values handed to it, nothing more.
//! Every other crate depends on it; it depends on none of them.
#![forbid(unsafe_code)]

pub mod bytes;
pub mod config;
pub mod limits;
pub mod run;
pub mod verdict;

pub use bytes::Bytes;
pub use config::Config;
pub use limits::{Limits, LimitsError, LimitsPolicy, LimitsRequest};
pub use run::{CompileReport, RequestError, RunRequest, RunResult, SourceFile, StageReport};
pub use verdict::{LimitReason, Status};
