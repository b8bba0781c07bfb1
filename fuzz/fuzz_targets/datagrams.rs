//! The whole server state machine (QUIC, TLS, streams, frames, auth) fed arbitrary datagrams
//! from a few addresses, with timers fired between them: it must never panic.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use reaper_core::config::RpcConfig;
use reaper_core::rpc::{RpcServer, ServerSettings};
use reaper_core::{transport, Token};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

fn identity() -> &'static (Vec<u8>, Vec<u8>) {
    static ID: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    ID.get_or_init(|| {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (cert.cert.der().to_vec(), cert.signing_key.serialize_der())
    })
}

fuzz_target!(|data: &[u8]| {
    let (cert, key) = identity();
    let rpc = RpcConfig::default();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.clone()));
    let config = transport::server_config(cert.clone().into(), key, &rpc, true).unwrap();
    let mut server = RpcServer::new(
        transport::endpoint_config(true),
        config,
        ServerSettings {
            token: Token::from_bytes([7; 32]),
            max_connections: 4,
            max_handshakes: 4,
            handshake_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            max_message_size: 1 << 16,
            max_buffered_requests: 1 << 20,
            connection_window: transport::connection_window(&rpc),
            ..ServerSettings::from_config(Token::from_bytes([7; 32]), &rpc)
        },
    );
    let mut now = Instant::now();
    // Datagrams are length-prefixed (one byte) and each comes from one of four addresses.
    let mut rest = data;
    while let Some((&head, tail)) = rest.split_first() {
        let len = (head as usize & 0x3f) * 24;
        let from = head >> 6;
        let (datagram, tail) = tail.split_at(len.min(tail.len()));
        rest = tail;
        let remote = format!("127.0.0.1:{}", 40_000 + from as u16)
            .parse()
            .unwrap();
        server.handle_datagram(now, remote, None, None, BytesMut::from(datagram));
        while server.poll_event().is_some() {}
        let mut out = Vec::new();
        while server.poll_transmit(now, 8, &mut out).is_some() {
            out.clear();
        }
        now += Duration::from_millis(50);
        server.handle_timeout(now);
    }
});
