//! Criterion suites for the protocol: framing, request decoding in both encodings, and a whole
//! call through two in-memory core endpoints (QUIC, TLS, framing — no sockets, no kernel), which
//! isolates our protocol cost from the kernel's.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion};
use reaper_core::config::RpcConfig;
use reaper_core::encoding::access_archived;
use reaper_core::rpc::{ClientEvent, RpcClient, RpcServer, ServerEvent, ServerSettings};
use reaper_core::schema::{CompletionRequest, HealthRequest};
use reaper_core::wire::{self, Frame, FrameDecoder, RequestHead, Side};
use reaper_core::{transport, Encoding, Status, Token, WireMessage};

fn completion_request() -> CompletionRequest {
    CompletionRequest {
        prefix: "fn main() {\n    let x = 1;\n".repeat(70),
        suffix: "\n}\n".into(),
        language: "rust".into(),
        file_path: Some("/home/user/project/src/main.rs".into()),
        context: None,
    }
}

fn head() -> RequestHead {
    RequestHead {
        method: Bytes::from_static(b"reaper.Completion/complete"),
        encoding: Encoding::Rkyv,
        deadline_ms: 100,
        token: Token::from_bytes([3; 32]),
    }
}

fn bench_framing(c: &mut Criterion) {
    let mut message = Vec::new();
    completion_request()
        .encode(Encoding::Rkyv, &mut message)
        .unwrap();
    let mut out = Vec::with_capacity(4096);
    c.bench_function("frame_encode_head_and_message_2k", |b| {
        b.iter(|| {
            out.clear();
            head().encode(&mut out);
            wire::encode_message(black_box(&message), &mut out);
            black_box(out.len())
        })
    });
    let mut bytes = Vec::new();
    head().encode(&mut bytes);
    wire::encode_message(&message, &mut bytes);
    let bytes = Bytes::from(bytes);
    c.bench_function("frame_decode_head_and_message_2k", |b| {
        b.iter(|| {
            let mut decoder = FrameDecoder::new(Side::Request, 1 << 20);
            decoder.push(bytes.clone());
            let mut n = 0;
            while let Ok(Some(frame)) = decoder.next_frame() {
                if let Frame::Message(m) = frame {
                    n += m.len();
                }
            }
            black_box(n)
        })
    });
}

fn bench_decoding(c: &mut Criterion) {
    let mut archived = Vec::new();
    completion_request()
        .encode(Encoding::Rkyv, &mut archived)
        .unwrap();
    let mut json = Vec::new();
    completion_request()
        .encode(Encoding::Json, &mut json)
        .unwrap();
    c.bench_function("rkyv_access_validated_completion_request", |b| {
        b.iter(|| {
            let r = access_archived::<CompletionRequest>(black_box(&archived)).unwrap();
            black_box(r.prefix.len())
        })
    });
    c.bench_function("serde_json_decode_completion_request", |b| {
        b.iter(|| {
            let r = CompletionRequest::decode(Encoding::Json, black_box(&json)).unwrap();
            black_box(r.prefix.len())
        })
    });
}

/// One Health call through a client and a server state machine wired in memory.
fn bench_in_memory_call(c: &mut Criterion) {
    let rpc = RpcConfig::default();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let server_addr: SocketAddr = "127.0.0.1:4433".parse().unwrap();
    let client_addr: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let token = Token::from_bytes([9; 32]);
    let mut server = RpcServer::new(
        transport::endpoint_config(true),
        transport::server_config(cert_der.clone(), key, &rpc, true).unwrap(),
        ServerSettings {
            token: token.clone(),
            max_connections: 10,
            max_handshakes: 64,
            handshake_timeout: std::time::Duration::from_secs(10),
            request_timeout: std::time::Duration::from_secs(10),
            max_message_size: 1 << 20,
            max_buffered_requests: 64 << 20,
            connection_window: transport::connection_window(&rpc),
            ..ServerSettings::from_config(Token::from_bytes([9; 32]), &rpc)
        },
    );
    let mut client = RpcClient::connect(
        Instant::now(),
        transport::endpoint_config(true),
        transport::client_config(cert_der, &rpc, true).unwrap(),
        server_addr,
        1 << 20,
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut request = Vec::new();
    HealthRequest {}
        .encode(Encoding::Rkyv, &mut request)
        .unwrap();
    let head = RequestHead {
        method: Bytes::from_static(b"reaper.Health/check"),
        encoding: Encoding::Rkyv,
        deadline_ms: 0,
        token,
    };
    let response = [7u8; 128];
    // Moves datagrams both ways until the client has an answer.
    let mut exchange = |client: &mut RpcClient, server: &mut RpcServer, until_done: bool| {
        for _ in 0..100 {
            let now = Instant::now();
            while let Some(t) = client.poll_transmit(now, &mut buf) {
                server.handle_datagram(
                    now,
                    client_addr,
                    None,
                    None,
                    BytesMut::from(&buf[..t.size]),
                );
            }
            while let Some(event) = server.poll_event() {
                if let ServerEvent::Call(call) = event {
                    server.respond(call.id, |out| {
                        out.extend_from_slice(&response);
                        Ok::<(), Status>(())
                    });
                }
            }
            while let Some(t) = server.poll_transmit(now, 1, &mut buf) {
                client.handle_datagram(now, server_addr, BytesMut::from(&buf[..t.size]));
            }
            let mut done = false;
            while let Some(event) = client.poll_event() {
                done |= matches!(event, ClientEvent::Finished { .. } | ClientEvent::Connected);
            }
            if done && until_done {
                return;
            }
        }
    };
    exchange(&mut client, &mut server, true);
    c.bench_function("in_memory_health_call_128b_response", |b| {
        b.iter(|| {
            client.start_call(&head, &request, true).unwrap();
            exchange(&mut client, &mut server, true);
        })
    });
}

criterion_group!(benches, bench_framing, bench_decoding, bench_in_memory_call);
criterion_main!(benches);
