//! Cost of a `ChaosLayer` that injects nothing, against
//! `tower::limit::ConcurrencyLimit` in the same run: a layer with no faults,
//! one whose faults are switched off by the handle's master switch, one
//! whose faults are each switched off, and (for reference, not a claim) one
//! whose faults are on at rate 0, which pays an RNG draw per fault.
//!
//! Each iteration readies the service, calls it and polls the response
//! future to completion with a no-op waker, so the figures are the layers'
//! own cost plus one call of the `#[inline(never)]` leaf; subtract
//! `bare_leaf` to get each layer's overhead.
//!
//! Run with:
//! `cargo bench -p seawall-benches --bench chaos -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)] // criterion's macros generate undocumented public items

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use seawall::chaos::{ChaosLayer, Fault, Latency, Schedule};
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

fn faults() -> [Fault; 3] {
    [
        Fault::latency(Latency::log_normal(Duration::from_millis(20), 0.5)).rate(0.1),
        Fault::error().rate(0.05).schedule(Schedule::between(
            Duration::from_secs(10),
            Duration::from_secs(40),
        )),
        Fault::hang().rate(0.01),
    ]
}

fn nothing_injected(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = rt.enter();

    run(c, "chaos_nothing_injected/bare_leaf", Leaf);

    run(
        c,
        "chaos_nothing_injected/tower_concurrency_limit",
        tower::limit::ConcurrencyLimitLayer::new(64).layer(Leaf),
    );

    let no_faults = ChaosLayer::builder().build().expect("valid config");
    run(
        c,
        "chaos_nothing_injected/seawall_chaos_no_faults",
        no_faults.layer(Leaf),
    );

    let switched_off = ChaosLayer::builder()
        .seed(1)
        .faults(faults())
        .build()
        .expect("valid config");
    switched_off.handle().disable();
    run(
        c,
        "chaos_nothing_injected/seawall_chaos_switched_off",
        switched_off.layer(Leaf),
    );

    let faults_off = ChaosLayer::builder()
        .seed(1)
        .faults(faults().map(Fault::disabled))
        .build()
        .expect("valid config");
    run(
        c,
        "chaos_nothing_injected/seawall_chaos_faults_off",
        faults_off.layer(Leaf),
    );

    let rate_zero = ChaosLayer::builder()
        .seed(1)
        .faults(faults().map(|f| f.rate(0.0)))
        .build()
        .expect("valid config");
    run(
        c,
        "chaos_nothing_injected/seawall_chaos_rate_zero",
        rate_zero.layer(Leaf),
    );
}

criterion_group!(benches, nothing_injected);
criterion_main!(benches);
