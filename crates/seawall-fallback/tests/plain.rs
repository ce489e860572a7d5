//! The plain mode: any `Clone` response, with or without request info.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use seawall_core::{BoxError, Outcome, Rejected};
use seawall_fallback::{CauseKind, Degraded, FallbackLayer, LastKnownGood, Plain, Tier};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_test::{assert_request_eq, mock};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Price {
    cents: u64,
    degraded: Option<Tier>,
}

fn price(cents: u64) -> Price {
    Price {
        cents,
        degraded: None,
    }
}

#[derive(Debug)]
struct Quote {
    sku: &'static str,
}

/// A pricing service: answers `sku` length × 100 unless told to fail.
fn pricing(
    failing: Arc<Mutex<bool>>,
) -> impl Service<Quote, Response = Price, Error = BoxError, Future = impl Send> + Clone {
    service_fn(move |q: Quote| {
        let fail = *failing.lock().unwrap();
        async move {
            if fail {
                Err::<Price, BoxError>("pricing down".into())
            } else {
                Ok(price(q.sku.len() as u64 * 100))
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn value_tier_without_request_info() {
    let failing = Arc::new(Mutex::new(true));
    let layer = FallbackLayer::builder().value(price(1)).build().unwrap();
    let svc = layer.layer(pricing(failing.clone()));
    assert_eq!(
        svc.clone().oneshot(Quote { sku: "abc" }).await.unwrap(),
        price(1)
    );
    *failing.lock().unwrap() = false;
    assert_eq!(svc.oneshot(Quote { sku: "abc" }).await.unwrap(), price(300));
}

#[tokio::test(start_paused = true)]
async fn last_known_good_per_captured_key_and_marked() {
    let failing = Arc::new(Mutex::new(false));
    let layer = FallbackLayer::capturing(|q: &Quote| q.sku)
        .last_known_good(
            LastKnownGood::new().max_staleness(Duration::from_secs(30)),
            |sku: &&'static str| Some(*sku),
        )
        .mark_degraded(|p: &mut Price, d: Degraded| p.degraded = Some(d.tier))
        .build()
        .unwrap();
    let svc = layer.layer(pricing(failing.clone()));
    assert_eq!(
        svc.clone().oneshot(Quote { sku: "ab" }).await.unwrap(),
        price(200)
    );

    *failing.lock().unwrap() = true;
    let stale = svc.clone().oneshot(Quote { sku: "ab" }).await.unwrap();
    assert_eq!(
        stale,
        Price {
            cents: 200,
            degraded: Some(Tier::LastKnownGood)
        }
    );
    let err = svc.clone().oneshot(Quote { sku: "xyz" }).await.unwrap_err();
    assert_eq!(err.to_string(), "pricing down");

    tokio::time::advance(Duration::from_secs(31)).await;
    assert!(svc.oneshot(Quote { sku: "ab" }).await.is_err(), "stale");
}

#[tokio::test(start_paused = true)]
async fn alternative_and_function_tiers() {
    let failing = Arc::new(Mutex::new(true));
    let backup_calls = Arc::new(AtomicUsize::new(0));
    let counter = backup_calls.clone();
    let backup = service_fn(move |sku: &'static str| {
        counter.fetch_add(1, Ordering::Relaxed);
        async move {
            if sku == "none" {
                Err::<Price, BoxError>("no backup price".into())
            } else {
                Ok(price(7))
            }
        }
    });
    let layer = FallbackLayer::capturing(|q: &Quote| q.sku)
        .alternative(backup)
        .function(|sku: &&'static str, cause| {
            assert_eq!(cause.kind(), CauseKind::Error);
            assert_eq!(cause.as_error().unwrap().to_string(), "pricing down");
            Some(price(sku.len() as u64))
        })
        .build()
        .unwrap();
    let svc = layer.layer(pricing(failing));
    assert_eq!(
        svc.clone().oneshot(Quote { sku: "abc" }).await.unwrap(),
        price(7)
    );
    assert_eq!(svc.oneshot(Quote { sku: "none" }).await.unwrap(), price(4));
    assert_eq!(backup_calls.load(Ordering::Relaxed), 2);
}

#[tokio::test(start_paused = true)]
async fn classifier_decides_failure_for_responses() {
    // A zero price is a failure, a price of one is not worth recording.
    let classify = |r: Result<&Price, &BoxError>| match r {
        Ok(p) if p.cents == 0 => Outcome::Failure,
        Ok(p) if p.cents == 1 => Outcome::Ignore,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    };
    let layer = FallbackLayer::builder()
        .classifier(classify)
        .value(price(99))
        .build()
        .unwrap();
    let answers = Arc::new(Mutex::new(vec![0, 1, 5]));
    let svc = layer.layer(service_fn(move |(): ()| {
        let cents = answers.lock().unwrap().remove(0);
        async move { Ok::<_, BoxError>(price(cents)) }
    }));
    assert_eq!(svc.clone().oneshot(()).await.unwrap(), price(99));
    assert_eq!(svc.clone().oneshot(()).await.unwrap(), price(1));
    assert_eq!(svc.oneshot(()).await.unwrap(), price(5));
}

#[tokio::test(start_paused = true)]
async fn readiness_is_the_inner_services_and_rejections_stay_in_call() {
    let layer = FallbackLayer::builder().value(price(1)).build().unwrap();
    let (mock, mut handle) = mock::pair::<(), Price>();
    let mut svc = layer.layer(mock);

    handle.allow(0);
    tokio_test_ready(&mut svc, false).await;
    handle.allow(1);
    tokio_test_ready(&mut svc, true).await;

    let fut = svc.call(());
    assert_request_eq!(handle, ()).send_error(Rejected::new(
        "bulkhead_full",
        http::StatusCode::SERVICE_UNAVAILABLE,
        None,
    ));
    assert_eq!(fut.await.unwrap(), price(1));

    // The service stays usable after a failure.
    handle.allow(1);
    tokio_test_ready(&mut svc, true).await;
    let fut = svc.call(());
    assert_request_eq!(handle, ()).send_response(price(3));
    assert_eq!(fut.await.unwrap(), price(3));
}

async fn tokio_test_ready<S: Service<()>>(svc: &mut S, expect_ready: bool)
where
    S::Error: std::fmt::Debug,
{
    let ready = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(svc.poll_ready(cx).map(|r| r.unwrap()).is_ready())
    })
    .await;
    assert_eq!(ready, expect_ready);
}

#[tokio::test(start_paused = true)]
async fn request_info_is_captured_only_when_a_tier_reads_it() {
    let captures = Arc::new(AtomicUsize::new(0));
    let count = captures.clone();
    let failing = Arc::new(Mutex::new(false));
    let value_only = FallbackLayer::capturing(move |q: &Quote| {
        count.fetch_add(1, Ordering::Relaxed);
        q.sku
    })
    .value(price(0))
    .build()
    .unwrap();
    let svc = value_only.layer(pricing(failing.clone()));
    svc.clone().oneshot(Quote { sku: "a" }).await.unwrap();
    *failing.lock().unwrap() = true;
    assert_eq!(svc.oneshot(Quote { sku: "a" }).await.unwrap(), price(0));
    assert_eq!(captures.load(Ordering::Relaxed), 0);

    let count = captures.clone();
    let with_function = FallbackLayer::capturing(move |q: &Quote| {
        count.fetch_add(1, Ordering::Relaxed);
        q.sku
    })
    .function(|sku: &&'static str, _| Some(price(sku.len() as u64)))
    .build()
    .unwrap();
    let svc = with_function.layer(pricing(failing));
    assert_eq!(svc.oneshot(Quote { sku: "abcd" }).await.unwrap(), price(4));
    assert_eq!(captures.load(Ordering::Relaxed), 1);
}

#[test]
fn config_errors_name_the_field() {
    let err = FallbackLayer::<Plain<Price>>::builder()
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "tiers");
    let err = FallbackLayer::builder()
        .last_known_good(
            LastKnownGood::new().max_staleness(Duration::ZERO),
            |(): &()| Some(()),
        )
        .value(price(0))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_staleness");
    assert_eq!(
        err.to_string(),
        "invalid fallback config: `max_staleness` must be greater than zero"
    );
}

#[tokio::test(start_paused = true)]
async fn a_leaked_layer_falls_back_and_shares_its_cache_with_earlier_clones() {
    let failing = Arc::new(Mutex::new(false));
    let layer = FallbackLayer::capturing(|q: &Quote| q.sku)
        .last_known_good(LastKnownGood::new(), |sku: &&'static str| Some(*sku))
        .value(price(1))
        .build()
        .unwrap();
    let earlier = layer.layer(pricing(failing.clone()));
    let leaked = layer.leak().layer(pricing(failing.clone()));

    // Recorded through the service of the leaked layer...
    assert_eq!(
        leaked.clone().oneshot(Quote { sku: "ab" }).await.unwrap(),
        price(200)
    );
    *failing.lock().unwrap() = true;
    // ...recalled through a service built before the leak: one cache.
    assert_eq!(
        earlier.oneshot(Quote { sku: "ab" }).await.unwrap().cents,
        200
    );
    assert_eq!(
        leaked.oneshot(Quote { sku: "xyz" }).await.unwrap(),
        price(1),
        "the value tier still answers"
    );
}
