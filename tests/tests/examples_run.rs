//! The examples of issue #13 run here, so CI proves they work: each example
//! file is compiled into this test as a module and its `run` called. Every
//! example asserts what it demonstrates, over real loopback connections,
//! and stops by itself; each is given a bound here.
//!
//! `observability` installs its Prometheus recorder for the test's thread
//! only, so it does not need this process's global recorder.

use std::future::Future;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use seawall::core::event::MetricsListener;
use seawall::BoxError;

#[allow(dead_code)]
#[path = "../../examples/axum_server.rs"]
mod axum_server;

#[allow(dead_code)]
#[path = "../../examples/http_client.rs"]
mod http_client;

#[allow(dead_code)]
#[path = "../../examples/tonic_server.rs"]
mod tonic_server;

#[allow(dead_code)]
#[path = "../../examples/tonic_client.rs"]
mod tonic_client;

#[allow(dead_code)]
#[path = "../../examples/observability.rs"]
mod observability;

/// Runs an example's `run`, failing the test if it takes over 30 s.
async fn bounded<T>(example: impl Future<Output = Result<T, BoxError>>) -> T {
    tokio::time::timeout(Duration::from_secs(30), example)
        .await
        .expect("the example stops by itself within 30 s")
        .expect("the example's checks pass")
}

#[tokio::test]
async fn axum_server_example() {
    bounded(axum_server::run()).await;
}

#[tokio::test]
async fn http_client_example() {
    bounded(http_client::run()).await;
}

#[tokio::test]
async fn tonic_server_example() {
    bounded(tonic_server::run()).await;
}

#[tokio::test]
async fn tonic_client_example() {
    bounded(tonic_client::run()).await;
}

#[tokio::test]
async fn observability_example() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    // `#[tokio::test]` runs the server, the client and the layers on this
    // thread, so a thread-local recorder sees every metric.
    let _recorder = metrics::set_default_local_recorder(&recorder);
    MetricsListener::describe();
    let scrape = bounded(observability::run(prometheus)).await;
    assert!(
        scrape.contains("# HELP seawall_circuit_breaker_state"),
        "{scrape}"
    );
    assert_eq!(
        observability::sample(
            &scrape,
            "seawall_circuit_breaker_state",
            &[("state", "open")]
        ),
        Some(1.0)
    );
}
