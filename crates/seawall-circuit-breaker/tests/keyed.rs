//! Keyed mode: one breaker per key in a bounded registry.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use seawall_circuit_breaker::{
    CircuitBreakerEvent, CircuitBreakerLayer, CircuitOpen, EventKind, State,
};
use seawall_core::event::FnListener;
use seawall_core::BoxError;
use tower::{service_fn, Layer, Service, ServiceExt};

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// Requests are `(host, fail)`; the key is the host.
fn host(req: &(&'static str, bool)) -> &'static str {
    req.0
}

fn backend() -> impl Service<(&'static str, bool), Response = &'static str, Error = BoxError> + Clone
{
    service_fn(|(host, fail): (&'static str, bool)| async move {
        if fail {
            Err::<&'static str, BoxError>("boom".into())
        } else {
            Ok(host)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn one_failing_key_does_not_open_the_others() {
    let layer = CircuitBreakerLayer::builder()
        .count_window(4)
        .minimum_calls(4)
        .build_keyed(host)
        .unwrap();
    let keys = layer.handle();
    let mut svc = layer.layer(backend());
    for _ in 0..4 {
        let _ = svc.ready().await.unwrap().call(("a", true)).await;
    }
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(("a", false))
        .await
        .unwrap_err();
    assert!(err.is::<CircuitOpen>());
    assert_eq!(
        svc.ready().await.unwrap().call(("b", false)).await.unwrap(),
        "b"
    );
    let mut states = keys.states();
    states.sort_by_key(|s| s.0);
    assert_eq!(states, vec![("a", State::Open), ("b", State::Closed)]);
    let a = keys.get(&"a").unwrap();
    assert_eq!(a.key(), Some("\"a\""));
    a.reset();
    assert_eq!(
        svc.ready().await.unwrap().call(("a", false)).await.unwrap(),
        "a"
    );
}

#[tokio::test(start_paused = true)]
async fn registry_never_exceeds_its_capacity() {
    for capacity in [1usize, 3, 10, 17, 40] {
        let layer = CircuitBreakerLayer::builder()
            .key_capacity(capacity)
            .build_keyed(|n: &u32| *n)
            .unwrap();
        let keys = layer.handle();
        assert_eq!(keys.capacity(), capacity);
        let mut svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, BoxError>(n) }));
        for n in 0..1_000u32 {
            assert_eq!(
                svc.ready().await.unwrap().call(n % 300).await.unwrap(),
                n % 300
            );
            assert!(keys.len() <= capacity, "{} > {capacity}", keys.len());
            // The key just used always has its breaker.
            assert!(keys.get(&(n % 300)).is_some());
        }
        assert!(keys.breakers().len() <= capacity);
        assert!(!keys.is_empty());
    }
}

/// A registry with room keeps every breaker, however the keys fall into its
/// shards: a key whose breaker was evicted early would never trip.
#[tokio::test(start_paused = true)]
async fn a_registry_with_room_evicts_nothing() {
    for capacity in [2usize, 4, 16, 40] {
        let layer = CircuitBreakerLayer::builder()
            .count_window(2)
            .minimum_calls(2)
            .key_capacity(capacity)
            .build_keyed(|r: &(u32, bool)| r.0)
            .unwrap();
        let keys = layer.handle();
        let mut svc = layer.layer(service_fn(|(_, fail): (u32, bool)| async move {
            if fail {
                Err::<(), BoxError>("boom".into())
            } else {
                Ok(())
            }
        }));
        for _ in 0..2 {
            for k in 0..capacity as u32 {
                let _ = svc.ready().await.unwrap().call((k, true)).await;
            }
        }
        assert_eq!(keys.len(), capacity);
        assert_eq!(keys.breakers().len(), capacity);
        for k in 0..capacity as u32 {
            assert_eq!(keys.get(&k).map(|h| h.state()), Some(State::Open), "{k}");
        }
        // One more key finds only open breakers, which are never dropped:
        // it is refused, and every breaker stays.
        let err = svc
            .ready()
            .await
            .unwrap()
            .call((1_000, false))
            .await
            .unwrap_err();
        assert!(err.is::<seawall_circuit_breaker::KeyedRegistryFull>());
        assert_eq!(keys.len(), capacity);
        assert_eq!(keys.breakers().len(), capacity);
        assert!(keys.get(&1_000).is_none());
        for k in 0..capacity as u32 {
            assert_eq!(keys.get(&k).map(|h| h.state()), Some(State::Open), "{k}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn idle_breakers_are_evicted() {
    let layer = CircuitBreakerLayer::builder()
        .key_idle_timeout(SECS(60))
        .build_keyed(host)
        .unwrap();
    let keys = layer.handle();
    let mut svc = layer.layer(backend());
    svc.ready().await.unwrap().call(("a", false)).await.unwrap();
    svc.ready().await.unwrap().call(("b", false)).await.unwrap();
    tokio::time::advance(SECS(40)).await;
    svc.ready().await.unwrap().call(("b", false)).await.unwrap();
    tokio::time::advance(SECS(30)).await;
    // "a" has been idle 70 s, "b" 30 s.
    assert!(keys.get(&"a").is_none());
    let live: Vec<_> = keys.states().into_iter().map(|s| s.0).collect();
    assert_eq!(live, vec!["b"]);
    assert_eq!(keys.len(), 1);
    // An idle closed key that comes back starts with a fresh breaker.
    tokio::time::advance(SECS(61)).await;
    svc.ready().await.unwrap().call(("b", false)).await.unwrap();
    assert_eq!(keys.get(&"b").unwrap().state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn forced_open_and_tripped_keys_survive_idleness() {
    let layer = CircuitBreakerLayer::builder()
        .count_window(2)
        .minimum_calls(2)
        .open_duration(SECS(300))
        .key_idle_timeout(SECS(120))
        .build_keyed(host)
        .unwrap();
    let keys = layer.handle();
    let mut svc = layer.layer(backend());
    svc.ready()
        .await
        .unwrap()
        .call(("forced", false))
        .await
        .unwrap();
    keys.get(&"forced").unwrap().force_open();
    for _ in 0..2 {
        let _ = svc.ready().await.unwrap().call(("tripped", true)).await;
    }
    assert_eq!(keys.get(&"tripped").unwrap().state(), State::Open);

    // 121 s idle, with 179 s of open time left: both still refuse, and the
    // periodic sweep and the handle keep them.
    tokio::time::advance(SECS(121)).await;
    svc.ready()
        .await
        .unwrap()
        .call(("other", false))
        .await
        .unwrap();
    let mut states = keys.states();
    states.sort_by_key(|s| s.0);
    assert_eq!(
        states,
        vec![
            ("forced", State::ForcedOpen),
            ("other", State::Closed),
            ("tripped", State::Open)
        ]
    );
    for key in ["forced", "tripped"] {
        let err = svc
            .ready()
            .await
            .unwrap()
            .call((key, false))
            .await
            .unwrap_err();
        assert!(err.is::<CircuitOpen>(), "{key}");
    }
    let tripped = keys.get(&"tripped").unwrap().metrics();
    assert_eq!(tripped.open_remaining, Some(SECS(179)));
}

#[tokio::test(start_paused = true)]
async fn eviction_takes_closed_breakers_and_never_an_open_one() {
    let layer = CircuitBreakerLayer::builder()
        .count_window(2)
        .minimum_calls(2)
        .open_duration(SECS(300))
        .key_capacity(4)
        .build_keyed(|req: &(u32, bool)| req.0)
        .unwrap();
    let keys = layer.handle();
    let mut svc = layer.layer(service_fn(|(n, fail): (u32, bool)| async move {
        if fail {
            Err::<u32, BoxError>("boom".into())
        } else {
            Ok(n)
        }
    }));
    for _ in 0..2 {
        let _ = svc.ready().await.unwrap().call((0, true)).await;
    }
    svc.ready().await.unwrap().call((1, false)).await.unwrap();
    keys.get(&1).unwrap().force_open();
    // Hundreds of new keys through a registry of 4: the open and the
    // forced-open breakers stay, the closed ones take turns.
    for n in 2..500 {
        svc.ready().await.unwrap().call((n, false)).await.unwrap();
        assert!(keys.len() <= 4);
        assert_eq!(keys.get(&0).unwrap().state(), State::Open, "after {n}");
        assert_eq!(
            keys.get(&1).unwrap().state(),
            State::ForcedOpen,
            "after {n}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_registry_full_of_open_breakers_refuses_new_keys() {
    let layer = CircuitBreakerLayer::builder()
        .count_window(2)
        .minimum_calls(2)
        .open_duration(SECS(30))
        .key_capacity(2)
        .build_keyed(host)
        .unwrap();
    let keys = layer.handle();
    let reached = Arc::new(Mutex::new(Vec::new()));
    let log = reached.clone();
    let mut svc = layer.layer(service_fn(move |(host, fail): (&'static str, bool)| {
        log.lock().unwrap().push(host);
        async move {
            if fail {
                Err::<&'static str, BoxError>("boom".into())
            } else {
                Ok(host)
            }
        }
    }));
    for key in ["a", "b"] {
        for _ in 0..2 {
            let _ = svc.ready().await.unwrap().call((key, true)).await;
        }
    }
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(("c", false))
        .await
        .unwrap_err();
    let full = err
        .downcast_ref::<seawall_circuit_breaker::KeyedRegistryFull>()
        .expect("a typed refusal");
    assert_eq!(seawall_core::Rejection::retry_after(full), Some(SECS(30)));
    assert!(!reached.lock().unwrap().contains(&"c"));
    assert_eq!(keys.len(), 2);
    // Once a breaker closes again, new keys get its place.
    keys.get(&"a").unwrap().reset();
    tokio::time::advance(SECS(2)).await;
    assert_eq!(
        svc.ready().await.unwrap().call(("c", false)).await.unwrap(),
        "c"
    );
    assert_eq!(keys.get(&"b").unwrap().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_rejected_key_never_touches_the_inner_service() {
    let layer = CircuitBreakerLayer::builder()
        .build_keyed(|r: &&'static str| *r)
        .unwrap();
    let keys = layer.handle();
    let (mut svc, mut mock) = tower_test::mock::spawn_layer::<&'static str, &'static str, _>(layer);
    mock.allow(0);
    // Ready without asking the inner service: the key is not known yet.
    assert!(svc.poll_ready().is_ready());
    let mut admitted = Box::pin(ready_call(&mut svc, "up"));
    tokio::task::yield_now().await;
    keys.get(&"up").unwrap().force_open();
    let err = svc.call("up").await.unwrap_err();
    assert!(err.is::<CircuitOpen>());
    assert!(mock.poll_request().is_pending());
    // The call admitted before waits for readiness inside its future.
    assert!(futures_util::FutureExt::now_or_never(admitted.as_mut()).is_none());
    mock.allow(1);
    let serve = async {
        let (req, respond) = mock.next_request().await.unwrap();
        assert_eq!(req, "up");
        respond.send_response("done");
    };
    let (res, ()) = tokio::join!(admitted, serve);
    assert_eq!(res.unwrap(), "done");
}

fn ready_call<S>(svc: &mut tower_test::mock::Spawn<S>, req: &'static str) -> S::Future
where
    S: Service<&'static str>,
{
    assert!(svc.poll_ready().is_ready());
    svc.call(req)
}

#[tokio::test(start_paused = true)]
async fn keyed_events_carry_the_key() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let layer = CircuitBreakerLayer::builder()
        .name("hosts")
        .listener(FnListener::new(move |e: &CircuitBreakerEvent| {
            // Per-call events are tested with the metrics listener.
            if !matches!(e.kind(), EventKind::CallRecorded { .. }) {
                log.lock().unwrap().push(e.key().map(str::to_owned));
            }
        }))
        .build_keyed(host)
        .unwrap();
    let keys = layer.handle();
    let mut svc = layer.layer(backend());
    svc.ready().await.unwrap().call(("x", false)).await.unwrap();
    keys.get(&"x").unwrap().force_open();
    assert_eq!(keys.get(&"x").unwrap().name(), "hosts");
    assert_eq!(*seen.lock().unwrap(), vec![Some("\"x\"".to_owned())]);
}

/// Tasks racing new keys on two worker threads never push the registry past
/// its capacity, including when a new key's shard is empty and room must be
/// made in another shard.
#[test]
fn racing_new_keys_never_exceed_the_capacity() {
    const CAPACITY: usize = 10;
    let layer = CircuitBreakerLayer::builder()
        .key_capacity(CAPACITY)
        .build_keyed(|n: &u32| *n)
        .unwrap();
    let keys = layer.handle();
    let svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, BoxError>(n) }));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap()
        .block_on(async {
            let tasks: Vec<_> = (0..8u32)
                .map(|t| {
                    let (mut svc, keys) = (svc.clone(), keys.clone());
                    tokio::spawn(async move {
                        for n in 0..2_000u32 {
                            let key = t * 10_000 + n;
                            assert_eq!(svc.ready().await.unwrap().call(key).await.unwrap(), key);
                            assert!(keys.len() <= CAPACITY, "{} > {CAPACITY}", keys.len());
                            if n % 32 == 0 {
                                tokio::task::yield_now().await;
                            }
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
    assert_eq!(keys.len(), CAPACITY);
    assert_eq!(keys.breakers().len(), CAPACITY);
}
