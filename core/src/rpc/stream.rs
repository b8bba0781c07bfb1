//! Moving one call's bytes between a QUIC stream and the framing layer, for both ends.

use std::collections::VecDeque;

use bytes::Bytes;
use quinn_proto::{Connection, ReadError, StreamId, VarInt, WriteError};

use crate::wire::FrameDecoder;

/// Stream error code a side uses to abandon a call (reset or stop): the peer sees it as cancelled.
pub const CANCEL_CODE: VarInt = VarInt::from_u32(1);
/// Stream error code a server uses to stop reading a call it has already answered.
pub const DONE_CODE: VarInt = VarInt::from_u32(0);

/// How the receive side of a stream stands after a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvState {
    /// More data may come.
    Open,
    /// The peer finished its side (FIN received and all data read).
    Finished,
    /// The peer reset its side.
    Reset,
    /// The stream is no longer readable (already stopped or finished earlier).
    Closed,
}

/// Reads every chunk QUIC has for `id` into `decoder`.
pub fn read_into(conn: &mut Connection, id: StreamId, decoder: &mut FrameDecoder) -> RecvState {
    let mut recv = conn.recv_stream(id);
    let Ok(mut chunks) = recv.read(true) else {
        return RecvState::Closed;
    };
    let state = loop {
        match chunks.next(usize::MAX) {
            Ok(Some(chunk)) => decoder.push(chunk.bytes),
            Ok(None) => break RecvState::Finished,
            Err(ReadError::Blocked) => break RecvState::Open,
            Err(ReadError::Reset(_)) => break RecvState::Reset,
        }
    };
    // Whether flow-control credit should be sent is settled by the next poll_transmit.
    let _ = chunks.finalize();
    state
}

/// Bytes of one direction of a call that QUIC has not taken yet (flow control), as a queue of
/// chunks, and whether the stream is to be finished once they are out.
///
/// A chunk is queued as written and handed to QUIC as is (`write_chunks`), so a slow reader
/// costs one copy of what did not fit, never a copy of everything pending per write.
/// [`Outbox::unsent`] is what a producer checks against its budget before writing more.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<Bytes>,
    /// Bytes in `queue`.
    unsent: usize,
    finish: bool,
}

/// The peer no longer wants this call's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStopped;

impl Outbox {
    /// Writes `data` (and FIN if `finish`) to the stream, keeping what does not fit yet.
    pub fn write(
        &mut self,
        conn: &mut Connection,
        id: StreamId,
        data: &[u8],
        finish: bool,
    ) -> Result<(), PeerStopped> {
        self.finish |= finish;
        if self.queue.is_empty() {
            // Straight to QUIC; only what it cannot take yet is copied and queued.
            let written = match conn.send_stream(id).write(data) {
                Ok(n) => n,
                Err(WriteError::Blocked) => 0,
                Err(_) => return Err(PeerStopped),
            };
            self.push(Bytes::copy_from_slice(&data[written..]));
        } else {
            self.push(Bytes::copy_from_slice(data));
        }
        self.flush(conn, id)
    }

    fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.unsent += chunk.len();
            self.queue.push_back(chunk);
        }
    }

    /// Retries after QUIC reported the stream writable.
    ///
    /// Writes until QUIC says `Blocked`, not just once: quinn-proto queues a `Writable` event
    /// for a stream only when a write was refused, so a write that takes part of the queue and
    /// happens to use up the connection's credit would otherwise leave the rest waiting for an
    /// event that never comes.
    pub fn flush(&mut self, conn: &mut Connection, id: StreamId) -> Result<(), PeerStopped> {
        let mut send = conn.send_stream(id);
        while !self.queue.is_empty() {
            let written = match send.write_chunks(self.queue.make_contiguous()) {
                Ok(written) => written,
                Err(WriteError::Blocked) => return Ok(()),
                Err(_) => return Err(PeerStopped),
            };
            self.unsent -= written.bytes;
            // Whole chunks written are left empty at the front; a partial one is advanced.
            self.queue.drain(..written.chunks);
        }
        if self.finish {
            self.finish = false;
            // An error here means the stream is already finished or stopped: nothing to do.
            let _ = send.finish();
        }
        Ok(())
    }

    /// Whether everything has been handed to QUIC.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && !self.finish
    }

    /// Bytes written that QUIC has not taken yet.
    pub fn unsent(&self) -> usize {
        self.unsent
    }
}
