//! Run with: cargo run -p seawall-examples --example http_client
//!
//! hyper-util's client under seawall's HTTP client preset,
//! `seawall::stack::http_client()` (total timeout, jittered retries under a
//! budget, a circuit breaker, an attempt timeout), calling a flaky axum
//! upstream on loopback.
//!
//! The client is wrapped as it is: no body conversion, no error mapping.
//! Below the preset's retry layer the client receives
//! `Request<ReplayBody<Full<Bytes>>>` (the buffered body, replayed on each
//! attempt) and its type is inferred.
//!
//! - While the upstream fails one attempt in two, every GET succeeds on a
//!   retry.
//! - When it fails every attempt, the breaker opens and calls fail fast
//!   with `CircuitOpen`, without reaching the upstream.
//!
//! The example checks each of these and stops by itself.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use seawall::circuit_breaker::{CircuitOpen, State};
use seawall::{stack, BoxError};
use tower::{Service, ServiceBuilder, ServiceExt};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    run().await
}

/// Starts the upstream, calls it through the preset and checks the result.
pub(crate) async fn run() -> Result<(), BoxError> {
    let hits = Arc::new(AtomicU32::new(0));
    let down = Arc::new(AtomicBool::new(false));
    let upstream = {
        let hits = hits.clone();
        let down = down.clone();
        Router::new().route(
            "/stock",
            get(move || {
                // Every other attempt fails while flaky; all fail while down.
                let n = hits.fetch_add(1, Ordering::SeqCst);
                let fail = down.load(Ordering::SeqCst) || n.is_multiple_of(2);
                async move {
                    if fail {
                        (StatusCode::SERVICE_UNAVAILABLE, "try again")
                    } else {
                        (StatusCode::OK, "12 in stock")
                    }
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let serving = tokio::spawn(async move { axum::serve(listener, upstream).await });

    let preset = stack::http_client()
        .name("stock")
        .total_timeout(Duration::from_secs(5))
        .attempt_timeout(Duration::from_secs(1))
        .max_attempts(3)
        .base_delay(Duration::from_millis(10))
        .minimum_calls(6)
        .failure_rate(0.6)
        .open_duration(Duration::from_secs(60))
        .build()?;
    let breaker = preset.breaker();
    let mut client = ServiceBuilder::new()
        .layer(preset)
        .service(Client::builder(TokioExecutor::new()).build_http());
    let url = format!("http://{addr}/stock");

    println!("a flaky upstream: each GET succeeds on a retry");
    for _ in 0..3 {
        let req = Request::get(&url).body(Full::new(Bytes::new()))?;
        let res = client.ready().await?.call(req).await?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        println!("  {status} {}", String::from_utf8_lossy(&body));
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 6, "one retry per GET");
    assert_eq!(breaker.state(), State::Closed);

    println!("the upstream goes down: the breaker opens and calls fail fast");
    down.store(true, Ordering::SeqCst);
    let mut fast_failures = 0;
    for _ in 0..4 {
        let req = Request::get(&url).body(Full::new(Bytes::new()))?;
        match client.ready().await?.call(req).await {
            Ok(res) => println!("  {} (after the retries)", res.status()),
            Err(err) if err.is::<CircuitOpen>() => {
                fast_failures += 1;
                println!("  refused: {err}");
            }
            Err(err) => return Err(err),
        }
    }
    assert_eq!(breaker.state(), State::Open);
    assert!(fast_failures > 0, "an open breaker refuses");
    let before = hits.load(Ordering::SeqCst);
    let req = Request::get(&url).body(Full::new(Bytes::new()))?;
    let err = client.ready().await?.call(req).await.unwrap_err();
    assert!(err.is::<CircuitOpen>(), "{err}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        before,
        "the upstream was spared"
    );

    serving.abort();
    Ok(())
}
