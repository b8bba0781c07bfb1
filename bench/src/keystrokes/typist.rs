//! The two editors replaying the same keys: one asking reaperd at every key, one talking to
//! llama.cpp the way editor plugins do today (debounce, cancel the previous request, no
//! cache).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use reaper_client::{CallOptions, Client, Code, Error};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::http::{self, BodyLength, Chunked};
use super::script::Script;

/// How long the run waits for calls still in flight after the last key, at most.
const DRAIN: Duration = Duration::from_secs(15);
/// The prompt budget reaperd's `openai` provider shows a model (`prompt::PREFIX_BUDGET`).
const PREFIX_BUDGET: usize = 6 * 1024;
/// Largest completion stream the direct client reads.
const MAX_STREAM: usize = 1024 * 1024;

/// What one key got.
#[derive(Debug, Clone)]
pub struct KeyResult {
    /// When the key was pressed.
    pub pressed: Instant,
    /// When its request went out (the direct client waits for the debounce first); `None`
    /// when the next key came before it did.
    pub sent: Option<Instant>,
    /// When its answer (or failure) came back.
    pub answered: Option<Instant>,
    /// The answer, if the call succeeded.
    pub answer: Option<Answer>,
    /// How the call failed: `superseded` / `cancelled` when the next key ended it.
    pub failure: Option<String>,
}

impl KeyResult {
    fn pressed(pressed: Instant) -> KeyResult {
        KeyResult {
            pressed,
            sent: None,
            answered: None,
            answer: None,
            failure: None,
        }
    }
}

/// A completion that came back.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The text to show.
    pub text: String,
    /// Its confidence (1.0 for the direct client, which has none).
    pub confidence: f32,
    /// Who answered (`smollm2`, `offline`, or `direct`).
    pub provider: String,
    /// Whether reaperd answered from its cache (typing through included).
    pub cached: bool,
}

/// Replays the keys through reaperd: a request at every key, on one connection, with no
/// debounce (the daemon supersedes the call in flight for the same file).
pub async fn through_reaper(client: Arc<Client>, script: &Script) -> Vec<KeyResult> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let start = tokio::time::Instant::now();
    let mut results = Vec::with_capacity(script.keys.len());
    for (i, key) in script.keys.iter().enumerate() {
        tokio::time::sleep_until(start + key.at).await;
        let request = script.request(i);
        let pressed = Instant::now();
        results.push(KeyResult::pressed(pressed));
        let (client, tx) = (client.clone(), tx.clone());
        tokio::spawn(async move {
            let sent = Instant::now();
            let outcome = client.complete(&request, CallOptions::default()).await;
            let _ = tx.send((i, sent, Instant::now(), outcome));
        });
    }
    drop(tx);
    let deadline = tokio::time::Instant::now() + DRAIN;
    while let Ok(Some((i, sent, answered, outcome))) =
        tokio::time::timeout_at(deadline, rx.recv()).await
    {
        let result = &mut results[i];
        result.sent = Some(sent);
        result.answered = Some(answered);
        match outcome {
            Ok(response) => {
                result.answer = Some(Answer {
                    text: response.completion,
                    confidence: response.confidence,
                    provider: response.provider,
                    cached: response.cached,
                })
            }
            Err(Error::Status(status)) if status.code == Code::Cancelled => {
                result.failure = Some("superseded".to_owned())
            }
            Err(error) => result.failure = Some(error.to_string()),
        }
    }
    results
}

/// Replays the keys the way llama.vim- and Continue-style plugins talk to llama.cpp: each key
/// cancels the request in flight (closing its connection) and starts a timer; when `debounce`
/// passes without another key, a new connection POSTs `/v1/completions` with the same prompt
/// reaperd's provider sends when `/infill` is unavailable, and the streamed answer is read to
/// its end. No cache.
pub async fn direct(
    upstream: SocketAddr,
    model: &'static str,
    script: &Script,
    debounce: Duration,
) -> Vec<KeyResult> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let start = tokio::time::Instant::now();
    let mut results = Vec::with_capacity(script.keys.len());
    let mut in_flight: Option<tokio::task::JoinHandle<()>> = None;
    for (i, key) in script.keys.iter().enumerate() {
        tokio::time::sleep_until(start + key.at).await;
        if let Some(previous) = in_flight.take() {
            previous.abort();
        }
        let request = script.request(i);
        results.push(KeyResult::pressed(Instant::now()));
        let tx = tx.clone();
        in_flight = Some(tokio::spawn(async move {
            tokio::time::sleep(debounce).await;
            let _ = tx.send((i, Instant::now(), None));
            let prompt = reaper_core::text::tail(&request.prefix, PREFIX_BUDGET);
            let outcome = complete_direct(upstream, model, prompt).await;
            let _ = tx.send((i, Instant::now(), Some(outcome)));
        }));
    }
    drop(tx);
    // The last request runs to its end; aborted tasks send nothing more.
    let deadline = tokio::time::Instant::now() + DRAIN;
    while let Ok(Some((i, at, outcome))) = tokio::time::timeout_at(deadline, rx.recv()).await {
        let result = &mut results[i];
        let Some(outcome) = outcome else {
            result.sent = Some(at);
            continue;
        };
        result.answered = Some(at);
        match outcome {
            Ok(text) => {
                result.answer = Some(Answer {
                    text,
                    confidence: 1.0,
                    provider: "direct".to_owned(),
                    cached: false,
                })
            }
            Err(error) => result.failure = Some(format!("{error:#}")),
        }
    }
    if let Some(last) = in_flight {
        last.abort();
    }
    for result in &mut results {
        if result.answered.is_none() {
            result.failure = Some("cancelled".to_owned());
        }
    }
    results
}

/// One streamed `/v1/completions` over a new connection: the text, blank answers as none
/// (as reaperd does).
async fn complete_direct(
    upstream: SocketAddr,
    model: &str,
    prompt: &str,
) -> anyhow::Result<String> {
    let body = json!({
        "model": model,
        "prompt": prompt,
        "max_tokens": 64,
        "temperature": 0.1,
        "stream": true,
        "stop": ["\n\n"],
    })
    .to_string();
    let mut stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {upstream}\r\nContent-Type: application/json\r\n\
         Accept: text/event-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut raw = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let head = loop {
        if let Some(head) = http::response_head(&raw)? {
            break head;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("llama.cpp closed the connection before answering");
        }
        raw.extend_from_slice(&chunk[..n]);
    };
    if head.status != 200 {
        bail!("llama.cpp answered {}", head.status);
    }
    let mut decoded = Vec::new();
    let mut decoder = Chunked::default();
    let rest = raw.split_off(head.len);
    match head.body {
        BodyLength::Chunked => {
            decoder.feed(&rest, &mut decoded, MAX_STREAM)?;
            while !decoder.done() {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    bail!("the stream ended without its last chunk");
                }
                decoder.feed(&chunk[..n], &mut decoded, MAX_STREAM)?;
            }
        }
        BodyLength::Bytes(length) => {
            decoded = rest;
            while decoded.len() < length.min(MAX_STREAM) {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    bail!("the body ended before its Content-Length");
                }
                decoded.extend_from_slice(&chunk[..n]);
            }
        }
        BodyLength::UntilClose => {
            decoded = rest;
            stream
                .take(MAX_STREAM as u64)
                .read_to_end(&mut decoded)
                .await
                .context("reading the completion")?;
        }
    }
    let text = http::stream_text(&decoded).text;
    Ok(if text.trim().is_empty() {
        String::new()
    } else {
        text
    })
}
