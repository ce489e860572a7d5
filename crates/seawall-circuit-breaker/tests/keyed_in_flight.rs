//! Keyed breakers with calls in flight are never evicted or replaced as
//! idle: the trip those calls cause lands on the breaker the key keeps.

use std::time::Duration;

use seawall_circuit_breaker::{
    CircuitBreakerLayer, CircuitOpen, KeyedCircuitBreakerLayer, KeyedRegistryFull, State,
};
use tokio::sync::oneshot;
use tower::{service_fn, Layer, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Req = (String, Option<oneshot::Receiver<bool>>);

fn layer(
    capacity: usize,
) -> KeyedCircuitBreakerLayer<String, impl Fn(&Req) -> String + Clone, seawall_core::ErrorsFail> {
    CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(300))
        .key_capacity(capacity)
        .key_idle_timeout(Duration::from_secs(120))
        .build_keyed(|r: &Req| r.0.clone())
        .unwrap()
}

async fn leaf(r: Req) -> Result<(), BoxError> {
    let fail = match r.1 {
        Some(rx) => rx.await.unwrap(),
        None => false,
    };
    if fail {
        Err("down".into())
    } else {
        Ok(())
    }
}

/// Key "a" has a call in flight when a new key needs the only place. The
/// in-flight breaker is not dropped (the new key is refused instead); the
/// call then fails and trips "a": its next call is refused. (It used to be
/// evicted, the trip landed on the discarded breaker, and "a"'s next call
/// was admitted by a fresh closed one.)
#[tokio::test(start_paused = true)]
async fn an_in_flight_breaker_is_not_evicted_and_keeps_its_trip() {
    let layer = layer(1);
    let keys = layer.handle();
    let svc = layer.layer(service_fn(leaf));
    let (tx, rx) = oneshot::channel();
    let inflight = tokio::spawn(svc.clone().oneshot(("a".into(), Some(rx))));
    tokio::task::yield_now().await;
    let a = keys.get(&"a".to_string()).unwrap();
    let b = svc.clone().oneshot(("b".into(), None)).await;
    assert!(
        b.as_ref().is_err_and(|e| e.is::<KeyedRegistryFull>()),
        "the only place is held by a breaker with a call in flight: {b:?}"
    );
    tx.send(true).unwrap();
    assert!(inflight.await.unwrap().is_err());
    assert_eq!(a.state(), State::Open, "a's breaker tripped");
    let next = svc.clone().oneshot(("a".into(), None)).await;
    assert!(
        next.as_ref().is_err_and(|e| e.is::<CircuitOpen>()),
        "key a tripped 0 s ago (300 s open) but its next call was {next:?}; registry says {:?}",
        keys.states()
    );
}

/// Without capacity pressure: a call on key "a" runs longer than
/// `key_idle_timeout`; a second call on "a" then must not replace the
/// breaker as idle, so the long call's failure trips the key's breaker.
#[tokio::test(start_paused = true)]
async fn a_long_call_keeps_its_key_from_being_idle() {
    let layer = layer(100);
    let keys = layer.handle();
    let svc = layer.layer(service_fn(leaf));
    let (tx, rx) = oneshot::channel();
    let inflight = tokio::spawn(svc.clone().oneshot(("a".into(), Some(rx))));
    tokio::task::yield_now().await;
    let a = keys.get(&"a".to_string()).unwrap();
    tokio::time::advance(Duration::from_secs(125)).await;
    svc.clone().oneshot(("a".into(), None)).await.unwrap();
    tx.send(true).unwrap();
    assert!(inflight.await.unwrap().is_err());
    assert_eq!(a.state(), State::Open, "a's breaker tripped");
    let next = svc.clone().oneshot(("a".into(), None)).await;
    assert!(
        next.as_ref().is_err_and(|e| e.is::<CircuitOpen>()),
        "key a tripped 0 s ago but its next call was {next:?}; registry says {:?}",
        keys.states()
    );
}

/// Idleness runs from the end of a key's last call: a call that ended
/// 60 s ago (after running 125 s) leaves its breaker in place, with what
/// its window holds.
#[tokio::test(start_paused = true)]
async fn idleness_runs_from_the_end_of_the_last_call() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .open_duration(Duration::from_secs(300))
        .key_capacity(100)
        .key_idle_timeout(Duration::from_secs(120))
        .build_keyed(|r: &Req| r.0.clone())
        .unwrap();
    let keys = layer.handle();
    let svc = layer.layer(service_fn(leaf));
    let (tx, rx) = oneshot::channel();
    let inflight = tokio::spawn(svc.clone().oneshot(("a".into(), Some(rx))));
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_secs(125)).await;
    tx.send(true).unwrap();
    assert!(inflight.await.unwrap().is_err());
    tokio::time::advance(Duration::from_secs(60)).await;
    // The second failure in a row trips the same breaker.
    let (tx, rx) = oneshot::channel();
    tx.send(true).unwrap();
    assert!(svc.clone().oneshot(("a".into(), Some(rx))).await.is_err());
    assert_eq!(keys.get(&"a".to_string()).unwrap().state(), State::Open);
}
