//! The adaptive timeout in paused virtual time: convergence on a stationary
//! distribution, a step change, the fixed timeout before the minimum, the
//! deadlines a request carries, and what a timeout looks like from outside.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use seawall_core::event::FnListener;
use seawall_core::BoxError;
use seawall_timeout::{AdaptiveTimeoutElapsed, AdaptiveTimeoutLayer, Deadline, TimeoutEvent};
use tokio::time::{advance, sleep, Instant};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// A small deterministic generator (xorshift64*), so the tests need no RNG
/// crate and replay the same draws every run.
struct Draws(u64);

impl Draws {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)` milliseconds, at microsecond resolution.
    fn uniform(&mut self, lo: u64, hi: u64) -> Duration {
        let span = (hi - lo) as f64 * 1000.0;
        Duration::from_micros(lo * 1000 + (self.next_f64() * span) as u64)
    }
}

/// A dependency that takes as long as the request says.
fn dependency(
) -> impl Service<Duration, Response = Duration, Error = BoxError, Future: Send> + Clone + Send {
    service_fn(|latency: Duration| async move {
        sleep(latency).await;
        Ok::<_, BoxError>(latency)
    })
}

/// Sends one request per millisecond for `n` requests, with latencies from
/// `draw`; returns the latencies drawn once every call has finished.
async fn load<S>(svc: &S, n: usize, mut draw: impl FnMut() -> Duration) -> Vec<Duration>
where
    S: Service<Duration, Response = Duration, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut tasks = Vec::with_capacity(n);
    let mut drawn = Vec::with_capacity(n);
    for _ in 0..n {
        let latency = draw();
        drawn.push(latency);
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move { svc.oneshot(latency).await }));
        sleep(MS).await;
    }
    for t in tasks {
        let _ = t.await.unwrap();
    }
    drawn
}

fn p99(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[(sorted.len() as f64 * 0.99).ceil() as usize - 1]
}

fn within(actual: Duration, expected: Duration, tolerance: f64) -> bool {
    (actual.as_secs_f64() - expected.as_secs_f64()).abs() <= expected.as_secs_f64() * tolerance
}

fn layer() -> AdaptiveTimeoutLayer {
    AdaptiveTimeoutLayer::builder()
        .window(Duration::from_secs(10))
        .slices(10)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn converges_to_p99_times_k_on_a_stationary_distribution() {
    let layer = layer();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(dependency());
    let mut draws = Draws(7);
    // Mostly 10-20 ms, with a 3% tail at 20-60 ms.
    let drawn = load(&svc, 8_000, || {
        if draws.next_f64() < 0.97 {
            draws.uniform(10, 20)
        } else {
            draws.uniform(20, 60)
        }
    })
    .await;
    advance(Duration::from_millis(100)).await;
    // Samples of the last window only (8 s of traffic fit in 10 s).
    let expected = p99(&drawn) * 3;
    let timeout = layer.timeout();
    assert!(
        within(timeout, expected, 0.10),
        "timeout {timeout:?}, p99 x 3 = {expected:?}"
    );
    assert!(layer.samples() >= 7_000, "{}", layer.samples());
}

#[tokio::test(start_paused = true)]
async fn follows_a_step_change_within_the_window() {
    let layer = layer();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(dependency());
    let mut draws = Draws(11);
    let before = load(&svc, 5_000, || draws.uniform(10, 20)).await;
    advance(Duration::from_millis(100)).await;
    let first = layer.timeout();
    assert!(within(first, p99(&before) * 3, 0.10), "{first:?}");
    // The dependency becomes twice as slow: still inside the timeout, so
    // the calls succeed and are learned.
    let after = load(&svc, 10_000, || draws.uniform(20, 40)).await;
    advance(Duration::from_millis(100)).await;
    let second = layer.timeout();
    assert!(
        within(second, p99(&after) * 3, 0.10),
        "after one window: {second:?}, expected {:?}",
        p99(&after) * 3
    );
    // And back down.
    let again = load(&svc, 10_000, || draws.uniform(10, 20)).await;
    advance(Duration::from_millis(100)).await;
    let third = layer.timeout();
    assert!(within(third, p99(&again) * 3, 0.10), "{third:?}");
}

#[tokio::test(start_paused = true)]
async fn a_jump_past_the_timeout_is_relearned_from_the_initial_timeout_up_to_the_ceiling() {
    let layer = AdaptiveTimeoutLayer::builder()
        .window(Duration::from_secs(2))
        .ceiling(Duration::from_millis(100))
        .initial_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(dependency());
    load(&svc, 1_000, || Duration::from_millis(10)).await;
    advance(Duration::from_millis(100)).await;
    assert!(within(layer.timeout(), 30 * MS, 0.02));
    // Suddenly 45 ms: every call times out at ~30 ms and teaches nothing...
    let err = svc
        .clone()
        .oneshot(Duration::from_millis(45))
        .await
        .unwrap_err();
    assert!(err.is::<AdaptiveTimeoutElapsed>());
    // ...until the window holds no success: the initial timeout lets calls
    // through again, and the new latency is learned, capped at the ceiling.
    load(&svc, 3_000, || Duration::from_millis(45)).await;
    advance(Duration::from_millis(100)).await;
    assert_eq!(layer.timeout(), Duration::from_millis(100), "capped");
    assert!(svc.oneshot(Duration::from_millis(45)).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn the_fixed_timeout_applies_before_the_minimum_samples() {
    let layer = AdaptiveTimeoutLayer::builder()
        .initial_timeout(Duration::from_millis(200))
        .min_samples(50)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(dependency());
    // 49 fast successes: not enough to trust a percentile.
    load(&svc, 49, || Duration::from_millis(5)).await;
    advance(Duration::from_secs(1)).await;
    assert_eq!(layer.timeout(), Duration::from_millis(200));
    let started = Instant::now();
    let err = svc.clone().oneshot(250 * MS).await.unwrap_err();
    assert_eq!(started.elapsed(), 200 * MS);
    let elapsed = err.downcast_ref::<AdaptiveTimeoutElapsed>().unwrap();
    assert_eq!(elapsed.timeout(), 200 * MS);
    assert!(
        svc.clone().oneshot(150 * MS).await.is_ok(),
        "150 ms < 200 ms"
    );
    // The 150 ms call was the 50th success: now p99 x 3 of those applies
    // (rank 50 of 50 is the 150 ms call), within the 1.6% bucket width.
    advance(Duration::from_secs(1)).await;
    assert!(
        within(layer.timeout(), 450 * MS, 0.02),
        "{:?}",
        layer.timeout()
    );
    assert_eq!(layer.samples(), 50);
}

#[tokio::test(start_paused = true)]
async fn failures_and_timeouts_do_not_feed_the_estimate() {
    let layer = AdaptiveTimeoutLayer::builder()
        .initial_timeout(Duration::from_millis(300))
        .min_samples(10)
        .build()
        .unwrap();
    let failing = service_fn(|latency: Duration| async move {
        sleep(latency).await;
        Err::<Duration, BoxError>("connection reset".into())
    });
    let svc = ServiceBuilder::new().layer(layer.clone()).service(failing);
    for _ in 0..100 {
        let _ = svc.clone().oneshot(MS).await;
    }
    let stuck = ServiceBuilder::new()
        .layer(layer.clone())
        .service(dependency());
    for _ in 0..20 {
        let _ = stuck.clone().oneshot(Duration::from_secs(5)).await;
    }
    advance(Duration::from_secs(1)).await;
    assert_eq!(layer.samples(), 0);
    assert_eq!(layer.timeout(), 300 * MS);
}

#[tokio::test(start_paused = true)]
async fn a_shorter_grpc_timeout_or_deadline_wins() {
    let layer = AdaptiveTimeoutLayer::builder()
        .initial_timeout(Duration::from_secs(1))
        .http()
        .build()
        .unwrap();
    let slow = service_fn(|_req: http::Request<()>| async {
        sleep(Duration::from_secs(10)).await;
        Ok::<_, BoxError>(http::Response::new(()))
    });
    let svc = ServiceBuilder::new().layer(layer).service(slow);

    let req = http::Request::builder()
        .header("grpc-timeout", "50m")
        .body(())
        .unwrap();
    let started = Instant::now();
    let err = svc.clone().oneshot(req).await.unwrap_err();
    assert_eq!(started.elapsed(), 50 * MS);
    let elapsed = err.downcast_ref::<AdaptiveTimeoutElapsed>().unwrap();
    assert!(elapsed.carried());
    assert_eq!(elapsed.timeout(), 50 * MS);

    let mut req = http::Request::new(());
    req.extensions_mut()
        .insert(Deadline(Instant::now() + 80 * MS));
    let started = Instant::now();
    svc.clone().oneshot(req).await.unwrap_err();
    assert_eq!(started.elapsed(), 80 * MS);

    // A longer one, or a malformed header, leaves the adaptive timeout.
    for value in ["5S", "garbage", "123456789m"] {
        let req = http::Request::builder()
            .header("grpc-timeout", value)
            .body(())
            .unwrap();
        let started = Instant::now();
        let err = svc.clone().oneshot(req).await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(1), "{value}");
        assert!(!err
            .downcast_ref::<AdaptiveTimeoutElapsed>()
            .unwrap()
            .carried());
    }
}

#[tokio::test(start_paused = true)]
async fn a_timeout_is_a_504_failure_not_a_local_refusal_and_an_event() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let layer = AdaptiveTimeoutLayer::builder()
        .initial_timeout(Duration::from_millis(40))
        .name("db")
        .listener(FnListener::new(move |e: &TimeoutEvent| {
            log.lock().unwrap().push(e.clone());
        }))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(layer).service(dependency());
    let err = svc.oneshot(Duration::from_secs(1)).await.unwrap_err();

    assert_eq!(err.to_string(), "request timed out after 40ms");
    assert!(
        seawall_core::rejection::find(&*err).is_none(),
        "a breaker above must count it"
    );
    let source = std::error::Error::source(&*err).unwrap();
    assert!(source.is::<tower::timeout::error::Elapsed>());
    let response = seawall::http::error_response(&*err);
    assert_eq!(response.status(), http::StatusCode::GATEWAY_TIMEOUT);

    let events = events.lock().unwrap();
    assert_eq!(events.len(), 1);
    let TimeoutEvent::TimedOut {
        layer,
        timeout,
        threshold,
        carried,
        ..
    } = &events[0]
    else {
        panic!("{events:?}")
    };
    assert_eq!(&**layer, "db");
    assert_eq!((*timeout, *threshold, *carried), (40 * MS, 40 * MS, false));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_response_future_drops_the_call() {
    struct Guard(Arc<Mutex<u32>>);
    impl Drop for Guard {
        fn drop(&mut self) {
            *self.0.lock().unwrap() += 1;
        }
    }
    let dropped = Arc::new(Mutex::new(0));
    let seen = dropped.clone();
    let svc = ServiceBuilder::new()
        .layer(layer())
        .service(service_fn(move |(): ()| {
            let guard = Guard(seen.clone());
            async move {
                sleep(Duration::from_secs(10)).await;
                drop(guard);
                Ok::<_, BoxError>(())
            }
        }));
    let fut = svc.oneshot(());
    let _ = tokio::time::timeout(10 * MS, fut).await;
    assert_eq!(*dropped.lock().unwrap(), 1);
}

#[test]
fn invalid_settings_are_config_errors() {
    let b = AdaptiveTimeoutLayer::builder;
    assert_eq!(
        b().percentile(1.5).build().unwrap_err().field(),
        "percentile"
    );
    assert_eq!(
        b().multiplier(f64::NAN).build().unwrap_err().field(),
        "multiplier"
    );
    assert_eq!(
        b().floor(Duration::from_secs(60))
            .build()
            .unwrap_err()
            .field(),
        "floor"
    );
    assert_eq!(
        b().ceiling(Duration::ZERO).build().unwrap_err().field(),
        "ceiling"
    );
    assert_eq!(
        b().initial_timeout(Duration::MAX)
            .build()
            .unwrap_err()
            .field(),
        "initial"
    );
    assert_eq!(
        b().min_samples(0).build().unwrap_err().field(),
        "min_samples"
    );
}

#[tokio::test(start_paused = true)]
async fn calls_answered_at_once_count_as_zero_latency() {
    let layer = AdaptiveTimeoutLayer::builder()
        .min_samples(10)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(service_fn(|n: u32| {
            std::future::ready(Ok::<_, BoxError>(n))
        }));
    for n in 0..10 {
        assert_eq!(svc.clone().oneshot(n).await.unwrap(), n);
    }
    advance(Duration::from_secs(1)).await;
    // p99 = 0, x3 = 0: the floor.
    assert_eq!(layer.timeout(), Duration::from_millis(10));
    assert_eq!(layer.samples(), 10);
}

#[tokio::test(start_paused = true)]
async fn a_breaker_above_counts_timeouts_as_failures() {
    use seawall_circuit_breaker::{CircuitBreakerLayer, CircuitOpen};
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(3)
        .open_duration(Duration::from_secs(30))
        .build()
        .unwrap();
    let timeout = AdaptiveTimeoutLayer::builder()
        .initial_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(breaker)
        .layer(timeout)
        .service(dependency());
    for _ in 0..3 {
        let err = svc
            .clone()
            .oneshot(Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.is::<AdaptiveTimeoutElapsed>(), "{err}");
    }
    let err = svc.oneshot(MS).await.unwrap_err();
    assert!(err.is::<CircuitOpen>(), "three timeouts trip it: {err}");
}
