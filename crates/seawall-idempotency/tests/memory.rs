//! The layer's behaviour with the in-memory store, in paused time.

mod suite;

use std::sync::Arc;
use std::time::Duration;

use tower::ServiceExt;

use seawall_idempotency::store::StoreFuture;
use seawall_idempotency::{
    Claim, Completion, FencingToken, Fingerprint, MemoryStore, Scope, Store, StoreError, StoreKey,
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
    check_bare_keys,
    check_principals,
    check_scope_options,
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
async fn a_full_store_refuses_new_keys_and_never_forgets_a_completed_one() {
    use seawall_core::event::FnListener;
    use seawall_idempotency::{IdempotencyEvent, IdempotencyEventKind as K};
    use std::sync::Mutex;

    let full_events = Arc::new(Mutex::new(0usize));
    let count = full_events.clone();
    let listener = FnListener::new(move |e: &IdempotencyEvent| {
        if e.event_kind() == K::StoreFull {
            *count.lock().unwrap() += 1;
        }
    });
    let h = suite::Handler::new();
    let store = MemoryStore::with_capacity(1).unwrap();
    let layer = seawall_idempotency::IdempotencyLayer::builder()
        .store(store)
        .listener(listener)
        .store_retry_after(Duration::from_secs(2))
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
    let refused = suite::ok(&svc, suite::req(Some("\"two\""), "{}")).await;
    assert_eq!(refused.status, http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.kind(), "idempotency_store_full");
    assert_eq!(refused.headers[http::header::RETRY_AFTER], "2");
    h.gate.add_permits(1);
    let first = first.await.unwrap();
    // A completed record is not evicted for a new key: "two" is still
    // refused, and "one" still replays, until its retention ends.
    tokio::time::advance(Duration::from_secs(23 * 3600)).await;
    let refused = suite::ok(&svc, suite::req(Some("\"two\""), "{}")).await;
    assert_eq!(refused.status, http::StatusCode::SERVICE_UNAVAILABLE);
    let replay = suite::ok(&svc, suite::req(Some("\"one\""), "{}")).await;
    assert!(replay.replayed());
    assert_eq!(replay.body, first.body);
    assert_eq!(h.runs(), 1, "a refused key never ran its handler");
    assert_eq!(*full_events.lock().unwrap(), 2);
    tokio::time::advance(Duration::from_secs(3600)).await;
    let two = suite::ok(&svc, suite::req(Some("\"two\""), "{}")).await;
    assert_eq!(two.status, http::StatusCode::CREATED);
    assert_eq!(h.runs(), 2);
}

/// A full store stays closed in fail-open mode too: running the handler
/// without a record would let its retry run it again.
#[tokio::test(start_paused = true)]
async fn a_full_store_is_not_failed_open() {
    let h = suite::Handler::new();
    let layer = seawall_idempotency::IdempotencyLayer::builder()
        .store(MemoryStore::with_capacity(1).unwrap())
        .fail_open(true)
        .build()
        .unwrap();
    let svc = suite::service(layer, &h);
    suite::ok(&svc, suite::req(Some("\"one\""), "{}")).await;
    let refused = suite::ok(&svc, suite::req(Some("\"two\""), "{}")).await;
    assert_eq!(refused.status, http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.runs(), 1);
}

/// Carol's payment, then a flood of new keys from another client: her
/// retry replays, it never runs again.
#[tokio::test(start_paused = true)]
async fn a_flood_of_keys_never_reruns_a_completed_payment() {
    let h = suite::Handler::new();
    let layer = seawall_idempotency::IdempotencyLayer::builder()
        .build()
        .unwrap();
    let svc = suite::service(layer, &h);
    let carol = || {
        suite::post(Some("carol-pay-1"))
            .header(http::header::AUTHORIZATION, "Bearer carol")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap()
    };
    let paid = suite::ok(&svc, carol()).await;
    let mut refused = 0;
    for i in 0..(MemoryStore::DEFAULT_CAPACITY + 2_000) {
        let key = format!("flood-{i}");
        let a = suite::ok(&svc, suite::req(Some(&key), "{}")).await;
        if a.status == http::StatusCode::SERVICE_UNAVAILABLE {
            refused += 1;
        }
    }
    assert!(refused >= 2_000, "{refused}");
    let retry = suite::ok(&svc, carol()).await;
    assert!(retry.replayed());
    assert_eq!(retry.body, paid.body);
}

/// A body that stalls gets 408 at the timeout; neither its buffer nor the
/// key stays held: the same key with a whole body then runs.
#[tokio::test(start_paused = true)]
async fn a_stalled_body_gets_408_and_holds_nothing() {
    use http_body_util::BodyExt;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Sends one chunk, then never another; counts as alive while held.
    struct Stalled {
        first: Option<bytes::Bytes>,
        _alive: Arc<()>,
    }

    impl http_body::Body for Stalled {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
            match self.first.take() {
                Some(b) => Poll::Ready(Some(Ok(http_body::Frame::data(b)))),
                None => Poll::Pending,
            }
        }
    }

    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = runs.clone();
    let layer = seawall_idempotency::IdempotencyLayer::builder()
        .request_body_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let svc = tower::ServiceBuilder::new().layer(layer).service_fn(
        move |req: http::Request<
            seawall_idempotency::RequestBody<
                http_body_util::Either<Stalled, http_body_util::Full<bytes::Bytes>>,
            >,
        >| {
            let counter = counter.clone();
            async move {
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(http_body_util::Collected::to_bytes)
                    .unwrap_or_default();
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    body,
                )))
            }
        },
    );
    let alive = Arc::new(());
    let stalled = suite::post(Some("up-1"))
        .body(http_body_util::Either::Left(Stalled {
            first: Some(bytes::Bytes::from_static(b"{\"amount\":")),
            _alive: alive.clone(),
        }))
        .unwrap();
    let started = tokio::time::Instant::now();
    let res = svc.clone().oneshot(stalled).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(res.status(), http::StatusCode::REQUEST_TIMEOUT);
    assert_eq!(res.headers()[http::header::CONNECTION], "close");
    assert_eq!(
        res.headers()[http::header::CONTENT_TYPE],
        "application/problem+json"
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(doc["kind"], "idempotency_body_timeout");
    assert_eq!(Arc::strong_count(&alive), 1, "the stalled body was dropped");
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 0);
    let whole = suite::post(Some("up-1"))
        .body(http_body_util::Either::Right(http_body_util::Full::new(
            bytes::Bytes::from_static(b"{\"amount\":1}"),
        )))
        .unwrap();
    let res = svc.clone().oneshot(whole).await.unwrap();
    assert_eq!(
        res.status(),
        http::StatusCode::OK,
        "the key was never claimed"
    );
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
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

/// A memory store whose releases take 50 ms, as a remote store's do.
#[derive(Clone)]
struct SlowRelease(MemoryStore);

impl Store for SlowRelease {
    fn claim<'a>(
        &'a self,
        key: &'a StoreKey,
        fingerprint: &'a Fingerprint,
        lease: Duration,
    ) -> StoreFuture<'a, Claim> {
        self.0.claim(key, fingerprint, lease)
    }
    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a FencingToken,
        fingerprint: &'a Fingerprint,
        response: &'a StoredResponse,
        retention: Duration,
    ) -> StoreFuture<'a, Completion> {
        self.0
            .complete(key, token, fingerprint, response, retention)
    }
    fn release<'a>(&'a self, key: &'a StoreKey, token: &'a FencingToken) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.0.release(key, token).await
        })
    }
}

/// The claim of a panicked handler is released before its 500 is
/// returned, even when the release takes time: the client's immediate
/// retry runs instead of getting 409. (Releasing from a spawned task, the
/// retry's claim would come first.)
#[tokio::test(start_paused = true)]
async fn a_panic_releases_the_key_before_answering_even_on_a_slow_store() {
    let h = suite::Handler::new();
    let layer = seawall_idempotency::IdempotencyLayer::builder()
        .store(SlowRelease(MemoryStore::new()))
        .build()
        .unwrap();
    let svc = suite::service(layer, &h);
    let panicking = suite::post(Some("p"))
        .header("x-panic", "1")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let started = tokio::time::Instant::now();
    let err = suite::send(&svc, panicking).await.unwrap_err();
    assert!(err.is::<seawall_idempotency::HandlerPanicked>());
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(50),
        "the release was awaited"
    );
    let retry = suite::ok(&svc, suite::req(Some("p"), "{}")).await;
    assert_eq!(retry.status, http::StatusCode::CREATED);
    assert_eq!(h.runs(), 2);
}

/// Several threads claim and complete overlapping keys in a small store:
/// each key is claimed at most once (nothing expires, nothing is released),
/// a completed key always replays its own response, and the bounds hold
/// throughout. 20,000 operations per thread by default (about a second);
/// `SEAWALL_STRESS_ITERS` runs longer.
#[test]
fn concurrent_claims_keep_every_record_and_the_bounds() {
    use std::collections::HashSet;

    const THREADS: usize = 4;
    const KEYS: usize = 3_000;
    let iters: usize = std::env::var("SEAWALL_STRESS_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let store = MemoryStore::with_limits(1_000, 16 * 64 * 1024).unwrap();
    let keys: Arc<Vec<StoreKey>> = Arc::new(
        (0..KEYS)
            .map(|i| StoreKey::new("stress", Scope::Anonymous, &i.to_string()))
            .collect(),
    );
    let fp = Fingerprint::from_bytes([4; 32]);
    let day = Duration::from_secs(86_400);
    let body_of = |i: usize| {
        // Sizes vary so the byte bound, not only the record bound, bites.
        bytes::Bytes::from(vec![u8::try_from(i % 251).unwrap(); (i * 37) % 3_000])
    };
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (store, keys) = (store.clone(), keys.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                let mut claimed = Vec::new();
                let mut n = t;
                rt.block_on(async {
                    for _ in 0..iters {
                        n = (n * 7 + 13) % KEYS;
                        let key = &keys[n];
                        match store.claim(key, &fp, day).await {
                            Ok(Claim::Claimed(token)) => {
                                claimed.push(n);
                                let res = StoredResponse::new(
                                    http::StatusCode::OK,
                                    &http::HeaderMap::new(),
                                    body_of(n),
                                    false,
                                );
                                let done = store.complete(key, &token, &fp, &res, day).await;
                                assert!(matches!(
                                    done,
                                    Ok(Completion::Stored | Completion::StoredWithoutBody)
                                ));
                            }
                            Ok(Claim::Completed(res)) => {
                                assert!(
                                    res.body() == &body_of(n) || res.body_omitted(),
                                    "key {n} replays its own response"
                                );
                            }
                            Ok(Claim::InFlight { .. }) => {}
                            Ok(Claim::Mismatch) => panic!("one fingerprint per key"),
                            Err(e) => {
                                assert_eq!(e.kind(), seawall_idempotency::StoreErrorKind::Full);
                            }
                        }
                        assert!(store.len() <= store.capacity());
                        assert!(store.bytes() <= store.max_bytes());
                    }
                });
                claimed
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for w in workers {
        for k in w.join().unwrap() {
            assert!(seen.insert(k), "key {k} was claimed twice");
        }
    }
    assert!(!seen.is_empty());
    assert!(seen.len() <= store.capacity());
    // Every claimed key still replays: none was evicted for another.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        for &k in &seen {
            assert!(matches!(
                store.claim(&keys[k], &fp, day).await,
                Ok(Claim::Completed(_))
            ));
        }
    });
}
