//! `reaper lsp`: a language server that gives any LSP editor reaper's completions as
//! `textDocument/inlineCompletion` (LSP 3.18), through the one reaperd every editor shares.
//!
//! - [`rpc`]: the base protocol (Content-Length framing, JSON-RPC messages and errors);
//! - [`text`]: open documents, incremental edits, UTF-16/UTF-8 positions;
//! - [`uri`]: `file:` URIs to paths;
//! - [`daemon`]: finding, starting (exactly one) and reconnecting to reaperd;
//! - [`bridge`]: the server loop and the completion tasks.
//!
//! Standard output is the protocol: logs go to a file ([`log_to`]), never to stdout.

pub mod bridge;
pub mod daemon;
pub mod rpc;
pub mod text;
pub mod uri;

pub use bridge::{serve, BridgeOptions, Ending};
pub use daemon::{resolve_state_dir, DaemonOptions};

use std::path::Path;

/// Sends this process's logs to `path` (appended; the directory is created 0700, as reaperd
/// wants its state directory, where the log goes by default), at `level` unless `RUST_LOG`
/// says otherwise.
pub fn log_to(path: &Path, level: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    Ok(())
}
