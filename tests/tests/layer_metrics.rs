//! Each layer's events, through `MetricsListener`, become the metrics
//! operators alert on: the breaker's state gauge and transitions, refusals
//! by kind, bulkhead occupancy, retry attempts, and every event counted
//! under its pattern.
//!
//! Each test records into its own `DebuggingRecorder`, installed for the
//! test's thread only (`#[tokio::test]` runs on one thread).

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use seawall::bulkhead::{BulkheadFull, BulkheadLayer};
use seawall::chaos::{ChaosLayer, Fault};
use seawall::circuit_breaker::{CircuitBreakerLayer, CircuitOpen};
use seawall::core::event::MetricsListener;
use seawall::rate_limit::{Limit, Quota, RateLimitLayer, RateLimited};
use seawall::retry::JitterRetryLayer;
use seawall::BoxError;
use tokio::sync::oneshot;
use tower::{service_fn, Layer, Service, ServiceExt};

/// The value of the metric `name` whose labels include every one of `labels`.
fn value(snapshotter: &Snapshotter, name: &str, labels: &[(&str, &str)]) -> Option<DebugValue> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(key, ..)| {
            let key = key.key();
            key.name() == name
                && labels
                    .iter()
                    .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .map(|(_, _, _, value)| value)
}

fn counter(snapshotter: &Snapshotter, name: &str, labels: &[(&str, &str)]) -> u64 {
    match value(snapshotter, name, labels) {
        Some(DebugValue::Counter(n)) => n,
        None => 0,
        Some(other) => panic!("{name} is not a counter: {other:?}"),
    }
}

fn gauge(snapshotter: &Snapshotter, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    match value(snapshotter, name, labels) {
        Some(DebugValue::Gauge(v)) => Some(v.into_inner()),
        None => None,
        Some(other) => panic!("{name} is not a gauge: {other:?}"),
    }
}

fn failing() -> impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone {
    service_fn(|_: u32| async { Err::<u32, BoxError>("dependency down".into()) })
}

#[tokio::test]
async fn breaker_trip_sets_the_state_gauge_and_counts_the_transition_and_refusals() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let layer = CircuitBreakerLayer::builder()
        .name("payments")
        .count_window(4)
        .minimum_calls(4)
        .failure_rate_threshold(0.5)
        .open_duration(Duration::from_secs(30))
        .listener(MetricsListener::new())
        .build()
        .unwrap();
    let mut svc = layer.layer(failing());
    assert_eq!(
        gauge(&snapshotter, "seawall_circuit_breaker_state", &[]),
        None
    );
    for _ in 0..4 {
        svc.ready().await.unwrap().call(1).await.unwrap_err();
    }
    let open = [("name", "payments"), ("state", "open")];
    let closed = [("name", "payments"), ("state", "closed")];
    assert_eq!(
        gauge(&snapshotter, "seawall_circuit_breaker_state", &open),
        Some(1.0)
    );
    assert_eq!(
        gauge(&snapshotter, "seawall_circuit_breaker_state", &closed),
        Some(0.0)
    );
    let transition = [
        ("pattern", "circuit_breaker"),
        ("name", "payments"),
        ("from", "closed"),
        ("to", "open"),
    ];
    assert_eq!(
        counter(&snapshotter, "seawall_state_transitions_total", &transition),
        1
    );

    for _ in 0..3 {
        let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
        assert!(err.is::<CircuitOpen>(), "{err}");
    }
    let refused = [("pattern", "circuit_breaker"), ("kind", "circuit_open")];
    assert_eq!(
        counter(&snapshotter, "seawall_rejections_total", &refused),
        3
    );
    let events = [("pattern", "circuit_breaker"), ("event", "call_rejected")];
    assert_eq!(counter(&snapshotter, "seawall_events_total", &events), 3);

    layer.handle().reset();
    assert_eq!(
        gauge(&snapshotter, "seawall_circuit_breaker_state", &open),
        Some(0.0)
    );
    assert_eq!(
        gauge(&snapshotter, "seawall_circuit_breaker_state", &closed),
        Some(1.0)
    );
}

#[tokio::test(start_paused = true)]
async fn breaker_counts_calls_by_outcome_with_latency() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let layer = CircuitBreakerLayer::builder()
        .name("search")
        .listener(MetricsListener::new().with_latency())
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|n: u32| async move {
        tokio::time::sleep(Duration::from_millis(u64::from(n))).await;
        match n {
            // A full bulkhead below: a refusal the breaker ignores.
            0 => Err::<u32, BoxError>(
                seawall::Rejected::new(
                    "bulkhead_full",
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    None,
                )
                .into(),
            ),
            n if n % 2 == 1 => Err("dependency down".into()),
            n => Ok(n),
        }
    }));
    for n in [20, 40, 35, 0] {
        let _ = svc.clone().oneshot(n).await;
    }
    // A snapshot drains histograms: read it before the counters.
    let Some(DebugValue::Histogram(mut seconds)) = value(
        &snapshotter,
        "seawall_call_duration_seconds",
        &[("name", "search"), ("outcome", "success")],
    ) else {
        panic!("a latency histogram per outcome");
    };
    seconds.sort();
    let seconds: Vec<f64> = seconds.into_iter().map(|s| s.0).collect();
    assert_eq!(seconds, [0.02, 0.04]);
    let outcome = |o: &str| {
        counter(
            &snapshotter,
            "seawall_calls_total",
            &[
                ("pattern", "circuit_breaker"),
                ("name", "search"),
                ("outcome", o),
            ],
        )
    };
    assert_eq!(
        (outcome("success"), outcome("failure"), outcome("ignored")),
        (2, 1, 1)
    );
}

#[tokio::test]
async fn bulkhead_refusals_are_counted_by_kind_with_occupancy() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let layer = BulkheadLayer::builder()
        .name("db")
        .max_concurrent(1)
        .max_queue(0)
        .listener(MetricsListener::new())
        .build()
        .unwrap();
    let (release, held) = oneshot::channel::<()>();
    let held = std::sync::Arc::new(tokio::sync::Mutex::new(Some(held)));
    let svc = layer.layer(service_fn(move |n: u32| {
        let held = held.clone();
        async move {
            if let Some(rx) = held.lock().await.take() {
                let _ = rx.await;
            }
            Ok::<u32, BoxError>(n)
        }
    }));
    let first = tokio::spawn(svc.clone().oneshot(1));
    // Let the first call take the only permit.
    while layer.handle().in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    let err = svc.clone().oneshot(2).await.unwrap_err();
    assert!(err.is::<BulkheadFull>(), "{err}");
    release.send(()).unwrap();
    assert_eq!(first.await.unwrap().unwrap(), 1);

    let refused = [
        ("pattern", "bulkhead"),
        ("name", "db"),
        ("kind", "bulkhead_full"),
    ];
    assert_eq!(
        counter(&snapshotter, "seawall_rejections_total", &refused),
        1
    );
    let labels = [("pattern", "bulkhead"), ("name", "db")];
    assert_eq!(gauge(&snapshotter, "seawall_in_flight", &labels), Some(1.0));
    assert_eq!(gauge(&snapshotter, "seawall_limit", &labels), Some(1.0));
}

#[tokio::test(start_paused = true)]
async fn retry_attempts_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let layer = JitterRetryLayer::builder()
        .name("inventory")
        .max_attempts(3)
        .no_budget()
        .listener(MetricsListener::new())
        .build()
        .unwrap();
    layer.layer(failing()).oneshot(1).await.unwrap_err();
    let labels = [("pattern", "retry"), ("name", "inventory")];
    assert_eq!(
        counter(&snapshotter, "seawall_retry_attempts_total", &labels),
        2
    );
    let exhausted = [("pattern", "retry"), ("event", "retries_exhausted")];
    assert_eq!(counter(&snapshotter, "seawall_events_total", &exhausted), 1);
}

#[tokio::test(start_paused = true)]
async fn rate_limit_refusals_are_counted_by_kind() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let layer = RateLimitLayer::builder()
        .name("api")
        .limit(Limit::global("all", Quota::per_second(1)))
        .listener(MetricsListener::new())
        .build()
        .unwrap();
    let mut svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, BoxError>(n) }));
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 1);
    let err = svc.ready().await.unwrap().call(2).await.unwrap_err();
    assert!(err.is::<RateLimited>(), "{err}");
    let refused = [
        ("pattern", "rate_limit"),
        ("name", "api"),
        ("kind", "rate_limited"),
    ];
    assert_eq!(
        counter(&snapshotter, "seawall_rejections_total", &refused),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn injected_faults_are_counted_under_the_chaos_pattern() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let layer = ChaosLayer::builder()
        .name("upstream")
        .seed(7)
        .fault(Fault::error().rate(1.0))
        .listener(MetricsListener::new())
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, BoxError>(n) }));
    svc.clone().oneshot(1).await.unwrap_err();
    svc.oneshot(2).await.unwrap_err();
    let labels = [
        ("pattern", "chaos"),
        ("name", "upstream"),
        ("event", "fault_injected"),
    ];
    assert_eq!(counter(&snapshotter, "seawall_events_total", &labels), 2);
    // An injected fault stands for the dependency's failure, not a refusal.
    assert_eq!(counter(&snapshotter, "seawall_rejections_total", &[]), 0);
}
