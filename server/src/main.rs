//! `reaperd`: the reaper daemon.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use reaper_core::config::Config;
use reaper_core::rpc::{RpcServer, ServerSettings};
use reaper_core::{paths, transport};
use reaper_server::io::event_loop;
use reaper_server::logging;
use reaper_server::state::StateDir;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The reaper daemon: a local AI coding assistant that editors reach over QUIC.
///
/// On first start it creates its state directory (mode 0700) holding a self-signed certificate
/// that clients pin, an access token every call must present, and, once it is listening, the
/// address it bound. Stop it with SIGINT or SIGTERM: it stops taking calls, lets calls in flight
/// finish for `[daemon] shutdown_grace` seconds, and exits 0.
#[derive(Debug, Parser)]
#[command(name = "reaperd", version, about, long_about)]
struct Args {
    /// Config file. Without it: $REAPER_CONFIG, ./reaper.toml, $XDG_CONFIG_HOME/reaper/reaper.toml,
    /// then built-in defaults.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Address to listen on (UDP), overriding [daemon] address and port. Port 0 picks a free one.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// State directory, overriding $REAPER_STATE_DIR and [daemon] state_dir.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Check the configuration, print the settings in effect, and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() {
    let args = Args::parse();
    if let Err(error) = run(args) {
        eprintln!("reaperd: {error:#}");
        std::process::exit(1);
    }
}

/// Socket buffer size asked for (the kernel caps it at net.core.rmem_max / wmem_max).
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// How long a start waits for its address to be released before it gives up: a daemon that
/// was just killed holds its port until the kernel has torn its io_uring down (measured: ~9 ms
/// after SIGKILL), so an immediate restart would otherwise fail with "address in use".
const BIND_WAIT: Duration = Duration::from_secs(1);

/// Binds `socket` to `listen`, retrying "address in use" for up to [`BIND_WAIT`].
fn bind_when_free(socket: &socket2::Socket, listen: SocketAddr) -> std::io::Result<()> {
    let started = std::time::Instant::now();
    let mut logged = false;
    loop {
        match socket.bind(&listen.into()) {
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrInUse
                    && started.elapsed() < BIND_WAIT =>
            {
                if !logged {
                    tracing::info!(%listen, "address in use; waiting up to 1 s in case a daemon that just stopped is still releasing it");
                    logged = true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Binds the UDP socket with large buffers: a burst of requests then waits in the kernel
/// instead of being dropped while the loop answers the datagrams it already read (it reads a
/// few per pass; `docs/design.md`, "Receive path").
fn bind(listen: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(listen),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    for (what, result) in [
        ("receive", socket.set_recv_buffer_size(SOCKET_BUFFER)),
        ("send", socket.set_send_buffer_size(SOCKET_BUFFER)),
    ] {
        if let Err(error) = result {
            tracing::warn!(%error, "cannot enlarge the UDP {what} buffer; bursts may drop datagrams");
        }
    }
    bind_when_free(&socket, listen)?;
    let granted = socket.recv_buffer_size().unwrap_or(0);
    if granted < SOCKET_BUFFER {
        // Measured at 256 calls in flight with the usual 208 KiB cap: ~360 datagrams dropped
        // a run (QUIC resends them) and p99.9 15 ms instead of ~5 ms. One call at a time, as an
        // editor makes them, is unaffected.
        tracing::info!(
            granted,
            wanted = SOCKET_BUFFER,
            "UDP receive buffer capped by net.core.rmem_max: bursts of hundreds of calls may \
             drop datagrams (resent, at a latency cost); `sysctl -w net.core.rmem_max=4194304` \
             lifts the cap"
        );
    }
    Ok(socket.into())
}

/// Prints each provider `--check-config` sees, and each `api_key_env` variable that is not set
/// (`is_set` looks one up); returns how many are missing.
fn check_providers(config: &Config, is_set: impl Fn(&str) -> bool) -> usize {
    let mut problems = 0;
    for p in &config.providers.remote {
        let s = &p.settings;
        println!(
            "provider {}: kind {}, model {}, base_url {}, priority {}{}",
            p.name,
            s.kind,
            s.model,
            s.base_url,
            s.priority,
            if s.enabled { "" } else { " (disabled)" }
        );
        if let Some(var) = s.api_key_env.as_deref().filter(|_| s.enabled) {
            if !is_set(var) {
                problems += 1;
                println!(
                    "problem: providers.{}: api_key_env names {var}, which is not set in this environment: export {var}=... before starting reaperd",
                    p.name
                );
            }
        }
    }
    let offline = &config.providers.offline;
    println!(
        "provider offline: {}{}",
        if offline.enabled {
            "enabled"
        } else {
            "disabled"
        },
        offline.priority.map_or_else(
            || ", after every other provider".to_owned(),
            |p| format!(", priority {p}")
        )
    );
    problems
}

fn run(args: Args) -> anyhow::Result<()> {
    let (config, origin) = Config::locate(
        args.config,
        |k| std::env::var(k).ok(),
        |p| std::fs::read_to_string(p),
    )?;
    if let Err(error) = reaper_providers::OfflineProvider::check_deny(&config.providers.offline) {
        bail!("invalid configuration in {origin}: [providers.offline] deny: {error}");
    }
    let listen = args.listen.unwrap_or_else(|| config.daemon.listen());
    let state_path = paths::state_dir(args.state_dir, config.daemon.state_dir.as_deref(), |k| {
        std::env::var(k).ok()
    });
    if args.check_config {
        println!("config: {origin}: ok");
        println!("listen: {listen}");
        println!("state_dir: {}", state_path.display());
        for (key, why) in config.not_yet_in_effect() {
            println!("not yet in effect: {key}: {why}");
        }
        let problems = check_providers(&config, |k| {
            std::env::var_os(k).is_some_and(|v| !v.is_empty())
        });
        if problems > 0 {
            bail!("{problems} provider problem(s) above: those providers will answer needs_auth");
        }
        return Ok(());
    }

    logging::init(&config.daemon)?;
    tracing::info!(config = %origin, version = reaper_core::VERSION, "reaperd starting");
    for (key, why) in config.not_yet_in_effect() {
        tracing::info!(key, "setting not yet in effect: {why}");
    }

    let state = StateDir::open(state_path)?;
    let (cert, key) = state.identity()?;
    let token = state.token()?;
    let loopback = listen.ip().is_loopback();
    if !loopback {
        tracing::warn!(%listen, "listening beyond loopback with a self-signed certificate: clients must pin it from the state directory");
    }
    let server_config = transport::server_config(cert, key, &config.rpc, loopback)?;
    let server = RpcServer::new(
        transport::endpoint_config(loopback),
        server_config,
        ServerSettings::from_config(token, &config.rpc),
    );

    let socket = bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let bound = socket.local_addr()?;
    if bound.port() == 0 {
        bail!("the socket reports port 0 after binding {listen}");
    }
    // The loop writes the endpoint once it serves and handles signals; every way out removes
    // it, an error or a panic included, so clients never dial a daemon that is gone (only
    // SIGKILL leaves it behind).
    let endpoint = EndpointFile(&state);
    let grace = Duration::from_secs(config.daemon.shutdown_grace);
    let journals = state.path().join("agent");
    let outcome = event_loop::run(socket, server, config, journals, grace, || {
        state.write_endpoint(bound)?;
        tracing::info!(state_dir = %state.path().display(), "reaperd listening on {bound}");
        Ok(())
    });
    drop(endpoint);
    let shutdown = outcome?;
    if shutdown.abandoned_calls > 0 {
        tracing::warn!(
            calls = shutdown.abandoned_calls,
            "grace period over: calls still running were cancelled"
        );
    }
    tracing::info!("reaperd stopped");
    Ok(())
}

/// Removes the state directory's endpoint file when dropped.
struct EndpointFile<'a>(&'a StateDir);

impl Drop for EndpointFile<'_> {
    fn drop(&mut self) {
        self.0.remove_endpoint();
    }
}
