//! Run with: cargo run -p seawall-examples --example observability
//!
//! seawall's events as Prometheus metrics and structured `tracing` lines.
//!
//! The layers take `(MetricsListener, TracingListener)` as their listener:
//! every event is counted in the metrics operators alert on (the breaker's
//! state gauge, transitions with `from`/`to`, calls by outcome with their
//! durations, refusals by kind, ...) and
//! logged with the fields `pattern`, `name`, `event`, `from`, `to`. The
//! Prometheus recorder comes from `metrics-exporter-prometheus`, and the
//! server exposes its text on `/metrics`, as a Prometheus server would
//! scrape it.
//!
//! A client in the same process makes an `/orders` route fail until its
//! breaker opens, then scrapes `/metrics` over loopback, prints it and
//! checks that the breaker's state change is there. It stops by itself.

use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use seawall::bulkhead::BulkheadLayer;
use seawall::circuit_breaker::{CircuitBreakerLayer, State};
use seawall::core::event::{MetricsListener, TracingListener};
use seawall::{BoxError, HttpClassifier, ServiceBuilderExt};
use tower::ServiceBuilder;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

async fn get_url(client: &HttpClient, url: &str) -> Result<(StatusCode, String), BoxError> {
    let res = client
        .request(Request::get(url).body(Empty::new())?)
        .await?;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The value of the sample of `name` whose labels include `labels`, in
/// Prometheus' text format.
pub(crate) fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (labels_text, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|(k, v)| labels_text.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt().with_target(false).init();
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    MetricsListener::describe();
    let scrape = run(prometheus).await?;
    println!("GET /metrics:\n{scrape}");
    Ok(())
}

/// Serves `/orders` and `/metrics`, trips the breaker, and returns the
/// scrape that shows it.
pub(crate) async fn run(prometheus: PrometheusHandle) -> Result<String, BoxError> {
    let listener = (MetricsListener::new().with_latency(), TracingListener);
    let breaker = CircuitBreakerLayer::builder()
        .name("orders-db")
        .classifier(HttpClassifier::new())
        .consecutive_failures(3)
        .open_duration(Duration::from_secs(60))
        .listener(listener)
        .build()?;
    let handle = breaker.handle();
    let bulkhead = BulkheadLayer::builder()
        .name("orders")
        .max_concurrent(16)
        .listener(listener)
        .build()?;

    let app = Router::new()
        .route(
            "/orders",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "database down") }).layer(
                ServiceBuilder::new()
                    .rejection_response()
                    .bulkhead(bulkhead)
                    .circuit_breaker(breaker),
            ),
        )
        .route(
            "/metrics",
            get(move || {
                let prometheus = prometheus.clone();
                async move { prometheus.render() }
            }),
        );
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = tcp.local_addr()?;
    let serving = tokio::spawn(async move { axum::serve(tcp, app).await });
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    for _ in 0..5 {
        let (status, body) = get_url(&client, &format!("http://{addr}/orders")).await?;
        println!("GET /orders -> {status} {body}");
    }
    assert_eq!(handle.state(), State::Open);

    let (status, scrape) = get_url(&client, &format!("http://{addr}/metrics")).await?;
    assert_eq!(status, StatusCode::OK);
    let open = [("name", "orders-db"), ("state", "open")];
    let closed = [("name", "orders-db"), ("state", "closed")];
    assert_eq!(
        sample(&scrape, "seawall_circuit_breaker_state", &open),
        Some(1.0)
    );
    assert_eq!(
        sample(&scrape, "seawall_circuit_breaker_state", &closed),
        Some(0.0)
    );
    let transition = [("name", "orders-db"), ("from", "closed"), ("to", "open")];
    assert_eq!(
        sample(&scrape, "seawall_state_transitions_total", &transition),
        Some(1.0)
    );
    let failed = [("name", "orders-db"), ("outcome", "failure")];
    assert_eq!(sample(&scrape, "seawall_calls_total", &failed), Some(3.0));
    let refused = [("name", "orders-db"), ("kind", "circuit_open")];
    assert_eq!(
        sample(&scrape, "seawall_rejections_total", &refused),
        Some(2.0)
    );

    serving.abort();
    Ok(scrape)
}
