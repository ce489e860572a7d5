//! Success-path cost of the retry layer (no failure, so no retry), against
//! `tower_resilience::retry` 0.13 and `tower::retry` in the same run.
//!
//! Run with:
//! `cargo bench -p seawall-benches --bench retry -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)] // criterion's macros generate undocumented public items

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use http::{Request, Response};
use seawall::retry::{Backoff, JitterRetryLayer, ReplayBody};
use seawall_benches::{call_now, Leaf};
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Layer, Service, ServiceExt};

type Req = [u64; 4];

/// Polls readiness and the call once each, without a runtime: every service
/// here answers at once, so what is measured is the layer, not a scheduler.
fn run<S>(c: &mut Criterion, name: &str, mut svc: S)
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
{
    c.bench_function(name, |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box([1, 2, 3, 4]))));
    });
}

/// The harness this bench used before `call_now`, kept as a control:
/// readiness and the response through `FutureExt::now_or_never`, which the
/// compiler inlines for some future types and not for others.
fn run_now_or_never<S>(c: &mut Criterion, name: &str, mut svc: S)
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
{
    c.bench_function(name, |b| {
        b.iter(|| {
            let svc = svc.ready().now_or_never().expect("ready").expect("ok");
            let fut = svc.call(black_box([1, 2, 3, 4]));
            black_box(fut.now_or_never().expect("answers at once").expect("ok"))
        });
    });
}

/// The plainest `tower::retry` policy: three attempts, retry on error.
#[derive(Clone, Copy)]
struct Attempts(usize);

impl<E> tower::retry::Policy<Req, Req, E> for Attempts {
    type Future = Ready<()>;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Req, E>) -> Option<Self::Future> {
        match result {
            Err(_) if self.0 > 1 => {
                self.0 -= 1;
                Some(ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(*req)
    }
}

/// `tower::retry` as it is used in production: a policy sharing a
/// `TpsBudget`, deposited into on every request.
#[derive(Clone)]
struct Budgeted {
    attempts: usize,
    budget: Arc<TpsBudget>,
}

impl<E> tower::retry::Policy<Req, Req, E> for Budgeted {
    type Future = Ready<()>;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Req, E>) -> Option<Self::Future> {
        match result {
            Ok(_) => {
                self.budget.deposit();
                None
            }
            Err(_) if self.attempts > 1 && self.budget.withdraw() => {
                self.attempts -= 1;
                Some(ready(()))
            }
            Err(_) => None,
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(*req)
    }
}

fn success_path(c: &mut Criterion) {
    // The retry layers read tokio's clock only on failure, but tower-resilience
    // may touch the runtime: enter one so every candidate runs the same way.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = rt.enter();

    run(c, "retry_success/bare_leaf", Leaf);

    let seawall = JitterRetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::exponential(Duration::from_millis(100)))
        .build()
        .expect("valid config");
    run(c, "retry_success/seawall_jitter_retry", seawall.layer(Leaf));

    let seawall_leaked = JitterRetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::exponential(Duration::from_millis(100)))
        .build()
        .expect("valid config")
        .leak();
    run(
        c,
        "retry_success/seawall_jitter_retry_leaked",
        seawall_leaked.layer(Leaf),
    );

    let seawall_no_budget = JitterRetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::exponential(Duration::from_millis(100)))
        .no_budget()
        .build()
        .expect("valid config");
    run(
        c,
        "retry_success/seawall_jitter_retry_no_budget",
        seawall_no_budget.layer(Leaf),
    );

    let resilience = tower_resilience::retry::RetryLayer::<Req, Req, Infallible>::builder()
        .max_attempts(3)
        .exponential_backoff(Duration::from_millis(100))
        .build();
    run(
        c,
        "retry_success/tower_resilience_retry",
        resilience.layer(Leaf),
    );

    run_now_or_never(c, "retry_success_now_or_never/bare_leaf", Leaf);
    run_now_or_never(
        c,
        "retry_success_now_or_never/seawall_jitter_retry",
        seawall.layer(Leaf),
    );
    run_now_or_never(
        c,
        "retry_success_now_or_never/tower_resilience_retry",
        resilience.layer(Leaf),
    );

    let tower_retry = tower::retry::RetryLayer::new(Attempts(3));
    run(c, "retry_success/tower_retry", tower_retry.layer(Leaf));

    let tower_budgeted = tower::retry::RetryLayer::new(Budgeted {
        attempts: 3,
        budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.1)),
    });
    run(
        c,
        "retry_success/tower_retry_tps_budget",
        tower_budgeted.layer(Leaf),
    );
}

/// A GET with the headers a client typically sends, answered with a 200.
fn get_request() -> Request<String> {
    Request::get("http://inventory.internal/items/42")
        .header("host", "inventory.internal")
        .header("accept", "application/json")
        .header("user-agent", "seawall-bench/0.1")
        .body(String::new())
        .expect("valid request")
}

fn run_http<S, B>(c: &mut Criterion, name: &str, mut svc: S)
where
    S: Service<Request<String>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    c.bench_function(name, |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(get_request()))));
    });
}

/// HTTP mode: the request head is kept for replay, as any HTTP retry must.
fn http_success_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = rt.enter();

    let bare = tower::service_fn(|req: Request<String>| Leaf.call(Response::new(req.into_body())));
    run_http(c, "retry_http_success/bare_leaf", bare);

    let seawall = JitterRetryLayer::builder()
        .http()
        .max_attempts(3)
        .build()
        .expect("valid config");
    let leaf = tower::service_fn(|req: Request<ReplayBody<String>>| {
        Leaf.call(Response::new(req.into_body()))
    });
    run_http(
        c,
        "retry_http_success/seawall_jitter_retry",
        seawall.layer(leaf),
    );

    let resilience = tower_resilience::retry::RetryLayer::<
        Request<String>,
        Response<String>,
        Infallible,
    >::builder()
    .max_attempts(3)
    .exponential_backoff(Duration::from_millis(100))
    .build();
    run_http(
        c,
        "retry_http_success/tower_resilience_retry",
        resilience.layer(bare),
    );
}

criterion_group!(benches, success_path, http_success_path);
criterion_main!(benches);
