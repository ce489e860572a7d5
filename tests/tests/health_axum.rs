//! The health registry on a real axum server over loopback: `/health` always
//! answers with the JSON snapshot, `/ready` answers `503` while a critical
//! breaker is open, and a breaker that trips on real traffic shows up in both.

use std::time::Duration;

use axum::{routing::get, Router};
use http::StatusCode;
use seawall::circuit_breaker::CircuitBreakerLayer;
use seawall::health::HealthRegistry;
use seawall::{HttpClassifier, ServiceBuilderExt};
use seawall_tests::{TestClient, TestServer};
use tower::ServiceBuilder;

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).expect("a JSON document")
}

#[tokio::test]
async fn readiness_answers_503_while_a_critical_dependency_is_open() {
    let payments = CircuitBreakerLayer::builder()
        .name("payments")
        .classifier(HttpClassifier::new())
        .count_window(2)
        .minimum_calls(2)
        .open_duration(Duration::from_secs(60))
        .build()
        .unwrap();
    let search = CircuitBreakerLayer::builder()
        .name("search")
        .build()
        .unwrap();
    let health = HealthRegistry::new();
    health
        .register_breaker("payments", payments.handle())
        .critical();
    health.register_breaker("search", search.handle());

    let router = Router::new()
        .route(
            "/pay",
            get(|| async { (StatusCode::BAD_GATEWAY, "upstream down") })
                .layer(ServiceBuilder::new().rejection_response().layer(payments)),
        )
        .route_service("/health", health.health_service())
        .route_service("/ready", health.readiness_service());
    let server = TestServer::start(router).await.unwrap();
    let client = TestClient::new();

    let ready = client.get(&server.url("/ready")).await.unwrap();
    assert_eq!(ready.head.status, StatusCode::OK);
    assert_eq!(json(&ready.body)["status"], "UP");

    // A non-critical breaker forced open degrades, but keeps the replica ready.
    search.handle().force_open();
    let ready = client.get(&server.url("/ready")).await.unwrap();
    assert_eq!(ready.head.status, StatusCode::OK);
    assert_eq!(json(&ready.body)["status"], "DEGRADED");

    // Real failures trip the critical breaker.
    for _ in 0..2 {
        let res = client.get(&server.url("/pay")).await.unwrap();
        assert_eq!(res.head.status, StatusCode::BAD_GATEWAY);
    }
    let ready = client.get(&server.url("/ready")).await.unwrap();
    assert_eq!(ready.head.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.head.headers["content-type"], "application/json");
    let doc = json(&ready.body);
    assert_eq!(doc["status"], "DOWN");
    assert_eq!(doc["components"]["payments"]["status"], "DOWN");
    assert_eq!(doc["components"]["payments"]["details"]["state"], "open");
    assert_eq!(doc["components"]["payments"]["details"]["failures"], 2);

    let report = client.get(&server.url("/health")).await.unwrap();
    assert_eq!(report.head.status, StatusCode::OK);
    assert_eq!(json(&report.body)["status"], "DOWN");
}
