//! Logging: the only place a tracing subscriber is installed.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the subscriber. The filter comes from `COD_LOG`, then `RUST_LOG`, then `default`;
/// an invalid filter is an error rather than a silent default.
pub(crate) fn init(format: LogFormat, default: &str) -> anyhow::Result<()> {
    let text = std::env::var("COD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.to_owned());
    let filter = EnvFilter::try_new(&text)
        .map_err(|e| anyhow::anyhow!("invalid log filter {text:?} in COD_LOG/RUST_LOG: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}
