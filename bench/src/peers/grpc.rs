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

impl<B> Service<http::Request<B>> for EchoServer
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

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != METHOD {
            let status = Status::unimplemented(format!("no method {}", request.uri().path()));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        let call = Call(self.reply.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawCodec);
            Ok(grpc.unary(call, request).await)
        })
    }
}

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
