//! The event loop: one thread, one io_uring, one UDP socket, driving the core state machine.
//!
//! Each pass handles what the ring completed, in order: sends done (their slots freed), a
//! wake-up (signals, then work the provider runtime finished), and up to
//! `MAX_DATAGRAMS_PER_PASS` datagrams from the multishot receive. Then it serves the calls that
//! became ready (inline, before anything is sent, so ACKs ride on responses), queues a send for
//! every datagram core wants out, and makes one `io_uring_enter` that submits them and sleeps
//! until the next completion or core's next deadline. No locks: the loop owns the state machine
//! and the services; provider work answers through one channel and a wake-up.

use std::sync::mpsc::TryRecvError;
use std::time::{Duration, Instant};

use anyhow::Context;
use io_uring::{opcode, types};
use reaper_core::rpc::{RpcServer, ServerEvent};

use super::receive::Receiver;
use super::ring::{Op, Ring};
use super::send::Sender;
use super::signals::{self, Signal};
use super::wake::WakeReader;
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

/// How long shutdown waits for sends in flight to complete before leaving their memory to the
/// kernel (it is then never freed).
const SEND_DRAIN: Duration = Duration::from_secs(1);

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
    use std::os::fd::AsRawFd;
    let mut ring = Ring::new().context(
        "cannot set up an io_uring (kernel 6.0 or later is needed; `sysctl kernel.io_uring_disabled` \
         must be 0, or 1 with reaperd's group allowed)",
    )?;
    let mut wake = WakeReader::new()?;
    // Work that leaves the loop (provider calls) comes back on this channel, with a wake-up.
    let (mut services, mut finished) =
        Services::start(&config, Instant::now(), journals, wake.waker())?;
    let signals = signals::forward(wake.waker())?;
    let mut receiver = Receiver::new(&socket, &mut ring)?;
    let mut sender = Sender::new(socket.as_raw_fd(), receiver.gso_segments());
    arm_wake(&mut ring, &wake);
    let busy_poll = Duration::from_micros(config.daemon.busy_poll_us);
    let mut last_work = Instant::now();
    ready()?;
    let mut drain_deadline: Option<Instant> = None;
    let mut refusals = Refusals::default();

    loop {
        // One syscall: submit what the last pass queued, then sleep until a completion that
        // is not a send (sends complete within the call on loopback: they are counted in what
        // the call waits for), or until the next deadline. Completed sends alone are no reason
        // for a pass.
        let next = [
            server.poll_timeout(),
            services.next_deadline(),
            drain_deadline,
        ]
        .into_iter()
        .flatten()
        .min();
        let timeout = next.map(|at| at.saturating_duration_since(Instant::now()));
        let quiet =
            ring.handle_if_all_quiet(|c| matches!(c.op, Op::Send(_)), |c| sender.complete(c));
        if quiet && sender.blocked() {
            // Core had more to send than there were slots: the freed ones go first.
            sender.send_all(&mut ring, &mut server, Instant::now());
        }
        if quiet && sender.blocked() {
            // Still more: wait for slots (sends complete quickly), not for the next request.
            ring.wait_one(timeout);
        } else if quiet && last_work.elapsed() < busy_poll {
            // Busy polling (`[daemon] busy_poll_us`): a thread on this CPU that wants it (a
            // client pinned here) gets it first, then the kernel gets to finish receives.
            std::thread::yield_now();
            ring.poll();
        } else if quiet && timeout != Some(Duration::ZERO) {
            ring.submit_and_wait(timeout);
        } else {
            ring.submit();
        }

        let mut datagrams = 0;
        let mut woken = false;
        while datagrams < MAX_DATAGRAMS_PER_PASS {
            let Some(completion) = ring.next_completion() else {
                break;
            };
            match completion.op {
                Op::Send(_) => sender.complete(completion),
                Op::Receive => {
                    datagrams +=
                        receiver.complete(completion, &mut ring, &mut server, Instant::now())?;
                }
                Op::Wake => {
                    woken = true;
                    if !completion.more() {
                        arm_wake(&mut ring, &wake);
                    }
                }
                Op::Provide(_) if completion.result >= 0 => {}
                Op::Provide(id) => receiver.provide_failed(id, -completion.result, &mut ring)?,
            }
        }
        if datagrams >= MAX_DATAGRAMS_PER_PASS {
            // The rest wait for the next pass, but not the sends among them: their slots are
            // needed for this pass's answers.
            ring.handle_sends(|c| sender.complete(c));
        }

        if datagrams > 0 || woken {
            last_work = Instant::now();
        }
        let now = Instant::now();
        // Signals and deadlines come before serving: a steady stream of datagrams must not be
        // able to postpone loss recovery, idle timeouts or shutdown.
        if woken {
            wake.clear();
            loop {
                match signals.try_recv() {
                    Ok(signal) => {
                        on_signal(signal, &mut server, &services, &mut drain_deadline, grace)
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        anyhow::bail!("the signal thread ended")
                    }
                }
            }
            let mut any = false;
            while let Ok(done) = finished.try_recv() {
                services.on_finished(&mut server, done, now);
                any = true;
            }
            if any {
                // Streamed pieces that came in together go out together.
                services.flush_streams(&mut server, now);
            }
        }
        if server.poll_timeout().is_some_and(|at| at <= now) {
            server.handle_timeout(now);
        }

        if serve(
            &mut server,
            &mut services,
            &mut refusals,
            now,
            EARLY_ANSWERS,
        ) {
            if sender.send_all(&mut ring, &mut server, now) > 0 {
                // The first answers leave now, while the rest of the pass is served.
                ring.submit();
            }
            serve(&mut server, &mut services, &mut refusals, now, usize::MAX);
        }
        services.expire(&mut server, now);
        refusals.flush(now);
        sender.send_all(&mut ring, &mut server, now);
        if let Some(deadline) = drain_deadline {
            let settled = server.in_flight() == 0
                && server.unacknowledged() == 0
                && services.in_flight() == 0;
            if settled || now >= deadline {
                let abandoned_calls = server.in_flight();
                server.close_all(now);
                finish_sends(&mut ring, &mut sender, &mut server, now);
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()?;
                runtime.block_on(services.stop_mcp_servers());
                return Ok(Shutdown { abandoned_calls });
            }
        }
    }
}

/// Sends what core still has (the closes) and waits, briefly, for every send to complete, so
/// that the sender's memory can be freed; what does not complete in time keeps its memory for
/// the life of the process (`Sender`'s `Drop`).
fn finish_sends(ring: &mut Ring, sender: &mut Sender, server: &mut RpcServer, now: Instant) {
    let until = Instant::now() + SEND_DRAIN;
    loop {
        sender.send_all(ring, server, now);
        if sender.in_flight() == 0 {
            return;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // Dropping the sender then leaves their memory alone.
            tracing::warn!(sends = sender.in_flight(), "sends still in flight at exit");
            return;
        }
        ring.wait_one(Some(left));
        while let Some(completion) = ring.next_completion() {
            if let Op::Send(_) = completion.op {
                sender.complete(completion);
            }
        }
    }
}

/// Polls the wake-up socket for the rest of the loop's life (multishot: one submission serves
/// every wake-up, re-armed only if the kernel ends it).
fn arm_wake(ring: &mut Ring, wake: &WakeReader) {
    let entry = opcode::PollAdd::new(types::Fd(wake.fd()), libc::POLLIN as u32)
        .multi(true)
        .build()
        .user_data(Op::Wake.user_data());
    // SAFETY: a poll points at no memory; the socket lives as long as the loop.
    unsafe { ring.push(&entry) };
}

fn on_signal(
    signal: Signal,
    server: &mut RpcServer,
    services: &Services,
    drain_deadline: &mut Option<Instant>,
    grace: Duration,
) {
    match signal {
        Signal::Interrupt | Signal::Terminate | Signal::Quit => {
            if drain_deadline.is_none() {
                *drain_deadline = Some(begin_drain(server, signal.name(), grace));
            }
        }
        Signal::Hangup => {
            tracing::info!("SIGHUP ignored: the configuration is read at start only; restart reaperd to apply a changed reaper.toml");
        }
        Signal::User1 | Signal::User2 => status_line(server, services, signal.name()),
    }
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
            ServerEvent::Connected {
                conn,
                remote,
                early_data,
            } => {
                tracing::info!(%conn, %remote, early_data, "connection open")
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
