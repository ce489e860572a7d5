//! Rejections that report a failure below a layer (not a refusal of that
//! layer) count against the breaker above it.

use std::time::Duration;

use seawall::idempotency::{HandlerPanicked, IdempotencyLayer};
use seawall_circuit_breaker::{CircuitBreakerLayer, CircuitOpen, State};
use tower::{service_fn, Layer, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A handler that panics on every call, under the idempotency layer, under
/// a breaker: the idempotency layer answers `HandlerPanicked` (a seawall
/// rejection, 500), which is a failure of the handler, not a refusal of the
/// idempotency layer. The breaker used to ignore it as an inner refusal and
/// stayed closed with 0 failures after 10 panics.
#[tokio::test]
#[allow(clippy::manual_assert)]
async fn handler_panics_under_idempotency_trip_the_breaker() {
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(3)
        .open_duration(Duration::from_secs(30))
        .build()
        .unwrap();
    let handle = breaker.handle();
    let svc = breaker.layer(IdempotencyLayer::new().layer(service_fn(
        |_req: http::Request<_>| async move {
            if true {
                panic!("handler bug");
            }
            #[allow(unreachable_code)]
            Ok::<_, BoxError>(http::Response::new(String::new()))
        },
    )));
    let (mut panicked, mut open) = (0, 0);
    for i in 0..10 {
        let req = http::Request::post("/charges")
            .header("idempotency-key", format!("\"k{i}\""))
            .header("content-type", "application/json")
            .body(String::from("{}"))
            .unwrap();
        let err = svc.clone().oneshot(req).await.unwrap_err();
        if err.is::<HandlerPanicked>() {
            panicked += 1;
        } else {
            assert!(err.is::<CircuitOpen>(), "{err}");
            open += 1;
        }
    }
    assert_eq!(handle.state(), State::Open, "{:?}", handle.metrics());
    assert_eq!((panicked, open), (3, 7));
}
