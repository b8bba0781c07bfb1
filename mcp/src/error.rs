//! What can go wrong talking to an MCP server, in words that say what to do.

use std::time::Duration;

/// An MCP server's failure, for one request or for the whole session.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum McpError {
    /// The program could not be started.
    #[error("cannot start MCP server {server} ({command}): {reason} (check `command` in [mcp.servers.{server}], and that it is on reaperd's PATH)")]
    Spawn {
        /// The server's name.
        server: String,
        /// The command run.
        command: String,
        /// Why.
        reason: String,
    },
    /// The server speaks a protocol version this client does not.
    #[error("MCP server {server} speaks protocol version {theirs}; reaper speaks {ours}: update one of them")]
    Version {
        /// The server's name.
        server: String,
        /// What it answered.
        theirs: String,
        /// What reaper speaks, newest first.
        ours: String,
    },
    /// The server wrote something that is not the protocol.
    #[error("MCP server {server} broke the protocol: {detail}")]
    Protocol {
        /// The server's name.
        server: String,
        /// What it wrote or did, quoted short.
        detail: String,
    },
    /// The server answered the request with an error.
    #[error("MCP server {server} answered {method} with error {code}: {message}")]
    Rpc {
        /// The server's name.
        server: String,
        /// The method asked.
        method: String,
        /// JSON-RPC error code.
        code: i64,
        /// Its message.
        message: String,
    },
    /// The server did not answer in time; the request was cancelled.
    #[error("MCP server {server} did not answer {method} within {} ms (timeout_ms of [mcp.servers.{server}]); the request was cancelled", .after.as_millis())]
    TimedOut {
        /// The server's name.
        server: String,
        /// The method asked.
        method: String,
        /// How long it was given.
        after: Duration,
    },
    /// The server's process ended.
    #[error("MCP server {server} exited{}{}", .status.as_ref().map_or(String::new(), |s| format!(" ({s})")), stderr_suffix(.stderr))]
    Exited {
        /// The server's name.
        server: String,
        /// How it ended, if known.
        status: Option<String>,
        /// The last of what it wrote on its standard error.
        stderr: String,
    },
    /// The server is waiting out a back-off after failing; asked again later.
    #[error("MCP server {server} is not running ({reason}); it is started again in {} s", .retry_in.as_secs().max(1))]
    Resting {
        /// The server's name.
        server: String,
        /// Why it stopped.
        reason: String,
        /// When it is tried again.
        retry_in: Duration,
    },
    /// No such server (or it is disabled).
    #[error("no MCP server is named {server:?}{}", known_suffix(.known))]
    Unknown {
        /// The name asked for.
        server: String,
        /// The enabled servers.
        known: Vec<String>,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!("; it said: {}", stderr.trim())
    }
}

fn known_suffix(known: &[String]) -> String {
    if known.is_empty() {
        ": none is configured ([mcp.servers.NAME] in reaper.toml)".to_owned()
    } else {
        format!(": the servers are {}", known.join(", "))
    }
}
