//! Run with: cargo run -p seawall-examples --example idempotency
//!
//! Serves a "create charge" endpoint behind `IdempotencyLayer` on a loopback
//! port, then plays a client that retries: the same request three times at
//! once, a retry after success, and a key reused for a different charge.
//! The charge is made once; repeats get the stored answer or a 409, and the
//! reused key gets a 422. Prints each answer and exits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::{routing::post, Router};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use seawall::http::RejectionResponseLayer;
use seawall::idempotency::IdempotencyLayer;
use tower::ServiceBuilder;

async fn create_charge(State(charges): State<Arc<AtomicUsize>>, body: Bytes) -> String {
    let n = charges.fetch_add(1, Ordering::SeqCst) + 1;
    format!("charge ch_{n} for {}\n", String::from_utf8_lossy(&body))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let charges = Arc::new(AtomicUsize::new(0));
    let idempotency = IdempotencyLayer::builder()
        .name("charges")
        .require_key(true)
        .build()?;
    let app = Router::new()
        .route("/charges", post(create_charge))
        .with_state(charges.clone())
        .layer(
            ServiceBuilder::new()
                .layer(RejectionResponseLayer::new())
                .layer(idempotency),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let send = |key: &'static str, amount: &'static str| {
        let client = client.clone();
        async move {
            let req = Request::post(format!("http://{addr}/charges"))
                .header("idempotency-key", key)
                .body(Full::new(Bytes::from(amount)))?;
            let res = client.request(req).await?;
            let status = res.status();
            let replayed = res.headers().contains_key("idempotent-replayed");
            let body = res.into_body().collect().await?.to_bytes();
            println!(
                "key {key:<12} amount {amount:<4} -> {status}{} {}",
                if replayed { " (replayed)" } else { "" },
                String::from_utf8_lossy(&body).trim_end()
            );
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(status)
        }
    };

    println!("three concurrent attempts of the same charge:");
    let (a, b, c) = tokio::join!(
        send("\"order-7\"", "100"),
        send("\"order-7\"", "100"),
        send("\"order-7\"", "100")
    );
    a?;
    b?;
    c?;
    println!("a retry after it completed:");
    send("\"order-7\"", "100").await?;
    println!("the same key for a different charge:");
    send("\"order-7\"", "250").await?;
    println!("no key on a route that requires one:");
    let req = Request::post(format!("http://{addr}/charges")).body(Full::new(Bytes::from("5")))?;
    println!("  -> {}", client.request(req).await?.status());

    println!("charges made: {}", charges.load(Ordering::SeqCst));
    server.abort();
    Ok(())
}
