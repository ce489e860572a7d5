//! The breaker is exact under concurrency and records what really happened:
//! panicking calls are failures, a time window's judgement never sees torn
//! totals, and outcomes recorded from several threads are all kept.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use seawall_circuit_breaker::{CircuitBreakerEvent, CircuitBreakerLayer, EventKind, State};
use seawall_core::event::FnListener;
use seawall_core::BoxError;
use tower::{service_fn, Layer, ServiceExt};

#[derive(Debug)]
struct Boom;

impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("boom")
    }
}

impl std::error::Error for Boom {}

async fn backend(fail: bool) -> Result<(), Boom> {
    if fail {
        Err(Boom)
    } else {
        Ok(())
    }
}

/// Seconds the stress tests run for: short in CI, longer with
/// `SEAWALL_STRESS_SECS`.
fn stress_secs(default: f64) -> Duration {
    let secs = std::env::var("SEAWALL_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(default);
    Duration::from_secs_f64(secs)
}

#[tokio::test(start_paused = true)]
async fn a_panicking_call_is_recorded_as_a_failure_then_the_panic_resumes() {
    let layer = CircuitBreakerLayer::builder()
        .count_window(4)
        .minimum_calls(2)
        .open_duration(Duration::from_secs(5))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|panic: bool| async move {
        assert!(!panic, "dependency bug");
        Ok::<_, BoxError>("ok")
    }));

    let call = tokio::spawn(svc.clone().oneshot(true));
    let err = call.await.unwrap_err();
    assert!(err.is_panic(), "the panic reaches the caller");
    let m = handle.metrics();
    assert_eq!((m.calls, m.failures), (1, 1));
    assert_eq!(m.consecutive_failures, 1);
    let _ = tokio::spawn(svc.clone().oneshot(true)).await;
    assert_eq!(handle.state(), State::Open);

    // A panicking probe is a failed probe: the breaker opens again.
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(tokio::spawn(svc.clone().oneshot(true))
        .await
        .unwrap_err()
        .is_panic());
    assert_eq!(handle.state(), State::Open);
    assert_eq!(handle.metrics().consecutive_trips, 2);
}

/// Several threads record a true failure rate of 45 % (failures spread
/// evenly through each thread's calls) into a time window of 1 ms buckets,
/// so buckets are handed over thousands of times while others record and
/// read. With a threshold of 0.5 and a minimum of 1000 calls no window of
/// these calls can reach 0.5, so any trip is a judgement on torn totals; no
/// judged or reported rate may exceed 1 either.
#[test]
fn time_window_judgements_never_see_torn_totals() {
    const THREADS: usize = 4;
    let tripped = Arc::new(Mutex::new(Vec::new()));
    let log = tripped.clone();
    let layer = CircuitBreakerLayer::builder()
        .time_window(Duration::from_millis(10), 10)
        .minimum_calls(1000)
        .failure_rate_threshold(0.5)
        .slow_call_duration(Duration::from_secs(3600))
        .listener(FnListener::new(move |e: &CircuitBreakerEvent| {
            if let EventKind::FailureRateExceeded { rate, .. }
            | EventKind::SlowCallRateExceeded { rate, .. } = *e.kind()
            {
                log.lock().unwrap().push(rate);
            }
        }))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(backend));
    let deadline = std::time::Instant::now() + stress_secs(2.0);
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(THREADS)
        .build()
        .unwrap();
    runtime.block_on(async {
        let writers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (svc, calls) = (svc.clone(), calls.clone());
                tokio::spawn(async move {
                    let mut i = t as u64;
                    while std::time::Instant::now() < deadline {
                        for _ in 0..256 {
                            // 9 of every 20 calls fail, spread evenly.
                            let fail = (i * 9) % 20 < 9;
                            let _ = svc.clone().oneshot(fail).await;
                            i += 1;
                        }
                        calls.fetch_add(256, Ordering::Relaxed);
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        let reader = {
            let (handle, stop) = (handle.clone(), stop.clone());
            tokio::spawn(async move {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let m = handle.metrics();
                    assert!(m.failures <= m.calls, "{m:?}");
                    assert!(m.slow_calls <= m.calls, "{m:?}");
                    if let Some(rate) = m.failure_rate {
                        assert!(rate <= 0.5, "reported rate {rate}");
                    }
                    reads += 1;
                    tokio::task::yield_now().await;
                }
                reads
            })
        };
        for w in writers {
            w.await.unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        assert!(reader.await.unwrap() > 0);
    });
    assert!(calls.load(Ordering::Relaxed) > 10_000);
    assert_eq!(*tripped.lock().unwrap(), Vec::<f64>::new());
    assert_eq!(handle.state(), State::Closed);
}

/// Calls recorded from several threads inside one window are all there.
#[test]
fn outcomes_recorded_from_several_threads_are_all_kept() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 20_000;
    // 4096 buckets of about 2.4 ms: the calls cross hundreds of bucket
    // boundaries, all inside the window.
    let layer = CircuitBreakerLayer::builder()
        .time_window(Duration::from_secs(10), 4096)
        .minimum_calls(u64::MAX >> 1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(backend));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let svc = svc.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    for i in 0..PER_THREAD {
                        let _ = svc.clone().oneshot(i % 4 == 0).await;
                    }
                });
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let m = handle.metrics();
    assert_eq!(m.calls, THREADS * PER_THREAD);
    assert_eq!(m.failures, THREADS * PER_THREAD / 4);
}
