//! Three axum replicas on loopback share one 100/s rate limit through Redis,
//! driven together at several times the limit: the fleet admits 100 ± 5%
//! per second over the measured window, not 300. Then the same replicas
//! with Redis at a closed port fall back, as configured, to a local limit
//! of 100/3 per second each, so the fleet still admits about 100.
//!
//! Wall-clock by nature (three servers, a real Redis): bounded to about
//! nine seconds. Without Redis the shared-limit phase prints why and
//! passes, unless `SEAWALL_REQUIRE_SERVICES=1`.

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use http::StatusCode;
use seawall::http::RejectionResponseLayer;
use seawall_rate_limit::{redis, Limit, OnBackendError, Quota, RateLimitLayer, RedisBackend};
use seawall_tests::{TestClient, TestServer};
use tokio::sync::Mutex;
use tokio::time::{Instant, MissedTickBehavior};
use tower::ServiceBuilder;

const REPLICAS: usize = 3;
const CLIENTS_PER_REPLICA: usize = 2;
/// Each client sends one request every 8 ms: 750 requests/s offered in all.
const SEND_EVERY: Duration = Duration::from_millis(8);

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn required() -> bool {
    std::env::var("SEAWALL_REQUIRE_SERVICES").as_deref() == Ok("1")
}

async fn redis_reachable() -> Result<(), String> {
    let client = redis::Client::open(redis_url()).map_err(|e| e.to_string())?;
    let attempt = client.get_multiplexed_async_connection();
    match tokio::time::timeout(Duration::from_secs(3), attempt).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

async fn replica(backend: RedisBackend) -> TestServer {
    let limit = RateLimitLayer::builder()
        .name("fleet")
        .limit(Limit::global("all", Quota::per_second(100).burst(5)))
        .redis(backend)
        .build()
        .expect("valid settings");
    let router = Router::new().route("/", get(|| async { "ok" })).layer(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new())
            .layer(limit),
    );
    TestServer::start(router).await.expect("server starts")
}

/// Drives every replica together for `warm_up + window` and returns the
/// number of requests admitted (200) whose send time fell in the window,
/// and how many were refused with 429 in all.
async fn drive(servers: &[TestServer], warm_up: Duration, window: Duration) -> (usize, usize) {
    let start = Instant::now();
    let from = start + warm_up;
    let until = from + window;
    let admitted = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for server in servers {
        for _ in 0..CLIENTS_PER_REPLICA {
            let url = server.url("/");
            let admitted = admitted.clone();
            let refused = refused.clone();
            tasks.push(tokio::spawn(async move {
                let client = TestClient::new();
                let mut tick = tokio::time::interval(SEND_EVERY);
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let sent = Instant::now();
                    if sent >= until {
                        break;
                    }
                    let res = client.get(&url).await.expect("replica answers");
                    match res.head.status {
                        StatusCode::OK => admitted.lock().await.push(sent),
                        StatusCode::TOO_MANY_REQUESTS => {
                            assert!(res.head.headers.contains_key("retry-after"));
                            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        other => panic!("unexpected status {other}"),
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let admitted = admitted.lock().await;
    let in_window = admitted.iter().filter(|&&t| t >= from && t < until).count();
    (
        in_window,
        refused.load(std::sync::atomic::Ordering::Relaxed),
    )
}

fn prefix() -> String {
    use std::hash::{BuildHasher, RandomState};
    let n = RandomState::new().hash_one(std::time::SystemTime::now());
    format!("seawall-test:rl-fleet:{n:016x}:")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_limit_and_fall_back_when_redis_is_down() {
    let window = Duration::from_secs(3);
    match redis_reachable().await {
        Ok(()) => {
            let prefix = prefix();
            let mut servers = Vec::new();
            for _ in 0..REPLICAS {
                let backend = RedisBackend::open(&redis_url())
                    .expect("valid url")
                    .prefix(prefix.clone())
                    .timeout(Duration::from_millis(250));
                servers.push(replica(backend).await);
            }
            let (admitted, refused) = drive(&servers, Duration::from_secs(1), window).await;
            let per_second = admitted as f64 / window.as_secs_f64();
            eprintln!("shared limit: {per_second:.1} admitted/s, {refused} refused");
            assert!(
                (95.0..=105.0).contains(&per_second),
                "fleet admitted {per_second:.1}/s through a shared 100/s limit"
            );
            assert!(refused > 0);
            let client = redis::Client::open(redis_url()).expect("url");
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("redis");
            let _: () = redis::cmd("DEL")
                .arg(format!("{prefix}all:*"))
                .query_async(&mut conn)
                .await
                .expect("cleanup");
        }
        Err(why) => {
            assert!(!required(), "Redis is required but unreachable: {why}");
            eprintln!("skipping the shared phase: Redis unreachable: {why}");
        }
    }

    // Redis at a closed port: each replica falls back to 100/3 per second.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let mut servers = Vec::new();
    for _ in 0..REPLICAS {
        let backend = RedisBackend::open(&format!("redis://127.0.0.1:{closed}"))
            .expect("valid url")
            .timeout(Duration::from_millis(100))
            .on_error(OnBackendError::Local {
                replicas: REPLICAS as u32,
            });
        servers.push(replica(backend).await);
    }
    let window = Duration::from_secs(2);
    let (admitted, refused) = drive(&servers, Duration::from_millis(500), window).await;
    let per_second = admitted as f64 / window.as_secs_f64();
    eprintln!("redis down, local fallback: {per_second:.1} admitted/s, {refused} refused");
    assert!(
        (95.0..=105.0).contains(&per_second),
        "fleet admitted {per_second:.1}/s with three local shares of 100/s"
    );
}
