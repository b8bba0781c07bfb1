//! The send half of the datagram path: each transmit core has queued becomes a `sendmsg` on
//! the ring, several datagrams to the same peer as one GSO send where the kernel supports it
//! (quinn-proto lays them out as equal segments; `UDP_SEGMENT` tells the kernel the size).
//!
//! A send's buffer, address and `msghdr` live in a slot until its completion arrives; slots
//! are allocated once and reused, so a steady state allocates nothing here. With every slot
//! in flight, core keeps the rest queued; the loop then waits for completions and sends more
//! before anything else (`Sender::blocked`).

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Instant;

use io_uring::{opcode, types};
use reaper_core::rpc::RpcServer;

use super::ring::{Completion, Op, Ring};

/// Sends in flight at most. A loopback send completes within the `io_uring_enter` that
/// submits it; this bounds what a pass can queue and what memory sends can hold.
const SLOTS: usize = 64;

/// quinn-proto batches at most this many datagrams; a GSO send must also stay within one
/// 65,507-byte UDP datagram, which the loopback MTU bound guarantees for 10.
const MAX_SEGMENTS: usize = 10;

/// `CMSG_SPACE(sizeof(u16))` on a 64-bit target, in words so that it is aligned as a
/// `cmsghdr` must be.
const CONTROL_WORDS: usize = 3;

/// One send's memory, at a fixed address while the kernel may read it.
struct Slot {
    buf: Vec<u8>,
    iov: libc::iovec,
    to: socket2::SockAddr,
    control: [u64; CONTROL_WORDS],
    msghdr: libc::msghdr,
    batched: bool,
}

/// Sends what core wants sent.
pub struct Sender {
    fd: RawFd,
    /// Never resized, so a slot never moves while the kernel may read it.
    slots: Box<[Slot]>,
    free: Vec<usize>,
    /// Datagrams per send: the kernel's GSO limit, 1 without GSO (or once it failed).
    segments: usize,
    /// The last `send_all` ran out of slots: core may have more to send once they free.
    blocked: bool,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("in_flight", &self.in_flight())
            .field("segments", &self.segments)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// Sends on `fd`, batching up to `segments` datagrams per send.
    pub fn new(fd: RawFd, segments: usize) -> Sender {
        let slots = (0..SLOTS)
            .map(|_| Slot {
                buf: Vec::new(),
                iov: libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
                to: socket2::SockAddr::from(SocketAddr::from(([127, 0, 0, 1], 0))),
                control: [0; CONTROL_WORDS],
                msghdr: empty_msghdr(),
                batched: false,
            })
            .collect();
        Sender {
            fd,
            slots,
            free: (0..SLOTS).rev().collect(),
            segments: segments.clamp(1, MAX_SEGMENTS),
            blocked: false,
        }
    }

    /// Sends submitted whose completion has not arrived.
    pub fn in_flight(&self) -> usize {
        SLOTS - self.free.len()
    }

    /// Whether core may have more to send than there were slots for (see `send_all`).
    pub fn blocked(&self) -> bool {
        self.blocked
    }

    /// Queues a send on `ring` for each transmit core has, while slots last. Returns how many
    /// it queued; if it ran out of slots first, [`Sender::blocked`] says so until a call finds
    /// core's queue empty.
    pub fn send_all(&mut self, ring: &mut Ring, server: &mut RpcServer, now: Instant) -> usize {
        let mut queued = 0;
        self.blocked = true;
        while let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index];
            slot.buf.clear();
            let Some(transmit) = server.poll_transmit(now, self.segments, &mut slot.buf) else {
                self.free.push(index);
                self.blocked = false;
                break;
            };
            slot.buf.truncate(transmit.size);
            let segment = transmit.segment_size.filter(|&s| s < transmit.size);
            slot.prepare(transmit.destination, segment);
            let entry = opcode::SendMsg::new(types::Fd(self.fd), &slot.msghdr)
                .build()
                .user_data(Op::Send(index).user_data());
            // SAFETY: the slot does not move (`slots` is never resized) and is neither reused nor
            // dropped until this send's completion puts it back on the free list (`complete`;
            // `Sender` is only dropped once no send is in flight, see `event_loop`).
            unsafe { ring.push_send(&entry) };
            queued += 1;
        }
        queued
    }

    /// A send completed: its slot is free again.
    pub fn complete(&mut self, completion: Completion) {
        let Op::Send(index) = completion.op else {
            return;
        };
        let Some(slot) = self.slots.get(index) else {
            return;
        };
        if completion.result < 0 {
            let error = std::io::Error::from_raw_os_error(-completion.result);
            // Some devices refuse GSO (EIO, as quinn-udp also handles): the batch is lost
            // (QUIC resends it) and every later send is a single datagram.
            let refused = matches!(-completion.result, libc::EIO | libc::EINVAL);
            if slot.batched && refused && self.segments > 1 {
                tracing::warn!(%error, "GSO send failed; sending one datagram at a time from now on");
                self.segments = 1;
            } else {
                tracing::debug!(%error, "send failed");
            }
        }
        if !self.free.contains(&index) {
            self.free.push(index);
        }
    }
}

impl Drop for Sender {
    /// A send still in flight may yet be read by the kernel: its memory is never freed.
    fn drop(&mut self) {
        if self.in_flight() > 0 {
            std::mem::forget(std::mem::take(&mut self.slots));
        }
    }
}

impl Slot {
    /// Points the slot's `msghdr` at its own buffer, address and, for a GSO batch, a
    /// `UDP_SEGMENT` control message.
    fn prepare(&mut self, to: SocketAddr, segment: Option<usize>) {
        self.to = socket2::SockAddr::from(to);
        self.iov = libc::iovec {
            iov_base: self.buf.as_mut_ptr().cast(),
            iov_len: self.buf.len(),
        };
        self.msghdr = empty_msghdr();
        self.msghdr.msg_name = self.to.as_ptr() as *mut libc::c_void;
        self.msghdr.msg_namelen = self.to.len();
        self.msghdr.msg_iov = &mut self.iov;
        self.msghdr.msg_iovlen = 1;
        self.batched = segment.is_some();
        if let Some(size) = segment {
            self.control = udp_segment(size as u16);
            self.msghdr.msg_control = self.control.as_mut_ptr().cast();
            self.msghdr.msg_controllen = std::mem::size_of_val(&self.control) as _;
        }
    }
}

fn empty_msghdr() -> libc::msghdr {
    // SAFETY: `msghdr` is plain data; all zeroes is a valid (empty) value, and on some
    // targets it has private padding fields a literal cannot name.
    unsafe { std::mem::zeroed() }
}

// The control message below is laid out for a 64-bit `size_t`.
const _: () = assert!(std::mem::size_of::<usize>() == 8);

/// A control message asking the kernel to cut the payload into `size`-byte datagrams: a
/// `cmsghdr` (`cmsg_len` is a `size_t`, then level and type as `int`s) and the `u16` size,
/// padded to `CMSG_SPACE`, in words so that it is aligned as a `cmsghdr` must be. Built in
/// place for every GSO send: no allocation.
fn udp_segment(size: u16) -> [u64; CONTROL_WORDS] {
    const CMSG_LEN: u64 = 8 + 4 + 4 + 2;
    let mut kind = [0u8; 8];
    kind[..4].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
    kind[4..].copy_from_slice(&libc::UDP_SEGMENT.to_ne_bytes());
    let mut data = [0u8; 8];
    data[..2].copy_from_slice(&size.to_ne_bytes());
    [CMSG_LEN, u64::from_ne_bytes(kind), u64::from_ne_bytes(data)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_segment_control_message_has_the_kernels_layout() {
        let control: Vec<u8> = udp_segment(4096)
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        assert_eq!(control.len(), 24, "CMSG_SPACE(2) on a 64-bit target");
        assert_eq!(&control[..8], &18usize.to_ne_bytes(), "CMSG_LEN(2)");
        assert_eq!(&control[8..12], &17i32.to_ne_bytes());
        assert_eq!(&control[12..16], &103i32.to_ne_bytes());
        assert_eq!(&control[16..18], &4096u16.to_ne_bytes());
    }
}
