//! The layer and `PostgresStore` against a real PostgreSQL (`DATABASE_URL`,
//! default `postgres://postgres@127.0.0.1:5432/test`). Without a server these
//! tests print why and pass, unless `SEAWALL_REQUIRE_SERVICES=1`.
#![cfg(feature = "postgres")]

mod suite;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use seawall_idempotency::store::PostgresStore;
use seawall_idempotency::{Claim, Completion, Fingerprint, Scope, Store, StoreKey, StoredResponse};

/// A store on a table of its own, so parallel tests never meet; `None` when
/// the database is unreachable (and not required).
async fn store(test: &str) -> Option<PostgresStore> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let table = format!("seawall_idem_test_{test}_{}", std::process::id());
    let pool = PostgresStore::pool_for(&url, 8).expect("a valid url");
    let store = PostgresStore::new(pool, &table).expect("a valid table name");
    // Only an unreachable server is a reason to skip: once connected, a
    // failure to set up the table is the store's bug and fails the test.
    let why = match tokio::time::timeout(Duration::from_secs(5), store.pool().get()).await {
        Ok(Ok(client)) => {
            // A table left by an earlier, failed run of this process id starts over.
            client
                .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
                .await
                .expect("drop the test table");
            drop(client);
            store.create_table().await.expect("create_table");
            return Some(store);
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_owned(),
    };
    assert!(
        std::env::var("SEAWALL_REQUIRE_SERVICES").as_deref() != Ok("1"),
        "PostgreSQL at {url} is required but unreachable: {why}"
    );
    eprintln!("skipping: PostgreSQL at {url} unreachable: {why}");
    None
}

async fn drop_table(store: &PostgresStore) {
    let client = store.pool().get().await.unwrap();
    client
        .batch_execute(&format!("DROP TABLE IF EXISTS {}", store.table()))
        .await
        .unwrap();
}

/// Ends the lease or retention of `key` now, on the database clock.
async fn expire_now(store: &PostgresStore, key: &StoreKey) {
    let client = store.pool().get().await.unwrap();
    let n = client
        .execute(
            &format!(
                "UPDATE {} SET expires_at = now() - interval '1 second' WHERE key = $1",
                store.table()
            ),
            &[&key.to_hex()],
        )
        .await
        .unwrap();
    assert_eq!(n, 1, "the record existed");
}

const FP: Fingerprint = Fingerprint::from_bytes([8; 32]);
const LEASE: Duration = Duration::from_secs(30);
const DAY: Duration = Duration::from_secs(86_400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_behaviour_with_postgres() {
    let Some(store) = store("behaviour").await else {
        return;
    };
    let expiring = store.clone();
    let expire: suite::Expire = Arc::new(move |key: StoreKey| {
        let store = expiring.clone();
        Box::pin(async move { expire_now(&store, &key).await })
    });
    suite::check_all(store.clone(), "postgres", expire).await;
    drop_table(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_down_fails_closed() {
    // Nothing listens on port 1.
    let pool = PostgresStore::pool_for("postgres://postgres@127.0.0.1:1/test", 2).unwrap();
    let store = PostgresStore::new(pool, "seawall_idempotency").unwrap();
    let err = store
        .claim(&StoreKey::new("x", Scope::Shared, "k"), &FP, LEASE)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), seawall_idempotency::StoreErrorKind::Unavailable);
    assert!(store.create_table().await.is_err());
    suite::check_store_down(store, "postgres-down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_uses_the_database_clock_and_sweep_deletes() {
    let Some(store) = store("expiry").await else {
        return;
    };
    let key = StoreKey::new("expiry", Scope::Shared, "k");
    let Claim::Claimed(token) = store.claim(&key, &FP, LEASE).await.unwrap() else {
        panic!("a free key is claimed");
    };
    let client = store.pool().get().await.unwrap();
    let left = format!(
        "SELECT (extract(epoch FROM (expires_at - now())))::float8 FROM {} WHERE key = $1",
        store.table()
    );
    let lease_left: f64 = client
        .query_one(&left, &[&key.to_hex()])
        .await
        .unwrap()
        .get(0);
    assert!(
        lease_left > 25.0 && lease_left <= 30.0,
        "lease left {lease_left}"
    );
    match store.claim(&key, &FP, LEASE).await.unwrap() {
        Claim::InFlight { retry_after } => assert!(retry_after > Duration::from_secs(25)),
        other => panic!("expected in flight, got {other:?}"),
    }
    assert_eq!(
        store
            .claim(&key, &Fingerprint::from_bytes([9; 32]), LEASE)
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
    assert_eq!(
        store
            .complete(&key, &token, &FP, &response, DAY)
            .await
            .unwrap(),
        Completion::Stored
    );
    let kept: f64 = client
        .query_one(&left, &[&key.to_hex()])
        .await
        .unwrap()
        .get(0);
    assert!(kept > 86_000.0 && kept <= 86_400.0, "retention left {kept}");
    assert_eq!(
        store.claim(&key, &FP, LEASE).await.unwrap(),
        Claim::Completed(response.clone())
    );
    assert_eq!(
        store
            .complete(&key, &token, &FP, &response, DAY)
            .await
            .unwrap(),
        Completion::Fenced
    );

    // An expired record is ignored by claims, and swept.
    let other = StoreKey::new("expiry", Scope::Shared, "other");
    assert!(matches!(
        store.claim(&other, &FP, LEASE).await.unwrap(),
        Claim::Claimed(_)
    ));
    expire_now(&store, &key).await;
    expire_now(&store, &other).await;
    assert_eq!(store.sweep().await.unwrap(), 2);
    assert_eq!(store.sweep().await.unwrap(), 0);
    assert!(matches!(
        store.claim(&key, &FP, LEASE).await.unwrap(),
        Claim::Claimed(_)
    ));
    drop(client);
    drop_table(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_token_is_fenced_after_takeover() {
    let Some(store) = store("fence").await else {
        return;
    };
    let key = StoreKey::new("fence", Scope::Shared, "k");
    let Claim::Claimed(stale) = store.claim(&key, &FP, LEASE).await.unwrap() else {
        panic!("claimed");
    };
    expire_now(&store, &key).await;
    // A lease that ended without a successor still refuses the late owner.
    let response = StoredResponse::new(StatusCode::OK, &HeaderMap::new(), Bytes::new(), false);
    assert_eq!(
        store
            .complete(&key, &stale, &FP, &response, DAY)
            .await
            .unwrap(),
        Completion::Fenced
    );
    let Claim::Claimed(fresh) = store.claim(&key, &FP, LEASE).await.unwrap() else {
        panic!("an expired claim is taken over");
    };
    assert_eq!(
        store
            .complete(&key, &stale, &FP, &response, DAY)
            .await
            .unwrap(),
        Completion::Fenced
    );
    assert!(!store.release(&key, &stale).await.unwrap());
    assert!(matches!(
        store.claim(&key, &FP, LEASE).await.unwrap(),
        Claim::InFlight { .. }
    ));
    assert!(store.release(&key, &fresh).await.unwrap());
    assert!(matches!(
        store.claim(&key, &FP, LEASE).await.unwrap(),
        Claim::Claimed(_)
    ));
    drop_table(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_have_one_winner() {
    let Some(store) = store("race").await else {
        return;
    };
    let key = StoreKey::new("race", Scope::Shared, "k");
    // Let an expired row sit under the key: racing claims must delete it and
    // still produce one winner.
    let Claim::Claimed(_) = store.claim(&key, &FP, LEASE).await.unwrap() else {
        panic!()
    };
    expire_now(&store, &key).await;
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.claim(&key, &FP, LEASE).await.unwrap() })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), Claim::Claimed(_)) {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
    drop_table(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_table_creation_succeeds() {
    let Some(store) = store("create").await else {
        return;
    };
    drop_table(&store).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.create_table().await })
        })
        .collect();
    for t in tasks {
        t.await
            .unwrap()
            .expect("every replica may create the table");
    }
    assert!(matches!(
        store
            .claim(&StoreKey::new("create", Scope::Shared, "k"), &FP, LEASE)
            .await
            .unwrap(),
        Claim::Claimed(_)
    ));
    drop_table(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_extends_the_lease_of_the_holder_only() {
    let Some(store) = store("renew").await else {
        return;
    };
    let key = StoreKey::new("renew", Scope::Shared, "k");
    // A lease short enough to tell from the renewed one, long enough that a
    // loaded machine does not end it before the renewal.
    let Claim::Claimed(token) = store
        .claim(&key, &FP, Duration::from_secs(10))
        .await
        .unwrap()
    else {
        panic!("claimed");
    };
    assert!(store.renew(&key, &token, LEASE).await.unwrap());
    let client = store.pool().get().await.unwrap();
    let left: f64 = client
        .query_one(
            &format!(
                "SELECT (extract(epoch FROM (expires_at - now())))::float8 FROM {} WHERE key = $1",
                store.table()
            ),
            &[&key.to_hex()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(left > 25.0 && left <= 30.0, "renewed lease left {left}");
    let other = seawall_idempotency::FencingToken::random();
    assert!(!store.renew(&key, &other, LEASE).await.unwrap());
    expire_now(&store, &key).await;
    assert!(
        !store.renew(&key, &token, LEASE).await.unwrap(),
        "an ended lease is not revived"
    );
    drop(client);
    drop_table(&store).await;
}

#[test]
fn table_names_are_validated() {
    let pool = PostgresStore::pool_for("postgres://postgres@127.0.0.1:5432/test", 1).unwrap();
    for bad in ["", "Upper", "1st", "drop table x;--", &"t".repeat(64)] {
        let err = PostgresStore::new(pool.clone(), bad).unwrap_err();
        assert_eq!(err.field(), "table", "{bad:?}");
    }
    assert!(PostgresStore::new(pool.clone(), "idem_v2").is_ok());
    assert_eq!(
        PostgresStore::pool_for("not a url", 1).unwrap_err().field(),
        "url"
    );
}
