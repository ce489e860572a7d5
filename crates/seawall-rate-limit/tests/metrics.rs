//! The limiter's events counted by seawall-core's `MetricsListener`.
#![cfg(feature = "metrics")]

use std::convert::Infallible;
use std::task::{Context, Poll, Waker};

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use seawall_core::event::{MetricsListener, EVENTS_TOTAL};
use seawall_rate_limit::{Limit, Quota, RateLimitLayer};
use tower::{service_fn, Layer, Service};

#[test]
fn allowed_and_limited_are_counted_by_layer_and_event() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let _guard = rt.enter();
    let layer = RateLimitLayer::builder()
        .name("edge")
        .limit(Limit::global("all", Quota::per_second(1)))
        .listener(MetricsListener::new())
        .build()
        .unwrap();
    let mut svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, Infallible>(n) }));
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let mut cx = Context::from_waker(Waker::noop());
        for n in 0..3 {
            assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
            // The decision, and its event, happen in `call`.
            drop(svc.call(n));
        }
    });
    let mut counts: Vec<(String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| k.key().name() == EVENTS_TOTAL)
        .map(|(k, _, _, v)| {
            let labels: Vec<_> = k
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            assert!(
                labels.contains(&("name".to_owned(), "edge".to_owned())),
                "{labels:?}"
            );
            assert!(
                labels.contains(&("pattern".to_owned(), "rate_limit".to_owned())),
                "{labels:?}"
            );
            let event = labels.iter().find(|(k, _)| k == "event").unwrap().1.clone();
            let DebugValue::Counter(n) = v else {
                panic!("not a counter")
            };
            (event, n)
        })
        .collect();
    counts.sort();
    assert_eq!(
        counts,
        [("allowed".to_owned(), 1), ("limited".to_owned(), 2)]
    );
}
