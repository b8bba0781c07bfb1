//! How a client finds and trusts the daemon.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reaper_core::config::{Config, RpcConfig};
use reaper_core::paths::{self, files};
use reaper_core::{Encoding, Token};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::Error;

/// Everything needed to reach one daemon.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The daemon's address.
    pub addr: SocketAddr,
    /// The daemon's certificate, pinned: no other certificate is accepted.
    pub cert: CertificateDer<'static>,
    /// The daemon's token, sent with every call.
    pub token: Token,
    /// Encoding of every call's messages.
    pub encoding: Encoding,
    /// Deadline applied to calls that set none; `None` waits as long as the daemon takes.
    pub default_deadline: Option<Duration>,
    /// Connection attempts before giving up (100 ms doubling to 5 s between them).
    pub connect_attempts: u32,
    /// Whether an attempt that finds nothing listening at `addr` (the port is closed) is
    /// retried. Yes by default, so a long-lived client finds a daemon that is restarting; a
    /// one-shot command turns it off and reports a dead daemon at once.
    pub retry_refused: bool,
    /// Whether connections resume TLS sessions the daemon gave earlier connections to it from
    /// this process (yes by default). A resumed connection shows no certificate and sends its
    /// first replay-safe calls (Health, Provider.list, Completion) with its first packet, as
    /// 0-RTT data: a reconnect answers in one round trip instead of two. Calls of other
    /// methods wait for the handshake either way (`docs/protocol.md`, "0-RTT").
    pub resume_sessions: bool,
    /// Transport limits (must fit the daemon's; the defaults do).
    pub rpc: RpcConfig,
}

impl ClientOptions {
    /// Reads the address (unless `addr` is given), certificate and token from a state directory.
    pub fn from_state_dir(dir: &Path, addr: Option<SocketAddr>) -> Result<ClientOptions, Error> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| Error::StateFile {
                path: path.clone(),
                reason: e.to_string(),
            })
        };
        let addr = match addr {
            Some(addr) => addr,
            None => {
                let text = read(files::ENDPOINT)?;
                let text = String::from_utf8_lossy(&text);
                text.trim().parse().map_err(|e| Error::StateFile {
                    path: dir.join(files::ENDPOINT),
                    reason: format!("not an address ({e})"),
                })?
            }
        };
        let cert =
            CertificateDer::from_pem_slice(&read(files::CERT)?).map_err(|e| Error::StateFile {
                path: dir.join(files::CERT),
                reason: e.to_string(),
            })?;
        let token =
            Token::from_hex(&String::from_utf8_lossy(&read(files::TOKEN)?)).map_err(|e| {
                Error::StateFile {
                    path: dir.join(files::TOKEN),
                    reason: e.to_string(),
                }
            })?;
        let rpc = RpcConfig::default();
        Ok(ClientOptions {
            addr,
            cert,
            token,
            encoding: Encoding::Rkyv,
            default_deadline: None,
            connect_attempts: rpc.reconnect_attempts.max(1),
            retry_refused: true,
            resume_sessions: true,
            rpc,
        })
    }

    /// Like [`ClientOptions::from_state_dir`], finding everything the way `reaperd` does: the
    /// same config file (for `[daemon] state_dir` and `[rpc]`), then the state directory from
    /// `dir` if given, else `$REAPER_STATE_DIR`, else the config, else the platform default.
    pub fn discover(
        dir: Option<PathBuf>,
        addr: Option<SocketAddr>,
    ) -> Result<ClientOptions, Error> {
        let env = |k: &str| std::env::var(k).ok();
        let (config, _) = Config::locate(None, env, |p| std::fs::read_to_string(p))
            .map_err(|e| Error::Config(e.to_string()))?;
        let dir = paths::state_dir(dir, config.daemon.state_dir.as_deref(), env);
        let mut options = ClientOptions::from_state_dir(&dir, addr)?;
        options.connect_attempts = config.rpc.reconnect_attempts.max(1);
        options.rpc = config.rpc;
        Ok(options)
    }
}
