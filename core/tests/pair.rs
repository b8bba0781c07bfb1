//! Two core endpoints wired together in memory: no sockets, a simulated clock, and a link that
//! can lose, delay and reorder datagrams.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reaper_core::config::RpcConfig;
use reaper_core::rpc::{
    ClientCallId, ClientEvent, RpcClient, RpcServer, Sent, ServerEvent, ServerSettings,
    MAX_UNSENT_PER_CALL, SILENT_GIVES_WAY_AFTER,
};
use reaper_core::schema::*;
use reaper_core::wire::RequestHead;
use reaper_core::{transport, Code, Encoding, Status, Token, WireMessage};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const SERVER: &str = "127.0.0.1:4433";
const TOKEN: [u8; 32] = [42; 32];

struct Link {
    loss: f64,
    delay: Duration,
    jitter: Duration,
}

impl Link {
    fn perfect() -> Link {
        Link {
            loss: 0.0,
            delay: Duration::from_micros(50),
            jitter: Duration::ZERO,
        }
    }
    fn lossy() -> Link {
        Link {
            loss: 0.1,
            delay: Duration::from_millis(2),
            jitter: Duration::from_millis(3),
        }
    }
}

struct Pair {
    server: RpcServer,
    clients: Vec<RpcClient>,
    now: Instant,
    link: Link,
    rng: StdRng,
    /// (deliver at, to client index or server (None), from, bytes)
    in_flight: Vec<(Instant, Option<usize>, SocketAddr, Vec<u8>)>,
    server_log: Vec<ServerEvent>,
    client_log: Vec<(usize, ClientEvent)>,
    cert: CertificateDer<'static>,
    rpc: RpcConfig,
    /// The clients' datagrams no longer arrive (their process died).
    clients_gone: bool,
    /// These clients' datagrams no longer arrive (their process died).
    dead: Vec<usize>,
}

fn client_addr(i: usize) -> SocketAddr {
    format!("127.0.0.1:{}", 50000 + i).parse().unwrap()
}

impl Pair {
    fn new(link: Link, rpc: RpcConfig) -> Pair {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert_der = cert.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let server_config = transport::server_config(cert_der.clone(), key, &rpc, true).unwrap();
        let server = RpcServer::new(
            transport::endpoint_config(true),
            server_config,
            ServerSettings::from_config(Token::from_bytes(TOKEN), &rpc),
        );
        let mut pair = Pair {
            server,
            clients: Vec::new(),
            now: Instant::now(),
            link,
            rng: StdRng::seed_from_u64(7),
            in_flight: Vec::new(),
            server_log: Vec::new(),
            client_log: Vec::new(),
            cert: cert_der,
            rpc,
            clients_gone: false,
            dead: Vec::new(),
        };
        pair.add_client();
        pair
    }

    fn add_client(&mut self) -> usize {
        let config = transport::client_config(self.cert.clone(), &self.rpc, true).unwrap();
        self.add_client_with(config)
    }

    /// A client that never pings and asks for a 300 s idle timeout (not reaper-client: its
    /// 6 s would close a dead one's connection first).
    fn add_patient_client(&mut self) -> usize {
        let mut config = transport::client_config(self.cert.clone(), &self.rpc, true).unwrap();
        let mut patient = transport::transport_config(&self.rpc, true);
        patient
            .keep_alive_interval(None)
            .max_idle_timeout(Some(Duration::from_secs(300).try_into().unwrap()));
        config.transport_config(Arc::new(patient));
        self.add_client_with(config)
    }

    fn add_client_with(&mut self, config: quinn_proto::ClientConfig) -> usize {
        let client = RpcClient::connect(
            self.now,
            transport::endpoint_config(true),
            config,
            SERVER.parse().unwrap(),
            1 << 20,
        )
        .unwrap();
        self.clients.push(client);
        self.clients.len() - 1
    }

    fn send(&mut self, to: Option<usize>, from: SocketAddr, bytes: Vec<u8>) {
        let dead =
            (0..self.clients.len()).any(|i| self.dead.contains(&i) && client_addr(i) == from);
        if self.rng.random_bool(self.link.loss) || (to.is_none() && self.clients_gone) || dead {
            return;
        }
        let jitter = self.link.jitter.mul_f64(self.rng.random::<f64>());
        self.in_flight
            .push((self.now + self.link.delay + jitter, to, from, bytes));
    }

    /// Moves every datagram both sides want to send onto the link, answering server calls with
    /// `serve` first (as the real driver does).
    fn flush(&mut self, serve: &mut dyn FnMut(&mut RpcServer, &ServerEvent)) {
        while let Some(event) = self.server.poll_event() {
            serve(&mut self.server, &event);
            self.server_log.push(event);
        }
        let mut buf = Vec::new();
        while let Some(t) = self.server.poll_transmit(self.now, 1, &mut buf) {
            let to = (0..self.clients.len()).find(|&i| client_addr(i) == t.destination);
            let bytes = buf[..t.size].to_vec();
            self.send(to, SERVER.parse().unwrap(), bytes);
        }
        for i in 0..self.clients.len() {
            while let Some(event) = self.clients[i].poll_event() {
                self.client_log.push((i, event));
            }
            while let Some(t) = self.clients[i].poll_transmit(self.now, &mut buf) {
                let bytes = buf[..t.size].to_vec();
                self.send(None, client_addr(i), bytes);
            }
        }
    }

    /// Advances simulated time to the next delivery or timer and handles it. False when
    /// nothing is left to do.
    fn step(&mut self, serve: &mut dyn FnMut(&mut RpcServer, &ServerEvent)) -> bool {
        self.flush(serve);
        let next_packet = self.in_flight.iter().map(|p| p.0).min();
        let mut next_timer = self.server.poll_timeout();
        for c in &mut self.clients {
            next_timer = match (next_timer, c.poll_timeout()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let next = match (next_packet, next_timer) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return false,
        };
        self.now = self.now.max(next);
        let (due, rest): (Vec<_>, Vec<_>) = self.in_flight.drain(..).partition(|p| p.0 <= self.now);
        self.in_flight = rest;
        for (_, to, from, bytes) in due {
            let data = BytesMut::from(&bytes[..]);
            match to {
                None => self
                    .server
                    .handle_datagram(self.now, from, None, None, data),
                Some(i) => self.clients[i].handle_datagram(self.now, SERVER.parse().unwrap(), data),
            }
        }
        if self.server.poll_timeout().is_some_and(|t| t <= self.now) {
            self.server.handle_timeout(self.now);
        }
        for c in &mut self.clients {
            if c.poll_timeout().is_some_and(|t| t <= self.now) {
                c.handle_timeout(self.now);
            }
        }
        true
    }

    /// Steps until `done` holds, within a bound of steps and simulated time.
    fn drive_until(
        &mut self,
        serve: &mut dyn FnMut(&mut RpcServer, &ServerEvent),
        done: &mut dyn FnMut(&Pair) -> bool,
    ) {
        let start = self.now;
        for _ in 0..200_000 {
            if done(self) {
                return;
            }
            assert!(
                self.now - start < Duration::from_secs(120),
                "simulated time ran out"
            );
            if !self.step(serve) {
                break;
            }
        }
        assert!(done(self), "condition never held");
    }

    fn connect(&mut self) {
        let n = self.clients.len();
        self.drive_until(&mut no_service, &mut |p: &Pair| {
            p.client_log
                .iter()
                .filter(|(_, e)| *e == ClientEvent::Connected)
                .count()
                >= n
        });
    }

    /// Runs one JSON Health call from `client` to its end, served by `service`.
    fn health_check(
        &mut self,
        client: usize,
        service: &mut dyn FnMut(&mut RpcServer, &ServerEvent),
    ) -> Status {
        let call = self.clients[client]
            .start_call(
                &head("reaper.Health/check", Encoding::Json, TOKEN),
                &health_request(Encoding::Json),
                true,
            )
            .unwrap();
        self.drive_until(service, &mut |p: &Pair| p.finished(client, call).is_some());
        self.finished(client, call).unwrap().clone()
    }

    fn finished(&self, client: usize, call: ClientCallId) -> Option<&Status> {
        self.client_log.iter().find_map(|(i, e)| match e {
            ClientEvent::Finished { call: c, status } if *i == client && *c == call => Some(status),
            _ => None,
        })
    }

    fn message(&self, client: usize, call: ClientCallId) -> Option<&[u8]> {
        self.client_log.iter().find_map(|(i, e)| match e {
            ClientEvent::Message { call: c, message } if *i == client && *c == call => {
                Some(&message[..])
            }
            _ => None,
        })
    }
}

fn no_service(_: &mut RpcServer, _: &ServerEvent) {}

/// A minimal Health service: answers every Health call with a response naming the call count.
fn health_service() -> impl FnMut(&mut RpcServer, &ServerEvent) {
    let mut served = 0u64;
    move |server, event| {
        if let ServerEvent::Call(call) = event {
            assert_eq!(call.method, Method::HealthCheck);
            HealthRequest::decode(call.encoding, &call.message).unwrap();
            served += 1;
            let response = HealthResponse {
                status: ServingStatus::Serving,
                version: "test".into(),
                uptime_s: served,
                connections: 1,
                requests: served,
                errors: 0,
                error_rate: 0.0,
                calls: vec![],
                latency: LatencySummary {
                    count: 0,
                    p50_us: 0,
                    p90_us: 0,
                    p99_us: 0,
                    p999_us: 0,
                    max_us: 0,
                    mean_us: 0.0,
                },
                cache: CacheStats {
                    entries: 0,
                    hits: 0,
                    misses: 0,
                    evictions: 0,
                    typed_through: 0,
                },
                providers: vec![],
                feedback: FeedbackStats::default(),
                budgets: BudgetStats::default(),
            };
            let encoding = call.encoding;
            let sent = server.respond(call.id, |out| {
                response
                    .encode(encoding, out)
                    .map_err(|e| Status::new(Code::Internal, e.to_string()))
            });
            assert_eq!(sent, Some(Status::ok()));
        }
    }
}

fn head(method: &str, encoding: Encoding, token: [u8; 32]) -> RequestHead {
    RequestHead {
        method: bytes::Bytes::copy_from_slice(method.as_bytes()),
        encoding,
        deadline_ms: 0,
        token: Token::from_bytes(token),
    }
}

fn health_request(encoding: Encoding) -> Vec<u8> {
    let mut out = Vec::new();
    HealthRequest {}.encode(encoding, &mut out).unwrap();
    out
}

#[test]
fn health_call_in_both_encodings() {
    let mut pair = Pair::new(Link::perfect(), RpcConfig::default());
    pair.connect();
    let mut service = health_service();
    for encoding in [Encoding::Rkyv, Encoding::Json] {
        let call = pair.clients[0]
            .start_call(
                &head("reaper.Health/check", encoding, TOKEN),
                &health_request(encoding),
                true,
            )
            .unwrap();
        pair.drive_until(&mut service, &mut |p: &Pair| p.finished(0, call).is_some());
        assert_eq!(pair.finished(0, call).unwrap(), &Status::ok());
        let response = HealthResponse::decode(encoding, pair.message(0, call).unwrap()).unwrap();
        assert_eq!(response.status, ServingStatus::Serving);
    }
}

#[test]
fn sixty_four_concurrent_calls_survive_loss_and_reordering() {
    let mut pair = Pair::new(Link::lossy(), RpcConfig::default());
    pair.connect();
    let mut service = health_service();
    let calls: Vec<_> = (0..64)
        .map(|i| {
            let encoding = if i % 2 == 0 {
                Encoding::Rkyv
            } else {
                Encoding::Json
            };
            pair.clients[0]
                .start_call(
                    &head("reaper.Health/check", encoding, TOKEN),
                    &health_request(encoding),
                    true,
                )
                .unwrap()
        })
        .collect();
    pair.drive_until(&mut service, &mut |p: &Pair| {
        calls.iter().all(|&c| p.finished(0, c).is_some())
    });
    for &call in &calls {
        assert_eq!(pair.finished(0, call).unwrap().code, Code::Ok);
        assert!(pair.message(0, call).is_some());
    }
    let served = pair
        .server_log
        .iter()
        .filter(|e| matches!(e, ServerEvent::Call(_)))
        .count();
    assert_eq!(served, 64, "each call reached the service exactly once");
    assert_eq!(pair.server.in_flight(), 0);
}

#[test]
fn wrong_token_is_unauthenticated_and_reaches_no_service() {
    let mut pair = Pair::new(Link::perfect(), RpcConfig::default());
    pair.connect();
    let call = pair.clients[0]
        .start_call(
            &head("reaper.Health/check", Encoding::Json, [0; 32]),
            b"{}",
            true,
        )
        .unwrap();
    let mut service = |_: &mut RpcServer, e: &ServerEvent| {
        assert!(
            !matches!(e, ServerEvent::Call(_)),
            "a call with a wrong token reached a service"
        );
    };
    pair.drive_until(&mut service, &mut |p: &Pair| p.finished(0, call).is_some());
    assert_eq!(pair.finished(0, call).unwrap().code, Code::Unauthenticated);
    assert!(pair.message(0, call).is_none());
}

#[test]
fn unknown_method_and_bad_framing_get_statuses_and_the_connection_lives_on() {
    let mut pair = Pair::new(Link::perfect(), RpcConfig::default());
    pair.connect();
    let mut service = health_service();
    let unknown = pair.clients[0]
        .start_call(
            &head("reaper.Nope/nothing", Encoding::Json, TOKEN),
            b"{}",
            true,
        )
        .unwrap();
    let mut head_only = Vec::new();
    head("reaper.Health/check", Encoding::Json, TOKEN).encode(&mut head_only);
    let no_message = pair.clients[0].start_raw_call(&head_only, true).unwrap();
    let not_reaper = pair.clients[0]
        .start_raw_call(b"GET / HTTP/1.1\r\n\r\n", true)
        .unwrap();
    pair.drive_until(&mut service, &mut |p: &Pair| {
        [unknown, no_message, not_reaper]
            .iter()
            .all(|&c| p.finished(0, c).is_some())
    });
    assert_eq!(pair.finished(0, unknown).unwrap().code, Code::Unimplemented);
    assert_eq!(
        pair.finished(0, no_message).unwrap().code,
        Code::InvalidArgument
    );
    let status = pair.finished(0, not_reaper).unwrap();
    assert_eq!(status.code, Code::InvalidArgument);
    assert!(status.message.contains("magic"), "{status}");
    let ok = pair.clients[0]
        .start_call(
            &head("reaper.Health/check", Encoding::Json, TOKEN),
            b"{}",
            true,
        )
        .unwrap();
    pair.drive_until(&mut service, &mut |p: &Pair| p.finished(0, ok).is_some());
    assert_eq!(pair.finished(0, ok).unwrap().code, Code::Ok);
}

#[test]
fn oversized_message_is_resource_exhausted() {
    let rpc = RpcConfig {
        max_message_size: 1024.try_into().unwrap(),
        ..Default::default()
    };
    let mut pair = Pair::new(Link::perfect(), rpc);
    pair.connect();
    let call = pair.clients[0]
        .start_call(
            &head("reaper.Health/check", Encoding::Json, TOKEN),
            &vec![b' '; 4096],
            true,
        )
        .unwrap();
    pair.drive_until(&mut no_service, &mut |p: &Pair| {
        p.finished(0, call).is_some()
    });
    let status = pair.finished(0, call).unwrap();
    assert_eq!(status.code, Code::ResourceExhausted, "{status}");
    assert!(status.message.contains("max_message_size"));
}

#[test]
fn a_cancelled_call_reaches_the_service_as_cancelled() {
    let mut pair = Pair::new(Link::perfect(), RpcConfig::default());
    pair.connect();
    // A streaming call the service never answers.
    let call = pair.clients[0]
        .start_call(
            &head("reaper.Chat/send", Encoding::Json, TOKEN),
            br#"{"messages":[],"model":null,"max_tokens":null}"#,
            false,
        )
        .unwrap();
    pair.drive_until(&mut no_service, &mut |p: &Pair| p.server.in_flight() == 1);
    pair.clients[0].cancel(call);
    pair.drive_until(&mut no_service, &mut |p: &Pair| {
        p.server_log
            .iter()
            .any(|e| matches!(e, ServerEvent::Cancelled { .. }))
    });
    assert_eq!(pair.server.in_flight(), 0);
}

#[test]
fn connections_over_the_limit_are_refused() {
    let rpc = RpcConfig {
        max_connections: 1.try_into().unwrap(),
        ..Default::default()
    };
    let mut pair = Pair::new(Link::perfect(), rpc);
    pair.connect();
    // The first client has made a call with the token: it keeps its place.
    let mut service = health_service();
    let call = pair.clients[0]
        .start_call(
            &head("reaper.Health/check", Encoding::Json, TOKEN),
            &health_request(Encoding::Json),
            true,
        )
        .unwrap();
    pair.drive_until(&mut service, &mut |p: &Pair| p.finished(0, call).is_some());
    pair.add_client();
    pair.drive_until(&mut no_service, &mut |p: &Pair| {
        p.client_log
            .iter()
            .any(|(i, e)| *i == 1 && matches!(e, ClientEvent::ConnectionLost { .. }))
    });
    assert!(pair
        .server_log
        .iter()
        .any(|e| matches!(e, ServerEvent::Refused { .. })));
    assert_eq!(pair.server.connection_count(), 1);
}

/// Issue 13, finding 1: a connection that finished its handshake but never presented the
/// token (anyone can finish one) gives its place to a new connection at the limit.
#[test]
fn a_connection_that_never_authenticated_makes_room_at_the_limit() {
    let rpc = RpcConfig {
        max_connections: 1.try_into().unwrap(),
        ..Default::default()
    };
    let mut pair = Pair::new(Link::perfect(), rpc);
    pair.connect();
    pair.add_client();
    pair.drive_until(&mut no_service, &mut |p: &Pair| {
        p.client_log
            .iter()
            .any(|(i, e)| *i == 0 && matches!(e, ClientEvent::ConnectionLost { .. }))
    });
    let mut service = health_service();
    let call = pair.clients[1]
        .start_call(
            &head("reaper.Health/check", Encoding::Json, TOKEN),
            &health_request(Encoding::Json),
            true,
        )
        .unwrap();
    pair.drive_until(&mut service, &mut |p: &Pair| p.finished(1, call).is_some());
    assert_eq!(pair.finished(1, call).unwrap(), &Status::ok());
    assert_eq!(pair.server.connection_count(), 1);
}

/// Issue 13, finding 1: a client killed without closing held its slot for the whole idle
/// timeout (300 s), and at `max_connections` real clients were refused all that time. At the
/// limit, a connection silent for `SILENT_GIVES_WAY_AFTER` with no call open gives way; one
/// heard from recently does not.
#[test]
fn a_killed_clients_slot_goes_to_a_new_client_at_the_limit() {
    let rpc = RpcConfig {
        max_connections: 1.try_into().unwrap(),
        ..Default::default()
    };
    let mut pair = Pair::new(Link::perfect(), rpc);
    pair.clients.clear();
    let killed = pair.add_patient_client();
    pair.connect();
    let mut service = health_service();
    pair.health_check(killed, &mut service);
    pair.dead.push(killed);

    // Heard from a moment ago: the newcomer is refused, as before.
    pair.now += Duration::from_secs(2);
    let early = pair.add_client();
    pair.drive_until(&mut service, &mut |p: &Pair| {
        p.client_log
            .iter()
            .any(|(i, e)| *i == early && matches!(e, ClientEvent::ConnectionLost { .. }))
    });
    assert_eq!(pair.server.connection_count(), 1);

    // Silent past the bound, nothing open: it makes room.
    pair.now += SILENT_GIVES_WAY_AFTER;
    let late = pair.add_client();
    pair.drive_until(&mut service, &mut |p: &Pair| {
        p.client_log
            .iter()
            .any(|(i, e)| *i == late && *e == ClientEvent::Connected)
    });
    assert_eq!(pair.health_check(late, &mut service), Status::ok());
    assert_eq!(pair.server.connection_count(), 1);
}

#[test]
fn idle_connections_time_out_on_the_simulated_clock() {
    let rpc = RpcConfig {
        idle_timeout: 10,
        ..Default::default()
    };
    let mut pair = Pair::new(Link::perfect(), rpc);
    pair.connect();
    // A live client pings: its connection outlives the idle timeout many times over.
    let start = pair.now;
    while pair.now - start < Duration::from_secs(60) {
        assert!(pair.step(&mut no_service));
    }
    let mut disconnected = |p: &Pair| {
        p.server_log
            .iter()
            .any(|e| matches!(e, ServerEvent::Disconnected { .. }))
    };
    assert!(!disconnected(&pair), "a pinging client stays connected");
    // A client that vanishes without closing is dropped after the idle timeout, which is the
    // shorter of the two ends' (the client asks for transport::CLIENT_DEAD_AFTER).
    pair.clients_gone = true;
    let gone_at = pair.now;
    pair.drive_until(&mut no_service, &mut disconnected);
    let idle = pair.now - gone_at;
    let expected = transport::CLIENT_DEAD_AFTER;
    assert!(
        idle >= expected - Duration::from_secs(2) && idle < Duration::from_secs(31),
        "{idle:?}"
    );
}

#[test]
fn draining_refuses_new_calls_but_finishes_those_in_flight() {
    let mut pair = Pair::new(Link::perfect(), RpcConfig::default());
    pair.connect();
    let slow = pair.clients[0]
        .start_call(
            &head("reaper.Chat/send", Encoding::Json, TOKEN),
            b"{}",
            true,
        )
        .unwrap();
    pair.drive_until(&mut no_service, &mut |p: &Pair| p.server.in_flight() == 1);
    pair.server.begin_drain();
    let late = pair.clients[0]
        .start_call(
            &head("reaper.Health/check", Encoding::Json, TOKEN),
            b"{}",
            true,
        )
        .unwrap();
    pair.drive_until(&mut no_service, &mut |p: &Pair| {
        p.finished(0, late).is_some()
    });
    assert_eq!(pair.finished(0, late).unwrap().code, Code::Unavailable);
    let id = pair.server_log.iter().find_map(|e| match e {
        ServerEvent::Call(c) => Some(c.id),
        _ => None,
    });
    assert!(pair.server.finish(id.unwrap(), &Status::new(Code::Ok, "")));
    pair.drive_until(&mut no_service, &mut |p: &Pair| {
        p.finished(0, slow).is_some()
    });
    assert_eq!(pair.finished(0, slow).unwrap().code, Code::Ok);
    assert_eq!(pair.server.in_flight(), 0);
    pair.drive_until(&mut no_service, &mut |p: &Pair| {
        p.server.unacknowledged() == 0
    });
}

/// Many more cancelled and stopped calls than the connection's stream limit: each must give its
/// stream back, or the connection would stop taking calls.
#[test]
fn cancelled_calls_return_their_streams() {
    let rpc = RpcConfig {
        max_concurrent_calls: 8.try_into().unwrap(),
        ..Default::default()
    };
    let mut pair = Pair::new(Link::perfect(), rpc);
    pair.connect();
    for round in 0..40 {
        let call = pair.clients[0]
            .start_call(
                &head("reaper.Chat/send", Encoding::Json, TOKEN),
                b"{}",
                round % 2 == 0,
            )
            .expect("a stream is free");
        pair.drive_until(&mut no_service, &mut |p: &Pair| p.server.in_flight() == 1);
        pair.clients[0].cancel(call);
        pair.drive_until(&mut no_service, &mut |p: &Pair| p.server.in_flight() == 0);
    }
    let mut service = health_service();
    let ok = pair.clients[0]
        .start_call(
            &head("reaper.Health/check", Encoding::Json, TOKEN),
            b"{}",
            true,
        )
        .expect("streams were returned");
    pair.drive_until(&mut service, &mut |p: &Pair| p.finished(0, ok).is_some());
    assert_eq!(pair.finished(0, ok).unwrap().code, Code::Ok);
}

/// Answered calls are forgotten once their response is acknowledged, and the streams of
/// completed calls are returned: far more calls than the stream limit run one after another.
#[test]
fn answered_calls_free_their_state_and_streams() {
    let rpc = RpcConfig {
        max_concurrent_calls: 4.try_into().unwrap(),
        ..Default::default()
    };
    let mut pair = Pair::new(Link::lossy(), rpc);
    pair.connect();
    let mut service = health_service();
    for _ in 0..50 {
        let call = loop {
            if let Some(call) = pair.clients[0].start_call(
                &head("reaper.Health/check", Encoding::Rkyv, TOKEN),
                &health_request(Encoding::Rkyv),
                true,
            ) {
                break call;
            }
            assert!(pair.step(&mut service), "stuck waiting for a free stream");
        };
        pair.drive_until(&mut service, &mut |p: &Pair| p.finished(0, call).is_some());
        assert_eq!(pair.finished(0, call).unwrap().code, Code::Ok);
    }
    pair.drive_until(&mut service, &mut |p: &Pair| p.server.unacknowledged() == 0);
}

/// Issue 13, finding 1: a handshake that never finishes is closed after `handshake_timeout`,
/// so it holds its slot for seconds, not for the idle timeout.
#[test]
fn an_abandoned_handshake_is_closed_at_its_timeout() {
    let rpc = RpcConfig::default();
    let pair = Pair::new(Link::perfect(), rpc.clone());
    let mut server = pair.server;
    let config = transport::client_config(pair.cert.clone(), &rpc, true).unwrap();
    let mut client = quinn_proto::Endpoint::new(
        std::sync::Arc::new(transport::endpoint_config(true)),
        None,
        true,
        None,
    );
    let start = pair.now;
    let (_, mut conn) = client
        .connect(
            start,
            config,
            SERVER.parse().unwrap(),
            transport::SERVER_NAME,
        )
        .unwrap();
    let mut buf = Vec::new();
    let transmit = conn.poll_transmit(start, 1, &mut buf).unwrap();
    server.handle_datagram(
        start,
        client_addr(9),
        None,
        None,
        BytesMut::from(&buf[..transmit.size]),
    );
    assert_eq!(server.handshake_count(), 1);
    assert_eq!(server.connection_count(), 0);
    // Time passes with nothing from the client: the server's timers fire as they come due.
    let limit = Duration::from_millis(rpc.handshake_timeout.get());
    let mut now = start;
    let mut timed_out = false;
    for _ in 0..1_000 {
        let Some(next) = server.poll_timeout() else {
            break;
        };
        now = next.max(now);
        server.handle_timeout(now);
        while let Some(event) = server.poll_event() {
            if let ServerEvent::Refused { reason, .. } = event {
                timed_out |= reason.contains("handshake timed out");
            }
        }
        let mut out = Vec::new();
        while server.poll_transmit(now, 1, &mut out).is_some() {
            out.clear();
        }
        if server.handshake_count() == 0 && timed_out {
            break;
        }
    }
    assert!(timed_out, "no handshake timeout reported");
    assert_eq!(server.handshake_count(), 0);
    assert!(
        now >= start + limit && now < start + limit + Duration::from_secs(1),
        "closed at {:?}, the timeout is {limit:?}",
        now - start
    );
}

// ---- server streaming with flow control ----

/// A streamed call's producer as a service would run it: it sends messages until the state
/// machine refuses one (`WouldBlock`), keeps that one, and goes on at `Writable`; after
/// `total` messages it ends the call with OK.
struct Producer {
    call: Option<reaper_core::rpc::CallId>,
    /// Messages to send in all (`u64::MAX`: never stops).
    total: u64,
    /// Bytes of each message.
    size: usize,
    next: u64,
    /// Bytes the state machine has taken.
    accepted: usize,
    would_block: usize,
    writable: usize,
    /// The state machine said the call is over.
    closed: bool,
    cancelled: bool,
    /// Most bytes the state machine held unsent for the call after any write.
    max_unsent: usize,
}

impl Producer {
    fn new(total: u64, size: usize) -> Rc<RefCell<Producer>> {
        Rc::new(RefCell::new(Producer {
            call: None,
            total,
            size,
            next: 0,
            accepted: 0,
            would_block: 0,
            writable: 0,
            closed: false,
            cancelled: false,
            max_unsent: 0,
        }))
    }

    fn message(&self, n: u64) -> Vec<u8> {
        let mut message = format!("{n:010}").into_bytes();
        message.resize(self.size.max(10), b'.');
        message
    }

    /// Sends until refused or done.
    fn pump(&mut self, server: &mut RpcServer) {
        let Some(id) = self.call else { return };
        while self.next < self.total && !self.closed {
            let message = self.message(self.next);
            match server.send_message(id, |out| out.extend_from_slice(&message)) {
                Sent::Sent => {
                    self.next += 1;
                    self.accepted += message.len();
                }
                Sent::WouldBlock => {
                    self.would_block += 1;
                    break;
                }
                Sent::Closed => self.closed = true,
            }
            self.max_unsent = self.max_unsent.max(server.unsent(id));
        }
        if self.next == self.total && !self.closed {
            assert!(server.finish(id, &Status::ok()));
            self.closed = true;
        }
    }

    /// The service: starts producing on the call, goes on at Writable, stops at Cancelled.
    fn service(this: &Rc<RefCell<Producer>>) -> impl FnMut(&mut RpcServer, &ServerEvent) {
        let this = this.clone();
        move |server, event| {
            let mut p = this.borrow_mut();
            match event {
                ServerEvent::Call(call) => {
                    assert_eq!(call.method, Method::ChatSend);
                    p.call = Some(call.id);
                    p.pump(server);
                }
                ServerEvent::Writable { id } if Some(*id) == p.call => {
                    p.writable += 1;
                    p.pump(server);
                }
                ServerEvent::Cancelled { id } if Some(*id) == p.call => p.cancelled = true,
                _ => {}
            }
        }
    }
}

fn start_chat(pair: &mut Pair) -> ClientCallId {
    pair.clients[0]
        .start_call(
            &head("reaper.Chat/send", Encoding::Json, TOKEN),
            br#"{"messages":[]}"#,
            true,
        )
        .unwrap()
}

/// The messages client 0 got on `call`, in arrival order.
fn messages(pair: &Pair, call: ClientCallId) -> Vec<Vec<u8>> {
    pair.client_log
        .iter()
        .filter_map(|(i, e)| match e {
            ClientEvent::Message { call: c, message } if *i == 0 && *c == call => {
                Some(message.to_vec())
            }
            _ => None,
        })
        .collect()
}

/// 3,000 messages of 1 KiB (three times what the client's stream window holds) over a link that
/// loses and reorders datagrams: every one arrives, in order, and the trailer comes last.
#[test]
fn a_long_stream_arrives_whole_and_in_order_over_a_lossy_link() {
    let mut pair = Pair::new(Link::lossy(), RpcConfig::default());
    pair.connect();
    let producer = Producer::new(3_000, 1024);
    let mut service = Producer::service(&producer);
    let call = start_chat(&mut pair);
    pair.drive_until(&mut service, &mut |p: &Pair| p.finished(0, call).is_some());
    assert_eq!(pair.finished(0, call).unwrap(), &Status::ok());
    let got = messages(&pair, call);
    assert_eq!(got.len(), 3_000);
    let p = producer.borrow();
    for (n, message) in got.iter().enumerate() {
        assert_eq!(message, &p.message(n as u64), "message {n}");
    }
    // The trailer is the call's last event: no message after it.
    let last = pair
        .client_log
        .iter()
        .rposition(|(_, e)| matches!(e, ClientEvent::Message { call: c, .. } if *c == call))
        .unwrap();
    let finished = pair
        .client_log
        .iter()
        .position(|(_, e)| matches!(e, ClientEvent::Finished { call: c, .. } if *c == call))
        .unwrap();
    assert!(last < finished);
    assert!(
        p.would_block > 0 && p.writable > 0,
        "the producer was held back and let go again ({} / {})",
        p.would_block,
        p.writable
    );
    assert!(p.max_unsent <= MAX_UNSENT_PER_CALL + 1024 + 5);
    assert_eq!(pair.server.in_flight(), 0);
}

/// A client that stops reading: the producer is refused once the client's stream window and
/// the call's unsent budget are full, and stays refused for a minute of simulated time (the
/// connection stays open); the daemon holds no more than that for the call. Once the client
/// reads again the producer goes on, and everything arrives in order.
#[test]
fn a_reader_that_stops_reading_blocks_the_writer_within_the_budget() {
    let rpc = RpcConfig::default();
    let window = rpc.max_stream_data.get() as usize;
    let mut pair = Pair::new(Link::perfect(), rpc);
    pair.connect();
    let producer = Producer::new(u64::MAX, 512);
    let mut service = Producer::service(&producer);
    let call = start_chat(&mut pair);
    pair.clients[0].set_reading(call, false);
    pair.drive_until(&mut service, &mut |_: &Pair| {
        producer.borrow().would_block > 0
    });
    let held = producer.borrow().accepted;
    eprintln!(
        "stalled reader: {held} bytes taken (stream window {window}, unsent at most {} bytes)",
        producer.borrow().max_unsent
    );
    // What QUIC may send ahead of the reader, plus the budget and the message that crossed it.
    let bound = window + MAX_UNSENT_PER_CALL + 512 + 5;
    assert!(held <= bound, "{held} bytes taken, bound {bound}");
    assert!(
        held >= window,
        "the window filled before the writer was held back ({held} bytes)"
    );
    // A minute later nothing more has been taken, and the call is still open.
    let until = pair.now + Duration::from_secs(60);
    pair.drive_until(&mut service, &mut |p: &Pair| p.now >= until);
    {
        let p = producer.borrow();
        assert_eq!(
            p.accepted, held,
            "nothing taken while the reader is stalled"
        );
        assert_eq!(p.writable, 0);
        assert!(p.max_unsent <= MAX_UNSENT_PER_CALL + 512 + 5);
        assert!(!p.cancelled && !p.closed);
    }
    assert_eq!(pair.server.in_flight(), 1);
    assert!(pair.finished(0, call).is_none());

    // The reader comes back; the producer stops at a fixed count, and all arrives in order.
    {
        let mut p = producer.borrow_mut();
        p.total = p.next + 1_000;
    }
    pair.clients[0].set_reading(call, true);
    pair.drive_until(&mut service, &mut |p: &Pair| p.finished(0, call).is_some());
    assert_eq!(pair.finished(0, call).unwrap(), &Status::ok());
    let p = producer.borrow();
    assert!(p.writable > 0);
    let got = messages(&pair, call);
    assert_eq!(got.len() as u64, p.total);
    for (n, message) in got.iter().enumerate() {
        assert_eq!(message, &p.message(n as u64), "message {n}");
    }
}

/// Six streamed calls on one connection whose client stops reading all of them: together they
/// fill the connection's window (4 MiB) mid-message, every producer is held back, and once the
/// client reads again every call finishes (a write that used up the connection's credit must
/// still be woken when credit comes back).
#[test]
fn streams_that_share_a_connections_window_all_finish() {
    const STREAMS: usize = 12;
    const MESSAGES: u64 = 300;
    const SIZE: usize = 9_000;
    let mut pair = Pair::new(Link::perfect(), RpcConfig::default());
    pair.connect();
    let producers: Vec<_> = (0..STREAMS)
        .map(|_| Producer::new(MESSAGES, SIZE))
        .collect();
    let mut services: Vec<_> = producers.iter().map(Producer::service).collect();
    let mut next_call = 0;
    let mut service = |server: &mut RpcServer, event: &ServerEvent| {
        // Each new call goes to the next producer; later events to whichever owns the call.
        if let ServerEvent::Call(_) = event {
            next_call += 1;
            return services[next_call - 1](server, event);
        }
        for service in services.iter_mut() {
            service(server, event);
        }
    };
    let calls: Vec<_> = (0..STREAMS)
        .map(|_| {
            let call = start_chat(&mut pair);
            pair.clients[0].set_reading(call, false);
            call
        })
        .collect();
    pair.drive_until(&mut service, &mut |_: &Pair| {
        producers.iter().all(|p| p.borrow().would_block > 0)
    });
    let taken: usize = producers.iter().map(|p| p.borrow().accepted).sum();
    assert!(
        taken <= 4 * 1024 * 1024 + STREAMS * (MAX_UNSENT_PER_CALL + SIZE + 5),
        "{taken} bytes taken with no reader"
    );
    for &call in &calls {
        pair.clients[0].set_reading(call, true);
    }
    pair.drive_until(&mut service, &mut |p: &Pair| {
        calls.iter().all(|&c| p.finished(0, c).is_some())
    });
    for (&call, producer) in calls.iter().zip(&producers) {
        assert_eq!(pair.finished(0, call).unwrap(), &Status::ok());
        let got = messages(&pair, call);
        assert_eq!(got.len() as u64, MESSAGES);
        assert_eq!(got[got.len() - 1], producer.borrow().message(MESSAGES - 1));
    }
}

/// The client resets a call mid-stream: the service hears `Cancelled`, the next send says
/// `Closed`, and the call's stream is free again.
#[test]
fn a_client_reset_mid_stream_stops_the_producer() {
    let mut pair = Pair::new(Link::lossy(), RpcConfig::default());
    pair.connect();
    let producer = Producer::new(u64::MAX, 256);
    let mut service = Producer::service(&producer);
    let call = start_chat(&mut pair);
    pair.drive_until(&mut service, &mut |p: &Pair| messages(p, call).len() >= 50);
    pair.clients[0].cancel(call);
    pair.drive_until(&mut service, &mut |_: &Pair| producer.borrow().cancelled);
    assert_eq!(pair.server.in_flight(), 0);
    let id = producer.borrow().call.unwrap();
    assert_eq!(
        pair.server.send_message(id, |out| out.push(b'x')),
        Sent::Closed
    );
    assert_eq!(
        pair.server.unsent(id),
        0,
        "nothing kept for a cancelled call"
    );
    // No trailer reaches a client that cancelled.
    assert!(pair.finished(0, call).is_none());
}

/// The server resets a call mid-stream: the client sees it end CANCELLED, after the messages
/// sent before the reset.
#[test]
fn a_server_reset_mid_stream_ends_the_call_cancelled() {
    let mut pair = Pair::new(Link::perfect(), RpcConfig::default());
    pair.connect();
    let producer = Producer::new(20, 64);
    let mut service = {
        let producer = producer.clone();
        let mut inner = Producer::service(&producer);
        move |server: &mut RpcServer, event: &ServerEvent| {
            if let ServerEvent::Call(call) = event {
                // Sends all but the end: 20 messages, then resets instead of a trailer.
                producer.borrow_mut().total = u64::MAX;
                producer.borrow_mut().call = Some(call.id);
                for n in 0..20u64 {
                    let message = producer.borrow().message(n);
                    let sent = server.send_message(call.id, |out| out.extend_from_slice(&message));
                    assert_eq!(sent, Sent::Sent);
                }
                assert!(server.reset(call.id));
                assert!(!server.reset(call.id), "a reset call is over");
                return;
            }
            inner(server, event);
        }
    };
    let call = start_chat(&mut pair);
    pair.drive_until(&mut service, &mut |p: &Pair| p.finished(0, call).is_some());
    let status = pair.finished(0, call).unwrap();
    assert_eq!(status.code, Code::Cancelled, "{status}");
    assert_eq!(pair.server.in_flight(), 0);
}

/// The start of a second frame (its header promising 4 MiB that never come) on a call that
/// takes one message is refused at once, not held until it is whole.
#[test]
fn the_start_of_a_second_frame_on_a_chat_is_refused_at_once() {
    let mut pair = Pair::new(Link::perfect(), RpcConfig::default());
    pair.connect();
    let call = pair.clients[0]
        .start_call(
            &head("reaper.Chat/send", Encoding::Json, TOKEN),
            br#"{"messages":[]}"#,
            false,
        )
        .unwrap();
    pair.drive_until(&mut no_service, &mut |p: &Pair| p.server.in_flight() == 1);
    let mut partial = Vec::new();
    reaper_core::wire::encode_message_header(4 << 20, &mut partial);
    partial.extend_from_slice(&[b'x'; 100]);
    pair.clients[0].send_raw(call, &partial);
    pair.drive_until(&mut no_service, &mut |p: &Pair| {
        p.finished(0, call).is_some()
    });
    let status = pair.finished(0, call).unwrap();
    assert_eq!(status.code, Code::InvalidArgument, "{status}");
    assert_eq!(pair.server.buffered_request_bytes(), 0, "nothing held");
    assert_eq!(pair.server.in_flight(), 0);
}

/// A second message on a call whose client does not stream is refused: the service hears the
/// call cancelled, and the client gets INVALID_ARGUMENT saying to send FIN.
#[test]
fn a_second_message_on_a_server_streaming_call_is_refused() {
    let mut pair = Pair::new(Link::perfect(), RpcConfig::default());
    pair.connect();
    let call = pair.clients[0]
        .start_call(
            &head("reaper.Chat/send", Encoding::Json, TOKEN),
            br#"{"messages":[]}"#,
            false,
        )
        .unwrap();
    pair.drive_until(&mut no_service, &mut |p: &Pair| p.server.in_flight() == 1);
    pair.clients[0].send_message(call, br#"{"messages":[]}"#, true);
    pair.drive_until(&mut no_service, &mut |p: &Pair| {
        p.finished(0, call).is_some()
    });
    let status = pair.finished(0, call).unwrap();
    assert_eq!(status.code, Code::InvalidArgument, "{status}");
    assert!(
        status.message.contains("exactly one request message"),
        "{status}"
    );
    // The service hears it once, with the status the client got and the call to stop.
    assert!(pair.server_log.iter().any(|e| matches!(
        e,
        ServerEvent::Rejected {
            started: Some(_),
            ..
        }
    )));
    assert!(!pair
        .server_log
        .iter()
        .any(|e| matches!(e, ServerEvent::Cancelled { .. })));
    assert_eq!(pair.server.in_flight(), 0);
}

/// Packets that each earn an answer from no connection (here: version negotiation for a
/// version nobody speaks) cannot grow the server's queue of such answers without bound while
/// the loop has not sent them: at most 256 wait, the rest are dropped (the peer's next packet
/// earns its answer again).
#[test]
fn a_flood_of_stateless_answers_is_bounded() {
    let pair = Pair::new(Link::perfect(), RpcConfig::default());
    let mut server = pair.server;
    let now = pair.now;
    // A long header with version 0x0a0a0a0a (reserved for forcing version negotiation),
    // 8-byte connection ids, padded to 1200 bytes as an Initial must be.
    let mut packet = vec![0xc0, 0x0a, 0x0a, 0x0a, 0x0a, 8];
    packet.extend_from_slice(&[1; 8]);
    packet.push(8);
    packet.extend_from_slice(&[2; 8]);
    packet.resize(1200, 0);
    for i in 0..2_000 {
        server.handle_datagram(
            now,
            client_addr(i % 50),
            None,
            None,
            BytesMut::from(&packet[..]),
        );
    }
    let mut answers = 0;
    let mut out = Vec::new();
    while server.poll_transmit(now, 1, &mut out).is_some() {
        answers += 1;
        out.clear();
        assert!(answers <= 2_000, "poll_transmit never ends");
    }
    assert!(answers > 0, "version negotiation was answered");
    assert_eq!(answers, 256, "answers queued");
}

// ---- 0-RTT ----

/// Answers every call with OK and no message, whatever its method.
fn answer_everything(server: &mut RpcServer, event: &ServerEvent) {
    if let ServerEvent::Call(call) = event {
        server.finish(call.id, &Status::ok());
    }
}

fn feedback_request() -> Vec<u8> {
    let mut out = Vec::new();
    CompletionFeedback {
        event: FeedbackEvent::Accepted,
        provider: "offline".into(),
        accepted_chars: 3,
    }
    .encode(Encoding::Json, &mut out)
    .unwrap();
    out
}

/// Starts a JSON `Completion.feedback` call from `client` (not replay-safe).
fn start_feedback(pair: &mut Pair, client: usize) -> Option<ClientCallId> {
    pair.clients[client].start_call(
        &head("reaper.Completion/feedback", Encoding::Json, TOKEN),
        &feedback_request(),
        true,
    )
}

/// Starts a JSON `Health.check` call from `client` (replay-safe).
fn start_health(pair: &mut Pair, client: usize) -> Option<ClientCallId> {
    pair.clients[client].start_call(
        &head("reaper.Health/check", Encoding::Json, TOKEN),
        &health_request(Encoding::Json),
        true,
    )
}

/// A client that has made one call on a configuration shared with the client it returns the
/// configuration for: the daemon's sessions are in it, so the next client resumes with 0-RTT.
fn resumable_config(pair: &mut Pair) -> quinn_proto::ClientConfig {
    let config = transport::client_config(pair.cert.clone(), &pair.rpc, true).unwrap();
    let first = pair.add_client_with(config.clone());
    pair.connect();
    assert!(pair.health_check(first, &mut answer_everything).is_ok());
    config
}

/// Where each server event about `client`'s connection came, in order: "connected",
/// or the method of a call.
fn timeline(pair: &Pair, client: usize) -> Vec<String> {
    let mut conn = None;
    let mut seen = Vec::new();
    // Calls can come before Connected, so the connection is learnt from either.
    for event in &pair.server_log {
        match event {
            ServerEvent::Connected {
                conn: c,
                remote,
                early_data,
            } if *remote == client_addr(client) => {
                conn = Some(*c);
                seen.push(format!("connected early_data={early_data}"));
            }
            ServerEvent::Call(call) if conn.is_none_or(|c| c == call.id.connection()) => {
                seen.push(call.method.path().to_owned());
            }
            _ => {}
        }
    }
    seen
}

/// Issue 14: a client that resumes a session sends its first calls with its first packet.
/// A replay-safe call is served before the handshake completes; one that is not (feedback
/// counts what the editor did) is held until it has.
#[test]
fn a_resumed_client_is_served_from_0rtt_before_its_handshake_completes() {
    let mut pair = Pair::new(Link::perfect(), RpcConfig::default());
    let config = resumable_config(&mut pair);
    let log_from = pair.server_log.len();
    let second = pair.add_client_with(config);
    // Nothing has been sent yet: these calls can only go as 0-RTT data.
    let feedback = start_feedback(&mut pair, second)
        .expect("a resumed session allows calls before the handshake");
    let health = start_health(&mut pair, second).unwrap();
    pair.drive_until(&mut answer_everything, &mut |p: &Pair| {
        p.finished(second, health).is_some() && p.finished(second, feedback).is_some()
    });
    assert!(pair.finished(second, health).unwrap().is_ok());
    assert!(pair.finished(second, feedback).unwrap().is_ok());
    pair.server_log.drain(..log_from);
    assert_eq!(
        timeline(&pair, second),
        [
            "reaper.Health/check",
            "connected early_data=true",
            "reaper.Completion/feedback"
        ]
    );
}

/// A client that sent its first flight and died (or a first flight replayed by someone who
/// cannot finish the handshake): the replay-safe call is served, the other never reaches a
/// service, and the driver hears the connection end.
#[test]
fn a_call_that_is_not_replay_safe_waits_for_a_handshake_that_never_completes() {
    let mut pair = Pair::new(Link::perfect(), RpcConfig::default());
    let config = resumable_config(&mut pair);
    let log_from = pair.server_log.len();
    let second = pair.add_client_with(config);
    start_feedback(&mut pair, second).unwrap();
    start_health(&mut pair, second).unwrap();
    pair.flush(&mut no_service);
    // The first flight is on its way; nothing more from this client arrives.
    pair.dead.push(second);
    let start = pair.now;
    pair.drive_until(&mut answer_everything, &mut |p: &Pair| {
        p.server.handshake_count() == 0 && p.now > start + Duration::from_secs(1)
    });
    pair.flush(&mut answer_everything);
    let log = &pair.server_log[log_from..];
    let early = log
        .iter()
        .find_map(|e| match e {
            ServerEvent::Call(call) => Some(call),
            _ => None,
        })
        .expect("the Health call was served from 0-RTT data");
    assert_eq!(early.method, Method::HealthCheck);
    let conn = early.id.connection();
    assert!(
        !log.iter()
            .any(|e| matches!(e, ServerEvent::Call(c) if c.method == Method::CompletionFeedback)),
        "a call that is not replay-safe was served without a handshake"
    );
    assert!(!log
        .iter()
        .any(|e| matches!(e, ServerEvent::Connected { conn: c, .. } if *c == conn)));
    assert!(
        log.iter()
            .any(|e| matches!(e, ServerEvent::Disconnected { conn: c, .. } if *c == conn)),
        "the driver was not told that the connection it served a call on ended: {log:?}"
    );
}

/// The daemon lets a session carry early data once: a client's first flight, captured and
/// sent again after the client is gone, gets a handshake without its 0-RTT data, so no call
/// in it runs a second time.
#[test]
fn a_replayed_first_flight_is_served_nothing() {
    let mut pair = Pair::new(Link::perfect(), RpcConfig::default());
    let config = resumable_config(&mut pair);
    let second = pair.add_client_with(config);
    let health = start_health(&mut pair, second).unwrap();
    pair.flush(&mut no_service);
    let from = client_addr(second);
    let first_flight: Vec<Vec<u8>> = pair
        .in_flight
        .iter()
        .filter(|(_, to, sender, _)| to.is_none() && *sender == from)
        .map(|(_, _, _, bytes)| bytes.clone())
        .collect();
    assert!(!first_flight.is_empty());
    let connected = |p: &Pair| {
        p.server_log.iter().find_map(|e| match e {
            ServerEvent::Connected { conn, remote, .. } if *remote == from => Some(*conn),
            _ => None,
        })
    };
    pair.drive_until(&mut answer_everything, &mut |p: &Pair| {
        p.finished(second, health).is_some() && connected(p).is_some()
    });
    let served = |pair: &Pair| {
        pair.server_log
            .iter()
            .filter(|e| matches!(e, ServerEvent::Call(c) if c.method == Method::HealthCheck))
            .count()
    };
    let before = served(&pair);
    let conn = connected(&pair).unwrap();
    // The client goes away; once the daemon has forgotten its connection, the capture is sent
    // again from the same address.
    pair.dead.push(second);
    pair.drive_until(&mut answer_everything, &mut |p: &Pair| {
        p.server_log
            .iter()
            .any(|e| matches!(e, ServerEvent::Disconnected { conn: c, .. } if *c == conn))
    });
    let lost_at = pair.now;
    pair.drive_until(&mut answer_everything, &mut |p: &Pair| {
        p.now > lost_at + Duration::from_secs(2)
    });
    let log_from = pair.server_log.len();
    let now = pair.now;
    for bytes in first_flight {
        pair.server
            .handle_datagram(now, from, None, None, BytesMut::from(&bytes[..]));
    }
    assert_eq!(
        pair.server.handshake_count(),
        1,
        "the replay did not reach the daemon as a new handshake"
    );
    pair.drive_until(&mut answer_everything, &mut |p: &Pair| {
        p.now > now + Duration::from_secs(12)
    });
    assert_eq!(served(&pair), before, "a replayed 0-RTT call was served");
    assert!(
        !pair.server_log[log_from..]
            .iter()
            .any(|e| matches!(e, ServerEvent::Call(_) | ServerEvent::Connected { .. })),
        "the replay was served: {:?}",
        &pair.server_log[log_from..]
    );
    assert_eq!(pair.server.handshake_count(), 0);
}

/// A call held for the handshake is not started once a drain has begun meanwhile: it is
/// refused as a new call would be.
#[test]
fn a_held_call_is_refused_if_the_daemon_drains_before_the_handshake_completes() {
    let mut pair = Pair::new(Link::perfect(), RpcConfig::default());
    let config = resumable_config(&mut pair);
    let second = pair.add_client_with(config);
    let feedback = start_feedback(&mut pair, second).unwrap();
    // Until the daemon holds the call (its first flight has arrived), then the drain begins.
    pair.drive_until(&mut answer_everything, &mut |p: &Pair| {
        p.server.handshake_count() == 1
    });
    pair.server.begin_drain();
    pair.drive_until(&mut answer_everything, &mut |p: &Pair| {
        p.finished(second, feedback).is_some()
    });
    let status = pair.finished(second, feedback).unwrap();
    assert_eq!(status.code, Code::Unavailable, "{status:?}");
    assert!(!pair
        .server_log
        .iter()
        .any(|e| matches!(e, ServerEvent::Call(c) if c.method == Method::CompletionFeedback)));
}

/// A connection may have `UNAUTHENTICATED_STREAMS` calls open until it has completed its
/// handshake and presented the token, then `[rpc] max_concurrent_calls`: the daemon sets up
/// no state for 1,024 streams of a connection that never shows the token, nor before a
/// resumed connection's first answer.
#[test]
fn a_connection_may_open_max_concurrent_calls_once_it_has_presented_the_token() {
    let rpc = RpcConfig::default();
    let limit = rpc.max_concurrent_calls.get() as usize;
    let mut pair = Pair::new(Link::perfect(), rpc);
    pair.connect();
    let mut held = Vec::new();
    while let Some(call) = pair.clients[0].start_raw_call(&[], false) {
        held.push(call);
        assert!(held.len() <= limit, "no limit at all");
    }
    assert_eq!(held.len(), transport::UNAUTHENTICATED_STREAMS as usize);
    // One stream given back (the daemon learns of the streams below it and counts them open),
    // then a call with the token on it.
    pair.clients[0].cancel(held.pop().unwrap());
    let mut health = None;
    pair.drive_until(&mut no_service, &mut |p: &Pair| p.in_flight.is_empty());
    for _ in 0..1_000 {
        health = pair.clients[0].start_call(
            &head("reaper.Health/check", Encoding::Json, TOKEN),
            &health_request(Encoding::Json),
            true,
        );
        if health.is_some() {
            break;
        }
        assert!(pair.step(&mut no_service), "no stream came back");
    }
    let health = health.expect("a stream for the call with the token");
    let mut service = health_service();
    pair.drive_until(&mut service, &mut |p: &Pair| {
        p.finished(0, health).is_some()
    });
    assert!(pair.finished(0, health).unwrap().is_ok());
    let mut more = 0;
    while pair.clients[0].start_raw_call(&[], false).is_some() {
        more += 1;
        assert!(more <= 2 * limit, "no limit after the token");
    }
    // QUIC's credit counts streams as they end, so the exact figure depends on which the
    // daemon has seen end; at least the configured limit is open now, and not much more.
    let open = held.len() + more;
    let unauthenticated = transport::UNAUTHENTICATED_STREAMS as usize;
    assert!(
        (limit..=limit + unauthenticated).contains(&open),
        "{open} streams open, limit {limit}"
    );
}
