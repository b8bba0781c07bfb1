//! The RPC state machines: quinn-proto connections turned into calls, for each end.

mod client;
mod server;
pub mod stream;

pub use client::{ClientCallId, ClientEvent, ConnectError, RpcClient};
pub use server::{
    CallId, ConnId, IncomingCall, RpcServer, Sent, ServerEvent, ServerSettings,
    MAX_UNSENT_PER_CALL, SILENT_GIVES_WAY_AFTER,
};
