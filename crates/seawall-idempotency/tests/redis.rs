//! The layer and `RedisStore` against a real Redis (`REDIS_URL`, default
//! `redis://127.0.0.1:6379`). Without a server these tests print why and
//! pass, unless `SEAWALL_REQUIRE_SERVICES=1`.
#![cfg(feature = "redis")]

mod suite;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use seawall_idempotency::redis::aio::{ConnectionLike, MultiplexedConnection};
use seawall_idempotency::redis::{self, Cmd, Pipeline, RedisFuture, Value};
use seawall_idempotency::store::RedisStore;
use seawall_idempotency::{
    Claim, Completion, Fingerprint, IdempotencyLayer, Scope, Store, StoreKey, StoredResponse,
};

async fn connect() -> Option<MultiplexedConnection> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let attempt = async {
        let client = redis::Client::open(url.as_str())?;
        client.get_multiplexed_async_connection().await
    };
    match tokio::time::timeout(Duration::from_secs(3), attempt).await {
        Ok(Ok(conn)) => Some(conn),
        outcome => {
            let why = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_owned(),
            };
            assert!(
                std::env::var("SEAWALL_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "Redis at {url} is required but unreachable: {why}"
            );
            eprintln!("skipping: Redis at {url} unreachable: {why}");
            None
        }
    }
}

/// A key prefix of its own for each test, so parallel tests never meet.
fn unique_prefix(test: &str) -> String {
    format!("seawall-test:{test}:{:016x}:", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

async fn cleanup(conn: &mut MultiplexedConnection, prefix: &str) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query_async(conn).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_behaviour_with_redis() {
    let Some(conn) = connect().await else { return };
    let prefix = unique_prefix("behaviour");
    let store = RedisStore::with_connection(conn.clone()).prefix(prefix.clone());
    let expiring = store.clone();
    // Redis expires a key by deleting it; deleting it now is the lease ending now.
    let expire: suite::Expire = Arc::new(move |key: StoreKey| {
        let store = expiring.clone();
        Box::pin(async move {
            let mut conn = store.connection().clone();
            let n: i64 = redis::cmd("DEL")
                .arg(store.record_key(&key))
                .query_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(n, 1, "the claim existed");
        })
    });
    suite::check_all(store, "redis", expire).await;
    cleanup(&mut conn.clone(), &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_server_does_not_evict_records() {
    let Some(conn) = connect().await else { return };
    // The shared test server runs Redis's default policy, `noeviction`;
    // this reads it, it never changes it.
    RedisStore::with_connection(conn)
        .check_eviction_policy()
        .await
        .expect("noeviction");
    let down = RedisStore::open("redis://127.0.0.1:1").unwrap();
    let err = down.check_eviction_policy().await.unwrap_err();
    assert_eq!(err.kind(), seawall_idempotency::StoreErrorKind::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_down_fails_closed() {
    // Nothing listens on port 1: the store cannot connect.
    let store = RedisStore::open("redis://127.0.0.1:1").unwrap();
    let err = store
        .claim(
            &StoreKey::new("x", Scope::Shared, "k"),
            &Fingerprint::from_bytes([0; 32]),
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), seawall_idempotency::StoreErrorKind::Unavailable);
    suite::check_store_down(store, "redis-down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_is_the_lease_then_the_retention() {
    let Some(mut conn) = connect().await else {
        return;
    };
    let prefix = unique_prefix("ttl");
    let store = RedisStore::with_connection(conn.clone()).prefix(prefix.clone());
    let key = StoreKey::new("ttl", Scope::Shared, "k");
    let fp = Fingerprint::from_bytes([3; 32]);
    let Claim::Claimed(token) = store
        .claim(&key, &fp, Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("a free key is claimed");
    };
    let pttl: i64 = redis::cmd("PTTL")
        .arg(store.record_key(&key))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 25_000 && pttl <= 30_000, "lease ttl {pttl}");
    match store
        .claim(&key, &fp, Duration::from_secs(30))
        .await
        .unwrap()
    {
        Claim::InFlight { retry_after } => assert!(retry_after > Duration::from_secs(25)),
        other => panic!("expected in flight, got {other:?}"),
    }
    assert_eq!(
        store
            .claim(
                &key,
                &Fingerprint::from_bytes([4; 32]),
                Duration::from_secs(30)
            )
            .await
            .unwrap(),
        Claim::Mismatch
    );
    let response = StoredResponse::new(
        StatusCode::ACCEPTED,
        &HeaderMap::new(),
        Bytes::from_static(b"ok"),
        false,
    );
    let day = Duration::from_secs(86_400);
    assert_eq!(
        store
            .complete(&key, &token, &fp, &response, day)
            .await
            .unwrap(),
        Completion::Stored
    );
    let pttl: i64 = redis::cmd("PTTL")
        .arg(store.record_key(&key))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        pttl > 86_000_000 && pttl <= 86_400_000,
        "retention ttl {pttl}"
    );
    assert_eq!(
        store
            .claim(&key, &fp, Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Completed(response.clone())
    );
    // The same token cannot complete or release again.
    assert_eq!(
        store
            .complete(&key, &token, &fp, &response, day)
            .await
            .unwrap(),
        Completion::Fenced
    );
    assert!(!store.release(&key, &token).await.unwrap());
    cleanup(&mut conn, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_token_is_fenced_after_takeover() {
    let Some(mut conn) = connect().await else {
        return;
    };
    let prefix = unique_prefix("fence");
    let store = RedisStore::with_connection(conn.clone()).prefix(prefix.clone());
    let key = StoreKey::new("fence", Scope::Shared, "k");
    let fp = Fingerprint::from_bytes([5; 32]);
    let Claim::Claimed(stale) = store
        .claim(&key, &fp, Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("claimed");
    };
    let _: i64 = redis::cmd("DEL")
        .arg(store.record_key(&key))
        .query_async(&mut conn)
        .await
        .unwrap();
    let Claim::Claimed(fresh) = store
        .claim(&key, &fp, Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("an expired claim is taken over");
    };
    let response = StoredResponse::new(StatusCode::OK, &HeaderMap::new(), Bytes::new(), false);
    let day = Duration::from_secs(86_400);
    assert_eq!(
        store
            .complete(&key, &stale, &fp, &response, day)
            .await
            .unwrap(),
        Completion::Fenced
    );
    assert!(!store.release(&key, &stale).await.unwrap());
    assert!(matches!(
        store
            .claim(&key, &fp, Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::InFlight { .. }
    ));
    assert!(store.release(&key, &fresh).await.unwrap());
    assert!(matches!(
        store
            .claim(&key, &fp, Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Claimed(_)
    ));
    cleanup(&mut conn, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_have_one_winner() {
    let Some(mut conn) = connect().await else {
        return;
    };
    let prefix = unique_prefix("race");
    let store = RedisStore::with_connection(conn.clone()).prefix(prefix.clone());
    let key = StoreKey::new("race", Scope::Shared, "k");
    let fp = Fingerprint::from_bytes([6; 32]);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .claim(&key, &fp, Duration::from_secs(30))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), Claim::Claimed(_)) {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
    cleanup(&mut conn, &prefix).await;
}

/// Counts the round trips a store makes: every command or pipeline sent.
#[derive(Clone)]
struct Counting {
    inner: MultiplexedConnection,
    round_trips: Arc<AtomicUsize>,
}

impl ConnectionLike for Counting {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.round_trips.fetch_add(1, Ordering::SeqCst);
        self.inner.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.round_trips.fetch_add(1, Ordering::SeqCst);
        self.inner.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_first_request_two_replay_one() {
    let Some(mut conn) = connect().await else {
        return;
    };
    let prefix = unique_prefix("round-trips");
    let round_trips = Arc::new(AtomicUsize::new(0));
    let counting = Counting {
        inner: conn.clone(),
        round_trips: round_trips.clone(),
    };
    let store = RedisStore::with_connection(counting).prefix(prefix.clone());
    let h = suite::Handler::new();
    let svc = suite::service(
        IdempotencyLayer::builder().store(store).build().unwrap(),
        &h,
    );
    // The first use of each script on a server loads it (NOSCRIPT, then EVAL).
    suite::ok(&svc, suite::req(Some("\"warm-up\""), "{}")).await;

    round_trips.store(0, Ordering::SeqCst);
    let first = suite::ok(&svc, suite::req(Some("\"measured\""), "{}")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let first_trips = round_trips.swap(0, Ordering::SeqCst);
    let replay = suite::ok(&svc, suite::req(Some("\"measured\""), "{}")).await;
    assert!(replay.replayed());
    let replay_trips = round_trips.load(Ordering::SeqCst);
    println!("redis round trips: first request {first_trips}, replay {replay_trips}");
    assert_eq!(first_trips, 2);
    assert_eq!(replay_trips, 1);
    cleanup(&mut conn, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_extends_the_ttl_of_the_holder_only() {
    let Some(mut conn) = connect().await else {
        return;
    };
    let prefix = unique_prefix("renew");
    let store = RedisStore::with_connection(conn.clone()).prefix(prefix.clone());
    let key = StoreKey::new("renew", Scope::Shared, "k");
    let fp = Fingerprint::from_bytes([7; 32]);
    // A lease short enough to tell from the renewed one, long enough that a
    // loaded machine does not end it before the renewal.
    let Claim::Claimed(token) = store
        .claim(&key, &fp, Duration::from_secs(10))
        .await
        .unwrap()
    else {
        panic!("claimed");
    };
    assert!(store
        .renew(&key, &token, Duration::from_secs(30))
        .await
        .unwrap());
    let pttl: i64 = redis::cmd("PTTL")
        .arg(store.record_key(&key))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 25_000 && pttl <= 30_000, "renewed ttl {pttl}");
    let other = seawall_idempotency::FencingToken::random();
    assert!(!store
        .renew(&key, &other, Duration::from_secs(60))
        .await
        .unwrap());
    let response = StoredResponse::new(StatusCode::OK, &HeaderMap::new(), Bytes::new(), false);
    store
        .complete(&key, &token, &fp, &response, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        !store
            .renew(&key, &token, Duration::from_secs(60))
            .await
            .unwrap(),
        "a completed record is not a lease"
    );
    cleanup(&mut conn, &prefix).await;
}
