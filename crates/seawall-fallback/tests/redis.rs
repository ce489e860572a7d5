//! The last-known-good tier shared through a real Redis (`REDIS_URL`,
//! default `redis://127.0.0.1:6379`). When Redis is unreachable these tests
//! print why and pass, unless `SEAWALL_REQUIRE_SERVICES=1`.
#![cfg(feature = "redis")]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use seawall_core::BoxError;
use seawall_fallback::{
    Degraded, FallbackLayer, LastKnownGood, RedisLastKnownGood, RequestInfo, Tier,
};
use tower::{service_fn, Layer, Service, ServiceExt};

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A connection to the test Redis, or `None` (after saying why) when it is
/// unreachable and services are not required.
async fn redis() -> Option<redis::aio::MultiplexedConnection> {
    let url = redis_url();
    let connect = async {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok::<_, redis::RedisError>(conn)
    };
    match tokio::time::timeout(Duration::from_secs(2), connect).await {
        Ok(Ok(conn)) => Some(conn),
        outcome => {
            assert!(
                std::env::var("SEAWALL_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "Redis at {url} is required: {outcome:?}"
            );
            eprintln!("skipping: Redis at {url} is unreachable ({outcome:?})");
            None
        }
    }
}

/// A key prefix no other test run uses.
fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "seawall-test:fallback:{test}:{}:{nanos}:",
        std::process::id()
    )
}

/// The keys under `prefix`.
async fn keys(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Vec<String> {
    redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(conn)
        .await
        .expect("KEYS")
}

/// Waits (bounded) until `count` keys exist under `prefix`: writes to Redis
/// run in spawned tasks, off the request's path.
async fn wait_for_keys(conn: &mut redis::aio::MultiplexedConnection, prefix: &str, count: usize) {
    for _ in 0..200 {
        if keys(conn, prefix).await.len() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("fewer than {count} keys under {prefix} after 2 s");
}

async fn cleanup(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    for key in keys(conn, prefix).await {
        let _: () = redis::cmd("DEL")
            .arg(key)
            .query_async(conn)
            .await
            .expect("DEL");
    }
}

/// An inventory dependency: a public stock answer per path, a private one
/// for `/account`, 503 for everything while `down`.
fn dependency(
    down: Arc<AtomicBool>,
) -> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = BoxError, Future = impl Send>
       + Clone
       + Send
       + Sync
       + 'static {
    service_fn(move |req: Request<()>| {
        let down = down.load(Ordering::SeqCst);
        async move {
            if down {
                return Ok(Response::builder()
                    .status(StatusCode::SERVICE_UNAVAILABLE)
                    .body(Full::from("down"))?);
            }
            if req.uri().path() == "/account" {
                return Ok(Response::builder()
                    .header("cache-control", "private")
                    .body(Full::from("alice's card"))?);
            }
            Ok::<_, BoxError>(Response::new(Full::from(format!(
                "stock of {}",
                req.uri().path()
            ))))
        }
    })
}

/// One replica: a fresh layer instance (its own local cache) sharing
/// `prefix` in Redis.
fn replica(
    redis: RedisLastKnownGood,
    down: Arc<AtomicBool>,
) -> Result<
    impl Service<
            Request<()>,
            Response = Response<seawall_fallback::FallbackBody<Full<Bytes>>>,
            Error = BoxError,
        > + Clone,
    BoxError,
> {
    let layer = FallbackLayer::http()
        .last_known_good_shared(LastKnownGood::new(), redis, |info: &RequestInfo| {
            Some(info.uri().path().to_owned())
        })
        .value(Response::new(Bytes::from_static(b"static")))
        .build()?;
    Ok(layer.layer(dependency(down)))
}

fn tier_of<B>(res: &Response<B>) -> Option<Tier> {
    res.extensions().get::<Degraded>().map(|d| d.tier)
}

async fn body<B>(res: Response<B>) -> Result<Bytes, BoxError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    Ok(res
        .into_body()
        .collect()
        .await
        .map_err(Into::into)?
        .to_bytes())
}

#[tokio::test]
async fn a_new_replica_answers_from_redis_after_the_dependency_went_down() -> Result<(), BoxError> {
    let Some(mut conn) = redis().await else {
        return Ok(());
    };
    let prefix = unique_prefix("new-replica");
    let shared = || -> Result<RedisLastKnownGood, BoxError> {
        Ok(RedisLastKnownGood::open(&redis_url())?
            .prefix(prefix.clone())
            .timeout(Duration::from_secs(1)))
    };
    let down = Arc::new(AtomicBool::new(false));

    let first = replica(shared()?, down.clone())?;
    let fresh = first
        .clone()
        .oneshot(Request::get("/sku/1").body(())?)
        .await?;
    assert_eq!(tier_of(&fresh), None);
    assert_eq!(body(fresh).await?, "stock of /sku/1");
    let private = Request::get("/account")
        .header("authorization", "Bearer alice")
        .body(())?;
    assert_eq!(
        body(first.clone().oneshot(private).await?).await?,
        "alice's card"
    );
    wait_for_keys(&mut conn, &prefix, 1).await;

    // The dependency goes down; a replica that starts now has nothing
    // local, and answers from Redis.
    down.store(true, Ordering::SeqCst);
    let second = replica(shared()?, down.clone())?;
    let res = second
        .clone()
        .oneshot(Request::get("/sku/1").body(())?)
        .await?;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(tier_of(&res), Some(Tier::LastKnownGood));
    assert!(res.headers().contains_key("age"));
    assert_eq!(body(res).await?, "stock of /sku/1");

    // The privacy rules hold unchanged: Alice's answer never reached Redis.
    let res = second
        .clone()
        .oneshot(Request::get("/account").body(())?)
        .await?;
    assert_eq!(tier_of(&res), Some(Tier::Value));
    assert_eq!(body(res).await?, "static");
    assert_eq!(
        keys(&mut conn, &prefix).await.len(),
        1,
        "only the public answer"
    );

    // An unreadable value under the key is skipped, not an error.
    let key = keys(&mut conn, &prefix).await.remove(0);
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(&b"\x00\x01garbage"[..])
        .query_async(&mut conn)
        .await?;
    let res = replica(shared()?, down.clone())?
        .oneshot(Request::get("/sku/1").body(())?)
        .await?;
    assert_eq!(tier_of(&res), Some(Tier::Value));

    // Written with a time to live of the staleness.
    let first_again = replica(shared()?, Arc::new(AtomicBool::new(false)))?;
    body(
        first_again
            .oneshot(Request::get("/sku/9").body(())?)
            .await?,
    )
    .await?;
    wait_for_keys(&mut conn, &prefix, 2).await;
    for key in keys(&mut conn, &prefix).await {
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await?;
        if ttl >= 0 {
            assert!(ttl <= 300_000 && ttl > 290_000, "ttl {ttl} ms");
        }
    }
    cleanup(&mut conn, &prefix).await;
    Ok(())
}

#[tokio::test]
async fn redis_unreachable_skips_the_tier() -> Result<(), BoxError> {
    // Port 1 on loopback: connection refused at once.
    let redis = RedisLastKnownGood::open("redis://127.0.0.1:1")?
        .prefix(unique_prefix("closed-port"))
        .timeout(Duration::from_millis(200));
    let down = Arc::new(AtomicBool::new(false));
    let svc = replica(redis, down.clone())?;
    let fresh = svc
        .clone()
        .oneshot(Request::get("/sku/1").body(())?)
        .await?;
    assert_eq!(
        body(fresh).await?,
        "stock of /sku/1",
        "success path untouched"
    );

    down.store(true, Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    let res = svc
        .clone()
        .oneshot(Request::get("/sku/2").body(())?)
        .await?;
    assert_eq!(
        tier_of(&res),
        Some(Tier::Value),
        "tier skipped, next one answers"
    );
    assert_eq!(body(res).await?, "static");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by the timeout"
    );

    // Local first: what this replica recorded itself is still served.
    let res = svc.oneshot(Request::get("/sku/1").body(())?).await?;
    assert_eq!(tier_of(&res), Some(Tier::LastKnownGood));
    assert_eq!(body(res).await?, "stock of /sku/1");
    Ok(())
}

/// Redis only: the replica keeps nothing locally and reads its own answers
/// back from Redis.
#[tokio::test]
async fn without_a_local_cache_answers_come_from_redis() -> Result<(), BoxError> {
    let Some(mut conn) = redis().await else {
        return Ok(());
    };
    let prefix = unique_prefix("redis-only");
    let redis = RedisLastKnownGood::open(&redis_url())?
        .prefix(prefix.clone())
        .timeout(Duration::from_secs(1))
        .without_local_cache();
    let down = Arc::new(AtomicBool::new(false));
    let layer = FallbackLayer::http()
        .last_known_good_shared(LastKnownGood::new(), redis, |info: &RequestInfo| {
            Some(info.uri().path().to_owned())
        })
        .build()?;
    let cache = layer.last_known_good().expect("tier configured");
    let svc = layer.layer(dependency(down.clone()));
    body(
        svc.clone()
            .oneshot(Request::get("/sku/3").body(())?)
            .await?,
    )
    .await?;
    wait_for_keys(&mut conn, &prefix, 1).await;
    cache.run_pending_tasks();
    assert_eq!(cache.entry_count(), 0, "nothing kept locally");

    down.store(true, Ordering::SeqCst);
    let res = svc
        .clone()
        .oneshot(Request::get("/sku/3").body(())?)
        .await?;
    assert_eq!(tier_of(&res), Some(Tier::LastKnownGood));
    assert_eq!(body(res).await?, "stock of /sku/3");
    cleanup(&mut conn, &prefix).await;
    Ok(())
}

#[test]
fn opening_outside_a_runtime_is_an_error_not_a_panic() {
    let err = RedisLastKnownGood::open("redis://127.0.0.1:1").unwrap_err();
    assert_eq!(err.field(), "redis");
    assert_eq!(err.reason(), "must be opened inside a Tokio runtime");
}

#[tokio::test]
async fn invalid_redis_settings_are_config_errors() {
    let redis = || RedisLastKnownGood::open("redis://127.0.0.1:1").expect("valid URL");
    let build = |redis: RedisLastKnownGood| {
        FallbackLayer::http()
            .last_known_good_shared(LastKnownGood::new(), redis, |info: &RequestInfo| {
                Some(info.uri().clone())
            })
            .build()
            .map(|_| ())
            .unwrap_err()
            .field()
    };
    assert_eq!(build(redis().timeout(Duration::ZERO)), "timeout");
    assert_eq!(build(redis().timeout(Duration::MAX)), "timeout");
    assert_eq!(build(redis().prefix("")), "prefix");
    assert_eq!(build(redis().max_value_size(0)), "max_value_size");
    assert_eq!(
        build(redis().max_writes_in_flight(0)),
        "max_writes_in_flight"
    );
    assert_eq!(
        RedisLastKnownGood::open("not a url").unwrap_err().field(),
        "redis"
    );
}

/// The default prefix includes the layer's name: two layers keyed by path
/// on one Redis (an orders service and a catalog service) never serve each
/// other's answers, while replicas of one layer still share theirs.
#[tokio::test]
async fn the_default_prefix_keeps_layers_with_different_names_apart() -> Result<(), BoxError> {
    let Some(mut conn) = redis().await else {
        return Ok(());
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let orders = format!("orders-{}-{nanos}", std::process::id());
    let catalog = format!("catalog-{}-{nanos}", std::process::id());
    let layer = |name: &str, down: Arc<AtomicBool>| -> Result<_, BoxError> {
        let redis = RedisLastKnownGood::open(&redis_url())?
            .timeout(Duration::from_secs(1))
            .without_local_cache();
        let layer = FallbackLayer::http()
            .last_known_good_shared(LastKnownGood::new(), redis, |info: &RequestInfo| {
                Some(info.uri().path().to_owned())
            })
            .value(Response::new(Bytes::from_static(b"static")))
            // Named after the tier: the prefix is settled by `build`.
            .name(name.to_owned())
            .build()?;
        Ok(layer.layer(dependency(down)))
    };
    let up = Arc::new(AtomicBool::new(false));
    let down = Arc::new(AtomicBool::new(true));
    body(
        layer(&orders, up)?
            .oneshot(Request::get("/item/1").body(())?)
            .await?,
    )
    .await?;
    let prefix = format!("{}{orders}:", RedisLastKnownGood::DEFAULT_PREFIX);
    wait_for_keys(&mut conn, &prefix, 1).await;

    let res = layer(&catalog, down.clone())?
        .oneshot(Request::get("/item/1").body(())?)
        .await?;
    assert_eq!(
        tier_of(&res),
        Some(Tier::Value),
        "another layer served the orders layer's answer"
    );
    let res = layer(&orders, down)?
        .oneshot(Request::get("/item/1").body(())?)
        .await?;
    assert_eq!(tier_of(&res), Some(Tier::LastKnownGood));
    assert_eq!(body(res).await?, "stock of /item/1");
    cleanup(&mut conn, &prefix).await;
    Ok(())
}

/// A proxy to the test Redis that holds every reply chunk for `delay`.
async fn slow_proxy(delay: Duration) -> Result<u16, BoxError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(out) = tokio::net::TcpStream::connect(upstream.as_str()).await else {
                    return;
                };
                let (mut from_client, mut to_client) = inbound.into_split();
                let (mut from_redis, mut to_redis) = out.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_client, &mut to_redis).await;
                });
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match from_redis.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    tokio::time::sleep(delay).await;
                    if to_client.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// The configured timeout is the one that applies: a Redis answering in
/// 150 ms, with `timeout(1 s)`, is used. (The connection made by `open`
/// kept its own 100 ms timeouts before, so every read gave up at 100 ms.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_slower_than_the_default_timeout_but_within_the_configured_one_is_used(
) -> Result<(), BoxError> {
    let Some(mut conn) = redis().await else {
        return Ok(());
    };
    let prefix = unique_prefix("slow");
    let down = Arc::new(AtomicBool::new(false));
    let writer = replica(
        RedisLastKnownGood::open(&redis_url())?
            .prefix(prefix.clone())
            .timeout(Duration::from_secs(1)),
        down.clone(),
    )?;
    // Recorded once its body was read whole.
    body(writer.oneshot(Request::get("/sku/1").body(())?).await?).await?;
    wait_for_keys(&mut conn, &prefix, 1).await;

    down.store(true, Ordering::SeqCst);
    let port = slow_proxy(Duration::from_millis(150)).await?;
    let reader = replica(
        RedisLastKnownGood::open(&format!("redis://127.0.0.1:{port}"))?
            .prefix(prefix.clone())
            .timeout(Duration::from_secs(1))
            .without_local_cache(),
        down,
    )?;
    let res = reader.oneshot(Request::get("/sku/1").body(())?).await?;
    let tier = tier_of(&res);
    let got = body(res).await?;
    cleanup(&mut conn, &prefix).await;
    assert_eq!(
        (tier, &got[..]),
        (Some(Tier::LastKnownGood), &b"stock of /sku/1"[..]),
        "served from Redis within the configured 1 s"
    );
    Ok(())
}
