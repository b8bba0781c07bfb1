//! `reaper-bench chat`: what streaming a chat through reaperd costs, in three measurements:
//!
//! - `overhead`: the daemon's share of the time to first token and of each later token's
//!   delivery, against calling the same llama.cpp server directly over HTTP, answer for
//!   answer ([`overhead`]);
//! - `stream`: streams through reaperd against a tonic server-streaming chat proxy doing the
//!   same work, same run, same placement ([`stream`]);
//! - `priority`: a completion's latency while a chat streams on the same llama.cpp, with and
//!   without the completion's priority ([`priority`]).

mod overhead;
mod priority;
mod relay;
pub mod sse;
mod stream;

use std::path::PathBuf;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::pin::Pin;
use crate::progress::Progress;

/// One of the three measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The daemon's share of time to first token and of the gap between tokens (llama.cpp).
    Overhead,
    /// Streaming throughput and time to first message against tonic.
    Stream,
    /// Completion latency with a chat on the same llama.cpp, with and without priority.
    Priority,
}

/// `reaper-bench chat` settings.
#[derive(Debug, clap::Args)]
pub struct ChatArgs {
    /// Which measurements to run.
    #[arg(long, value_delimiter = ',', default_values = ["overhead", "stream", "priority"])]
    pub parts: Vec<Part>,
    /// overhead: answers per path (after 2 unmeasured each).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub answers: u64,
    /// overhead: tokens per answer.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(2..=1_500))]
    pub tokens: u32,
    /// stream: streams per stack and placement (after a tenth as many unmeasured, at least 3).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub streams: u64,
    /// stream: the model's pieces (tokens) per stream.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub messages: u32,
    /// stream: placements (same: every server and client on CPU 0; split: servers on CPU 1).
    #[arg(long, value_delimiter = ',', default_values = ["same", "split"])]
    pub pin: Vec<Pin>,
    /// priority: completions per scenario.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub completions: u64,
    /// priority: the longest answer of the chat streaming meanwhile, in tokens.
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u32).range(16..=1_500))]
    pub chat_tokens: u32,
    /// priority: llama.cpp's slots (requests it generates for at once), one run each.
    #[arg(long, value_delimiter = ',', default_values = ["1", "2"])]
    pub parallel: Vec<u32>,
    /// The reaperd binary (default: the one beside this binary).
    #[arg(long, value_name = "PATH")]
    pub reaperd: Option<PathBuf>,
    /// One JSON object per row instead of the tables.
    #[arg(long)]
    pub json: bool,
}

/// Runs the measurements asked for and prints them.
pub fn run(args: &ChatArgs) -> anyhow::Result<()> {
    let progress = Progress::new(0, !args.json);
    let mut rows = Vec::new();
    for part in &args.parts {
        rows.extend(match part {
            Part::Overhead => overhead::run(args, &progress)?,
            Part::Stream => stream::run(args, &progress)?,
            Part::Priority => priority::run(args, &progress)?,
        });
    }
    progress.finish();
    if args.json {
        for row in &rows {
            println!("{row}");
        }
    } else {
        print_tables(&rows);
    }
    Ok(())
}

/// p50, p90, p95, p99 and max of a histogram, in microseconds.
pub fn percentiles(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.5),
        "p90_us": h.value_at_quantile(0.9),
        "p95_us": h.value_at_quantile(0.95),
        "p99_us": h.value_at_quantile(0.99),
        "max_us": h.max(),
    })
}

fn us(row: &Value, what: &str, at: &str) -> String {
    row[what][at]
        .as_u64()
        .map_or("-".to_owned(), |v| v.to_string())
}

fn print_tables(rows: &[Value]) {
    let of = |bench: &'static str| rows.iter().filter(move |r| r["bench"] == bench);
    if of("chat-overhead").next().is_some() {
        println!("\nchat overhead against llama.cpp called directly (µs; hop: from the relay in front of llama.cpp to the client)");
        println!("| path | answers | pieces | TTFT p50 | TTFT p99 | gap p50 | gap p99 | first-token hop p50 | p99 | later-token hop p50 | p99 |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for r in of("chat-overhead").filter(|r| r["path"] == "direct" || r["path"] == "reaper") {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r["path"].as_str().unwrap_or(""),
                r["answers"],
                r["tokens"],
                us(r, "ttft", "p50_us"),
                us(r, "ttft", "p99_us"),
                us(r, "gap", "p50_us"),
                us(r, "gap", "p99_us"),
                us(r, "first_hop", "p50_us"),
                us(r, "first_hop", "p99_us"),
                us(r, "hop", "p50_us"),
                us(r, "hop", "p99_us"),
            );
        }
        for r in of("chat-overhead").filter(|r| r["path"] == "added") {
            println!(
                "daemon's share: first token p50 {} µs, p99 {} µs; later tokens p50 {} µs, p99 {} µs (goal: under 1,000 µs at p99)",
                r["ttft_p50_us"], r["ttft_p99_us"], r["token_p50_us"], r["token_p99_us"]
            );
        }
    }
    if of("chat-stream").next().is_some() {
        println!("\nstreaming against a tonic server-streaming chat proxy (same model server, same placement)");
        println!("| stack | pin | streams | tokens | messages | first message p50 µs | p99 µs | stream p50 µs | p99 µs | tokens/s | MB/s of text |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for r in of("chat-stream") {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r["path"].as_str().unwrap_or(""),
                r["pin"].as_str().unwrap_or(""),
                r["streams"],
                r["tokens_per_stream"],
                r["messages_per_stream"],
                us(r, "first_message", "p50_us"),
                us(r, "first_message", "p99_us"),
                us(r, "stream", "p50_us"),
                us(r, "stream", "p99_us"),
                r["tokens_per_s"],
                r["mb_per_s"],
            );
        }
    }
    if of("chat-priority").next().is_some() {
        println!("\ncompletion latency with a chat streaming on the same llama.cpp (ms)");
        println!("| llama.cpp slots | scenario | completions | p50 | p95 | max | chat tokens/s meanwhile | chat gave way |");
        println!("|---|---|---|---|---|---|---|---|");
        for r in of("chat-priority") {
            let ms = |at: &str| {
                r["completion"][at]
                    .as_u64()
                    .map_or("-".to_owned(), |v| format!("{:.0}", v as f64 / 1000.0))
            };
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r["llama_slots"],
                r["scenario"].as_str().unwrap_or(""),
                r["completions"],
                ms("p50_us"),
                ms("p95_us"),
                ms("max_us"),
                r["chat_tokens_per_s"],
                r["chat_yields"],
            );
        }
    }
}
