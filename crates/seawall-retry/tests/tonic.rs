//! `JitterRetryLayer::grpc()` between a tonic client and a real tonic
//! `Channel` over loopback HTTP/2, with no body conversion: the server
//! answers `UNAVAILABLE` (trailers-only) twice, then echoes the message.
#![cfg(feature = "tonic")]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use seawall_retry::{Backoff, Jitter, JitterRetryLayer};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};
use tower::ServiceBuilder;

/// Raw message bytes, with no protobuf: the framing is tonic's.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
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

type Frames =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// The request bodies (gRPC frames) the server received, in order.
type Seen = Arc<Mutex<Vec<Bytes>>>;

async fn serve(
    seen: Seen,
    unavailable: usize,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let seen = seen.clone();
                async move {
                    let frame = req.into_body().collect().await.unwrap().to_bytes();
                    let n = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(frame.clone());
                        seen.len()
                    };
                    let mut res = Response::builder().header("content-type", "application/grpc");
                    let frames = if n <= unavailable {
                        // Trailers-only: the status in the headers.
                        res = res.header("grpc-status", "14");
                        Vec::new()
                    } else {
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", HeaderValue::from_static("0"));
                        vec![Ok(Frame::data(frame)), Ok(Frame::trailers(trailers))]
                    };
                    let body: Frames = StreamBody::new(futures_util::stream::iter(frames));
                    Ok::<_, Infallible>(res.body(body).unwrap())
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

fn layer(
    max_attempts: u32,
) -> JitterRetryLayer<
    seawall_retry::HttpReplay<seawall_retry::AsTonicBody>,
    seawall_core::GrpcClassifier,
> {
    JitterRetryLayer::builder()
        .grpc()
        .max_attempts(max_attempts)
        // Zero delays: a real socket, so the test must not wait.
        .backoff(Backoff::constant(Duration::ZERO))
        .max_delay(Duration::ZERO)
        .jitter(Jitter::None)
        .no_budget()
        .build()
        .unwrap()
}

async fn call(
    channel: tonic::transport::Channel,
    layer: JitterRetryLayer<
        seawall_retry::HttpReplay<seawall_retry::AsTonicBody>,
        seawall_core::GrpcClassifier,
    >,
    message: &'static [u8],
) -> Result<Bytes, Status> {
    // No conversion of any kind between the client, the layer and the
    // channel.
    let mut grpc = tonic::client::Grpc::new(ServiceBuilder::new().layer(layer).service(channel));
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let res = grpc
        .unary(
            tonic::Request::new(Bytes::from_static(message)),
            PathAndQuery::from_static("/seawall.test.Echo/Echo"),
            RawCodec,
        )
        .await?;
    Ok(res.into_inner())
}

#[tokio::test]
async fn a_channel_behind_grpc_retry_replays_the_message_after_unavailable() {
    let seen = Seen::default();
    let (addr, server) = serve(seen.clone(), 2).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let answer = call(channel, layer(3), b"ping over grpc").await.unwrap();
    assert_eq!(answer, Bytes::from_static(b"ping over grpc"));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "two UNAVAILABLE answers, then success");
    // Every attempt carried the same gRPC frame: flag 0, length, message.
    let mut frame = vec![0u8];
    frame.extend_from_slice(&14u32.to_be_bytes());
    frame.extend_from_slice(b"ping over grpc");
    for body in &seen {
        assert_eq!(body.as_ref(), frame.as_slice());
    }
    server.abort();
}

#[tokio::test]
async fn the_last_unavailable_reaches_the_client_as_a_status() {
    let seen = Seen::default();
    let (addr, server) = serve(seen.clone(), usize::MAX).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = call(channel, layer(2), b"x").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(seen.lock().unwrap().len(), 2, "max_attempts");
    server.abort();
}
