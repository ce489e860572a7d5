//! `FallbackLayer` on a real axum server over loopback: a failing handler's
//! answers are replaced by the last good body or a static value, marked for
//! the client; when no tier answers, the client sees the original failure.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use seawall::fallback::{FallbackLayer, LastKnownGood, RequestInfo};
use seawall::http::RejectionResponseLayer;
use seawall::BoxError;
use seawall_tests::{TestClient, TestServer};
use tower::ServiceBuilder;

/// A recommendations route that answers 503 while `down` is set.
fn recommendations(down: Arc<AtomicBool>) -> Router {
    Router::new().route(
        "/recs/{user}",
        get(move |Path(user): Path<String>| {
            let down = down.load(Ordering::SeqCst);
            async move {
                if down {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "recommender down".to_owned(),
                    )
                } else {
                    (StatusCode::OK, format!("[\"for {user}\"]"))
                }
            }
        }),
    )
}

#[tokio::test]
async fn last_known_good_then_static_value_over_http() -> Result<(), BoxError> {
    let down = Arc::new(AtomicBool::new(false));
    let fallback = FallbackLayer::http()
        .name("recommendations")
        .last_known_good(LastKnownGood::new(), |info: &RequestInfo| {
            (info.method() == Method::GET).then(|| info.uri().path().to_owned())
        })
        .value(Response::new(Bytes::from_static(b"[]")))
        .build()?;
    let router = recommendations(down.clone()).layer(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new())
            .layer(fallback),
    );
    let server = TestServer::start(router).await?;
    let client = TestClient::new();

    let fresh = client.get(&server.url("/recs/ana")).await?;
    assert_eq!(fresh.head.status, StatusCode::OK);
    assert!(fresh.head.headers.get("seawall-degraded").is_none());
    assert_eq!(fresh.body, "[\"for ana\"]");

    down.store(true, Ordering::SeqCst);
    let stale = client.get(&server.url("/recs/ana")).await?;
    assert_eq!(stale.head.status, StatusCode::OK);
    assert_eq!(stale.head.headers["seawall-degraded"], "last-known-good");
    assert!(stale.head.headers.contains_key("age"));
    assert_eq!(stale.body, "[\"for ana\"]");

    let never_seen = client.get(&server.url("/recs/bob")).await?;
    assert_eq!(never_seen.head.status, StatusCode::OK);
    assert_eq!(never_seen.head.headers["seawall-degraded"], "static");
    assert_eq!(never_seen.body, "[]");
    Ok(())
}

#[tokio::test]
async fn exhausted_tiers_return_the_original_failure_over_http() -> Result<(), BoxError> {
    let down = Arc::new(AtomicBool::new(true));
    let fallback = FallbackLayer::http()
        .function(|info: &RequestInfo, _| {
            (info.uri().path() == "/recs/vip")
                .then(|| Response::new(Bytes::from_static(b"[\"curated\"]")))
        })
        .build()?;
    let router = recommendations(down).layer(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new())
            .layer(fallback),
    );
    let server = TestServer::start(router).await?;
    let client = TestClient::new();

    let vip = client.get(&server.url("/recs/vip")).await?;
    assert_eq!(vip.head.headers["seawall-degraded"], "function");
    assert_eq!(vip.body, "[\"curated\"]");

    let other = client.get(&server.url("/recs/joe")).await?;
    assert_eq!(other.head.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(other.head.headers.get("seawall-degraded").is_none());
    assert_eq!(other.body, "recommender down");
    Ok(())
}
