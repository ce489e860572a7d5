//! Cost of the shared pieces every layer uses: classification and the HTTP
//! rejection adapter on the success path.
//!
//! Run with: `cargo bench -p seawall-benches --bench core`

#![allow(missing_docs)] // criterion's macros generate undocumented public items

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response, StatusCode};
use seawall::http::RejectionResponseLayer;
use seawall::{Classify, GrpcClassifier, HttpClassifier};
use seawall_benches::Leaf;
use tower::{Layer, Service, ServiceExt};

fn classify(c: &mut Criterion) {
    let http = HttpClassifier::new();
    let grpc = GrpcClassifier::new();
    let res = Response::builder()
        .status(StatusCode::SERVICE_UNAVAILABLE)
        .header("grpc-status", "14")
        .body(())
        .expect("valid response");
    let mut group = c.benchmark_group("classify");
    group.bench_function("http_status", |b| {
        b.iter(|| Classify::<_, ()>::classify(black_box(&http), Ok(black_box(&res))));
    });
    group.bench_function("grpc_status_header", |b| {
        b.iter(|| Classify::<_, ()>::classify(black_box(&grpc), Ok(black_box(&res))));
    });
    group.finish();
}

fn rejection_response(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("rejection_response_success_path");
    group.bench_function("bare_leaf", |b| {
        let mut svc = tower::service_fn(|req: Request<&'static str>| {
            Leaf.call(Response::new(req.into_body()))
        });
        b.iter(|| {
            rt.block_on(async {
                let svc = svc.ready().await.expect("ready");
                black_box(svc.call(Request::new("ping")).await.expect("ok"))
            })
        });
    });
    group.bench_function("with_rejection_response", |b| {
        let mut svc =
            RejectionResponseLayer::new().layer(tower::service_fn(|req: Request<&'static str>| {
                Leaf.call(Response::new(req.into_body()))
            }));
        b.iter(|| {
            rt.block_on(async {
                let svc = svc.ready().await.expect("ready");
                black_box(svc.call(Request::new("ping")).await.expect("ok"))
            })
        });
    });
    group.finish();
}

criterion_group!(benches, classify, rejection_response);
criterion_main!(benches);
