//! The event loop: one thread, one io_uring, one UDP socket, driving the core state machine.
//!
//! The loop keeps several receives armed on the ring so datagrams that arrive together are
//! handled in one pass; each pass feeds every completed datagram to core, serves the calls that
//! became ready (inline, before anything is sent, so ACKs ride on responses), then sends every
//! datagram core wants out as one batch of submissions, and re-arms the timer only when core's
//! next deadline changes. No locks and no channels: the loop owns the state machine and services.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use reaper_core::rpc::{RpcServer, ServerEvent};
use tokio::signal::unix::{signal, SignalKind};
use tokio_uring::net::UdpSocket;

use crate::services::{Services, TransportInfo};

/// Receives kept armed on the ring at once. Few on purpose: every armed receive on the socket
/// is woken for each datagram (io_uring polls the socket for each), so depth costs every call:
/// `Health.check` p50 on one CPU measured 36 µs at depth 1, 39 at 4, 43 at 16, 67 at 64.
/// Bursts wait in the 4 MiB socket buffer instead (see `bind` in main.rs); with it, 64 calls
/// in flight drop nothing at depth 8 (at 16, with the default 208 KiB buffer, 100 datagrams
/// were dropped in a 2 s run).
const RECV_DEPTH: usize = 8;
/// Receive buffer size: the largest UDP payload.
const RECV_BUF: usize = 65_536;
/// Upper bound of datagrams handled in one pass before sending, so a flood from one client
/// cannot delay everyone's responses indefinitely.
const MAX_DATAGRAMS_PER_PASS: usize = 128;

type Received = (std::io::Result<(usize, SocketAddr)>, BytesMut);

/// One armed receive. The 64 KiB buffer goes back into the next receive: what core keeps is a
/// right-sized copy of the datagram, so a call that is still open pins a few hundred bytes, not
/// a whole receive buffer.
fn receive(socket: Rc<UdpSocket>, mut buf: BytesMut) -> Pin<Box<dyn Future<Output = Received>>> {
    buf.clear();
    Box::pin(async move { socket.recv_from(buf).await })
}

/// How the loop ended.
#[derive(Debug)]
pub struct Shutdown {
    /// Calls still running when the grace period ran out (cancelled by the close).
    pub abandoned_calls: usize,
}

/// Runs the loop until SIGINT/SIGTERM and the drain that follows. `on_ready` is called once
/// the socket is bound and served (the daemon writes its endpoint file then).
pub fn run(
    socket: std::net::UdpSocket,
    mut server: RpcServer,
    config: reaper_core::Config,
    grace: Duration,
) -> anyhow::Result<Shutdown> {
    tokio_uring::start(async move {
        // The services' worker threads answer through this channel.
        let (mut services, mut completions) = Services::start(&config, Instant::now())?;
        let socket = Rc::new(UdpSocket::from_std(socket));
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut receives: FuturesUnordered<_> = (0..RECV_DEPTH)
            .map(|_| receive(socket.clone(), BytesMut::with_capacity(RECV_BUF)))
            .collect();
        let mut send_buffers: Vec<Vec<u8>> = Vec::new();
        let mut timer = pin!(tokio::time::sleep_until(far_future()));
        let mut armed_deadline: Option<Instant> = None;
        let mut drain_deadline: Option<Instant> = None;

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
                () = &mut timer, if armed_deadline.is_some() => {
                    armed_deadline = None;
                    server.handle_timeout(Instant::now());
                }
                Some(done) = completions.recv() => {
                    let now = Instant::now();
                    services.on_completion_done(&mut server, done, now);
                    while let Ok(done) = completions.try_recv() {
                        services.on_completion_done(&mut server, done, now);
                    }
                }
                Some(first) = receives.next() => {
                    let now = Instant::now();
                    let mut received = Some(first);
                    let mut handled = 0;
                    while let Some((result, buf)) = received.take() {
                        handle_received(&mut server, now, result, &buf);
                        receives.push(receive(socket.clone(), buf));
                        handled += 1;
                        if handled >= MAX_DATAGRAMS_PER_PASS {
                            break;
                        }
                        received = receives.next().now_or_never().flatten();
                    }
                }
            }

            let now = Instant::now();
            serve(&mut server, &mut services, now);
            services.expire(&mut server, now);
            send_all(&socket, &mut server, now, &mut send_buffers).await;
            if let Some(deadline) = drain_deadline {
                let settled = server.in_flight() == 0
                    && server.unacknowledged() == 0
                    && services.in_flight() == 0;
                if settled || now >= deadline {
                    let abandoned_calls = server.in_flight();
                    server.close_all(now);
                    send_all(&socket, &mut server, now, &mut send_buffers).await;
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

fn begin_drain(server: &mut RpcServer, signal: &str, grace: Duration) -> Instant {
    tracing::info!(
        in_flight = server.in_flight(),
        grace_s = grace.as_secs_f64(),
        "{signal}: draining (no new calls; in-flight calls may finish)"
    );
    server.begin_drain();
    Instant::now() + grace
}

fn handle_received(
    server: &mut RpcServer,
    now: Instant,
    result: std::io::Result<(usize, SocketAddr)>,
    buf: &BytesMut,
) {
    match result {
        Ok((len, from)) => {
            let data = BytesMut::from(&buf[..len.min(buf.len())]);
            server.handle_datagram(now, from, None, None, data);
        }
        // ICMP errors (a client went away) surface as receive errors on UDP: not fatal.
        Err(error) => tracing::debug!(%error, "receive failed"),
    }
}

/// Hands every ready event to the services and logs connection changes.
fn serve(server: &mut RpcServer, services: &mut Services, now: Instant) {
    while let Some(event) = server.poll_event() {
        match event {
            ServerEvent::Call(call) => {
                let info = TransportInfo {
                    connections: server.connection_count(),
                    draining: server.is_draining(),
                };
                services.on_call(server, call, info, now);
            }
            ServerEvent::Rejected {
                method,
                status,
                received_at,
            } => services.on_rejected(method, &status, received_at, now),
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
                    lost_packets = stats.path.lost_packets,
                    congestion_events = stats.path.congestion_events,
                    rtt_us = stats.path.rtt.as_micros() as u64,
                    "connection closed"
                )
            }
            ServerEvent::Refused { remote, reason } => {
                tracing::warn!(%remote, reason, "connection refused")
            }
            ServerEvent::Cancelled { id } => {
                tracing::debug!(call = %id, "call cancelled by the client");
                services.on_cancelled(id, now);
            }
            ServerEvent::Message { .. } | ServerEvent::HalfClosed { .. } => {}
        }
    }
}

/// Sends everything core has queued, all submissions in flight together. Buffers come from and
/// return to `pool`, so a steady state allocates nothing here.
async fn send_all(
    socket: &Rc<UdpSocket>,
    server: &mut RpcServer,
    now: Instant,
    pool: &mut Vec<Vec<u8>>,
) {
    let mut sends = Vec::new();
    loop {
        let mut buf = pool.pop().unwrap_or_default();
        let Some(transmit) = server.poll_transmit(now, 1, &mut buf) else {
            pool.push(buf);
            break;
        };
        buf.truncate(transmit.size);
        let socket = socket.clone();
        sends.push(async move { socket.send_to(buf, transmit.destination).await });
    }
    if sends.is_empty() {
        return;
    }
    for (result, buf) in futures::future::join_all(sends).await {
        if let Err(error) = result {
            tracing::debug!(%error, "send failed");
        }
        pool.push(buf);
    }
}
