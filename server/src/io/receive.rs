//! The receive half of the datagram path: wait for the socket to become readable (epoll, through
//! the runtime), then drain it with `recvmmsg` and GRO (quinn-udp) until it would block.
//!
//! Why not io_uring receives: every receive armed on the ring is woken for each datagram, so
//! depth costs every call, and tokio-uring 0.5 has neither multishot receive nor the control
//! data GRO needs. Several armed receives also complete out of arrival order, which QUIC takes
//! for loss. Measured against 8 armed io_uring receives, three alternating runs each
//! (`docs/design.md`, "Receive path"): `unary_2k` p50 on one CPU 43 → 38 µs, across two CPUs
//! 93–134 → 85–116 µs; only 64 calls in flight across two CPUs got slower.

use std::io::{ErrorKind, IoSliceMut};
use std::time::Instant;

use bytes::BytesMut;
use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};
use reaper_core::rpc::RpcServer;
use tokio::io::Interest;

/// Buffers handed to one `recvmmsg`. With GRO each holds up to 64 KiB of same-sized datagrams;
/// more than a pass handles (`MAX_DATAGRAMS_PER_PASS`) would only sit unread.
const BATCH: usize = 4;
/// The largest UDP payload, and the most GRO coalesces into one buffer.
const BUF_LEN: usize = 65_536;

/// The socket's receive side and its buffers (allocated once, 256 KiB).
pub struct Receiver {
    socket: tokio::net::UdpSocket,
    state: UdpSocketState,
    bufs: [Vec<u8>; BATCH],
    meta: [RecvMeta; BATCH],
}

impl Receiver {
    /// Takes a non-blocking handle on `socket` (a clone of the one the loop sends on), and
    /// turns on GRO and the control data quinn-udp reads (ECN, destination address).
    pub fn new(socket: &std::net::UdpSocket) -> std::io::Result<Receiver> {
        let socket = socket.try_clone()?;
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        Ok(Receiver {
            socket: tokio::net::UdpSocket::from_std(socket)?,
            state,
            bufs: std::array::from_fn(|_| vec![0; BUF_LEN]),
            meta: [RecvMeta::default(); BATCH],
        })
    }

    /// How many datagrams one send may carry (GSO), as the kernel reported; 1 without GSO.
    pub fn gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Resolves when datagrams are waiting.
    pub async fn readable(&self) -> std::io::Result<()> {
        self.socket.readable().await
    }

    /// Hands every waiting datagram to `server`, up to about `max` of them so one flood cannot
    /// hold up everyone's responses. Returns how many were handled.
    pub fn drain(&mut self, server: &mut RpcServer, now: Instant, max: usize) -> usize {
        let mut handled = 0;
        while handled < max {
            let Receiver {
                socket,
                state,
                bufs,
                meta,
            } = self;
            let mut slices = bufs.each_mut().map(|b| IoSliceMut::new(b));
            // A batch that did not fill every buffer emptied the socket: say so (WouldBlock), so
            // the runtime clears readiness now instead of us paying a `recvmmsg` that returns
            // EAGAIN on every pass. Safe: a datagram arriving after the read raises a new edge.
            // tokio's own TCP reads do the same after a short read.
            let mut short = 0;
            let received = socket.try_io(Interest::READABLE, || {
                let count = state.recv(UdpSockRef::from(&*socket), &mut slices, meta)?;
                if count < slices.len() {
                    short = count;
                    return Err(ErrorKind::WouldBlock.into());
                }
                Ok(count)
            });
            let (count, emptied) = match received {
                Ok(count) => (count, false),
                Err(error) if error.kind() == ErrorKind::WouldBlock => (short, true),
                // ICMP errors (a client went away) surface as receive errors on UDP: not fatal.
                Err(error) => {
                    tracing::debug!(%error, "receive failed");
                    handled += 1;
                    continue;
                }
            };
            for (meta, buf) in meta.iter().zip(bufs.iter()).take(count) {
                let stride = meta.stride.max(1);
                for datagram in buf[..meta.len.min(buf.len())].chunks(stride) {
                    // Core keeps a right-sized copy, so an open call pins a few hundred bytes,
                    // not a receive buffer.
                    server.handle_datagram(
                        now,
                        meta.addr,
                        meta.dst_ip,
                        meta.ecn.map(ecn_codepoint),
                        BytesMut::from(datagram),
                    );
                    handled += 1;
                }
            }
            if emptied {
                break;
            }
        }
        handled
    }
}

/// quinn-udp's ECN codepoint in quinn-proto's type (the two crates name the same bits).
fn ecn_codepoint(ecn: quinn_udp::EcnCodepoint) -> quinn_proto::EcnCodepoint {
    match ecn {
        quinn_udp::EcnCodepoint::Ect0 => quinn_proto::EcnCodepoint::Ect0,
        quinn_udp::EcnCodepoint::Ect1 => quinn_proto::EcnCodepoint::Ect1,
        quinn_udp::EcnCodepoint::Ce => quinn_proto::EcnCodepoint::Ce,
    }
}
