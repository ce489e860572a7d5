//! Exactness under real concurrency, in real time: OS threads hammering one
//! limiter through their own clones of the service. A single limit decides
//! with a compare-and-swap under its shard's shared lock, several limits
//! under exclusive locks; both must admit exactly what the quota allows,
//! never more.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use seawall_core::BoxError;
use seawall_rate_limit::{Limit, Quota, RateLimitLayer, RateLimited};
use tower::{service_fn, Layer, Service, ServiceExt};

const THREADS: u64 = 4;

/// Runs `per_thread` requests on each of [`THREADS`] threads (each with its
/// own clone of `svc`, started together), with keys from `key(thread, i)`;
/// returns how many were admitted.
fn hammer<S>(svc: &S, per_thread: u64, key: fn(u64, u64) -> u64) -> u64
where
    S: Service<u64, Response = (), Error = BoxError> + Clone + Send + 'static,
{
    let admitted = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(THREADS as usize));
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let mut svc = svc.clone();
            let admitted = admitted.clone();
            let start = start.clone();
            scope.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .expect("runtime");
                start.wait();
                rt.block_on(async {
                    for i in 0..per_thread {
                        match svc.ready().await.expect("ready").call(key(thread, i)).await {
                            Ok(()) => {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(err) => assert!(err.is::<RateLimited>(), "{err}"),
                        }
                    }
                });
            });
        }
    });
    admitted.load(Ordering::Relaxed)
}

type Done = std::future::Ready<Result<(), Infallible>>;

fn leaf() -> tower::util::ServiceFn<fn(u64) -> Done> {
    service_fn(|_: u64| std::future::ready(Ok(())))
}

#[test]
fn one_hot_key_admits_exactly_the_burst() {
    // One unit an hour: no refill during the test.
    let svc = RateLimitLayer::builder()
        .limit(Limit::per_key(
            "key",
            Quota::per_hour(1).burst(1000),
            |k: &u64| *k,
        ))
        .build()
        .unwrap()
        .layer(leaf());
    assert_eq!(hammer(&svc, 5_000, |_, _| 7), 1000);
    // Spent: nothing more passes.
    assert_eq!(hammer(&svc, 100, |_, _| 7), 0);
}

#[test]
fn many_new_keys_racing_for_cells_each_admit_exactly_their_burst() {
    // 64 keys, each new when the threads start, so the threads race to
    // insert them; then every key is hammered by every thread.
    let svc = RateLimitLayer::builder()
        .limit(Limit::per_key(
            "key",
            Quota::per_hour(1).burst(10),
            |k: &u64| *k,
        ))
        .build()
        .unwrap()
        .layer(leaf());
    assert_eq!(hammer(&svc, 2_000, |_, i| i % 64), 64 * 10);
}

#[test]
fn hot_key_admits_burst_plus_rate_times_elapsed_never_more() {
    // 2,000 a second with a burst of 50, hammered for about 300 ms.
    let quota = Quota::per_second(2_000).burst(50);
    let interval = Duration::from_secs(1).as_nanos() as u64 / 2_000;
    let before = Instant::now();
    let svc = RateLimitLayer::builder()
        .limit(Limit::per_key("key", quota, |k: &u64| *k))
        .build()
        .unwrap()
        .layer(leaf());
    let mut admitted = 0;
    while before.elapsed() < Duration::from_millis(300) {
        admitted += hammer(&svc, 2_000, |_, _| 1);
    }
    let elapsed = before.elapsed().as_nanos() as u64;
    // Each admission moves the TAT on by one interval from the limiter's
    // origin (after `before`), and the last one left it at most `burst`
    // intervals ahead of its clock (before `elapsed` was read).
    let most = 50 + elapsed / interval;
    assert!(admitted <= most, "admitted {admitted}, at most {most}");
    // And the refill was not lost: at least the burst plus most of the
    // time's units passed (the threads ask far faster than the rate).
    assert!(
        admitted >= 50 + (elapsed / interval) / 2,
        "admitted {admitted} of {most}"
    );
}

#[test]
fn two_limits_on_threads_admit_exactly_the_tighter_one() {
    // Per key 100 (4 keys) and 250 together: all-or-nothing under the
    // exclusive locks; exactly 250 pass, none past a key's 100.
    let svc = RateLimitLayer::builder()
        .limit(Limit::per_key(
            "key",
            Quota::per_hour(1).burst(100),
            |k: &u64| *k,
        ))
        .limit(Limit::global("all", Quota::per_hour(1).burst(250)))
        .build()
        .unwrap()
        .layer(leaf());
    assert_eq!(hammer(&svc, 1_000, |t, i| (t + i) % 4), 250);
}
