//! Run with: cargo run -p seawall-examples --example idempotency
//!
//! Serves a "create charge" endpoint behind `IdempotencyLayer` on a loopback
//! port, then plays clients that retry: Alice sends the same request three
//! times at once, retries after success, and reuses her key for a different
//! charge; Bob sends Alice's key value with his own credentials. Alice's
//! charge is made once (repeats get the stored answer or a 409, the reused
//! key a 422); Bob's request runs as his own, since records are scoped by
//! the caller's credentials. Keys are bare tokens, as Stripe clients send
//! them. Prints each answer and exits.

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

async fn create_charge(
    State(charges): State<Arc<AtomicUsize>>,
    headers: http::HeaderMap,
    body: Bytes,
) -> String {
    let n = charges.fetch_add(1, Ordering::SeqCst) + 1;
    let who = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous");
    format!(
        "charge ch_{n} of {} for {who}\n",
        String::from_utf8_lossy(&body)
    )
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
    let send_as = |who: &'static str, key: &'static str, amount: &'static str| {
        let client = client.clone();
        async move {
            let req = Request::post(format!("http://{addr}/charges"))
                .header("authorization", format!("Bearer {who}"))
                .header("idempotency-key", key)
                .body(Full::new(Bytes::from(amount)))?;
            let res = client.request(req).await?;
            let status = res.status();
            let replayed = res.headers().contains_key("idempotent-replayed");
            let body = res.into_body().collect().await?.to_bytes();
            println!(
                "{who:<5} key {key:<8} amount {amount:<4} -> {status}{} {}",
                if replayed { " (replayed)" } else { "" },
                String::from_utf8_lossy(&body).trim_end()
            );
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(status)
        }
    };

    let send = |key, amount| send_as("alice", key, amount);
    println!("three concurrent attempts of the same charge:");
    let (a, b, c) = tokio::join!(
        send("order-7", "100"),
        send("order-7", "100"),
        send("order-7", "100")
    );
    a?;
    b?;
    c?;
    println!("a retry after it completed:");
    send("order-7", "100").await?;
    println!("the same key for a different charge:");
    send("order-7", "250").await?;
    println!("another caller with the same key value (its own record):");
    send_as("bob", "order-7", "100").await?;
    println!("no key on a route that requires one:");
    let req = Request::post(format!("http://{addr}/charges")).body(Full::new(Bytes::from("5")))?;
    println!("  -> {}", client.request(req).await?.status());

    println!("charges made: {}", charges.load(Ordering::SeqCst));
    server.abort();
    Ok(())
}
