//! Moving one call's bytes between a QUIC stream and the framing layer, for both ends.

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

/// Bytes of one direction of a call that QUIC has not taken yet (flow control), and whether the
/// stream is to be finished once they are out.
#[derive(Debug, Default)]
pub struct Outbox {
    pending: Bytes,
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
        if self.pending.is_empty() {
            let written = match conn.send_stream(id).write(data) {
                Ok(n) => n,
                Err(WriteError::Blocked) => 0,
                Err(_) => return Err(PeerStopped),
            };
            self.pending = Bytes::copy_from_slice(&data[written..]);
        } else {
            let mut joined = Vec::with_capacity(self.pending.len() + data.len());
            joined.extend_from_slice(&self.pending);
            joined.extend_from_slice(data);
            self.pending = Bytes::from(joined);
        }
        self.flush(conn, id)
    }

    /// Retries after QUIC reported the stream writable.
    pub fn flush(&mut self, conn: &mut Connection, id: StreamId) -> Result<(), PeerStopped> {
        let mut send = conn.send_stream(id);
        while !self.pending.is_empty() {
            match send.write(&self.pending) {
                Ok(n) => {
                    let _ = self.pending.split_to(n);
                }
                Err(WriteError::Blocked) => return Ok(()),
                Err(_) => return Err(PeerStopped),
            }
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
        self.pending.is_empty() && !self.finish
    }
}
