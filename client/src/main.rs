//! `reaper`: the command-line client of reaperd.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use reaper_client::schema::{HealthResponse, ProviderListResponse};
use reaper_client::{Client, ClientOptions, Encoding, Error};

/// Talk to a running reaperd: check its health, list its providers.
///
/// The daemon's address, certificate and token are read from its state directory
/// ($REAPER_STATE_DIR, else $XDG_RUNTIME_DIR/reaper, else ~/.local/state/reaper). On failure the
/// status name and message go to standard error and the exit code is non-zero.
#[derive(Debug, Parser)]
#[command(name = "reaper", version, about, long_about)]
struct Args {
    /// Daemon address; default: the `endpoint` file in the state directory.
    #[arg(long, global = true, value_name = "ADDR:PORT")]
    addr: Option<SocketAddr>,
    /// The daemon's state directory.
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Message encoding on the wire.
    #[arg(long, global = true, default_value = "rkyv", value_parser = ["rkyv", "json"])]
    encoding: String,
    /// Give up on a call after this many milliseconds.
    #[arg(long, global = true, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// Print one JSON object per line instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show whether the daemon is serving, its version, uptime, call counts and latency.
    Health,
    /// List the configured AI providers with their status, latency and auth.
    Providers,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("reaper: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let status = error.status();
            eprintln!("{}: {}", status.code.name(), status.message);
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let mut options = ClientOptions::discover(args.state_dir, args.addr)?;
    options.encoding = args.encoding.parse().unwrap_or(Encoding::Rkyv);
    options.default_deadline = args.timeout_ms.map(Duration::from_millis);
    let client = Client::connect(options).await?;
    let result = match args.command {
        Command::Health => client.health().await.map(|h| print_health(&h, args.json)),
        Command::Providers => client
            .providers()
            .await
            .map(|p| print_providers(&p, args.json)),
    };
    client.close().await;
    result
}

fn print_health(health: &HealthResponse, json: bool) {
    if json {
        println!("{}", serde_json::to_string(health).unwrap_or_default());
        return;
    }
    println!(
        "reaperd {}: {}, up {}s, {} connection(s)",
        health.version,
        wire_name(&health.status),
        health.uptime_s,
        health.connections
    );
    println!(
        "calls: {} ({} failed, error rate {:.2}%)",
        health.requests,
        health.errors,
        health.error_rate * 100.0
    );
    let l = &health.latency;
    println!(
        "latency: p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
        l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
    );
    for calls in &health.calls {
        println!(
            "  {:<28} served {:>8}  failed {:>6}",
            calls.method, calls.served, calls.failed
        );
    }
}

fn print_providers(list: &ProviderListResponse, json: bool) {
    if json {
        println!("{}", serde_json::to_string(list).unwrap_or_default());
        return;
    }
    if list.providers.is_empty() {
        println!("no providers configured");
        return;
    }
    for p in &list.providers {
        println!(
            "{:<12} {:<12} {:>6} ms  {}",
            p.name,
            wire_name(&p.status),
            p.latency_ms,
            wire_name(&p.auth_status),
        );
    }
}

/// An enum's name as the JSON encoding spells it (`rate_limited`, `needs_auth`…).
fn wire_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => "?".to_owned(),
    }
}
