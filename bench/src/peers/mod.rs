//! Peer stacks measured in the same run as reaper, on the same payloads (a 2 KiB request, a
//! 128 B response) and in the same layout: the server on a thread of its own, the client on
//! another, both placed by `--pin`.
//!
//! - `udp`: blocking UDP ping-pong, the floor any protocol over UDP pays;
//! - `quinn`: plain quinn on tokio, one bidirectional stream per call — the design reaperd
//!   replaces — with quinn's default transport settings;
//! - `http1`: HTTP/1.1 keep-alive with JSON bodies (hyper), the usual local-daemon choice;
//! - `tonic`: gRPC over HTTP/2, unary ([`grpc`]); and a chat proxy over it, server streaming, for
//!   `reaper-bench chat`.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

mod grpc;

pub use grpc::{spawn_chat_proxy, tonic, ChatProxyClient};

use crate::pin::{pin_current, Pin};
use crate::report::{histogram, time_in_flight, time_sequential, time_sequential_async, Row};

/// Request payload size.
pub const REQUEST_BYTES: usize = 2048;
/// Response payload size.
pub const RESPONSE_BYTES: usize = 128;

fn request_payload() -> Vec<u8> {
    (0..REQUEST_BYTES).map(|i| b'a' + (i % 26) as u8).collect()
}

/// A JSON body of exactly `len` bytes.
fn json_body(len: usize) -> Vec<u8> {
    let mut body = b"{\"data\":\"".to_vec();
    body.resize(len - 2, b'x');
    body.extend_from_slice(b"\"}");
    body
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Runs `server` on a thread of its own, pinned for the server side.
fn spawn_server<F>(pin: Pin, name: &str, server: F) -> anyhow::Result<()>
where
    F: FnOnce() + Send + 'static,
{
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            pin_current(pin.server_cpu());
            server();
        })?;
    Ok(())
}

/// Runs `serve` on a loopback TCP listener, on a tokio runtime on a server thread of its own;
/// returns the listener's address.
pub(crate) fn spawn_tcp_server<F, Fut>(pin: Pin, name: &str, serve: F) -> anyhow::Result<SocketAddr>
where
    F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    spawn_server(pin, name, move || {
        let Ok(rt) = runtime() else { return };
        rt.block_on(async move {
            if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                serve(listener).await;
            }
        });
    })?;
    Ok(addr)
}

/// Raw UDP ping-pong with blocking sockets.
pub fn udp(pin: Pin, calls: u64) -> anyhow::Result<Row> {
    let server = UdpSocket::bind("127.0.0.1:0")?;
    let addr = server.local_addr()?;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    spawn_server(pin, "udp-server", move || {
        let mut buf = vec![0u8; 65536];
        let reply = vec![7u8; RESPONSE_BYTES];
        let _ = server.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = tx.send(());
        while let Ok((_, from)) = server.recv_from(&mut buf) {
            if server.send_to(&reply, from).is_err() {
                break;
            }
        }
    })?;
    rx.recv()?;
    pin_current(pin.client_cpu());
    let client = UdpSocket::bind("127.0.0.1:0")?;
    client.connect(addr)?;
    client.set_read_timeout(Some(Duration::from_secs(2)))?;
    let request = request_payload();
    let mut buf = vec![0u8; 65536];
    let (h, seconds) = time_sequential(calls, || {
        client.send(&request)?;
        client.recv(&mut buf).context("UDP reply lost")?;
        Ok(())
    })?;
    Ok(Row::new("udp", "unary_2k", 1, pin.name(), &h, seconds))
}

/// A plain quinn server on a thread of its own, answering every bidirectional stream with
/// `RESPONSE_BYTES`; returns its address and certificate.
fn quinn_server(
    pin: Pin,
) -> anyhow::Result<(SocketAddr, rustls::pki_types::CertificateDer<'static>)> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let cert_der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let server_config = quinn::ServerConfig::with_single_cert(vec![cert_der.clone()], key)?;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let addr = socket.local_addr()?;
    spawn_server(pin, "quinn-server", move || {
        let Ok(rt) = runtime() else { return };
        rt.block_on(async move {
            let Ok(endpoint) = quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                Some(server_config),
                socket,
                Arc::new(quinn::TokioRuntime),
            ) else {
                return;
            };
            while let Some(incoming) = endpoint.accept().await {
                let Ok(conn) = incoming.await else { continue };
                tokio::spawn(async move {
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        tokio::spawn(async move {
                            if recv.read_to_end(1 << 20).await.is_ok() {
                                let _ = send.write_all(&[7u8; RESPONSE_BYTES]).await;
                                let _ = send.finish();
                            }
                        });
                    }
                });
            }
        });
    })?;
    Ok((addr, cert_der))
}

/// A quinn client that trusts the peer server's certificate.
fn quinn_client_config(
    cert: rustls::pki_types::CertificateDer<'static>,
) -> anyhow::Result<quinn::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    Ok(quinn::ClientConfig::with_root_certificates(Arc::new(
        roots,
    ))?)
}

/// One plain quinn call: a stream, the request, FIN, the whole answer.
async fn quinn_call(conn: quinn::Connection, request: Bytes) -> anyhow::Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&request).await?;
    send.finish()?;
    let reply = recv.read_to_end(1 << 20).await?;
    anyhow::ensure!(reply.len() == RESPONSE_BYTES, "short reply");
    Ok(())
}

/// Plain quinn's new connection and first call, timed as reaper's `connect_first_call` is: a
/// new client endpoint and socket each time, the 1-RTT handshake, one call.
pub fn quinn_connect(pin: Pin, calls: u64) -> anyhow::Result<Row> {
    let (addr, cert_der) = quinn_server(pin)?;
    pin_current(pin.client_cpu());
    let rt = runtime()?;
    rt.block_on(async move {
        let client_config = quinn_client_config(cert_der)?;
        let request = Bytes::from(request_payload());
        let mut h = histogram();
        let mut measured = Duration::ZERO;
        for _ in 0..(calls / 100).clamp(5, 100) {
            let t = Instant::now();
            let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
            let conn = endpoint
                .connect_with(client_config.clone(), addr, "localhost")?
                .await?;
            quinn_call(conn.clone(), request.clone()).await?;
            measured += t.elapsed();
            h.saturating_record(t.elapsed().as_micros() as u64);
            conn.close(0u32.into(), b"done");
        }
        Ok(Row::new(
            "quinn",
            "connect_first_call",
            1,
            pin.name(),
            &h,
            measured.as_secs_f64(),
        ))
    })
}

/// Plain quinn: a server thread answering every bidirectional stream, and a client making
/// `concurrency` calls at a time.
pub fn quinn(pin: Pin, calls: u64, concurrency: usize, seconds: f64) -> anyhow::Result<Row> {
    let (addr, cert_der) = quinn_server(pin)?;
    pin_current(pin.client_cpu());
    let rt = runtime()?;
    rt.block_on(async move {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        endpoint.set_default_client_config(quinn_client_config(cert_der)?);
        let conn = endpoint.connect(addr, "localhost")?.await?;
        let request = Bytes::from(request_payload());
        let call = quinn_call;
        let row = if concurrency <= 1 {
            let (h, seconds) =
                time_sequential_async(calls, async || call(conn.clone(), request.clone()).await)
                    .await?;
            Row::new("quinn", "unary_2k", 1, pin.name(), &h, seconds)
        } else {
            let (shared, request) = (conn.clone(), request.clone());
            let (h, seconds) = time_in_flight(concurrency, seconds, move || {
                call(shared.clone(), request.clone())
            })
            .await?;
            Row::new("quinn", "unary_2k", concurrency, pin.name(), &h, seconds)
        };
        conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        Ok(row)
    })
}

/// HTTP/1.1 keep-alive with JSON bodies (hyper on both sides), one call at a time.
pub fn http1(pin: Pin, calls: u64) -> anyhow::Result<Row> {
    let addr = spawn_tcp_server(pin, "http1-server", |listener| async move {
        let reply = Bytes::from(json_body(RESPONSE_BYTES));
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let reply = reply.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let reply = reply.clone();
                    async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        let _: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
                        Ok::<_, hyper::Error>(
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(reply))
                                .expect("static response parts"),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })?;

    pin_current(pin.client_cpu());
    let rt = runtime()?;
    rt.block_on(async move {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let body = Bytes::from(json_body(REQUEST_BYTES));
        let (h, seconds) = time_sequential_async(calls, async || {
            let request = hyper::Request::post(format!("http://{addr}/call"))
                .header("content-type", "application/json")
                .body(Full::new(body.clone()))?;
            let response = sender.send_request(request).await?;
            let reply = response.into_body().collect().await?.to_bytes();
            let _: serde_json::Value = serde_json::from_slice(&reply)?;
            Ok(())
        })
        .await?;
        Ok(Row::new("http1", "unary_2k", 1, pin.name(), &h, seconds))
    })
}
