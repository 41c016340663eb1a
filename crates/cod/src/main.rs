//! `cod`: the whole product in one binary.
//!
//! How to run:
//!
//! ```text
//! cargo run --release -- serve            # API + web page on 127.0.0.1:2000
//! cargo run --release -- run hello.c      # compile and run a file in the sandbox
//! cargo run --release -- bench            # latency against no sandbox and bubblewrap
//! ```
//!
//! cod must run as root (or with CAP_SYS_ADMIN and cgroup access): its sandbox creates
//! namespaces, mounts and cgroups for every run.
#![forbid(unsafe_code)]

mod cli;
mod commands;
mod observability;

use std::process::ExitCode;

use clap::Parser;

/// The hidden first argument that turns this binary into the sandbox helper.
pub(crate) const JAIL_ARG: &str = "__jail";

fn main() -> ExitCode {
    // The sandbox helper must start before anything else (no threads, no runtime): it forks.
    if std::env::args_os().nth(1).is_some_and(|a| a == JAIL_ARG) {
        cod_sandbox::helper_main();
    }
    let cli = cli::Cli::parse();
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cod: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
