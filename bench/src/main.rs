//! `reaper-bench`: latency and throughput of reaperd, next to peer stacks measured in the same
//! run under the same thread placement.
//!
//! Stacks: `reaper` (a reaperd this tool starts, or one you point it at), and the peers in
//! [`peers`]: raw UDP (the floor), plain quinn, HTTP/1.1 keep-alive, gRPC (tonic). Every call is recorded in
//! an HDR histogram; output is a table (with reaper's figures as ratios to each peer's), or
//! `--json` lines with `stack`, `scenario`, `concurrency`, `pin`, `p50_us`, `p90_us`,
//! `p99_us`, `p999_us`, `max_us`, `calls_per_s`. `reaper-bench eval-offline` measures the
//! offline provider's completion quality instead.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use reaper_client::schema::CompletionRequest;
use reaper_client::{CallOptions, Client, ClientOptions, Encoding};

mod eval;
mod peers;
mod pin;
mod report;

use pin::{pin_current, Pin};
use report::{histogram, Row};

/// Measure reaperd against peer stacks (UDP floor, plain quinn, HTTP/1.1, gRPC) in one run.
///
/// Without --state-dir it starts its own reaperd (from beside this binary, or --reaperd) on
/// 127.0.0.1 with a temporary state directory, pinned like the peers' servers, and stops it
/// afterwards.
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
    /// Sequential calls per scenario.
    #[arg(long, default_value_t = 10_000)]
    calls: u64,
    /// Calls in flight for the throughput scenarios.
    #[arg(long, value_delimiter = ',', default_values_t = [16, 64])]
    concurrency: Vec<usize>,
    /// Length of each throughput scenario, in seconds.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// A short run of everything (2,000 calls, 1 s throughput scenarios): what the CI gate uses.
    #[arg(long)]
    quick: bool,
    /// Measure reaper only.
    #[arg(long)]
    no_peers: bool,
    /// Message encoding for reaper.
    #[arg(long, default_value = "rkyv")]
    encoding: Encoding,
    /// Print one JSON object per scenario.
    #[arg(long)]
    json: bool,
    /// Workspace for the completion scenarios (default: the tokio sources in the cargo
    /// registry, about 120,000 lines); "none" skips them.
    #[arg(long, value_name = "DIR")]
    completion_workspace: Option<String>,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Measure the offline provider's completion quality on real crates (no daemon).
    EvalOffline(eval::EvalArgs),
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if let Some(BenchCommand::EvalOffline(eval_args)) = &args.command {
        return eval::run(eval_args);
    }
    if args.quick {
        args.calls = args.calls.min(2_000);
        args.seconds = args.seconds.min(1.0);
    }
    let mut rows = Vec::new();
    for &pin in &args.pin {
        // A fresh thread per placement: the main thread is never pinned, so `none` stays so.
        let measured = std::thread::scope(|scope| {
            scope
                .spawn(|| measure_placement(&args, pin))
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the {pin} measurement panicked")))
        })?;
        rows.extend(measured);
        if !args.json {
            eprintln!("measured placement {pin}");
        }
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

/// Every stack under one placement.
fn measure_placement(args: &Args, pin: Pin) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    if !args.no_peers {
        rows.push(peers::udp(pin, args.calls)?);
        rows.push(peers::quinn(pin, args.calls, 1, args.seconds)?);
        for &c in &args.concurrency {
            rows.push(peers::quinn(pin, args.calls, c, args.seconds)?);
        }
        rows.push(peers::http1(pin, args.calls)?);
        rows.push(peers::tonic(pin, args.calls, 1, args.seconds)?);
        for &c in &args.concurrency {
            rows.push(peers::tonic(pin, args.calls, c, args.seconds)?);
        }
    }
    rows.extend(measure_reaper(args, pin)?);
    Ok(rows)
}

/// Starts reaperd pinned for the server side (unless one is given), then measures it from a
/// client pinned for the client side.
fn measure_reaper(args: &Args, pin: Pin) -> anyhow::Result<Vec<Row>> {
    let mut spawned = None;
    let state_dir = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => {
            // The daemon inherits the CPU this thread is pinned to when it is started.
            pin_current(pin.server_cpu());
            let started = start_reaperd(args.reaperd.clone());
            let (child, dir) = started?;
            let path = dir.path().join("state");
            spawned = Some((child, dir));
            path
        }
    };
    pin_current(pin.client_cpu());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(scenarios(args, pin, state_dir));
    if let Some((mut child, dir)) = spawned {
        if let Some(rss) = rss_kib(child.id()) {
            eprintln!("reaperd RSS after the {pin} run: {rss} KiB");
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
        drop(dir);
    }
    result
}

fn start_reaperd(explicit: Option<PathBuf>) -> anyhow::Result<(Child, tempfile::TempDir)> {
    let binary = match explicit {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("reaperd"),
    };
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let child = Command::new(&binary)
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(&state)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (build it with `cargo build --release`)",
                binary.display()
            )
        })?;
    let start = Instant::now();
    while !state.join("endpoint").exists() {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("reaperd did not start within 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Some(rss) = rss_kib(child.id()) {
        eprintln!("reaperd idle RSS: {rss} KiB");
    }
    Ok((child, dir))
}

/// Resident set size of a process, from /proc.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn scenarios(args: &Args, pin: Pin, state_dir: PathBuf) -> anyhow::Result<Vec<Row>> {
    let pin_name = pin.name();
    let mut options = ClientOptions::from_state_dir(&state_dir, None)?;
    options.encoding = args.encoding;
    let mut rows = Vec::new();

    // Time to the first response on a new connection (1-RTT handshake, then a call).
    let mut h = histogram();
    let started = Instant::now();
    for _ in 0..(args.calls / 100).clamp(10, 100) {
        let t = Instant::now();
        let client = Client::connect(options.clone()).await?;
        client.health().await?;
        h.saturating_record(t.elapsed().as_micros() as u64);
        client.close().await;
    }
    rows.push(Row::new(
        "reaper",
        "connect_first_call",
        1,
        pin_name,
        &h,
        started.elapsed().as_secs_f64(),
    ));

    let client = Arc::new(Client::connect(options.clone()).await?);
    let (h, seconds) = report::time_sequential_async(args.calls, async || {
        client.health().await?;
        Ok(())
    })
    .await?;
    rows.push(Row::new("reaper", "health", 1, pin_name, &h, seconds));

    if args.completion_workspace.as_deref() != Some("none") {
        rows.extend(completion_scenarios(args, pin_name, &client).await?);
    }
    if let Some(stats) = client.connection_stats().await {
        let path = stats.path;
        eprintln!(
            "client connection ({pin}): {} datagrams out, {} in, {} packets lost, {} congestion events, rtt {:?}, cwnd {} B",
            stats.udp_tx.datagrams, stats.udp_rx.datagrams, path.lost_packets, path.congestion_events, path.rtt, path.cwnd
        );
    }
    client.close().await;
    Ok(rows)
}

/// Completions against a real workspace with a 2 KiB prefix: a cache hit (the same request
/// again: the `unary_2k` scenario compared with the peers, at every concurrency) and an
/// offline-provider miss (the suffix varies, so the key does).
async fn completion_scenarios(
    args: &Args,
    pin: &'static str,
    client: &Arc<Client>,
) -> anyhow::Result<Vec<Row>> {
    let workspace = match &args.completion_workspace {
        Some(dir) => PathBuf::from(dir),
        None => eval::registry_crate("tokio")?,
    };
    let source = std::fs::read_to_string(workspace.join("src/runtime/builder.rs"))
        .or_else(|_| std::fs::read_to_string(workspace.join("src/lib.rs")))
        .context("the completion workspace needs src/lib.rs")?;
    // Cut 24 bytes into a line two thirds into the file; send the 2 KiB before the cursor.
    let mut cut = source.len() * 2 / 3;
    while !source.is_char_boundary(cut) {
        cut -= 1;
    }
    let line_start = source[..cut].rfind('\n').map_or(0, |i| i + 1);
    let mut cut = (line_start + (cut - line_start).min(24)).min(source.len());
    while !source.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut from = cut.saturating_sub(peers::REQUEST_BYTES);
    while !source.is_char_boundary(from) {
        from += 1;
    }
    let file = workspace
        .join("src/bench_new_file.rs")
        .display()
        .to_string();
    let request = |suffix: String| CompletionRequest {
        prefix: source[from..cut].to_owned(),
        suffix,
        language: "rust".to_owned(),
        file_path: Some(file.clone()),
        context: None,
    };
    // The first request starts indexing; wait for an answer worth caching (bounded).
    let started = Instant::now();
    loop {
        let response = client
            .complete(&request(String::new()), CallOptions::default())
            .await?;
        if !response.completion.is_empty() {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!(
                "the offline provider never answered for {}",
                workspace.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut rows = Vec::new();
    let same = Arc::new(request(String::new()));

    let mut hit = histogram();
    let mut miss = histogram();
    let started = Instant::now();
    for i in 0..args.calls {
        let t = Instant::now();
        let r = client.complete(&same, CallOptions::default()).await?;
        hit.saturating_record(t.elapsed().as_micros() as u64);
        if !r.cached {
            bail!("the repeated request was not answered from the cache");
        }
        let varied = request(format!("\n// {i}\n"));
        let t = Instant::now();
        let r = client.complete(&varied, CallOptions::default()).await?;
        miss.saturating_record(t.elapsed().as_micros() as u64);
        if r.cached {
            bail!("a varied request was answered from the cache");
        }
    }
    let both = started.elapsed().as_secs_f64();
    let share = |h: &hdrhistogram::Histogram<u64>| h.mean() * h.len() as f64 / 1e6;
    let (hit_s, miss_s) = (share(&hit), share(&miss));
    let scale = both / (hit_s + miss_s).max(1e-9);
    rows.push(Row::new("reaper", "unary_2k", 1, pin, &hit, hit_s * scale));
    rows.push(Row::new(
        "reaper",
        "completion_offline_miss",
        1,
        pin,
        &miss,
        miss_s * scale,
    ));

    for &concurrency in &args.concurrency {
        let (client, same) = (client.clone(), same.clone());
        let (h, seconds) = report::time_in_flight(concurrency, args.seconds, move || {
            let (client, same) = (client.clone(), same.clone());
            async move {
                client.complete(&same, CallOptions::default()).await?;
                Ok(())
            }
        })
        .await?;
        rows.push(Row::new(
            "reaper",
            "unary_2k",
            concurrency,
            pin,
            &h,
            seconds,
        ));
    }
    Ok(rows)
}
