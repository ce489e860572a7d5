//! The layer's behaviour in paused virtual time.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use seawall_core::event::{Event, FnListener};
use seawall_core::{rejection, BoxError};
use seawall_rate_limit::{key, Limit, Quota, RateLimitEvent, RateLimitLayer, RateLimited};
use tokio::time::{advance, Instant};
use tower::{service_fn, Layer, Service, ServiceExt};

type Req = Request<()>;

fn req(api_key: &str) -> Req {
    Request::builder()
        .header("x-api-key", api_key)
        .body(())
        .unwrap()
}

type Ok = std::future::Ready<Result<Response<()>, Infallible>>;

fn ok_service() -> tower::util::ServiceFn<fn(Req) -> Ok> {
    service_fn(|_req: Req| std::future::ready(Ok(Response::new(()))))
}

fn field<T>(r: Result<T, seawall_core::ConfigError>) -> &'static str {
    r.map(|_| ()).unwrap_err().field()
}

async fn send<S>(svc: &mut S, r: Req) -> Result<Response<()>, BoxError>
where
    S: Service<Req, Response = Response<()>, Error = BoxError>,
{
    svc.ready().await?.call(r).await
}

fn limited(err: &BoxError) -> &RateLimited {
    err.downcast_ref::<RateLimited>().expect("a RateLimited")
}

#[tokio::test(start_paused = true)]
async fn burst_then_exact_retry_after_then_refill() {
    let layer = RateLimitLayer::builder()
        .limit(Limit::per_key(
            "key",
            Quota::per_second(10).burst(3),
            key::header("x-api-key"),
        ))
        .build()
        .unwrap();
    let mut svc = layer.layer(ok_service());
    for _ in 0..3 {
        send(&mut svc, req("a")).await.unwrap();
    }
    let err = send(&mut svc, req("a")).await.unwrap_err();
    assert_eq!(
        limited(&err).retry_after(),
        Some(Duration::from_millis(100))
    );
    assert_eq!(limited(&err).limit(), "key");
    let found = rejection::find(&*err).unwrap();
    assert_eq!(found.status(), 429);
    assert_eq!(found.kind(), "rate_limited");
    // Another key has its own bucket.
    send(&mut svc, req("b")).await.unwrap();

    advance(Duration::from_millis(60)).await;
    let err = send(&mut svc, req("a")).await.unwrap_err();
    assert_eq!(limited(&err).retry_after(), Some(Duration::from_millis(40)));
    advance(Duration::from_millis(40)).await;
    send(&mut svc, req("a")).await.unwrap();
    assert!(send(&mut svc, req("a")).await.is_err());
    // After a long pause the bucket holds the burst again, not more.
    advance(Duration::from_secs(60)).await;
    for _ in 0..3 {
        send(&mut svc, req("a")).await.unwrap();
    }
    assert!(send(&mut svc, req("a")).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn refused_by_one_limit_spends_nothing_from_the_others() {
    let layer = RateLimitLayer::builder()
        .limit(Limit::per_key(
            "hourly",
            Quota::per_hour(2),
            key::header("x-api-key"),
        ))
        .limit(Limit::global("global", Quota::per_second(1)))
        .build()
        .unwrap();
    let mut svc = layer.layer(ok_service());
    send(&mut svc, req("a")).await.unwrap();
    // The global limit refuses; the hourly one would have admitted.
    let err = send(&mut svc, req("a")).await.unwrap_err();
    assert_eq!(limited(&err).limit(), "global");
    assert_eq!(limited(&err).retry_after(), Some(Duration::from_secs(1)));
    advance(Duration::from_secs(1)).await;
    // Had the refusal spent from "hourly", this would be refused.
    send(&mut svc, req("a")).await.unwrap();
    advance(Duration::from_secs(1)).await;
    let err = send(&mut svc, req("a")).await.unwrap_err();
    assert_eq!(limited(&err).limit(), "hourly");
    // Two units spent at t=0 and t=1 s: the first comes back at 30 min.
    assert_eq!(
        limited(&err).retry_after(),
        Some(Duration::from_secs(1800 - 2))
    );
}

#[tokio::test(start_paused = true)]
async fn cost_is_a_function_of_the_request_and_above_burst_never_passes() {
    let layer = RateLimitLayer::builder()
        .limit(Limit::global("all", Quota::per_second(10).burst(10)))
        .cost(|r: &Req| {
            r.headers()
                .get("x-cost")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(1)
        })
        .build()
        .unwrap();
    let mut svc = layer.layer(ok_service());
    let costly = |n: u64| {
        Request::builder()
            .header("x-cost", n.to_string())
            .body(())
            .unwrap()
    };
    send(&mut svc, costly(7)).await.unwrap();
    let err = send(&mut svc, costly(5)).await.unwrap_err();
    assert_eq!(
        limited(&err).retry_after(),
        Some(Duration::from_millis(200))
    );
    send(&mut svc, costly(3)).await.unwrap();
    // Free requests pass even with an empty bucket.
    send(&mut svc, costly(0)).await.unwrap();
    let err = send(&mut svc, costly(11)).await.unwrap_err();
    assert_eq!(limited(&err).retry_after(), None);
    // Told apart from a transient refusal: it can never pass.
    assert!(limited(&err).is_never());
    let err = send(&mut svc, costly(10)).await.unwrap_err();
    assert!(!limited(&err).is_never());
}

#[tokio::test(start_paused = true)]
async fn wait_mode_waits_within_bound_and_a_dropped_wait_holds_nothing() {
    let layer = RateLimitLayer::builder()
        .limit(Limit::global("all", Quota::per_second(1)))
        .wait(Duration::from_millis(1500))
        .build()
        .unwrap();
    let mut svc = layer.layer(ok_service());
    let start = Instant::now();
    send(&mut svc, req("a")).await.unwrap();
    // Waits exactly one second.
    send(&mut svc, req("a")).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(1));

    // A wait that is dropped halfway reserves nothing.
    let waiting = svc.ready().await.unwrap().call(req("a"));
    tokio::select! {
        _ = waiting => panic!("admitted too early"),
        () = tokio::time::sleep(Duration::from_millis(500)) => {}
    }
    advance(Duration::from_millis(500)).await;
    let at = Instant::now();
    send(&mut svc, req("a")).await.unwrap();
    assert_eq!(
        at.elapsed(),
        Duration::ZERO,
        "the dropped wait took the unit"
    );

    // Needing more than the bound: refused at once.
    send(&mut svc, req("a")).await.unwrap(); // waits 1 s
    let layer_short = RateLimitLayer::builder()
        .limit(Limit::global("all", Quota::per_second(1)))
        .wait(Duration::from_millis(500))
        .build()
        .unwrap();
    let mut short = layer_short.layer(ok_service());
    send(&mut short, req("a")).await.unwrap();
    let at = Instant::now();
    let err = send(&mut short, req("a")).await.unwrap_err();
    assert_eq!(at.elapsed(), Duration::ZERO);
    assert_eq!(limited(&err).retry_after(), Some(Duration::from_secs(1)));
}

#[tokio::test(start_paused = true)]
async fn fields_on_every_answer_and_on_the_refusal() {
    let layer = RateLimitLayer::builder()
        .limit(Limit::per_key(
            "key",
            Quota::per_second(2).burst(2),
            key::header("x-api-key"),
        ))
        .limit(Limit::global("all", Quota::per_minute(100)))
        .headers()
        .build()
        .unwrap();
    let mut svc = layer.layer(ok_service());
    let res = send(&mut svc, req("a")).await.unwrap();
    assert_eq!(
        res.headers()["ratelimit-policy"],
        r#""key";q=2;w=1, "all";q=100;w=60"#
    );
    assert_eq!(
        res.headers()["ratelimit"],
        r#""key";r=1;t=1, "all";r=99;t=1"#
    );
    let res = send(&mut svc, req("a")).await.unwrap();
    assert_eq!(
        res.headers()["ratelimit"],
        r#""key";r=0;t=1, "all";r=98;t=2"#
    );
    let err = send(&mut svc, req("a")).await.unwrap_err();
    let (policy, state) = limited(&err).fields().expect("fields on refusal");
    assert_eq!(
        policy,
        &HeaderValue::from_static(r#""key";q=2;w=1, "all";q=100;w=60"#)
    );
    assert_eq!(
        state,
        &HeaderValue::from_static(r#""key";r=0;t=1, "all";r=98;t=2"#)
    );
}

#[tokio::test(start_paused = true)]
async fn events_say_allowed_waited_and_limited_by_limit() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let layer = RateLimitLayer::builder()
        .name("edge")
        .limit(Limit::global("all", Quota::per_second(1)))
        .wait(Duration::from_secs(1))
        .listener(FnListener::new(move |e: &RateLimitEvent| {
            log.lock().unwrap().push(e.clone());
        }))
        .build()
        .unwrap();
    let mut svc = layer.layer(ok_service());
    send(&mut svc, req("a")).await.unwrap();
    send(&mut svc, req("a")).await.unwrap();
    // Two waiting at once, both for the unit due at 2 s: waits reserve
    // nothing, so the first takes it and the second, overtaken at its
    // deadline, is refused.
    let first = svc.ready().await.unwrap().call(req("a"));
    let (_, second) = tokio::join!(first, async {
        tokio::task::yield_now().await;
        send(&mut layer.layer(ok_service()), req("a")).await
    });
    assert!(second.is_err());
    let seen = seen.lock().unwrap();
    let kinds: Vec<_> = seen.iter().map(Event::kind).collect();
    assert_eq!(
        kinds,
        ["allowed", "waited", "waited", "limited"],
        "{seen:?}"
    );
    assert!(seen.iter().all(|e| e.layer() == "edge"));
    assert_eq!(
        seen[1],
        RateLimitEvent::Waited {
            layer: Arc::from("edge"),
            waited: Duration::from_secs(1)
        }
    );
    let RateLimitEvent::Limited {
        limit, retry_after, ..
    } = &seen[3]
    else {
        panic!("{seen:?}")
    };
    assert_eq!(&**limit, "all");
    assert_eq!(*retry_after, Some(Duration::from_secs(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exact_under_concurrency_with_two_limits() {
    // No refill during the test (one unit an hour): exactly the bursts pass.
    let layer = RateLimitLayer::builder()
        .limit(Limit::per_key(
            "key",
            Quota::per_hour(1).burst(10),
            key::header("x-api-key"),
        ))
        .limit(Limit::global("all", Quota::per_hour(1).burst(25)))
        .build()
        .unwrap();
    let admitted: Arc<[AtomicUsize; 4]> = Arc::new(Default::default());
    let mut tasks = Vec::new();
    for t in 0..8 {
        let svc = layer.layer(ok_service());
        let admitted = admitted.clone();
        tasks.push(tokio::spawn(async move {
            let mut svc = svc;
            for i in 0..50 {
                let k = (t + i) % 4;
                if send(&mut svc, req(&k.to_string())).await.is_ok() {
                    admitted[k].fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let per_key: Vec<usize> = admitted.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    assert_eq!(per_key.iter().sum::<usize>(), 25, "{per_key:?}");
    assert!(per_key.iter().all(|&n| n <= 10), "{per_key:?}");
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_new_keys_never_gets_more_than_the_quota() {
    // 16 keys of room (one per shard); 2,000 keys, each trying twice.
    let layer = RateLimitLayer::builder()
        .limit(Limit::per_key(
            "key",
            Quota::per_hour(1).burst(1),
            key::header("x-api-key"),
        ))
        .key_capacity(16)
        .build()
        .unwrap();
    let mut svc = layer.layer(ok_service());
    let mut admitted = 0;
    for k in 0..2000 {
        let key = format!("flood-{k}");
        if send(&mut svc, req(&key)).await.is_ok() {
            admitted += 1;
        }
        // Never a second unit for a key within the hour.
        assert!(send(&mut svc, req(&key)).await.is_err(), "{key}");
    }
    // At most one cell and one overflow bucket per shard.
    assert!(admitted <= 32, "{admitted}");
    assert!(admitted >= 16, "{admitted}");
    // Over-long keys share an overflow bucket too.
    let long = "x".repeat(1000);
    let layer = RateLimitLayer::builder()
        .limit(Limit::per_key(
            "key",
            Quota::per_hour(1).burst(1),
            key::header("x-api-key"),
        ))
        .max_key_bytes(64)
        .key_capacity(1)
        .build()
        .unwrap();
    let mut svc = layer.layer(ok_service());
    send(&mut svc, req(&format!("{long}1"))).await.unwrap();
    assert!(send(&mut svc, req(&format!("{long}2"))).await.is_err());
    // Once keys are idle, memory is reused: a new key gets its own bucket.
    advance(Duration::from_secs(3600)).await;
    send(&mut svc, req("short")).await.unwrap();
    send(&mut svc, req(&format!("{long}3"))).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn long_keys_do_not_starve_new_short_keys() {
    // Over-long keys share a bucket; draining it (400 requests with
    // distinct 300-byte keys over the 16 shards) must not refuse any key
    // that fits: a never-seen key has a full bucket.
    let layer = RateLimitLayer::builder()
        .limit(Limit::per_key(
            "key",
            Quota::per_second(10).burst(5),
            key::header("x-api-key"),
        ))
        .build()
        .unwrap();
    let mut svc = layer.layer(ok_service());
    for i in 0..400 {
        let _ = send(&mut svc, req(&format!("{i:0>300}"))).await;
    }
    assert!(send(&mut svc, req(&"9".repeat(300))).await.is_err());
    let mut refused = 0;
    for i in 0..20 {
        if send(&mut svc, req(&format!("alice-{i}"))).await.is_err() {
            refused += 1;
        }
    }
    assert_eq!(refused, 0, "{refused}/20 new short keys refused at once");
}

#[tokio::test(start_paused = true)]
async fn rates_above_one_per_nanosecond_are_refused_not_halved() {
    // 2e9/s would be enforced as one unit per nanosecond, 1e9/s, while
    // the policy field advertised 2e9/s.
    let built = RateLimitLayer::builder()
        .limit(Limit::global("all", Quota::per_second(2_000_000_000)))
        .headers()
        .build();
    let err = built.map(|_| ()).unwrap_err();
    assert_eq!(err.field(), "quota");
    assert!(err.reason().starts_with("rate"), "{err}");
    // 1e9/s is exact: 1,000 units come back in 1,000 ns.
    let layer = RateLimitLayer::builder()
        .limit(Limit::global(
            "all",
            Quota::per_second(1_000_000_000).burst(1000),
        ))
        .cost(|_: &Req| 1000)
        .build()
        .unwrap();
    let mut svc = layer.layer(ok_service());
    send(&mut svc, req("a")).await.unwrap();
    let err = send(&mut svc, req("a")).await.unwrap_err();
    assert_eq!(limited(&err).retry_after(), Some(Duration::from_micros(1)));
}

#[test]
fn invalid_settings_are_config_errors() {
    let ip = || Limit::per_key("ip", Quota::per_second(1), key::peer_ip::<()>);
    assert_eq!(field(RateLimitLayer::builder().build()), "limit");
    assert_eq!(
        field(
            RateLimitLayer::builder()
                .limit(Limit::global("a", Quota::per_second(5).burst(0)))
                .build()
        ),
        "quota"
    );
    assert_eq!(
        field(RateLimitLayer::builder().limit(ip()).limit(ip()).build()),
        "limit name"
    );
    assert_eq!(
        field(
            RateLimitLayer::builder()
                .limit(Limit::global("a b", Quota::per_second(1)))
                .build()
        ),
        "limit name"
    );
    assert_eq!(
        field(
            RateLimitLayer::builder()
                .limit(ip())
                .wait(Duration::ZERO)
                .build()
        ),
        "wait"
    );
    assert_eq!(
        field(
            RateLimitLayer::builder()
                .limit(ip())
                .wait(Duration::from_secs(7200))
                .build()
        ),
        "wait"
    );
    assert_eq!(
        field(
            RateLimitLayer::builder()
                .limit(Limit::global(
                    "a",
                    Quota::new(3, Duration::from_millis(1500))
                ))
                .headers()
                .build()
        ),
        "headers"
    );
    assert_eq!(
        field(
            RateLimitLayer::builder()
                .limit(ip())
                .key_capacity(0)
                .build()
        ),
        "key_capacity"
    );
    assert_eq!(
        field(RateLimitLayer::builder().limit(ip()).key_memory(10).build()),
        "key_memory"
    );
}
