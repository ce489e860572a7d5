//! seawall's metrics exported to Prometheus: the process installs
//! `metrics-exporter-prometheus`'s recorder, an axum server serves its text
//! on `/metrics`, and the tests scrape it over loopback as Prometheus would,
//! seeing a breaker's state change and a bulkhead's refusals.

use std::sync::OnceLock;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use http::StatusCode;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use seawall::bulkhead::BulkheadLayer;
use seawall::circuit_breaker::{CircuitBreakerLayer, State};
use seawall::core::event::MetricsListener;
use seawall::{HttpClassifier, ServiceBuilderExt};
use seawall_tests::{TestClient, TestServer};
use tokio::sync::watch;
use tower::ServiceBuilder;

/// The process's Prometheus recorder, installed once for every test here.
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .install_recorder()
                .expect("the only recorder of this test binary");
            MetricsListener::describe();
            handle
        })
        .clone()
}

/// `router` plus a `/metrics` route serving the recorder's text.
fn with_metrics(router: Router) -> Router {
    let handle = prometheus();
    router.route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    )
}

/// The value of the sample of `name` whose labels include every one of
/// `labels`, read from Prometheus' text format.
fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let labels_text = series.strip_prefix(name)?.strip_prefix('{')?;
        labels
            .iter()
            .all(|(k, v)| labels_text.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.parse().ok())?
    })
}

async fn scrape(client: &TestClient, server: &TestServer) -> String {
    let res = client.get(&server.url("/metrics")).await.unwrap();
    assert_eq!(res.head.status, StatusCode::OK);
    String::from_utf8(res.body.to_vec()).unwrap()
}

#[tokio::test]
async fn a_scrape_shows_the_breaker_trip_and_its_recovery() {
    let breaker = CircuitBreakerLayer::builder()
        .name("payments")
        .classifier(HttpClassifier::new())
        .consecutive_failures(2)
        .open_duration(Duration::from_secs(60))
        .listener(MetricsListener::new())
        .build()
        .unwrap();
    let handle = breaker.handle();
    let router = Router::new().route(
        "/pay",
        get(|| async { (StatusCode::BAD_GATEWAY, "upstream down") }).layer(
            ServiceBuilder::new()
                .rejection_response()
                .circuit_breaker(breaker),
        ),
    );
    let server = TestServer::start(with_metrics(router)).await.unwrap();
    let client = TestClient::new();

    for _ in 0..2 {
        let res = client.get(&server.url("/pay")).await.unwrap();
        assert_eq!(res.head.status, StatusCode::BAD_GATEWAY);
    }
    let refused = client.get(&server.url("/pay")).await.unwrap();
    assert_eq!(refused.head.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(handle.state(), State::Open);

    let text = scrape(&client, &server).await;
    let open = [("name", "payments"), ("state", "open")];
    let closed = [("name", "payments"), ("state", "closed")];
    assert_eq!(
        sample(&text, "seawall_circuit_breaker_state", &open),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "seawall_circuit_breaker_state", &closed),
        Some(0.0),
        "{text}"
    );
    let tripped = [
        ("pattern", "circuit_breaker"),
        ("name", "payments"),
        ("from", "closed"),
        ("to", "open"),
    ];
    assert_eq!(
        sample(&text, "seawall_state_transitions_total", &tripped),
        Some(1.0),
        "{text}"
    );
    let failed = [("name", "payments"), ("outcome", "failure")];
    assert_eq!(
        sample(&text, "seawall_calls_total", &failed),
        Some(2.0),
        "{text}"
    );
    let rejected = [("name", "payments"), ("kind", "circuit_open")];
    assert_eq!(
        sample(&text, "seawall_rejections_total", &rejected),
        Some(1.0),
        "{text}"
    );
    // `describe()` registered the help texts and types.
    assert!(
        text.contains("# TYPE seawall_circuit_breaker_state gauge"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE seawall_state_transitions_total counter"),
        "{text}"
    );
    assert!(
        text.contains("# HELP seawall_rejections_total Calls refused by seawall layers, by kind."),
        "{text}"
    );

    handle.reset();
    let text = scrape(&client, &server).await;
    assert_eq!(
        sample(&text, "seawall_circuit_breaker_state", &open),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "seawall_circuit_breaker_state", &closed),
        Some(1.0),
        "{text}"
    );
    let recovered = [("name", "payments"), ("from", "open"), ("to", "closed")];
    assert_eq!(
        sample(&text, "seawall_state_transitions_total", &recovered),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn a_scrape_shows_bulkhead_refusals_and_occupancy() {
    let bulkhead = BulkheadLayer::builder()
        .name("reports")
        .max_concurrent(1)
        .max_queue(0)
        .listener(MetricsListener::new())
        .build()
        .unwrap();
    let occupancy = bulkhead.handle();
    let (release, held) = watch::channel(false);
    let router = Router::new().route(
        "/report",
        get(move || {
            let mut held = held.clone();
            async move {
                let _ = held.wait_for(|released| *released).await;
                "report"
            }
        })
        .layer(
            ServiceBuilder::new()
                .rejection_response()
                .bulkhead(bulkhead),
        ),
    );
    let server = TestServer::start(with_metrics(router)).await.unwrap();
    let client = TestClient::new();

    let holder = {
        let client = client.clone();
        let url = server.url("/report");
        tokio::spawn(async move { client.get(&url).await.unwrap() })
    };
    tokio::time::timeout(Duration::from_secs(5), async {
        while occupancy.in_flight() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap();
    let refused = client.get(&server.url("/report")).await.unwrap();
    assert_eq!(refused.head.status, StatusCode::SERVICE_UNAVAILABLE);
    release.send_replace(true);
    assert_eq!(holder.await.unwrap().head.status, StatusCode::OK);

    let text = scrape(&client, &server).await;
    let full = [
        ("pattern", "bulkhead"),
        ("name", "reports"),
        ("kind", "bulkhead_full"),
    ];
    assert_eq!(
        sample(&text, "seawall_rejections_total", &full),
        Some(1.0),
        "{text}"
    );
    let labels = [("pattern", "bulkhead"), ("name", "reports")];
    assert_eq!(
        sample(&text, "seawall_in_flight", &labels),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "seawall_limit", &labels), Some(1.0), "{text}");
}
