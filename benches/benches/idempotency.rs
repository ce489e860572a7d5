//! Cost of the idempotency layer: the memory store's claim + complete (the
//! work of a first request) and claim of a completed key (a replay), and the
//! layer end to end for a replay (anonymous, and scoped by an
//! `Authorization` digest) and for a request it passes through.
//!
//! Run with: `cargo bench -p seawall-benches --bench idempotency`

#![allow(missing_docs)] // criterion's macros generate undocumented public items

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use seawall_idempotency::{
    Claim, Fingerprint, IdempotencyLayer, MemoryStore, RequestBody, Scope, Store, StoreKey,
    StoredResponse,
};
use tower::{Layer, ServiceExt};

fn memory_store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let store = MemoryStore::new();
    // Keys cycle over a fixed set and records are kept for zero time, so the
    // store stays at a steady size and every claim takes a free key.
    let keys: Vec<StoreKey> = (0..1024)
        .map(|i| StoreKey::new("bench", Scope::Tenant("tenant"), &format!("key-{i}")))
        .collect();
    let fp = Fingerprint::from_bytes([1; 32]);
    let lease = Duration::from_secs(60);
    let response = StoredResponse::new(
        StatusCode::CREATED,
        &HeaderMap::new(),
        Bytes::from_static(b"{\"id\":\"ch_1\"}"),
        false,
    );
    let mut group = c.benchmark_group("idempotency_memory_store");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("claim_complete", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            let key = &keys[i];
            rt.block_on(async {
                let Ok(Claim::Claimed(token)) = store.claim(key, &fp, lease).await else {
                    panic!("a free key");
                };
                store
                    .complete(key, &token, &fp, &response, Duration::ZERO)
                    .await
                    .expect("stored");
            });
        });
    });
    let kept = StoreKey::new("bench", Scope::Shared, "kept");
    rt.block_on(async {
        let Ok(Claim::Claimed(token)) = store.claim(&kept, &fp, lease).await else {
            panic!("a free key");
        };
        store
            .complete(&kept, &token, &fp, &response, Duration::from_secs(3600))
            .await
            .expect("stored");
    });
    group.bench_function("claim_completed_replay", |b| {
        b.iter(|| rt.block_on(store.claim(black_box(&kept), &fp, lease)));
    });
    group.finish();
}

fn handler(
    _req: Request<RequestBody<Full<Bytes>>>,
) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(
        b"{\"id\":\"ch_1\"}",
    )))))
}

fn layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let svc = IdempotencyLayer::new().layer(tower::service_fn(handler));
    let request = |method: &str| {
        Request::builder()
            .method(method)
            .uri("/charges")
            .header("idempotency-key", "\"order-1\"")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{\"amount\":100}")))
            .expect("valid request")
    };
    // The same request from a caller with credentials: its record is
    // scoped by a digest of them.
    let authorized = || {
        let mut req = request("POST");
        req.headers_mut().insert(
            "authorization",
            http::HeaderValue::from_static("Bearer 0123456789abcdef0123456789abcdef"),
        );
        req
    };
    rt.block_on(svc.clone().oneshot(request("POST")))
        .expect("first request");
    rt.block_on(svc.clone().oneshot(authorized()))
        .expect("first authorized request");
    let mut group = c.benchmark_group("idempotency_layer");
    group.bench_function("replay", |b| {
        b.iter(|| {
            rt.block_on(svc.clone().oneshot(request("POST")))
                .expect("replay")
        });
    });
    group.bench_function("replay_with_credentials", |b| {
        b.iter(|| {
            rt.block_on(svc.clone().oneshot(authorized()))
                .expect("replay")
        });
    });
    group.bench_function("get_passthrough", |b| {
        b.iter(|| {
            rt.block_on(svc.clone().oneshot(request("GET")))
                .expect("passthrough")
        });
    });
    group.bench_function("bare_handler_get", |b| {
        b.iter(|| {
            rt.block_on(
                tower::service_fn(handler)
                    .oneshot(request("GET").map(http_body_util::Either::Left)),
            )
        });
    });
    group.finish();
}

criterion_group!(benches, memory_store, layer);
criterion_main!(benches);
