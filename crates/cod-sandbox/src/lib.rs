//! The sandbox of cod: runs untrusted programs in fresh namespaces, a private read-only root,
//! a slot's cgroup, a seccomp deny-list and rlimits, and measures what they do.
//!
//! This crate is synchronous and Linux-only, and it is the only crate of cod that contains
//! `unsafe` code; each block carries a `// SAFETY:` comment. It knows nothing of languages or
//! HTTP: callers describe a run as a [`SandboxSpec`] (binds, files, stages with argv, env,
//! limits and stdin) and get a [`SandboxOutcome`] back.
//!
//! Process structure (see `docs/sandbox.md`):
//!
//! ```text
//! caller (e.g. the tokio server) ──socketpair per run──▶ supervisor ──clone(NEW*)──▶ init (pid 1)
//!        │ control socket (SCM_RIGHTS)                        ▲                        └─fork─▶ program
//!        └────────────────────────────────▶ helper ──fork─────┘
//! ```
//!
//! The helper is single-threaded so that forking is safe; code between `clone`/`fork` and
//! `execve` (in `init.rs`) is async-signal-safe only.
#![allow(unsafe_code)]

pub mod artifacts;
pub mod cgroup;
pub mod client;
pub mod helper;
mod init;
mod keeper;
pub mod mounts;
pub mod protocol;
mod python;
mod sandbox;
pub mod seccomp;
pub mod spec;
mod supervisor;
mod sys;
mod watch;
mod zygote;

pub use client::{Jail, JailConfig, JailError};
pub use helper::helper_main;
pub use protocol::{Event, Failure, Request};
pub use spec::{
    Bind, Exit, FileEntry, Layout, SANDBOX_ID, SandboxOutcome, SandboxSpec, SharedFile,
    StageOutcome, StageSpec, Symlink, WORK_DIR, WarmKind, WarmRuntime, WarmUse,
};
