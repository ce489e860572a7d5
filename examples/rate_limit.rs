//! Run with: cargo run -p seawall-examples --example rate_limit
//!
//! Serves `/search` behind `RateLimitLayer`, keyed by the client's IP
//! address (axum's `ConnectInfo`): 2 requests a second per IP with bursts of
//! 3, and 100 a second for everyone together, with the IETF `RateLimit`
//! fields on every answer. A client on 127.0.0.1 sends five requests at
//! once: three pass, two get `429` with `Retry-After`. A client on
//! 127.0.0.2 has a bucket of its own and passes. The first client waits
//! the `Retry-After` it was given and passes again. Prints each answer and
//! exits.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::{routing::get, Router};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use seawall::http::RejectionResponseLayer;
use seawall::rate_limit::{key, Limit, Quota, RateLimitLayer};
use tower::ServiceBuilder;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client whose connections come from `from`.
fn client_from(from: IpAddr) -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(from));
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Sends one request and prints the answer; returns the `Retry-After`.
async fn search(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    who: &str,
) -> Result<Option<u64>, BoxError> {
    let req = Request::get(format!("http://{addr}/search?q=tea")).body(Full::new(Bytes::new()))?;
    let res = client.request(req).await?;
    let status = res.status();
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let (ratelimit, retry_after) = (header("ratelimit"), header("retry-after"));
    let body = res.into_body().collect().await?.to_bytes();
    println!(
        "{who}: {status}  RateLimit: {ratelimit}  Retry-After: {retry_after}  {}",
        String::from_utf8_lossy(&body).lines().next().unwrap_or("")
    );
    Ok(retry_after.parse().ok())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let limit = RateLimitLayer::builder()
        .name("search")
        .limit(Limit::per_key(
            "ip",
            Quota::per_second(2).burst(3),
            key::peer_ip,
        ))
        .limit(Limit::global("all", Quota::per_second(100)))
        .headers()
        .build()?;
    println!("{limit:?}");
    let app = Router::new()
        .route("/search", get(|| async { "results for tea" }))
        .layer(
            ServiceBuilder::new()
                .layer(RejectionResponseLayer::new())
                .layer(limit),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });

    let alice = client_from(IpAddr::from([127, 0, 0, 1]));
    println!("127.0.0.1 sends five requests at once:");
    let mut retry_after = None;
    for _ in 0..5 {
        retry_after = search(&alice, addr, "127.0.0.1").await?.or(retry_after);
    }

    println!("127.0.0.2 has a bucket of its own:");
    let bob = client_from(IpAddr::from([127, 0, 0, 2]));
    match search(&bob, addr, "127.0.0.2").await {
        Ok(_) => {}
        // Some systems route only 127.0.0.1 on loopback.
        Err(e) => println!("127.0.0.2: cannot connect from this address here ({e})"),
    }

    let wait = retry_after.unwrap_or(1);
    println!("127.0.0.1 waits the {wait} s it was told, then asks again:");
    tokio::time::sleep(Duration::from_secs(wait)).await;
    search(&alice, addr, "127.0.0.1").await?;

    server.abort();
    Ok(())
}
