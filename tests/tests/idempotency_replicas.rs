//! Three axum replicas on loopback ports share one idempotency store (Redis,
//! then PostgreSQL). 1,000 concurrent requests over 100 keys, 10 racing
//! duplicates per key spread over the replicas: the handler's side effect (a
//! counter in the store's own engine) must end at exactly 100, and every
//! answer for a key must be the same response or a 409.
//!
//! Without the service these tests print why and pass, unless
//! `SEAWALL_REQUIRE_SERVICES=1`.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use seawall::http::RejectionResponseLayer;
use seawall::idempotency::deadpool_postgres::Pool;
use seawall::idempotency::redis::aio::MultiplexedConnection;
use seawall::idempotency::store::{PostgresStore, RedisStore};
use seawall::idempotency::{redis, IdempotencyLayer, Store};
use seawall_tests::{TestClient, TestServer};
use tower::ServiceBuilder;

const KEYS: usize = 100;
const DUPLICATES: usize = 10;
const REPLICAS: usize = 3;

fn required() -> bool {
    std::env::var("SEAWALL_REQUIRE_SERVICES").as_deref() == Ok("1")
}

fn skip(what: &str, why: &str) {
    assert!(!required(), "{what} is required but unreachable: {why}");
    eprintln!("skipping: {what} unreachable: {why}");
}

/// A replica: the idempotency layer (its own instance, as on another
/// machine) over a handler whose side effect is `effect`.
async fn replica<St, F, Fut>(store: St, effect: F) -> TestServer
where
    St: Store + Clone,
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = i64> + Send,
{
    let layer = IdempotencyLayer::builder()
        .name("replicas")
        .store(store)
        .build()
        .expect("valid settings");
    let router = Router::new()
        .route(
            "/charges",
            post(|State(effect): State<F>, body: Bytes| async move {
                let run = effect().await;
                format!(
                    "charged {} (execution {run})",
                    String::from_utf8_lossy(&body)
                )
            }),
        )
        .with_state(effect)
        .layer(
            ServiceBuilder::new()
                .layer(RejectionResponseLayer::new())
                .layer(layer),
        );
    TestServer::start(router).await.expect("a loopback port")
}

/// Fires the race and checks the answers; returns the count of 409s.
async fn race(servers: &[TestServer]) -> usize {
    let client = TestClient::new();
    let mut tasks = Vec::with_capacity(KEYS * DUPLICATES);
    for dup in 0..DUPLICATES {
        for key in 0..KEYS {
            let url = servers[(key + dup) % REPLICAS].url("/charges");
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let req = Request::post(url)
                    .header("idempotency-key", format!("\"order-{key}\""))
                    .header("content-type", "text/plain")
                    .body(Full::new(Bytes::from(format!("order {key}"))))
                    .expect("valid request");
                let res = client.send(req).await.expect("a response");
                (key, res.head.status, res.body)
            }));
        }
    }
    let mut answers: HashMap<usize, Vec<(StatusCode, Bytes)>> = HashMap::new();
    for t in tasks {
        let (key, status, body) = t.await.expect("the request task");
        answers.entry(key).or_default().push((status, body));
    }
    let mut conflicts = 0;
    for (key, list) in &answers {
        assert_eq!(list.len(), DUPLICATES);
        let mut kept = list.iter().filter(|(s, _)| {
            if *s == StatusCode::CONFLICT {
                conflicts += 1;
                false
            } else {
                true
            }
        });
        // The winner's own client always gets the handler's response.
        let first = kept
            .next()
            .unwrap_or_else(|| panic!("key {key}: no request ran"));
        assert_eq!(first.0, StatusCode::OK, "key {key}: {:?}", first.1);
        for other in kept {
            assert_eq!(other, first, "key {key}: every response is the same");
        }
    }
    assert_eq!(answers.len(), KEYS);
    conflicts
}

async fn redis_connection() -> Option<MultiplexedConnection> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    // Generous timeouts: 1,000 requests in flight on a debug build queue up
    // on the client side.
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(Duration::from_secs(20)));
    let connect = async {
        redis::Client::open(url.as_str())?
            .get_multiplexed_async_connection_with_config(&config)
            .await
    };
    match tokio::time::timeout(Duration::from_secs(3), connect).await {
        Ok(Ok(conn)) => Some(conn),
        Ok(Err(e)) => {
            skip(&format!("Redis at {url}"), &e.to_string());
            None
        }
        Err(_) => {
            skip(&format!("Redis at {url}"), "timed out");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_redis() {
    let Some(conn) = redis_connection().await else {
        return;
    };
    let prefix = format!("seawall-test:replicas:{}:", std::process::id());
    let counter = format!("{prefix}side-effect");
    let mut servers = Vec::new();
    for _ in 0..REPLICAS {
        // Each replica has its own connection, as separate processes would.
        let Some(own) = redis_connection().await else {
            return;
        };
        let store = RedisStore::with_connection(own).prefix(prefix.clone());
        let (conn, counter) = (conn.clone(), counter.clone());
        let effect = move || {
            let (mut conn, counter) = (conn.clone(), counter.clone());
            async move {
                redis::cmd("INCR")
                    .arg(&counter)
                    .query_async::<i64>(&mut conn)
                    .await
                    .expect("INCR")
            }
        };
        servers.push(replica(store, effect).await);
    }
    let conflicts = tokio::time::timeout(Duration::from_secs(60), race(&servers))
        .await
        .expect("the race finishes in time");
    let mut conn = conn;
    let executions: i64 = redis::cmd("GET")
        .arg(&counter)
        .query_async(&mut conn)
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    println!(
        "redis: {executions} executions, {conflicts} conflicts (409) of {}",
        KEYS * DUPLICATES
    );
    assert_eq!(executions, KEYS as i64, "the handler ran once per key");
}

/// A pool like `PostgresStore::pool_for`'s, but whose waits and connection
/// attempts may take 30 s: 1,000 requests racing on a loaded debug build
/// queue for connections far longer than a production pool should wait,
/// and a 503 from a pool timeout would be the machine's load, not a
/// failure of the store.
fn patient_pool(url: &str, size: usize) -> Pool {
    use seawall::idempotency::deadpool_postgres::{tokio_postgres, Manager, Runtime};
    let patience = Some(Duration::from_secs(30));
    let config: tokio_postgres::Config = url.parse().expect("a valid url");
    Pool::builder(Manager::new(config, tokio_postgres::NoTls))
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(patience)
        .create_timeout(patience)
        .recycle_timeout(patience)
        .build()
        .expect("a pool")
}

async fn postgres_pool() -> Option<(Pool, String)> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = patient_pool(&url, 8);
    match tokio::time::timeout(Duration::from_secs(5), pool.get()).await {
        Ok(Ok(_)) => Some((pool, url)),
        Ok(Err(e)) => {
            skip(&format!("PostgreSQL at {url}"), &e.to_string());
            None
        }
        Err(_) => {
            skip(&format!("PostgreSQL at {url}"), "timed out");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_postgres() {
    let Some((effects, url)) = postgres_pool().await else {
        return;
    };
    let pid = std::process::id();
    let table = format!("seawall_replicas_{pid}");
    let counter = format!("seawall_replicas_counter_{pid}");
    effects
        .get()
        .await
        .unwrap()
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {counter};
             CREATE TABLE {counter} (id int PRIMARY KEY, n bigint NOT NULL);
             INSERT INTO {counter} VALUES (1, 0);"
        ))
        .await
        .unwrap();
    let mut servers = Vec::new();
    for _ in 0..REPLICAS {
        // Each replica has its own pool, as separate processes would.
        let pool = patient_pool(&url, 8);
        let store = PostgresStore::new(pool, &table).unwrap();
        store.create_table().await.expect("the table");
        let (effects, counter) = (effects.clone(), counter.clone());
        let effect = move || {
            let (effects, counter) = (effects.clone(), counter.clone());
            async move {
                let client = effects.get().await.expect("a connection");
                client
                    .query_one(
                        &format!("UPDATE {counter} SET n = n + 1 WHERE id = 1 RETURNING n"),
                        &[],
                    )
                    .await
                    .expect("UPDATE")
                    .get::<_, i64>(0)
            }
        };
        servers.push(replica(store, effect).await);
    }
    let conflicts = tokio::time::timeout(Duration::from_secs(90), race(&servers))
        .await
        .expect("the race finishes in time");
    let client = effects.get().await.unwrap();
    let executions: i64 = client
        .query_one(&format!("SELECT n FROM {counter} WHERE id = 1"), &[])
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute(&format!(
            "DROP TABLE {counter}; DROP TABLE IF EXISTS {table};"
        ))
        .await
        .unwrap();
    println!(
        "postgres: {executions} executions, {conflicts} conflicts (409) of {}",
        KEYS * DUPLICATES
    );
    assert_eq!(executions, KEYS as i64, "the handler ran once per key");
}
