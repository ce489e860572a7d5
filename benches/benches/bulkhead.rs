//! Happy-path cost of the bulkhead (a permit is free), against
//! `tower::limit::ConcurrencyLimit` and `tower_resilience::bulkhead` 0.13 in
//! the same run.
//!
//! Each iteration readies the service, calls it and polls the response
//! future to completion with a no-op waker, so the figures are the layers'
//! own cost plus one call of the `#[inline(never)]` leaf; subtract
//! `bare_leaf` to get each layer's overhead.
//!
//! Run with:
//! `cargo bench -p seawall-benches --bench bulkhead -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)] // criterion's macros generate undocumented public items

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
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

criterion_group!(benches, free_permit);
criterion_main!(benches);
