//! The layer's behaviour with the in-memory store, in paused time.

mod suite;

use std::sync::Arc;
use std::time::Duration;

use seawall_idempotency::store::StoreFuture;
use seawall_idempotency::{
    Claim, Completion, FencingToken, Fingerprint, MemoryStore, Store, StoreError, StoreKey,
    StoredResponse,
};
use suite::Expire;

fn expire_by_advancing() -> Expire {
    // The default lease is 60 s and retention 24 h: a 61 s jump ends leases only.
    Arc::new(|_key| Box::pin(tokio::time::advance(Duration::from_secs(61))))
}

macro_rules! memory_checks {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(start_paused = true)]
        async fn $name() {
            suite::$name(MemoryStore::new(), stringify!($name)).await;
        }
    )*};
}

memory_checks!(
    check_methods,
    check_bad_keys,
    check_missing_key,
    check_lenient,
    check_replay,
    check_mismatch,
    check_body_limit,
    check_tenants,
    check_in_flight,
    check_wait_mode,
    check_keep_policy,
    check_large_response,
    check_panic_releases,
    check_dropped_request,
);

#[tokio::test(start_paused = true)]
async fn check_lease_takeover() {
    suite::check_lease_takeover(MemoryStore::new(), "takeover", expire_by_advancing()).await;
}

#[tokio::test(start_paused = true)]
async fn retention_ends_and_the_key_runs_again() {
    let h = suite::Handler::new();
    let layer = seawall_idempotency::IdempotencyLayer::builder()
        .retention(Duration::from_secs(3600))
        .build()
        .unwrap();
    let svc = suite::service(layer, &h);
    suite::ok(&svc, suite::req(Some("\"r\""), "{}")).await;
    tokio::time::advance(Duration::from_secs(3599)).await;
    assert!(suite::ok(&svc, suite::req(Some("\"r\""), "{}"))
        .await
        .replayed());
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(!suite::ok(&svc, suite::req(Some("\"r\""), "{}"))
        .await
        .replayed());
    assert_eq!(h.runs(), 2);
}

#[tokio::test(start_paused = true)]
async fn wait_mode_gives_up_with_409_at_its_bound() {
    let h = suite::Handler::new();
    let layer = seawall_idempotency::IdempotencyLayer::builder()
        .wait_in_flight(Duration::from_secs(2))
        .build()
        .unwrap();
    let svc = suite::service(layer, &h);
    let gated = suite::post(Some("\"g\""))
        .header("x-gate", "1")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { suite::ok(&svc, gated).await }
    });
    h.entered.acquire().await.unwrap().forget();
    let started = tokio::time::Instant::now();
    let repeat = suite::ok(&svc, suite::req(Some("\"g\""), "{}")).await;
    assert_eq!(repeat.status, http::StatusCode::CONFLICT);
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    h.gate.add_permits(1);
    first.await.unwrap();
    assert_eq!(h.runs(), 1);
}

/// A store that always fails, as a store that is down does.
#[derive(Clone, Debug)]
struct DownStore;

impl Store for DownStore {
    fn claim<'a>(
        &'a self,
        _: &'a StoreKey,
        _: &'a Fingerprint,
        _: Duration,
    ) -> StoreFuture<'a, Claim> {
        Box::pin(async { Err(StoreError::unavailable("connection refused")) })
    }
    fn complete<'a>(
        &'a self,
        _: &'a StoreKey,
        _: &'a FencingToken,
        _: &'a Fingerprint,
        _: &'a StoredResponse,
        _: Duration,
    ) -> StoreFuture<'a, Completion> {
        Box::pin(async { Err(StoreError::unavailable("connection refused")) })
    }
    fn release<'a>(&'a self, _: &'a StoreKey, _: &'a FencingToken) -> StoreFuture<'a, bool> {
        Box::pin(async { Err(StoreError::unavailable("connection refused")) })
    }
}

#[tokio::test(start_paused = true)]
async fn check_store_down() {
    suite::check_store_down(DownStore, "down").await;
}

#[tokio::test(start_paused = true)]
async fn full_store_fails_closed() {
    let h = suite::Handler::new();
    let store = MemoryStore::with_capacity(1).unwrap();
    let layer = seawall_idempotency::IdempotencyLayer::builder()
        .store(store)
        .build()
        .unwrap();
    let svc = suite::service(layer, &h);
    let gated = suite::post(Some("\"one\""))
        .header("x-gate", "1")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { suite::ok(&svc, gated).await }
    });
    h.entered.acquire().await.unwrap().forget();
    let other = suite::ok(&svc, suite::req(Some("\"two\""), "{}")).await;
    assert_eq!(other.status, http::StatusCode::SERVICE_UNAVAILABLE);
    h.gate.add_permits(1);
    first.await.unwrap();
    // Completed records make room for new claims.
    let other = suite::ok(&svc, suite::req(Some("\"two\""), "{}")).await;
    assert_eq!(other.status, http::StatusCode::CREATED);
    assert_eq!(h.runs(), 2);
}

#[tokio::test(start_paused = true)]
async fn events_name_the_layer_and_what_happened() {
    use seawall_core::event::{Event, FnListener};
    use seawall_idempotency::{IdempotencyEvent, IdempotencyEventKind as K};
    use std::sync::Mutex;

    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let listener = FnListener::new(move |e: &IdempotencyEvent| {
        assert_eq!(e.layer(), "payments");
        log.lock().unwrap().push((e.event_kind(), e.kind()));
    });
    let layer = seawall_idempotency::IdempotencyLayer::builder()
        .name("payments")
        .listener(listener)
        .keep(seawall_idempotency::KeepPolicy::ReleaseServerErrors)
        .build()
        .unwrap();
    let h = suite::Handler::new();
    let svc = suite::service(layer, &h);
    suite::ok(&svc, suite::req(Some("\"a\""), "{}")).await;
    suite::ok(&svc, suite::req(Some("\"a\""), "{}")).await;
    suite::ok(&svc, suite::req(Some("\"a\""), "{\"x\":1}")).await;
    suite::ok(&svc, suite::req(Some("bad key"), "{}")).await;
    let failing = suite::post(Some("\"b\""))
        .header("x-status", "503")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    suite::ok(&svc, failing).await;
    let kinds: Vec<_> = seen.lock().unwrap().clone();
    assert_eq!(
        kinds,
        [
            (K::Claimed, "claimed"),
            (K::Stored, "stored"),
            (K::Replayed, "replayed"),
            (K::Mismatch, "mismatch"),
            (K::KeyRefused, "key_refused"),
            (K::Claimed, "claimed"),
            (K::Released, "released"),
        ]
    );
}

#[test]
fn without_a_tokio_runtime_keyed_requests_fail_cleanly() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    use tower::{Layer, Service};

    let mut svc = seawall_idempotency::IdempotencyLayer::new().layer(tower::service_fn(
        |_req: http::Request<
            seawall_idempotency::RequestBody<http_body_util::Full<bytes::Bytes>>,
        >| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                bytes::Bytes::new(),
            )))
        },
    ));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut fut = std::pin::pin!(svc.call(suite::req(Some("\"k\""), "{}")));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Err(e)) => assert!(e.to_string().contains("Tokio"), "{e}"),
        Poll::Ready(Ok(res)) => panic!("expected an error, got {}", res.status()),
        Poll::Pending => panic!("expected an immediate error"),
    }
}

#[tokio::test(start_paused = true)]
async fn renewed_lease_keeps_a_slow_handler_s_key() {
    let h = suite::Handler::new();
    let layer = seawall_idempotency::IdempotencyLayer::builder()
        .lease(Duration::from_secs(9))
        .renew_lease(true)
        .build()
        .unwrap();
    let svc = suite::service(layer, &h);
    let gated = suite::post(Some("\"slow\""))
        .header("x-gate", "1")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { suite::ok(&svc, gated).await }
    });
    h.entered.acquire().await.unwrap().forget();
    // Four leases long: without renewal the key would have been taken over.
    for _ in 0..36 {
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    let repeat = suite::ok(&svc, suite::req(Some("\"slow\""), "{}")).await;
    assert_eq!(repeat.status, http::StatusCode::CONFLICT);
    h.gate.add_permits(1);
    let first = first.await.unwrap();
    assert_eq!(first.status, http::StatusCode::CREATED);
    let replay = suite::ok(&svc, suite::req(Some("\"slow\""), "{}")).await;
    assert!(replay.replayed());
    assert_eq!(replay.body, first.body);
    assert_eq!(h.runs(), 1);
    // Renewal stopped with the claim: the record lives for its retention only.
    tokio::time::advance(Duration::from_secs(24 * 3600)).await;
    assert!(!suite::ok(&svc, suite::req(Some("\"slow\""), "{}"))
        .await
        .replayed());
}
