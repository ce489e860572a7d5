//! Cost of `FallbackLayer` on the success path, against a bare
//! `tower::util::MapResponse` over the same leaf service.
//!
//! Run with: `cargo bench -p seawall-benches --bench fallback`

#![allow(missing_docs)] // criterion's macros generate undocumented public items

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{Either, Full};
use seawall::fallback::{FallbackLayer, LastKnownGood};
use seawall_benches::{call_now, Leaf};
use tower::util::{MapErrLayer, MapResponseLayer};
use tower::BoxError;
use tower::{Layer, Service, ServiceExt};

fn success_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("fallback_success_path");
    group.bench_function("bare_map_response", |b| {
        let mut svc = MapResponseLayer::new(|n: u64| n).layer(Leaf);
        b.iter(|| black_box(call_now(&mut svc, black_box(7u64))));
    });
    group.bench_function("map_response_with_box_error", |b| {
        // The same map, returning `BoxError` as every seawall layer does.
        let mut svc = MapResponseLayer::new(|n: u64| n)
            .layer(MapErrLayer::new(Into::<BoxError>::into).layer(Leaf));
        b.iter(|| black_box(call_now(&mut svc, black_box(7u64))));
    });
    group.bench_function("map_response_cloning_an_arc", |b| {
        // One reference-count increment and decrement per call, as a layer
        // whose future holds its shared state pays.
        let shared = std::sync::Arc::new(0u64);
        let mut svc =
            MapResponseLayer::new(move |n: u64| n + *std::sync::Arc::clone(&shared)).layer(Leaf);
        b.iter(|| black_box(call_now(&mut svc, black_box(7u64))));
    });
    group.bench_function("fallback_value", |b| {
        let layer = FallbackLayer::builder().value(0u64).build().expect("valid");
        let mut svc = layer.layer(Leaf);
        b.iter(|| black_box(call_now(&mut svc, black_box(7u64))));
    });
    group.bench_function("fallback_value_leaked", |b| {
        let layer = FallbackLayer::builder()
            .value(0u64)
            .build()
            .expect("valid")
            .leak();
        let mut svc = layer.layer(Leaf);
        b.iter(|| black_box(call_now(&mut svc, black_box(7u64))));
    });
    group.bench_function("fallback_function_value", |b| {
        let layer = FallbackLayer::builder()
            .function(|(): &(), _| Some(1u64))
            .value(0u64)
            .build()
            .expect("valid");
        let mut svc = layer.layer(Leaf);
        b.iter(|| black_box(call_now(&mut svc, black_box(7u64))));
    });
    group.bench_function("fallback_last_known_good_recording", |b| {
        let layer = FallbackLayer::capturing(|n: &u64| *n)
            .last_known_good(
                LastKnownGood::new().max_staleness(Duration::from_secs(60)),
                |n: &u64| Some(*n),
            )
            .build()
            .expect("valid");
        let mut svc = layer.layer(Leaf);
        b.iter(|| black_box(call_now(&mut svc, black_box(7u64))));
    });
    group.finish();

    // A leaf whose error type is already `BoxError`, as a client's usually
    // is (a connection refused, a timeout): the bare map and the fallback
    // layer then return the same `Result` type and neither converts.
    let fallible = || {
        tower::service_fn(|n: u64| {
            std::future::ready(Leaf.call(n).into_inner().map_err(BoxError::from))
        })
    };
    let mut group = c.benchmark_group("fallback_success_path_fallible_leaf");
    group.bench_function("bare_map_response", |b| {
        let mut svc = MapResponseLayer::new(|n: u64| n).layer(fallible());
        b.iter(|| black_box(call_now(&mut svc, black_box(7u64))));
    });
    group.bench_function("fallback_value", |b| {
        let layer = FallbackLayer::builder().value(0u64).build().expect("valid");
        let mut svc = layer.layer(fallible());
        b.iter(|| black_box(call_now(&mut svc, black_box(7u64))));
    });
    group.bench_function("fallback_value_leaked", |b| {
        let layer = FallbackLayer::builder()
            .value(0u64)
            .build()
            .expect("valid")
            .leak();
        let mut svc = layer.layer(fallible());
        b.iter(|| black_box(call_now(&mut svc, black_box(7u64))));
    });
    group.finish();

    // The harness of `benches/benches/core.rs`: each call driven by a
    // current-thread tokio runtime, as a server task would.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("fallback_success_path_tokio");
    group.bench_function("bare_map_response", |b| {
        let mut svc = MapResponseLayer::new(|n: u64| n).layer(Leaf);
        b.iter(|| {
            rt.block_on(async {
                let svc = svc.ready().await.expect("ready");
                black_box(svc.call(black_box(7u64)).await.expect("ok"))
            })
        });
    });
    group.bench_function("fallback_value", |b| {
        let layer = FallbackLayer::builder().value(0u64).build().expect("valid");
        let mut svc = layer.layer(Leaf);
        b.iter(|| {
            rt.block_on(async {
                let svc = svc.ready().await.expect("ready");
                black_box(svc.call(black_box(7u64)).await.expect("ok"))
            })
        });
    });
    group.finish();

    let mut group = c.benchmark_group("fallback_http_success_path");
    let leaf = tower::service_fn(|req: Request<String>| Leaf.call(Response::new(req.into_body())));
    group.bench_function("bare_map_response", |b| {
        let mut svc = MapResponseLayer::new(|res: Response<String>| res).layer(leaf);
        b.iter(|| black_box(call_now(&mut svc, Request::new(String::new()))));
    });
    group.bench_function("map_response_with_box_error_and_either_body", |b| {
        // The least any layer must do that can answer with a body of its
        // own: put the inner body in an enum with its own body type, and
        // return `BoxError` as every seawall layer does.
        let mut svc = MapResponseLayer::new(|res: Response<String>| {
            res.map(Either::<String, Full<Bytes>>::Left)
        })
        .layer(MapErrLayer::new(Into::<BoxError>::into).layer(leaf));
        b.iter(|| black_box(call_now(&mut svc, Request::new(String::new()))));
    });
    group.bench_function("fallback_value", |b| {
        let layer = FallbackLayer::http()
            .value(Response::new(Bytes::from_static(b"[]")))
            .build()
            .expect("valid");
        let mut svc = layer.layer(leaf);
        b.iter(|| black_box(call_now(&mut svc, Request::new(String::new()))));
    });
    group.bench_function("fallback_value_leaked", |b| {
        let layer = FallbackLayer::http()
            .value(Response::new(Bytes::from_static(b"[]")))
            .build()
            .expect("valid")
            .leak();
        let mut svc = layer.layer(leaf);
        b.iter(|| black_box(call_now(&mut svc, Request::new(String::new()))));
    });
    group.finish();
}

criterion_group!(benches, success_path);
criterion_main!(benches);
