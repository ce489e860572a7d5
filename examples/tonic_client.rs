//! Run with: cargo run -p seawall-examples --example tonic_client
//!
//! A tonic client protected by a seawall circuit breaker, calling a tonic
//! server in the same process over loopback.
//!
//! The client's `Channel` is wrapped as it is, with no request or body
//! conversion: `.rejection_status()` (`seawall::grpc::RejectionStatusLayer`)
//! above `.circuit_breaker(...)`. The breaker judges calls with
//! `GrpcClassifier` (an `UNAVAILABLE` answer is a failure of the
//! dependency). While the server's feed is down its own `UNAVAILABLE`
//! passes through untouched; after three failures in a row the breaker
//! opens, and tonic code then gets `Code::Unavailable` "the circuit breaker
//! is open" at once, with the time left as `grpc-retry-pushback-ms`,
//! without a call reaching the server.
//!
//! The service is written by hand over a tiny protobuf message (`prost`'s
//! derive and `tonic-prost`'s codec), so no `protoc` or build script is
//! needed. The example checks what it shows and stops by itself.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Request, Response};
use seawall::circuit_breaker::{CircuitBreakerLayer, CircuitOpen, State};
use seawall::{BoxError, ClassifyExt, GrpcClassifier, ServiceBuilderExt};
use tonic::body::Body;
use tonic::client::GrpcService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;
use tower::{Service, ServiceBuilder};

/// `message QuoteRequest { string symbol = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct QuoteRequest {
    #[prost(string, tag = "1")]
    pub(crate) symbol: String,
}

/// `message QuoteReply { string symbol = 1; int64 price_cents = 2; }`
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct QuoteReply {
    #[prost(string, tag = "1")]
    pub(crate) symbol: String,
    #[prost(int64, tag = "2")]
    pub(crate) price_cents: i64,
}

const GET_QUOTE: &str = "/quotes.Quotes/GetQuote";

/// `service Quotes { rpc GetQuote(QuoteRequest) returns (QuoteReply); }`,
/// server side: answers `UNAVAILABLE` while `down` is set, as a dependency
/// whose own feed is out.
#[derive(Clone)]
struct Quotes {
    down: Arc<AtomicBool>,
    calls: Arc<AtomicU32>,
}

impl Service<Request<Body>> for Quotes {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let quotes = self.clone();
        Box::pin(async move {
            if req.uri().path() != GET_QUOTE {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            quotes.calls.fetch_add(1, Ordering::SeqCst);
            let down = quotes.down.load(Ordering::SeqCst);
            let handler = tower::service_fn(move |req: tonic::Request<QuoteRequest>| async move {
                if down {
                    return Err(Status::unavailable("the exchange feed is down"));
                }
                Ok(tonic::Response::new(QuoteReply {
                    symbol: req.into_inner().symbol,
                    price_cents: 4_200,
                }))
            });
            let codec = ProstCodec::<QuoteReply, QuoteRequest>::default();
            Ok(tonic::server::Grpc::new(codec).unary(handler, req).await)
        })
    }
}

/// The client side of `Quotes`, as `tonic-build` would generate it.
#[derive(Debug, Clone)]
pub(crate) struct QuotesClient<T> {
    inner: tonic::client::Grpc<T>,
}

impl<T> QuotesClient<T>
where
    T: GrpcService<Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError>,
{
    pub(crate) fn new(inner: T) -> Self {
        Self {
            inner: tonic::client::Grpc::new(inner),
        }
    }

    pub(crate) async fn get_quote(&mut self, symbol: &str) -> Result<QuoteReply, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::from_error(e.into()))?;
        let request = tonic::Request::new(QuoteRequest {
            symbol: symbol.to_owned(),
        });
        let codec = ProstCodec::<QuoteRequest, QuoteReply>::default();
        self.inner
            .unary(request, PathAndQuery::from_static(GET_QUOTE), codec)
            .await
            .map(tonic::Response::into_inner)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    run().await
}

/// Serves `Quotes`, takes its feed down and shows the breaker open.
pub(crate) async fn run() -> Result<(), BoxError> {
    let down = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU32::new(0));
    let server = Quotes {
        down: down.clone(),
        calls: calls.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let serving =
        tokio::spawn(Server::builder().serve_with_incoming(server, TcpIncoming::from(listener)));

    let breaker = CircuitBreakerLayer::builder()
        .name("quotes")
        .classifier(GrpcClassifier::new().ignore_rejections())
        .consecutive_failures(3)
        .open_duration(Duration::from_secs(30))
        .build()?;
    let handle = breaker.handle();
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let stack = ServiceBuilder::new()
        .rejection_status()
        .circuit_breaker(breaker)
        .service(channel);
    let mut client = QuotesClient::new(stack);

    let quote = client.get_quote("SEA").await?;
    println!("GetQuote(SEA) -> {quote:?}");
    assert_eq!(quote.price_cents, 4_200);

    println!("the feed goes down:");
    down.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let status = client.get_quote("SEA").await.unwrap_err();
        println!(
            "  {:?} {:?} (from the server)",
            status.code(),
            status.message()
        );
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "the exchange feed is down");
    }
    assert_eq!(handle.state(), State::Open);

    let served = calls.load(Ordering::SeqCst);
    let status = client.get_quote("SEA").await.unwrap_err();
    let pushback = status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .map(|v| v.to_str())
        .transpose()?;
    println!(
        "  {:?} {:?} (from the breaker), pushback {pushback:?} ms",
        status.code(),
        status.message()
    );
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "the circuit breaker is open");
    assert!(pushback.is_some());
    let source = std::error::Error::source(&status).ok_or("a status with its source")?;
    assert!(source.is::<CircuitOpen>());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        served,
        "the server was spared"
    );

    serving.abort();
    Ok(())
}
