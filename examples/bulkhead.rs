//! Run with: cargo run -p seawall-examples --example bulkhead
//!
//! Serves an axum app whose slow `/report` route sits behind a bulkhead of
//! two permits and a queue of two, with priorities read from an
//! `x-priority` header. Eight requests arrive a moment apart: two run, two
//! wait, later ones find the queue full and are refused at once with `503`
//! and `Retry-After`, and a late critical request takes the queue place of a
//! waiting normal one. The `/health` route has no bulkhead and keeps
//! answering. Prints each answer and the pool's counters, then exits.

use std::time::Duration;

use axum::{routing::get, Router};
use bytes::Bytes;
use http::{HeaderName, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use seawall::bulkhead::{BulkheadLayer, HeaderPriority};
use seawall::ServiceBuilderExt;
use tower::ServiceBuilder;

async fn report() -> &'static str {
    tokio::time::sleep(Duration::from_millis(100)).await;
    "report ready\n"
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let bulkhead = BulkheadLayer::builder()
        .name("reports")
        .max_concurrent(2)
        .max_queue(2)
        .max_wait(Duration::from_millis(500))
        .priority(HeaderPriority::new(HeaderName::from_static("x-priority")))
        .build()?;
    let handle = bulkhead.handle();

    let app = Router::new()
        .route("/report", get(report))
        .layer(ServiceBuilder::new().rejection_response().layer(bulkhead))
        .route("/health", get(|| async { "ok\n" }));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    println!("serving on http://{addr}");

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let classes = [
        "critical",
        "normal",
        "critical",
        "normal",
        "sheddable",
        "sheddable",
        "normal",
        "critical",
    ];
    let mut calls = Vec::new();
    for (i, class) in classes.into_iter().enumerate() {
        let client = client.clone();
        let req = Request::get(format!("http://{addr}/report"))
            .header("x-priority", class)
            .body(Full::new(Bytes::new()))?;
        calls.push(tokio::spawn(async move {
            let res = client.request(req).await?;
            let status = res.status();
            let retry_after = res
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(|v| format!(" (Retry-After: {v})"))
                .unwrap_or_default();
            res.into_body().collect().await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(format!(
                "request {i} [{class}] -> {status}{retry_after}"
            ))
        }));
        // Arrive in order, a moment apart.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    let health = client
        .request(Request::get(format!("http://{addr}/health")).body(Full::new(Bytes::new()))?)
        .await?;
    println!("GET /health during the burst -> {}", health.status());

    for call in calls {
        println!("{}", call.await??);
    }
    println!(
        "pool {:?}: limit {}, in flight {}, refused {} (full {}, shed {}, timed out {})",
        handle.name(),
        handle.limit(),
        handle.in_flight(),
        handle.rejected(),
        handle.rejected_full(),
        handle.rejected_shed(),
        handle.rejected_timeout(),
    );

    server.abort();
    Ok(())
}
