//! Log output: standard error by default, or a file from `[daemon] log_file`.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::sync::Mutex;

use anyhow::Context;
use reaper_core::config::DaemonConfig;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `[daemon] log_level`.
pub fn init(daemon: &DaemonConfig) -> anyhow::Result<()> {
    let default = format!(
        "{level},quinn_proto=warn,rustls=warn",
        level = daemon.log_level.as_str()
    );
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match &daemon.log_file {
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open log file {path} ([daemon] log_file)"))?;
            builder
                .with_ansi(false)
                .with_writer(Mutex::new(file))
                .init();
        }
        // Colours only on a terminal: redirected to a file or a journal, escape codes are noise.
        None => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init(),
    }
    Ok(())
}
