//! `FallbackLayer` outside a real `CircuitBreakerLayer`: failing responses
//! trip the breaker, and while it is open its `CircuitOpen` rejections are
//! answered from the last-known-good tier without touching the dependency.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use seawall::core::event::FnListener;
use seawall::fallback::{
    CauseKind, Degraded, FallbackEvent, FallbackLayer, LastKnownGood, Rejections, RequestInfo, Tier,
};
use seawall::{BoxError, HttpClassifier};
use seawall_circuit_breaker::{CircuitBreakerLayer, CircuitOpen, State};
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};

/// A dependency that answers 503 while `down` is set, counting its calls.
#[derive(Clone, Default)]
struct Dependency {
    down: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

impl Dependency {
    fn service(
        &self,
    ) -> impl Service<
        Request<()>,
        Response = Response<Full<Bytes>>,
        Error = BoxError,
        Future = impl Send,
    > + Clone
           + Send
           + Sync
           + 'static {
        let dep = self.clone();
        service_fn(move |req: Request<()>| {
            dep.calls.fetch_add(1, Ordering::SeqCst);
            let status = if dep.down.load(Ordering::SeqCst) {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            let body = format!("stock for {}", req.uri().path());
            async move { Ok::<_, BoxError>(Response::builder().status(status).body(Full::from(body))?) }
        })
    }
}

fn get(path: &str) -> Request<()> {
    Request::get(path).body(()).expect("valid request")
}

fn degraded<B>(res: &Response<B>) -> Option<Tier> {
    res.extensions().get::<Degraded>().map(|d| d.tier)
}

fn breaker() -> CircuitBreakerLayer<HttpClassifier> {
    CircuitBreakerLayer::builder()
        .name("inventory")
        .classifier(HttpClassifier::new())
        .consecutive_failures(3)
        .open_duration(Duration::from_secs(10))
        .build()
        .expect("valid breaker")
}

#[tokio::test(start_paused = true)]
async fn open_breaker_rejections_are_served_from_last_known_good() -> Result<(), BoxError> {
    let dep = Dependency::default();
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let fallback = FallbackLayer::http()
        .name("inventory")
        .listener(FnListener::new(move |e: &FallbackEvent| {
            if let FallbackEvent::Served { cause, .. } = e {
                log.lock().expect("lock").push(*cause);
            }
        }))
        .last_known_good(LastKnownGood::new(), |info: &RequestInfo| {
            Some(info.uri().path().to_owned())
        })
        .value(Response::new(Bytes::from_static(b"stock unknown")))
        .build()?;
    let breaker = breaker();
    let handle = breaker.handle();
    let svc = ServiceBuilder::new()
        .layer(fallback)
        .layer(breaker)
        .service(dep.service());

    let fresh = svc.clone().oneshot(get("/sku/1")).await?;
    assert_eq!(degraded(&fresh), None);
    assert_eq!(
        fresh.into_body().collect().await?.to_bytes(),
        "stock for /sku/1"
    );

    // Three 503s: each is replaced, and each counts against the breaker.
    dep.down.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let res = svc.clone().oneshot(get("/sku/1")).await?;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(degraded(&res), Some(Tier::LastKnownGood));
    }
    assert_eq!(handle.state(), State::Open);
    assert_eq!(dep.calls.load(Ordering::SeqCst), 4);

    // Open: refused without calling the dependency, still answered.
    let res = svc.clone().oneshot(get("/sku/1")).await?;
    assert_eq!(res.headers()["seawall-degraded"], "last-known-good");
    assert_eq!(
        res.into_body().collect().await?.to_bytes(),
        "stock for /sku/1"
    );
    let res = svc.clone().oneshot(get("/sku/2")).await?;
    assert_eq!(degraded(&res), Some(Tier::Value));
    assert_eq!(
        dep.calls.load(Ordering::SeqCst),
        4,
        "the open breaker shields the dependency"
    );
    {
        let causes = events.lock().expect("lock");
        assert_eq!(
            causes.as_slice(),
            &[
                CauseKind::Response(Some(StatusCode::SERVICE_UNAVAILABLE)),
                CauseKind::Response(Some(StatusCode::SERVICE_UNAVAILABLE)),
                CauseKind::Response(Some(StatusCode::SERVICE_UNAVAILABLE)),
                CauseKind::Rejection(CircuitOpen::KIND),
                CauseKind::Rejection(CircuitOpen::KIND),
            ]
        );
    }

    // Recovered: the probe goes through and the answer is fresh again.
    dep.down.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(10)).await;
    let res = svc.oneshot(get("/sku/1")).await?;
    assert_eq!(degraded(&res), None);
    assert_eq!(handle.state(), State::Closed);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn rejections_can_be_left_to_the_caller() -> Result<(), BoxError> {
    let dep = Dependency::default();
    dep.down.store(true, Ordering::SeqCst);
    let fallback = FallbackLayer::http()
        .on_rejections(Rejections::none())
        .value(Response::new(Bytes::from_static(b"stock unknown")))
        .build()?;
    let svc = fallback.layer(breaker().layer(dep.service()));
    for _ in 0..3 {
        let res = svc.clone().oneshot(get("/sku/1")).await?;
        assert_eq!(
            degraded(&res),
            Some(Tier::Value),
            "failing responses still replaced"
        );
    }
    let err = svc
        .oneshot(get("/sku/1"))
        .await
        .expect_err("open breaker passes through");
    let open = err
        .downcast_ref::<CircuitOpen>()
        .expect("the breaker's own error");
    assert_eq!(
        seawall::Rejection::status(open),
        StatusCode::SERVICE_UNAVAILABLE
    );
    Ok(())
}
