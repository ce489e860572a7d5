//! An injected fault is a dependency failure to the layers above: a breaker
//! counts it and opens, a retry retries it.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use seawall_chaos::{ChaosLayer, Fault, InjectedFault};
use seawall_circuit_breaker::{CircuitBreakerLayer, CircuitOpen, State};
use seawall_retry::{Backoff, JitterRetryLayer};
use tower::{service_fn, Layer, Service, ServiceExt};

fn counting_leaf(
    calls: Arc<AtomicUsize>,
) -> impl Service<
    u32,
    Response = u32,
    Error = Infallible,
    Future = std::future::Ready<Result<u32, Infallible>>,
> + Clone {
    service_fn(move |req: u32| {
        calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(req))
    })
}

#[tokio::test(start_paused = true)]
async fn a_breaker_above_counts_injected_faults_and_opens() {
    let chaos = ChaosLayer::builder()
        .fault(Fault::error().named("outage"))
        .build()
        .unwrap();
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(5)
        .open_duration(Duration::from_secs(30))
        .build()
        .unwrap();
    let breaker_handle = breaker.handle();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = breaker.layer(chaos.layer(counting_leaf(calls.clone())));

    for _ in 0..5 {
        let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
        assert!(err.is::<InjectedFault>());
    }
    assert_eq!(breaker_handle.state(), State::Open);
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert!(err.is::<CircuitOpen>());
    assert_eq!(chaos.handle().injected("outage"), Some(5));

    // The outage ends; after the open duration a probe closes the breaker.
    chaos.handle().disable();
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(svc.ready().await.unwrap().call(2).await.unwrap(), 2);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_retry_above_retries_injected_faults() {
    // Half the calls fail; with four attempts nearly every request succeeds.
    let chaos = ChaosLayer::builder()
        .seed(11)
        .fault(Fault::error().rate(0.5).named("flaky"))
        .build()
        .unwrap();
    let retry = JitterRetryLayer::builder()
        .max_attempts(4)
        .backoff(Backoff::exponential(Duration::from_millis(10)))
        .seed(3)
        // Only the attempts limit retries here; a budget would stop them
        // once failures dominate, which is its job, not this test's.
        .no_budget()
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = retry.layer(chaos.layer(counting_leaf(calls.clone())));

    let mut succeeded = 0;
    for i in 0..200 {
        if svc.clone().oneshot(i).await.is_ok() {
            succeeded += 1;
        }
    }
    let injected = chaos.handle().injected("flaky").unwrap();
    // P(four failures in a row) = 1/16: about 12 of 200 fail.
    assert!(succeeded >= 175, "{succeeded}");
    assert!(injected >= 150, "retries saw the faults: {injected}");
    assert_eq!(calls.load(Ordering::SeqCst), succeeded);
}
