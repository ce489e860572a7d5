//! `IdempotencyLayer` on a real axum server over loopback, under
//! `RejectionResponseLayer`: replay headers survive HTTP, and a handler that
//! panics turns into a 500 problem document while its key is freed for the
//! retry.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::Full;
use seawall::http::RejectionResponseLayer;
use seawall::idempotency::IdempotencyLayer;
use seawall_tests::{TestClient, TestServer};
use tower::ServiceBuilder;

async fn flaky(
    State(runs): State<Arc<AtomicUsize>>,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
    assert!(n != 1, "the first run crashes");
    (
        StatusCode::CREATED,
        [(header::SET_COOKIE, "session=secret")],
        format!("created on run {n}"),
    )
}

fn charge(server: &TestServer) -> Request<Full<Bytes>> {
    Request::post(server.url("/charges"))
        .header("idempotency-key", "\"order-1\"")
        .body(Full::new(Bytes::from_static(b"amount=5")))
        .expect("valid request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_is_a_500_and_the_retry_runs_then_replays() {
    let runs = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::builder().build().expect("valid settings");
    let router = Router::new()
        .route("/charges", post(flaky))
        .with_state(runs.clone())
        .layer(
            ServiceBuilder::new()
                .layer(RejectionResponseLayer::new())
                .layer(layer),
        );
    let server = TestServer::start(router).await.expect("a loopback port");
    let client = TestClient::new();

    let crashed = client.send(charge(&server)).await.expect("a response");
    assert_eq!(crashed.head.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        crashed.head.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let doc: serde_json::Value = serde_json::from_slice(&crashed.body).expect("json");
    assert_eq!(doc["kind"], "handler_panicked");

    // The claim is released by a task the panic's unwinding spawned; a retry
    // that still finds it in flight is told to come back.
    let mut retry = client.send(charge(&server)).await.expect("a response");
    for _ in 0..50 {
        if retry.head.status != StatusCode::CONFLICT {
            break;
        }
        tokio::task::yield_now().await;
        retry = client.send(charge(&server)).await.expect("a response");
    }
    assert_eq!(retry.head.status, StatusCode::CREATED);
    assert_eq!(retry.body, "created on run 2");
    assert!(retry.head.headers.get("idempotent-replayed").is_none());

    let replay = client.send(charge(&server)).await.expect("a response");
    assert_eq!(replay.head.status, StatusCode::CREATED);
    assert_eq!(replay.head.headers["idempotent-replayed"], "true");
    assert_eq!(replay.head.headers[header::CONTENT_LENGTH], "16");
    assert!(replay.head.headers.get(header::SET_COOKIE).is_none());
    assert_eq!(replay.body, "created on run 2");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}
