//! A loopback TCP relay in front of a model server that notes the moment each piece of a
//! streamed answer passed it on its way to a client. Both paths of a measurement (the daemon,
//! and a client calling the model server directly) go through it, so the time from this moment
//! to the client's receiving that piece is each path's own share of the piece's latency, on one
//! clock, and the model's pace drops out.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::sse::ContentScanner;

/// One piece of an answer, as it passed the relay.
#[derive(Debug, Clone)]
pub struct Passed {
    /// When its last byte was handed to the client's connection.
    pub at: Instant,
    /// Its text.
    pub text: String,
}

/// The running relay; stopped when dropped.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    passed: Arc<Mutex<Vec<Passed>>>,
    unreadable: Arc<Mutex<usize>>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Listens on 127.0.0.1 (a free port) and relays every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let passed = Arc::new(Mutex::new(Vec::new()));
        let unreadable = Arc::new(Mutex::new(0));
        let (log, bad) = (passed.clone(), unreadable.clone());
        let task = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let (log, bad) = (log.clone(), bad.clone());
                tokio::spawn(async move {
                    if let Ok(up) = TcpStream::connect(upstream).await {
                        relay(down, up, log, bad).await;
                    }
                });
            }
        });
        Ok(Relay {
            addr,
            passed,
            unreadable,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The pieces that passed from `from` to `to`, in order.
    pub fn between(&self, from: Instant, to: Instant) -> Vec<Passed> {
        let passed = self.passed.lock().unwrap_or_else(|e| e.into_inner());
        passed
            .iter()
            .filter(|p| p.at >= from && p.at <= to)
            .cloned()
            .collect()
    }

    /// Events whose JSON the relay could not read.
    pub fn unreadable(&self) -> usize {
        *self.unreadable.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    down: TcpStream,
    up: TcpStream,
    log: Arc<Mutex<Vec<Passed>>>,
    unreadable: Arc<Mutex<usize>>,
) {
    let _ = (down.set_nodelay(true), up.set_nodelay(true));
    let (mut down_read, mut down_write) = down.into_split();
    let (mut up_read, mut up_write) = up.into_split();
    // Requests go up as they are; a client closing its side closes the upstream one too.
    let requests = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut down_read, &mut up_write).await;
        let _ = up_write.shutdown().await;
    });
    let mut scanner = ContentScanner::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match up_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if down_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
        let at = Instant::now();
        let texts = scanner.feed(&buf[..n]);
        if !texts.is_empty() {
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            log.extend(texts.into_iter().map(|text| Passed { at, text }));
        }
    }
    *unreadable.lock().unwrap_or_else(|e| e.into_inner()) += scanner.unreadable;
    requests.abort();
}
