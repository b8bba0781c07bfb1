//! An HTTP/1.1 server whose answers the test scripts byte for byte, for the wire formats no
//! installable server speaks, and for faults no real server produces on demand.
//!
//! It runs on a thread of its own (so sync and async tests can use it alike), keeps
//! connections alive as real servers do, streams with chunked transfer encoding at the pace
//! the script gives, and notes for every request whether the client went away before the
//! answer was complete.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// Longest request head or body accepted (an agent's conversation may carry a file of
/// megabytes).
const MAX_REQUEST: usize = 64 * 1024 * 1024;
/// Longest a hanging answer waits for the client to give up.
const HANG_LIMIT: Duration = Duration::from_secs(60);

/// A request as received.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`…
    pub method: String,
    /// The path with its query.
    pub path: String,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// What the server does with a request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A whole body, with `Content-Length`.
    Body {
        /// Status code.
        status: u16,
        /// Extra headers (`Content-Type` among them).
        headers: Vec<(String, String)>,
        /// The body.
        body: Vec<u8>,
    },
    /// A streamed body (chunked): each piece is sent after its delay.
    Stream {
        /// Status code.
        status: u16,
        /// `Content-Type`.
        content_type: String,
        /// The pieces and the pause before each.
        pieces: Vec<(Duration, Vec<u8>)>,
        /// What happens after the last piece.
        fault: Option<Fault>,
    },
    /// Nothing is sent until `after`, then the reply.
    Delayed(Duration, Box<Reply>),
    /// The request is read and never answered; the server waits for the client to give up.
    Hang,
    /// The request is read and the connection closed without an answer: what a client sees
    /// when it reuses a keep-alive connection the server has just timed out.
    Close,
}

/// How a streamed answer goes wrong after its pieces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// The connection is closed without the end of the stream.
    Drop,
}

impl Reply {
    /// A JSON body with `status`.
    pub fn json(status: u16, value: &serde_json::Value) -> Reply {
        Reply::Body {
            status,
            headers: vec![(
                "Content-Type".into(),
                "application/json; charset=utf-8".into(),
            )],
            body: value.to_string().into_bytes(),
        }
    }

    /// The same reply with one more header (on `Body` replies).
    pub fn with_header(self, name: &str, value: &str) -> Reply {
        match self {
            Reply::Body {
                status,
                mut headers,
                body,
            } => {
                headers.push((name.into(), value.into()));
                Reply::Body {
                    status,
                    headers,
                    body,
                }
            }
            other => other,
        }
    }
}

/// What happened to one request.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The request.
    pub request: Request,
    /// Whether the whole answer went out (false while it is going out).
    pub finished: bool,
    /// Whether the client closed the connection before the answer was complete.
    pub closed_early: bool,
    /// When the request arrived.
    pub arrived: Instant,
    /// When its handling ended (`arrived` while it goes on).
    pub ended: Instant,
}

type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// A scripted HTTP/1.1 server on 127.0.0.1; stopped when dropped.
pub struct WireServer {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for WireServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireServer")
            .field("port", &self.port)
            .finish()
    }
}

impl WireServer {
    /// Starts a server that answers every request with `handler`'s reply.
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> WireServer {
        let handler: Handler = Arc::new(handler);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let log = seen.clone();
        let thread = std::thread::Builder::new()
            .name("wire-server".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the test server");
                runtime.block_on(async move {
                    let listener = TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("bind 127.0.0.1");
                    let _ = port_tx.send(listener.local_addr().expect("bound").port());
                    let mut stop_rx = stop_rx;
                    loop {
                        tokio::select! {
                            _ = &mut stop_rx => break,
                            accepted = listener.accept() => {
                                if let Ok((stream, _)) = accepted {
                                    tokio::spawn(serve(stream, handler.clone(), log.clone()));
                                }
                            }
                        }
                    }
                });
            })
            .expect("the test server's thread starts");
        let port = port_rx.recv().expect("the test server binds");
        WireServer {
            port,
            seen,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// A server on a port where nothing listens: connections are refused.
    pub fn refused_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("bound").port();
        drop(listener);
        format!("http://127.0.0.1:{port}")
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request handled so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits (at most `limit`) until a handled request satisfies `check`; returns it.
    pub fn wait_for(&self, limit: Duration, check: impl Fn(&Seen) -> bool) -> Option<Seen> {
        let start = Instant::now();
        loop {
            if let Some(seen) = self.seen().into_iter().find(&check) {
                return Some(seen);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for WireServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves one connection until the client closes it or an answer ends it.
async fn serve(stream: TcpStream, handler: Handler, log: Arc<Mutex<Vec<Seen>>>) {
    let _ = stream.set_nodelay(true);
    let (mut read, mut write) = stream.into_split();
    let mut buffer = Vec::new();
    while let Some(request) = read_request(&mut read, &mut buffer).await {
        let arrived = Instant::now();
        let reply = handler(&request);
        // Noted on arrival, so a test sees every request its client has sent; how it ended is
        // filled in when the answer is done.
        let at = {
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            log.push(Seen {
                request,
                finished: false,
                closed_early: false,
                arrived,
                ended: arrived,
            });
            log.len() - 1
        };
        let (finished, closed_early, keep) = answer(&mut read, &mut write, reply).await;
        if let Some(seen) = log.lock().unwrap_or_else(|e| e.into_inner()).get_mut(at) {
            seen.finished = finished;
            seen.closed_early = closed_early;
            seen.ended = Instant::now();
        }
        if !keep {
            return;
        }
    }
}

/// The next request on the connection; `None` when it closed or sent garbage.
async fn read_request(read: &mut OwnedReadHalf, buffer: &mut Vec<u8>) -> Option<Request> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = parsed.parse(buffer) {
            let headers: Vec<(String, String)> = parsed
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let length: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            if length > MAX_REQUEST {
                return None;
            }
            let request = Request {
                method: parsed.method.unwrap_or("").to_owned(),
                path: parsed.path.unwrap_or("").to_owned(),
                headers,
                body: Vec::new(),
            };
            while buffer.len() < head + length {
                let mut chunk = [0u8; 16 * 1024];
                let n = read.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            let body = buffer[head..head + length].to_vec();
            buffer.drain(..head + length);
            return Some(Request { body, ..request });
        }
        if buffer.len() > MAX_REQUEST {
            return None;
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = read.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// Sends `reply`: `(finished, closed_early, keep the connection)`.
async fn answer(
    read: &mut OwnedReadHalf,
    write: &mut OwnedWriteHalf,
    reply: Reply,
) -> (bool, bool, bool) {
    match reply {
        Reply::Delayed(after, reply) => {
            if closed_within(read, after).await {
                return (false, true, false);
            }
            Box::pin(answer(read, write, *reply)).await
        }
        Reply::Hang => {
            let closed = closed_within(read, HANG_LIMIT).await;
            (false, closed, false)
        }
        Reply::Close => (false, false, false),
        Reply::Body {
            status,
            headers,
            body,
        } => {
            let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
            for (name, value) in &headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            let mut bytes = head.into_bytes();
            bytes.extend_from_slice(&body);
            let ok = write.write_all(&bytes).await.is_ok();
            (ok, !ok, ok)
        }
        Reply::Stream {
            status,
            content_type,
            pieces,
            fault,
        } => {
            let head = format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n",
                reason(status)
            );
            if write.write_all(head.as_bytes()).await.is_err() {
                return (false, true, false);
            }
            for (delay, piece) in pieces {
                // No pause, no wait: a timer of zero still waits for the timer's next tick
                // (a millisecond), which would cap a stream at 1,000 pieces a second.
                if !delay.is_zero() && closed_within(read, delay).await {
                    return (false, true, false);
                }
                let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
                chunk.extend_from_slice(&piece);
                chunk.extend_from_slice(b"\r\n");
                if piece.is_empty() {
                    continue;
                }
                if write.write_all(&chunk).await.is_err() {
                    return (false, true, false);
                }
            }
            if fault == Some(Fault::Drop) {
                return (false, false, false);
            }
            let ok = write.write_all(b"0\r\n\r\n").await.is_ok();
            (ok, !ok, ok)
        }
    }
}

/// Waits `delay`, watching the connection: true if the client closed it meanwhile.
async fn closed_within(read: &mut OwnedReadHalf, delay: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + delay;
    let mut byte = [0u8; 1];
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return false,
            n = read.read(&mut byte) => match n {
                Ok(0) | Err(_) => return true,
                // A pipelined byte of a next request: not expected from our clients; ignore.
                Ok(_) => continue,
            },
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
