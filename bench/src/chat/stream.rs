//! Streaming through reaperd against a tonic server-streaming chat proxy doing the same work,
//! in one run and the same placement: both read the same model server (a local server in the
//! OpenAI format that streams its answer as fast as it can, so the model is not what is
//! measured) and forward each piece of the answer as one message. Time to first message, the
//! time of the whole stream, and messages per second.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use reaper_client::schema::{ChatMessage, ChatRequest, Role};
use reaper_client::{CallOptions, Client, ClientOptions};
use reaper_testkit::openai::{self, OpenAiServer};
use serde_json::{json, Value};

use super::{percentiles, ChatArgs};
use crate::peers::{spawn_chat_proxy, ChatProxyClient};
use crate::pin::{pin_current, Pin};
use crate::progress::Progress;
use crate::reaper::{start_reaperd, stop_reaperd};
use crate::report::histogram;

const MODEL: &str = "firehose";

/// One stack's streams.
struct Streams {
    first: Histogram<u64>,
    whole: Histogram<u64>,
    /// The model's pieces delivered.
    tokens: u64,
    /// Messages they came in (reaperd sends pieces that come in together as one).
    messages: u64,
    bytes: u64,
    seconds: f64,
}

impl Streams {
    fn new() -> Streams {
        Streams {
            first: histogram(),
            whole: histogram(),
            tokens: 0,
            messages: 0,
            bytes: 0,
            seconds: 0.0,
        }
    }

    fn record(&mut self, started: Instant, first: Instant, tokens: u64, messages: u64, bytes: u64) {
        let whole = started.elapsed();
        self.first
            .saturating_record((first - started).as_micros().max(1) as u64);
        self.whole
            .saturating_record(whole.as_micros().max(1) as u64);
        self.tokens += tokens;
        self.messages += messages;
        self.bytes += bytes;
        self.seconds += whole.as_secs_f64();
    }

    fn row(&self, stack: &str, pin: Pin, per_stream: u32) -> Value {
        json!({
            "bench": "chat-stream",
            "path": stack,
            "pin": pin.name(),
            "streams": self.whole.len(),
            "tokens_per_stream": per_stream,
            "messages_per_stream": self.messages / self.whole.len().max(1),
            "first_message": percentiles(&self.first),
            "stream": percentiles(&self.whole),
            "tokens_per_s": (self.tokens as f64 / self.seconds.max(1e-9)).round(),
            "mb_per_s": (self.bytes as f64 / self.seconds.max(1e-9) / 1e6 * 10.0).round() / 10.0,
        })
    }
}

/// Runs the comparison under each placement.
pub fn run(args: &ChatArgs, progress: &Progress) -> anyhow::Result<Vec<Value>> {
    let mut rows = Vec::new();
    for &pin in &args.pin {
        rows.extend(one_placement(args, pin, progress)?);
    }
    Ok(rows)
}

fn one_placement(args: &ChatArgs, pin: Pin, progress: &Progress) -> anyhow::Result<Vec<Value>> {
    // The servers (model, daemon, proxy) on the server side; they inherit this thread's CPU.
    pin_current(pin.server_cpu());
    let tokens: Vec<String> = (0..args.messages as usize)
        .map(|i| format!("w{i:05} "))
        .collect();
    let expected: u64 = tokens.iter().map(|t| t.len() as u64).sum();
    let model = OpenAiServer::start(openai::Script {
        model: MODEL.into(),
        tokens,
        pace: Duration::ZERO,
        trouble: None,
        responder: None,
    });
    let config = format!(
        "[providers.local]\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"{MODEL}\"\nchat_yields = false\n",
        model.url()
    );
    let (child, dir) = start_reaperd(args.reaperd.clone(), &config, progress)?;
    let proxy = spawn_chat_proxy(pin, model.url().trim_end_matches("/v1").to_owned());
    pin_current(pin.client_cpu());
    let result = (|| {
        let proxy = proxy?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let client =
                Client::connect(ClientOptions::from_state_dir(&dir.path().join("state"), None)?)
                    .await?;
            let mut tonic = ChatProxyClient::connect(proxy).await?;
            let request = ChatRequest {
                messages: vec![ChatMessage {
                    role: Role::User,
                    content: "Stream.".into(),
                    timestamp: 0,
                }],
                model: None,
                max_tokens: None,
                provider: None,
            };
            let body = Bytes::from(
                json!({"model": MODEL, "messages": [{"role": "user", "content": "Stream."}], "stream": true})
                    .to_string(),
            );
            let (mut ours, mut theirs) = (Streams::new(), Streams::new());
            let warm_up = (args.streams / 10).max(3);
            for round in 0..warm_up + args.streams {
                let measured = round >= warm_up;
                // reaperd.
                let started = Instant::now();
                let mut stream = client.chat(&request, CallOptions::default()).await?;
                let (mut first, mut count, mut bytes) = (None, 0u64, 0u64);
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk?;
                    first.get_or_insert_with(Instant::now);
                    count += 1;
                    bytes += chunk.delta.len() as u64;
                }
                anyhow::ensure!(bytes == expected, "reaper: {bytes} bytes of text");
                if measured {
                    let tokens = u64::from(args.messages);
                    ours.record(started, first.unwrap_or(started), tokens, count, bytes);
                }
                // tonic.
                let started = Instant::now();
                let (mut first, mut count, mut bytes) = (None, 0u64, 0u64);
                tonic
                    .chat(body.clone(), |message| {
                        first.get_or_insert_with(Instant::now);
                        count += 1;
                        // The delta's length, as for reaper: the JSON around it is the same.
                        bytes += serde_json::from_slice::<Value>(message)
                            .ok()
                            .and_then(|v| v["delta"].as_str().map(str::len))
                            .unwrap_or(0) as u64;
                    })
                    .await?;
                anyhow::ensure!(bytes == expected, "tonic: {bytes} bytes of text");
                if measured {
                    let tokens = u64::from(args.messages);
                    theirs.record(started, first.unwrap_or(started), tokens, count, bytes);
                }
            }
            client.close().await;
            progress.note(&format!("chat stream, pin {pin}: done"));
            Ok::<_, anyhow::Error>(vec![
                ours.row("reaper", pin, args.messages),
                theirs.row("tonic", pin, args.messages),
            ])
        })
    })();
    stop_reaperd(child);
    pin_current(None);
    result
}
