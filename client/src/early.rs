//! Resumed connections and their 0-RTT data: where sessions are kept between connections, and
//! how a connection that sent calls before its handshake learns whether that handshake ends.
//!
//! A connection that resumes a session is handed to calls at once, before the daemon has
//! answered anything; only replay-safe calls ([`reaper_core::Method::replay_safe`]) may go on
//! it then. Its [`Handshake`] resolves when the handshake is over: `Ok` once the connection is
//! usable (whether or not the daemon took the early data; calls it did not take fail with
//! `ZeroRttRejected` and are sent again), or the reason it failed, after which the connection
//! is closed and the next one is made the usual way (1-RTT, with backoff and the probe for a
//! dead daemon).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::future::{BoxFuture, Shared};
use futures::FutureExt;
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{VarInt, ZeroRttAccepted};
use reaper_core::transport::{self, Resumption, TransportError};
use rustls::pki_types::CertificateDer;

use crate::client::{nothing_listens, AttemptFailed, NOTHING_LISTENS};

/// Daemons whose sessions a process keeps, at most (the ones used last; a configuration and
/// its few sessions are a few KiB).
const DAEMONS_KEPT: usize = 64;

/// One daemon's certificate, and the TLS configuration its clients share.
type PerDaemon = (Vec<u8>, Arc<QuicClientConfig>);

/// The TLS configuration for the daemon whose certificate is `cert`. With `resume`, one per
/// daemon shared by every client in this process, so a new client resumes a session an
/// earlier one was given (rustls resumes a session only with the configuration that made it);
/// without, a configuration of its own that keeps no sessions.
pub(crate) fn crypto(
    cert: &CertificateDer<'static>,
    resume: bool,
) -> Result<Arc<QuicClientConfig>, TransportError> {
    if !resume {
        return transport::client_crypto(cert.clone(), Resumption::disabled());
    }
    static SHARED: OnceLock<Mutex<Vec<PerDaemon>>> = OnceLock::new();
    let mut shared = SHARED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // Keyed by the pinned certificate, not the name: every daemon calls itself `localhost`.
    if let Some(at) = shared.iter().position(|(der, _)| der == cert.as_ref()) {
        // The one used last goes to the back, so the one dropped is the least recently used.
        let used = shared.remove(at);
        let crypto = used.1.clone();
        shared.push(used);
        return Ok(crypto);
    }
    if shared.len() >= DAEMONS_KEPT {
        shared.remove(0);
    }
    // rustls' default store: sessions for up to 256 server names, a few for each.
    let crypto = transport::client_crypto(cert.clone(), Resumption::default())?;
    shared.push((cert.to_vec(), crypto.clone()));
    Ok(crypto)
}

/// How long a resumed connection waits for an answer before it asks the kernel whether
/// anything listens at all: 1 ms, twice what a reconnect and its first answer take on
/// loopback (`reaper-bench`'s `reconnect_0rtt`).
const PROBE_AFTER: Duration = Duration::from_millis(1);

/// How a resumed connection's handshake ended, for the calls that went before it did.
pub(crate) type Handshake = Shared<BoxFuture<'static, Result<(), AttemptFailed>>>;

/// Watches the handshake of `conn`, a connection that went ahead with 0-RTT data: it fails if
/// nothing answers within `timeout` or nothing listens at all, and then closes the connection
/// and turns 0-RTT off (`early_ok`) so that the next attempt is a plain one. It runs while a
/// call waits on it, which every call on the connection does until it has resolved.
pub(crate) fn watch(
    conn: quinn::Connection,
    accepted: ZeroRttAccepted,
    timeout: Duration,
    early_ok: Arc<AtomicBool>,
) -> Handshake {
    let addr = conn.remote_address();
    let deadline = tokio::time::Instant::now() + timeout;
    async move {
        let failure = tokio::select! {
            biased;
            // Resolves when the handshake completes (true or false: the daemon took the early
            // data or not) or the connection fails before it could.
            _ = accepted => match conn.close_reason() {
                None => return Ok(()),
                Some(reason) => AttemptFailed::other(reason.to_string()),
            },
            () = tokio::time::sleep_until(deadline) => AttemptFailed::other(format!(
                "no answer within {} s",
                timeout.as_secs()
            )),
            // Not at once: the probe's socket and datagram would sit on the path of every
            // resumed connection's first call, which a live daemon answers well before this.
            () = async {
                tokio::time::sleep(PROBE_AFTER).await;
                nothing_listens(addr).await
            } => AttemptFailed {
                refused: true,
                reason: NOTHING_LISTENS.to_owned(),
            },
        };
        early_ok.store(false, Ordering::Relaxed);
        conn.close(VarInt::from_u32(0), b"handshake did not complete");
        Err(failure)
    }
    .boxed()
    .shared()
}
