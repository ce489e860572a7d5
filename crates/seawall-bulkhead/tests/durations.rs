//! Absurd durations given to the builders are clamped: nothing computed from
//! them downstream (a `Retry-After` header, a queue deadline, a window end)
//! can overflow.

mod support;

use std::time::Duration;

use seawall_bulkhead::limit::{AdaptiveLimit, Aimd, Sample, Windowed};
use seawall_bulkhead::{BulkheadFull, BulkheadLayer, BulkheadTimeout, Priority};
use seawall_core::rejection;
use support::{job, run_pending, Gate};
use tower::{Layer, Service, ServiceExt};

const DAY: Duration = Duration::from_secs(86_400);
const ALMOST_A_YEAR: Duration = Duration::from_secs(365 * 86_400 - 1);

#[tokio::test(start_paused = true)]
async fn a_retry_after_of_duration_max_is_a_one_day_hint() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .retry_after(Duration::MAX)
        .build()
        .unwrap();
    let gate = Gate::default();
    let mut svc = layer.layer(gate.clone());
    let held = tokio::spawn(svc.ready().await.unwrap().call(job(1, Priority::Normal)));
    run_pending().await;
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(job(2, Priority::Normal))
        .await
        .unwrap_err();
    assert!(err.is::<BulkheadFull>());
    let hint = rejection::find(&*err)
        .and_then(seawall_core::Rejected::retry_after)
        .expect("a hint");
    assert_eq!(hint, DAY);
    // What a `Retry-After` writer computes must not overflow.
    assert_eq!(
        hint.as_secs() + u64::from(hint.subsec_nanos() > 0) + 1,
        86_401
    );
    gate.finish(1);
    held.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_max_wait_of_duration_max_waits_a_year_without_overflow() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .max_queue(1)
        .max_wait(Duration::MAX)
        .retry_after(Duration::from_secs(3))
        .build()
        .unwrap();
    let handle = layer.handle();
    let gate = Gate::default();
    let svc = layer.layer(gate.clone());
    let first = tokio::spawn(svc.clone().oneshot(job(1, Priority::Normal)));
    run_pending().await;
    let second = tokio::spawn(svc.clone().oneshot(job(2, Priority::Normal)));
    run_pending().await;
    assert_eq!(handle.queued(), 1);
    tokio::time::advance(ALMOST_A_YEAR).await;
    run_pending().await;
    assert_eq!(handle.queued(), 1, "still waiting just short of a year");
    tokio::time::advance(Duration::from_secs(2)).await;
    let err = second.await.unwrap().unwrap_err();
    assert!(err.is::<BulkheadTimeout>(), "{err}");
    assert_eq!(handle.queued(), 0);
    gate.finish(1);
    assert_eq!(first.await.unwrap().unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn adaptive_limits_take_duration_max() {
    let aimd = Aimd::builder()
        .initial_limit(1)
        .min_limit(1)
        .timeout(Duration::MAX)
        .build()
        .unwrap();
    let mut windowed = Windowed::builder(aimd)
        .min_window(Duration::MAX)
        .max_window(Duration::MAX)
        .min_samples(1)
        .build()
        .unwrap();
    let slow = Sample::new(DAY, 1, false);
    // The first window ends a (clamped) year from now.
    assert_eq!(windowed.update(&slow), 1);
    tokio::time::advance(ALMOST_A_YEAR).await;
    assert_eq!(windowed.update(&slow), 1, "the window is still open");
    tokio::time::advance(Duration::from_secs(1)).await;
    // A day-long call is not a drop under a year-long timeout: the limit
    // grows.
    assert_eq!(windowed.update(&slow), 2);
    assert_eq!(windowed.limit(), 2);

    let min_rtt = Windowed::builder(Aimd::builder().build().unwrap())
        .min_rtt(Duration::MAX)
        .build()
        .unwrap();
    // Every call is faster than a year, so ignored.
    let mut min_rtt = min_rtt;
    assert_eq!(min_rtt.update(&Sample::new(DAY, 1_000, true)), 20);
}
