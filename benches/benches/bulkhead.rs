//! Happy-path cost of the bulkhead (a permit is free), against
//! `tower::limit::ConcurrencyLimit` and `tower_resilience::bulkhead` 0.13 in
//! the same run.
//!
//! Each iteration readies the service, calls it and polls the response
//! future to completion with a no-op waker, so the figures are the layers'
//! own cost plus one call of the `#[inline(never)]` leaf; subtract
//! `bare_leaf` to get each layer's overhead.
//!
//! `cancel_queue/newest_first/N` fills the wait queue with `N` waiters and
//! times dropping all of them, newest first: the order that made each
//! departure a scan of its whole class when the queue was a `VecDeque` per
//! class (quadratic in `N`). With O(1) removal, 100k costs about ten times
//! 10k.
//!
//! Run with:
//! `cargo bench -p seawall-benches --bench bulkhead -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)] // criterion's macros generate undocumented public items

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use seawall::bulkhead::limit::Gradient2;
use seawall::bulkhead::{BulkheadLayer, Priority};
use seawall_benches::{call_now, Leaf};
use tower::{Layer, Service};

type Req = [u64; 4];

fn run<S>(c: &mut Criterion, name: &str, mut svc: S)
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
{
    c.bench_function(name, |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box([1, 2, 3, 4]))));
    });
}

fn free_permit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    // tower-resilience reads the runtime's clock; give every service a
    // runtime context.
    let _guard = rt.enter();

    run(c, "bulkhead_free_permit/bare_leaf", Leaf);

    run(
        c,
        "bulkhead_free_permit/tower_concurrency_limit",
        tower::limit::ConcurrencyLimitLayer::new(64).layer(Leaf),
    );

    let seawall = BulkheadLayer::builder()
        .max_concurrent(64)
        .build()
        .expect("valid config");
    run(
        c,
        "bulkhead_free_permit/seawall_bulkhead",
        seawall.layer(Leaf),
    );

    let seawall_leaked = BulkheadLayer::builder()
        .max_concurrent(64)
        .build()
        .expect("valid config")
        .leak();
    run(
        c,
        "bulkhead_free_permit/seawall_bulkhead_leaked",
        seawall_leaked.layer(Leaf),
    );

    let backpressure = BulkheadLayer::builder()
        .max_concurrent(64)
        .build()
        .expect("valid config")
        .backpressure();
    run(
        c,
        "bulkhead_free_permit/seawall_bulkhead_backpressure",
        backpressure.layer(Leaf),
    );

    let prioritised = BulkheadLayer::builder()
        .max_concurrent(64)
        .max_queue(64)
        .max_wait(Duration::from_millis(100))
        .priority(|r: &Req| {
            if r[0] == 0 {
                Priority::Sheddable
            } else {
                Priority::Normal
            }
        })
        .build()
        .expect("valid config");
    run(
        c,
        "bulkhead_free_permit/seawall_bulkhead_priority",
        prioritised.layer(Leaf),
    );

    let adaptive = BulkheadLayer::builder()
        .adaptive(Gradient2::builder().build().expect("valid limit"))
        .build()
        .expect("valid config");
    run(
        c,
        "bulkhead_free_permit/seawall_bulkhead_gradient2",
        adaptive.layer(Leaf),
    );

    let resilience = tower_resilience::bulkhead::BulkheadLayer::builder()
        .max_concurrent_calls(64)
        .build()
        .expect("valid config");
    run(
        c,
        "bulkhead_free_permit/tower_resilience_bulkhead",
        resilience.layer(Leaf),
    );
}

/// Dropping `n` queued waiters, newest first, with one permit held.
fn cancel_queue(c: &mut Criterion) {
    let mut group = c.benchmark_group("cancel_queue");
    group.sample_size(10);
    for n in [10_000usize, 100_000] {
        group.bench_with_input(BenchmarkId::new("newest_first", n), &n, |b, &n| {
            b.iter_batched(
                || {
                    let layer = BulkheadLayer::builder()
                        .max_concurrent(1)
                        .max_queue(n)
                        .max_wait(None)
                        .priority(|r: &Req| match r[0] % 3 {
                            0 => Priority::Critical,
                            1 => Priority::Normal,
                            _ => Priority::Sheddable,
                        })
                        .build()
                        .expect("valid config");
                    let mut svc = layer.layer(Leaf);
                    // Never polled: the first holds the only permit, the
                    // rest wait in the queue.
                    let holder = svc.call([0; 4]);
                    let waiters: Vec<_> =
                        (0u64..).take(n).map(|i| svc.call([i, 0, 0, 0])).collect();
                    assert_eq!(layer.handle().queued(), n);
                    (holder, waiters)
                },
                |(holder, mut waiters)| {
                    while let Some(waiter) = waiters.pop() {
                        drop(black_box(waiter));
                    }
                    // The permit is given back outside the measurement.
                    holder
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, free_permit, cancel_queue);
criterion_main!(benches);
