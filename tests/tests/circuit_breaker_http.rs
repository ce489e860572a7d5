//! The circuit breaker on a real axum server over loopback: an HTTP 5xx
//! trips it, and while open a real client gets a 503 with `Retry-After` and a
//! problem+json body, without the handler running.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::{routing::get, Router};
use http::{header, StatusCode};
use seawall::circuit_breaker::{CircuitBreakerLayer, State};
use seawall::{HttpClassifier, ServiceBuilderExt};
use seawall_tests::{TestClient, TestServer};
use tower::ServiceBuilder;

#[tokio::test]
async fn http_failures_open_the_breaker_and_clients_get_503_with_retry_after() {
    let breaker = CircuitBreakerLayer::builder()
        .name("flaky")
        .classifier(HttpClassifier::new())
        .count_window(4)
        .minimum_calls(4)
        .failure_rate_threshold(0.5)
        .open_duration(Duration::from_secs(30))
        .build()
        .unwrap();
    let handle = breaker.handle();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let router = Router::new().route(
        "/flaky",
        get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { (StatusCode::INTERNAL_SERVER_ERROR, "database unreachable") }
        })
        .layer(ServiceBuilder::new().rejection_response().layer(breaker)),
    );
    let server = TestServer::start(router).await.unwrap();
    let client = TestClient::new();

    for _ in 0..4 {
        let res = client.get(&server.url("/flaky")).await.unwrap();
        assert_eq!(res.head.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(handle.state(), State::Open);

    let res = client.get(&server.url("/flaky")).await.unwrap();
    assert_eq!(res.head.status, StatusCode::SERVICE_UNAVAILABLE);
    let retry_after: u64 = res.head.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // The time left of a 30 s open duration; real time passes between the
    // trip and this request, so leave room for a loaded machine.
    assert!((20..=30).contains(&retry_after), "{retry_after}");
    assert_eq!(
        res.head.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let doc: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
    assert_eq!(doc["status"], 503);
    assert_eq!(doc["kind"], "circuit_open");
    assert_eq!(hits.load(Ordering::SeqCst), 4);
    assert_eq!(handle.metrics().rejected, 1);
}
