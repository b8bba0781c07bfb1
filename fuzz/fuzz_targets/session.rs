//! A real client and the server state machine over an in-memory link, the client's calls and
//! the link's faults chosen by the input: the bytes after a valid head (or instead of one),
//! further messages, cancels, corrupted, dropped and delayed datagrams, time passing. Unlike
//! `datagrams`, whose packets mostly fail to decrypt, this reaches an authenticated
//! connection's streams, frames and calls. TLS draws fresh keys each run, so a run is not
//! byte-for-byte repeatable; a crash still reproduces from its input.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use reaper_core::config::RpcConfig;
use reaper_core::rpc::{CallId, ClientCallId, RpcClient, RpcServer, Sent, ServerEvent, ServerSettings};
use reaper_core::schema::Method;
use reaper_core::wire::RequestHead;
use reaper_core::{transport, Encoding, Status, Token};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

const TOKEN: [u8; 32] = [7; 32];
const SERVER: &str = "127.0.0.1:50051";
const CLIENT: &str = "127.0.0.1:40000";
/// Link passes per `pump`, at most.
const PASSES: usize = 32;

fn identity() -> &'static (Vec<u8>, Vec<u8>) {
    static ID: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    ID.get_or_init(|| {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (cert.cert.der().to_vec(), cert.signing_key.serialize_der())
    })
}

/// The input, read a byte or a run of bytes at a time; zeros once it runs out.
struct Script<'a>(&'a [u8]);

impl<'a> Script<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn bytes(&mut self) -> &'a [u8] {
        let len = (self.byte() as usize * 16).min(self.0.len());
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        taken
    }
}

/// What the link does to the next datagram.
#[derive(Clone, Copy)]
enum Fault {
    None,
    Drop,
    Flip(usize, u8),
}

struct World {
    server: RpcServer,
    client: RpcClient,
    now: Instant,
    fault: Fault,
    calls: Vec<ClientCallId>,
    answered: u64,
    /// Streamed calls the server is still producing for, with the messages left to send.
    streaming: Vec<(CallId, u32)>,
}

impl World {
    /// Moves datagrams both ways and fires timers, a bounded number of times.
    fn pump(&mut self) {
        let (server_addr, client_addr): (SocketAddr, SocketAddr) =
            (SERVER.parse().unwrap(), CLIENT.parse().unwrap());
        let mut buf = Vec::new();
        for _ in 0..PASSES {
            let mut moved = false;
            while let Some(t) = self.client.poll_transmit(self.now, &mut buf) {
                moved = true;
                let mut datagram = buf[..t.size].to_vec();
                if self.faulted(&mut datagram) {
                    self.server
                        .handle_datagram(self.now, client_addr, None, None, BytesMut::from(&datagram[..]));
                }
            }
            while let Some(event) = self.server.poll_event() {
                self.serve(event);
            }
            while let Some(t) = self.server.poll_transmit(self.now, 8, &mut buf) {
                moved = true;
                let mut datagram = buf[..t.size].to_vec();
                if self.faulted(&mut datagram) {
                    self.client
                        .handle_datagram(self.now, server_addr, BytesMut::from(&datagram[..]));
                }
            }
            while self.client.poll_event().is_some() {}
            if !moved {
                let next = [self.server.poll_timeout(), self.client.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min();
                match next {
                    Some(at) if at <= self.now + Duration::from_millis(200) => {
                        self.now = self.now.max(at);
                        self.server.handle_timeout(self.now);
                        self.client.handle_timeout(self.now);
                    }
                    _ => return,
                }
            }
        }
    }

    /// Applies the pending fault to a datagram; false when it is dropped.
    fn faulted(&mut self, datagram: &mut [u8]) -> bool {
        match std::mem::replace(&mut self.fault, Fault::None) {
            Fault::None => true,
            Fault::Drop => false,
            Fault::Flip(at, mask) => {
                if !datagram.is_empty() {
                    let at = at % datagram.len();
                    datagram[at] ^= mask.max(1);
                }
                true
            }
        }
    }

    /// Answers calls the way services do: some with a message, some with a status, some left
    /// open (to be cancelled or to time out).
    fn serve(&mut self, event: ServerEvent) {
        if let ServerEvent::Writable { id } = event {
            self.produce(id);
            return;
        }
        if let ServerEvent::Call(call) = event {
            self.answered += 1;
            if call.method.server_streams() && self.answered % 2 == 0 {
                // A stream of 1 KiB messages, held back by the client's reading.
                self.streaming.push((call.id, 200));
                self.produce(call.id);
                return;
            }
            match self.answered % 3 {
                0 => {
                    self.server.respond(call.id, |out| {
                        out.extend_from_slice(b"{}");
                        Ok(())
                    });
                }
                1 => {
                    self.server
                        .finish(call.id, &Status::new(reaper_core::Code::NotFound, "no"));
                }
                _ => {}
            }
        }
    }

    /// Sends a streamed call's messages until refused, and its trailer after the last.
    fn produce(&mut self, id: CallId) {
        let Some(at) = self.streaming.iter().position(|(c, _)| *c == id) else {
            return;
        };
        loop {
            let left = self.streaming[at].1;
            if left == 0 {
                self.server.finish(id, &Status::ok());
                self.streaming.swap_remove(at);
                return;
            }
            match self.server.send_message(id, |out| out.resize(out.len() + 1024, b'x')) {
                Sent::Sent => self.streaming[at].1 -= 1,
                Sent::WouldBlock => return,
                Sent::Closed => {
                    self.streaming.swap_remove(at);
                    return;
                }
            }
        }
    }
}

const METHODS: [Method; 6] = [
    Method::HealthCheck,
    Method::CompletionComplete,
    Method::ProviderList,
    Method::CompletionFeedback,
    Method::ChatSend,
    Method::AgentExecute,
];

fuzz_target!(|data: &[u8]| {
    let (cert, key) = identity();
    let rpc = RpcConfig::default();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.clone()));
    let config = transport::server_config(cert.clone().into(), key, &rpc, true).unwrap();
    let mut settings = ServerSettings::from_config(Token::from_bytes(TOKEN), &rpc);
    settings.max_message_size = 1 << 16;
    settings.max_buffered_requests = 1 << 20;
    let now = Instant::now();
    let server = RpcServer::new(transport::endpoint_config(true), config, settings);
    let client = RpcClient::connect(
        now,
        transport::endpoint_config(true),
        transport::client_config(cert.clone().into(), &rpc, true).unwrap(),
        SERVER.parse().unwrap(),
        1 << 16,
    )
    .unwrap();
    let mut world = World {
        server,
        client,
        now,
        fault: Fault::None,
        calls: Vec::new(),
        answered: 0,
        streaming: Vec::new(),
    };
    world.pump();
    let mut script = Script(data);
    for _ in 0..64 {
        if script.0.is_empty() {
            break;
        }
        match script.byte() % 8 {
            0 | 1 => {
                let method = METHODS[script.byte() as usize % METHODS.len()];
                let flags = script.byte();
                let head = RequestHead {
                    method: method.path().into(),
                    encoding: if flags & 1 == 0 { Encoding::Json } else { Encoding::Rkyv },
                    deadline_ms: u32::from(flags >> 4) * 100,
                    token: Token::from_bytes(if flags & 2 == 0 { TOKEN } else { [8; 32] }),
                };
                let message = script.bytes();
                if let Some(call) = world.client.start_call(&head, message, flags & 4 == 0) {
                    world.calls.push(call);
                }
            }
            2 => {
                let raw = script.bytes();
                let finish = script.byte() & 1 == 0;
                if let Some(call) = world.client.start_raw_call(raw, finish) {
                    world.calls.push(call);
                }
            }
            3 => {
                let k = script.byte() as usize;
                let message = script.bytes();
                let finish = script.byte() & 1 == 0;
                if let Some(&call) = world.calls.get(k % world.calls.len().max(1)) {
                    world.client.send_message(call, message, finish);
                }
            }
            4 => {
                let k = script.byte() as usize;
                if k & 0x80 != 0 {
                    // Stop or resume reading a call's response.
                    if let Some(&call) = world.calls.get(k % world.calls.len().max(1)) {
                        world.client.set_reading(call, k & 0x40 == 0);
                    }
                } else if !world.calls.is_empty() {
                    let call = world.calls.remove(k % world.calls.len());
                    world.client.cancel(call);
                }
            }
            5 => {
                let at = script.byte() as usize * 7;
                world.fault = Fault::Flip(at, script.byte());
            }
            6 => world.fault = Fault::Drop,
            _ => {
                world.now += Duration::from_millis(u64::from(script.byte()) * 50);
                world.server.handle_timeout(world.now);
                world.client.handle_timeout(world.now);
            }
        }
        world.pump();
    }
});
