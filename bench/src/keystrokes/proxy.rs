//! A counting loopback proxy in front of llama.cpp: every HTTP exchange that reaches the model
//! server passes through it and is logged with its timing, so both clients are counted the
//! same way and the daemon's latency can be split into the provider's part and its own.
//!
//! Each client connection gets one upstream connection of its own (so keep-alive toward the
//! proxy is keep-alive toward llama.cpp, and a client closing its connection closes the
//! upstream one, which is how llama.cpp learns that a request was cancelled). Bytes are
//! relayed as they arrive; the proxy only parses enough HTTP to know where each request and
//! response ends. An exchange's time runs from the first byte of the request read to the last
//! byte of the response written back (or to the client going away).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::bail;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::http::{self, BodyLength, Chunked, StreamText};

/// Largest response body kept for reading its text (the relay itself is unbounded).
const MAX_KEPT_BODY: usize = 4 * 1024 * 1024;
/// Requests relayed on one connection at most.
const MAX_REQUESTS_PER_CONNECTION: usize = 1_000_000;

/// One request relayed to llama.cpp and what came of it.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The request target, e.g. `/v1/completions`.
    pub path: String,
    /// The response status; 0 when the client went away before the response head.
    pub status: u16,
    /// The prompt the request carried (`prompt`, or `/infill`'s `input_prefix`).
    pub prompt: String,
    /// The first byte of the request read.
    pub started: Instant,
    /// The last byte of the response written back, or the moment the client went away.
    pub ended: Instant,
    /// Whether the whole response was relayed (false: the client closed the connection first,
    /// i.e. cancelled).
    pub finished: bool,
    /// What the completion stream carried up to the end or the cancel.
    pub stream: StreamText,
}

impl Exchange {
    /// Whether this was a completion the model worked on (not a probe, not a 501 from
    /// `/infill`).
    pub fn reached_model(&self) -> bool {
        ["/v1/completions", "/v1/chat/completions", "/infill"]
            .iter()
            .any(|p| self.path.starts_with(p))
            && (self.status == 200 || self.status == 0)
    }
}

/// The running proxy; stopped when dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Exchange>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and relays to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let accept_log = log.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((down, _)) = listener.accept().await else {
                    break;
                };
                let log = accept_log.clone();
                connections.spawn(async move {
                    // A broken connection ends only itself; what it relayed is logged.
                    let _ = relay(down, upstream, log).await;
                });
                // Reap finished relays so the set stays small.
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Proxy { addr, log, task })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The exchanges logged since the last call.
    pub fn take(&self) -> Vec<Exchange> {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let mut taken = std::mem::take(&mut *log);
        taken.sort_by_key(|e| e.started);
        taken
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every relay.
        self.task.abort();
    }
}

/// Relays one client connection's requests, one at a time, over an upstream connection of
/// its own.
async fn relay(
    mut down: TcpStream,
    upstream: SocketAddr,
    log: Arc<Mutex<Vec<Exchange>>>,
) -> anyhow::Result<()> {
    let mut up = TcpStream::connect(upstream).await?;
    down.set_nodelay(true)?;
    up.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    for _ in 0..MAX_REQUESTS_PER_CONNECTION {
        // The request: head and body, timed from its first byte.
        let mut started = Instant::now();
        let head = loop {
            if let Some(head) = http::request_head(&buf)? {
                break head;
            }
            let n = down.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            if buf.is_empty() {
                started = Instant::now();
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let total = head.len + head.body;
        while buf.len() < total {
            let n = down.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let prompt = prompt_of(&buf[head.len..total]);
        up.write_all(&buf[..total]).await?;
        buf.drain(..total);

        let mut exchange = Exchange {
            path: head.path,
            status: 0,
            prompt,
            started,
            ended: started,
            finished: false,
            stream: StreamText::default(),
        };
        let outcome = relay_response(&mut up, &mut down, &mut buf, &mut chunk, &mut exchange).await;
        exchange.ended = Instant::now();
        let keep_going = matches!(outcome, Ok(true));
        log.lock().unwrap_or_else(|e| e.into_inner()).push(exchange);
        if !keep_going {
            return outcome.map(|_| ());
        }
    }
    Ok(())
}

/// Relays one response, watching the client: bytes it sends meanwhile are kept in `pending`
/// (the next request), and its closing the connection ends the exchange as cancelled.
/// Returns whether the connection can carry another request.
async fn relay_response(
    up: &mut TcpStream,
    down: &mut TcpStream,
    pending: &mut Vec<u8>,
    chunk: &mut [u8],
    exchange: &mut Exchange,
) -> anyhow::Result<bool> {
    let mut head_buf = Vec::new();
    let mut body = Vec::new();
    let mut decoder = Chunked::default();
    let mut framing: Option<BodyLength> = None;
    let mut body_seen = 0usize;
    let mut from_client = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = up.read(chunk) => read?,
            read = down.read(&mut from_client) => {
                let n = read.unwrap_or(0);
                if n == 0 {
                    // The client went away mid-response: dropping `up` tells llama.cpp.
                    exchange.stream = http::stream_text(&body);
                    return Ok(false);
                }
                pending.extend_from_slice(&from_client[..n]);
                continue;
            }
        };
        if n == 0 {
            // Upstream closed: the end of an until-close body, or a broken response.
            exchange.finished = framing == Some(BodyLength::UntilClose);
            exchange.stream = http::stream_text(&body);
            return Ok(false);
        }
        down.write_all(&chunk[..n]).await?;
        let ended = match framing {
            Some(framing) => feed(
                &chunk[..n],
                framing,
                &mut decoder,
                &mut body,
                &mut body_seen,
            )?,
            None => {
                head_buf.extend_from_slice(&chunk[..n]);
                let Some(head) = http::response_head(&head_buf)? else {
                    continue;
                };
                exchange.status = head.status;
                framing = Some(head.body);
                let after_head = &head_buf[head.len..];
                feed(
                    after_head,
                    head.body,
                    &mut decoder,
                    &mut body,
                    &mut body_seen,
                )?
            }
        };
        if ended {
            exchange.finished = true;
            exchange.stream = http::stream_text(&body);
            return Ok(true);
        }
    }
}

/// Takes body bytes in; returns whether the body has ended.
fn feed(
    bytes: &[u8],
    framing: BodyLength,
    decoder: &mut Chunked,
    body: &mut Vec<u8>,
    seen: &mut usize,
) -> anyhow::Result<bool> {
    match framing {
        BodyLength::Bytes(length) => {
            *seen += bytes.len();
            let room = MAX_KEPT_BODY.saturating_sub(body.len()).min(bytes.len());
            body.extend_from_slice(&bytes[..room]);
            if *seen > length {
                bail!("more body than Content-Length said");
            }
            Ok(*seen == length)
        }
        BodyLength::Chunked => {
            decoder.feed(bytes, body, MAX_KEPT_BODY)?;
            Ok(decoder.done())
        }
        BodyLength::UntilClose => {
            let room = MAX_KEPT_BODY.saturating_sub(body.len()).min(bytes.len());
            body.extend_from_slice(&bytes[..room]);
            Ok(false)
        }
    }
}

/// The prompt of a completion request body: `prompt` (`/v1/completions`), `input_prefix`
/// (`/infill`) or the last message's content (a chat hole-filler); empty for anything else.
fn prompt_of(body: &[u8]) -> String {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return String::new();
    };
    let last_message = value["messages"]
        .as_array()
        .and_then(|m| m.last())
        .map(|m| &m["content"]);
    value["prompt"]
        .as_str()
        .or_else(|| value["input_prefix"].as_str())
        .or_else(|| last_message.and_then(|c| c.as_str()))
        .unwrap_or("")
        .to_owned()
}
