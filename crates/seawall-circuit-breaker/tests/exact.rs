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

fn probing(probes: u32, wait: u64) -> seawall_circuit_breaker::Builder {
    CircuitBreakerLayer::builder()
        .count_window(2)
        .minimum_calls(2)
        .open_duration(Duration::from_secs(10))
        .half_open_probes(probes)
        .max_half_open_wait(Duration::from_secs(wait))
}

/// What each call does: fail at once, succeed after some seconds, or hang.
#[derive(Debug, Clone, Copy)]
enum Call {
    Fail,
    OkAfter(u64),
    Hang,
}

async fn dependency(call: Call) -> Result<(), Boom> {
    match call {
        Call::Fail => Err(Boom),
        Call::OkAfter(secs) => {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            Ok(())
        }
        Call::Hang => std::future::pending().await,
    }
}

#[tokio::test(start_paused = true)]
async fn a_probe_is_lost_max_half_open_wait_after_its_own_admission() {
    let layer = probing(4, 30).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(dependency));
    for _ in 0..2 {
        let _ = svc.clone().oneshot(Call::Fail).await;
    }
    tokio::time::advance(Duration::from_secs(10)).await;

    // One probe hangs; a second is admitted 20 s later and is healthy.
    let hung = tokio::spawn(svc.clone().oneshot(Call::Hang));
    tokio::task::yield_now().await;
    assert_eq!(handle.state(), State::HalfOpen);
    tokio::time::advance(Duration::from_secs(20)).await;
    let late = tokio::spawn(svc.clone().oneshot(Call::OkAfter(60)));
    tokio::task::yield_now().await;
    assert_eq!(handle.metrics().probes_in_flight, 2);

    // Free slots remain, but 30 s after the hung probe's admission the next
    // call opens the breaker, as of that moment.
    tokio::time::advance(Duration::from_secs(15)).await;
    let err = svc.clone().oneshot(Call::OkAfter(0)).await.unwrap_err();
    let open = err
        .downcast_ref::<seawall_circuit_breaker::CircuitOpen>()
        .unwrap();
    assert_eq!(handle.state(), State::Open);
    // Lost at +30 s, now +35 s: 5 s of the 10 s open period are left.
    assert_eq!(
        seawall_core::Rejection::retry_after(open),
        Some(Duration::from_secs(5))
    );
    assert_eq!(
        handle.metrics().open_remaining,
        Some(Duration::from_secs(5))
    );
    hung.abort();
    late.abort();
}

#[tokio::test(start_paused = true)]
async fn a_healthy_probe_admitted_late_is_not_declared_lost() {
    let layer = probing(2, 30).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(dependency));
    for _ in 0..2 {
        let _ = svc.clone().oneshot(Call::Fail).await;
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    svc.clone().oneshot(Call::OkAfter(0)).await.unwrap();
    assert_eq!(handle.state(), State::HalfOpen);
    let m = handle.metrics();
    assert!(m.probe_window);
    assert_eq!((m.calls, m.successes, m.failures), (1, 1, 0));
    assert_eq!(m.failure_rate, Some(0.0));

    // The second probe starts 25 s into half-open and takes 10 s.
    tokio::time::advance(Duration::from_secs(25)).await;
    let second = tokio::spawn(svc.clone().oneshot(Call::OkAfter(10)));
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_secs(6)).await;
    // 31 s into half-open, every slot taken: refused with the time left
    // until that probe's own wait runs out (25 + 30 - 31 = 24 s).
    let err = svc.clone().oneshot(Call::OkAfter(0)).await.unwrap_err();
    let open = err
        .downcast_ref::<seawall_circuit_breaker::CircuitOpen>()
        .unwrap();
    assert_eq!(
        seawall_core::Rejection::retry_after(open),
        Some(Duration::from_secs(24))
    );
    assert_eq!(handle.state(), State::HalfOpen);
    second.await.unwrap().unwrap();
    assert_eq!(handle.state(), State::Closed);
    assert!(!handle.metrics().probe_window);
}

#[tokio::test(start_paused = true)]
async fn metrics_report_the_failed_probes_after_reopening_and_forced_open_hints() {
    let layer = probing(2, 30).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(dependency));
    for _ in 0..2 {
        let _ = svc.clone().oneshot(Call::Fail).await;
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    let _ = svc.clone().oneshot(Call::Fail).await;
    let m = handle.metrics();
    assert!(m.probe_window);
    assert_eq!((m.calls, m.failures, m.successes), (1, 1, 0));
    svc.clone().oneshot(Call::OkAfter(0)).await.unwrap();
    let m = handle.metrics();
    assert_eq!(m.state, State::Open);
    assert!(m.probe_window, "the verdict of the attempt");
    assert_eq!((m.calls, m.failures, m.successes), (2, 1, 1));
    assert_eq!(m.failure_rate, Some(0.5));

    handle.force_open();
    let err = svc.clone().oneshot(Call::OkAfter(0)).await.unwrap_err();
    let open = err
        .downcast_ref::<seawall_circuit_breaker::CircuitOpen>()
        .unwrap();
    assert_eq!(
        seawall_core::Rejection::retry_after(open),
        Some(Duration::from_secs(10))
    );
    assert!(!handle.metrics().probe_window);
}

#[tokio::test(start_paused = true)]
async fn metrics_only_records_and_reports_but_never_refuses() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let layer = probing(1, 30)
        .metrics_only(true)
        .listener(FnListener::new(move |e: &CircuitBreakerEvent| {
            // Per-call events are tested with the metrics listener.
            if !matches!(e.kind(), EventKind::CallRecorded { .. }) {
                log.lock().unwrap().push(*e.kind());
            }
        }))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(dependency));
    for _ in 0..5 {
        assert!(!svc
            .clone()
            .oneshot(Call::Fail)
            .await
            .unwrap_err()
            .is::<seawall_circuit_breaker::CircuitOpen>());
    }
    assert_eq!(handle.state(), State::Closed);
    let m = handle.metrics();
    assert_eq!((m.calls, m.failures, m.rejected), (2, 2, 0));
    let events = events.lock().unwrap();
    assert!(events
        .iter()
        .all(|e| matches!(e, EventKind::FailureRateExceeded { .. })));
    assert_eq!(events.len(), 4, "{events:?}");
}

/// Absurd durations in every setter saturate: building and using the
/// breaker never overflows or panics.
#[tokio::test(start_paused = true)]
async fn absurd_durations_never_overflow() {
    let max = Duration::MAX;
    let built = CircuitBreakerLayer::builder()
        .time_window(max, 10)
        .slow_call_duration(max)
        .max_half_open_wait(max)
        .open_duration(max)
        .minimum_calls(1)
        .key_idle_timeout(max)
        .build();
    let layer = built.expect("absurd durations saturate");
    let handle = layer.handle();
    let svc = layer.layer(service_fn(backend));
    let _ = svc.clone().oneshot(true).await;
    assert_eq!(handle.state(), State::Open);
    tokio::time::advance(Duration::from_secs(3600)).await;
    let err = svc.clone().oneshot(false).await.unwrap_err();
    assert!(err.is::<seawall_circuit_breaker::CircuitOpen>());
    let m = handle.metrics();
    assert!(m.open_remaining.is_some());
    handle.force_open();
    let _ = svc.clone().oneshot(false).await.unwrap_err();
    handle.reset();
    svc.clone().oneshot(false).await.unwrap();
}
