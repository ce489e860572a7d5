//! A protocol of one's own, and many threads through one layer.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use http::{HeaderMap, StatusCode};
use seawall_chaos::protocol::{Answer, Protocol, ProtocolFor};
use seawall_chaos::{ChaosLayer, Fault, FaultKind, InjectedFault};
use seawall_core::{BoxError, GrpcCode};
use tower::{service_fn, Layer, Service};

/// A simulated upstream's reply.
#[derive(Debug, PartialEq)]
enum Reply {
    Ok(u32),
    Status(u16),
}

/// Answers HTTP faults with `Reply::Status`; cannot express gRPC ones.
#[derive(Debug, Clone, Copy)]
struct Sim;

impl Protocol for Sim {
    fn answers(&self) -> bool {
        true
    }
    fn reads_headers(&self) -> bool {
        false
    }
}

impl ProtocolFor<u32, Reply> for Sim {
    fn answer(&self, answer: &Answer) -> Option<Reply> {
        (answer.kind() == FaultKind::Http).then(|| Reply::Status(answer.status().as_u16()))
    }
    fn headers<'r>(&self, _req: &'r u32) -> Option<&'r HeaderMap> {
        None
    }
}

/// Polls a future that must be ready at once.
fn now<F: Future>(fut: F) -> F::Output {
    match pin!(fut).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("not ready at once"),
    }
}

fn call<S: Service<u32>>(svc: &mut S, req: u32) -> Result<S::Response, S::Error> {
    assert!(now(std::future::poll_fn(|cx| svc.poll_ready(cx))).is_ok());
    now(svc.call(req))
}

#[test]
fn a_custom_protocol_answers_what_it_can() {
    let leaf = service_fn(|n: u32| std::future::ready(Ok::<_, Infallible>(Reply::Ok(n))));
    let layer = ChaosLayer::builder()
        .protocol(Sim)
        .fault(Fault::http(StatusCode::SERVICE_UNAVAILABLE))
        .build()
        .unwrap();
    let mut svc = layer.layer(leaf);
    assert_eq!(call(&mut svc, 1).unwrap(), Reply::Status(503));

    // A gRPC answer this protocol cannot build fails the call instead.
    let layer = ChaosLayer::builder()
        .protocol(Sim)
        .fault(Fault::grpc(GrpcCode::Unavailable, "down"))
        .build()
        .unwrap();
    let mut svc = layer.layer(leaf);
    let err: BoxError = call(&mut svc, 1).unwrap_err();
    let fault = err.downcast_ref::<InjectedFault>().unwrap();
    assert_eq!(fault.kind(), FaultKind::Grpc);
    assert_eq!(fault.fault(), "grpc_14");
}

#[test]
fn threads_sharing_a_layer_count_every_injection() {
    let threads = 4;
    let per_thread = if std::env::var_os("SEAWALL_STRESS").is_some() {
        200_000
    } else {
        5_000
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let leaf = service_fn(move |n: u32| {
        c.fetch_add(1, Ordering::Relaxed);
        std::future::ready(Ok::<_, Infallible>(n))
    });
    let layer = ChaosLayer::builder()
        .seed(4)
        .fault(Fault::error().rate(0.3).named("flaky"))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(leaf);
    let failed: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let mut svc = svc.clone();
                let handle = handle.clone();
                scope.spawn(move || {
                    let mut failed = 0;
                    for i in 0..per_thread {
                        // One thread flips the rate while the others call.
                        if t == 0 && i % 100 == 0 {
                            let rate = if i % 200 == 0 { 0.3 } else { 0.6 };
                            handle.set_rate("flaky", rate).unwrap();
                        }
                        if call(&mut svc, 1).is_err() {
                            failed += 1;
                        }
                    }
                    failed
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let total = threads * per_thread;
    assert_eq!(handle.injected("flaky"), Some(failed as u64));
    assert_eq!(calls.load(Ordering::Relaxed) + failed, total);
    let share = failed as f64 / total as f64;
    assert!((0.25..=0.65).contains(&share), "{share}");
}
