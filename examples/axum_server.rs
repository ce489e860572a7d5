//! Run with: cargo run -p seawall-examples --example axum_server
//!
//! An axum server protected by seawall, exercised by a hyper client in the
//! same process over loopback:
//!
//! - the whole router sits under the server preset, `seawall::stack::server()`
//!   (problem+json refusals, a bulkhead of 2 requests with no queue, a
//!   request timeout), so a third concurrent request is refused with `503`;
//! - the `/price` route has a circuit breaker on its dependency and a
//!   fallback above it: while the dependency fails, callers get a marked,
//!   degraded answer, and once the breaker is open the dependency is not
//!   called at all;
//! - `/health` and `/ready` report the breaker and the bulkhead from a
//!   `HealthRegistry`; readiness answers `503` while the critical breaker
//!   is open.
//!
//! The example checks each of these and stops by itself.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use seawall::circuit_breaker::{CircuitBreakerLayer, State};
use seawall::fallback::FallbackLayer;
use seawall::health::HealthRegistry;
use seawall::{
    stack, BoxError, BulkheadHandle, CircuitBreakerHandle, HttpClassifier, ServiceBuilderExt,
};
use tokio::sync::watch;
use tower::ServiceBuilder;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Sends a GET and reads the whole answer.
async fn get_url(
    client: &HttpClient,
    url: &str,
) -> Result<(StatusCode, HeaderMap, String), BoxError> {
    let res = client
        .request(Request::get(url).body(Empty::new())?)
        .await?;
    let (head, body) = res.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((
        head.status,
        head.headers,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    run().await
}

/// Starts the server, sends it traffic and checks what seawall did.
pub(crate) async fn run() -> Result<(), BoxError> {
    // The pricing dependency: answers 502 while `down` is set.
    let down = Arc::new(AtomicBool::new(false));
    let dependency_calls = Arc::new(AtomicU32::new(0));
    // `/slow` holds its request until `release` turns true.
    let (release, held) = watch::channel(false);

    let server = stack::server()
        .name("api")
        .max_concurrent(2)
        .timeout(Duration::from_secs(5))
        .build()?;
    let bulkhead: BulkheadHandle = server.bulkhead();

    let breaker = CircuitBreakerLayer::builder()
        .name("prices")
        .classifier(HttpClassifier::new())
        .count_window(4)
        .minimum_calls(4)
        .failure_rate_threshold(0.5)
        .open_duration(Duration::from_secs(60))
        .build()?;
    let prices: CircuitBreakerHandle = breaker.handle();
    let fallback = FallbackLayer::http()
        .name("prices")
        .value(Response::new(Bytes::from_static(
            br#"{"price":null,"note":"prices are unavailable"}"#,
        )))
        .build()?;

    let health = HealthRegistry::new();
    health.register_breaker("prices", prices.clone()).critical();
    health.register_bulkhead("api", bulkhead.clone());

    let price = {
        let down = down.clone();
        let calls = dependency_calls.clone();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let down = down.load(Ordering::SeqCst);
            async move {
                if down {
                    (StatusCode::BAD_GATEWAY, "pricing service down".to_owned())
                } else {
                    (StatusCode::OK, r#"{"price":42}"#.to_owned())
                }
            }
        }
    };
    let slow = move || {
        let mut held = held.clone();
        async move {
            let _ = held.wait_for(|released| *released).await;
            "done"
        }
    };
    let app = Router::new()
        .route(
            "/price",
            get(price).layer(
                ServiceBuilder::new()
                    .rejection_response()
                    .fallback(fallback)
                    .circuit_breaker(breaker),
            ),
        )
        .route("/slow", get(slow))
        // The preset covers the routes above; probes stay outside it so a
        // busy server still answers them.
        .layer(server)
        .route_service("/health", health.health_service())
        .route_service("/ready", health.readiness_service());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let serving = tokio::spawn(async move { axum::serve(listener, app).await });
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let url = |path: &str| format!("http://{addr}{path}");

    println!("a healthy dependency:");
    let (status, _, body) = get_url(&client, &url("/price")).await?;
    println!("  GET /price -> {status} {body}");
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = get_url(&client, &url("/ready")).await?;
    println!("  GET /ready -> {status} {body}");
    assert_eq!(status, StatusCode::OK);

    println!("the bulkhead: two requests in flight, a third is refused:");
    let slow_calls: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            let url = url("/slow");
            tokio::spawn(async move { get_url(&client, &url).await })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(5), async {
        while bulkhead.in_flight() < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await?;
    let (status, headers, body) = get_url(&client, &url("/price")).await?;
    println!("  GET /price -> {status} {body}");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert!(body.contains("bulkhead_full"), "{body}");
    release.send_replace(true);
    for call in slow_calls {
        let (status, _, body) = call.await??;
        println!("  GET /slow -> {status} {body}");
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(bulkhead.rejected(), 1);

    println!("the dependency fails: the fallback answers, the breaker opens:");
    down.store(true, Ordering::SeqCst);
    for _ in 0..4 {
        let (status, headers, body) = get_url(&client, &url("/price")).await?;
        println!(
            "  GET /price -> {status} ({}) {body}",
            headers["seawall-degraded"].to_str()?
        );
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["seawall-degraded"], "static");
    }
    assert_eq!(prices.state(), State::Open);
    let before = dependency_calls.load(Ordering::SeqCst);
    let (status, headers, body) = get_url(&client, &url("/price")).await?;
    println!("  GET /price -> {status} (breaker open, dependency not called) {body}");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["seawall-degraded"], "static");
    assert_eq!(dependency_calls.load(Ordering::SeqCst), before);

    println!("health and readiness:");
    let (status, _, body) = get_url(&client, &url("/ready")).await?;
    println!("  GET /ready -> {status} {body}");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains(r#""status":"DOWN""#), "{body}");
    let (status, _, body) = get_url(&client, &url("/health")).await?;
    println!("  GET /health -> {status} {body}");
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains(r#""prices""#) && body.contains(r#""api""#),
        "{body}"
    );

    serving.abort();
    Ok(())
}
