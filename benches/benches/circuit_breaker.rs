//! Cost of the circuit breaker, against `tower::limit::ConcurrencyLimit` and
//! `tower_resilience::circuitbreaker` 0.13 in the same run.
//!
//! - `circuit_breaker_closed/*`: the closed happy path. Each iteration
//!   readies the service, calls it and polls the response future to
//!   completion with a no-op waker, so the figures are the layer's own cost
//!   plus one call of the `#[inline(never)]` leaf; subtract `bare_leaf` for
//!   each layer's overhead.
//! - `circuit_breaker_contention/*`: one shared breaker (or limit) driven by
//!   2 worker threads × {1, 8, 64} tasks; throughput in calls per second.
//! - `circuit_breaker_time_window/*`: the closed path with a time window
//!   holding about 1k or about 100k calls (the window length is picked so
//!   that at the measured call rate it holds that many; the bench prints how
//!   many it really held).
//!
//! - `circuit_breaker_keyed_new_key/{10000,200000}`: one request with a
//!   key never seen before through a keyed breaker whose registry is full
//!   (capacity 10k or 200k): a closed breaker is evicted and a new one made.
//!
//! - `circuit_breaker_fleet/{local_only,with_fleet_sync}`: the closed path
//!   of a breaker alone and of one whose state a `FleetSync` shares through
//!   Redis (syncing every 50 ms in a background task), in the same run.
//!
//! Run with:
//! `cargo bench -p seawall-benches --bench circuit_breaker -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)] // criterion's macros generate undocumented public items

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use seawall::circuit_breaker::CircuitBreakerLayer;
use seawall_benches::{call_now, Leaf};
use tower::{Layer, Service, ServiceExt};

fn run<S>(c: &mut Criterion, name: &str, mut svc: S)
where
    S: Service<u64>,
    S::Error: std::fmt::Debug,
{
    c.bench_function(name, |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(7))));
    });
}

fn closed(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    // tower-resilience and the time window read the runtime's clock.
    let _guard = rt.enter();

    run(c, "circuit_breaker_closed/bare_leaf", Leaf);
    run(
        c,
        "circuit_breaker_closed/tower_concurrency_limit",
        tower::limit::ConcurrencyLimitLayer::new(64).layer(Leaf),
    );
    run(
        c,
        "circuit_breaker_closed/seawall_count_window",
        CircuitBreakerLayer::new().layer(Leaf),
    );
    // The same breaker leaked: the response future holds a plain reference,
    // so a call touches no reference count.
    run(
        c,
        "circuit_breaker_closed/seawall_count_window_leaked",
        CircuitBreakerLayer::new().leak().layer(Leaf),
    );
    // Disabled through the handle: admission and the response future but no
    // recording, which splits the cost between the plumbing and the window.
    let disabled = CircuitBreakerLayer::new();
    disabled.handle().disable();
    run(
        c,
        "circuit_breaker_closed/seawall_disabled",
        disabled.layer(Leaf),
    );
    let time = CircuitBreakerLayer::builder()
        .time_window(Duration::from_secs(60), 60)
        .build()
        .expect("valid config");
    run(
        c,
        "circuit_breaker_closed/seawall_time_window",
        time.layer(Leaf),
    );
    // What one read of the clock costs here: the time window reads it once
    // per recorded call, which no window keyed by time can avoid.
    c.bench_function("circuit_breaker_closed/clock_read", |b| {
        b.iter(|| black_box(tokio::time::Instant::now()));
    });
    let slow = CircuitBreakerLayer::builder()
        .slow_call_duration(Duration::from_secs(1))
        .build()
        .expect("valid config");
    run(
        c,
        "circuit_breaker_closed/seawall_count_window_slow_calls",
        slow.layer(Leaf),
    );
    let resilience = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .expect("valid config");
    run(
        c,
        "circuit_breaker_closed/tower_resilience_circuitbreaker",
        resilience.layer(Leaf),
    );
}

const CALLS_PER_BATCH: u64 = 1 << 16;

/// Drives `CALLS_PER_BATCH` calls through clones of `svc` from `tasks`
/// tasks on a 2-worker runtime; each task yields every 16 calls so tasks
/// interleave as request handlers would.
fn contended<S>(rt: &tokio::runtime::Runtime, svc: &S, tasks: u64, iters: u64) -> Duration
where
    S: Service<u64> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        rt.block_on(async {
            let handles: Vec<_> = (0..tasks)
                .map(|_| {
                    let mut svc = svc.clone();
                    tokio::spawn(async move {
                        for i in 0..CALLS_PER_BATCH / tasks {
                            let ready = svc.ready().await.expect("ready");
                            black_box(ready.call(black_box(i)).await.expect("ok"));
                            if i % 16 == 15 {
                                tokio::task::yield_now().await;
                            }
                        }
                    })
                })
                .collect();
            for h in handles {
                h.await.expect("task");
            }
        });
        total += start.elapsed();
    }
    total
}

fn contention(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime");
    let breaker = CircuitBreakerLayer::new().layer(Leaf);
    let leaked = CircuitBreakerLayer::new().leak().layer(Leaf);
    let limit = tower::limit::ConcurrencyLimitLayer::new(1_000_000).layer(Leaf);
    let mut group = c.benchmark_group("circuit_breaker_contention");
    group.throughput(Throughput::Elements(CALLS_PER_BATCH));
    for tasks in [1u64, 8, 64] {
        group.bench_with_input(BenchmarkId::new("seawall", tasks), &tasks, |b, &tasks| {
            b.iter_custom(|iters| contended(&rt, &breaker, tasks, iters));
        });
        // The same breaker with its state leaked: the two workers no
        // longer share a reference count's cache line on every call.
        group.bench_with_input(
            BenchmarkId::new("seawall_leaked", tasks),
            &tasks,
            |b, &tasks| {
                b.iter_custom(|iters| contended(&rt, &leaked, tasks, iters));
            },
        );
        // ConcurrencyLimit is not Clone-shareable in a meaningful way (each
        // clone shares the semaphore), so it serves as the reference.
        group.bench_with_input(
            BenchmarkId::new("tower_concurrency_limit", tasks),
            &tasks,
            |b, &tasks| {
                b.iter_custom(|iters| contended(&rt, &limit, tasks, iters));
            },
        );
    }
    group.finish();
}

fn time_window(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    // Calibrate: how long does one closed call with a time window take here?
    let probe = CircuitBreakerLayer::builder()
        .time_window(Duration::from_secs(60), 10)
        .build()
        .expect("valid config");
    let mut svc = probe.layer(Leaf);
    let mut cx = Context::from_waker(Waker::noop());
    let start = Instant::now();
    for i in 0..200_000u64 {
        let _ = Service::<u64>::poll_ready(&mut svc, &mut cx);
        let _ = pin!(svc.call(i)).poll(&mut cx);
    }
    let per_call = start.elapsed() / 200_000;

    for held in [1_000u32, 100_000] {
        let layer = CircuitBreakerLayer::builder()
            .time_window(per_call * held, 10)
            .minimum_calls(u64::MAX / 2)
            .build()
            .expect("valid config");
        let handle = layer.handle();
        let mut svc = layer.layer(Leaf);
        for i in 0..u64::from(held) * 4 {
            let _ = Service::<u64>::poll_ready(&mut svc, &mut cx);
            let _ = pin!(svc.call(i)).poll(&mut cx);
        }
        eprintln!(
            "a time window of {:?} holds {} calls in a tight loop",
            per_call * held,
            handle.metrics().calls
        );
        run(
            c,
            &format!("circuit_breaker_time_window/about_{held}_calls_in_window"),
            svc,
        );
    }
}

/// The cost of a request whose key has no breaker yet, with the registry
/// full: the new key takes a closed breaker's place (CLOCK eviction), so
/// the cost must not grow with the capacity.
fn keyed_new_key(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let mut group = c.benchmark_group("circuit_breaker_keyed_new_key");
    for capacity in [10_000u64, 200_000] {
        let layer = CircuitBreakerLayer::builder()
            .key_capacity(usize::try_from(capacity).expect("fits"))
            .build_keyed(|key: &u64| *key)
            .expect("valid config");
        let handle = layer.handle();
        let mut svc = layer.layer(Leaf);
        for key in 0..capacity {
            black_box(call_now(&mut svc, key));
        }
        assert_eq!(handle.len() as u64, capacity, "registry filled");
        let mut next = capacity;
        group.bench_with_input(BenchmarkId::from_parameter(capacity), &capacity, |b, _| {
            b.iter(|| {
                next += 1;
                black_box(call_now(&mut svc, black_box(next)))
            });
        });
        assert_eq!(handle.len() as u64, capacity, "still at capacity");
    }
    group.finish();
}

/// The closed path with and without a fleet sync (`FleetSync`, feature
/// `redis`) running on the same breaker: the sync runs in a background task
/// every 50 ms against `REDIS_URL` (default `redis://127.0.0.1:6379`; if
/// nothing answers there it keeps failing over to local judgement, which
/// costs the call path nothing either).
fn fleet(c: &mut Criterion) {
    use seawall_circuit_breaker::FleetSync;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut group = c.benchmark_group("circuit_breaker_fleet");
    let local = CircuitBreakerLayer::new();
    let mut local_svc = local.layer(Leaf);
    group.bench_function("local_only", |b| {
        b.iter(|| black_box(call_now(&mut local_svc, black_box(7))));
    });
    let synced = CircuitBreakerLayer::new();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let sync = FleetSync::builder(url, format!("bench-{}-{nanos}", std::process::id()))
        .prefix("seawall-bench:cb:")
        .replica_id("bench")
        .interval(Duration::from_millis(50))
        .timeout(Duration::from_millis(20))
        .spawn(synced.handle())
        .expect("valid fleet settings");
    let mut synced_svc = synced.layer(Leaf);
    group.bench_function("with_fleet_sync", |b| {
        b.iter(|| black_box(call_now(&mut synced_svc, black_box(7))));
    });
    let view = sync.fleet();
    println!(
        "fleet sync during the bench: {} syncs, {} failed, connected {}",
        view.syncs, view.failed_syncs, view.connected
    );
    group.finish();
}

criterion_group!(
    benches,
    closed,
    contention,
    time_window,
    keyed_new_key,
    fleet
);
criterion_main!(benches);
