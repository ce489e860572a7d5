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

/// The last-known-good tier over HTTP: a request with the headers a browser
/// sends, a 200 with a 1 KiB body read to the end. What the tier costs per
/// success: capturing the request (its header map included), judging the
/// answer, copying it aside and a `moka` insert; or, for a request with
/// credentials, the capture alone.
fn http_last_known_good(c: &mut Criterion) {
    fn request(credentials: bool) -> Request<String> {
        let mut req = Request::get("/recs/42");
        for (name, value) in [
            ("host", "shop.example"),
            (
                "user-agent",
                "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0",
            ),
            ("accept", "application/json"),
            ("accept-encoding", "gzip, br"),
            ("accept-language", "fr-FR,fr;q=0.9"),
            ("x-request-id", "5f0c6f3e-5b1e-4c8e-9a59-0d3f0c7e4a21"),
        ] {
            req = req.header(name, value);
        }
        if credentials {
            req = req.header("authorization", "Bearer 0123456789abcdef");
        }
        req.body(String::new()).expect("valid request")
    }
    fn drain<B>(mut body: B) -> usize
    where
        B: http_body_util::BodyExt + Unpin,
    {
        use std::future::Future;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut n = 0;
        while let std::task::Poll::Ready(Some(Ok(_))) = std::pin::pin!(body.frame()).poll(&mut cx) {
            n += 1;
        }
        n
    }
    let body = Bytes::from(vec![b'x'; 1024]);
    let leaf = move |vary: Option<&'static str>| {
        let body = body.clone();
        tower::service_fn(move |_req: Request<String>| {
            let mut res = Response::new(Full::new(body.clone()));
            res.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/json"),
            );
            if let Some(vary) = vary {
                res.headers_mut()
                    .insert("vary", http::HeaderValue::from_static(vary));
            }
            std::future::ready(Ok::<_, std::convert::Infallible>(res))
        })
    };
    let layer = || {
        FallbackLayer::http()
            .last_known_good(
                LastKnownGood::new(),
                |info: &seawall::fallback::RequestInfo| Some(info.uri().path().to_owned()),
            )
            .build()
            .expect("valid")
    };
    let mut group = c.benchmark_group("fallback_http_last_known_good");
    group.bench_function("bare_leaf_read_to_end", |b| {
        let mut svc = leaf(None);
        b.iter(|| black_box(drain(call_now(&mut svc, request(false)).into_body())));
    });
    group.bench_function("recorded", |b| {
        let mut svc = layer().layer(leaf(None));
        b.iter(|| black_box(drain(call_now(&mut svc, request(false)).into_body())));
    });
    group.bench_function("recorded_with_vary", |b| {
        let mut svc = layer().layer(leaf(Some("Accept-Encoding, Accept-Language")));
        b.iter(|| black_box(drain(call_now(&mut svc, request(false)).into_body())));
    });
    group.bench_function("not_stored_request_with_credentials", |b| {
        let mut svc = layer().layer(leaf(None));
        b.iter(|| black_box(drain(call_now(&mut svc, request(true)).into_body())));
    });
    group.finish();
}

criterion_group!(benches, success_path, http_last_known_good);
criterion_main!(benches);
