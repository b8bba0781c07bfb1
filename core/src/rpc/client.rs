//! A client's RPC state machine over one quinn-proto connection.
//!
//! Used by the in-memory tests and benchmarks of the protocol (no sockets), and by any driver
//! that wants a client without an async runtime. The tokio client in `reaper-client` drives
//! quinn instead and shares only the framing.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use quinn_proto::{
    ClientConfig, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig, Event,
    StreamEvent, StreamId, Transmit,
};

use super::stream::{read_into, Outbox, RecvState, CANCEL_CODE, DONE_CODE};
use crate::status::{Code, Status};
use crate::transport::SERVER_NAME;
use crate::wire::{self, Frame, FrameDecoder, RequestHead, Side};

/// A call made by [`RpcClient`].
pub type ClientCallId = StreamId;

/// What the client state machine reports.
#[derive(Debug, PartialEq)]
pub enum ClientEvent {
    /// The handshake completed.
    Connected,
    /// A response message arrived.
    Message {
        /// The call.
        call: ClientCallId,
        /// The message bytes (in the call's encoding).
        message: Bytes,
    },
    /// The call ended with this status (from its trailer, or because its stream or connection
    /// failed).
    Finished {
        /// The call.
        call: ClientCallId,
        /// How it ended.
        status: Status,
    },
    /// The connection is gone.
    ConnectionLost {
        /// Why.
        reason: String,
    },
}

/// Why a client could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect: {0}")]
pub struct ConnectError(#[from] quinn_proto::ConnectError);

struct Call {
    decoder: FrameDecoder,
    outbox: Outbox,
    /// Whether our side has been finished (FIN queued).
    finished: bool,
    /// Whether arriving bytes are read (a paused call leaves them to QUIC, whose flow control
    /// then stops the server).
    reading: bool,
}

/// A client connection that makes calls (see [`crate::rpc::RpcServer`] for the polling order,
/// which is the same).
pub struct RpcClient {
    endpoint: Endpoint,
    handle: ConnectionHandle,
    quic: quinn_proto::Connection,
    calls: HashMap<StreamId, Call>,
    events: VecDeque<ClientEvent>,
    max_message_size: usize,
    lost: bool,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient")
            .field("calls", &self.calls.len())
            .finish()
    }
}

impl RpcClient {
    /// Starts a handshake with `server`.
    pub fn connect(
        now: Instant,
        endpoint_config: EndpointConfig,
        client_config: ClientConfig,
        server: SocketAddr,
        max_message_size: usize,
    ) -> Result<RpcClient, ConnectError> {
        let mut endpoint = Endpoint::new(Arc::new(endpoint_config), None, true, None);
        let (handle, quic) = endpoint.connect(now, client_config, server, SERVER_NAME)?;
        Ok(RpcClient {
            endpoint,
            handle,
            quic,
            calls: HashMap::new(),
            events: VecDeque::new(),
            max_message_size,
            lost: false,
        })
    }

    /// Opens a call: writes the head and `message`, then FIN if `finish`. `None` when the
    /// server's limit on concurrent calls is reached (retry after a call ends).
    pub fn start_call(
        &mut self,
        head: &RequestHead,
        message: &[u8],
        finish: bool,
    ) -> Option<ClientCallId> {
        let stream = self.quic.streams().open(Dir::Bi)?;
        let mut out = Vec::with_capacity(64 + message.len());
        head.encode(&mut out);
        wire::encode_message(message, &mut out);
        let mut call = Call {
            decoder: FrameDecoder::new(Side::Response, self.max_message_size),
            outbox: Outbox::default(),
            finished: finish,
            reading: true,
        };
        // A fresh stream cannot have been stopped yet.
        let _ = call.outbox.write(&mut self.quic, stream, &out, finish);
        self.calls.insert(stream, call);
        Some(stream)
    }

    /// Opens a call whose bytes the caller frames itself (for tests of how a server treats
    /// malformed input); `None` when no stream is available.
    pub fn start_raw_call(&mut self, bytes: &[u8], finish: bool) -> Option<ClientCallId> {
        let stream = self.quic.streams().open(Dir::Bi)?;
        let mut call = Call {
            decoder: FrameDecoder::new(Side::Response, self.max_message_size),
            outbox: Outbox::default(),
            finished: finish,
            reading: true,
        };
        let _ = call.outbox.write(&mut self.quic, stream, bytes, finish);
        self.calls.insert(stream, call);
        Some(stream)
    }

    /// Sends a further message on a call (bidirectional calls), then FIN if `finish`.
    pub fn send_message(&mut self, call: ClientCallId, message: &[u8], finish: bool) {
        if let Some(state) = self.calls.get_mut(&call) {
            let mut out = Vec::with_capacity(5 + message.len());
            wire::encode_message(message, &mut out);
            state.finished |= finish;
            let _ = state.outbox.write(&mut self.quic, call, &out, finish);
        }
    }

    /// Sends bytes on a call as they are, unframed (for tests of how a server treats
    /// malformed input).
    pub fn send_raw(&mut self, call: ClientCallId, bytes: &[u8]) {
        if let Some(state) = self.calls.get_mut(&call) {
            let _ = state.outbox.write(&mut self.quic, call, bytes, false);
        }
    }

    /// Abandons a call: resets our side and stops reading theirs. No event follows for it.
    pub fn cancel(&mut self, call: ClientCallId) {
        if self.calls.remove(&call).is_some() {
            let _ = self.quic.send_stream(call).reset(CANCEL_CODE);
            let _ = self.quic.recv_stream(call).stop(CANCEL_CODE);
        }
    }

    /// Stops reading a call's response (`false`) or reads it again (`true`). While paused,
    /// what arrives stays in QUIC's receive buffer and no more credit is given, so the server
    /// soon cannot send: a reader that stops reading, for tests of the server's flow control.
    pub fn set_reading(&mut self, call: ClientCallId, reading: bool) {
        let Some(state) = self.calls.get_mut(&call) else {
            return;
        };
        let resumed = reading && !state.reading;
        state.reading = reading;
        if resumed {
            self.read(call);
        }
    }

    /// Calls started and not yet finished.
    pub fn open_calls(&self) -> usize {
        self.calls.len()
    }

    /// Feeds one received datagram.
    pub fn handle_datagram(&mut self, now: Instant, remote: SocketAddr, data: BytesMut) {
        let mut buf = Vec::new();
        if let Some(DatagramEvent::ConnectionEvent(_, event)) = self
            .endpoint
            .handle(now, remote, None, None, data, &mut buf)
        {
            self.quic.handle_event(event);
        }
        self.process();
    }

    /// Lets due timers fire.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.quic.handle_timeout(now);
        self.process();
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// The next datagram(s) to send, into `buf`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        buf.clear();
        self.quic.poll_transmit(now, 1, buf)
    }

    /// When [`RpcClient::handle_timeout`] should next be called.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.quic.poll_timeout()
    }

    fn process(&mut self) {
        while let Some(event) = self.quic.poll_endpoint_events() {
            if let Some(reply) = self.endpoint.handle_event(self.handle, event) {
                self.quic.handle_event(reply);
            }
        }
        while let Some(event) = self.quic.poll() {
            match event {
                Event::Connected => self.events.push_back(ClientEvent::Connected),
                Event::ConnectionLost { reason } if !self.lost => {
                    self.lost = true;
                    for (call, _) in self.calls.drain() {
                        self.events.push_back(ClientEvent::Finished {
                            call,
                            status: Status::new(
                                Code::Unavailable,
                                format!("connection lost: {reason}"),
                            ),
                        });
                    }
                    self.events.push_back(ClientEvent::ConnectionLost {
                        reason: reason.to_string(),
                    });
                }
                Event::Stream(StreamEvent::Readable { id }) => self.read(id),
                Event::Stream(StreamEvent::Writable { id }) => {
                    if let Some(call) = self.calls.get_mut(&id) {
                        let _ = call.outbox.flush(&mut self.quic, id);
                    }
                }
                // The server answered and needs no more of our bytes: free our half.
                Event::Stream(StreamEvent::Stopped { id, error_code }) => {
                    let _ = self.quic.send_stream(id).reset(error_code);
                }
                _ => {}
            }
        }
    }

    fn read(&mut self, id: StreamId) {
        let Some(call) = self.calls.get_mut(&id).filter(|c| c.reading) else {
            return;
        };
        let recv = read_into(&mut self.quic, id, &mut call.decoder);
        let mut ended = None;
        loop {
            match call.decoder.next_frame() {
                Ok(Some(Frame::Message(message))) => self
                    .events
                    .push_back(ClientEvent::Message { call: id, message }),
                Ok(Some(Frame::Trailer(status))) => {
                    ended = Some(status);
                    break;
                }
                Ok(Some(Frame::Head(_))) => {}
                Ok(None) => break,
                Err(error) => {
                    ended = Some(Status::new(
                        Code::Internal,
                        format!("malformed response: {error}"),
                    ));
                    break;
                }
            }
        }
        let ended = ended.or(match recv {
            RecvState::Reset => Some(Status::new(Code::Cancelled, "the server reset the call")),
            RecvState::Finished | RecvState::Closed => Some(Status::new(
                Code::Internal,
                "the server ended the call without a trailer",
            )),
            RecvState::Open => None,
        });
        if let Some(status) = ended {
            if let Some(call) = self.calls.remove(&id) {
                if !call.finished {
                    // The call is over; an open request side would pin the stream.
                    let _ = self.quic.send_stream(id).reset(DONE_CODE);
                }
            }
            self.events
                .push_back(ClientEvent::Finished { call: id, status });
        }
    }
}
