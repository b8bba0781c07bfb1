//! `reaperd`, the daemon: an io_uring event loop driving reaper's sans-IO core ([`io`]), the
//! services behind it, one room each ([`services`]), and the state directory that lets clients
//! reach it safely ([`state`]).

pub mod io;
pub mod logging;
pub mod metrics;
pub mod services;
pub mod state;
