//! The send half of the datagram path: every transmit core has queued goes to io_uring in one
//! batch of submissions, several datagrams to the same peer as one GSO `sendmsg` where the kernel
//! supports it (quinn-proto lays them out as equal segments; `UDP_SEGMENT` tells the kernel the
//! size).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use reaper_core::rpc::RpcServer;
use tokio_uring::net::UdpSocket;

/// `SOL_UDP` and `UDP_SEGMENT` from `<linux/udp.h>`.
const SOL_UDP: i32 = 17;
const UDP_SEGMENT: i32 = 103;
/// How a device or kernel refuses a GSO send (`<asm-generic/errno-base.h>`).
const EIO: i32 = 5;
const EINVAL: i32 = 22;

/// Sends what core wants sent. Buffers come from and go back to a pool, so a steady state
/// allocates nothing here.
pub struct Sender {
    socket: Rc<UdpSocket>,
    pool: Vec<Vec<u8>>,
    /// Datagrams per send: the kernel's GSO limit, 1 without GSO.
    segments: usize,
}

impl Sender {
    /// Sends on `socket`, batching up to `segments` datagrams per send.
    pub fn new(socket: Rc<UdpSocket>, segments: usize) -> Sender {
        Sender {
            socket,
            pool: Vec::new(),
            segments: segments.clamp(1, MAX_SEGMENTS),
        }
    }

    /// Submits every queued transmit together and waits for them all.
    pub async fn send_all(&mut self, server: &mut RpcServer, now: Instant) {
        let mut sends = Vec::new();
        loop {
            let mut buf = self.pool.pop().unwrap_or_default();
            let Some(transmit) = server.poll_transmit(now, self.segments, &mut buf) else {
                self.pool.push(buf);
                break;
            };
            buf.truncate(transmit.size);
            let segment = transmit.segment_size.filter(|&s| s < transmit.size);
            sends.push(send(
                self.socket.clone(),
                buf,
                transmit.destination,
                segment,
            ));
        }
        if sends.is_empty() {
            return;
        }
        for (result, buf, batched) in futures::future::join_all(sends).await {
            if let Err(error) = result {
                // Some devices refuse GSO (EIO, as quinn-udp also handles): the batch is lost
                // (QUIC resends it) and every later send is a single datagram.
                let refused = matches!(error.raw_os_error(), Some(EIO | EINVAL));
                if batched && refused && self.segments > 1 {
                    tracing::warn!(%error, "GSO send failed; sending one datagram at a time from now on");
                    self.segments = 1;
                } else {
                    tracing::debug!(%error, "send failed");
                }
            }
            self.pool.push(buf);
        }
    }
}

/// quinn-proto batches at most this many datagrams; a GSO send must also stay within one
/// 65,507-byte UDP datagram, which the loopback MTU bound guarantees for 10.
const MAX_SEGMENTS: usize = 10;

async fn send(
    socket: Rc<UdpSocket>,
    buf: Vec<u8>,
    to: SocketAddr,
    segment: Option<usize>,
) -> (std::io::Result<usize>, Vec<u8>, bool) {
    match segment {
        None => {
            let (result, buf) = socket.send_to(buf, to).await;
            (result, buf, false)
        }
        Some(size) => {
            let control = udp_segment(size as u16);
            let (result, mut bufs, _) = socket.sendmsg(vec![buf], Some(to), Some(control)).await;
            (result, bufs.pop().unwrap_or_default(), true)
        }
    }
}

/// A control message asking the kernel to cut the payload into `size`-byte datagrams: a
/// `cmsghdr` (`cmsg_len` is a `size_t`, then level and type as `int`s) and the `u16` size,
/// padded to `CMSG_SPACE`.
fn udp_segment(size: u16) -> Vec<u8> {
    let word = std::mem::size_of::<usize>();
    let header = word + 8;
    let len = header + 2;
    let space = len.div_ceil(word) * word;
    let mut control = Vec::with_capacity(space);
    control.extend_from_slice(&len.to_ne_bytes());
    control.extend_from_slice(&SOL_UDP.to_ne_bytes());
    control.extend_from_slice(&UDP_SEGMENT.to_ne_bytes());
    control.extend_from_slice(&size.to_ne_bytes());
    control.resize(space, 0);
    control
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_segment_control_message_has_the_kernels_layout() {
        let control = udp_segment(4096);
        assert_eq!(control.len(), 24, "CMSG_SPACE(2) on a 64-bit target");
        assert_eq!(&control[..8], &18usize.to_ne_bytes(), "CMSG_LEN(2)");
        assert_eq!(&control[8..12], &17i32.to_ne_bytes());
        assert_eq!(&control[12..16], &103i32.to_ne_bytes());
        assert_eq!(&control[16..18], &4096u16.to_ne_bytes());
    }
}
