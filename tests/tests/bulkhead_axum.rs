//! The bulkhead on a real axum server over loopback: two routes share one
//! pool, refusals reach the client as `503` with `Retry-After` and a
//! problem+json body, other routes are unaffected, and capacity comes back
//! when calls finish.

use std::sync::Arc;
use std::time::Duration;

use axum::{routing::get, Router};
use http::{header, StatusCode};
use seawall::bulkhead::{BulkheadLayer, Pool};
use seawall::ServiceBuilderExt;
use seawall_tests::{TestClient, TestServer};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::ServiceBuilder;

/// Checks `done` every 5 ms; fails after 10 s instead of hanging the run.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn refusals_become_503_with_retry_after_and_capacity_returns() {
    let release = Arc::new(Notify::new());
    let slow = {
        let release = release.clone();
        move || {
            let release = release.clone();
            async move {
                release.notified().await;
                "done"
            }
        }
    };
    let db = Pool::builder()
        .name("db")
        .max_concurrent(2)
        .retry_after(Duration::from_secs(3))
        .build()
        .unwrap();
    let handle = db.handle();
    let app = Router::new()
        .route("/users", get(slow.clone()))
        .route("/orders", get(slow))
        .layer(
            ServiceBuilder::new()
                .rejection_response()
                .layer(BulkheadLayer::new(db)),
        )
        .route("/health", get(|| async { "ok" }));
    let server = TestServer::start(app).await.unwrap();
    let client = TestClient::new();

    let users = tokio::spawn({
        let (client, url) = (client.clone(), server.url("/users"));
        async move { client.get(&url).await.unwrap() }
    });
    let orders = tokio::spawn({
        let (client, url) = (client.clone(), server.url("/orders"));
        async move { client.get(&url).await.unwrap() }
    });
    // Both requests hold the two permits of the shared pool.
    wait_until("both permits are taken", || handle.in_flight() == 2).await;

    let refused = client.get(&server.url("/orders")).await.unwrap();
    assert_eq!(refused.head.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.head.headers[header::RETRY_AFTER], "3");
    assert_eq!(
        refused.head.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let body: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(body["status"], 503);
    assert_eq!(handle.rejected_full(), 1);

    let health = client.get(&server.url("/health")).await.unwrap();
    assert_eq!(
        health.head.status,
        StatusCode::OK,
        "other routes are unaffected"
    );

    // Let the held requests finish; the permits come back. `notify_waiters`
    // only reaches handlers already waiting, hence the repeats.
    wait_until("the permits come back", || {
        release.notify_waiters();
        handle.in_flight() == 0
    })
    .await;
    assert_eq!(users.await.unwrap().head.status, StatusCode::OK);
    assert_eq!(orders.await.unwrap().head.status, StatusCode::OK);
    let again = tokio::spawn({
        let (client, url) = (client.clone(), server.url("/users"));
        async move { client.get(&url).await.unwrap() }
    });
    wait_until("the permit is taken again", || handle.in_flight() == 1).await;
    // The permit is taken before the handler waits: one notification could
    // come too early and be lost.
    wait_until("the call finishes", || {
        release.notify_waiters();
        again.is_finished()
    })
    .await;
    assert_eq!(again.await.unwrap().head.status, StatusCode::OK);
    assert_eq!(handle.in_flight(), 0);
}
