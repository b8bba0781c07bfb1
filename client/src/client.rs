//! The async client: one QUIC connection, many concurrent calls.
//!
//! Each call is one bidirectional stream, so calls never wait for each other and one
//! connection serves an editor's whole session; `docs/design.md` shows the measurement behind
//! not pooling connections or batching requests.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, Stream};
use quinn::{RecvStream, SendStream, VarInt};
use reaper_core::rpc::stream::CANCEL_CODE;
use reaper_core::schema::*;
use reaper_core::wire::{self, Frame, FrameDecoder, RequestHead, Side};
use reaper_core::{transport, Encoding, Method, Status, WireMessage};
use tokio::sync::Mutex;

use crate::early::{self, Handshake};
use crate::{ClientOptions, Error};

/// First wait between connection attempts; doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest wait between connection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How long one connection attempt waits for the handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Per-call settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallOptions {
    /// Give up (and cancel the call) after this long; overrides the client's default.
    pub deadline: Option<Duration>,
}

/// The longest [`Client::close`] waits for the close to be sent (it is usually sent in one
/// turn of the runtime).
const CLOSE_FLUSH: Duration = Duration::from_millis(3);

/// A stream of responses from a streaming call; it ends after the last message, or with the
/// call's error.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Error>> + Send>>;

/// A client of one reaper daemon. Cheap to share (`Arc`) across tasks: calls run concurrently.
#[derive(Debug)]
pub struct Client {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    options: ClientOptions,
    connection: Mutex<Option<Live>>,
    /// Whether the next connection may go ahead with 0-RTT data: off after a resumed
    /// connection's handshake failed, on again after any handshake completes.
    early_ok: Arc<AtomicBool>,
    /// How many times [`Client::close`] was called: a call whose 0-RTT data was not taken
    /// is not sent again on a new connection after the caller closed the client.
    closes: AtomicU64,
}

/// The connection calls go on.
#[derive(Clone)]
struct Live {
    conn: quinn::Connection,
    /// For a connection that went ahead with 0-RTT data, until its handshake is known to have
    /// completed: how it ends (see [`early`]).
    handshake: Option<Handshake>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("remote", &self.conn.remote_address())
            .field("handshaking", &self.handshake.is_some())
            .finish()
    }
}

impl Client {
    /// Connects to the daemon, retrying with exponential backoff. With a session to resume
    /// (an earlier client in this process talked to this daemon, and
    /// [`ClientOptions::resume_sessions`] is on) it returns at once: the first call goes with
    /// the handshake as 0-RTT data, and a daemon that has gone away is reported by that call.
    pub async fn connect(options: ClientOptions) -> Result<Client, Error> {
        let loopback = options.addr.ip().is_loopback();
        let crypto = early::crypto(&options.cert, options.resume_sessions)
            .map_err(|e| Error::Transport(e.to_string()))?;
        let client_config = transport::client_config_with(crypto, &options.rpc, loopback);
        let bind: std::net::SocketAddr = if options.addr.is_ipv6() {
            "[::]:0".parse().expect("constant address")
        } else {
            "0.0.0.0:0".parse().expect("constant address")
        };
        let socket = std::net::UdpSocket::bind(bind).map_err(|e| Error::Connect {
            addr: options.addr,
            attempts: 0,
            reason: format!("cannot open a UDP socket: {e}"),
        })?;
        let endpoint = quinn::Endpoint::new(
            transport::endpoint_config(loopback),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|e| Error::Transport(e.to_string()))?;
        let client = Client {
            endpoint,
            client_config,
            options,
            connection: Mutex::new(None),
            early_ok: Arc::new(AtomicBool::new(true)),
            closes: AtomicU64::new(0),
        };
        client.connection().await?;
        Ok(client)
    }

    /// Closes the connection politely (the daemon frees it at once instead of waiting for the
    /// idle timeout) and gives the endpoint a moment to send the close. It does not wait out
    /// QUIC's draining period (three round-trip timeouts, ~80 ms on loopback), which only
    /// matters to a peer that did not hear the close: a command-line client that waited for
    /// it spent most of its life there.
    pub async fn close(&self) {
        self.closes.fetch_add(1, Ordering::Relaxed);
        let Some(Live { conn, .. }) = self.connection.lock().await.take() else {
            return;
        };
        let before = conn.stats().udp_tx.datagrams;
        conn.close(VarInt::from_u32(0), b"client closed");
        // The close is queued; the connection's driver sends it, in a datagram of its own, the
        // next time it runs. This returns as soon as that datagram is counted (one turn of the
        // runtime), or after CLOSE_FLUSH if the driver is slow.
        let sent = async {
            while conn.stats().udp_tx.datagrams == before {
                tokio::task::yield_now().await;
            }
        };
        let _ = tokio::time::timeout(CLOSE_FLUSH, sent).await;
    }

    /// Transport statistics of the current connection (packets, losses, RTT, congestion
    /// window), if one is open: what to look at when calls are slower than they should be.
    pub async fn connection_stats(&self) -> Option<quinn::ConnectionStats> {
        self.connection
            .lock()
            .await
            .as_ref()
            .map(|c| c.conn.stats())
    }

    /// The options this client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// `reaper.Health/check`.
    pub async fn health(&self) -> Result<HealthResponse, Error> {
        self.unary(
            Method::HealthCheck,
            &HealthRequest {},
            CallOptions::default(),
        )
        .await
    }

    /// `reaper.Provider/list`.
    pub async fn providers(&self) -> Result<ProviderListResponse, Error> {
        self.unary(
            Method::ProviderList,
            &ProviderListRequest {},
            CallOptions::default(),
        )
        .await
    }

    /// `reaper.Completion/complete`.
    pub async fn complete(
        &self,
        request: &CompletionRequest,
        call: CallOptions,
    ) -> Result<CompletionResponse, Error> {
        self.unary(Method::CompletionComplete, request, call).await
    }

    /// `reaper.Completion/feedback`: tells the daemon what the editor did with a completion.
    pub async fn feedback(
        &self,
        event: &CompletionFeedback,
        call: CallOptions,
    ) -> Result<FeedbackResponse, Error> {
        self.unary(Method::CompletionFeedback, event, call).await
    }

    /// `reaper.Chat/send`: the answer as a stream of chunks.
    pub async fn chat(
        &self,
        request: &ChatRequest,
        call: CallOptions,
    ) -> Result<ResponseStream<ChatChunk>, Error> {
        let (send, recv, _) = self.open(Method::ChatSend, request, call, true).await?;
        Ok(self.response_stream(send, recv, call))
    }

    /// `reaper.Agent/execute`: step updates as a stream, and a handle to approve, reject or
    /// cancel steps on the same call.
    pub async fn agent(
        &self,
        task: &AgentTask,
        call: CallOptions,
    ) -> Result<(ResponseStream<StepUpdate>, AgentControlHandle), Error> {
        let (send, recv, _) = self.open(Method::AgentExecute, task, call, false).await?;
        let control = AgentControlHandle {
            send: Arc::new(Mutex::new(send)),
            encoding: self.options.encoding,
        };
        let updates = self.response_stream(None, recv, call);
        Ok((updates, control))
    }

    /// Makes any unary call.
    pub async fn unary<Req: WireMessage, Resp: WireMessage>(
        &self,
        method: Method,
        request: &Req,
        call: CallOptions,
    ) -> Result<Resp, Error> {
        let deadline = call.deadline.or(self.options.default_deadline);
        let closes = self.closes.load(Ordering::Relaxed);
        let work = async {
            // A call sent as 0-RTT data that the daemon did not take is sent again: on the
            // same connection, now past its handshake, or, if the handshake failed, on a new
            // one made the usual way (the failed handshake turned 0-RTT off).
            let mut tries = 0;
            loop {
                tries += 1;
                match self.unary_once(method, request, call).await {
                    Err(Error::EarlyDataRejected)
                        if self.closes.load(Ordering::Relaxed) != closes =>
                    {
                        return Err(Error::Transport(
                            "the client was closed while the call was on its way".into(),
                        ));
                    }
                    Err(Error::EarlyDataRejected) if tries < 3 => {
                        tracing::debug!(%method, "0-RTT data not taken; sending the call again");
                        self.settle_handshake().await;
                    }
                    result => return result,
                }
            }
        };
        with_deadline(deadline, work).await
    }

    async fn unary_once<Req: WireMessage, Resp: WireMessage>(
        &self,
        method: Method,
        request: &Req,
        call: CallOptions,
    ) -> Result<Resp, Error> {
        let encoding = self.options.encoding;
        let (_, recv, live) = self.open(method, request, call, true).await?;
        let mut recv = CancelOnDrop(Some(recv));
        let mut reader = ResponseReader::new(self.options.rpc.max_message_size.get() as usize);
        let read = async {
            let message = reader.next_message(recv.stream()).await?;
            Ok::<_, Error>((message, reader.next_message(recv.stream()).await?))
        };
        let read = match live.handshake {
            None => read.await,
            // Sent before the handshake: if the handshake fails, no answer will come. The
            // handshake first: a refused connection fails its streams in the same turn, and
            // its failure is what says to make the next connection the usual way.
            Some(handshake) => tokio::select! {
                biased;
                Err(failure) = handshake => {
                    tracing::debug!(reason = %failure.reason, "resumed connection failed its handshake");
                    Err(Error::EarlyDataRejected)
                }
                read = read => read,
            },
        };
        // A trailer, OK or not, ends the call: nothing is left to cancel.
        if reader.done {
            recv.disarm();
        }
        let (message, trailer) = read?;
        match (message, trailer) {
            (Some(bytes), None) => {
                Resp::decode(encoding, &bytes).map_err(|e| Error::Protocol(e.to_string()))
            }
            (Some(_), Some(_)) => Err(Error::Protocol(format!(
                "{method} is unary but the daemon sent more than one message"
            ))),
            (None, _) => Err(Error::Protocol(format!(
                "{method} ended OK without a response message"
            ))),
        }
    }

    /// Opens a stream and sends the head and first message (and FIN if `finish`); also returns
    /// the connection it went on.
    async fn open<Req: WireMessage>(
        &self,
        method: Method,
        request: &Req,
        call: CallOptions,
        finish: bool,
    ) -> Result<(Option<SendStream>, RecvStream, Live), Error> {
        let deadline = call.deadline.or(self.options.default_deadline);
        let head = RequestHead {
            method: Bytes::from_static(method.path().as_bytes()),
            encoding: self.options.encoding,
            deadline_ms: deadline.map_or(0, |d| d.as_millis().clamp(1, u32::MAX as u128) as u32),
            token: self.options.token.clone(),
        };
        let mut out = Vec::with_capacity(128);
        head.encode(&mut out);
        let at = out.len();
        wire::encode_message_header(0, &mut out);
        request
            .encode(self.options.encoding, &mut out)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        wire::patch_message_len(&mut out, at);

        let (live, mut send, recv) = self.open_stream(method).await?;
        send.write_all(&out).await.map_err(|e| match e {
            quinn::WriteError::ZeroRttRejected => Error::EarlyDataRejected,
            e => Error::Transport(e.to_string()),
        })?;
        if finish {
            let _ = send.finish();
            Ok((None, recv, live))
        } else {
            Ok((Some(send), recv, live))
        }
    }

    /// Opens a stream for a call of `method`, reconnecting once if the connection has gone
    /// away meanwhile.
    async fn open_stream(&self, method: Method) -> Result<(Live, SendStream, RecvStream), Error> {
        let live = self.connection_for(method).await?;
        match live.conn.open_bi().await {
            Ok((send, recv)) => Ok((live, send, recv)),
            Err(_) => {
                // Nothing was sent on a stream that did not open: retrying is safe.
                let live = self.connection_for(method).await?;
                let (send, recv) = live
                    .conn
                    .open_bi()
                    .await
                    .map_err(|e| Error::Transport(e.to_string()))?;
                Ok((live, send, recv))
            }
        }
    }

    /// The connection a call of `method` goes on. On a resumed connection whose handshake
    /// is still running, only replay-safe calls go at once; any other waits for the handshake,
    /// and if it fails, for a connection made the usual way.
    async fn connection_for(&self, method: Method) -> Result<Live, Error> {
        let mut live = self.connection().await?;
        if method.replay_safe() {
            return Ok(live);
        }
        // Bounded: a failed handshake turns 0-RTT off, so the next connection is a plain one
        // unless another task's handshake turned it on again meanwhile.
        let mut failed = None;
        for _ in 0..3 {
            let Some(handshake) = live.handshake.clone() else {
                return Ok(live);
            };
            match handshake.await {
                Ok(()) => {
                    return Ok(Live {
                        conn: live.conn,
                        handshake: None,
                    })
                }
                Err(failure) => failed = Some(failure),
            }
            live = self.connection().await?;
        }
        Err(Error::Connect {
            addr: self.options.addr,
            attempts: 3,
            reason: failed.map_or_else(String::new, |f| f.reason),
        })
    }

    /// Waits until the current connection's handshake is known to have ended, if it went ahead
    /// with 0-RTT data (so that a failure has turned 0-RTT off before the next attempt).
    async fn settle_handshake(&self) {
        let handshake = self
            .connection
            .lock()
            .await
            .as_ref()
            .and_then(|live| live.handshake.clone());
        if let Some(handshake) = handshake {
            let _ = handshake.await;
        }
    }

    /// A live connection: the current one, or a new one made with backoff.
    async fn connection(&self) -> Result<Live, Error> {
        let mut slot = self.connection.lock().await;
        if let Some(live) = slot.as_mut() {
            if live
                .handshake
                .as_ref()
                .is_some_and(|h| matches!(h.peek(), Some(Ok(()))))
            {
                // Past its handshake: calls on it need not watch the handshake any more.
                live.handshake = None;
            }
            if live.conn.close_reason().is_none() {
                return Ok(live.clone());
            }
            tracing::info!(reason = ?live.conn.close_reason(), "connection to reaperd lost; reconnecting");
        }
        let attempts = self.options.connect_attempts.max(1);
        let mut backoff = BACKOFF_START;
        let mut last_error = String::new();
        let mut made = 0;
        for attempt in 1..=attempts {
            made = attempt;
            match self.try_connect().await {
                Ok(live) => {
                    *slot = Some(live.clone());
                    return Ok(live);
                }
                Err(failure) => {
                    tracing::debug!(attempt, reason = %failure.reason, "connection attempt failed");
                    last_error = failure.reason;
                    if failure.refused && !self.options.retry_refused {
                        break;
                    }
                }
            }
            if attempt < attempts {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
        Err(Error::Connect {
            addr: self.options.addr,
            attempts: made,
            reason: last_error,
        })
    }

    async fn try_connect(&self) -> Result<Live, AttemptFailed> {
        let connecting = self
            .endpoint
            .connect_with(
                self.client_config.clone(),
                self.options.addr,
                transport::SERVER_NAME,
            )
            .map_err(|e| AttemptFailed::other(e.to_string()))?;
        // With a session to resume, the connection is usable at once for replay-safe calls;
        // its handshake is watched by the calls that go before it completes.
        let connecting = if self.early_ok.load(Ordering::Relaxed) {
            match connecting.into_0rtt() {
                Ok((conn, accepted)) => {
                    let handshake = early::watch(
                        conn.clone(),
                        accepted,
                        CONNECT_TIMEOUT,
                        self.early_ok.clone(),
                    );
                    return Ok(Live {
                        conn,
                        handshake: Some(handshake),
                    });
                }
                Err(connecting) => connecting,
            }
        } else {
            connecting
        };
        // A daemon that is not there never answers QUIC: bound each attempt, and learn sooner
        // from the kernel when nothing is listening at all.
        tokio::select! {
            biased;
            answer = tokio::time::timeout(CONNECT_TIMEOUT, connecting) => match answer {
                Ok(Ok(conn)) => {
                    self.early_ok.store(true, Ordering::Relaxed);
                    Ok(Live { conn, handshake: None })
                }
                Ok(Err(e)) => Err(AttemptFailed::other(e.to_string())),
                Err(_) => Err(AttemptFailed::other(format!(
                    "no answer within {} s",
                    CONNECT_TIMEOUT.as_secs()
                ))),
            },
            () = nothing_listens(self.options.addr) => Err(AttemptFailed {
                refused: true,
                reason: NOTHING_LISTENS.to_owned(),
            }),
        }
    }

    fn response_stream<T: WireMessage + Send + 'static>(
        &self,
        send: Option<SendStream>,
        recv: RecvStream,
        call: CallOptions,
    ) -> ResponseStream<T> {
        let encoding = self.options.encoding;
        let limit = call.deadline.or(self.options.default_deadline);
        let deadline_ms = limit.map_or(0, |d| d.as_millis() as u64);
        let deadline = limit.map(|d| tokio::time::Instant::now() + d);
        let reader = ResponseReader::new(self.options.rpc.max_message_size.get() as usize);
        // Dropping the stream before its trailer cancels the call (code 1), so the daemon
        // stops the work behind it (for a chat: the model's generation).
        let state = Some((reader, CancelOnDrop(Some(recv)), send));
        Box::pin(futures::stream::unfold(state, move |state| async move {
            let (mut reader, mut recv, send) = state?;
            let next = match deadline {
                Some(at) => {
                    match tokio::time::timeout_at(at, reader.next_message(recv.stream())).await {
                        Ok(next) => next,
                        Err(_) => {
                            drop(recv);
                            if let Some(mut send) = send {
                                let _ = send.reset(CANCEL_CODE);
                            }
                            return Some((Err(Error::DeadlineExceeded(deadline_ms)), None));
                        }
                    }
                }
                None => reader.next_message(recv.stream()).await,
            };
            if reader.done {
                recv.disarm();
            }
            match next {
                Ok(Some(bytes)) => {
                    let item =
                        T::decode(encoding, &bytes).map_err(|e| Error::Protocol(e.to_string()));
                    Some((item, Some((reader, recv, send))))
                }
                Ok(None) => None,
                Err(error) => Some((Err(error), None)),
            }
        }))
    }
}

/// Sends control messages on a running agent call.
#[derive(Debug, Clone)]
pub struct AgentControlHandle {
    send: Arc<Mutex<Option<SendStream>>>,
    encoding: Encoding,
}

impl AgentControlHandle {
    /// Sends one control message.
    pub async fn send(&self, control: &AgentControl) -> Result<(), Error> {
        let mut out = Vec::new();
        wire::encode_message_header(0, &mut out);
        control
            .encode(self.encoding, &mut out)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        wire::patch_message_len(&mut out, 0);
        let mut guard = self.send.lock().await;
        let send = guard
            .as_mut()
            .ok_or_else(|| Error::Transport("the agent call's request side is closed".into()))?;
        send.write_all(&out)
            .await
            .map_err(|e| Error::Transport(e.to_string()))
    }

    /// Ends the request side (no more control messages).
    pub async fn close(&self) {
        if let Some(mut send) = self.send.lock().await.take() {
            let _ = send.finish();
        }
    }
}

/// The receive side of a call in progress: if the call is abandoned (its future dropped, e.g.
/// by a deadline), it tells the daemon with STOP_SENDING, code 1, so the work behind it stops.
/// (quinn's own drop would send code 0, which the daemon cannot tell from "done".)
struct CancelOnDrop(Option<RecvStream>);

impl CancelOnDrop {
    fn stream(&mut self) -> &mut RecvStream {
        self.0.as_mut().expect("present until disarmed")
    }

    /// The call completed: nothing to cancel. The daemon sends its FIN with the trailer, so it
    /// is normally here already: reading it means quinn's drop sends no STOP_SENDING (a frame
    /// per call, and a reset the daemon would have to process, for a stream that is done).
    fn disarm(&mut self) {
        if let Some(mut recv) = self.0.take() {
            let _ = recv.read_chunk(usize::MAX, true).now_or_never();
        }
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(mut recv) = self.0.take() {
            let _ = recv.stop(CANCEL_CODE);
        }
    }
}

/// Reads a response stream's frames.
struct ResponseReader {
    decoder: FrameDecoder,
    done: bool,
}

impl ResponseReader {
    fn new(max_message: usize) -> ResponseReader {
        ResponseReader {
            decoder: FrameDecoder::new(Side::Response, max_message),
            done: false,
        }
    }

    /// The next message; `None` after an OK trailer; an error for any other trailer.
    async fn next_message(&mut self, recv: &mut RecvStream) -> Result<Option<Bytes>, Error> {
        if self.done {
            return Ok(None);
        }
        loop {
            match self.decoder.next_frame() {
                Ok(Some(Frame::Message(bytes))) => return Ok(Some(bytes)),
                Ok(Some(Frame::Trailer(status))) => {
                    self.done = true;
                    return if status.is_ok() {
                        Ok(None)
                    } else {
                        Err(Error::Status(status))
                    };
                }
                Ok(Some(Frame::Head(_))) => {}
                Ok(None) => {}
                Err(error) => return Err(Error::Protocol(error.to_string())),
            }
            match recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => self.decoder.push(chunk.bytes),
                Ok(None) => {
                    return Err(Error::Protocol(
                        "the call ended without a status trailer".into(),
                    ))
                }
                Err(quinn::ReadError::ZeroRttRejected) => return Err(Error::EarlyDataRejected),
                Err(quinn::ReadError::Reset(code)) => {
                    return Err(Error::Status(Status::new(
                        reaper_core::Code::Cancelled,
                        format!("the daemon reset the call (code {code})"),
                    )))
                }
                Err(error) => return Err(Error::Transport(error.to_string())),
            }
        }
    }
}

async fn with_deadline<T>(
    deadline: Option<Duration>,
    work: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match deadline {
        // Dropping the work drops its streams; quinn then stops/finishes them, and the
        // daemon sees the call cancelled.
        Some(limit) => tokio::time::timeout(limit, work)
            .await
            .unwrap_or(Err(Error::DeadlineExceeded(limit.as_millis() as u64))),
        None => work.await,
    }
}

/// What a connection attempt that found nothing listening reports.
pub(crate) const NOTHING_LISTENS: &str =
    "nothing is listening there (is reaperd running? `reaperd` starts it)";

/// Why one connection attempt failed.
#[derive(Debug, Clone)]
pub(crate) struct AttemptFailed {
    /// The port is closed: nothing listens there now.
    pub(crate) refused: bool,
    pub(crate) reason: String,
}

impl AttemptFailed {
    pub(crate) fn other(reason: String) -> AttemptFailed {
        AttemptFailed {
            refused: false,
            reason,
        }
    }
}

/// How often [`nothing_listens`] asks again.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// Resolves if the kernel says nothing listens at `addr`; otherwise never.
///
/// QUIC's own socket is unconnected, so the ICMP "port unreachable" a closed port answers with
/// never reaches it, and a handshake to a dead daemon waits out its whole timeout. An empty
/// datagram on a connected socket gets that answer back as `ECONNREFUSED` within microseconds
/// on loopback. A live daemon ignores empty datagrams (they carry no QUIC packet). The probe
/// asks again every [`PROBE_INTERVAL`]: a daemon killed a moment ago keeps its port for a few
/// milliseconds while the kernel tears its io_uring down, and the first probe can land then.
/// Any failure to set up the probe waits: the probe only makes a dead daemon quicker to
/// report, and the handshake's own timeout ends the attempt.
pub(crate) async fn nothing_listens(addr: std::net::SocketAddr) {
    let bind: std::net::SocketAddr = if addr.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let probe = async {
        let socket = tokio::net::UdpSocket::bind(bind).await.ok()?;
        socket.connect(addr).await.ok()?;
        let mut byte = [0u8; 1];
        // Bounded (64 × 50 ms outlasts an attempt); something that answers an empty datagram
        // is not what we asked about and is ignored.
        for _ in 0..64 {
            socket.send(&[]).await.ok()?;
            match tokio::time::timeout(PROBE_INTERVAL, socket.recv(&mut byte)).await {
                Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Some(());
                }
                Ok(Err(_)) => return None,
                Ok(Ok(_)) | Err(_) => {}
            }
        }
        None
    };
    if probe.await.is_none() {
        std::future::pending::<()>().await;
    }
}
