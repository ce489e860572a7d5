//! `max_half_open_wait` is timed per probe, from the moment it took its
//! slot (in `poll_ready`), not from the start of half-open.

use std::time::Duration;

use seawall_circuit_breaker::{CircuitBreakerLayer, CircuitOpen, State};
use tower::{service_fn, Layer, Service, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Half-open with 2 probes and a wait of 1 s. Probe 1 runs and succeeds at
/// once. Probe 2 takes its slot 1.2 s into half-open and is not called yet.
/// Another caller arrives: probe 2 was admitted 0 s ago, so it is not lost
/// and the breaker stays half-open (it used to time the uncalled slot from
/// the start of half-open and reopen at once, throwing probe 2's success
/// away).
#[tokio::test(start_paused = true)]
async fn a_probe_admitted_late_is_timed_from_its_admission() {
    let layer = CircuitBreakerLayer::builder()
        .count_window(2)
        .minimum_calls(2)
        .failure_rate_threshold(0.5)
        .open_duration(Duration::from_secs(5))
        .half_open_probes(2)
        .max_half_open_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|fail: bool| async move {
        if fail {
            Err::<(), BoxError>("down".into())
        } else {
            Ok(())
        }
    }));
    for _ in 0..2 {
        let _ = svc.clone().oneshot(true).await;
    }
    assert_eq!(handle.state(), State::Open);
    tokio::time::advance(Duration::from_secs(5)).await;
    // Probe 1: admitted and finished at once.
    svc.clone().oneshot(false).await.unwrap();
    assert_eq!(handle.state(), State::HalfOpen);
    tokio::time::advance(Duration::from_millis(1200)).await;
    // Probe 2: admitted now, called a moment later.
    let mut probe2 = svc.clone();
    probe2.ready().await.unwrap();
    // A third caller is refused (both slots taken) and must not declare
    // probe 2 lost.
    let third = svc.clone().oneshot(false).await;
    assert!(third.is_err_and(|e| e.is::<CircuitOpen>()));
    assert_eq!(
        handle.state(),
        State::HalfOpen,
        "probe admitted 0 s ago declared lost"
    );
    tokio::time::advance(Duration::from_millis(500)).await;
    probe2.call(false).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
}

/// The wait still runs out per probe: a probe admitted and never called is
/// lost `max_half_open_wait` after its own admission, not before, and the
/// new open period starts at that moment.
#[tokio::test(start_paused = true)]
async fn an_uncalled_probe_is_lost_a_wait_after_its_admission() {
    let layer = CircuitBreakerLayer::builder()
        .count_window(2)
        .minimum_calls(2)
        .failure_rate_threshold(0.5)
        .open_duration(Duration::from_secs(5))
        .half_open_probes(1)
        .max_half_open_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|fail: bool| async move {
        if fail {
            Err::<(), BoxError>("down".into())
        } else {
            Ok(())
        }
    }));
    for _ in 0..2 {
        let _ = svc.clone().oneshot(true).await;
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    // Half-open starts with a refused-free admission at +0.6 s.
    tokio::time::advance(Duration::from_millis(600)).await;
    let mut probe = svc.clone();
    probe.ready().await.unwrap();
    assert_eq!(handle.state(), State::HalfOpen);
    tokio::time::advance(Duration::from_millis(900)).await;
    assert!(svc.clone().oneshot(false).await.is_err());
    assert_eq!(
        handle.state(),
        State::HalfOpen,
        "lost before its own wait ran out"
    );
    tokio::time::advance(Duration::from_millis(150)).await;
    let refused = svc.clone().oneshot(false).await.unwrap_err();
    assert_eq!(
        handle.state(),
        State::Open,
        "lost once its own wait ran out"
    );
    // The new open period started when the wait ran out (50 ms ago).
    let hint = seawall_core::Rejection::retry_after(refused.downcast_ref::<CircuitOpen>().unwrap());
    assert_eq!(hint, Some(Duration::from_millis(4_950)));
    drop(probe);
}
