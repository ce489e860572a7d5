//! Fast-path cost of the adaptive timeout (record + decide) and of the hedge
//! layer when no hedge fires, against tower's `Timeout` in the same run.
//!
//! Run with:
//! `cargo bench -p seawall-benches --bench timeout -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)] // criterion's macros generate undocumented public items

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use seawall::timeout::{AdaptiveTimeoutLayer, HedgeLayer};
use seawall_benches::{call_now, Leaf};
use tower::timeout::TimeoutLayer;
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

fn bench(c: &mut Criterion) {
    // tower's `Timeout` builds a tokio `Sleep` in every `call`, which needs
    // a runtime with a timer; the seawall layers run inside the same one.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = rt.enter();

    run(c, "leaf alone", Leaf);
    // For scale: one clock read, which tower's `Timeout` pays per call.
    c.bench_function("one clock read (tokio Instant::now)", |b| {
        b.iter(|| black_box(tokio::time::Instant::now()));
    });
    run(
        c,
        "tower Timeout (1 s)",
        TimeoutLayer::new(Duration::from_secs(1)).layer(Leaf),
    );
    let adaptive = AdaptiveTimeoutLayer::builder().build().expect("valid");
    run(
        c,
        "seawall AdaptiveTimeout (p99 x 3, record + decide)",
        adaptive.layer(Leaf),
    );
    let hedge = HedgeLayer::builder().build().expect("valid");
    run(
        c,
        "seawall Hedge (adaptive p95, no hedge fires)",
        hedge.layer(Leaf),
    );
    let fixed = HedgeLayer::builder()
        .delay(Duration::from_millis(10))
        .build()
        .expect("valid");
    run(
        c,
        "seawall Hedge (fixed 10 ms, no hedge fires)",
        fixed.layer(Leaf),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
