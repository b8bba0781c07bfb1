//! `reaper-client`: call a reaper daemon from a tokio application.
//!
//! ```no_run
//! # async fn run() -> Result<(), reaper_client::Error> {
//! let options = reaper_client::ClientOptions::discover(None, None)?;
//! let client = reaper_client::Client::connect(options).await?;
//! let health = client.health().await?;
//! println!("{:?} {}", health.status, health.version);
//! # Ok(()) }
//! ```
//!
//! The client reads the daemon's address, certificate and token from its state directory, pins
//! the certificate (no other is accepted), and makes every call a QUIC stream of its own on one
//! connection, reconnecting with exponential backoff when the connection is lost. A reconnect
//! (or a later client in the same process) resumes its TLS session and sends its first
//! replay-safe calls (Health, Provider.list, Completion) as 0-RTT data: answered in one round
//! trip. Other calls wait for the handshake (`docs/protocol.md`, "0-RTT").

mod client;
mod early;
mod error;
mod options;

pub use client::{
    AgentControlHandle, CallOptions, Client, ResponseStream, BACKOFF_MAX, BACKOFF_START,
};
pub use error::Error;
pub use options::ClientOptions;
pub use reaper_core::schema;
pub use reaper_core::{Code, Encoding, Method, Status};
