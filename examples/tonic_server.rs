//! Run with: cargo run -p seawall-examples --example tonic_server
//!
//! A tonic gRPC server behind a seawall bulkhead, called by a tonic client
//! in the same process over loopback.
//!
//! The bulkhead admits one call at a time and queues none. Above it,
//! `RejectionResponseLayer` (`.rejection_response()`) answers every seawall
//! refusal of a gRPC request (`content-type: application/grpc`) with a
//! trailers-only gRPC status, so while one call holds the only permit, a
//! second call reaches the client as `UNAVAILABLE` "the bulkhead is full",
//! with the bulkhead's `Retry-After` as `grpc-retry-pushback-ms`.
//!
//! The service is written by hand over a tiny protobuf message (`prost`'s
//! derive and `tonic-prost`'s codec), so no `protoc` or build script is
//! needed. The example checks what it shows and stops by itself.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Request, Response};
use seawall::bulkhead::BulkheadLayer;
use seawall::{BoxError, ServiceBuilderExt};
use tokio::sync::watch;
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
/// server side. A quote for `"SLOW"` is held until `release` turns true.
#[derive(Clone)]
struct Quotes {
    release: watch::Receiver<bool>,
    entered: watch::Sender<u32>,
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
            let handler = tower::service_fn(move |req: tonic::Request<QuoteRequest>| {
                let mut release = quotes.release.clone();
                let entered = quotes.entered.clone();
                async move {
                    let symbol = req.into_inner().symbol;
                    if symbol == "SLOW" {
                        entered.send_modify(|n| *n += 1);
                        let _ = release.wait_for(|released| *released).await;
                    }
                    Ok::<_, Status>(tonic::Response::new(QuoteReply {
                        symbol,
                        price_cents: 4_200,
                    }))
                }
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

/// Serves `Quotes` behind the bulkhead and shows a refusal reach a client.
pub(crate) async fn run() -> Result<(), BoxError> {
    let (release, released) = watch::channel(false);
    let (entered, mut slow_calls) = watch::channel(0);
    let bulkhead = BulkheadLayer::builder()
        .name("quotes")
        .max_concurrent(1)
        .max_queue(0)
        .retry_after(Duration::from_millis(250))
        .build()?;
    let server = ServiceBuilder::new()
        .rejection_response()
        .bulkhead(bulkhead)
        .service(Quotes {
            release: released,
            entered,
        });

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let serving =
        tokio::spawn(Server::builder().serve_with_incoming(server, TcpIncoming::from(listener)));
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = QuotesClient::new(channel);

    let quote = client.get_quote("SEA").await?;
    println!("GetQuote(SEA) -> {quote:?}");
    assert_eq!(quote.price_cents, 4_200);

    let mut holder = client.clone();
    let held = tokio::spawn(async move { holder.get_quote("SLOW").await });
    slow_calls.wait_for(|n| *n == 1).await?;

    let status = client.get_quote("SEA").await.unwrap_err();
    let pushback = status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .map(|v| v.to_str())
        .transpose()?;
    println!(
        "GetQuote(SEA) while the permit is held -> {:?} {:?}, pushback {pushback:?} ms",
        status.code(),
        status.message()
    );
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "the bulkhead is full");
    assert_eq!(pushback, Some("250"));

    release.send_replace(true);
    let quote = held.await??;
    println!("GetQuote(SLOW) once released -> {quote:?}");
    assert_eq!(quote.symbol, "SLOW");
    assert_eq!(client.get_quote("SEA").await?.symbol, "SEA");

    serving.abort();
    Ok(())
}
