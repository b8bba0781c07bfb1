//! `reaper-bench`: measures `Health.check` against a real reaperd over QUIC.
//!
//! This is the first scenario only: sequential round trips on a warm connection, and calls per
//! second with many calls in flight on one connection. Peer stacks (tonic, plain quinn,
//! HTTP/1.1, raw UDP), thread placement, plots and the CI gates come with the benchmark issue.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use reaper_client::schema::CompletionRequest;
use reaper_client::{CallOptions, Client, ClientOptions, Encoding};

mod eval;

/// Measure reaperd's Health.check latency and throughput.
///
/// Without --state-dir it starts its own reaperd (from beside this binary, or --reaperd) on
/// 127.0.0.1 with a temporary state directory, and stops it afterwards.
#[derive(Debug, Parser)]
#[command(name = "reaper-bench", version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    /// State directory of a running reaperd to measure.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The reaperd binary to start when no --state-dir is given.
    #[arg(long, value_name = "PATH")]
    reaperd: Option<PathBuf>,
    /// Sequential calls to time.
    #[arg(long, default_value_t = 10_000)]
    calls: u64,
    /// Calls kept in flight for the throughput run.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Connections the in-flight calls are spread over (a pool, for comparison).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Length of the throughput run, in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Message encoding.
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
    let args = Args::parse();
    if let Some(BenchCommand::EvalOffline(eval_args)) = &args.command {
        return eval::run(eval_args);
    }
    let mut spawned = None;
    let state_dir = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => {
            let (child, dir) = start_reaperd(args.reaperd.clone())?;
            let path = dir.path().join("state");
            spawned = Some((child, dir));
            path
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(measure(&args, state_dir));
    if let Some((mut child, dir)) = spawned {
        let rss = rss_kib(child.id());
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
        if let Some(rss) = rss {
            report_line(&args, "daemon_rss_after_run", &format!("{rss} KiB"));
        }
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

async fn measure(args: &Args, state_dir: PathBuf) -> anyhow::Result<()> {
    let mut options = ClientOptions::from_state_dir(&state_dir, None)?;
    options.encoding = args.encoding;
    let client = Arc::new(Client::connect(options.clone()).await?);
    let mut pool = vec![client.clone()];
    for _ in 1..args.connections.max(1) {
        pool.push(Arc::new(Client::connect(options.clone()).await?));
    }
    for _ in 0..1_000.min(args.calls) {
        client.health().await?;
    }

    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let started = Instant::now();
    for _ in 0..args.calls {
        let t = Instant::now();
        client.health().await?;
        histogram.saturating_record(t.elapsed().as_nanos() as u64 / 1_000);
    }
    let elapsed = started.elapsed();
    report(
        args,
        "health_sequential",
        1,
        &histogram,
        args.calls as f64 / elapsed.as_secs_f64(),
    );

    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let until = Instant::now() + Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|i| {
            let client = pool[i % pool.len()].clone();
            tokio::spawn(async move {
                let mut local =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("constant bounds");
                while Instant::now() < until {
                    let t = Instant::now();
                    client.health().await?;
                    local.saturating_record(t.elapsed().as_nanos() as u64 / 1_000);
                }
                Ok::<_, reaper_client::Error>(local)
            })
        })
        .collect();
    for worker in workers {
        histogram.add(worker.await??)?;
    }
    let elapsed = started.elapsed();
    let scenario = format!("health_in_flight_{}conn", pool.len());
    report(
        args,
        &scenario,
        args.concurrency,
        &histogram,
        histogram.len() as f64 / elapsed.as_secs_f64(),
    );
    if args.completion_workspace.as_deref() != Some("none") {
        completion_scenarios(args, &client).await?;
    }
    for client in pool {
        client.close().await;
    }
    Ok(())
}

/// Sequential completions against a real workspace: a cache hit (the same request again), an
/// offline-provider miss (the suffix varies, so the key does), and Health in the same run.
async fn completion_scenarios(args: &Args, client: &Client) -> anyhow::Result<()> {
    let workspace = match &args.completion_workspace {
        Some(dir) => PathBuf::from(dir),
        None => eval::registry_crate("tokio")?,
    };
    let source = std::fs::read_to_string(workspace.join("src/runtime/builder.rs"))
        .or_else(|_| std::fs::read_to_string(workspace.join("src/lib.rs")))
        .context("the completion workspace needs src/lib.rs")?;
    // Cut 24 bytes into a line two thirds into the file.
    let mut cut = source.len() * 2 / 3;
    while !source.is_char_boundary(cut) {
        cut -= 1;
    }
    let line_start = source[..cut].rfind('\n').map_or(0, |i| i + 1);
    let mut cut = (line_start + (cut - line_start).min(24)).min(source.len());
    while !source.is_char_boundary(cut) {
        cut -= 1;
    }
    // An editor sends the text near the cursor: here the 2 KiB before it, the request size
    // the other scenarios use too.
    let mut from = cut.saturating_sub(2048);
    while !source.is_char_boundary(from) {
        from += 1;
    }
    let request = |suffix: String| CompletionRequest {
        prefix: source[from..cut].to_owned(),
        suffix,
        language: "rust".to_owned(),
        file_path: Some(
            workspace
                .join("src/bench_new_file.rs")
                .display()
                .to_string(),
        ),
        context: None,
    };
    // The first request starts indexing; wait for it (bounded).
    let started = Instant::now();
    loop {
        let response = client
            .complete(&request(String::new()), CallOptions::default())
            .await?;
        if !response.completion.is_empty() || started.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls = args.calls.min(10_000);
    let new_histogram = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3);
    let (mut hit, mut miss, mut health) = (new_histogram()?, new_histogram()?, new_histogram()?);
    let same = request(String::new());
    for i in 0..calls {
        let t = Instant::now();
        let r = client.complete(&same, CallOptions::default()).await?;
        hit.saturating_record(t.elapsed().as_micros() as u64);
        if !r.cached {
            bail!("the repeated request was not answered from the cache");
        }
        let t = Instant::now();
        client.health().await?;
        health.saturating_record(t.elapsed().as_micros() as u64);
        let varied = request(format!("\n// {i}\n"));
        let t = Instant::now();
        let r = client.complete(&varied, CallOptions::default()).await?;
        miss.saturating_record(t.elapsed().as_micros() as u64);
        if r.cached {
            bail!("a varied request was answered from the cache");
        }
    }
    let rate = |h: &Histogram<u64>| 1e6 / h.mean().max(1.0);
    report(args, "completion_cache_hit", 1, &hit, rate(&hit));
    report(args, "completion_offline_miss", 1, &miss, rate(&miss));
    report(args, "health_same_run", 1, &health, rate(&health));
    Ok(())
}

fn report(args: &Args, scenario: &str, concurrency: usize, h: &Histogram<u64>, calls_per_s: f64) {
    if args.json {
        let row = serde_json::json!({
            "scenario": scenario,
            "stack": "reaper",
            "encoding": args.encoding.name(),
            "concurrency": concurrency,
            "calls": h.len(),
            "p50_us": h.value_at_quantile(0.5),
            "p90_us": h.value_at_quantile(0.9),
            "p99_us": h.value_at_quantile(0.99),
            "p999_us": h.value_at_quantile(0.999),
            "max_us": h.max(),
            "calls_per_s": calls_per_s.round(),
        });
        println!("{row}");
    } else {
        println!(
            "{scenario:<20} in flight {concurrency:>3}  calls {:>8}  p50 {:>6} µs  p90 {:>6} µs  p99 {:>6} µs  p99.9 {:>6} µs  max {:>7} µs  {:>9.0} calls/s",
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
            calls_per_s
        );
    }
}

fn report_line(args: &Args, key: &str, value: &str) {
    if args.json {
        println!("{}", serde_json::json!({ key: value }));
    } else {
        println!("{key}: {value}");
    }
}
