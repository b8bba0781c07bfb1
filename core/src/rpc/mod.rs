//! The RPC state machines: quinn-proto connections turned into calls, for each end.

mod client;
mod server;
pub mod stream;

pub use client::{ClientCallId, ClientEvent, ConnectError, RpcClient};
pub use server::{
    CallId, ConnId, IncomingCall, RpcServer, ServerEvent, ServerSettings, SILENT_GIVES_WAY_AFTER,
};
