//! The total deadline, in virtual time: every attempt runs for at most the
//! time left, and the request ends by the deadline, whatever phase it is in
//! (an attempt, reading the body, waiting for readiness).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Full, StreamBody};
use seawall_core::event::FnListener;
use seawall_core::BoxError;
use seawall_retry::{
    AttemptTimeout, Backoff, DeadlineExceeded, GiveUpReason, Jitter, JitterRetryLayer, RetryEvent,
};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};

/// A service whose calls never answer, counting calls.
fn stuck() -> (
    Arc<AtomicU32>,
    impl Service<u32, Response = u32, Error = BoxError> + Clone,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let svc = service_fn(move |_: u32| {
        seen.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<Result<u32, BoxError>>()
    });
    (calls, svc)
}

type Events = Arc<Mutex<Vec<RetryEvent>>>;

fn recorder() -> (
    Events,
    FnListener<impl Fn(&RetryEvent) + Send + Sync + 'static>,
) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let listener = FnListener::new(move |e: &RetryEvent| log.lock().unwrap().push(e.clone()));
    (events, listener)
}

fn gave_up_at_deadline(events: &Events, attempts: u32) -> bool {
    matches!(
        events.lock().unwrap().last(),
        Some(RetryEvent::RetriesExhausted {
            attempts: a,
            reason: GiveUpReason::Deadline,
            ..
        }) if *a == attempts
    )
}

#[tokio::test(start_paused = true)]
async fn a_deadline_shorter_than_the_attempt_timeout_ends_the_request() {
    let (events, listener) = recorder();
    let layer = JitterRetryLayer::builder()
        .max_attempts(3)
        .deadline(Duration::from_secs(2))
        .attempt_timeout(Duration::from_secs(5))
        .listener(listener)
        .build()
        .unwrap();
    let (calls, svc) = stuck();
    let start = Instant::now();
    let err = layer.layer(svc).oneshot(1).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert!(err.is::<DeadlineExceeded>(), "{err}");
    assert_eq!(err.to_string(), "retry deadline exceeded");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no retry after the deadline"
    );
    assert!(gave_up_at_deadline(&events, 1));
}

#[tokio::test(start_paused = true)]
async fn a_deadline_without_attempt_timeout_ends_a_stuck_attempt() {
    let layer = JitterRetryLayer::builder()
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    let (calls, svc) = stuck();
    let start = Instant::now();
    let err = layer.layer(svc).oneshot(1).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert!(err.is::<DeadlineExceeded>(), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn the_attempt_that_runs_into_the_deadline_gets_only_the_time_left() {
    let layer = JitterRetryLayer::builder()
        .max_attempts(10)
        .backoff(Backoff::constant(Duration::from_millis(100)))
        .jitter(Jitter::None)
        .deadline(Duration::from_secs(2))
        .attempt_timeout(Duration::from_millis(500))
        .no_budget()
        .build()
        .unwrap();
    let (calls, svc) = stuck();
    let start = Instant::now();
    let err = layer.layer(svc).oneshot(1).await.unwrap_err();
    // Attempts at 0, 0.6, 1.2 s time out after 500 ms each; the fourth,
    // from 1.8 s, is cut at 2 s rather than at 2.3 s.
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert!(err.is::<DeadlineExceeded>(), "{err}");
    assert!(!err.is::<AttemptTimeout>());
}

#[tokio::test(start_paused = true)]
async fn attempts_that_time_out_before_the_deadline_are_attempt_timeouts() {
    let layer = JitterRetryLayer::builder()
        .max_attempts(2)
        .backoff(Backoff::constant(Duration::from_millis(100)))
        .jitter(Jitter::None)
        .deadline(Duration::from_secs(10))
        .attempt_timeout(Duration::from_secs(1))
        .no_budget()
        .build()
        .unwrap();
    let (calls, svc) = stuck();
    let start = Instant::now();
    let err = layer.layer(svc).oneshot(1).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(start.elapsed(), Duration::from_millis(2_100));
    assert!(err.is::<AttemptTimeout>(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn an_answer_before_the_deadline_is_returned() {
    let layer = JitterRetryLayer::builder()
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    let svc = service_fn(|n: u32| async move {
        tokio::time::sleep(Duration::from_millis(1_999)).await;
        Ok::<_, BoxError>(n + 1)
    });
    let start = Instant::now();
    assert_eq!(layer.layer(svc).oneshot(1).await.unwrap(), 2);
    assert_eq!(start.elapsed(), Duration::from_millis(1_999));
}

/// Answers its first call with an error, then is never ready again.
#[derive(Clone)]
struct FailsThenStalls {
    calls: Arc<AtomicU32>,
}

impl Service<u32> for FailsThenStalls {
    type Response = u32;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<u32, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.calls.load(Ordering::SeqCst) == 0 {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, _: u32) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Err::<u32, BoxError>("connection reset".into()) })
    }
}

#[tokio::test(start_paused = true)]
async fn waiting_for_readiness_before_a_retry_ends_at_the_deadline() {
    let (events, listener) = recorder();
    let layer = JitterRetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::from_millis(100)))
        .jitter(Jitter::None)
        .deadline(Duration::from_secs(2))
        .listener(listener)
        .no_budget()
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let svc = FailsThenStalls {
        calls: calls.clone(),
    };
    let start = Instant::now();
    let err = layer.layer(svc).oneshot(1).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert!(err.is::<DeadlineExceeded>(), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(gave_up_at_deadline(&events, 1));
}

#[tokio::test(start_paused = true)]
async fn a_request_body_that_never_ends_is_cut_at_the_deadline() {
    let layer = JitterRetryLayer::builder()
        .http()
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let svc = service_fn(move |_req: Request<_>| {
        seen.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
    });
    // A PUT (retryable, so its body is read first) whose body stalls.
    let body = StreamBody::new(futures_util::stream::pending::<
        Result<http_body::Frame<Bytes>, Infallible>,
    >());
    let req = Request::put("/").body(body).unwrap();
    let start = Instant::now();
    let err = layer.layer(svc).oneshot(req).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert!(err.is::<DeadlineExceeded>(), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "never sent");
}

#[tokio::test(start_paused = true)]
async fn an_http_response_that_never_comes_is_cut_at_the_deadline() {
    let layer = JitterRetryLayer::builder()
        .http()
        .deadline(Duration::from_secs(2))
        .attempt_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let svc = service_fn(|_req: Request<_>| {
        std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>()
    });
    let req = Request::get("/").body(Full::new(Bytes::new())).unwrap();
    let start = Instant::now();
    let err = layer.layer(svc).oneshot(req).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert!(err.is::<DeadlineExceeded>());
    // Recognisable as a timeout without knowing the type: its source is
    // tower's `Elapsed`, which adapters map to 504.
    let source = std::error::Error::source(&*err).expect("a source");
    assert!(source.is::<tower::timeout::error::Elapsed>());
}
