//! `reaperd`, the daemon: an io_uring event loop driving reaper's sans-IO core, the services
//! behind it, and the state directory that lets clients reach it safely.

pub mod completion;
pub mod event_loop;
pub mod logging;
pub mod metrics;
pub mod offline;
pub mod receive;
pub mod send;
pub mod services;
pub mod state;
