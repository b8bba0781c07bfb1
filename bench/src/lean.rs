//! `reaper-bench lean`: what a client of reaper's own could cost. Core's sans-IO `RpcClient`
//! driven by a blocking UDP socket on the calling thread (no async runtime, no endpoint task,
//! no per-call stream objects), against `reaper-client` (quinn on tokio), on one daemon, in
//! alternating rounds so that a slow stretch of a shared machine falls on both.
//!
//! The lean driver is the floor of what a driver on `RpcClient` could reach; a tokio driver
//! would add a wake-up between the caller's task and the driver. The answer is what decides
//! whether such a driver is worth building.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use reaper_client::schema::{HealthRequest, HealthResponse};
use reaper_client::{Client, ClientOptions, Encoding};
use reaper_core::rpc::{ClientCallId, ClientEvent, RpcClient};
use reaper_core::wire::RequestHead;
use reaper_core::{transport, Code, Method, WireMessage};

use crate::pin::{pin_current, Pin};
use crate::progress::Progress;
use crate::reaper::{start_reaperd, stop_reaperd};
use crate::report::{self, histogram, Row};

/// Arguments of `reaper-bench lean`.
#[derive(Debug, clap::Args)]
pub struct LeanArgs {
    /// Sequential calls per client and placement.
    #[arg(long, default_value_t = 20_000)]
    calls: u64,
    /// Seconds per client of the run with calls in flight.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Calls in flight for the throughput run.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Rounds: each client measured in turn, this many times, merged.
    #[arg(long, default_value_t = 4)]
    rounds: u64,
    /// The reaperd binary (default: beside this one).
    #[arg(long)]
    reaperd: Option<std::path::PathBuf>,
    /// Placements to measure under.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Pin::Same, Pin::Split])]
    pin: Vec<Pin>,
}

pub fn run(args: &LeanArgs) -> anyhow::Result<()> {
    let progress = Progress::new(args.pin.len() as u64 * args.rounds * 4, true);
    let mut rows = Vec::new();
    for &pin in &args.pin {
        pin_current(pin.server_cpu());
        let (child, dir) = start_reaperd(args.reaperd.clone(), "", &progress)?;
        pin_current(pin.client_cpu());
        let result = measure(args, pin, &dir.path().join("state"), &progress);
        stop_reaperd(child);
        rows.extend(result?);
    }
    let rows = report::merge_rounds(rows)?;
    println!("{}", report::header());
    for row in &rows {
        println!("{}", row.line());
    }
    Ok(())
}

fn measure(
    args: &LeanArgs,
    pin: Pin,
    state_dir: &std::path::Path,
    progress: &Progress,
) -> anyhow::Result<Vec<Row>> {
    let options = ClientOptions::from_state_dir(state_dir, None)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let quinn = runtime.block_on(Client::connect(options.clone()))?;
    let mut lean = Lean::connect(&options)?;
    let calls = args.calls.div_ceil(args.rounds);
    let seconds = args.seconds / args.rounds as f64;
    let name = pin.name();
    let mut rows = Vec::new();
    for _ in 0..args.rounds {
        let (h, s) = lean.sequential(calls)?;
        rows.push(progress.done(Row::new("lean", "health", 1, name, &h, s)));
        let (h, s) = runtime.block_on(report::time_sequential_async(calls, async || {
            quinn.health().await?;
            Ok(())
        }))?;
        rows.push(progress.done(Row::new("reaper", "health", 1, name, &h, s)));
        let (h, s) = lean.in_flight(args.concurrency, seconds)?;
        rows.push(progress.done(Row::new("lean", "health", args.concurrency, name, &h, s)));
        let shared = std::sync::Arc::new(runtime.block_on(Client::connect(options.clone()))?);
        let (h, s) = runtime.block_on(report::time_in_flight(args.concurrency, seconds, {
            let shared = shared.clone();
            move || {
                let shared = shared.clone();
                async move {
                    shared.health().await?;
                    Ok(())
                }
            }
        }))?;
        runtime.block_on(shared.close());
        rows.push(progress.done(Row::new("reaper", "health", args.concurrency, name, &h, s)));
    }
    runtime.block_on(quinn.close());
    Ok(rows)
}

/// Core's client state machine on a blocking socket.
struct Lean {
    client: RpcClient,
    socket: UdpSocket,
    head: RequestHead,
    message: Vec<u8>,
    out: Vec<u8>,
    datagram: Vec<u8>,
}

impl Lean {
    fn connect(options: &ClientOptions) -> anyhow::Result<Lean> {
        let config = transport::client_config(options.cert.clone(), &options.rpc, true)?;
        let client = RpcClient::connect(
            Instant::now(),
            transport::endpoint_config(true),
            config,
            options.addr,
            options.rpc.max_message_size.get() as usize,
        )?;
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let mut message = Vec::new();
        HealthRequest {}.encode(Encoding::Rkyv, &mut message)?;
        let mut lean = Lean {
            client,
            socket,
            head: RequestHead {
                method: Bytes::from_static(Method::HealthCheck.path().as_bytes()),
                encoding: Encoding::Rkyv,
                deadline_ms: 0,
                token: options.token.clone(),
            },
            message,
            out: Vec::new(),
            datagram: vec![0; 65_536],
        };
        let started = Instant::now();
        loop {
            if let Some(event) = lean.next_event()? {
                match event {
                    ClientEvent::Connected => return Ok(lean),
                    ClientEvent::ConnectionLost { reason } => bail!("handshake failed: {reason}"),
                    _ => {}
                }
            }
            if started.elapsed() > Duration::from_secs(5) {
                bail!("no handshake within 5 s");
            }
        }
    }

    fn start(&mut self) -> anyhow::Result<ClientCallId> {
        self.client
            .start_call(&self.head, &self.message, true)
            .context("no stream available")
    }

    /// Sends what the state machine wants sent, then returns its next event, waiting for a
    /// datagram or its next timer if it has none.
    fn next_event(&mut self) -> anyhow::Result<Option<ClientEvent>> {
        loop {
            let now = Instant::now();
            while let Some(transmit) = self.client.poll_transmit(now, &mut self.out) {
                self.socket
                    .send_to(&self.out[..transmit.size], transmit.destination)?;
            }
            if let Some(event) = self.client.poll_event() {
                return Ok(Some(event));
            }
            let wait = self
                .client
                .poll_timeout()
                .map(|at| at.saturating_duration_since(now))
                .unwrap_or(Duration::from_secs(1))
                .max(Duration::from_micros(1));
            self.socket.set_read_timeout(Some(wait))?;
            match self.socket.recv_from(&mut self.datagram) {
                Ok((len, from)) => self.handle(from, len),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    self.client.handle_timeout(Instant::now());
                    return Ok(None);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn handle(&mut self, from: SocketAddr, len: usize) {
        self.client
            .handle_datagram(Instant::now(), from, BytesMut::from(&self.datagram[..len]));
    }

    /// Drives until `call`'s answer and OK trailer; decodes the answer as the library would.
    fn finish(&mut self, call: ClientCallId) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut answered = false;
        while Instant::now() < deadline {
            match self.next_event()? {
                Some(ClientEvent::Message { call: c, message }) if c == call => {
                    HealthResponse::decode(Encoding::Rkyv, &message)?;
                    answered = true;
                }
                Some(ClientEvent::Finished { call: c, status }) if c == call => {
                    anyhow::ensure!(status.code == Code::Ok && answered, "call failed: {status}");
                    return Ok(());
                }
                Some(ClientEvent::ConnectionLost { reason }) => bail!("connection lost: {reason}"),
                _ => {}
            }
        }
        bail!("no answer within 5 s")
    }

    fn sequential(&mut self, calls: u64) -> anyhow::Result<(Histogram<u64>, f64)> {
        for _ in 0..calls.min(200) {
            let call = self.start()?;
            self.finish(call)?;
        }
        let mut h = histogram();
        let started = Instant::now();
        for _ in 0..calls {
            let t = Instant::now();
            let call = self.start()?;
            self.finish(call)?;
            h.saturating_record(t.elapsed().as_nanos() as u64 / 1_000);
        }
        Ok((h, started.elapsed().as_secs_f64()))
    }

    fn in_flight(
        &mut self,
        concurrency: usize,
        seconds: f64,
    ) -> anyhow::Result<(Histogram<u64>, f64)> {
        let mut h = histogram();
        let mut open: HashMap<ClientCallId, Instant> = HashMap::new();
        let started = Instant::now();
        let until = started + Duration::from_secs_f64(seconds);
        let mut answered: HashMap<ClientCallId, bool> = HashMap::new();
        loop {
            let now = Instant::now();
            if now < until {
                while open.len() < concurrency {
                    let call = self.start()?;
                    open.insert(call, Instant::now());
                }
            } else if open.is_empty() {
                break;
            }
            if now > until + Duration::from_secs(5) {
                bail!("{} calls never finished", open.len());
            }
            match self.next_event()? {
                Some(ClientEvent::Message { call, message }) => {
                    HealthResponse::decode(Encoding::Rkyv, &message)?;
                    answered.insert(call, true);
                }
                Some(ClientEvent::Finished { call, status }) => {
                    let ok = answered.remove(&call).unwrap_or(false);
                    anyhow::ensure!(status.code == Code::Ok && ok, "call failed: {status}");
                    if let Some(at) = open.remove(&call) {
                        h.saturating_record(at.elapsed().as_nanos() as u64 / 1_000);
                    }
                }
                Some(ClientEvent::ConnectionLost { reason }) => bail!("connection lost: {reason}"),
                _ => {}
            }
        }
        Ok((h, started.elapsed().as_secs_f64()))
    }
}
