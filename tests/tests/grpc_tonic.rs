//! gRPC on both sides, over real HTTP/2 on loopback: a tonic server whose
//! stack answers seawall's refusals as trailers-only gRPC statuses, and a
//! tonic client whose stack turns them into `tonic::Status`.
//!
//! The messages are raw bytes through a small hand-written codec, so the
//! tests need no code generation.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http::{Request, Response, StatusCode};
use seawall::bulkhead::BulkheadLayer;
use seawall::circuit_breaker::{CircuitBreakerLayer, CircuitOpen, State};
use seawall::http::RejectionResponseLayer;
use seawall::{BoxError, ClassifyExt, GrpcClassifier, Rejected, ServiceBuilderExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Status};
use tower::{Service, ServiceBuilder, ServiceExt};

/// Messages are the raw bytes of the frame.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

#[derive(Debug)]
struct RawEncoder;

#[derive(Debug)]
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// The server's application: one gRPC method per behaviour.
///
/// - `/test.Echo/Echo` echoes;
/// - `/test.Echo/Hold` echoes once `release` is notified (it holds its
///   bulkhead permit until then), after notifying `entered`;
/// - `/test.Echo/Limited` fails with a rate-limit rejection (429, 300 ms);
/// - `/test.Echo/Slow` never answers;
/// - `/test.Echo/Broken` fails with an error whose text holds a password;
/// - `/test.Echo/Down` answers a trailers-only `UNAVAILABLE` of its own.
#[derive(Clone)]
struct App {
    entered: Arc<Notify>,
    release: Arc<Notify>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<Request<Body>> for App {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let app = self.clone();
        Box::pin(async move {
            match req.uri().path() {
                "/test.Echo/Hold" => {
                    app.entered.notify_one();
                    app.release.notified().await;
                }
                "/test.Echo/Limited" => {
                    return Err(Rejected::new(
                        "rate_limited",
                        StatusCode::TOO_MANY_REQUESTS,
                        Some(Duration::from_millis(300)),
                    )
                    .into());
                }
                "/test.Echo/Slow" => std::future::pending::<()>().await,
                "/test.Echo/Broken" => {
                    return Err("connect postgres://admin:hunter2@db failed".into());
                }
                "/test.Echo/Down" => {
                    return Ok(Status::unavailable("dependency down").into_http());
                }
                _ => {}
            }
            let echo = tower::service_fn(|req: tonic::Request<Bytes>| async move {
                Ok::<_, Status>(tonic::Response::new(req.into_inner()))
            });
            Ok(tonic::server::Grpc::new(RawCodec).unary(echo, req).await)
        })
    }
}

/// Serves `svc` with tonic's server on a loopback port.
async fn serve<S, B>(svc: S) -> SocketAddr
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(Server::builder().serve_with_incoming(svc, TcpIncoming::from(listener)));
    addr
}

async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A unary call through any tonic-compatible client stack.
async fn call<T>(client: &mut tonic::client::Grpc<T>, method: &str) -> Result<Bytes, Status>
where
    T: tonic::client::GrpcService<Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError>,
{
    client
        .ready()
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    let path = format!("/test.Echo/{method}").parse().unwrap();
    client
        .unary(
            tonic::Request::new(Bytes::from_static(b"ping")),
            path,
            RawCodec,
        )
        .await
        .map(tonic::Response::into_inner)
}

fn pushback(status: &Status) -> Option<&str> {
    status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .map(|v| v.to_str().unwrap())
}

/// A server stack with seawall's rejection answers: a bulkhead of one
/// permit and no queue, and a 200 ms timeout.
async fn seawall_server(app: App) -> SocketAddr {
    let bulkhead = BulkheadLayer::builder()
        .max_concurrent(1)
        .max_queue(0)
        .retry_after(Duration::from_secs(1))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(RejectionResponseLayer::new())
        .layer(bulkhead)
        .timeout(Duration::from_millis(200))
        .service(app);
    serve(svc).await
}

fn app() -> App {
    App {
        entered: Arc::new(Notify::new()),
        release: Arc::new(Notify::new()),
    }
}

#[tokio::test(start_paused = true)]
async fn full_bulkhead_reaches_tonic_client_as_unavailable() {
    let app = app();
    let addr = seawall_server(app.clone()).await;
    let mut client = tonic::client::Grpc::new(channel(addr).await);

    assert_eq!(call(&mut client, "Echo").await.unwrap(), "ping");

    let mut holder = client.clone();
    let held = tokio::spawn(async move { call(&mut holder, "Hold").await });
    app.entered.notified().await;

    let status = call(&mut client, "Echo").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "the bulkhead is full");
    assert_eq!(pushback(&status), Some("1000"));

    app.release.notify_one();
    assert_eq!(held.await.unwrap().unwrap(), "ping");
    assert_eq!(call(&mut client, "Echo").await.unwrap(), "ping");
}

#[tokio::test(start_paused = true)]
async fn rate_limit_timeout_and_unknown_errors_get_their_codes() {
    let addr = seawall_server(app()).await;
    let mut client = tonic::client::Grpc::new(channel(addr).await);

    let status = call(&mut client, "Limited").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), "the rate limit is exceeded");
    assert_eq!(pushback(&status), Some("300"));

    let status = call(&mut client, "Slow").await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.message(), "the request timed out");
    assert_eq!(pushback(&status), None);

    let status = call(&mut client, "Broken").await.unwrap_err();
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert!(!format!("{status:?}").contains("hunter2"), "{status:?}");
    assert_eq!(status.message(), "the request failed");
}

#[tokio::test(start_paused = true)]
async fn open_breaker_reaches_tonic_client_as_unavailable() {
    let addr = serve(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new())
            .service(app()),
    )
    .await;

    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .open_duration(Duration::from_secs(30))
        .classifier(GrpcClassifier::new().ignore_rejections())
        .build()
        .unwrap();
    let handle = breaker.handle();
    let stack = ServiceBuilder::new()
        .rejection_status()
        .circuit_breaker(breaker)
        .service(channel(addr).await);
    let mut client = tonic::client::Grpc::new(stack);

    // The dependency's own UNAVAILABLE passes through untouched.
    for _ in 0..2 {
        let status = call(&mut client, "Down").await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "dependency down");
    }
    assert_eq!(handle.state(), State::Open);

    // Now the breaker refuses: the client sees UNAVAILABLE, seawall's text,
    // the hint as pushback, and the `CircuitOpen` as the status's source.
    let status = call(&mut client, "Echo").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "the circuit breaker is open");
    assert_eq!(pushback(&status), Some("30000"));
    let source = std::error::Error::source(&status).expect("the seawall error");
    assert!(source.is::<CircuitOpen>(), "{source:?}");
}

#[tokio::test(start_paused = true)]
async fn combinator_classified_stack_runs_inside_tokio_spawn() {
    let addr = serve(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new())
            .service(app()),
    )
    .await;
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .classifier(
            GrpcClassifier::new()
                .or(seawall::HttpClassifier::new())
                .ignore_rejections(),
        )
        .build()
        .unwrap();
    let stack = ServiceBuilder::new()
        .rejection_status()
        .circuit_breaker(breaker)
        .service(channel(addr).await);

    let request = |method: &str| {
        Request::builder()
            .uri(format!("http://{addr}/test.Echo/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Body::empty())
            .unwrap()
    };
    // `oneshot` futures of the whole stack are `Send + 'static`: the
    // classifier is a named type, with no lifetime for rustc to generalise.
    let down = tokio::spawn(stack.clone().oneshot(request("Down")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(down.headers()["grpc-status"], "14");
    let refused = tokio::spawn(stack.oneshot(request("Echo")))
        .await
        .unwrap()
        .unwrap_err();
    let status = refused.downcast_ref::<Status>().expect("a tonic status");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "the circuit breaker is open");
}
