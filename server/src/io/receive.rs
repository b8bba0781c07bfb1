//! The receive half of the datagram path: one multishot `recvmsg` on the ring, into buffers
//! the daemon provides, so that every datagram arrives as a completion of the same request, in
//! arrival order, with no syscall of its own and no re-arming.
//!
//! Each completion is one `recvmsg`: with GRO, several same-sized datagrams from one peer in
//! one buffer, their size in a control message. The buffer goes back to the kernel as soon as
//! core has copied the datagrams out (core keeps a right-sized copy, so an open call pins a
//! few hundred bytes, not a 64 KiB buffer). When every buffer is taken (a flood, or a pass
//! that left completions for the next), the kernel ends the multishot request with `ENOBUFS`
//! and the datagrams wait in the socket until it is re-armed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::time::Instant;

use bytes::BytesMut;
use io_uring::{opcode, squeue, types};
use quinn_proto::EcnCodepoint;
use quinn_udp::{UdpSockRef, UdpSocketState};
use reaper_core::rpc::RpcServer;

use super::ring::{Completion, Op, Ring};

/// Receive buffers. A pass handles about `MAX_DATAGRAMS_PER_PASS` datagrams and hands their
/// buffers back; the rest cover what arrives meanwhile.
const BUFFERS: u16 = 32;
/// One buffer: the kernel's header, the sender's address, control data, and the largest UDP
/// payload (GRO coalesces up to 64 KiB).
const BUF_LEN: usize = HEADER_LEN + NAME_LEN as usize + CONTROL_LEN + 65_536;
/// `struct io_uring_recvmsg_out`.
const HEADER_LEN: usize = 16;
/// Room for the sender's address: a `sockaddr_in6`, rounded up.
const NAME_LEN: u32 = 32;
/// Room for the control messages asked for: ECN, destination address, GRO segment size.
const CONTROL_LEN: usize = 128;
/// The buffer group the receive draws from.
const GROUP: u16 = 1;
/// Consecutive failed re-arms before the loop gives up on the socket.
const MAX_FAILURES: u32 = 1_000;

/// The socket's receive side and its buffers.
pub struct Receiver {
    fd: RawFd,
    state: UdpSocketState,
    /// `BUFFERS` buffers of `BUF_LEN` bytes, kept for the life of the process: the kernel may
    /// write into a provided buffer until the ring is torn down, which finishes after the ring
    /// is closed, so the memory must never be freed or reused.
    pool: NonNull<u8>,
    /// The template of the multishot `recvmsg`: only the name and control lengths are used.
    msghdr: &'static libc::msghdr,
    armed: bool,
    /// Buffers the kernel holds (provided, or queued to be): the receive is armed only when
    /// there is one, so it cannot fail with `ENOBUFS` in a loop.
    in_kernel: u16,
    failures: u32,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("fd", &self.fd)
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// Turns on GRO and the control data quinn needs (ECN, destination address) on `socket`,
    /// and gives the ring its buffers and the receive.
    pub fn new(socket: &std::net::UdpSocket, ring: &mut Ring) -> std::io::Result<Receiver> {
        use std::os::fd::AsRawFd;
        let state = UdpSocketState::new(UdpSockRef::from(socket))?;
        let pool = Box::leak(vec![0u8; BUFFERS as usize * BUF_LEN].into_boxed_slice());
        let msghdr = Box::leak(Box::new(msghdr_template()));
        let mut receiver = Receiver {
            fd: socket.as_raw_fd(),
            state,
            pool: NonNull::from(pool).cast(),
            msghdr,
            armed: false,
            in_kernel: BUFFERS,
            failures: 0,
        };
        let entry =
            opcode::ProvideBuffers::new(receiver.pool.as_ptr(), BUF_LEN as i32, BUFFERS, GROUP, 0)
                .build()
                .flags(squeue::Flags::SKIP_SUCCESS)
                .user_data(Op::Provide(0).user_data());
        // SAFETY: the pool is leaked, so it outlives the ring.
        unsafe { ring.push(&entry) };
        receiver.arm(ring);
        Ok(receiver)
    }

    /// How many datagrams one send may carry (GSO), as the kernel reported; 1 without GSO.
    pub fn gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Handles one completion of the receive: hands its datagrams to `server`, gives the
    /// buffer back, and re-arms the receive if the kernel ended it. Returns how many datagrams
    /// it handled, or an error once the socket has failed `MAX_FAILURES` times in a row.
    pub fn complete(
        &mut self,
        completion: Completion,
        ring: &mut Ring,
        server: &mut RpcServer,
        now: Instant,
    ) -> std::io::Result<usize> {
        let mut handled = 0;
        if let Some(id) = completion.buffer().filter(|&id| id < BUFFERS) {
            self.in_kernel = self.in_kernel.saturating_sub(1);
            if completion.result > 0 {
                handled = self.deliver(id, server, now);
            }
            self.provide(ring, id);
        }
        if completion.result < 0 {
            let errno = -completion.result;
            if errno == libc::ENOBUFS {
                tracing::debug!("receive buffers all in use; re-arming once they are back");
            } else {
                self.failures += 1;
                let error = std::io::Error::from_raw_os_error(errno);
                tracing::debug!(%error, "receive failed");
                if self.failures >= MAX_FAILURES {
                    return Err(error);
                }
            }
        } else {
            self.failures = 0;
        }
        if !completion.more() {
            self.armed = false;
            self.arm(ring);
        }
        Ok(handled)
    }

    /// Datagrams in buffer `id`, to core.
    fn deliver(&mut self, id: u16, server: &mut RpcServer, now: Instant) -> usize {
        // SAFETY: the kernel handed buffer `id` back with this completion and gets it again
        // only when `provide` queues it, after this borrow ends; `id < BUFFERS` keeps the
        // slice inside the pool.
        let buffer = unsafe {
            std::slice::from_raw_parts(self.pool.as_ptr().add(id as usize * BUF_LEN), BUF_LEN)
        };
        let Ok(message) = types::RecvMsgOut::parse(buffer, self.msghdr) else {
            return 0;
        };
        if message.is_payload_truncated() || message.is_control_data_truncated() {
            tracing::debug!("truncated datagram dropped");
            return 0;
        }
        let Some(from) = socket_addr(message.name_data()) else {
            return 0;
        };
        let control = Control::parse(message.control_data());
        let payload = message.payload_data();
        let stride = control.segment.unwrap_or(payload.len()).max(1);
        let mut handled = 0;
        for datagram in payload.chunks(stride) {
            server.handle_datagram(
                now,
                from,
                control.destination,
                control.ecn,
                BytesMut::from(datagram),
            );
            handled += 1;
        }
        handled
    }

    /// Handing buffer `id` back failed (the completion of a `provide`): tries again, and
    /// counts it with the receive's failures so that a kernel that keeps refusing ends the
    /// loop instead of spinning.
    pub fn provide_failed(&mut self, id: u16, errno: i32, ring: &mut Ring) -> std::io::Result<()> {
        let error = std::io::Error::from_raw_os_error(errno);
        tracing::warn!(%error, buffer = id, "a receive buffer could not be handed back; retrying");
        self.in_kernel = self.in_kernel.saturating_sub(1);
        self.failures += 1;
        if self.failures >= MAX_FAILURES {
            return Err(error);
        }
        self.provide(ring, id);
        Ok(())
    }

    fn provide(&mut self, ring: &mut Ring, id: u16) {
        if id >= BUFFERS {
            return;
        }
        // SAFETY: in bounds (`id < BUFFERS`); the pool is leaked, so it outlives the ring.
        let at = unsafe { self.pool.as_ptr().add(id as usize * BUF_LEN) };
        let entry = opcode::ProvideBuffers::new(at, BUF_LEN as i32, 1, GROUP, id)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(Op::Provide(id).user_data());
        // SAFETY: as above.
        unsafe { ring.push(&entry) };
        self.in_kernel += 1;
        // Queued after the buffer, so the receive finds it.
        self.arm(ring);
    }

    fn arm(&mut self, ring: &mut Ring) {
        if self.armed || self.in_kernel == 0 {
            return;
        }
        let entry = opcode::RecvMsgMulti::new(types::Fd(self.fd), self.msghdr, GROUP)
            .build()
            .user_data(Op::Receive.user_data());
        // SAFETY: the msghdr is leaked (it outlives the ring); the socket outlives the loop,
        // which owns it.
        unsafe { ring.push(&entry) };
        self.armed = true;
    }
}

/// The multishot `recvmsg` template: how much room the sender's address and the control
/// data get in each buffer.
fn msghdr_template() -> libc::msghdr {
    // SAFETY: `msghdr` is plain data; all zeroes is a valid (empty) value, and on some
    // targets it has private padding fields a literal cannot name.
    let mut msghdr: libc::msghdr = unsafe { std::mem::zeroed() };
    msghdr.msg_namelen = NAME_LEN;
    msghdr.msg_controllen = CONTROL_LEN as _;
    msghdr
}

/// A `sockaddr_in` or `sockaddr_in6`, as the kernel wrote it.
fn socket_addr(name: &[u8]) -> Option<SocketAddr> {
    let family = i32::from(u16::from_ne_bytes(name.get(0..2)?.try_into().ok()?));
    let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
    match family {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddrV4::new(Ipv4Addr::from(ip), port).into())
        }
        libc::AF_INET6 => {
            let flowinfo = u32::from_ne_bytes(name.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
            Some(SocketAddrV6::new(Ipv6Addr::from(ip), port, flowinfo, scope).into())
        }
        _ => None,
    }
}

/// What the control messages of one `recvmsg` say.
#[derive(Debug, Default, PartialEq, Eq)]
struct Control {
    ecn: Option<EcnCodepoint>,
    destination: Option<IpAddr>,
    /// GRO: the size of each datagram but maybe the last.
    segment: Option<usize>,
}

impl Control {
    /// Reads the `cmsghdr`s in `data`: a `size_t` length, then level and type as `int`s,
    /// then the data, each message padded to a multiple of `size_t`.
    fn parse(data: &[u8]) -> Control {
        const WORD: usize = std::mem::size_of::<usize>();
        const HEADER: usize = WORD + 8;
        let mut control = Control::default();
        let mut at = 0;
        while at + HEADER <= data.len() {
            let Some(len) = read_ne::<WORD>(data, at).map(usize::from_ne_bytes) else {
                break;
            };
            if len < HEADER || at.checked_add(len).is_none_or(|end| end > data.len()) {
                break;
            }
            let level = read_ne::<4>(data, at + WORD).map(i32::from_ne_bytes);
            let kind = read_ne::<4>(data, at + WORD + 4).map(i32::from_ne_bytes);
            let body = &data[at + HEADER..at + len];
            match (level, kind) {
                (Some(libc::IPPROTO_IP), Some(libc::IP_TOS | libc::IP_RECVTOS)) => {
                    control.ecn = body.first().and_then(|tos| ecn(*tos));
                }
                (Some(libc::IPPROTO_IPV6), Some(libc::IPV6_TCLASS)) => {
                    control.ecn =
                        read_ne::<4>(body, 0).and_then(|v| ecn(i32::from_ne_bytes(v) as u8));
                }
                (Some(libc::IPPROTO_IP), Some(libc::IP_PKTINFO)) => {
                    // `struct in_pktinfo`: interface index, local address, header destination.
                    control.destination = read_ne::<4>(body, 8).map(|a| Ipv4Addr::from(a).into());
                }
                (Some(libc::IPPROTO_IPV6), Some(libc::IPV6_PKTINFO)) => {
                    control.destination = read_ne::<16>(body, 0).map(|a| Ipv6Addr::from(a).into());
                }
                (Some(libc::SOL_UDP), Some(libc::UDP_GRO)) => {
                    control.segment = read_ne::<4>(body, 0)
                        .map(i32::from_ne_bytes)
                        .and_then(|s| usize::try_from(s).ok())
                        .filter(|&s| s > 0);
                }
                _ => {}
            }
            at += len.div_ceil(WORD) * WORD;
        }
        control
    }
}

fn read_ne<const N: usize>(data: &[u8], at: usize) -> Option<[u8; N]> {
    data.get(at..at + N)?.try_into().ok()
}

/// The ECN bits of a TOS or traffic-class byte.
fn ecn(tos: u8) -> Option<EcnCodepoint> {
    EcnCodepoint::from_bits(tos & 0b11)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmsg(level: i32, kind: i32, body: &[u8]) -> Vec<u8> {
        let word = std::mem::size_of::<usize>();
        let len = word + 8 + body.len();
        let mut out = Vec::new();
        out.extend_from_slice(&len.to_ne_bytes());
        out.extend_from_slice(&level.to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(body);
        out.resize(len.div_ceil(word) * word, 0);
        out
    }

    #[test]
    fn control_messages_give_ecn_destination_and_gro_segment() {
        let mut data = cmsg(libc::IPPROTO_IP, libc::IP_TOS, &[0b10]);
        let mut pktinfo = 3i32.to_ne_bytes().to_vec();
        pktinfo.extend_from_slice(&[127, 0, 0, 1]);
        pktinfo.extend_from_slice(&[127, 0, 0, 2]);
        data.extend(cmsg(libc::IPPROTO_IP, libc::IP_PKTINFO, &pktinfo));
        data.extend(cmsg(libc::SOL_UDP, libc::UDP_GRO, &1200i32.to_ne_bytes()));
        let control = Control::parse(&data);
        assert_eq!(control.ecn, Some(EcnCodepoint::Ect0));
        assert_eq!(control.destination, Some(IpAddr::from([127, 0, 0, 2])));
        assert_eq!(control.segment, Some(1200));
    }

    #[test]
    fn truncated_or_lying_control_data_is_ignored() {
        let data = cmsg(libc::SOL_UDP, libc::UDP_GRO, &1200i32.to_ne_bytes());
        assert_eq!(Control::parse(&data[..data.len() - 8]), Control::default());
        let mut lying = data.clone();
        lying[..8].copy_from_slice(&4096usize.to_ne_bytes());
        assert_eq!(Control::parse(&lying), Control::default());
        assert_eq!(Control::parse(&[]), Control::default());
    }
}
