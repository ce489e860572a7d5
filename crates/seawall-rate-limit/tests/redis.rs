//! Fleet-wide limits against a real Redis (`REDIS_URL`, default
//! `redis://127.0.0.1:6379`), and the failure policies against a closed
//! port. Without a server the Redis tests print why and pass, unless
//! `SEAWALL_REQUIRE_SERVICES=1`.
#![cfg(feature = "redis")]

use std::convert::Infallible;
use std::time::{Duration, Instant};

use http::{Request, Response};
use seawall_core::BoxError;
use seawall_rate_limit::redis::aio::MultiplexedConnection;
use seawall_rate_limit::redis::{self, AsyncCommands};
use seawall_rate_limit::{
    key, Limit, OnBackendError, Quota, RateLimitLayer, RateLimited, RedisBackend,
};
use tower::{service_fn, Layer, Service, ServiceExt};

type Req = Request<()>;
type Ok = std::future::Ready<Result<Response<()>, Infallible>>;

fn ok_service() -> tower::util::ServiceFn<fn(Req) -> Ok> {
    service_fn(|_req: Req| std::future::ready(Ok(Response::new(()))))
}

fn req(api_key: &str) -> Req {
    Request::builder()
        .header("x-api-key", api_key)
        .body(())
        .unwrap()
}

async fn send<S>(svc: &mut S, r: Req) -> Result<Response<()>, BoxError>
where
    S: Service<Req, Response = Response<()>, Error = BoxError>,
{
    svc.ready().await?.call(r).await
}

fn url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn connect() -> Option<MultiplexedConnection> {
    let url = url();
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

/// A key prefix of its own for each test run.
fn unique_prefix(test: &str) -> String {
    use std::hash::{BuildHasher, RandomState};
    let n = RandomState::new().hash_one(std::time::SystemTime::now());
    format!("seawall-test:rl:{test}:{n:016x}:")
}

async fn keys(conn: &mut MultiplexedConnection, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = conn.keys(format!("{prefix}*")).await.unwrap();
    keys.sort();
    keys
}

async fn cleanup(conn: &mut MultiplexedConnection, prefix: &str) {
    let keys = keys(conn, prefix).await;
    if !keys.is_empty() {
        let _: () = conn.del(keys).await.unwrap();
    }
}

fn backend(prefix: &str) -> RedisBackend {
    RedisBackend::open(&url())
        .unwrap()
        .prefix(prefix.to_owned())
        .timeout(Duration::from_millis(500))
}

#[tokio::test]
async fn one_script_decides_every_limit_on_the_server() {
    let Some(mut conn) = connect().await else {
        return;
    };
    let prefix = unique_prefix("decide");
    let layer = RateLimitLayer::builder()
        .limit(Limit::per_key(
            "key",
            Quota::per_hour(2),
            key::header("x-api-key"),
        ))
        .limit(Limit::global("all", Quota::per_hour(3)))
        .redis(backend(&prefix))
        .headers()
        .build()
        .unwrap();
    let mut svc = layer.layer(ok_service());
    let res = send(&mut svc, req("a")).await.unwrap();
    assert_eq!(
        res.headers()["ratelimit"],
        r#""key";r=1;t=1800, "all";r=2;t=1200"#
    );
    send(&mut svc, req("a")).await.unwrap();
    // "key" refuses; "all" must not be charged for it.
    let err = send(&mut svc, req("a")).await.unwrap_err();
    let limited = err.downcast_ref::<RateLimited>().unwrap();
    assert_eq!(limited.limit(), "key");
    let after = limited.retry_after().unwrap();
    assert!(
        after > Duration::from_secs(1790) && after <= Duration::from_secs(1800),
        "{after:?}"
    );
    send(&mut svc, req("b")).await.unwrap();
    let err = send(&mut svc, req("c")).await.unwrap_err();
    assert_eq!(err.downcast_ref::<RateLimited>().unwrap().limit(), "all");

    // Keys under the prefix, each expiring when its bucket is full again.
    let found = keys(&mut conn, &prefix).await;
    assert_eq!(
        found,
        [
            format!("{prefix}all:*"),
            format!("{prefix}key:=a"),
            format!("{prefix}key:=b"),
        ]
    );
    let ttl: i64 = conn.pttl(format!("{prefix}all:*")).await.unwrap();
    assert!(ttl > 3_590_000 && ttl <= 3_600_002, "{ttl}");
    cleanup(&mut conn, &prefix).await;
}

#[tokio::test]
async fn over_long_keys_share_the_overflow_key() {
    let Some(mut conn) = connect().await else {
        return;
    };
    let prefix = unique_prefix("overflow");
    let layer = RateLimitLayer::builder()
        .limit(Limit::per_key(
            "key",
            Quota::per_hour(1),
            key::header("x-api-key"),
        ))
        .max_key_bytes(16)
        .redis(backend(&prefix))
        .build()
        .unwrap();
    let mut svc = layer.layer(ok_service());
    send(&mut svc, req(&"x".repeat(100))).await.unwrap();
    assert!(send(&mut svc, req(&"y".repeat(100))).await.is_err());
    assert_eq!(
        keys(&mut conn, &prefix).await,
        [format!("{prefix}key:~overflow")]
    );
    cleanup(&mut conn, &prefix).await;
}

#[tokio::test]
async fn redis_and_local_agree_on_which_keys_get_a_bucket() {
    let Some(mut conn) = connect().await else {
        return;
    };
    let prefix = unique_prefix("agree");
    let builder = || {
        RateLimitLayer::builder()
            .limit(Limit::per_key(
                "key",
                Quota::per_hour(1),
                key::header("x-api-key"),
            ))
            .max_key_bytes(16)
    };
    // Exactly max_key_bytes (twice, distinct), empty, then over-long.
    // (Locally the long-key bucket is per shard, so a second long key may
    // or may not share the first one's: not compared.)
    let sequence = [
        "a".repeat(16),
        "b".repeat(16),
        String::new(),
        "c".repeat(17),
    ];
    let mut outcomes = Vec::new();
    for mut svc in [
        builder().build().unwrap().layer(ok_service()),
        builder()
            .redis(backend(&prefix).on_error(OnBackendError::FailClosed))
            .build()
            .unwrap()
            .layer(ok_service()),
    ] {
        let mut admitted = Vec::new();
        for key in &sequence {
            admitted.push(send(&mut svc, req(key)).await.is_ok());
        }
        outcomes.push(admitted);
    }
    let found = keys(&mut conn, &prefix).await;
    cleanup(&mut conn, &prefix).await;
    assert_eq!(outcomes[0], [true; 4], "local");
    assert_eq!(outcomes[1], outcomes[0], "redis");
    assert_eq!(
        found,
        [
            format!("{prefix}key:="),
            format!("{prefix}key:={}", "a".repeat(16)),
            format!("{prefix}key:={}", "b".repeat(16)),
            format!("{prefix}key:~overflow"),
        ]
    );
}

#[tokio::test]
async fn wait_mode_waits_for_the_server_to_admit() {
    let Some(mut conn) = connect().await else {
        return;
    };
    let prefix = unique_prefix("wait");
    let layer = RateLimitLayer::builder()
        .limit(Limit::global("all", Quota::per_second(10).burst(1)))
        .wait(Duration::from_secs(2))
        .redis(backend(&prefix))
        .build()
        .unwrap();
    let mut svc = layer.layer(ok_service());
    send(&mut svc, req("a")).await.unwrap();
    let started = Instant::now();
    send(&mut svc, req("a")).await.unwrap();
    let waited = started.elapsed();
    // One unit comes back every 100 ms on the server's clock.
    assert!(waited >= Duration::from_millis(80), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    cleanup(&mut conn, &prefix).await;
}

#[tokio::test]
async fn the_server_refills_at_the_configured_rate() {
    let Some(mut conn) = connect().await else {
        return;
    };
    let prefix = unique_prefix("rate");
    // 999,999/s: an interval of 1,001 ns, which whole microseconds would
    // round to 2 µs (500,000/s, half the limit; the local fallback would
    // then run at twice the fleet's rate).
    let layer = RateLimitLayer::builder()
        .limit(Limit::global("all", Quota::per_second(999_999)))
        .cost(|r: &Req| {
            if r.headers().contains_key("x-big") {
                1_000_000
            } else {
                999_999
            }
        })
        .redis(backend(&prefix).on_error(OnBackendError::FailClosed))
        .build()
        .unwrap();
    let mut svc = layer.layer(ok_service());
    // A cost above the burst is refused by the server as never passing.
    let mut big = req("a");
    big.headers_mut()
        .insert("x-big", http::HeaderValue::from_static("1"));
    let err = send(&mut svc, big).await.unwrap_err();
    assert!(err.downcast_ref::<RateLimited>().unwrap().is_never());
    send(&mut svc, req("a")).await.unwrap();
    let err = send(&mut svc, req("a")).await.unwrap_err();
    let wait = err.downcast_ref::<RateLimited>().unwrap().retry_after();
    let wait = wait.expect("a retry_after");
    // One period's worth comes back in 1.000998999 s, less what the
    // second round trip took.
    assert!(
        wait > Duration::from_millis(900) && wait <= Duration::from_nanos(1_000_998_999),
        "{wait:?}"
    );
    tokio::time::sleep(wait + Duration::from_millis(20)).await;
    let again = send(&mut svc, req("a")).await;
    cleanup(&mut conn, &prefix).await;
    again.unwrap();
}

#[tokio::test]
async fn a_fleet_waiter_never_waits_past_its_bound_for_redis() {
    // Redis accepts connections and never answers: every call times out.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = hole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = hole.accept().await {
            held.push(conn);
        }
    });
    let max = Duration::from_millis(120);
    let layer = RateLimitLayer::builder()
        .limit(Limit::global("all", Quota::per_second(10).burst(1)))
        .wait(max)
        .redis(
            RedisBackend::open(&format!("redis://{addr}"))
                .unwrap()
                .timeout(Duration::from_millis(50))
                .on_error(OnBackendError::Local { replicas: 1 }),
        )
        .build()
        .unwrap();
    let mut svc = layer.layer(ok_service());
    send(&mut svc, req("a")).await.unwrap();
    // 50 ms for the first call, a wait, then a call that must end by the
    // bound (it took a whole timeout more, ~170 ms, before).
    let started = Instant::now();
    let admitted = send(&mut svc, req("a")).await;
    let took = started.elapsed();
    assert!(
        admitted.is_err() || took <= max + Duration::from_millis(25),
        "admitted after {took:?}, bound {max:?}"
    );
}

/// A port nothing listens on.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("redis://127.0.0.1:{port}")
}

fn down(policy: OnBackendError) -> RedisBackend {
    RedisBackend::open(&closed_port_url())
        .unwrap()
        .timeout(Duration::from_millis(100))
        .on_error(policy)
}

#[tokio::test]
async fn redis_down_follows_the_policy_within_the_timeout() {
    let open = RateLimitLayer::builder()
        .limit(Limit::global("all", Quota::per_hour(1)))
        .redis(down(OnBackendError::FailOpen))
        .build()
        .unwrap();
    let mut svc = open.layer(ok_service());
    for _ in 0..3 {
        let started = Instant::now();
        send(&mut svc, req("a")).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    let closed = RateLimitLayer::builder()
        .limit(Limit::global("all", Quota::per_hour(100)))
        .redis(down(OnBackendError::FailClosed))
        .build()
        .unwrap();
    let mut svc = closed.layer(ok_service());
    let err = send(&mut svc, req("a")).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<RateLimited>().unwrap().retry_after(),
        None
    );
    // No hint, but not "never": it may pass once Redis answers.
    assert!(!err.downcast_ref::<RateLimited>().unwrap().is_never());

    // Local fallback: 30/hour shared by 3 replicas is 10/hour (burst 10)
    // here.
    let local = RateLimitLayer::builder()
        .limit(Limit::global("all", Quota::per_hour(30)))
        .redis(down(OnBackendError::Local { replicas: 3 }))
        .build()
        .unwrap();
    let mut svc = local.layer(ok_service());
    for _ in 0..10 {
        send(&mut svc, req("a")).await.unwrap();
    }
    let err = send(&mut svc, req("a")).await.unwrap_err();
    let after = err
        .downcast_ref::<RateLimited>()
        .unwrap()
        .retry_after()
        .unwrap();
    // One unit comes back every 360 s; the burst went a moment ago.
    assert!(
        after > Duration::from_secs(355) && after <= Duration::from_secs(360),
        "{after:?}"
    );
}

#[test]
fn invalid_backend_settings_are_config_errors() {
    let build = |b: RedisBackend| {
        RateLimitLayer::builder()
            .limit(Limit::global("all", Quota::per_second(1)))
            .redis(b)
            .build()
            .map(|_| ())
            .unwrap_err()
            .field()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let b = || RedisBackend::open("redis://127.0.0.1:1").unwrap();
    assert_eq!(build(b().timeout(Duration::ZERO)), "redis timeout");
    assert_eq!(
        build(b().on_error(OnBackendError::Local { replicas: 0 })),
        "replicas"
    );
}
