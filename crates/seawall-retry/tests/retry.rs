//! Generic (non-HTTP) behaviour of the retry layer, in virtual time.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use seawall_core::event::FnListener;
use seawall_core::{BoxError, Outcome, Rejected};
use seawall_retry::{
    AttemptTimeout, Backoff, GiveUpReason, Jitter, JitterRetryLayer, RetryBudget, RetryCause,
    RetryEvent,
};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};

/// A service failing its first `failures` calls with `error()`, counting calls.
fn flaky(
    failures: u32,
    error: fn() -> BoxError,
) -> (
    Arc<AtomicU32>,
    impl Service<u32, Response = u32, Error = BoxError> + Clone,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let svc = service_fn(move |req: u32| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < failures {
                Err(error())
            } else {
                Ok(req * 2)
            }
        }
    });
    (calls, svc)
}

fn reset() -> BoxError {
    "connection reset".into()
}

type Events = Arc<Mutex<Vec<RetryEvent>>>;

fn recorder() -> (
    Events,
    FnListener<impl Fn(&RetryEvent) + Send + Sync + 'static>,
) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let listener = FnListener::new(move |e: &RetryEvent| log.lock().unwrap().push(e.clone()));
    (events, listener)
}

#[tokio::test(start_paused = true)]
async fn retries_until_success_within_max_attempts() {
    let layer = JitterRetryLayer::builder()
        .max_attempts(4)
        .no_budget()
        .build()
        .unwrap();
    let (calls, svc) = flaky(3, reset);
    assert_eq!(layer.layer(svc).oneshot(21).await.unwrap(), 42);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn returns_the_last_failure_after_max_attempts() {
    let (events, listener) = recorder();
    let layer = JitterRetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::from_millis(100)))
        .jitter(Jitter::None)
        .listener(listener)
        .name("db")
        .no_budget()
        .build()
        .unwrap();
    let (calls, svc) = flaky(u32::MAX, reset);
    let start = Instant::now();
    let err = layer.layer(svc).oneshot(1).await.unwrap_err();
    assert_eq!(err.to_string(), "connection reset");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(start.elapsed(), Duration::from_millis(200));

    let events = events.lock().unwrap();
    assert_eq!(events.len(), 3, "{events:?}");
    for (i, e) in events[..2].iter().enumerate() {
        match e {
            RetryEvent::RetryScheduled {
                layer,
                attempt,
                delay,
                cause,
                hint,
                budget_tokens,
            } => {
                assert_eq!(
                    *budget_tokens, None,
                    "a layer without a budget reports none"
                );
                assert_eq!(&**layer, "db");
                assert_eq!(*attempt, i as u32 + 1);
                assert_eq!(*delay, Duration::from_millis(100));
                assert_eq!(*cause, RetryCause::Error);
                assert_eq!(*hint, None);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(matches!(
        events[2],
        RetryEvent::RetriesExhausted {
            attempts: 3,
            reason: GiveUpReason::MaxAttempts,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn exponential_schedule_without_jitter_doubles() {
    let layer = JitterRetryLayer::builder()
        .max_attempts(5)
        .backoff(Backoff::exponential(Duration::from_millis(100)))
        .max_delay(Duration::from_millis(300))
        .jitter(Jitter::None)
        .no_budget()
        .build()
        .unwrap();
    let (_, svc) = flaky(u32::MAX, reset);
    let start = Instant::now();
    layer.layer(svc).oneshot(1).await.unwrap_err();
    // 100 + 200 + 300 (capped) + 300 (capped)
    assert_eq!(start.elapsed(), Duration::from_millis(900));
}

#[tokio::test(start_paused = true)]
async fn no_retry_starts_past_the_deadline() {
    let (events, listener) = recorder();
    let layer = JitterRetryLayer::builder()
        .max_attempts(10)
        .backoff(Backoff::constant(Duration::from_secs(1)))
        .jitter(Jitter::None)
        .deadline(Duration::from_millis(2500))
        .listener(listener)
        .no_budget()
        .build()
        .unwrap();
    let (calls, svc) = flaky(u32::MAX, reset);
    let start = Instant::now();
    layer.layer(svc).oneshot(1).await.unwrap_err();
    // Attempts at 0 s, 1 s, 2 s; the next would start at 3 s > 2.5 s.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert!(matches!(
        events.lock().unwrap().last(),
        Some(RetryEvent::RetriesExhausted {
            attempts: 3,
            reason: GiveUpReason::Deadline,
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn slow_attempts_time_out_and_are_retried() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let slow = service_fn(move |req: u32| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < 2 {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            Ok::<_, BoxError>(req)
        }
    });
    let layer = JitterRetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::from_millis(10)))
        .attempt_timeout(Duration::from_secs(1))
        .no_budget()
        .build()
        .unwrap();
    let start = Instant::now();
    assert_eq!(layer.layer(slow.clone()).oneshot(5).await.unwrap(), 5);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert!(start.elapsed() < Duration::from_secs(3));

    // When every attempt is too slow, the caller gets the timeout error.
    calls.store(0, Ordering::SeqCst);
    let layer = JitterRetryLayer::builder()
        .max_attempts(2)
        .attempt_timeout(Duration::from_secs(1))
        .no_budget()
        .build()
        .unwrap();
    let err = layer.layer(slow).oneshot(5).await.unwrap_err();
    let timeout = err
        .downcast_ref::<AttemptTimeout>()
        .expect("an AttemptTimeout");
    assert_eq!(timeout.to_string(), "retry attempt timed out");
    assert!(std::error::Error::source(timeout)
        .is_some_and(<dyn std::error::Error>::is::<tower::timeout::error::Elapsed>));
}

#[tokio::test(start_paused = true)]
async fn success_and_ignored_results_are_returned_as_they_are() {
    // Odd answers are "ignored", errors fail.
    let classify = |r: Result<&u32, &BoxError>| match r {
        Ok(n) if n % 2 == 1 => Outcome::Ignore,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    };
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let svc = service_fn(move |req: u32| {
        seen.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, BoxError>(req) }
    });
    let layer = JitterRetryLayer::builder()
        .classifier(classify)
        .build()
        .unwrap();
    let mut svc = layer.layer(svc);
    assert_eq!(svc.ready().await.unwrap().call(3).await.unwrap(), 3);
    assert_eq!(svc.ready().await.unwrap().call(4).await.unwrap(), 4);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // A classifier may also decide that some errors are not worth retrying.
    let not_found = |r: Result<&u32, &BoxError>| match r {
        Err(e) if e.to_string() == "not found" => Outcome::Ignore,
        Err(_) => Outcome::Failure,
        Ok(_) => Outcome::Success,
    };
    let (calls, svc) = flaky(u32::MAX, || "not found".into());
    let layer = JitterRetryLayer::builder()
        .classifier(not_found)
        .build()
        .unwrap();
    assert_eq!(
        layer.layer(svc).oneshot(1).await.unwrap_err().to_string(),
        "not found"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

fn circuit_open_2s() -> BoxError {
    Box::new(Rejected::new(
        "circuit_open",
        StatusCode::SERVICE_UNAVAILABLE,
        Some(Duration::from_secs(2)),
    ))
}

#[tokio::test(start_paused = true)]
async fn rejections_wait_their_retry_after_when_it_fits() {
    let (events, listener) = recorder();
    let layer = JitterRetryLayer::builder()
        .backoff(Backoff::exponential(Duration::from_millis(10)))
        .max_attempts(3)
        .listener(listener)
        .no_budget()
        .build()
        .unwrap();
    let (calls, svc) = flaky(1, circuit_open_2s);
    let start = Instant::now();
    assert_eq!(layer.layer(svc).oneshot(2).await.unwrap(), 4);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert!(matches!(
        events.lock().unwrap()[0],
        RetryEvent::RetryScheduled {
            cause: RetryCause::Rejection("circuit_open"),
            hint: Some(h),
            ..
        } if h == Duration::from_secs(2)
    ));
}

#[tokio::test(start_paused = true)]
async fn rejections_whose_retry_after_does_not_fit_end_retrying() {
    // Past the deadline.
    let (events, listener) = recorder();
    let layer = JitterRetryLayer::builder()
        .deadline(Duration::from_secs(1))
        .listener(listener)
        .no_budget()
        .build()
        .unwrap();
    let (calls, svc) = flaky(u32::MAX, circuit_open_2s);
    let start = Instant::now();
    let err = layer.layer(svc).oneshot(1).await.unwrap_err();
    assert_eq!(
        seawall_core::rejection::find(&*err).unwrap().kind(),
        "circuit_open"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(matches!(
        events.lock().unwrap()[0],
        RetryEvent::RetriesExhausted {
            reason: GiveUpReason::Deadline,
            ..
        }
    ));

    // Past the cap.
    let (events, listener) = recorder();
    let layer = JitterRetryLayer::builder()
        .max_delay(Duration::from_secs(1))
        .listener(listener)
        .no_budget()
        .build()
        .unwrap();
    let (calls, svc) = flaky(u32::MAX, circuit_open_2s);
    layer.layer(svc).oneshot(1).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(matches!(
        events.lock().unwrap()[0],
        RetryEvent::RetriesExhausted {
            reason: GiveUpReason::HintTooLong,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_seed_reproduces_the_delays() {
    async fn delays<R: rand::RngCore + rand::SeedableRng>(seed: u64) -> Vec<Duration> {
        let (events, listener) = recorder();
        let layer = JitterRetryLayer::builder()
            .max_attempts(6)
            .jitter(Jitter::Full)
            .seed(seed)
            .rng::<R>()
            .listener(listener)
            .no_budget()
            .build()
            .unwrap();
        let (_, svc) = flaky(u32::MAX, reset);
        let start = Instant::now();
        layer.layer(svc).oneshot(1).await.unwrap_err();
        let events = events.lock().unwrap();
        let delays: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                RetryEvent::RetryScheduled { delay, .. } => Some(*delay),
                _ => None,
            })
            .collect();
        // The reported delays are the ones actually waited (tokio's timer
        // rounds each up to the next millisecond).
        let (waited, total) = (start.elapsed(), delays.iter().sum::<Duration>());
        assert!(
            waited >= total && waited <= total + Duration::from_millis(5),
            "{waited:?} vs {total:?}"
        );
        delays
    }
    use rand::rngs::{SmallRng, StdRng};
    let a = delays::<SmallRng>(7).await;
    assert_eq!(a.len(), 5);
    assert_eq!(a, delays::<SmallRng>(7).await);
    assert_ne!(a, delays::<SmallRng>(8).await);
    // Any seedable RNG can be injected.
    let b = delays::<StdRng>(7).await;
    assert_eq!(b, delays::<StdRng>(7).await);
    assert_ne!(a, b);
}

#[tokio::test(start_paused = true)]
async fn budget_keeps_attempts_within_the_ratio_under_total_failure() {
    let budget = RetryBudget::new(); // ratio 0.1, 10/s floor
    let layer = JitterRetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::from_millis(1)))
        .budget(budget.clone())
        .build()
        .unwrap();
    let (calls, svc) = flaky(u32::MAX, reset);
    let mut svc = layer.layer(svc);
    let requests = 10_000u32;
    let start = Instant::now();
    for i in 0..requests {
        svc.ready().await.unwrap().call(i).await.unwrap_err();
    }
    let attempts = f64::from(calls.load(Ordering::SeqCst));
    let ratio = attempts / f64::from(requests);
    assert!(
        ratio <= 1.0 + 0.1 + 0.01,
        "{attempts} attempts: ratio {ratio}"
    );
    // The budget is not a blanket ban: deposits did fund retries.
    assert!(ratio >= 1.09, "{attempts} attempts: ratio {ratio}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

async fn attempts_of<S: Service<u32, Error = BoxError>>(svc: &mut S, calls: &AtomicU32) -> u32 {
    let before = calls.load(Ordering::SeqCst);
    assert!(svc.ready().await.unwrap().call(0).await.is_err());
    calls.load(Ordering::SeqCst) - before
}

#[tokio::test(start_paused = true)]
async fn budget_exhaustion_and_refill() {
    let (events, listener) = recorder();
    let budget = RetryBudget::builder()
        .ratio(0.0)
        .min_per_sec(2)
        .build()
        .unwrap();
    let layer = JitterRetryLayer::builder()
        .max_attempts(2)
        .backoff(Backoff::constant(Duration::from_millis(1)))
        .budget(budget)
        .listener(listener)
        .build()
        .unwrap();
    let (calls, svc) = flaky(u32::MAX, reset);
    let mut svc = layer.layer(svc);
    assert_eq!(attempts_of(&mut svc, &calls).await, 2);
    assert_eq!(attempts_of(&mut svc, &calls).await, 2);
    assert_eq!(attempts_of(&mut svc, &calls).await, 1, "budget exhausted");
    assert!(matches!(
        events.lock().unwrap().last(),
        Some(RetryEvent::BudgetExhausted {
            attempts: 1,
            budget_tokens: Some(0),
            ..
        })
    ));
    assert!(
        events.lock().unwrap().iter().any(|e| matches!(
            e,
            RetryEvent::RetryScheduled {
                budget_tokens: Some(_),
                ..
            }
        )),
        "a scheduled retry reports the budget's level"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        attempts_of(&mut svc, &calls).await,
        2,
        "refilled after a second"
    );
}

#[tokio::test(start_paused = true)]
async fn one_budget_is_shared_by_clones_and_layers() {
    let budget = RetryBudget::builder()
        .ratio(0.0)
        .min_per_sec(1)
        .build()
        .unwrap();
    let build = || {
        JitterRetryLayer::builder()
            .max_attempts(2)
            .budget(budget.clone())
            .build()
            .unwrap()
    };
    let (calls_a, svc_a) = flaky(u32::MAX, reset);
    let (calls_b, svc_b) = flaky(u32::MAX, reset);
    build().layer(svc_a).oneshot(1).await.unwrap_err();
    build().layer(svc_b).oneshot(1).await.unwrap_err();
    assert_eq!(calls_a.load(Ordering::SeqCst), 2);
    assert_eq!(
        calls_b.load(Ordering::SeqCst),
        1,
        "the other layer spent the budget"
    );
}

#[tokio::test(start_paused = true)]
async fn readiness_is_polled_again_before_each_retry() {
    let (mut mock, mut handle) = tower_test::mock::spawn_layer::<u32, u32, _>(
        JitterRetryLayer::builder()
            .backoff(Backoff::constant(Duration::from_millis(5)))
            .no_budget()
            .build()
            .unwrap(),
    );
    handle.allow(1);
    assert!(mock.poll_ready().is_ready());
    let fut = tokio::spawn(mock.call(1));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req, 1);
    send.send_error("boom");
    // No readiness granted: the retry waits for it instead of calling.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!fut.is_finished());
    handle.allow(1);
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req, 1);
    send.send_response(7);
    assert_eq!(fut.await.unwrap().unwrap(), 7);
}

#[tokio::test(start_paused = true)]
async fn a_leaked_layer_retries_and_shares_its_budget_with_earlier_clones() {
    let budget = RetryBudget::builder()
        .ratio(0.0)
        .min_per_sec(1)
        .build()
        .unwrap();
    let layer = JitterRetryLayer::builder()
        .max_attempts(4)
        .budget(budget.clone())
        .build()
        .unwrap();
    let earlier = layer.clone();
    let leaked = layer.leak();
    assert_eq!(leaked.name(), "retry");

    // One retry's worth of budget: the leaked layer spends it...
    let (calls, svc) = flaky(1, reset);
    assert_eq!(leaked.layer(svc).oneshot(21).await.unwrap(), 42);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "retried once");

    // ...so a clone made before leaking finds it empty: one state, shared.
    let (calls, svc) = flaky(1, reset);
    earlier.layer(svc).oneshot(21).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "budget already spent");
    assert_eq!(budget.tokens(), 0);
}
