//! All of the daemon's datagram I/O: the event loop that owns the socket, the state machine
//! and the services, and its receive and send halves. Nothing outside this module touches the
//! socket or the ring; services see only core's `RpcServer` and the calls it hands them.

pub mod event_loop;
pub mod receive;
pub mod send;
