//! Run with: cargo run -p seawall-examples --example quickstart
//!
//! A small shop on a loopback port, with seawall's layers where a real
//! service would put them, driven by a client for a few seconds; it prints
//! what happened and exits.
//!
//! - `GET /recommendations/{user}` calls a recommender that goes down
//!   halfway. Under `rejection_response()` (errors become HTTP answers), the
//!   stack is: a fallback (last good answer per user, else `[]`, marked
//!   `seawall-degraded`), a circuit breaker (trips at 50% failures of the
//!   last 10 calls, so the recommender stops being called), a bulkhead (at
//!   most 16 at once) and a timeout. The page keeps answering throughout.
//! - `POST /orders` is made safe to retry by an `IdempotencyLayer`: the
//!   client, under a `JitterRetryLayer`, retries a transient 503 with the
//!   same `Idempotency-Key`, and a repeat of the whole request is answered
//!   from the stored response: one order, however many attempts.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use seawall::bulkhead::BulkheadLayer;
use seawall::circuit_breaker::CircuitBreakerLayer;
use seawall::fallback::{FallbackLayer, LastKnownGood, RequestInfo};
use seawall::idempotency::{IdempotencyLayer, KeepPolicy};
use seawall::retry::{Backoff, JitterRetryLayer, ReplayBody};
use seawall::{BoxError, HttpClassifier, ServiceBuilderExt};
use tower::{Service, ServiceBuilder, ServiceExt};

#[derive(Clone, Default)]
struct Shop {
    recommender_down: Arc<AtomicBool>,
    recommender_calls: Arc<AtomicUsize>,
    order_attempts: Arc<AtomicUsize>,
    orders_placed: Arc<AtomicUsize>,
}

async fn recommendations(
    State(shop): State<Shop>,
    Path(user): Path<String>,
) -> (StatusCode, String) {
    shop.recommender_calls.fetch_add(1, Ordering::SeqCst);
    if shop.recommender_down.load(Ordering::SeqCst) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "recommender unavailable".into(),
        )
    } else {
        (StatusCode::OK, format!("[\"socks for {user}\"]"))
    }
}

/// The first attempt of every order meets a transient failure.
async fn orders(State(shop): State<Shop>, body: Bytes) -> (StatusCode, String) {
    if shop.order_attempts.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "payment gateway busy".into(),
        );
    }
    let n = shop.orders_placed.fetch_add(1, Ordering::SeqCst) + 1;
    (
        StatusCode::CREATED,
        format!("order #{n}: {}", String::from_utf8_lossy(&body)),
    )
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let shop = Shop::default();

    let breaker = CircuitBreakerLayer::builder()
        .name("recommender")
        .classifier(HttpClassifier::new())
        .count_window(10)
        .minimum_calls(5)
        .failure_rate_threshold(0.5)
        .open_duration(Duration::from_millis(300))
        .build()?;
    let breaker_state = breaker.handle();
    let fallback = FallbackLayer::http()
        .name("recommendations")
        .last_known_good(
            LastKnownGood::new()
                .capacity(10_000)
                .max_staleness(Duration::from_secs(600)),
            |info: &RequestInfo| {
                (info.method() == Method::GET).then(|| info.uri().path().to_owned())
            },
        )
        .value(Response::new(Bytes::from_static(b"[]")))
        .build()?;
    let recommendation_stack = ServiceBuilder::new()
        .rejection_response()
        .fallback(fallback)
        .circuit_breaker(breaker)
        .bulkhead(
            BulkheadLayer::builder()
                .name("recommender")
                .max_concurrent(16)
                .max_queue(16)
                .build()?,
        )
        .timeout(Duration::from_millis(250));

    let idempotency = IdempotencyLayer::builder()
        .name("orders")
        .keep(KeepPolicy::ReleaseServerErrors)
        .build()?;
    let order_stack = ServiceBuilder::new()
        .rejection_response()
        .idempotency(idempotency);

    let app = Router::new()
        .route(
            "/recommendations/{user}",
            get(recommendations).layer(recommendation_stack),
        )
        .route("/orders", post(orders).layer(order_stack))
        .with_state(shop.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    println!("shop serving on http://{addr}\n");

    let http = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    let retry = JitterRetryLayer::builder()
        .http()
        .name("shop-client")
        .max_attempts(3)
        .backoff(Backoff::exponential(Duration::from_millis(20)))
        .max_delay(Duration::from_millis(200))
        .deadline(Duration::from_secs(2))
        .build()?;
    let mut client = ServiceBuilder::new().jitter_retry(retry).service(http);

    let mut get = async |user: &str| -> Result<(), BoxError> {
        let req =
            Request::get(format!("http://{addr}/recommendations/{user}")).body(Full::default())?;
        let res = client.ready().await?.call(req).await?;
        let degraded = res
            .headers()
            .get("seawall-degraded")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        println!(
            "  GET  /recommendations/{user:<4} -> {status}  degraded: {degraded:<15}  breaker: {:<9} {}",
            breaker_state.state().to_string(),
            String::from_utf8_lossy(&body)
        );
        Ok(())
    };

    println!("The recommender is healthy:");
    get("ana").await?;
    println!("It goes down; the page answers from the last good response, then the breaker opens:");
    shop.recommender_down.store(true, Ordering::SeqCst);
    for user in ["ana", "bob", "ana", "bob", "ana", "bob", "ana"] {
        get(user).await?;
    }
    println!("It recovers; after the open duration one probe closes the breaker:");
    shop.recommender_down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(350)).await;
    get("bob").await?;
    get("ana").await?;
    println!(
        "10 page views, all answered; the recommender was called {} times",
        shop.recommender_calls.load(Ordering::SeqCst)
    );

    println!("\nAn order, retried by the client after a transient 503, then sent again whole:");
    for _ in 0..2 {
        let req = Request::post(format!("http://{addr}/orders"))
            .header("idempotency-key", "\"cart-7\"")
            .body(Full::new(Bytes::from_static(b"2 x socks")))?;
        let res = client.ready().await?.call(req).await?;
        let replayed = res.headers().contains_key("idempotent-replayed");
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        println!(
            "  POST /orders -> {status}  replayed: {replayed:<5}  {}",
            String::from_utf8_lossy(&body)
        );
    }
    println!(
        "\nhandler attempts: {}, orders placed: {}",
        shop.order_attempts.load(Ordering::SeqCst),
        shop.orders_placed.load(Ordering::SeqCst)
    );

    server.abort();
    Ok(())
}
