//! A breaker above a bulkhead (the README's order): the bulkhead's
//! refusals are local, not failures of the dependency, so a burst that the
//! bulkhead sheds must not open the breaker. Real layers, paused time.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use seawall::bulkhead::{BulkheadFull, BulkheadLayer, BulkheadTimeout};
use seawall::circuit_breaker::{Builder, CircuitBreakerLayer, CircuitOpen, Handle, State};
use seawall_core::BoxError;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

/// A healthy dependency that takes 100 ms per call.
fn healthy(
    hits: Arc<AtomicUsize>,
) -> impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone + Send {
    service_fn(move |n: u32| {
        hits.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, BoxError>(n)
        }
    })
}

fn breaker(builder: Builder) -> (CircuitBreakerLayer, Handle) {
    let layer = builder
        .count_window(10)
        .minimum_calls(5)
        .failure_rate_threshold(0.5)
        .build()
        .unwrap();
    let handle = layer.handle();
    (layer, handle)
}

/// Sends a burst of `n` concurrent calls through `svc`; returns how many
/// succeeded, how many the bulkhead refused and how many the breaker did.
async fn burst<S>(svc: &S, n: u32) -> (usize, usize, usize)
where
    S: Service<u32, Response = u32, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let calls: Vec<_> = (0..n)
        .map(|i| tokio::spawn(svc.clone().oneshot(i)))
        .collect();
    let (mut ok, mut shed, mut open) = (0, 0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) if e.is::<BulkheadFull>() || e.is::<BulkheadTimeout>() => shed += 1,
            Err(e) if e.is::<CircuitOpen>() => open += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    (ok, shed, open)
}

#[tokio::test(start_paused = true)]
async fn a_burst_shed_by_the_bulkhead_never_opens_the_breaker() {
    let (breaker, handle) = breaker(CircuitBreakerLayer::builder());
    let hits = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(breaker)
        .layer(BulkheadLayer::builder().max_concurrent(2).build().unwrap())
        .service(healthy(hits.clone()));

    for round in 0..3 {
        let (ok, shed, open) = burst(&svc, 10).await;
        assert_eq!((ok, shed, open), (2, 8, 0), "round {round}");
        assert_eq!(handle.state(), State::Closed, "round {round}");
    }
    // Only the calls that reached the dependency are in the window.
    let m = handle.metrics();
    assert_eq!((m.calls, m.failures), (6, 0));
    assert_eq!(m.failure_rate, Some(0.0));
    assert_eq!(hits.load(Ordering::SeqCst), 6);
}

#[tokio::test(start_paused = true)]
async fn a_bulkhead_timeout_is_not_a_failure_either() {
    let (breaker, handle) = breaker(CircuitBreakerLayer::builder());
    let svc = ServiceBuilder::new()
        .layer(breaker)
        .layer(
            BulkheadLayer::builder()
                .max_concurrent(2)
                .max_queue(8)
                .max_wait(Duration::from_millis(50))
                .build()
                .unwrap(),
        )
        .service(healthy(Arc::default()));
    let (ok, shed, open) = burst(&svc, 10).await;
    assert_eq!((ok, shed, open), (2, 8, 0));
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.metrics().failures, 0);
}

#[tokio::test(start_paused = true)]
async fn counting_inner_rejections_makes_them_failures() {
    let (breaker, handle) = breaker(CircuitBreakerLayer::builder().count_inner_rejections(true));
    let svc = ServiceBuilder::new()
        .layer(breaker)
        .layer(BulkheadLayer::builder().max_concurrent(2).build().unwrap())
        .service(healthy(Arc::default()));
    let (ok, shed, open) = burst(&svc, 10).await;
    // The first five refusals fill the minimum, all failures: it trips,
    // and the rest of the burst is refused by the breaker itself.
    assert_eq!((ok, shed, open), (2, 5, 3));
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn an_inner_breaker_refusal_is_ignored_and_a_probe_refused_inside_gives_its_slot_back() {
    let outer = CircuitBreakerLayer::builder()
        .count_window(2)
        .minimum_calls(2)
        .open_duration(Duration::from_secs(5))
        .build()
        .unwrap();
    let outer_handle = outer.handle();
    let inner = CircuitBreakerLayer::new();
    let inner_handle = inner.handle();
    let down = Arc::new(AtomicBool::new(false));
    let backend_down = down.clone();
    let svc = ServiceBuilder::new()
        .layer(outer)
        .layer(inner)
        .service(service_fn(move |n: u32| {
            let down = backend_down.load(Ordering::SeqCst);
            async move {
                if down {
                    Err::<u32, BoxError>("down".into())
                } else {
                    Ok(n)
                }
            }
        }));

    inner_handle.force_open();
    for _ in 0..4 {
        let err = svc.clone().oneshot(1).await.unwrap_err();
        assert!(err.is::<CircuitOpen>());
    }
    assert_eq!(outer_handle.state(), State::Closed);
    assert_eq!(outer_handle.metrics().calls, 0);

    // Trip the outer breaker on real failures.
    inner_handle.reset();
    down.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        assert!(!svc
            .clone()
            .oneshot(1)
            .await
            .unwrap_err()
            .is::<CircuitOpen>());
    }
    assert_eq!(outer_handle.state(), State::Open);

    // A probe refused by the inner breaker says nothing: the outer breaker
    // stays half-open with its probe slot free again.
    tokio::time::advance(Duration::from_secs(5)).await;
    inner_handle.force_open();
    assert!(svc
        .clone()
        .oneshot(1)
        .await
        .unwrap_err()
        .is::<CircuitOpen>());
    assert_eq!(outer_handle.state(), State::HalfOpen);
    assert_eq!(outer_handle.metrics().probes_in_flight, 0);

    // The next probe reaches the recovered dependency and closes it.
    inner_handle.reset();
    down.store(false, Ordering::SeqCst);
    assert_eq!(svc.clone().oneshot(7).await.unwrap(), 7);
    assert_eq!(outer_handle.state(), State::Closed);
}
