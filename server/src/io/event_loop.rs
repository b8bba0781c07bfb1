//! The event loop: one thread, one io_uring, one UDP socket, driving the core state machine.
//!
//! Each pass drains every datagram waiting on the socket ([`Receiver`]: `recvmmsg` with GRO, in
//! arrival order), serves the calls that became ready (inline, before anything is sent, so ACKs
//! ride on responses), then sends every datagram core wants out as one batch of io_uring
//! submissions, and re-arms the timer only when core's next deadline changes. No locks: the loop
//! owns the state machine and the services; provider work answers through one channel.

use std::pin::pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use reaper_core::rpc::{RpcServer, ServerEvent};
use tokio::signal::unix::{signal, SignalKind};
use tokio_uring::net::UdpSocket;

use super::receive::Receiver;
use super::send::Sender;
use crate::services::{Services, TransportInfo};

/// Datagrams handled in one pass before the responses go out. Small, so the client can work on
/// the first answers while the loop reads the next requests: with 64 calls in flight across two
/// CPUs, 128 per pass gave 145,000 calls/s (about 62 answers per datagram, client and daemon in
/// lockstep), 16 gave 187,000 and 8 gave 199,000. It also bounds how long a flood from one
/// client can hold up everyone else's answers.
const MAX_DATAGRAMS_PER_PASS: usize = 8;

/// Calls served in a pass before their answers are sent and the rest of the pass is served.
/// Across CPUs the client then works on the first answers while the loop serves the others,
/// instead of client and daemon taking turns a whole batch at a time. Alternating runs
/// (`reaper-bench --quick --stacks reaper --concurrency 16,64,256`), calls/s, against answering
/// a whole pass at once: two CPUs, 16 in flight 75,000–91,000 → 188,000–193,000, 64 in flight
/// 199,000–214,000 → 300,000–306,000, 256 in flight 226,000–275,000 → 317,000–328,000. On one
/// CPU, where nothing can overlap, the extra send costs: 16 in flight 128,000–134,000 →
/// 101,000–102,000, 64 in flight 154,000–165,000 → 148,000–149,000 (256 in flight gains:
/// 113,000–128,000 → 159,000–161,000). 2 measured like 4; 8 kept only half the gain at 16.
/// One call at a time is unaffected.
const EARLY_ANSWERS: usize = 4;

/// How the loop ended.
#[derive(Debug)]
pub struct Shutdown {
    /// Calls still running when the grace period ran out (cancelled by the close).
    pub abandoned_calls: usize,
}

/// Runs the loop on `socket` (bound already) until SIGINT/SIGTERM/SIGQUIT and the drain that follows,
/// waiting at most `grace` for calls in flight. Agent tasks keep their journals in `journals`.
///
/// `ready` runs once the loop can serve and its signal handlers are in place (the daemon writes
/// its endpoint file there: a client, or a signal, that comes on seeing it finds the daemon
/// ready for both).
pub fn run(
    socket: std::net::UdpSocket,
    mut server: RpcServer,
    config: reaper_core::Config,
    journals: std::path::PathBuf,
    grace: Duration,
    ready: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Shutdown> {
    tokio_uring::start(async move {
        // Work that leaves the loop (provider calls) comes back on this channel.
        let (mut services, mut finished) = Services::start(&config, Instant::now(), journals)?;
        let mut receiver = Receiver::new(&socket)?;
        let mut sender = Sender::new(
            Rc::new(UdpSocket::from_std(socket)),
            receiver.gso_segments(),
        );
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        // Signals whose default action would end the daemon at once, with no log line and the
        // endpoint file left behind (issue 13, finding 9): SIGQUIT drains like SIGTERM; SIGHUP
        // (a closed terminal, or a habit of asking daemons to reload) and SIGUSR1/SIGUSR2 are
        // logged and otherwise ignored.
        let mut quit = signal(SignalKind::quit())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let mut user1 = signal(SignalKind::user_defined1())?;
        let mut user2 = signal(SignalKind::user_defined2())?;
        ready()?;
        let mut timer = pin!(tokio::time::sleep_until(far_future()));
        let mut armed_deadline: Option<Instant> = None;
        let mut drain_deadline: Option<Instant> = None;
        let mut refusals = Refusals::default();

        loop {
            // Signals and the timer come first: a steady stream of datagrams must not be able
            // to postpone loss recovery, idle timeouts or shutdown.
            tokio::select! {
                biased;
                _ = interrupt.recv(), if drain_deadline.is_none() => {
                    drain_deadline = Some(begin_drain(&mut server, "SIGINT", grace));
                }
                _ = terminate.recv(), if drain_deadline.is_none() => {
                    drain_deadline = Some(begin_drain(&mut server, "SIGTERM", grace));
                }
                _ = quit.recv(), if drain_deadline.is_none() => {
                    drain_deadline = Some(begin_drain(&mut server, "SIGQUIT", grace));
                }
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP ignored: the configuration is read at start only; restart reaperd to apply a changed reaper.toml");
                }
                _ = user1.recv() => status_line(&server, &services, "SIGUSR1"),
                _ = user2.recv() => status_line(&server, &services, "SIGUSR2"),
                () = &mut timer, if armed_deadline.is_some() => {
                    armed_deadline = None;
                    server.handle_timeout(Instant::now());
                }
                Some(done) = finished.recv() => {
                    let now = Instant::now();
                    services.on_finished(&mut server, done, now);
                    while let Ok(done) = finished.try_recv() {
                        services.on_finished(&mut server, done, now);
                    }
                    // Streamed pieces that came in together go out together.
                    services.flush_streams(&mut server, now);
                }
                Ok(()) = receiver.readable() => {
                    receiver.drain(&mut server, Instant::now(), MAX_DATAGRAMS_PER_PASS);
                }
            }

            let now = Instant::now();
            if serve(
                &mut server,
                &mut services,
                &mut refusals,
                now,
                EARLY_ANSWERS,
            ) {
                sender.send_all(&mut server, now).await;
                serve(&mut server, &mut services, &mut refusals, now, usize::MAX);
            }
            services.expire(&mut server, now);
            refusals.flush(now);
            sender.send_all(&mut server, now).await;
            if let Some(deadline) = drain_deadline {
                let settled = server.in_flight() == 0
                    && server.unacknowledged() == 0
                    && services.in_flight() == 0;
                if settled || now >= deadline {
                    let abandoned_calls = server.in_flight();
                    server.close_all(now);
                    sender.send_all(&mut server, now).await;
                    services.stop_mcp_servers().await;
                    return Ok(Shutdown { abandoned_calls });
                }
            }

            let next = [
                server.poll_timeout(),
                services.next_deadline(),
                drain_deadline,
            ]
            .into_iter()
            .flatten()
            .min();
            if next != armed_deadline {
                if let Some(deadline) = next {
                    timer.as_mut().reset(deadline.into());
                }
                armed_deadline = next;
            }
        }
    })
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}

/// How often a refused handshake is logged at most.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Refused handshakes, logged so that a flood cannot flood the log: the first of an interval
/// with its reason, then one line counting the others once the interval is over (2,000
/// refusals in 2 s used to be 2,000 WARN lines).
#[derive(Debug, Default)]
struct Refusals {
    /// When the interval of the last logged refusal began.
    since: Option<Instant>,
    /// Refusals since then that were counted, not logged.
    unlogged: u64,
}

impl Refusals {
    fn refused(&mut self, now: Instant, remote: std::net::SocketAddr, reason: &'static str) {
        self.flush(now);
        if self.since.is_some() {
            self.unlogged += 1;
            return;
        }
        tracing::warn!(
            %remote,
            reason,
            "connection refused (further refusals in the next {} s are counted, not logged)",
            REFUSAL_LOG_INTERVAL.as_secs()
        );
        self.since = Some(now);
    }

    /// Ends the interval once it is over, with a line for what it counted.
    fn flush(&mut self, now: Instant) {
        let Some(since) = self.since else { return };
        if now < since + REFUSAL_LOG_INTERVAL {
            return;
        }
        if self.unlogged > 0 {
            tracing::warn!(
                refused = self.unlogged,
                "{} more connection(s) refused in {} s",
                self.unlogged,
                REFUSAL_LOG_INTERVAL.as_secs()
            );
        }
        self.since = None;
        self.unlogged = 0;
    }
}

/// What a SIGUSR1/SIGUSR2 asks for: a line saying how the daemon is doing, and nothing else.
fn status_line(server: &RpcServer, services: &Services, signal: &str) {
    tracing::info!(
        connections = server.connection_count(),
        calls_in_flight = server.in_flight(),
        provider_work = services.in_flight(),
        draining = server.is_draining(),
        "{signal}: status (the daemon keeps running)"
    );
}

fn begin_drain(server: &mut RpcServer, signal: &str, grace: Duration) -> Instant {
    tracing::info!(
        in_flight = server.in_flight(),
        grace_s = grace.as_secs_f64(),
        "{signal}: draining (no new calls; in-flight calls may finish)"
    );
    server.begin_drain();
    Instant::now() + grace
}

/// Hands ready events to the services and logs connection changes, until `max_calls` calls have
/// been served; returns true if it stopped there (more may be waiting).
fn serve(
    server: &mut RpcServer,
    services: &mut Services,
    refusals: &mut Refusals,
    now: Instant,
    max_calls: usize,
) -> bool {
    let mut calls = 0;
    while let Some(event) = server.poll_event() {
        match event {
            ServerEvent::Call(call) => {
                calls += 1;
                let info = TransportInfo {
                    connections: server.connection_count(),
                    draining: server.is_draining(),
                };
                services.on_call(server, call, info, now);
                if calls >= max_calls {
                    return true;
                }
            }
            ServerEvent::Rejected {
                method,
                status,
                received_at,
                started,
            } => services.on_rejected(started, method, &status, received_at, now),
            ServerEvent::Connected { conn, remote } => {
                tracing::info!(%conn, %remote, "connection open")
            }
            ServerEvent::Disconnected {
                conn,
                reason,
                stats,
            } => {
                services.on_disconnected(conn);
                tracing::info!(
                    %conn,
                    %reason,
                    datagrams_in = stats.udp_rx.datagrams,
                    datagrams_out = stats.udp_tx.datagrams,
                    sends = stats.udp_tx.ios,
                    lost_packets = stats.path.lost_packets,
                    congestion_events = stats.path.congestion_events,
                    rtt_us = stats.path.rtt.as_micros() as u64,
                    "connection closed"
                )
            }
            ServerEvent::Refused { remote, reason } => refusals.refused(now, remote, reason),
            ServerEvent::Cancelled { id } => {
                tracing::debug!(call = %id, "call cancelled by the client");
                services.on_cancelled(id, now);
            }
            ServerEvent::Writable { id } => services.on_writable(server, id, now),
            ServerEvent::Message { id, message } => services.on_message(server, id, &message, now),
            ServerEvent::HalfClosed { id } => services.on_half_closed(id),
        }
    }
    false
}
