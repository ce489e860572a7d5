//! Every transition of the breaker, in paused virtual time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Response, StatusCode};
use seawall_circuit_breaker::{
    Builder, CircuitBreakerEvent, CircuitBreakerLayer, CircuitOpen, EventKind, OpenDuration, State,
};
use seawall_core::event::FnListener;
use seawall_core::{BoxError, GrpcClassifier, HttpClassifier, Outcome, Rejection};
use tower::{service_fn, Layer, Service, ServiceExt};

const MS: fn(u64) -> Duration = Duration::from_millis;
const SECS: fn(u64) -> Duration = Duration::from_secs;

#[derive(Debug, Clone, Copy)]
enum Call {
    Ok,
    Fail,
    /// Succeeds after this many milliseconds.
    Slow(u64),
    /// Fails after this many milliseconds.
    SlowFail(u64),
}

type Svc = tower::util::BoxCloneService<Call, &'static str, BoxError>;

/// A breaker in front of a backend that does what each call says, counting
/// the calls that reach it.
fn breaker(builder: Builder) -> (Svc, seawall_circuit_breaker::Handle, Arc<AtomicUsize>) {
    let layer = builder.build().expect("valid config");
    let handle = layer.handle();
    let reached = Arc::new(AtomicUsize::new(0));
    (
        tower::util::BoxCloneService::new(layer.layer(backend(reached.clone()))),
        handle,
        reached,
    )
}

/// A backend that does what each call says, counting the calls in `reached`.
fn backend(
    reached: Arc<AtomicUsize>,
) -> impl Service<Call, Response = &'static str, Error = BoxError, Future: Send> + Clone + Send + 'static
{
    service_fn(move |call: Call| {
        reached.fetch_add(1, Ordering::SeqCst);
        async move {
            match call {
                Call::Ok => Ok("ok"),
                Call::Fail => Err::<_, BoxError>("boom".into()),
                Call::Slow(ms) => {
                    tokio::time::sleep(MS(ms)).await;
                    Ok("slow")
                }
                Call::SlowFail(ms) => {
                    tokio::time::sleep(MS(ms)).await;
                    Err("slow boom".into())
                }
            }
        }
    })
}

async fn send(svc: &mut Svc, call: Call) -> Result<&'static str, BoxError> {
    svc.ready().await?.call(call).await
}

fn open_error(res: Result<&'static str, BoxError>) -> CircuitOpen {
    let err = res.expect_err("expected a rejection");
    *err.downcast_ref::<CircuitOpen>()
        .unwrap_or_else(|| panic!("not CircuitOpen: {err}"))
}

fn small() -> Builder {
    CircuitBreakerLayer::builder()
        .count_window(10)
        .minimum_calls(4)
        .failure_rate_threshold(0.5)
        .open_duration(SECS(10))
}

#[tokio::test(start_paused = true)]
async fn trips_at_the_failure_rate_once_minimum_calls_are_in() {
    let (mut svc, handle, _) = breaker(small());
    // Three failures: 100% but under minimum_calls.
    for _ in 0..3 {
        assert!(send(&mut svc, Call::Fail).await.is_err());
    }
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.metrics().failure_rate, None);
    // The fourth call is a success: 3/4 = 75% >= 50%.
    assert_eq!(send(&mut svc, Call::Ok).await.unwrap(), "ok");
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn stays_closed_under_the_threshold() {
    let (mut svc, handle, _) = breaker(small());
    for i in 0..40 {
        let call = if i % 3 == 2 { Call::Fail } else { Call::Ok };
        let _ = send(&mut svc, call).await;
    }
    assert_eq!(handle.state(), State::Closed);
    let m = handle.metrics();
    assert_eq!(m.calls, 10);
    assert!(m.failure_rate.unwrap() < 0.5);
}

#[tokio::test(start_paused = true)]
async fn count_window_slides() {
    // With counters that only grow, 4 failures out of 7 calls (57%) would
    // never reach 75%; over the last 4 calls they do.
    let (mut svc, handle, _) = breaker(
        CircuitBreakerLayer::builder()
            .count_window(4)
            .minimum_calls(4)
            .failure_rate_threshold(0.75),
    );
    for call in [
        Call::Fail,
        Call::Ok,
        Call::Ok,
        Call::Ok,
        Call::Fail,
        Call::Fail,
    ] {
        let _ = send(&mut svc, call).await;
    }
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.metrics().failures, 2);
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_old_failures() {
    let (mut svc, handle, _) = breaker(
        CircuitBreakerLayer::builder()
            .time_window(SECS(10), 10)
            .minimum_calls(3)
            .failure_rate_threshold(0.6),
    );
    let _ = send(&mut svc, Call::Fail).await;
    let _ = send(&mut svc, Call::Fail).await;
    tokio::time::advance(SECS(11)).await;
    // The two failures left the window: one failure in two calls.
    let _ = send(&mut svc, Call::Ok).await;
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.metrics().calls, 2);
    let _ = send(&mut svc, Call::Ok).await;
    assert_eq!(handle.state(), State::Closed);
    // Two failures of four inside the window: 50% < 60%; a third trips.
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Closed);
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_whatever_their_outcome() {
    let (mut svc, handle, _) = breaker(
        small()
            .slow_call_duration(MS(100))
            .slow_call_rate_threshold(0.5),
    );
    send(&mut svc, Call::Ok).await.unwrap();
    send(&mut svc, Call::Slow(50)).await.unwrap();
    send(&mut svc, Call::Slow(150)).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.metrics().slow_calls, 1);
    send(&mut svc, Call::Slow(101)).await.unwrap();
    // Two slow calls of four: the slow-call rate reached 50%.
    assert_eq!(handle.state(), State::Open);
    assert_eq!(handle.metrics().failures, 0);
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_trip_and_successes_reset_the_run() {
    let (mut svc, handle, _) = breaker(
        CircuitBreakerLayer::builder()
            .count_window(100)
            .minimum_calls(100)
            .consecutive_failures(3),
    );
    for call in [Call::Fail, Call::Fail, Call::Ok, Call::Fail, Call::Fail] {
        let _ = send(&mut svc, call).await;
    }
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.metrics().consecutive_failures, 2);
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn open_rejects_fast_with_time_left_and_never_reaches_the_backend() {
    let (mut svc, handle, reached) = breaker(small());
    for _ in 0..4 {
        let _ = send(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.state(), State::Open);
    assert_eq!(reached.load(Ordering::SeqCst), 4);
    tokio::time::advance(SECS(3)).await;
    let res = send(&mut svc, Call::Ok).await;
    let err = res.as_ref().map(|_| ()).unwrap_err();
    assert_eq!(err.to_string(), "circuit breaker is open");
    let found = seawall_core::rejection::find(&**err).unwrap();
    assert_eq!(found.kind(), "circuit_open");
    let open = open_error(res);
    assert_eq!(open.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(open.retry_after(), Some(SECS(7)));
    assert_eq!(reached.load(Ordering::SeqCst), 4);
    let m = handle.metrics();
    assert_eq!(m.rejected, 1);
    assert_eq!(m.open_remaining, Some(SECS(7)));
}

#[tokio::test(start_paused = true)]
async fn open_does_not_wait_for_inner_readiness() {
    let layer = small().build().unwrap();
    let handle = layer.handle();
    let (mut svc, mut mock) = tower_test::mock::spawn_layer::<Call, &'static str, _>(layer);
    mock.allow(0);
    // Closed: readiness is the inner service's.
    assert!(svc.poll_ready().is_pending());
    handle.force_open();
    // Open: ready at once, and the call fails without reaching the mock.
    assert!(svc.poll_ready().is_ready());
    let err = svc.call(Call::Ok).await.unwrap_err();
    assert!(err.is::<CircuitOpen>());
    // Forced open hints the base open duration.
    assert_eq!(open_error(Err(err)).retry_after(), Some(SECS(10)));
    assert!(mock.poll_request().is_pending());
    // Back to closed: readiness is the inner service's again.
    handle.reset();
    assert!(svc.poll_ready().is_pending());
    mock.allow(1);
    assert!(svc.poll_ready().is_ready());
}

/// A call admitted while disabled and still waiting for the inner service
/// must be refused once the breaker is forced open.
#[tokio::test(start_paused = true)]
async fn forced_open_refuses_a_call_admitted_while_disabled() {
    let layer = small().build().unwrap();
    let handle = layer.handle();
    let (mut svc, mut mock) = tower_test::mock::spawn_layer::<Call, &'static str, _>(layer);
    mock.allow(0);
    handle.disable();
    assert!(svc.poll_ready().is_pending());
    handle.force_open();
    assert!(svc.poll_ready().is_ready());
    let err = svc.call(Call::Ok).await.unwrap_err();
    assert!(err.is::<CircuitOpen>());
    assert!(mock.poll_request().is_pending());
}

#[tokio::test(start_paused = true)]
async fn half_open_probe_success_closes_with_a_fresh_window() {
    let (mut svc, handle, reached) = breaker(small());
    let mut changes = handle.subscribe();
    for _ in 0..4 {
        let _ = send(&mut svc, Call::Fail).await;
    }
    assert!(changes.has_changed().unwrap());
    assert_eq!(*changes.borrow_and_update(), State::Open);
    tokio::time::advance(SECS(10)).await;
    assert_eq!(send(&mut svc, Call::Ok).await.unwrap(), "ok");
    assert_eq!(reached.load(Ordering::SeqCst), 5);
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(*changes.borrow_and_update(), State::Closed);
    let m = handle.metrics();
    assert_eq!((m.calls, m.failures, m.consecutive_trips), (0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn half_open_probe_failure_reopens_for_a_longer_backoff() {
    let (mut svc, handle, _) =
        breaker(small().open_duration(OpenDuration::exponential(SECS(10), SECS(25))));
    for _ in 0..4 {
        let _ = send(&mut svc, Call::Fail).await;
    }
    for expected in [SECS(20), SECS(25), SECS(25)] {
        tokio::time::advance(handle.metrics().open_remaining.unwrap()).await;
        let _ = send(&mut svc, Call::Fail).await;
        assert_eq!(handle.state(), State::Open);
        let open = open_error(send(&mut svc, Call::Ok).await);
        assert_eq!(open.retry_after(), Some(expected));
    }
    // A successful probe closes and the backoff starts over.
    tokio::time::advance(SECS(25)).await;
    send(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
    for _ in 0..4 {
        let _ = send(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.metrics().open_remaining, Some(SECS(10)));
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_exactly_the_configured_probes() {
    let (svc, handle, reached) = breaker(small().half_open_probes(3));
    let mut svc = svc;
    for _ in 0..4 {
        let _ = send(&mut svc, Call::Fail).await;
    }
    tokio::time::advance(SECS(10)).await;
    let probes: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(Call::Slow(1_000))))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(handle.metrics().probes_in_flight, 3);
    // Every slot is taken: the overflow is rejected, told to come back
    // when the probes' `max_half_open_wait` (60 s by default) runs out.
    let open = open_error(send(&mut svc, Call::Ok).await);
    assert_eq!(open.retry_after(), Some(SECS(60)));
    assert_eq!(reached.load(Ordering::SeqCst), 7);
    for p in probes {
        assert_eq!(p.await.unwrap().unwrap(), "slow");
    }
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.metrics().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn probes_at_the_failure_threshold_reopen() {
    let (svc, handle, _) = breaker(small().half_open_probes(2));
    let mut svc = svc;
    for _ in 0..4 {
        let _ = send(&mut svc, Call::Fail).await;
    }
    tokio::time::advance(SECS(10)).await;
    let a = tokio::spawn(svc.clone().oneshot(Call::Slow(10)));
    let b = tokio::spawn(svc.clone().oneshot(Call::SlowFail(20)));
    assert!(a.await.unwrap().is_ok());
    assert_eq!(handle.state(), State::HalfOpen);
    assert!(b.await.unwrap().is_err());
    // One failure of two probes = 50%, the threshold.
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_gives_its_slot_back() {
    let (mut svc, handle, reached) = breaker(small());
    for _ in 0..4 {
        let _ = send(&mut svc, Call::Fail).await;
    }
    tokio::time::advance(SECS(10)).await;
    let probe = tokio::spawn(svc.clone().oneshot(Call::Slow(60_000)));
    tokio::task::yield_now().await;
    assert_eq!(handle.metrics().probes_in_flight, 1);
    assert!(send(&mut svc, Call::Ok).await.is_err());
    probe.abort();
    assert!(probe.await.unwrap_err().is_cancelled());
    assert_eq!(handle.metrics().probes_in_flight, 0);
    assert_eq!(send(&mut svc, Call::Ok).await.unwrap(), "ok");
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(reached.load(Ordering::SeqCst), 6);
}

/// A classifier that panics on a probe's result must not keep the probe's
/// slot taken until `max_half_open_wait`.
#[tokio::test(start_paused = true)]
async fn a_probe_whose_classifier_panics_gives_its_slot_back() {
    let classify = |res: Result<&&'static str, &BoxError>| match res {
        Ok(&"bad") => panic!("classifier bug"),
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    };
    let layer = small().classifier(classify).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|call: Call| async move {
        match call {
            Call::Fail => Err::<&'static str, BoxError>("boom".into()),
            Call::Slow(_) => Ok("bad"),
            _ => Ok("ok"),
        }
    }));
    for _ in 0..4 {
        let _ = svc.clone().oneshot(Call::Fail).await;
    }
    tokio::time::advance(SECS(10)).await;
    let probe = tokio::spawn(svc.clone().oneshot(Call::Slow(0)));
    assert!(probe.await.unwrap_err().is_panic());
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(handle.metrics().probes_in_flight, 0);
    assert_eq!(svc.clone().oneshot(Call::Ok).await.unwrap(), "ok");
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn lost_probes_do_not_wedge_the_breaker() {
    let (mut svc, handle, _) = breaker(small().max_half_open_wait(SECS(30)));
    for _ in 0..4 {
        let _ = send(&mut svc, Call::Fail).await;
    }
    tokio::time::advance(SECS(10)).await;
    // A probe that hangs far longer than anyone waits.
    let hung = tokio::spawn(svc.clone().oneshot(Call::Slow(3_600_000)));
    tokio::task::yield_now().await;
    assert_eq!(handle.state(), State::HalfOpen);
    tokio::time::advance(SECS(29)).await;
    assert!(send(&mut svc, Call::Ok).await.is_err());
    assert_eq!(handle.state(), State::HalfOpen);
    tokio::time::advance(SECS(1)).await;
    // The wait is over: the breaker opens again instead of waiting forever.
    let open = open_error(send(&mut svc, Call::Ok).await);
    assert_eq!(handle.state(), State::Open);
    assert_eq!(open.retry_after(), Some(SECS(10)));
    tokio::time::advance(SECS(10)).await;
    assert_eq!(send(&mut svc, Call::Ok).await.unwrap(), "ok");
    assert_eq!(handle.state(), State::Closed);
    // The hung probe finishing later changes nothing.
    hung.abort();
    let _ = hung.await;
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn outcomes_of_an_earlier_state_are_dropped() {
    let (mut svc, handle, _) = breaker(small());
    // Admitted while closed, finishes after the trip and after the probe
    // has closed the breaker again: its failure must not count.
    let straggler = tokio::spawn(svc.clone().oneshot(Call::SlowFail(20_000)));
    // Admitted while closed, succeeds while half-open: must not close it.
    let early_success = tokio::spawn(svc.clone().oneshot(Call::Slow(10_500)));
    tokio::task::yield_now().await;
    for _ in 0..4 {
        let _ = send(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.state(), State::Open);
    tokio::time::advance(SECS(10)).await;
    let probe = tokio::spawn(svc.clone().oneshot(Call::Slow(1_000)));
    tokio::task::yield_now().await;
    assert_eq!(handle.state(), State::HalfOpen);
    assert!(early_success.await.unwrap().is_ok());
    assert_eq!(handle.state(), State::HalfOpen);
    assert!(probe.await.unwrap().is_ok());
    assert_eq!(handle.state(), State::Closed);
    assert!(straggler.await.unwrap().is_err());
    let m = handle.metrics();
    assert_eq!((m.calls, m.failures, m.consecutive_failures), (0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_are_not_recorded() {
    let classify = |res: Result<&&'static str, &BoxError>| match res {
        Ok(_) => Outcome::Success,
        Err(e) if e.to_string() == "slow boom" => Outcome::Ignore,
        Err(_) => Outcome::Failure,
    };
    let layer = small().classifier(classify).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(|call: Call| async move {
        match call {
            Call::SlowFail(_) => Err::<&'static str, BoxError>("slow boom".into()),
            Call::Fail => Err("boom".into()),
            _ => Ok("ok"),
        }
    }));
    for _ in 0..10 {
        let _ = svc.ready().await.unwrap().call(Call::SlowFail(0)).await;
    }
    assert_eq!(handle.metrics().calls, 0);
    let _ = svc.ready().await.unwrap().call(Call::Fail).await;
    let _ = svc.ready().await.unwrap().call(Call::Ok).await;
    let m = handle.metrics();
    assert_eq!((m.calls, m.failures), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn http_classifier_trips_on_5xx_responses() {
    let layer = small().classifier(HttpClassifier::new()).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(|status: u16| async move {
        Ok::<_, std::convert::Infallible>(Response::builder().status(status).body(()).unwrap())
    }));
    for status in [200, 404, 503, 500] {
        let res = svc.ready().await.unwrap().call(status).await.unwrap();
        assert_eq!(res.status().as_u16(), status);
    }
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn grpc_classifier_trips_on_unavailable_status() {
    let layer = small().classifier(GrpcClassifier::new()).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(|code: &'static str| async move {
        let res = Response::builder()
            .header("grpc-status", code)
            .body(())
            .unwrap();
        Ok::<_, std::convert::Infallible>(res)
    }));
    // OK, NOT_FOUND (a caller's problem), then UNAVAILABLE twice.
    for code in ["0", "5", "14"] {
        svc.ready().await.unwrap().call(code).await.unwrap();
    }
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.metrics().failures, 1);
    svc.ready().await.unwrap().call("14").await.unwrap();
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn handle_forces_open_disables_and_resets() {
    let (mut svc, handle, reached) = breaker(small());
    let mut changes = handle.subscribe();
    handle.force_open();
    assert_eq!(*changes.borrow_and_update(), State::ForcedOpen);
    tokio::time::advance(SECS(3_600)).await;
    assert_eq!(
        open_error(send(&mut svc, Call::Ok).await).retry_after(),
        Some(SECS(10))
    );
    assert_eq!(reached.load(Ordering::SeqCst), 0);

    handle.disable();
    assert_eq!(*changes.borrow_and_update(), State::Disabled);
    for _ in 0..20 {
        assert!(send(&mut svc, Call::Fail).await.is_err());
    }
    assert_eq!(handle.state(), State::Disabled);
    assert_eq!(handle.metrics().calls, 0);
    assert_eq!(reached.load(Ordering::SeqCst), 20);

    handle.reset();
    assert_eq!(*changes.borrow_and_update(), State::Closed);
    for _ in 0..4 {
        let _ = send(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.state(), State::Open);
    let since = handle.metrics().state_since;
    handle.reset();
    assert_eq!(handle.state(), State::Closed);
    assert!(handle.metrics().state_since >= since);
    assert_eq!(handle.metrics().calls, 0);
    assert_eq!(handle.name(), "circuit_breaker");
}

/// A leaked layer's breaker is the one its earlier handle and services
/// see: it trips, rejects, probes and closes as one breaker, and a handle
/// taken before the leak steers the services made after it.
#[tokio::test(start_paused = true)]
async fn a_leaked_layer_trips_and_shares_its_breaker_with_an_earlier_handle() {
    let layer = small().build().unwrap();
    let earlier_handle = layer.handle();
    let reached = Arc::new(AtomicUsize::new(0));
    let mut earlier: Svc = tower::util::BoxCloneService::new(layer.layer(backend(reached.clone())));
    let layer = layer.leak();
    let handle = layer.handle();
    let mut leaked: Svc = tower::util::BoxCloneService::new(layer.layer(backend(reached.clone())));

    // Failures through the leaked layer's service trip the breaker...
    for _ in 0..4 {
        assert!(send(&mut leaked, Call::Fail).await.is_err());
    }
    assert_eq!(reached.load(Ordering::SeqCst), 4);
    assert_eq!(handle.state(), State::Open);
    // ...that the handle and the service from before the leak see.
    assert_eq!(earlier_handle.state(), State::Open);
    assert_eq!(earlier_handle.metrics().failures, 4);
    assert_eq!(
        open_error(send(&mut earlier, Call::Ok).await).retry_after(),
        Some(SECS(10))
    );
    tokio::time::advance(SECS(4)).await;
    assert_eq!(
        open_error(send(&mut leaked, Call::Ok).await).retry_after(),
        Some(SECS(6))
    );
    assert_eq!(
        reached.load(Ordering::SeqCst),
        4,
        "rejected calls never reach it"
    );
    assert_eq!(earlier_handle.metrics().rejected, 2);

    // After the open duration one probe closes it, for everyone.
    tokio::time::advance(SECS(6)).await;
    assert_eq!(send(&mut leaked, Call::Ok).await.unwrap(), "ok");
    assert_eq!(earlier_handle.state(), State::Closed);

    // The earlier handle steers the leaked layer's services.
    earlier_handle.force_open();
    assert_eq!(handle.state(), State::ForcedOpen);
    assert!(open_error(send(&mut leaked, Call::Ok).await)
        .retry_after()
        .is_some());
    assert_eq!(reached.load(Ordering::SeqCst), 5);
    earlier_handle.reset();
    assert_eq!(send(&mut leaked, Call::Ok).await.unwrap(), "ok");
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn events_tell_the_story() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let builder =
        small()
            .name("inventory")
            .listener(FnListener::new(move |e: &CircuitBreakerEvent| {
                assert_eq!(seawall_core::Event::layer(e), "inventory");
                // Per-call events are tested with the metrics listener.
                if !matches!(e.kind(), EventKind::CallRecorded { .. }) {
                    log.lock().unwrap().push(*e.kind());
                }
            }));
    let layer = builder.build().unwrap();
    let mut svc = layer.layer(service_fn(|fail: bool| async move {
        if fail {
            Err::<(), BoxError>("boom".into())
        } else {
            Ok(())
        }
    }));
    for _ in 0..4 {
        let _ = svc.ready().await.unwrap().call(true).await;
    }
    let _ = svc.ready().await.unwrap().call(false).await;
    tokio::time::advance(SECS(10)).await;
    svc.ready().await.unwrap().call(false).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            EventKind::FailureRateExceeded {
                rate: 1.0,
                threshold: 0.5
            },
            EventKind::StateTransition {
                from: State::Closed,
                to: State::Open
            },
            EventKind::CallRejected { state: State::Open },
            EventKind::StateTransition {
                from: State::Open,
                to: State::HalfOpen
            },
            EventKind::StateTransition {
                from: State::HalfOpen,
                to: State::Closed
            },
        ]
    );
}

#[test]
fn invalid_config_is_an_error() {
    let field = |b: Builder| b.build().unwrap_err().field();
    let b = CircuitBreakerLayer::builder;
    assert_eq!(
        field(b().failure_rate_threshold(0.0)),
        "failure_rate_threshold"
    );
    assert_eq!(
        field(b().failure_rate_threshold(1.01)),
        "failure_rate_threshold"
    );
    assert_eq!(
        field(b().failure_rate_threshold(f64::NAN)),
        "failure_rate_threshold"
    );
    assert_eq!(
        field(b().slow_call_rate_threshold(-1.0)),
        "slow_call_rate_threshold"
    );
    assert_eq!(
        field(b().slow_call_duration(Duration::ZERO)),
        "slow_call_duration"
    );
    assert_eq!(field(b().count_window(0).minimum_calls(1)), "count_window");
    assert_eq!(field(b().count_window(10)), "minimum_calls");
    assert_eq!(field(b().time_window(Duration::ZERO, 10)), "time_window");
    assert_eq!(field(b().time_window(SECS(10), 0)), "time_window");
    assert_eq!(field(b().minimum_calls(0)), "minimum_calls");
    assert_eq!(field(b().consecutive_failures(0)), "consecutive_failures");
    assert_eq!(field(b().open_duration(Duration::ZERO)), "open_duration");
    assert_eq!(field(b().half_open_probes(0)), "half_open_probes");
    assert_eq!(field(b().half_open_probes(5_000)), "half_open_probes");
    assert_eq!(
        field(b().max_half_open_wait(Duration::ZERO)),
        "max_half_open_wait"
    );
    let err = b().failure_rate_threshold(1.5).build().unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid circuit breaker config: `failure_rate_threshold` must be in (0, 1], got 1.5"
    );
    // A time window may hold more than minimum_calls outcomes by nature.
    assert!(b()
        .time_window(SECS(10), 10)
        .minimum_calls(1_000)
        .build()
        .is_ok());
    let keyed = |b: Builder| b.build_keyed(|r: &u8| *r).unwrap_err().field();
    assert_eq!(keyed(b().key_capacity(0)), "key_capacity");
    assert_eq!(
        keyed(b().key_idle_timeout(Duration::ZERO)),
        "key_idle_timeout"
    );
}
