//! gRPC over HTTP/2 (tonic), unary: the usual RPC choice, and the one the architecture notes
//! measure reaper against.
//!
//! No protobuf compiler: the service and the codec are written out by hand the way
//! `tonic-build` would generate them, with a codec that passes the payload through as raw
//! bytes. That keeps the comparison on the transport (HTTP/2 framing, gRPC's length prefix,
//! hyper, tower) and off any message encoding, as for the other peers. Plain-text HTTP/2 (h2c),
//! as tonic is usually run on loopback.

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, BoxFuture, Service, StdError};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use super::{request_payload, runtime, spawn_tcp_server, RESPONSE_BYTES};
use crate::pin::{pin_current, Pin};
use crate::report::{time_in_flight, time_sequential_async, Row};

const METHOD: &str = "/bench.Echo/Call";

/// Messages are the payload bytes as they are.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The one-method service, as generated code would route it.
#[derive(Debug, Clone)]
struct EchoServer {
    reply: Bytes,
}

impl NamedService for EchoServer {
    const NAME: &'static str = "bench.Echo";
}

/// The method body: answers every request with the fixed reply.
struct Call(Bytes);

impl tonic::server::UnaryService<Bytes> for Call {
    type Response = Bytes;
    type Future = std::future::Ready<Result<Response<Bytes>, Status>>;

    fn call(&mut self, _request: Request<Bytes>) -> Self::Future {
        std::future::ready(Ok(Response::new(self.0.clone())))
    }
}

/// The `Service` impl generated code writes for a one-method service: any other path is
/// UNIMPLEMENTED; the method is `$serve`, with a clone of the service as `$this`.
macro_rules! one_method_service {
    ($type:ty, $method:expr, |$this:ident, $request:ident| $serve:expr) => {
        impl<B> Service<http::Request<B>> for $type
        where
            B: tonic::codegen::Body + Send + 'static,
            B::Error: Into<StdError> + Send + 'static,
        {
            type Response = http::Response<tonic::body::Body>;
            type Error = Infallible;
            type Future = BoxFuture<Self::Response, Infallible>;

            fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, $request: http::Request<B>) -> Self::Future {
                if $request.uri().path() != $method {
                    let status =
                        Status::unimplemented(format!("no method {}", $request.uri().path()));
                    return Box::pin(std::future::ready(Ok(status.into_http())));
                }
                let $this = self.clone();
                Box::pin(async move { Ok($serve) })
            }
        }
    };
}

one_method_service!(EchoServer, METHOD, |this, request| {
    let mut grpc = tonic::server::Grpc::new(RawCodec);
    grpc.unary(Call(this.reply), request).await
});

/// tonic on both sides, one HTTP/2 connection, `concurrency` calls at a time.
pub fn tonic(pin: Pin, calls: u64, concurrency: usize, seconds: f64) -> anyhow::Result<Row> {
    let addr = spawn_tcp_server(pin, "tonic-server", |listener| async move {
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let service = EchoServer {
            reply: Bytes::from(vec![7u8; RESPONSE_BYTES]),
        };
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    })?;

    pin_current(pin.client_cpu());
    let rt = runtime()?;
    rt.block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        let request = Bytes::from(request_payload());
        let call = |channel: tonic::transport::Channel, request: Bytes| async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await?;
            let reply: Response<Bytes> = grpc
                .unary(
                    Request::new(request),
                    http::uri::PathAndQuery::from_static(METHOD),
                    RawCodec,
                )
                .await?;
            anyhow::ensure!(reply.get_ref().len() == RESPONSE_BYTES, "short reply");
            Ok::<_, anyhow::Error>(())
        };
        let row = if concurrency <= 1 {
            let (h, seconds) =
                time_sequential_async(calls, async || call(channel.clone(), request.clone()).await)
                    .await?;
            Row::new("tonic", "unary_2k", 1, pin.name(), &h, seconds)
        } else {
            let (h, seconds) = time_in_flight(concurrency, seconds, move || {
                call(channel.clone(), request.clone())
            })
            .await?;
            Row::new("tonic", "unary_2k", concurrency, pin.name(), &h, seconds)
        };
        Ok(row)
    })
}

// ---- server streaming: a chat proxy ----

const CHAT_METHOD: &str = "/bench.Chat/Send";

/// A chat proxy built the common way: a tonic server-streaming method whose handler reads the
/// model's answer over HTTP (hyper's pooled client, keep-alive) and forwards each piece as one
/// message, `{"delta": ..., "done": false}`, then a last `{"delta": "", "done": true}`: the
/// same work reaperd does for `Chat/send`, over gRPC.
#[derive(Clone)]
struct ChatProxy {
    model_url: String,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<Bytes>,
    >,
}

impl NamedService for ChatProxy {
    const NAME: &'static str = "bench.Chat";
}

/// The streamed answer of one call.
type ChatStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Bytes, Status>> + Send>>;

struct ChatCall(ChatProxy);

impl tonic::server::ServerStreamingService<Bytes> for ChatCall {
    type Response = Bytes;
    type ResponseStream = ChatStream;
    type Future = BoxFuture<Response<ChatStream>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let proxy = self.0.clone();
        Box::pin(async move {
            use http_body_util::BodyExt;
            // The request is the model's own body, as the client wrote it.
            let upstream = http::Request::post(format!("{}/v1/chat/completions", proxy.model_url))
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(request.into_inner()))
                .map_err(|e| Status::internal(e.to_string()))?;
            let response = proxy
                .client
                .request(upstream)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let body = response.into_body();
            let state = (
                body,
                crate::chat::sse::ContentScanner::default(),
                std::collections::VecDeque::<Bytes>::new(),
                false,
            );
            let stream = futures::stream::unfold(
                state,
                |(mut body, mut scanner, mut pending, mut ended)| async move {
                    loop {
                        if let Some(message) = pending.pop_front() {
                            return Some((Ok(message), (body, scanner, pending, ended)));
                        }
                        if ended {
                            return None;
                        }
                        match body.frame().await {
                            Some(Ok(frame)) => {
                                if let Ok(data) = frame.into_data() {
                                    pending.extend(scanner.feed(&data).into_iter().map(|text| {
                                        Bytes::from(
                                            serde_json::json!({"delta": text, "done": false})
                                                .to_string(),
                                        )
                                    }));
                                }
                            }
                            Some(Err(e)) => {
                                let error = Status::unavailable(e.to_string());
                                return Some((Err(error), (body, scanner, pending, true)));
                            }
                            None => {
                                ended = true;
                                pending
                                    .push_back(Bytes::from_static(br#"{"delta":"","done":true}"#));
                            }
                        }
                    }
                },
            );
            Ok(Response::new(Box::pin(stream) as ChatStream))
        })
    }
}

one_method_service!(ChatProxy, CHAT_METHOD, |this, request| {
    let mut grpc = tonic::server::Grpc::new(RawCodec);
    grpc.server_streaming(ChatCall(this), request).await
});

/// Starts the chat proxy in front of the model server at `model_url` on a server thread placed
/// by `pin`; its address.
pub fn spawn_chat_proxy(pin: Pin, model_url: String) -> anyhow::Result<std::net::SocketAddr> {
    spawn_tcp_server(pin, "tonic-chat", move |listener| async move {
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        let _ = tonic::transport::Server::builder()
            .add_service(ChatProxy { model_url, client })
            .serve_with_incoming(incoming)
            .await;
    })
}

/// A client of [`spawn_chat_proxy`]'s server.
pub struct ChatProxyClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl ChatProxyClient {
    /// Connects (one HTTP/2 connection).
    pub async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<ChatProxyClient> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        Ok(ChatProxyClient {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    /// Sends `body` (the model's request) and calls `each` with every message as it arrives.
    pub async fn chat(&mut self, body: Bytes, mut each: impl FnMut(&[u8])) -> anyhow::Result<()> {
        self.grpc.ready().await?;
        let response = self
            .grpc
            .server_streaming(
                Request::new(body),
                http::uri::PathAndQuery::from_static(CHAT_METHOD),
                RawCodec,
            )
            .await?;
        let mut stream = response.into_inner();
        while let Some(message) = stream.message().await? {
            each(&message);
        }
        Ok(())
    }
}
