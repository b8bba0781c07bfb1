//! All of the daemon's datagram I/O: the event loop that owns the socket, the ring, the state
//! machine and the services; the ring's receive and send halves; and the wake-ups other
//! threads (providers, signals) use. Nothing outside this module touches the socket or the
//! ring; services see only core's `RpcServer`, the calls it hands them, and a channel back.
//!
//! The ring's operations point at memory the kernel reads or writes until they complete, which
//! Rust cannot check: the `unsafe` blocks that hand it over are here, and only here, each with
//! the reason it holds.
#![allow(unsafe_code)]

pub mod event_loop;
pub mod receive;
pub mod ring;
pub mod send;
pub mod signals;
pub mod wake;
