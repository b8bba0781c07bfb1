//! reaper's MCP client: the MCP servers an agent task may use, over their standard input and
//! output.
//!
//! Each `[mcp.servers.NAME]` of `reaper.toml` is a program [`McpServers`] starts on first use
//! and speaks the Model Context Protocol with ([`Session`]): `initialize` with the newest
//! protocol version reaper speaks (a server answering another it speaks is taken; one it does
//! not is a clear error), `notifications/initialized`, then `tools/list` (every page),
//! `tools/call` (with progress notifications passed on), `resources/list`, `resources/read`
//! and `prompts/list`. The server's own requests are answered: `roots/list` with the task's
//! working directory, `ping`. A tool list the server says changed is listed again. A request
//! that times out, or whose caller gives up, is cancelled with `notifications/cancelled`.
//! A server that writes garbage, hangs or exits mid-call costs that call a clear error
//! ([`McpError`]) and nothing else; one that died is started again on next use, after a
//! back-off; every process is stopped at shutdown.
//!
//! This crate runs on tokio and knows nothing of the daemon's loop.

mod error;
mod message;
mod servers;
mod session;
mod types;

pub use error::McpError;
pub use servers::{McpServers, ServerStatus};
pub use session::{Session, PROTOCOL_VERSIONS};
pub use types::{Progress, Prompt, Resource, ResourceContents, Root, ServerInfo, Tool, ToolResult};
