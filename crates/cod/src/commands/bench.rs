//! `cod bench`: placeholder replaced below.

use std::process::ExitCode;

use cod_core::Config;

use crate::cli::BenchArgs;

pub(crate) fn bench(_config: &Config, _args: BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
