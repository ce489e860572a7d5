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
async fn a_jump_past_the_timeout_is_learned_from_the_timeouts_up_to_the_ceiling() {
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
    // Suddenly 45 ms: calls time out at ~30 ms, each a sample of at least
    // 30 ms. Once they are more than 1% of the window, the p99 is 30 ms and
    // the next refresh triples it: the calls fit again, and their latency
    // is learned, capped at the ceiling. Well within the 2 s window.
    let err = svc
        .clone()
        .oneshot(Duration::from_millis(45))
        .await
        .unwrap_err();
    assert!(err.is::<AdaptiveTimeoutElapsed>());
    load(&svc, 300, || Duration::from_millis(45)).await;
    advance(Duration::from_millis(100)).await;
    assert_eq!(layer.timeout(), Duration::from_millis(100), "capped");
    assert!(svc.clone().oneshot(Duration::from_millis(45)).await.is_ok());

    // A dependency that hangs is a jump like any other: the timeout climbs
    // by the multiplier per refresh and stops at the ceiling.
    load(&svc, 1_000, || Duration::from_secs(3_600)).await;
    advance(Duration::from_millis(100)).await;
    assert_eq!(layer.timeout(), Duration::from_millis(100), "the ceiling");
}

/// The attack that found the timeouts were never samples: 4 calls in 5
/// step from 10 ms to 100 ms (above p99 x 3 = 30 ms), and the fifth stays
/// fast, so the window never empties of successes. The timeout must follow
/// within the window length, not stay at 30 ms with 80% of calls failing.
#[tokio::test(start_paused = true)]
async fn follows_a_step_above_the_timeout_within_the_window() {
    let layer = AdaptiveTimeoutLayer::builder()
        .floor(MS)
        .window(Duration::from_secs(10))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(dependency());
    let mut i = 0u64;
    load(&svc, 10_000, || Duration::from_millis(10)).await;
    advance(Duration::from_millis(100)).await;
    assert!(
        within(layer.timeout(), 30 * MS, 0.02),
        "{:?}",
        layer.timeout()
    );

    let timed_out = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    // One window (10 s) of traffic, one call per ms.
    for _ in 0..10_000 {
        i += 1;
        let latency = if i.is_multiple_of(5) {
            10 * MS
        } else {
            100 * MS
        };
        let (svc, timed_out) = (svc.clone(), timed_out.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = svc.oneshot(latency).await {
                assert!(e.is::<AdaptiveTimeoutElapsed>());
                timed_out.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
        sleep(MS).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    advance(Duration::from_millis(100)).await;
    let timeout = layer.timeout();
    let timed_out = timed_out.load(std::sync::atomic::Ordering::Relaxed);
    // p99 of the new mixture is 100 ms: x3 = 300 ms.
    assert!(
        within(timeout, 300 * MS, 0.05),
        "after one window the timeout is {timeout:?}"
    );
    assert!(
        timed_out < 1_000,
        "{timed_out} of 10,000 calls timed out while it learned"
    );
    println!("step 10 -> 100 ms: {timed_out} of 10,000 calls timed out, timeout {timeout:?}");
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
    // 48 fast successes: not enough to trust a percentile.
    load(&svc, 48, || Duration::from_millis(5)).await;
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
    // The timeout (a sample of at least 200 ms) and the 150 ms call make 50
    // samples: now p99 x 3 of those applies (rank 50 of 50 is the 200 ms
    // lower bound), within the 1.6% bucket width.
    advance(Duration::from_secs(1)).await;
    assert!(
        within(layer.timeout(), 600 * MS, 0.02),
        "{:?}",
        layer.timeout()
    );
    assert_eq!(layer.samples(), 50);
}

#[tokio::test(start_paused = true)]
async fn failures_and_carried_deadlines_do_not_feed_the_estimate_timeouts_do() {
    let layer = AdaptiveTimeoutLayer::builder()
        .initial_timeout(Duration::from_millis(300))
        .min_samples(10)
        .http()
        .build()
        .unwrap();
    // A request whose body says how long the dependency takes.
    let answer = http::Request::new;
    let dependency = service_fn(|req: http::Request<Duration>| async move {
        let latency = *req.body();
        sleep(latency).await;
        // Fast answers are failures (503).
        let status = if latency < 10 * MS { 503 } else { 200 };
        let mut res = http::Response::new(());
        *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
        Ok::<_, BoxError>(res)
    });
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(dependency);
    // Failures: their latency says nothing of an answer's.
    for _ in 0..100 {
        let res = svc.clone().oneshot(answer(MS)).await.unwrap();
        assert_eq!(res.status(), 503);
    }
    // Timeouts of the request's own shorter deadline: nothing of the
    // dependency either.
    for _ in 0..20 {
        let mut req = answer(Duration::from_secs(5));
        req.headers_mut()
            .insert("grpc-timeout", "50m".parse().unwrap());
        let err = svc.clone().oneshot(req).await.unwrap_err();
        assert!(err
            .downcast_ref::<AdaptiveTimeoutElapsed>()
            .unwrap()
            .carried());
    }
    advance(Duration::from_secs(1)).await;
    assert_eq!(layer.timeout(), 300 * MS);
    assert_eq!(layer.samples(), 0);
    // Timeouts at the adaptive threshold are samples of at least the
    // threshold: the only way to learn a latency above it.
    for _ in 0..10 {
        let err = svc
            .clone()
            .oneshot(answer(Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert!(!err
            .downcast_ref::<AdaptiveTimeoutElapsed>()
            .unwrap()
            .carried());
    }
    advance(Duration::from_secs(1)).await;
    // p99 of ten samples of at least 300 ms, x3.
    assert!(
        within(layer.timeout(), 900 * MS, 0.02),
        "{:?}",
        layer.timeout()
    );
    assert_eq!(layer.samples(), 10);
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
async fn calls_answered_at_once_are_not_samples() {
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
    assert_eq!(layer.samples(), 0, "the caller never waited");
    assert_eq!(layer.timeout(), Duration::from_secs(1), "still the initial");
}

/// A cache in front of the dependency: 199 calls in 200 answer on their
/// first poll, the misses take 50 ms. Counted as zero, the hits dragged the
/// p99 to the floor (10 ms) and 98 of 100 misses timed out; the percentile
/// is of the calls that wait.
#[tokio::test(start_paused = true)]
async fn calls_answered_at_once_do_not_drag_the_timeout_to_the_floor() {
    let layer = AdaptiveTimeoutLayer::builder()
        .min_samples(20)
        .build()
        .unwrap();
    let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = n.clone();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(service_fn(move |(): ()| {
            let i = seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                if i.is_multiple_of(200) {
                    sleep(50 * MS).await;
                }
                Ok::<_, BoxError>(())
            }
        }));
    let mut misses_timed_out = 0;
    for i in 0..20_000u32 {
        let res = svc.clone().oneshot(()).await;
        if res.is_err() {
            misses_timed_out += 1;
        }
        if i % 200 != 0 {
            sleep(3 * MS).await;
        }
    }
    advance(Duration::from_millis(100)).await;
    assert_eq!(misses_timed_out, 0);
    assert!(
        within(layer.timeout(), 150 * MS, 0.02),
        "p99 of the misses x 3: {:?}",
        layer.timeout()
    );
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
