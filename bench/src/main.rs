//! `reaper-bench`: latency and throughput of reaperd, next to peer stacks measured in the same
//! run under the same thread placement.
//!
//! Stacks: `reaper` (a reaperd this tool starts, or one you point it at), and the peers in
//! [`peers`]: raw UDP (the floor), plain quinn, HTTP/1.1 keep-alive, gRPC (tonic). Every call
//! is recorded in an HDR histogram; output is a table (with reaper's figures as ratios to each
//! peer's), or `--json` lines with `stack`, `scenario`, `concurrency`, `connections`, `pin`,
//! `p50_us`, `p90_us`, `p99_us`, `p999_us`, `max_us`, `calls_per_s`; `--hdr-log` and `--plot`
//! keep the whole distributions. `reaper-bench eval-offline` measures the offline provider's
//! completion quality instead, and `reaper-bench keystrokes` a person typing against a real
//! llama.cpp, through reaperd and directly.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use reaper_client::Encoding;

mod chat;
mod eval;
mod keystrokes;
mod lean;
mod lsp;
mod peers;
mod pin;
mod plot;
mod progress;
mod reaper;
mod report;

use pin::Pin;
use progress::Progress;
use report::Row;

/// Measure reaperd against peer stacks (UDP floor, plain quinn, HTTP/1.1, gRPC) in one run.
///
/// Without --state-dir it starts its own reaperd (from beside this binary, or --reaperd) on
/// 127.0.0.1 with a temporary state directory, pinned like the peers' servers, and stops it
/// afterwards. Compare figures only within one placement: on two CPUs a wake-up across CPUs
/// costs about 20 µs each way.
#[derive(Debug, Parser)]
#[command(name = "reaper-bench", version, about, long_about)]
struct Args {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    /// State directory of a running reaperd to measure (then --pin applies to the client only).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The reaperd binary to start when no --state-dir is given.
    #[arg(long, value_name = "PATH")]
    reaperd: Option<PathBuf>,
    /// Thread placements to measure under, each a run of every stack.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Pin::Same, Pin::Split])]
    pin: Vec<Pin>,
    /// Stacks to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Stack::ALL)]
    stacks: Vec<Stack>,
    /// Measure reaper only (the same as --stacks reaper).
    #[arg(long)]
    no_peers: bool,
    /// Sequential calls per scenario.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    calls: u64,
    /// Calls in flight for the throughput scenarios (2 or more; one at a time is always
    /// measured).
    #[arg(long, value_delimiter = ',', default_values_t = [16, 64, 256], value_parser = in_flight)]
    concurrency: Vec<usize>,
    /// Connections the reaper throughput scenarios spread their calls over, 1 to 8 (peers use
    /// one).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8], value_parser = connections)]
    connections: Vec<usize>,
    /// Length of each throughput scenario, in seconds.
    #[arg(long, default_value_t = 3.0, value_parser = seconds)]
    seconds: f64,
    /// A short run of everything (2,000 calls, 1 s throughput scenarios, one connection, 4
    /// rounds): what the CI gate uses.
    #[arg(long)]
    quick: bool,
    /// Measure each placement in this many rounds of every stack in turn, each with its share
    /// of the calls and seconds, and report every scenario over all its rounds (default 1, or
    /// 4 with --quick). On a shared machine a slow stretch then falls on every stack alike
    /// instead of on whichever stack was being measured.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100))]
    rounds: Option<u64>,
    /// Message encoding for reaper.
    #[arg(long, default_value = "rkyv")]
    encoding: Encoding,
    /// Print one JSON object per scenario.
    #[arg(long)]
    json: bool,
    /// Write each scenario's latency distribution as an HDR percentile log (`.hgrm`) here.
    #[arg(long, value_name = "DIR")]
    hdr_log: Option<PathBuf>,
    /// Draw the latency-by-percentile curves of every stack (sequential calls) as an SVG.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Workspace for the completion scenarios (default: the tokio sources in the cargo
    /// registry, about 120,000 lines); "none" skips them.
    #[arg(long, value_name = "DIR")]
    completion_workspace: Option<String>,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// What a chat through reaperd costs: its share of the time to first token and of each
    /// token's delivery against llama.cpp called directly; streaming against a tonic
    /// server-streaming chat proxy; a completion's latency while a chat streams on the same
    /// llama.cpp, with and without priority.
    Chat(chat::ChatArgs),
    /// Measure the offline provider's completion quality on real crates (no daemon).
    EvalOffline(eval::EvalArgs),
    /// Replay a person typing a real file against llama.cpp (SmolLM2), through reaperd and
    /// the way editor plugins talk to llama.cpp directly: ghost-text latency, requests and
    /// tokens the model spent, cache hits, completion quality, the daemon's own overhead.
    Keystrokes(keystrokes::KeystrokesArgs),
    /// What the editor bridge adds: inline completions through `reaper lsp` against the same
    /// Completion call made directly, alternately, on one daemon (cache hits: transport and
    /// bridge only).
    Lsp(lsp::LspArgs),
    /// What a client of reaper's own could cost: core's sans-IO client state machine on a
    /// blocking socket, no async runtime, against reaper-client (quinn on tokio), Health one
    /// call at a time and many in flight, alternately on one daemon.
    Lean(lean::LeanArgs),
}

/// A stack measured by this tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Stack {
    /// reaperd over its own protocol.
    Reaper,
    /// Blocking UDP ping-pong: the floor.
    Udp,
    /// Plain quinn on tokio, a stream per call.
    Quinn,
    /// HTTP/1.1 keep-alive with JSON bodies (hyper).
    Http1,
    /// gRPC over HTTP/2 (tonic).
    Tonic,
}

impl Stack {
    const ALL: [Stack; 5] = [
        Stack::Udp,
        Stack::Quinn,
        Stack::Http1,
        Stack::Tonic,
        Stack::Reaper,
    ];
}

impl std::fmt::Display for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum;
        let name = self.to_possible_value().expect("no skipped variants");
        f.write_str(name.get_name())
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    match &args.command {
        Some(BenchCommand::Chat(chat_args)) => return chat::run(chat_args),
        Some(BenchCommand::EvalOffline(eval_args)) => return eval::run(eval_args),
        Some(BenchCommand::Keystrokes(keystrokes_args)) => return keystrokes::run(keystrokes_args),
        Some(BenchCommand::Lsp(lsp_args)) => return lsp::run(lsp_args),
        Some(BenchCommand::Lean(lean_args)) => return lean::run(lean_args),
        None => {}
    }
    if args.quick {
        args.calls = args.calls.min(2_000);
        args.seconds = args.seconds.min(1.0);
        args.connections = vec![1];
        args.rounds.get_or_insert(4);
    }
    if args.no_peers {
        args.stacks = vec![Stack::Reaper];
    }
    let progress = Progress::new(planned_steps(&args), !args.json);
    let mut rows = Vec::new();
    for &pin in &args.pin {
        // A fresh thread per placement: the main thread is never pinned, so `none` stays so.
        let measured = std::thread::scope(|scope| {
            scope
                .spawn(|| measure_placement(&args, pin, &progress))
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the {pin} measurement panicked")))
        })?;
        rows.extend(measured);
    }
    progress.finish();
    if let Some(dir) = &args.hdr_log {
        report::write_hdr_logs(dir, &rows)?;
        eprintln!("HDR percentile logs written to {}", dir.display());
    }
    if let Some(path) = &args.plot {
        plot::latency_curves(path, &rows)?;
        eprintln!("plot written to {}", path.display());
    }
    if args.json {
        for row in &rows {
            println!("{}", row.json());
        }
    } else {
        println!("{}", report::header());
        for row in &rows {
            println!("{}", row.line());
        }
        for line in report::ratios(&rows) {
            println!("{line}");
        }
    }
    Ok(())
}

fn in_flight(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n >= 2 => Ok(n),
        _ => Err("calls in flight must be a whole number, 2 or more".to_owned()),
    }
}

fn connections(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (1..=8).contains(&n) => Ok(n),
        _ => Err("connections must be a whole number from 1 to 8".to_owned()),
    }
}

fn seconds(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 3600.0 => Ok(s),
        _ => Err("seconds must be more than 0 and at most 3600".to_owned()),
    }
}

/// How many scenarios the run will measure, for the progress bar.
fn planned_steps(args: &Args) -> u64 {
    let throughput = args.concurrency.len();
    let per_pin: usize = args
        .stacks
        .iter()
        .map(|stack| match stack {
            Stack::Udp | Stack::Http1 => 1,
            Stack::Quinn => 2 + throughput,
            Stack::Tonic => 1 + throughput,
            Stack::Reaper => {
                let completion = args.completion_workspace.as_deref() != Some("none");
                3 + usize::from(completion) * (2 + throughput * args.connections.len())
            }
        })
        .sum();
    (per_pin * args.pin.len()) as u64 * rounds(args)
}

fn rounds(args: &Args) -> u64 {
    args.rounds.unwrap_or(1)
}

/// One round's share of a scenario: its calls and seconds divided by the rounds.
#[derive(Debug, Clone, Copy)]
struct Share {
    /// Sequential calls.
    calls: u64,
    /// Seconds of a throughput scenario.
    seconds: f64,
}

/// Every stack under one placement, in rounds of every stack in turn, merged.
fn measure_placement(args: &Args, pin: Pin, progress: &Progress) -> anyhow::Result<Vec<Row>> {
    let rounds = rounds(args);
    let share = Share {
        calls: args.calls.div_ceil(rounds),
        seconds: args.seconds / rounds as f64,
    };
    let mut rows = Vec::new();
    for round in 1..=rounds {
        for &stack in &args.stacks {
            progress.stage(&format!("{pin}: {stack} (round {round} of {rounds})"));
            match stack {
                Stack::Udp => rows.push(progress.done(peers::udp(pin, share.calls)?)),
                Stack::Http1 => rows.push(progress.done(peers::http1(pin, share.calls)?)),
                Stack::Quinn | Stack::Tonic => {
                    if stack == Stack::Quinn {
                        rows.push(progress.done(peers::quinn_connect(pin, share.calls)?));
                    }
                    let peer = match stack {
                        Stack::Quinn => peers::quinn,
                        _ => peers::tonic,
                    };
                    for c in std::iter::once(1).chain(args.concurrency.iter().copied()) {
                        rows.push(progress.done(peer(pin, share.calls, c, share.seconds)?));
                    }
                }
                Stack::Reaper => rows.extend(reaper::measure(args, share, pin, progress)?),
            }
        }
    }
    report::merge_rounds(rows)
}
