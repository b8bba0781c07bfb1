//! A real `reaperd` process for tests: temp state dir, port 0, logs kept, always reaped.

// Shared by several test binaries; each uses part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use reaper_client::{ClientOptions, Encoding, Method};
use reaper_core::transport;
use reaper_core::wire::{self, RequestHead};

pub fn reaperd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_reaperd"))
}

/// The `reaper` CLI, built beside reaperd (see `reaper_testkit::binaries`).
pub fn reaper_bin() -> PathBuf {
    reaper_testkit::binaries(&reaperd_bin()).join("reaper")
}

pub struct Daemon {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_with("", &[])
    }

    /// A daemon with `config` as its reaper.toml and extra environment variables.
    pub fn start_with(config: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_on("127.0.0.1:0", config, env)
    }

    /// The same, listening on `listen` (e.g. `[::1]:0`).
    pub fn start_on(listen: &str, config: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("reaper.toml"), config).unwrap();
        let mut daemon = Daemon { child: None, dir };
        daemon.spawn(listen, env);
        daemon
    }

    /// Starts the process (again) in this daemon's directory, listening on `listen`.
    fn spawn(&mut self, listen: &str, env: &[(&str, &str)]) {
        let dir = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("reaperd.log"))
            .unwrap();
        let child = Command::new(reaperd_bin())
            .args(["--listen", listen, "--state-dir"])
            .arg(dir.join("state"))
            .arg("--config")
            .arg(dir.join("reaper.toml"))
            .env("RUST_LOG", "debug,quinn_proto=info")
            .env_remove("REAPER_CONFIG")
            .envs(env.iter().copied())
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let endpoint = self.state_dir().join("endpoint");
        let start = Instant::now();
        while !endpoint.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "reaperd did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the daemon (no drain: as if it crashed) and starts it again on the same address
    /// with the same state directory, after `pause`.
    pub fn crash_and_restart(&mut self, pause: Duration) {
        let addr = self.options().addr.to_string();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.state_dir().join("endpoint"));
        std::thread::sleep(pause);
        self.spawn(&addr, &[]);
    }

    /// The daemon's resident set, in KiB, from `/proc/PID/status`.
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    /// A figure in KiB from `/proc/PID/status` (`VmRSS:`, `VmHWM:`…).
    pub fn proc_status_kib(&self, key: &str) -> u64 {
        let pid = self.child.as_ref().unwrap().id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn options(&self) -> ClientOptions {
        ClientOptions::from_state_dir(&self.state_dir(), None).unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("reaperd.log")).unwrap_or_default()
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(reaper_bin())
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(args)
            .output()
            .unwrap()
    }

    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Whether the daemon has exited, without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut().unwrap().try_wait().unwrap();
        if status.is_some() {
            self.child = None;
        }
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A raw QUIC connection with the daemon's pinned certificate, for sending bytes no well-behaved
/// client would.
pub async fn raw_connection(daemon: &Daemon) -> (quinn::Endpoint, quinn::Connection) {
    let options = daemon.options();
    let config = transport::client_config(options.cert.clone(), &options.rpc, true).unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let endpoint = quinn::Endpoint::new(
        transport::endpoint_config(true),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .unwrap();
    let conn = endpoint
        .connect_with(config, options.addr, transport::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    (endpoint, conn)
}

/// The encoded head of a JSON `Health.check` with the daemon's token.
pub fn health_head_json(daemon: &Daemon) -> Vec<u8> {
    head_json(daemon, Method::HealthCheck)
}

/// The request head of a JSON call of `method` with the daemon's token and no deadline.
pub fn head_json(daemon: &Daemon, method: Method) -> Vec<u8> {
    let mut bytes = Vec::new();
    RequestHead {
        method: method.path().into(),
        encoding: Encoding::Json,
        deadline_ms: 0,
        token: daemon.options().token,
    }
    .encode(&mut bytes);
    bytes
}

pub async fn read_trailer(recv: &mut quinn::RecvStream) -> reaper_core::Status {
    let bytes = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 20))
        .await
        .expect("the daemon answers within 5 s")
        .unwrap();
    let mut decoder = wire::FrameDecoder::new(wire::Side::Response, 1 << 20);
    decoder.push(bytes.into());
    loop {
        match decoder.next_frame().unwrap() {
            Some(wire::Frame::Trailer(status)) => return status,
            Some(_) => continue,
            None => panic!("no trailer"),
        }
    }
}

/// Sends one call whose message bytes are given as is (for malformed input) and returns the
/// status it ends with.
pub async fn raw_call(
    daemon: &Daemon,
    method: Method,
    encoding: Encoding,
    message: &[u8],
) -> reaper_core::Status {
    let (_endpoint, conn) = raw_connection(daemon).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut bytes = Vec::new();
    RequestHead {
        method: method.path().into(),
        encoding,
        deadline_ms: 0,
        token: daemon.options().token,
    }
    .encode(&mut bytes);
    wire::encode_message(message, &mut bytes);
    send.write_all(&bytes).await.unwrap();
    send.finish().unwrap();
    read_trailer(&mut recv).await
}
