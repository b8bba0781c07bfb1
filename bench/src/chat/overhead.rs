//! The daemon's share of a chat's time to first token and of each later token's delivery,
//! against a client calling the same llama.cpp directly over HTTP, answer for answer in one run.
//!
//! Both paths go through a [`Relay`] in front of llama.cpp, which notes when each piece of an
//! answer passed it. A piece's *hop* is the time from there to the client holding it: for the
//! direct path, the client's own HTTP and event parsing; through reaperd, the daemon's HTTP
//! client and parsing, its event loop, QUIC and the client library. The difference between the
//! two paths' hops is the daemon's overhead, free of the model's pace (which differs from answer
//! to answer far more than the daemon does). The time to first token and the gaps between
//! tokens each path's client saw are reported beside them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use reaper_client::schema::{ChatMessage, ChatRequest, Role};
use reaper_client::{CallOptions, Client, ClientOptions};
use reaper_testkit::{LlamaOptions, LlamaServer};
use serde_json::{json, Value};

use super::relay::{Passed, Relay};
use super::sse::ContentScanner;
use super::{percentiles, ChatArgs};
use crate::progress::Progress;
use crate::reaper::{start_reaperd, stop_reaperd};
use crate::report::histogram;

/// What is asked: long enough an answer to reach `max_tokens` every time.
const QUESTION: &str = "Count from 1 to 500, one number per line.";

/// One answer as its client saw it.
struct Seen {
    started: Instant,
    /// Each piece of text, with when the client had it.
    pieces: Vec<(Instant, String)>,
}

/// Each path's distributions, in microseconds.
struct Path {
    ttft: Histogram<u64>,
    gap: Histogram<u64>,
    first_hop: Histogram<u64>,
    hop: Histogram<u64>,
    answers: u64,
    tokens: u64,
    /// Answers whose pieces could not be matched with the relay's (left out, counted).
    unmatched: u64,
}

impl Path {
    fn new() -> Path {
        Path {
            ttft: histogram(),
            gap: histogram(),
            first_hop: histogram(),
            hop: histogram(),
            answers: 0,
            tokens: 0,
            unmatched: 0,
        }
    }

    fn record(&mut self, seen: &Seen, passed: &[Passed]) {
        let us = |d: Duration| d.as_micros().max(1) as u64;
        let Some(&(first, _)) = seen.pieces.first() else {
            self.unmatched += 1;
            return;
        };
        self.answers += 1;
        self.tokens += seen.pieces.len() as u64;
        self.ttft.saturating_record(us(first - seen.started));
        for pair in seen.pieces.windows(2) {
            self.gap.saturating_record(us(pair[1].0 - pair[0].0));
        }
        match hops(seen, passed) {
            Some(hops) => {
                self.first_hop.saturating_record(us(hops[0]));
                for d in &hops[1..] {
                    self.hop.saturating_record(us(*d));
                }
            }
            None => self.unmatched += 1,
        }
    }

    fn row(&self, path: &str) -> Value {
        json!({
            "bench": "chat-overhead",
            "path": path,
            "answers": self.answers,
            "tokens": self.tokens,
            "unmatched": self.unmatched,
            "ttft": percentiles(&self.ttft),
            "gap": percentiles(&self.gap),
            "first_hop": percentiles(&self.first_hop),
            "hop": percentiles(&self.hop),
        })
    }
}

/// Per piece the client got, how long after the relay passed the byte that completed it.
/// `None` when the two do not hold the same text (a piece the relay could not read).
fn hops(seen: &Seen, passed: &[Passed]) -> Option<Vec<Duration>> {
    let total_seen: usize = seen.pieces.iter().map(|(_, t)| t.len()).sum();
    let total_passed: usize = passed.iter().map(|p| p.text.len()).sum();
    if total_seen != total_passed || passed.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(seen.pieces.len());
    let (mut have, mut at, mut relayed) = (0, 0, 0);
    for (when, text) in &seen.pieces {
        have += text.len();
        while relayed < have {
            relayed += passed.get(at)?.text.len();
            at += 1;
        }
        out.push(when.checked_duration_since(passed[at - 1].at)?);
    }
    Some(out)
}

/// A client of llama.cpp's own API on one keep-alive connection, as an editor plugin is.
struct Direct {
    addr: SocketAddr,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Direct {
    async fn connection(
        &mut self,
    ) -> anyhow::Result<&mut hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = tokio::net::TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().expect("just set"))
    }

    async fn ask(&mut self, model: &str, max_tokens: u32) -> anyhow::Result<Seen> {
        // The body reaperd sends for the same question.
        let body = json!({
            "model": model,
            "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": max_tokens,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        let addr = self.addr;
        let sender = self.connection().await?;
        let request = hyper::Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .header("host", addr.to_string())
            .body(Full::new(Bytes::from(body.to_string())))?;
        let started = Instant::now();
        let response = sender.send_request(request).await?;
        if !response.status().is_success() {
            bail!("llama.cpp answered {}", response.status());
        }
        let mut body = response.into_body();
        let mut scanner = ContentScanner::default();
        let mut pieces = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                let now = Instant::now();
                pieces.extend(scanner.feed(&data).into_iter().map(|t| (now, t)));
            }
        }
        Ok(Seen { started, pieces })
    }
}

async fn through_reaper(client: &Client, max_tokens: u32) -> anyhow::Result<Seen> {
    let request = ChatRequest {
        messages: vec![ChatMessage {
            role: Role::User,
            content: QUESTION.into(),
            timestamp: 0,
        }],
        model: None,
        max_tokens: Some(max_tokens),
        provider: None,
    };
    let started = Instant::now();
    let mut stream = client.chat(&request, CallOptions::default()).await?;
    let mut pieces = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let now = Instant::now();
        if !chunk.delta.is_empty() {
            pieces.push((now, chunk.delta));
        }
    }
    Ok(Seen { started, pieces })
}

/// Runs the measurement: `args.answers` answers per path, alternately.
pub fn run(args: &ChatArgs, progress: &Progress) -> anyhow::Result<Vec<Value>> {
    progress.note("chat overhead: starting llama.cpp (SmolLM2-135M)");
    let llama = LlamaServer::start(LlamaOptions {
        api_key: None,
        parallel: 1,
    });
    let upstream: SocketAddr = llama
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .context("llama.cpp's address")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let relay = Relay::start(upstream).await?;
        let config = format!(
            "[providers.local]\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodel = \"{}\"\nchat_yields = false\n",
            relay.url(),
            llama.model()
        );
        let (child, dir) = start_reaperd(args.reaperd.clone(), &config, progress)?;
        let result = async {
            let client =
                Client::connect(ClientOptions::from_state_dir(&dir.path().join("state"), None)?)
                    .await?;
            let mut direct = Direct {
                addr: relay
                    .url()
                    .trim_start_matches("http://")
                    .parse()
                    .context("the relay's address")?,
                sender: None,
            };
            let (mut ours, mut theirs) = (Path::new(), Path::new());
            let warm_up = 2;
            for round in 0..warm_up + args.answers {
                // Alternately first, so neither path always follows the other's answer.
                for reaper_first in [round % 2 == 0, round % 2 != 0] {
                    let seen = if reaper_first {
                        through_reaper(&client, args.tokens).await?
                    } else {
                        direct.ask(llama.model(), args.tokens).await?
                    };
                    // The last piece's bytes may still be in flight inside the relay's log.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let passed = relay.between(seen.started, Instant::now());
                    if round >= warm_up {
                        let path = if reaper_first { &mut ours } else { &mut theirs };
                        path.record(&seen, &passed);
                    }
                }
                progress.note(&format!(
                    "chat overhead: round {} of {}",
                    round + 1,
                    warm_up + args.answers
                ));
            }
            client.close().await;
            let added = added(&ours, &theirs);
            Ok::<_, anyhow::Error>(vec![
                theirs.row("direct"),
                ours.row("reaper"),
                added,
                json!({"bench": "chat-overhead", "path": "relay", "unreadable": relay.unreadable()}),
            ])
        }
        .await;
        stop_reaperd(child);
        result
    })
}

/// What the daemon adds: reaper's percentile less the direct path's, for the first piece and
/// for the others.
fn added(ours: &Path, theirs: &Path) -> Value {
    let diff = |a: &Histogram<u64>, b: &Histogram<u64>, q: f64| {
        a.value_at_quantile(q) as i64 - b.value_at_quantile(q) as i64
    };
    json!({
        "bench": "chat-overhead",
        "path": "added",
        "ttft_p50_us": diff(&ours.first_hop, &theirs.first_hop, 0.5),
        "ttft_p99_us": diff(&ours.first_hop, &theirs.first_hop, 0.99),
        "token_p50_us": diff(&ours.hop, &theirs.hop, 0.5),
        "token_p99_us": diff(&ours.hop, &theirs.hop, 0.99),
    })
}
