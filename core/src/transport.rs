//! QUIC and TLS configuration for both ends: ALPN, TLS 1.3 only, the pinned certificate, and the
//! `[rpc]` limits mapped onto QUIC's transport parameters.
//!
//! On loopback the datagram size is raised to [`LOOPBACK_MTU`] from QUIC's conservative 1200: a
//! 2 KiB request then travels in one datagram instead of two, which measured ~33 → ~18 µs p50
//! per call on these machines (`../shared/ARCHITECTURE.md`). Path MTU discovery stays on either
//! way, so a path that drops datagrams that large falls back to 1200.

use std::sync::Arc;

use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn_proto::{
    AckFrequencyConfig, EndpointConfig, IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
pub use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::RpcConfig;

/// The one ALPN protocol reaper speaks.
pub const ALPN: &[u8] = b"reaper/1";
/// Server name clients put in the TLS handshake (the pin, not the name, is what is checked).
pub const SERVER_NAME: &str = "localhost";
/// How often a client pings an idle connection.
pub const CLIENT_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a client waits without hearing from the daemon before it calls the connection dead.
pub const CLIENT_DEAD_AFTER: std::time::Duration = std::time::Duration::from_secs(6);
/// Datagram size on loopback, from the first packet on, and the most path MTU discovery may
/// reach there.
///
/// Not more: a GSO send is one UDP datagram of at most 65,507 bytes cut into segments, and
/// quinn batches up to 10 segments (`MAX_TRANSMIT_SEGMENTS` in quinn 0.11; recheck when
/// upgrading): above 6,550 bytes a full batch fails with EMSGSIZE and quinn counts all of it as
/// lost. With the bound at 16 KiB, 64 calls in flight lost ~150 packets a run that way, each
/// loss a congestion event and some a ~100 ms stall.
///
/// From the first packet: starting lower (4096 until issue 14) had every new connection probe
/// its way up, a few probes of up to 6,500 bytes of padding that quinn-proto parses one byte at
/// a time, ~50 µs of a 0-RTT reconnect's ~400 and ~110 µs of a full handshake's ~700
/// (`reaper-bench`'s `reconnect_0rtt` and `connect_first_call`).
pub const LOOPBACK_MTU: u16 = 6_500;

/// Sessions the daemon remembers for resumption, at most (each a few hundred bytes; the oldest
/// goes first). Each connection is given two (rustls' default), so this covers the last 128
/// connections, more than `[rpc] max_connections` allows at once by default.
pub const SESSIONS_KEPT: usize = 256;

/// Why TLS or QUIC could not be configured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// rustls refused the certificate, key or settings.
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    /// quinn refused the TLS configuration (e.g. no TLS 1.3 cipher suite).
    #[error("QUIC crypto configuration failed: {0}")]
    Quic(String),
}

fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    // AES-128-GCM with SHA-256 first (ring's default puts AES-256 with SHA-384 first): the
    // handshake's key schedule is a few dozen HMACs, and SHA-256 runs on the CPU's SHA
    // extensions where SHA-384 cannot (`reconnect_0rtt` 388 → 348 µs p50 across CPUs). The
    // server follows the client's order, and both are reaper's.
    use rustls::crypto::ring::cipher_suite;
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// Endpoint settings shared by both ends; `loopback` allows large datagrams.
pub fn endpoint_config(loopback: bool) -> EndpointConfig {
    let mut config = EndpointConfig::default();
    if loopback {
        // 65527 is the largest UDP payload over IPv4; only the upper bound is raised here, the
        // size actually used comes from the transport's MTU settings.
        config
            .max_udp_payload_size(65_527)
            .expect("65527 is within QUIC's allowed range");
    }
    config
}

/// What a connection that has not presented the token may have in flight: stream data the
/// daemon has received but cannot read yet (sent past a gap, the token withheld), all streams
/// together. Enough for a call's head and a typical request in the first flight; raised to
/// [`connection_window`] by the first call that presents the token. Without it, 8 connections
/// that never sent the start of their streams held 411 MB of the daemon's memory (issue 13).
pub const UNAUTHENTICATED_WINDOW: u32 = 64 * 1024;

/// Calls a connection may have open at once until it has both completed its handshake and
/// presented the token; then `[rpc] max_concurrent_calls`. quinn-proto sets up the state of
/// every stream the peer may open as soon as the limit allows it: at 1,024 that was ~60 µs of
/// every new connection on the daemon, paid before its first answer (`reconnect_0rtt`
/// 404–411 → 350–364 µs p50 on one CPU), and paid as well for connections that never present
/// the token. Raising the limit waits for the handshake too so that a 0-RTT reconnect's first
/// answer goes out first.
pub const UNAUTHENTICATED_STREAMS: u32 = 64;

/// What an authenticated connection may have in flight across all its calls: 4 ×
/// `[rpc] max_stream_data`. The daemon reads each stream as it arrives (and counts what it
/// holds against `max_buffered_requests`); this bounds what QUIC holds before that, such as
/// data past a gap.
pub fn connection_window(rpc: &RpcConfig) -> VarInt {
    VarInt::from_u64(4 * rpc.max_stream_data.get() as u64).unwrap_or(VarInt::MAX)
}

/// Transport parameters from `[rpc]`.
pub fn transport_config(rpc: &RpcConfig, loopback: bool) -> TransportConfig {
    let mut transport = TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(rpc.max_concurrent_calls.get()))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(rpc.max_stream_data.get()))
        .receive_window(connection_window(rpc))
        .max_idle_timeout(rpc.idle_timeout().map(|timeout| {
            // Durations beyond QUIC's 2^62 ms bound are clamped rather than refused.
            IdleTimeout::try_from(timeout).unwrap_or(VarInt::MAX.into())
        }));
    // quinn-proto skips a packet number now and then (a defence against optimistic ACKs), and a
    // receiver following RFC 9000 takes the gap for reordering and sends an ACK of its own
    // at once: one extra datagram every few hundred calls (1,004 datagrams out for 1,000
    // sequential calls). Asking the peer, through the ACK frequency extension, to act only on
    // gaps that could make the sender declare a loss (reordering threshold 2, with loss
    // declared after 3 packets) leaves that ACK to ride on the next request.
    transport.ack_frequency_config(Some(AckFrequencyConfig::default()));
    if loopback {
        let mut mtu = MtuDiscoveryConfig::default();
        mtu.upper_bound(LOOPBACK_MTU);
        transport
            .initial_mtu(LOOPBACK_MTU)
            .mtu_discovery_config(Some(mtu));
    }
    transport
}

/// Server side: TLS 1.3 only, ALPN `reaper/1`, the given certificate.
pub fn server_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    rpc: &RpcConfig,
    loopback: bool,
) -> Result<quinn_proto::ServerConfig, TransportError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // 0-RTT: a client resuming a session may send its first calls with its first packet.
    // Sessions are kept in the daemon's memory (not in encrypted tickets), and rustls takes a
    // session out of the store when a client resumes it, so each one can carry early data
    // once: a captured first flight replayed to this daemon finds its session gone and gets
    // a full handshake without its early data. Which calls may be served early at all is
    // decided per method (`Method::replay_safe`); see docs/protocol.md, "0-RTT".
    tls.max_early_data_size = u32::MAX; // QUIC allows only 0 or this
    tls.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSIONS_KEPT);
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|e| TransportError::Quic(e.to_string()))?;
    let mut config = quinn_proto::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = transport_config(rpc, loopback);
    transport
        .receive_window(VarInt::from_u32(UNAUTHENTICATED_WINDOW))
        .max_concurrent_bidi_streams(VarInt::from_u32(
            UNAUTHENTICATED_STREAMS.min(rpc.max_concurrent_calls.get()),
        ));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Client side: trusts exactly `pinned` (the daemon's certificate from its state directory) and
/// nothing else: there is no "accept any certificate" mode. Sessions the daemon hands out are
/// kept in memory with this configuration and resumed, with 0-RTT data, by its later
/// connections.
pub fn client_config(
    pinned: CertificateDer<'static>,
    rpc: &RpcConfig,
    loopback: bool,
) -> Result<quinn_proto::ClientConfig, TransportError> {
    let crypto = client_crypto(pinned, Resumption::default())?;
    Ok(client_config_with(crypto, rpc, loopback))
}

/// The TLS half of [`client_config`], keeping sessions as `resumption` says
/// ([`Resumption::disabled`]: every connection a full handshake). Configurations made from one
/// of these resume each other's sessions; rustls resumes a session only with the certificate
/// verifier that established it, so configurations made separately never do.
pub fn client_crypto(
    pinned: CertificateDer<'static>,
    resumption: Resumption,
) -> Result<Arc<QuicClientConfig>, TransportError> {
    let provider = provider();
    let verifier = PinnedCertVerifier {
        pinned,
        provider: provider.clone(),
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // A resumed session was established with the pinned certificate, so resuming it (which
    // shows no certificate) trusts no one new.
    tls.resumption = resumption;
    tls.enable_early_data = true;
    let crypto =
        QuicClientConfig::try_from(tls).map_err(|e| TransportError::Quic(e.to_string()))?;
    Ok(Arc::new(crypto))
}

/// A client configuration with `crypto` (from [`client_crypto`]) and the transport `[rpc]`
/// asks for.
pub fn client_config_with(
    crypto: Arc<QuicClientConfig>,
    rpc: &RpcConfig,
    loopback: bool,
) -> quinn_proto::ClientConfig {
    let mut config = quinn_proto::ClientConfig::new(crypto);
    let mut transport = transport_config(rpc, loopback);
    // The daemon opens no streams: with a limit of zero, quinn-proto sets up no state for them.
    // It sets up every stream the peer may open as soon as the limit allows it, and at the
    // daemon's 1,024 that was ~60 µs of every new connection (`reconnect_0rtt` 424 → 348 µs
    // p50 across CPUs).
    transport.max_concurrent_bidi_streams(VarInt::from_u32(0));
    // A daemon that dies sends no close: without these, a client would wait out the whole
    // idle timeout (minutes) before it noticed. Pings every 2 s keep a live connection open;
    // 6 s without an answer means the daemon is gone, and the next call reconnects.
    transport
        .keep_alive_interval(Some(CLIENT_KEEP_ALIVE))
        .max_idle_timeout(Some(
            IdleTimeout::try_from(CLIENT_DEAD_AFTER).unwrap_or(VarInt::MAX.into()),
        ));
    config.transport_config(Arc::new(transport));
    config
}

/// Accepts the server's certificate only if it is byte for byte the pinned one, and still checks
/// the handshake signature, so only the holder of the pinned certificate's key gets through.
#[derive(Debug)]
struct PinnedCertVerifier {
    pinned: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.pinned.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Unreachable in practice: both configs allow TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
