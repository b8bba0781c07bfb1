//! A keystroke's completion while a chat streams on the same local model: completion latency
//! alone, and with a chat answering without priority, with the reserved slot only, and with the
//! chat giving way (`chat_yields`), each against a real llama.cpp (SmolLM2) with the given
//! number of slots.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use reaper_client::schema::{ChatMessage, ChatRequest, CompletionRequest, Role};
use reaper_client::{CallOptions, Client, ClientOptions};
use reaper_testkit::{LlamaOptions, LlamaServer};
use serde_json::{json, Value};

use super::{percentiles, ChatArgs};
use crate::progress::Progress;
use crate::reaper::{start_reaperd, stop_reaperd};
use crate::report::histogram;

/// A person's pause between two completions.
const BETWEEN: Duration = Duration::from_millis(300);

/// One scenario: whether a chat runs, and the provider's settings.
struct Scenario {
    name: &'static str,
    chat: bool,
    reserve: u32,
    yields: bool,
}

const SCENARIOS: [Scenario; 4] = [
    Scenario {
        name: "alone",
        chat: false,
        reserve: 0,
        yields: false,
    },
    Scenario {
        name: "chat, no priority",
        chat: true,
        reserve: 0,
        yields: false,
    },
    Scenario {
        name: "chat, reserved slot",
        chat: true,
        reserve: 1,
        yields: false,
    },
    Scenario {
        name: "chat, priority (reserve + yield)",
        chat: true,
        reserve: 1,
        yields: true,
    },
];

/// Runs every scenario against llama.cpp with each slot count of `args.parallel`.
pub fn run(args: &ChatArgs, progress: &Progress) -> anyhow::Result<Vec<Value>> {
    let mut rows = Vec::new();
    for &parallel in &args.parallel {
        progress.note(&format!("chat priority: llama.cpp with {parallel} slot(s)"));
        let llama = LlamaServer::start(LlamaOptions {
            api_key: None,
            parallel,
        });
        for scenario in &SCENARIOS {
            rows.push(one(args, &llama, parallel, scenario, progress)?);
        }
    }
    Ok(rows)
}

fn one(
    args: &ChatArgs,
    llama: &LlamaServer,
    parallel: u32,
    scenario: &Scenario,
    progress: &Progress,
) -> anyhow::Result<Value> {
    let config = format!(
        "[providers.local]\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodel = \"{}\"\nmax_tokens = 8\ntimeout_ms = 60000\nmax_in_flight = 2\ncompletion_reserve = {}\nchat_yields = {}\n\n[providers.offline]\nenabled = false\n\n[cache]\nenabled = false\n\n[rpc]\ncompletion_timeout = 60000\n",
        llama.base_url(),
        llama.model(),
        scenario.reserve,
        scenario.yields
    );
    let (child, dir) = start_reaperd(args.reaperd.clone(), &config, progress)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let options = ClientOptions::from_state_dir(&dir.path().join("state"), None)?;
        let client = Arc::new(Client::connect(options).await?);
        // The probe tells the daemon what the server is (llama.cpp, how many slots) before
        // anything is measured.
        let start = Instant::now();
        while client.providers().await?.providers.iter().any(|p| {
            p.name == "local" && p.status != reaper_client::schema::ProviderStatus::Available
        }) {
            anyhow::ensure!(start.elapsed() < Duration::from_secs(30), "llama.cpp never probed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let chat_tokens = Arc::new(AtomicU64::new(0));
        let chat = scenario.chat.then(|| {
            tokio::spawn(chat_on(
                client.clone(),
                args.chat_tokens,
                stop.clone(),
                chat_tokens.clone(),
            ))
        });
        if chat.is_some() {
            // The chat has started streaming before the first keystroke.
            let start = Instant::now();
            while chat_tokens.load(Ordering::Relaxed) < 5 && start.elapsed() < Duration::from_secs(30) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let mut latency: Histogram<u64> = histogram();
        let started = Instant::now();
        let tokens_before = chat_tokens.load(Ordering::Relaxed);
        for i in 0..args.completions {
            let request = CompletionRequest {
                prefix: format!("def add_{i}(a, b):\n    return "),
                suffix: "\n".into(),
                language: "python".into(),
                file_path: None,
                context: None,
            };
            let asked = Instant::now();
            let options = CallOptions {
                deadline: Some(Duration::from_secs(60)),
            };
            let answer = client.complete(&request, options).await?;
            anyhow::ensure!(answer.provider == "local", "answered by {}", answer.provider);
            latency.saturating_record(asked.elapsed().as_micros().max(1) as u64);
            tokio::time::sleep(BETWEEN).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        let chat_rate = (chat_tokens.load(Ordering::Relaxed) - tokens_before) as f64 / seconds;
        stop.store(true, Ordering::Relaxed);
        if let Some(chat) = chat {
            chat.abort();
        }
        let health = client.health().await?;
        let yields = health
            .providers
            .iter()
            .find(|p| p.name == "local")
            .map_or(0, |p| p.chat_yields);
        client.close().await;
        progress.note(&format!(
            "chat priority, {parallel} slot(s), {}: p50 {} ms",
            scenario.name,
            latency.value_at_quantile(0.5) / 1000
        ));
        Ok::<_, anyhow::Error>(json!({
            "bench": "chat-priority",
            "scenario": scenario.name,
            "llama_slots": parallel,
            "completions": latency.len(),
            "completion": percentiles(&latency),
            "chat_tokens_per_s": if scenario.chat { json!((chat_rate * 10.0).round() / 10.0) } else { json!(null) },
            "chat_yields": yields,
        }))
    });
    stop_reaperd(child);
    result
}

/// Keeps a long chat streaming, one answer after another, counting its tokens.
async fn chat_on(
    client: Arc<Client>,
    max_tokens: u32,
    stop: Arc<AtomicBool>,
    tokens: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let request = ChatRequest {
        messages: vec![ChatMessage {
            role: Role::User,
            content: "Write a long story about a lighthouse keeper and the sea.".into(),
            timestamp: 0,
        }],
        model: None,
        max_tokens: Some(max_tokens),
        provider: None,
    };
    while !stop.load(Ordering::Relaxed) {
        let mut stream = client.chat(&request, CallOptions::default()).await?;
        while let Some(chunk) = stream.next().await {
            if !chunk?.delta.is_empty() {
                tokens.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}
