//! Run with: cargo run -p seawall-examples --example quickstart
//!
//! Serves an axum app on a loopback port, sends it a few requests and prints
//! what came back, then exits. The app shows the shape every seawall stack
//! has: layers that may refuse or fail a request, under
//! `RejectionResponseLayer`, which turns any of those errors into a proper
//! HTTP answer (status, `Retry-After`, problem+json body), so the stack
//! mounts on the router with no `HandleErrorLayer`.

use std::time::Duration;

use axum::{routing::get, Router};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use seawall::ServiceBuilderExt;
use tower::ServiceBuilder;

async fn fast() -> &'static str {
    "fast answer\n"
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_millis(300)).await;
    "slow answer\n"
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let app = Router::new()
        .route("/fast", get(fast))
        .route("/slow", get(slow))
        .layer(
            ServiceBuilder::new()
                .rejection_response()
                .timeout(Duration::from_millis(100)),
        );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    println!("serving on http://{addr}");

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for path in ["/fast", "/slow"] {
        let req = Request::get(format!("http://{addr}{path}")).body(Full::new(Bytes::new()))?;
        let res = client.request(req).await?;
        let status = res.status();
        let content_type = res
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let body = res.into_body().collect().await?.to_bytes();
        println!(
            "GET {path} -> {status} ({content_type}) {}",
            String::from_utf8_lossy(&body).trim_end()
        );
    }

    server.abort();
    Ok(())
}
