//! Run with: cargo run -p seawall-examples --example retry
//!
//! An HTTP client that retries safely. A loopback axum server answers
//! `503 Service Unavailable` (with `Retry-After: 0`) to the first two
//! attempts of every order, then `201 Created`. The client is hyper's, under
//! a `JitterRetryLayer` in HTTP mode:
//!
//! - a POST carrying an `Idempotency-Key` is retried, its body buffered and
//!   sent again byte for byte;
//! - a POST without a key is sent once: it may have had its effect already;
//! - every retry carries its number (the `Attempt` extension, read with
//!   `Attempt::of` and turned into an `x-attempt` header here so the server
//!   can print it);
//! - retry events are printed as they happen.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use seawall::core::event::FnListener;
use seawall::retry::{Attempt, Backoff, JitterRetryLayer, RetryEvent};
use seawall::BoxError;
use tower::{Service, ServiceBuilder, ServiceExt};

/// Fails the first two attempts of each order with a 503.
async fn orders(
    State(hits): State<Arc<AtomicU32>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let n = hits.fetch_add(1, Ordering::SeqCst) % 3;
    let attempt = headers
        .get("x-attempt")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?");
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    println!(
        "  server: attempt {attempt}, key {key}, body {}",
        String::from_utf8_lossy(&body)
    );
    if n < 2 {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "0")],
            "busy, try again\n".into(),
        )
    } else {
        (
            StatusCode::CREATED,
            [("retry-after", "0")],
            format!("created {}\n", String::from_utf8_lossy(&body)),
        )
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let hits = Arc::new(AtomicU32::new(0));
    let app = Router::new()
        .route("/orders", post(orders))
        .with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let retry = JitterRetryLayer::builder()
        .http()
        .name("orders-client")
        .max_attempts(4)
        .backoff(Backoff::exponential(Duration::from_millis(20)))
        .max_delay(Duration::from_millis(500))
        .deadline(Duration::from_secs(2))
        .listener(FnListener::new(|e: &RetryEvent| {
            println!("  event:  {e:?}");
        }))
        .build()?;
    // No body type to name: below `.http()` requests carry a
    // `ReplayBody<Full<Bytes>>`, and the client infers it. (A client already
    // built for `Full<Bytes>` fits `.replay(HttpReplay::new().original_body())`.)
    let client = Client::builder(TokioExecutor::new()).build_http();
    let mut svc = ServiceBuilder::new()
        .layer(retry)
        // Below the retry layer, each retry's number is in its extensions.
        .map_request(|mut req: Request<_>| {
            let n = Attempt::of(&req).get();
            req.headers_mut().insert("x-attempt", HeaderValue::from(n));
            req
        })
        .service(client);

    let url = format!("http://{addr}/orders");
    let order = Bytes::from_static(br#"{"sku":"seawall","qty":1}"#);

    println!("POST with Idempotency-Key (retried):");
    let req = Request::post(&url)
        .header("idempotency-key", "order-42")
        .body(Full::new(order.clone()))?;
    let res = svc.ready().await?.call(req).await?;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    println!("  client: {status} {}", String::from_utf8_lossy(&body));

    println!("POST without a key (sent once):");
    let req = Request::post(&url).body(Full::new(order))?;
    let res = svc.ready().await?.call(req).await?;
    println!("  client: {}", res.status());

    server.abort();
    Ok(())
}
