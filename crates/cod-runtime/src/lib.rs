//! Languages and runs: the registry of `languages/*.toml`, checking requests into jobs,
//! turning jobs into sandbox specs, running them from async code and reporting the results.
//!
//! This crate knows nothing of HTTP; the server and the CLI both use it.
#![forbid(unsafe_code)]

pub mod cache;
pub mod executor;
pub mod job;
pub mod language;
pub mod pool;
pub mod report;
mod template;

pub use cache::{Artifact, ArtifactKey, CompileCache, SharedArtifacts};
pub use executor::{
    Executor, OutStream, RunEvent, RunInput, RunIo, StageKind, run_in_jail, run_in_jail_io,
    run_in_jail_with,
};
pub use job::{HostLayout, Job, JobFile, find_language, new_run_id};
pub use language::{Language, Registry, RegistryError};
pub use pool::{Pool, PoolStats, RuntimeStats, warm_runtimes, warm_runtimes_with};
