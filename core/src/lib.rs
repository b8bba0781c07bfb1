//! The sans-IO core of reaper: everything about the protocol, nothing about I/O.
//!
//! This crate holds the schema of the five services, the wire framing of a call, status codes,
//! the RPC state machines over quinn-proto, TLS/QUIC configuration and `reaper.toml`. It never
//! opens a socket, reads a clock or starts a thread: bytes and `Instant`s go in, bytes to send,
//! deadlines and events come out. `reaper-server` and `reaper-client` drive it; tests drive two
//! of its endpoints against each other in memory with a simulated clock.

pub mod auth;
pub mod config;
pub mod encoding;
pub mod paths;
pub mod rpc;
pub mod schema;
pub mod status;
pub mod text;
pub mod transport;
pub mod wire;

pub use auth::Token;
pub use config::Config;
pub use encoding::{Encoding, WireMessage};
pub use schema::Method;
pub use status::{Code, Status};

/// The version reported by `Health.check` and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
