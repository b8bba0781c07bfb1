//! The server's RPC state machine: a quinn-proto endpoint and its connections, turned into calls.
//!
//! No sockets and no clock: the driver passes in datagrams and `now`, and takes out datagrams to
//! send, the next deadline, and [`ServerEvent`]s. Call order for one pass of the driver's loop:
//!
//! 1. [`RpcServer::handle_datagram`] for each received datagram, and/or
//!    [`RpcServer::handle_timeout`] when the deadline from the previous pass has come;
//! 2. [`RpcServer::poll_event`] until `None`, answering what can be answered at once
//!    ([`RpcServer::respond`]) — doing this *before* step 3 lets the ACK of the request ride in
//!    the same datagram as the response instead of costing a datagram of its own;
//! 3. [`RpcServer::poll_transmit`] until `None`;
//! 4. [`RpcServer::poll_timeout`] to arm the timer.
//!
//! Auth and routing happen here, before any event reaches a service: a call with a wrong token,
//! an unknown method or malformed framing is answered by the state machine itself and surfaces
//! only as [`ServerEvent::Rejected`], so nothing behind it runs.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::{
    ConnectionEvent as QuicConnectionEvent, ConnectionHandle, DatagramEvent, Dir, EcnCodepoint,
    Endpoint, Event, StreamEvent, StreamId, Transmit, VarInt,
};

use super::stream::{read_into, Outbox, RecvState, CANCEL_CODE, DONE_CODE};
use crate::auth::Token;
use crate::config::RpcConfig;
use crate::encoding::Encoding;
use crate::schema::Method;
use crate::status::{Code, Status};
use crate::transport;
use crate::wire::{self, Frame, FrameDecoder, Side};

/// Limits and identity a server enforces.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The token every call must present.
    pub token: Token,
    /// Established connections at most; more are refused at the handshake.
    pub max_connections: usize,
    /// Handshakes in progress at most (they do not count against `max_connections`: a peer
    /// without the token must not be able to fill the daemon with handshakes it never ends).
    pub max_handshakes: usize,
    /// Longest a handshake may take before the connection is closed.
    pub handshake_timeout: Duration,
    /// Longest a request may take to arrive whole (head and message) before it is answered
    /// DEADLINE_EXCEEDED and its stream freed.
    pub request_timeout: Duration,
    /// Largest frame accepted, in bytes.
    pub max_message_size: usize,
    /// Bytes of requests still arriving the daemon holds at most, over every connection; past
    /// it, a request that grows is refused with RESOURCE_EXHAUSTED and its bytes dropped.
    pub max_buffered_requests: usize,
    /// The QUIC receive window a connection gets once it presents the token (until then it
    /// has [`transport::UNAUTHENTICATED_WINDOW`], set by [`transport::server_config`]).
    pub connection_window: VarInt,
    /// Calls a connection may have open at once once it has completed its handshake and
    /// presented the token (until then [`transport::UNAUTHENTICATED_STREAMS`]).
    pub max_concurrent_calls: VarInt,
}

impl ServerSettings {
    /// The settings `[rpc]` gives, with `token`.
    pub fn from_config(token: Token, rpc: &RpcConfig) -> ServerSettings {
        ServerSettings {
            token,
            max_connections: rpc.max_connections.get() as usize,
            max_handshakes: rpc.max_handshakes.get() as usize,
            handshake_timeout: Duration::from_millis(rpc.handshake_timeout.get()),
            request_timeout: Duration::from_millis(rpc.request_timeout.get()),
            max_message_size: rpc.max_message_size.get() as usize,
            max_buffered_requests: rpc.max_buffered_requests.get() as usize,
            connection_window: transport::connection_window(rpc),
            max_concurrent_calls: VarInt::from_u32(rpc.max_concurrent_calls.get()),
        }
    }
}

/// One call's share of the bytes held for requests still arriving, kept in a total shared by
/// every call; it leaves the total however the call ends (the drop does it).
#[derive(Debug)]
struct Held {
    total: Arc<AtomicUsize>,
    mine: usize,
}

impl Held {
    fn set(&mut self, bytes: usize) {
        if bytes >= self.mine {
            self.total.fetch_add(bytes - self.mine, Ordering::Relaxed);
        } else {
            self.total.fetch_sub(self.mine - bytes, Ordering::Relaxed);
        }
        self.mine = bytes;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.total.fetch_sub(self.mine, Ordering::Relaxed);
    }
}

/// Answers that belong to no connection waiting to be sent, at most (see
/// `RpcServer::queue_stateless`).
const MAX_STATELESS: usize = 256;

/// Handshakes in progress from one address (IP and port) at most: one UDP socket sending
/// Initials and never finishing them gets this many slots, not all of them.
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 4;
/// With this share of `max_handshakes` in progress, an unvalidated address is sent a Retry
/// (stateless: no slot is taken until the peer proves it receives at its address).
const RETRY_FROM: usize = 4; // one quarter
/// How often requests still arriving are checked against `request_timeout`: a sweep a second
/// while any call is open, rather than a deadline per stream on every pass.
const REQUEST_SWEEP: Duration = Duration::from_secs(1);
/// At `max_connections`, an authenticated connection silent this long with no call open makes
/// room for a new one. A live reaper-client pings every 2 s (`transport::CLIENT_KEEP_ALIVE`);
/// a client killed without closing sends nothing, and a client that asks for a long idle
/// timeout would otherwise hold its slot for all of it (300 s by default).
pub const SILENT_GIVES_WAY_AFTER: Duration = Duration::from_secs(15);
/// Bytes of one call's response the server holds beyond what QUIC has taken, at most (plus
/// one message): past it, [`RpcServer::send_message`] answers [`Sent::WouldBlock`] and the
/// producer waits for [`ServerEvent::Writable`]. What QUIC itself holds is bounded by the
/// client's stream window, so a reader that stops reading costs the daemon at most that window
/// and this per streamed call, however long the producer goes on.
pub const MAX_UNSENT_PER_CALL: usize = 64 * 1024;
/// A producer told to wait is told to go on once the call's unsent bytes are down to this:
/// half the budget, so that a slow reader wakes it once per half budget, not per datagram.
const WRITABLE_AT: usize = MAX_UNSENT_PER_CALL / 2;

/// What became of a message given to [`RpcServer::send_message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a message refused with WouldBlock must be sent again after ServerEvent::Writable"]
pub enum Sent {
    /// Queued for the client.
    Sent,
    /// Not taken: the call already holds [`MAX_UNSENT_PER_CALL`] bytes the client has not
    /// read. Keep the message, and send it again on [`ServerEvent::Writable`] for the call.
    WouldBlock,
    /// The call is over (cancelled, or already answered): stop producing for it.
    Closed,
}

/// One call: a stream on a connection. Cheap to copy; stays unique while the call lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CallId {
    conn: ConnectionHandle,
    stream: StreamId,
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}/s{}", self.conn.0, self.stream.index())
    }
}

/// A connection, as services see it (for per-connection state such as superseding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(ConnectionHandle);

impl ConnId {
    /// A connection id for tests of code that keys state by connection.
    #[doc(hidden)]
    pub fn for_tests(n: usize) -> ConnId {
        ConnId(ConnectionHandle(n))
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0 .0)
    }
}

impl CallId {
    /// The connection the call came on.
    pub fn connection(&self) -> ConnId {
        ConnId(self.conn)
    }
}

/// A call whose head and first message have arrived and passed auth and routing.
#[derive(Debug)]
pub struct IncomingCall {
    /// Which call, for answering it.
    pub id: CallId,
    /// The method called.
    pub method: Method,
    /// Encoding of the messages, both ways.
    pub encoding: Encoding,
    /// When the client stops waiting, if it said.
    pub deadline: Option<Instant>,
    /// When the head arrived.
    pub received_at: Instant,
    /// The first message; shares the received datagram's memory when it arrived whole.
    pub message: Bytes,
}

/// What the state machine tells its driver.
#[derive(Debug)]
#[must_use = "calls must be answered and connection changes logged"]
pub enum ServerEvent {
    /// A client finished its handshake. On a connection that resumed with 0-RTT data, calls
    /// that may be served early ([`Method::replay_safe`]) can come before this event.
    Connected {
        /// The connection.
        conn: ConnId,
        /// Who it is.
        remote: SocketAddr,
        /// Whether the client resumed an earlier session and the daemon took its 0-RTT data.
        early_data: bool,
    },
    /// A connection ended (closed, timed out or lost): one that was `Connected`, or one that
    /// had calls served from 0-RTT data before its handshake failed.
    Disconnected {
        /// The connection.
        conn: ConnId,
        /// Why, as QUIC tells it.
        reason: String,
        /// What the connection went through (packets, losses, RTT), for the log.
        stats: Box<quinn_proto::ConnectionStats>,
    },
    /// A handshake was refused (connection limit or draining).
    Refused {
        /// Who tried.
        remote: SocketAddr,
        /// Why.
        reason: &'static str,
    },
    /// A new call to serve.
    Call(IncomingCall),
    /// A further message on a call already started (agent control messages: only methods
    /// whose client streams get further messages; on the others a second message is refused).
    Message {
        /// The call.
        id: CallId,
        /// The message.
        message: Bytes,
    },
    /// A call whose producer was told [`Sent::WouldBlock`] can take messages again.
    Writable {
        /// The call.
        id: CallId,
    },
    /// The client has sent everything it will send on this call.
    HalfClosed {
        /// The call.
        id: CallId,
    },
    /// The client cancelled the call (stream reset or stop, or its connection was lost): stop
    /// the work behind it; answering it is no longer possible or needed.
    Cancelled {
        /// The call.
        id: CallId,
    },
    /// A call the state machine answered itself with an error (auth, routing, framing).
    Rejected {
        /// The method, when the head named a known one.
        method: Option<Method>,
        /// The status sent.
        status: Status,
        /// When it arrived, for latency metrics.
        received_at: Instant,
        /// The call, when it had been handed to the driver already (a second message, a
        /// frame over the limit): stop the work behind it. This status is how it ended; no
        /// `Cancelled` follows.
        started: Option<CallId>,
    },
}

#[derive(Debug)]
enum Phase {
    /// Waiting for the head.
    Head,
    /// Head accepted, waiting for the first message.
    Message {
        method: Method,
        encoding: Encoding,
        deadline: Option<Instant>,
    },
    /// Head accepted from 0-RTT data for a method that may not be served early
    /// ([`Method::replay_safe`]): what follows is taken from QUIC into the decoder (counted
    /// against the budget) but not decoded until the handshake completes (a replay never
    /// completes one); then the call goes on as `Message`.
    Early {
        method: Method,
        encoding: Encoding,
        deadline: Option<Instant>,
    },
    /// Handed to the driver; further messages are passed on.
    Started { method: Method, encoding: Encoding },
    /// Answered; only leftover bytes may still be flushing.
    Answered,
}

impl Phase {
    /// The method, once the head has named one.
    fn method(&self) -> Option<Method> {
        match *self {
            Phase::Message { method, .. }
            | Phase::Early { method, .. }
            | Phase::Started { method, .. } => Some(method),
            Phase::Head | Phase::Answered => None,
        }
    }
}

#[derive(Debug)]
struct CallState {
    /// What its decoder holds, counted against `max_buffered_requests`.
    held: Held,
    phase: Phase,
    decoder: FrameDecoder,
    outbox: Outbox,
    received_at: Instant,
    recv_done: bool,
    /// The client's FIN has been read (kept for a call held in [`Phase::Early`], whose
    /// `HalfClosed` waits for its start).
    fin: bool,
    /// A producer was told [`Sent::WouldBlock`] and waits for [`ServerEvent::Writable`].
    blocked: bool,
}

struct Conn {
    quic: quinn_proto::Connection,
    calls: HashMap<StreamId, CallState>,
    connected: bool,
    /// When the handshake began (its timeout runs from here).
    accepted_at: Instant,
    /// Closed by the server (a handshake out of time) or lost: no longer counted.
    closing: bool,
    /// Whether a call on it has presented the token. Until one has, the connection is the
    /// first to go when the limit is reached: completing a handshake takes no token.
    authenticated: bool,
    /// When a datagram last arrived for it.
    last_heard: Instant,
    /// A call was handed to the driver before the handshake completed (0-RTT data): the driver
    /// hears `Disconnected` even if the handshake then fails.
    served_early: bool,
}

impl Conn {
    fn handshaking(&self) -> bool {
        !self.connected && !self.closing
    }
}

/// Raises a connection's limit on open calls to `max_concurrent_calls`: once it has both
/// completed its handshake and presented the token (see [`transport::UNAUTHENTICATED_STREAMS`]),
/// as the second of the two happens.
fn open_up_streams(quic: &mut quinn_proto::Connection, settings: &ServerSettings) {
    quic.set_max_concurrent_streams(Dir::Bi, settings.max_concurrent_calls);
}

/// The server's RPC state machine (see the module docs for the call order).
pub struct RpcServer {
    endpoint: Endpoint,
    server_config: Arc<quinn_proto::ServerConfig>,
    settings: ServerSettings,
    conns: HashMap<ConnectionHandle, Conn>,
    /// When requests still arriving are next checked (see [`REQUEST_SWEEP`]).
    next_sweep: Option<Instant>,
    /// The latest `now` the driver passed in (the state machine has no clock of its own).
    last_now: Option<Instant>,
    events: VecDeque<ServerEvent>,
    stateless: VecDeque<(Transmit, Bytes)>,
    /// Connections to visit first in `poll_transmit` (touched since the last pass).
    transmit_order: Vec<ConnectionHandle>,
    draining: bool,
    in_flight: usize,
    /// Bytes held for requests still arriving, over every connection.
    held: Arc<AtomicUsize>,
    scratch: Vec<u8>,
}

impl fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcServer")
            .field("connections", &self.conns.len())
            .field("in_flight", &self.in_flight)
            .field("draining", &self.draining)
            .finish()
    }
}

impl RpcServer {
    /// A server with the given QUIC configuration and limits.
    pub fn new(
        endpoint_config: quinn_proto::EndpointConfig,
        server_config: quinn_proto::ServerConfig,
        settings: ServerSettings,
    ) -> RpcServer {
        let server_config = Arc::new(server_config);
        RpcServer {
            endpoint: Endpoint::new(
                Arc::new(endpoint_config),
                Some(server_config.clone()),
                true,
                None,
            ),
            server_config,
            settings,
            conns: HashMap::new(),
            next_sweep: None,
            last_now: None,
            events: VecDeque::new(),
            stateless: VecDeque::new(),
            transmit_order: Vec::new(),
            draining: false,
            in_flight: 0,
            held: Arc::new(AtomicUsize::new(0)),
            scratch: Vec::new(),
        }
    }

    // ---- getters ----

    /// Connections that finished their handshake, or had calls served from 0-RTT data before
    /// it, and are still open.
    pub fn connection_count(&self) -> usize {
        self.conns
            .values()
            .filter(|c| (c.connected || c.served_early) && !c.closing)
            .count()
    }

    /// Bytes held for requests still arriving, over every connection.
    pub fn buffered_request_bytes(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Handshakes in progress.
    pub fn handshake_count(&self) -> usize {
        self.conns.values().filter(|c| c.handshaking()).count()
    }

    /// Calls handed to the driver and not yet answered or cancelled.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Calls answered whose response the client has not acknowledged yet (still in QUIC's
    /// send buffer). A drain waits for these too, so no answer is lost at shutdown.
    pub fn unacknowledged(&self) -> usize {
        self.conns
            .values()
            .flat_map(|c| c.calls.values())
            .filter(|call| matches!(call.phase, Phase::Answered))
            .count()
    }

    /// Whether [`RpcServer::begin_drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Whether every connection has closed completely.
    pub fn is_idle(&self) -> bool {
        self.conns.is_empty()
    }

    // ---- input ----

    /// Feeds one received UDP datagram.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<EcnCodepoint>,
        data: BytesMut,
    ) {
        self.last_now = Some(now);
        let mut buf = Vec::new();
        match self
            .endpoint
            .handle(now, remote, local_ip, ecn, data, &mut buf)
        {
            Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                self.handle_connection_event(now, handle, event)
            }
            Some(DatagramEvent::NewConnection(incoming)) => self.accept(now, incoming),
            Some(DatagramEvent::Response(transmit)) => {
                self.queue_stateless(transmit, buf);
            }
            None => {}
        }
    }

    /// Queues an answer that belongs to no connection (version negotiation, Retry, a refusal,
    /// a stateless reset), unless [`MAX_STATELESS`] are already waiting: a flood of packets
    /// that each earn one must not grow the queue faster than the loop sends it. A dropped
    /// answer is one the peer's next packet earns again.
    fn queue_stateless(&mut self, transmit: Transmit, buf: Vec<u8>) {
        if self.stateless.len() >= MAX_STATELESS {
            tracing::debug!("stateless answer dropped: {MAX_STATELESS} already waiting");
            return;
        }
        self.stateless.push_back((transmit, Bytes::from(buf)));
    }

    /// Lets timers that have come due fire.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = Some(now);
        let limit = self.settings.handshake_timeout;
        let late: Vec<ConnectionHandle> = self
            .conns
            .iter()
            .filter(|(_, c)| c.handshaking() && now >= c.accepted_at + limit)
            .map(|(h, _)| *h)
            .collect();
        for handle in late {
            self.close_refused(now, handle, "handshake timed out ([rpc] handshake_timeout)");
            self.process(now, handle);
        }
        if self.next_sweep.is_some_and(|t| now >= t) {
            self.next_sweep = None;
            self.expire_requests(now);
        }
        let due: Vec<ConnectionHandle> = self
            .conns
            .iter_mut()
            .filter_map(|(h, c)| {
                c.quic
                    .poll_timeout()
                    .is_some_and(|t| t <= now)
                    .then_some(*h)
            })
            .collect();
        for handle in due {
            if let Some(conn) = self.conns.get_mut(&handle) {
                conn.quic.handle_timeout(now);
            }
            self.process(now, handle);
        }
    }

    // ---- mutators ----

    /// Answers a call with one message and OK, then ends it: the whole reply is framed into one
    /// buffer and handed to QUIC with one write. `encode` appends the message (in the call's
    /// encoding) to the buffer it is given; if it fails, the call ends with its status instead.
    /// Returns the status sent, or `None` if the call was no longer open (cancelled meanwhile).
    pub fn respond<F>(&mut self, id: CallId, encode: F) -> Option<Status>
    where
        F: FnOnce(&mut Vec<u8>) -> Result<(), Status>,
    {
        if !self.is_open(id) {
            return None;
        }
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        wire::encode_message_header(0, &mut out);
        let status = match encode(&mut out) {
            Ok(()) => {
                wire::patch_message_len(&mut out, 0);
                Status::ok()
            }
            Err(status) => {
                out.clear();
                status
            }
        };
        wire::encode_trailer(&status, &mut out);
        self.write(id, &out, true);
        self.scratch = out;
        Some(status)
    }

    /// Sends one message of a streamed response, encoded by `encode` (called only if the
    /// message is taken). A call whose client reads slower than the producer writes holds at
    /// most [`MAX_UNSENT_PER_CALL`] bytes here: past that the message is refused with
    /// [`Sent::WouldBlock`], and [`ServerEvent::Writable`] follows once the client has read.
    pub fn send_message<F>(&mut self, id: CallId, encode: F) -> Sent
    where
        F: FnOnce(&mut Vec<u8>),
    {
        let Some(call) = self
            .conns
            .get_mut(&id.conn)
            .and_then(|c| c.calls.get_mut(&id.stream))
            .filter(|call| matches!(call.phase, Phase::Started { .. }))
        else {
            return Sent::Closed;
        };
        if call.outbox.unsent() >= MAX_UNSENT_PER_CALL {
            call.blocked = true;
            return Sent::WouldBlock;
        }
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        wire::encode_message_header(0, &mut out);
        encode(&mut out);
        wire::patch_message_len(&mut out, 0);
        self.write(id, &out, false);
        self.scratch = out;
        if self.is_open(id) {
            Sent::Sent
        } else {
            // The client had stopped the stream: the write found out.
            Sent::Closed
        }
    }

    /// Bytes of a call's response written and not yet taken by QUIC (0 for a call that is
    /// over).
    pub fn unsent(&self, id: CallId) -> usize {
        self.conns
            .get(&id.conn)
            .and_then(|c| c.calls.get(&id.stream))
            .map_or(0, |call| call.outbox.unsent())
    }

    /// Abandons a call without a trailer: its stream is reset (code 1) both ways, and the
    /// client sees it cancelled. For a call the daemon can no longer answer at all; any call
    /// that can be answered gets a trailer instead ([`RpcServer::finish`]), which says why.
    /// Returns false if the call was no longer open.
    pub fn reset(&mut self, id: CallId) -> bool {
        if !self.is_open(id) {
            return false;
        }
        let Some(conn) = self.conns.get_mut(&id.conn) else {
            return false;
        };
        let _ = conn.quic.send_stream(id.stream).reset(CANCEL_CODE);
        if let Some(call) = conn.calls.remove(&id.stream) {
            if !call.recv_done {
                let _ = conn.quic.recv_stream(id.stream).stop(CANCEL_CODE);
            }
        }
        self.in_flight -= 1;
        if self.transmit_order.last() != Some(&id.conn) {
            self.transmit_order.push(id.conn);
        }
        true
    }

    /// Ends a call with `status` and no (further) message. Returns false if the call was no
    /// longer open.
    pub fn finish(&mut self, id: CallId, status: &Status) -> bool {
        if !self.is_open(id) {
            return false;
        }
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        wire::encode_trailer(status, &mut out);
        self.write(id, &out, true);
        self.scratch = out;
        true
    }

    /// The encoding of a call that can still be answered.
    pub fn encoding_of(&self, id: CallId) -> Option<Encoding> {
        match self.conns.get(&id.conn)?.calls.get(&id.stream)?.phase {
            Phase::Started { encoding, .. } => Some(encoding),
            _ => None,
        }
    }

    /// Whether a call handed to the driver can still be answered.
    pub fn is_open(&self, id: CallId) -> bool {
        self.conns
            .get(&id.conn)
            .and_then(|c| c.calls.get(&id.stream))
            .is_some_and(|call| matches!(call.phase, Phase::Started { .. }))
    }

    /// Stops taking new connections and calls: new handshakes are refused, and calls that start
    /// on open connections are answered UNAVAILABLE. Calls in flight run on.
    pub fn begin_drain(&mut self) {
        self.draining = true;
    }

    /// Closes every connection (end of shutdown); `poll_transmit` then yields the closes.
    pub fn close_all(&mut self, now: Instant) {
        for conn in self.conns.values_mut() {
            conn.quic.close(
                now,
                VarInt::from_u32(0),
                Bytes::from_static(b"daemon shutting down"),
            );
        }
        let handles: Vec<_> = self.conns.keys().copied().collect();
        for handle in handles {
            self.process(now, handle);
        }
    }

    // ---- output ----

    /// The next thing the driver must act on.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// The next datagram(s) to send, written into `buf` (several of `segment_size` each when
    /// `max_datagrams > 1`, for GSO).
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit> {
        if let Some((transmit, data)) = self.stateless.pop_front() {
            buf.clear();
            buf.extend_from_slice(&data);
            return Some(transmit);
        }
        while let Some(&handle) = self.transmit_order.last() {
            if let Some(conn) = self.conns.get_mut(&handle) {
                buf.clear();
                if let Some(transmit) = conn.quic.poll_transmit(now, max_datagrams, buf) {
                    return Some(transmit);
                }
            }
            self.transmit_order.pop();
        }
        // Timers and stream credit can make any connection want to send: check all once.
        for conn in self.conns.values_mut() {
            buf.clear();
            if let Some(transmit) = conn.quic.poll_transmit(now, max_datagrams, buf) {
                return Some(transmit);
            }
        }
        None
    }

    /// When [`RpcServer::handle_timeout`] should next be called.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let limit = self.settings.handshake_timeout;
        let mut calls_open = false;
        let earliest = self
            .conns
            .values_mut()
            .flat_map(|c| {
                calls_open |= !c.calls.is_empty();
                let handshake = c.handshaking().then_some(c.accepted_at + limit);
                c.quic.poll_timeout().into_iter().chain(handshake)
            })
            .min();
        if !calls_open {
            self.next_sweep = None;
        } else if self.next_sweep.is_none() {
            // Armed relative to the last timer or datagram the caller handled: a call opened
            // now is checked within a second after its timeout.
            self.next_sweep = self.last_now.map(|t| t + REQUEST_SWEEP);
        }
        earliest.into_iter().chain(self.next_sweep).min()
    }

    // ---- internals ----

    fn accept(&mut self, now: Instant, incoming: quinn_proto::Incoming) {
        let remote = incoming.remote_address();
        // One pass: handshakes in progress, and how many of them come from this address.
        let (handshakes, from_remote) =
            self.conns
                .values()
                .filter(|c| c.handshaking())
                .fold((0, 0), |(all, here), c| {
                    (
                        all + 1,
                        here + usize::from(c.quic.remote_address() == remote),
                    )
                });
        let refusal = if self.draining {
            Some("daemon is shutting down")
        } else if self.connection_count() >= self.settings.max_connections
            && !self.make_room(now, None)
        {
            Some("connection limit reached ([rpc] max_connections)")
        } else if handshakes >= self.settings.max_handshakes && !self.evict_oldest_handshake(now) {
            Some("too many handshakes in progress ([rpc] max_handshakes)")
        } else if from_remote >= MAX_HANDSHAKES_PER_ADDRESS {
            Some("too many handshakes in progress from this address")
        } else {
            None
        };
        let mut buf = Vec::new();
        if refusal.is_none()
            && handshakes >= self.settings.max_handshakes / RETRY_FROM
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            // Handshakes are piling up: make the peer prove its address first, statelessly.
            tracing::debug!(%remote, handshakes, "handshakes piling up: Retry sent");
            match self.endpoint.retry(incoming, &mut buf) {
                Ok(transmit) => self.queue_stateless(transmit, buf),
                Err(error) => {
                    let incoming = error.into_incoming();
                    let transmit = self.endpoint.refuse(incoming, &mut buf);
                    self.queue_stateless(transmit, buf);
                }
            }
            return;
        }
        if let Some(reason) = refusal {
            let transmit = self.endpoint.refuse(incoming, &mut buf);
            self.queue_stateless(transmit, buf);
            self.events
                .push_back(ServerEvent::Refused { remote, reason });
            return;
        }
        match self
            .endpoint
            .accept(incoming, now, &mut buf, Some(self.server_config.clone()))
        {
            Ok((handle, quic)) => {
                self.conns.insert(
                    handle,
                    Conn {
                        quic,
                        calls: HashMap::new(),
                        connected: false,
                        accepted_at: now,
                        closing: false,
                        authenticated: false,
                        last_heard: now,
                        served_early: false,
                    },
                );
                self.process(now, handle);
            }
            Err(error) => {
                if let Some(transmit) = error.response {
                    self.queue_stateless(transmit, buf);
                }
                self.events.push_back(ServerEvent::Refused {
                    remote,
                    reason: "handshake could not start",
                });
            }
        }
    }

    fn handle_connection_event(
        &mut self,
        now: Instant,
        handle: ConnectionHandle,
        event: QuicConnectionEvent,
    ) {
        if let Some(conn) = self.conns.get_mut(&handle) {
            conn.last_heard = now;
            conn.quic.handle_event(event);
            self.process(now, handle);
        }
    }

    /// Runs a connection's pending work: endpoint bookkeeping, then its events.
    fn process(&mut self, now: Instant, handle: ConnectionHandle) {
        let mut connected_now = false;
        let held = self.held.clone();
        let Some(conn) = self.conns.get_mut(&handle) else {
            return;
        };
        while let Some(event) = conn.quic.poll_endpoint_events() {
            if let Some(reply) = self.endpoint.handle_event(handle, event) {
                conn.quic.handle_event(reply);
            }
        }
        while let Some(event) = conn.quic.poll() {
            match event {
                Event::Connected => {
                    conn.connected = true;
                    connected_now = true;
                    if conn.authenticated {
                        open_up_streams(&mut conn.quic, &self.settings);
                    }
                    self.events.push_back(ServerEvent::Connected {
                        conn: ConnId(handle),
                        remote: conn.quic.remote_address(),
                        early_data: conn.quic.has_0rtt(),
                    });
                    Self::release_early(
                        conn,
                        handle,
                        &self.settings,
                        self.draining,
                        &mut self.events,
                        &mut self.in_flight,
                    );
                }
                Event::ConnectionLost { reason } => Self::conn_ended(
                    conn,
                    handle,
                    reason.to_string(),
                    &mut self.events,
                    &mut self.in_flight,
                ),
                Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                    while let Some(stream) = conn.quic.streams().accept(Dir::Bi) {
                        conn.calls.insert(
                            stream,
                            CallState {
                                held: Held {
                                    total: held.clone(),
                                    mine: 0,
                                },
                                phase: Phase::Head,
                                decoder: FrameDecoder::new(
                                    Side::Request,
                                    self.settings.max_message_size,
                                ),
                                outbox: Outbox::default(),
                                received_at: now,
                                recv_done: false,
                                fin: false,
                                blocked: false,
                            },
                        );
                        Self::read_call(
                            conn,
                            handle,
                            stream,
                            &self.settings,
                            self.draining,
                            &mut self.events,
                            &mut self.in_flight,
                        );
                    }
                }
                Event::Stream(StreamEvent::Readable { id }) => Self::read_call(
                    conn,
                    handle,
                    id,
                    &self.settings,
                    self.draining,
                    &mut self.events,
                    &mut self.in_flight,
                ),
                Event::Stream(StreamEvent::Writable { id }) => {
                    if let Some(call) = conn.calls.get_mut(&id) {
                        if call.outbox.flush(&mut conn.quic, id).is_err() {
                            let _ = conn.quic.send_stream(id).reset(CANCEL_CODE);
                            Self::forget(conn, handle, id, &mut self.events, &mut self.in_flight);
                        } else if call.blocked
                            && call.outbox.unsent() <= WRITABLE_AT
                            && matches!(call.phase, Phase::Started { .. })
                        {
                            call.blocked = false;
                            self.events.push_back(ServerEvent::Writable {
                                id: CallId {
                                    conn: handle,
                                    stream: id,
                                },
                            });
                        }
                    }
                }
                // Everything we sent on the stream has been acknowledged: the call is over.
                Event::Stream(StreamEvent::Finished { id }) => {
                    if let Some(call) = conn.calls.get(&id) {
                        if matches!(call.phase, Phase::Answered) {
                            conn.calls.remove(&id);
                        }
                    }
                }
                Event::Stream(StreamEvent::Stopped { id, error_code }) => {
                    // quinn-proto leaves the send half open after STOP_SENDING; resetting it
                    // frees the stream and returns the client's stream credit.
                    let _ = conn.quic.send_stream(id).reset(error_code);
                    Self::forget(conn, handle, id, &mut self.events, &mut self.in_flight);
                }
                Event::Stream(_) | Event::HandshakeDataReady => {}
                Event::DatagramReceived | Event::DatagramsUnblocked => {}
            }
        }
        if conn.quic.is_drained() {
            self.conns.remove(&handle);
            return;
        }
        if self.transmit_order.last() != Some(&handle) {
            self.transmit_order.push(handle);
        }
        // Handshakes run concurrently, so more may finish than `max_connections` allows: the
        // limit is enforced again as each one does.
        if connected_now && self.connection_count() > self.settings.max_connections {
            let room = self.make_room(now, Some(handle));
            if !room {
                self.close_refused(
                    now,
                    handle,
                    "connection limit reached ([rpc] max_connections)",
                );
            }
        }
    }

    /// Closes an established connection other than `keep` to make room at the limit; whether
    /// there was one to close. First one that has never presented the token (the oldest), then
    /// one silent for [`SILENT_GIVES_WAY_AFTER`] with no call open (the longest silent).
    fn make_room(&mut self, now: Instant, keep: Option<ConnectionHandle>) -> bool {
        let open = |h: &ConnectionHandle, c: &Conn| c.connected && !c.closing && Some(*h) != keep;
        let unauthenticated = self
            .conns
            .iter()
            .filter(|(h, c)| open(h, c) && !c.authenticated)
            .min_by_key(|(_, c)| c.accepted_at)
            .map(|(h, _)| *h);
        if let Some(victim) = unauthenticated {
            self.close_refused(
                now,
                victim,
                "closed to make room: connected without ever presenting the token",
            );
            return true;
        }
        let silent = self
            .conns
            .iter()
            .filter(|(h, c)| {
                // An answered call waits only for its acknowledgement, which a dead client
                // never sends.
                let idle = c
                    .calls
                    .values()
                    .all(|call| matches!(call.phase, Phase::Answered));
                open(h, c)
                    && idle
                    && now.saturating_duration_since(c.last_heard) >= SILENT_GIVES_WAY_AFTER
            })
            .min_by_key(|(_, c)| c.last_heard)
            .map(|(h, _)| *h);
        if let Some(victim) = silent {
            self.close_refused(
                now,
                victim,
                "closed to make room: silent with no call open (a client that died?)",
            );
            return true;
        }
        false
    }

    /// Closes the oldest handshake in progress to make room for a new one; whether there was
    /// one. A real handshake on loopback takes about a millisecond, so the oldest one is the
    /// likeliest to be abandoned.
    fn evict_oldest_handshake(&mut self, now: Instant) -> bool {
        let victim = self
            .conns
            .iter()
            .filter(|(_, c)| c.handshaking())
            .min_by_key(|(_, c)| c.accepted_at)
            .map(|(h, _)| *h);
        match victim {
            Some(victim) => {
                self.close_refused(now, victim, "handshake evicted: too many in progress");
                true
            }
            None => false,
        }
    }

    /// Lets the calls held from 0-RTT data go on, now that the handshake has completed (so none
    /// of them is a replay); during a drain they are refused, as a new call would be.
    fn release_early(
        conn: &mut Conn,
        handle: ConnectionHandle,
        settings: &ServerSettings,
        draining: bool,
        events: &mut VecDeque<ServerEvent>,
        in_flight: &mut usize,
    ) {
        let held: Vec<StreamId> = conn
            .calls
            .iter()
            .filter(|(_, call)| matches!(call.phase, Phase::Early { .. }))
            .map(|(stream, _)| *stream)
            .collect();
        for stream in held {
            let Some(call) = conn.calls.get_mut(&stream) else {
                continue;
            };
            let Phase::Early {
                method,
                encoding,
                deadline,
            } = call.phase
            else {
                continue;
            };
            let id = CallId {
                conn: handle,
                stream,
            };
            if draining {
                let status = Status::new(Code::Unavailable, "daemon is shutting down");
                Self::reject(conn, id, Some(method), status, events, in_flight);
                continue;
            }
            call.phase = Phase::Message {
                method,
                encoding,
                deadline,
            };
            Self::read_call(conn, handle, stream, settings, draining, events, in_flight);
        }
    }

    /// What the driver must hear of a connection that is over (lost, or closed by the server,
    /// which quinn-proto reports no `ConnectionLost` for): the calls it was serving are
    /// cancelled, and it is `Disconnected` if the driver knew of it.
    fn conn_ended(
        conn: &mut Conn,
        handle: ConnectionHandle,
        reason: String,
        events: &mut VecDeque<ServerEvent>,
        in_flight: &mut usize,
    ) {
        for (stream, call) in conn.calls.drain() {
            if matches!(call.phase, Phase::Started { .. }) {
                *in_flight -= 1;
                let id = CallId {
                    conn: handle,
                    stream,
                };
                events.push_back(ServerEvent::Cancelled { id });
            }
        }
        if conn.connected || conn.served_early {
            events.push_back(ServerEvent::Disconnected {
                conn: ConnId(handle),
                reason,
                stats: Box::new(conn.quic.stats()),
            });
        }
        conn.connected = false;
        conn.served_early = false;
        conn.closing = true;
    }

    /// Closes a connection the server gives up on, telling the driver why.
    fn close_refused(&mut self, now: Instant, handle: ConnectionHandle, reason: &'static str) {
        let Some(conn) = self.conns.get_mut(&handle) else {
            return;
        };
        Self::conn_ended(
            conn,
            handle,
            format!("closed by the daemon: {reason}"),
            &mut self.events,
            &mut self.in_flight,
        );
        conn.quic.close(
            now,
            VarInt::from_u32(0),
            Bytes::from_static(reason.as_bytes()),
        );
        self.events.push_back(ServerEvent::Refused {
            remote: conn.quic.remote_address(),
            reason,
        });
        if self.transmit_order.last() != Some(&handle) {
            self.transmit_order.push(handle);
        }
    }

    /// Forgets a call whose stream is gone; one handed to the driver is reported cancelled.
    fn forget(
        conn: &mut Conn,
        handle: ConnectionHandle,
        stream: StreamId,
        events: &mut VecDeque<ServerEvent>,
        in_flight: &mut usize,
    ) {
        if let Some(call) = conn.calls.remove(&stream) {
            if matches!(call.phase, Phase::Started { .. }) {
                *in_flight -= 1;
                events.push_back(ServerEvent::Cancelled {
                    id: CallId {
                        conn: handle,
                        stream,
                    },
                });
            }
        }
    }

    /// Reads what arrived on one call's stream and advances the call.
    #[allow(clippy::too_many_arguments)]
    fn read_call(
        conn: &mut Conn,
        handle: ConnectionHandle,
        stream: StreamId,
        settings: &ServerSettings,
        draining: bool,
        events: &mut VecDeque<ServerEvent>,
        in_flight: &mut usize,
    ) {
        let id = CallId {
            conn: handle,
            stream,
        };
        let Some(call) = conn.calls.get_mut(&stream) else {
            // A call already answered and forgotten: tell the client to stop sending.
            let _ = conn.quic.recv_stream(stream).stop(DONE_CODE);
            return;
        };
        let recv = read_into(&mut conn.quic, stream, &mut call.decoder);
        if matches!(call.phase, Phase::Answered) {
            // Answered already: later bytes are not wanted, and a reset of the request side
            // must not abort the response still on its way.
            call.decoder.clear();
            call.held.set(0);
            call.recv_done |= recv != RecvState::Open;
            return;
        }
        if recv == RecvState::Reset {
            if matches!(call.phase, Phase::Started { .. }) {
                *in_flight -= 1;
                events.push_back(ServerEvent::Cancelled { id });
            }
            let _ = conn.quic.send_stream(stream).reset(CANCEL_CODE);
            conn.calls.remove(&stream);
            return;
        }
        call.fin |= recv == RecvState::Finished;
        let mut rejection = None;
        loop {
            if matches!(call.phase, Phase::Early { .. }) {
                // Held until the handshake completes: the rest stays in the decoder.
                break;
            }
            match call.decoder.next_frame() {
                Ok(Some(Frame::Head(head))) => {
                    // The token first: a caller without it learns nothing, not even which
                    // methods exist.
                    let verified = settings.token.verify(&head.token);
                    if verified && !conn.authenticated {
                        // The window a connection without the token had is opened up now.
                        conn.authenticated = true;
                        conn.quic.set_receive_window(settings.connection_window);
                        if conn.connected {
                            open_up_streams(&mut conn.quic, settings);
                        }
                    }
                    if !verified {
                        let status = Status::new(
                            Code::Unauthenticated,
                            "wrong token: read it from the daemon's state directory (token file)",
                        );
                        rejection = Some((Method::from_path(&head.method), status));
                        break;
                    }
                    let Some(method) = Method::from_path(&head.method) else {
                        rejection = Some((
                            None,
                            Status::new(
                                Code::Unimplemented,
                                format!(
                                    "unknown method {:?}",
                                    String::from_utf8_lossy(&head.method)
                                ),
                            ),
                        ));
                        break;
                    };
                    if draining {
                        rejection = Some((
                            Some(method),
                            Status::new(Code::Unavailable, "daemon is shutting down"),
                        ));
                        break;
                    }
                    let deadline = (head.deadline_ms > 0)
                        .then(|| call.received_at + Duration::from_millis(head.deadline_ms as u64));
                    call.phase = if conn.connected || method.replay_safe() {
                        Phase::Message {
                            method,
                            encoding: head.encoding,
                            deadline,
                        }
                    } else {
                        Phase::Early {
                            method,
                            encoding: head.encoding,
                            deadline,
                        }
                    };
                }
                Ok(Some(Frame::Message(message))) => {
                    match call.phase {
                        Phase::Message {
                            method,
                            encoding,
                            deadline,
                        } => {
                            call.phase = Phase::Started { method, encoding };
                            *in_flight += 1;
                            conn.served_early |= !conn.connected;
                            events.push_back(ServerEvent::Call(IncomingCall {
                                id,
                                method,
                                encoding,
                                deadline,
                                received_at: call.received_at,
                                message,
                            }));
                        }
                        Phase::Started { method, .. } if method.client_streams() => {
                            events.push_back(ServerEvent::Message { id, message })
                        }
                        Phase::Started { method, .. } => {
                            rejection = Some((
                            Some(method),
                            Status::new(
                                Code::InvalidArgument,
                                format!("{method} takes exactly one request message: send FIN after it"),
                            ),
                        ));
                            break;
                        }
                        Phase::Head | Phase::Early { .. } | Phase::Answered => {}
                    }
                }
                Ok(Some(Frame::Trailer(_))) => {}
                Ok(None) => break,
                Err(error) => {
                    rejection = Some((call.phase.method(), error.status()));
                    break;
                }
            }
        }
        call.held.set(call.decoder.buffered());
        if let Phase::Started { method, .. } = call.phase {
            // The start of a second frame on a call that takes one message: refused now, not
            // held until it is whole (a client could otherwise keep a frame's worth of bytes
            // waiting on every call it has open).
            if rejection.is_none() && !method.client_streams() && call.decoder.buffered() > 0 {
                rejection = Some((
                    Some(method),
                    Status::new(
                        Code::InvalidArgument,
                        format!("{method} takes exactly one request message: send FIN after it"),
                    ),
                ));
            }
        }
        // Bytes of a frame not yet whole count against the budget, on a call that has
        // started (a control message arriving) as on one that has not.
        let incomplete = matches!(
            call.phase,
            Phase::Head | Phase::Message { .. } | Phase::Early { .. }
        ) || call.decoder.buffered() > 0;
        let total = call.held.total.load(Ordering::Relaxed);
        if rejection.is_none() && incomplete && total > settings.max_buffered_requests {
            rejection = Some((
                call.phase.method(),
                Status::new(
                    Code::ResourceExhausted,
                    format!(
                        "the daemon holds {total} bytes of requests still arriving, over its {}-byte budget ([rpc] max_buffered_requests): send requests whole, then retry",
                        settings.max_buffered_requests
                    ),
                ),
            ));
        }
        let held_early = matches!(call.phase, Phase::Early { .. });
        if rejection.is_none() && call.fin && !call.recv_done && !held_early {
            call.recv_done = true;
            match call.phase {
                Phase::Started { .. } => events.push_back(ServerEvent::HalfClosed { id }),
                Phase::Early { .. } | Phase::Answered => {}
                Phase::Head | Phase::Message { .. } => {
                    let method = call.phase.method();
                    let status = match call.decoder.finish() {
                        Err(error) => error.status(),
                        Ok(()) => Status::new(
                            Code::InvalidArgument,
                            "the request ended before its message: send the head, one message frame, then FIN",
                        ),
                    };
                    rejection = Some((method, status));
                }
            }
        }
        if let Some((method, status)) = rejection {
            Self::reject(conn, id, method, status, events, in_flight);
        }
    }

    /// Ends a call the state machine refuses itself: the trailer with `status`, the request
    /// side stopped, the call forgotten once the trailer is out.
    fn reject(
        conn: &mut Conn,
        id: CallId,
        method: Option<Method>,
        status: Status,
        events: &mut VecDeque<ServerEvent>,
        in_flight: &mut usize,
    ) {
        let stream = id.stream;
        let Some(call) = conn.calls.get_mut(&stream) else {
            return;
        };
        let started = matches!(call.phase, Phase::Started { .. });
        if started {
            *in_flight -= 1;
        }
        events.push_back(ServerEvent::Rejected {
            method,
            status: status.clone(),
            received_at: call.received_at,
            started: started.then_some(id),
        });
        let mut out = Vec::new();
        wire::encode_trailer(&status, &mut out);
        call.phase = Phase::Answered;
        call.decoder.clear();
        call.held.set(0);
        if !call.recv_done {
            let _ = conn.quic.recv_stream(stream).stop(DONE_CODE);
            call.recv_done = true;
        }
        if call
            .outbox
            .write(&mut conn.quic, stream, &out, true)
            .is_err()
            || call.outbox.is_empty()
        {
            conn.calls.remove(&stream);
        }
    }

    /// Answers DEADLINE_EXCEEDED to every request that has not arrived whole within
    /// `request_timeout` (a client that opens streams and never finishes them would otherwise
    /// hold them, and their buffers, for the connection's life).
    fn expire_requests(&mut self, now: Instant) {
        let limit = self.settings.request_timeout;
        let handles: Vec<ConnectionHandle> = self.conns.keys().copied().collect();
        for handle in handles {
            let Some(conn) = self.conns.get_mut(&handle) else {
                continue;
            };
            let late: Vec<(StreamId, Option<Method>)> = conn
                .calls
                .iter()
                .filter(|(_, c)| now >= c.received_at + limit)
                // Requests not yet whole: a call started or answered has arrived.
                .filter(|(_, c)| !matches!(c.phase, Phase::Started { .. } | Phase::Answered))
                .map(|(stream, c)| (*stream, c.phase.method()))
                .collect();
            if late.is_empty() {
                continue;
            }
            for (stream, method) in late {
                let status = Status::new(
                    Code::DeadlineExceeded,
                    format!(
                        "the request did not arrive whole within {} ms ([rpc] request_timeout): send the head and one message frame without pausing",
                        limit.as_millis()
                    ),
                );
                let id = CallId {
                    conn: handle,
                    stream,
                };
                Self::reject(
                    conn,
                    id,
                    method,
                    status,
                    &mut self.events,
                    &mut self.in_flight,
                );
            }
            self.process(now, handle);
        }
    }

    fn write(&mut self, id: CallId, bytes: &[u8], last: bool) {
        let Some(conn) = self.conns.get_mut(&id.conn) else {
            return;
        };
        let Some(call) = conn.calls.get_mut(&id.stream) else {
            return;
        };
        if !matches!(call.phase, Phase::Started { .. }) {
            return;
        }
        let stopped = call
            .outbox
            .write(&mut conn.quic, id.stream, bytes, last)
            .is_err();
        if last || stopped {
            self.in_flight -= 1;
            call.phase = Phase::Answered;
            if !call.recv_done {
                // A reply ends the call: whatever else the client sends is not needed.
                let _ = conn.quic.recv_stream(id.stream).stop(DONE_CODE);
                call.recv_done = true;
            }
            if stopped {
                let _ = conn.quic.send_stream(id.stream).reset(CANCEL_CODE);
                conn.calls.remove(&id.stream);
            }
        }
        if self.transmit_order.last() != Some(&id.conn) {
            self.transmit_order.push(id.conn);
        }
    }
}
