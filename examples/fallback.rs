//! Run with: cargo run -p seawall-examples --example fallback
//!
//! A shop page calls a recommendations service that goes down halfway. The
//! fallback layer answers from the last good response per user, then from a
//! static empty list, and marks each substitute with `seawall-degraded`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use seawall::fallback::{FallbackLayer, LastKnownGood, RequestInfo};
use seawall::http::RejectionResponseLayer;
use seawall::BoxError;
use tower::ServiceBuilder;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let down = Arc::new(AtomicBool::new(false));
    let recommender_down = down.clone();
    let recommendations = Router::new().route(
        "/recs/{user}",
        get(move |Path(user): Path<String>| {
            let down = recommender_down.load(Ordering::SeqCst);
            async move {
                if down {
                    (StatusCode::SERVICE_UNAVAILABLE, String::from("overloaded"))
                } else {
                    (StatusCode::OK, format!("[\"socks for {user}\"]"))
                }
            }
        }),
    );

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
    let app = recommendations.layer(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new())
            .layer(fallback),
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let fetch = |user: &'static str| {
        let client = client.clone();
        async move {
            let req = Request::get(format!("http://{addr}/recs/{user}")).body(Full::default())?;
            let res = client.request(req).await?;
            let degraded = res
                .headers()
                .get("seawall-degraded")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            let status = res.status();
            let body = res.into_body().collect().await?.to_bytes();
            println!(
                "GET /recs/{user:<5} -> {status} degraded={degraded:<16} {}",
                String::from_utf8_lossy(&body)
            );
            Ok::<_, BoxError>(())
        }
    };

    fetch("ana").await?;
    println!("-- the recommender goes down --");
    down.store(true, Ordering::SeqCst);
    fetch("ana").await?;
    fetch("bob").await?;

    server.abort();
    Ok(())
}
