//! Each fault kind, rates, schedules, the handle and header faults, in
//! paused virtual time.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use seawall_chaos::{
    ChaosEvent, ChaosLayer, Fault, FaultKind, HeaderFaults, InjectedFault, Latency, Schedule,
    ABORT_HEADER, DELAY_HEADER, GRPC_STATUS_HEADER,
};
use seawall_core::event::FnListener;
use seawall_core::{rejection, BoxError, GrpcCode};
use tokio::time::{advance, Instant};
use tower::{service_fn, Layer, Service, ServiceExt};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A leaf that counts calls and answers its request at once.
#[derive(Clone, Default)]
struct Counting {
    calls: Arc<AtomicUsize>,
}

impl Counting {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl<R: Send + 'static> Service<R> for Counting {
    type Response = R;
    type Error = Infallible;
    type Future = std::future::Ready<Result<R, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(req))
    }
}

fn http_leaf() -> impl Service<
    Request<String>,
    Response = Response<String>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<String>, Infallible>>,
> + Clone {
    service_fn(|_req: Request<String>| async { Ok(Response::new(String::from("upstream"))) })
}

async fn call<S, R>(svc: &mut S, req: R) -> Result<S::Response, S::Error>
where
    S: Service<R>,
{
    svc.ready().await?.call(req).await
}

#[tokio::test(start_paused = true)]
async fn fixed_latency_delays_the_inner_future_but_calls_at_once() {
    // Records when its future is first polled.
    let first_poll: Arc<Mutex<Option<Instant>>> = Arc::default();
    let called_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let (p, c) = (first_poll.clone(), called_at.clone());
    let leaf = service_fn(move |req: u32| {
        *c.lock().unwrap() = Some(Instant::now());
        let p = p.clone();
        async move {
            *p.lock().unwrap() = Some(Instant::now());
            Ok::<_, Infallible>(req)
        }
    });
    let layer = ChaosLayer::builder()
        .fault(Fault::latency(Latency::fixed(ms(250))))
        .build()
        .unwrap();
    let mut svc = layer.layer(leaf);
    let start = Instant::now();
    assert_eq!(call(&mut svc, 7).await.unwrap(), 7);
    assert_eq!(start.elapsed(), ms(250));
    assert_eq!(called_at.lock().unwrap().unwrap(), start);
    assert_eq!(first_poll.lock().unwrap().unwrap(), start + ms(250));
    assert_eq!(layer.handle().injected("latency"), Some(1));
}

#[tokio::test(start_paused = true)]
async fn uniform_and_long_tail_latencies_stay_in_their_bounds() {
    let layer = ChaosLayer::builder()
        .seed(3)
        .fault(Fault::latency(Latency::uniform(ms(10), ms(20))).named("uniform"))
        .fault(Fault::latency(Latency::pareto(ms(5), 1.2).with_max(ms(100))).named("tail"))
        .build()
        .unwrap();
    let mut svc = layer.layer(Counting::default());
    let mut longest = Duration::ZERO;
    for _ in 0..200 {
        let start = Instant::now();
        call(&mut svc, ()).await.unwrap();
        let took = start.elapsed();
        assert!(took >= ms(15) && took <= ms(120), "{took:?}");
        longest = longest.max(took);
    }
    assert!(longest > ms(60), "the tail shows: {longest:?}");
}

#[tokio::test(start_paused = true)]
async fn error_fault_fails_without_calling_and_is_not_a_rejection() {
    let leaf = Counting::default();
    let layer = ChaosLayer::builder()
        .fault(Fault::error().named("boom"))
        .build()
        .unwrap();
    let mut svc = layer.layer(leaf.clone());
    let err = call(&mut svc, 1u8).await.unwrap_err();
    assert!(err.is::<InjectedFault>());
    assert_eq!(err.to_string(), "injected fault");
    assert!(rejection::find(&*err).is_none());
    let fault = err.downcast_ref::<InjectedFault>().unwrap();
    assert_eq!(fault.fault(), "boom");
    assert_eq!(fault.kind(), FaultKind::Error);
    assert_eq!(leaf.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn latency_then_error_fails_after_the_delay() {
    let layer = ChaosLayer::builder()
        .fault(Fault::latency(Latency::fixed(ms(40))))
        .fault(Fault::error())
        .build()
        .unwrap();
    let mut svc = layer.layer(Counting::default());
    let start = Instant::now();
    let err = call(&mut svc, ()).await.unwrap_err();
    assert!(err.is::<InjectedFault>());
    assert_eq!(start.elapsed(), ms(40));
}

#[tokio::test(start_paused = true)]
async fn error_with_and_connection_reset() {
    #[derive(Debug)]
    struct Custom;
    impl std::fmt::Display for Custom {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("custom")
        }
    }
    impl std::error::Error for Custom {}

    let layer = ChaosLayer::builder()
        .fault(Fault::error_with(|| -> BoxError { Box::new(Custom) }))
        .build()
        .unwrap();
    let err = call(&mut layer.layer(Counting::default()), ())
        .await
        .unwrap_err();
    assert!(err.is::<Custom>());

    let layer = ChaosLayer::builder()
        .fault(Fault::connection_reset())
        .build()
        .unwrap();
    let err = call(&mut layer.layer(Counting::default()), ())
        .await
        .unwrap_err();
    let fault = err.downcast_ref::<InjectedFault>().unwrap();
    assert_eq!(fault.kind(), FaultKind::ConnectionReset);
    let io = std::error::Error::source(fault)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .unwrap();
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test(start_paused = true)]
async fn http_answers_with_status_and_retry_after() {
    let layer = ChaosLayer::builder()
        .http()
        .fault(Fault::http(StatusCode::SERVICE_UNAVAILABLE).retry_after(secs(3)))
        .build()
        .unwrap();
    let mut svc = layer.layer(http_leaf());
    let res = call(&mut svc, Request::new(String::new())).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "3");
    assert_eq!(res.body(), "");
    assert_eq!(layer.handle().injected("http_503"), Some(1));

    let layer = ChaosLayer::builder()
        .http_body(|| String::from("slow down"))
        .fault(Fault::http(StatusCode::TOO_MANY_REQUESTS))
        .build()
        .unwrap();
    let res = call(&mut layer.layer(http_leaf()), Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.body(), "slow down");
    assert!(res.headers().get("retry-after").is_none());
}

#[tokio::test(start_paused = true)]
async fn grpc_answers_trailers_only() {
    let layer = ChaosLayer::builder()
        .http()
        .fault(Fault::grpc(GrpcCode::Unavailable, "dependency down"))
        .build()
        .unwrap();
    let res = call(&mut layer.layer(http_leaf()), Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(res.headers()["grpc-message"], "dependency down");
    assert_eq!(
        GrpcCode::from_headers(res.headers()),
        Some(GrpcCode::Unavailable)
    );
}

#[tokio::test(start_paused = true)]
async fn hang_is_dropped_by_a_timeout_above() {
    let leaf = Counting::default();
    let layer = ChaosLayer::builder().fault(Fault::hang()).build().unwrap();
    let mut svc = tower::timeout::TimeoutLayer::new(secs(2)).layer(layer.layer(leaf.clone()));
    let start = Instant::now();
    let err = call(&mut svc, ()).await.unwrap_err();
    assert!(err.is::<tower::timeout::error::Elapsed>());
    assert_eq!(start.elapsed(), secs(2));
    assert_eq!(leaf.calls(), 0);

    // Without a timeout it is still pending an hour later.
    let mut svc = layer.layer(leaf);
    let mut fut = std::pin::pin!(svc.call(()));
    advance(secs(3600)).await;
    let waker = std::task::Waker::noop();
    assert!(fut
        .as_mut()
        .poll(&mut Context::from_waker(waker))
        .is_pending());
}

/// How many of `n` calls fail through `svc`.
async fn failures<S>(svc: &mut S, n: usize) -> usize
where
    S: Service<(), Error = BoxError>,
{
    let mut failed = 0;
    for _ in 0..n {
        if call(svc, ()).await.is_err() {
            failed += 1;
        }
    }
    failed
}

#[tokio::test(start_paused = true)]
async fn rate_is_respected_statistically() {
    for seed in [1, 2, 3] {
        let layer = ChaosLayer::builder()
            .seed(seed)
            .fault(Fault::error().rate(0.3))
            .build()
            .unwrap();
        let mut svc = layer.layer(Counting::default());
        let failed = failures(&mut svc, 10_000).await;
        // Three standard deviations: sqrt(10000 * 0.3 * 0.7) = 46.
        assert!((2_862..=3_138).contains(&failed), "seed {seed}: {failed}");
        assert_eq!(layer.handle().injected("error"), Some(failed as u64));
    }
}

/// The outcome pattern of `n` calls.
async fn pattern<S>(svc: &mut S, n: usize) -> Vec<bool>
where
    S: Service<(), Error = BoxError>,
{
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(call(svc, ()).await.is_err());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn same_seed_same_faults_and_clones_draw_their_own_stream() {
    let build = |seed| {
        ChaosLayer::builder()
            .seed(seed)
            .fault(Fault::error().rate(0.5))
            .build()
            .unwrap()
    };
    let a = pattern(&mut build(9).layer(Counting::default()), 200).await;
    let b = pattern(&mut build(9).layer(Counting::default()), 200).await;
    let c = pattern(&mut build(10).layer(Counting::default()), 200).await;
    assert_eq!(a, b);
    assert_ne!(a, c);

    let layer = build(9);
    let mut first = layer.layer(Counting::default());
    let mut clone = first.clone();
    assert_eq!(pattern(&mut first, 200).await, a);
    assert_ne!(pattern(&mut clone, 200).await, a);
}

#[tokio::test(start_paused = true)]
async fn between_schedule_models_an_outage() {
    let layer = ChaosLayer::builder()
        .fault(Fault::error().schedule(Schedule::between(secs(10), secs(40))))
        .build()
        .unwrap();
    let mut svc = layer.layer(Counting::default());
    assert!(call(&mut svc, ()).await.is_ok());
    advance(secs(10)).await;
    assert!(call(&mut svc, ()).await.is_err());
    advance(ms(29_999)).await;
    assert!(call(&mut svc, ()).await.is_err());
    advance(ms(1)).await;
    assert!(call(&mut svc, ()).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn flapping_schedule_and_several_windows() {
    let layer = ChaosLayer::builder()
        .fault(
            Fault::error()
                .schedule(Schedule::flapping(secs(1), secs(4)).starting(secs(2)))
                .named("flap"),
        )
        .fault(
            Fault::error()
                .schedule(Schedule::windows([
                    (secs(100), secs(101)),
                    (secs(200), secs(201)),
                ]))
                .named("windows"),
        )
        .build()
        .unwrap();
    let mut svc = layer.layer(Counting::default());
    let mut failing = Vec::new();
    for t in 0..12 {
        if call(&mut svc, ()).await.is_err() {
            failing.push(t);
        }
        advance(secs(1)).await;
    }
    assert_eq!(failing, vec![2, 6, 10]);
    let handle = layer.handle();
    handle.disable_fault("flap").unwrap();
    advance(secs(88)).await; // t = 100
    assert!(call(&mut svc, ()).await.is_err());
    advance(secs(1)).await;
    assert!(call(&mut svc, ()).await.is_ok());
    advance(secs(99)).await; // t = 200
    assert!(call(&mut svc, ()).await.is_err());
    assert_eq!(handle.injected("windows"), Some(2));
}

#[tokio::test(start_paused = true)]
async fn schedules_restart_and_start_later() {
    let layer = ChaosLayer::builder()
        .start_at(Instant::now() + secs(60))
        .fault(Fault::error().schedule(Schedule::between(Duration::ZERO, secs(5))))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Counting::default());
    assert!(call(&mut svc, ()).await.is_ok(), "before the start");
    assert_eq!(handle.is_active("error"), Some(false));
    advance(secs(60)).await;
    assert!(call(&mut svc, ()).await.is_err());
    assert_eq!(handle.is_active("error"), Some(true));
    advance(secs(5)).await;
    assert!(call(&mut svc, ()).await.is_ok());
    handle.restart();
    assert_eq!(handle.start(), Instant::now());
    assert!(call(&mut svc, ()).await.is_err());
    // A start before the layer's origin is taken as the origin.
    handle.set_start(Instant::now() - secs(3600));
    assert!(handle.start() <= Instant::now());
}

#[tokio::test(start_paused = true)]
async fn handle_switches_and_rates_apply_to_every_service() {
    let layer = ChaosLayer::builder()
        .seed(5)
        .fault(Fault::error().named("flaky"))
        .fault(Fault::hang().disabled())
        .build()
        .unwrap();
    let handle = layer.handle();
    let leaf = Counting::default();
    let mut a = layer.layer(leaf.clone());
    let mut b = layer.clone().layer(leaf.clone());
    assert!(call(&mut a, ()).await.is_err());
    assert!(call(&mut b, ()).await.is_err());

    handle.disable();
    assert!(!handle.is_enabled());
    assert!(call(&mut a, ()).await.is_ok());
    assert!(call(&mut b, ()).await.is_ok());
    handle.enable();
    assert!(call(&mut a, ()).await.is_err());

    handle.set_rate("flaky", 0.0).unwrap();
    assert_eq!(failures(&mut a, 100).await, 0);
    handle.set_rate("flaky", 1.0).unwrap();
    handle.disable_fault("flaky").unwrap();
    assert_eq!(failures(&mut b, 100).await, 0);
    handle.enable_fault("flaky").unwrap();
    assert_eq!(failures(&mut b, 10).await, 10);
    assert_eq!(handle.is_fault_enabled("hang"), Some(false));

    assert_eq!(handle.injected("flaky"), Some(13));
    assert_eq!(handle.fault_names(), vec!["flaky", "hang"]);
    assert!(handle.set_rate("flaky", f64::NAN).is_err());
    assert!(handle.set_rate("nope", 0.5).is_err());
    assert!(handle.disable_fault("nope").is_err());
    assert_eq!(handle.rate("nope"), None);
    assert_eq!(handle.injected("nope"), None);
    assert_eq!(leaf.calls(), 202);
}

#[tokio::test(start_paused = true)]
async fn built_disabled_passes_through_until_enabled() {
    let layer = ChaosLayer::builder()
        .disabled()
        .fault(Fault::error())
        .build()
        .unwrap();
    let mut svc = layer.layer(Counting::default());
    assert!(call(&mut svc, ()).await.is_ok());
    svc.handle().enable();
    assert!(call(&mut svc, ()).await.is_err());
}

fn with_header(name: &'static str, value: &'static str) -> Request<String> {
    Request::builder()
        .header(name, value)
        .body(String::new())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn headers_are_ignored_unless_enabled() {
    // An HTTP layer with faults but no header faults.
    let layer = ChaosLayer::builder()
        .http()
        .fault(Fault::latency(Latency::fixed(ms(1))))
        .build()
        .unwrap();
    let mut svc = layer.layer(http_leaf());
    let start = Instant::now();
    let res = call(&mut svc, with_header(ABORT_HEADER, "503"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = call(&mut svc, with_header(GRPC_STATUS_HEADER, "14"))
        .await
        .unwrap();
    assert!(res.headers().get("grpc-status").is_none());
    call(&mut svc, with_header(DELAY_HEADER, "5000"))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), ms(3));
    assert_eq!(layer.handle().injected_by_headers(), 0);

    // A plain layer cannot even be asked to read them.
    let err = ChaosLayer::builder()
        .header_faults(HeaderFaults::new())
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "header_faults");
}

#[tokio::test(start_paused = true)]
async fn header_faults_when_enabled() {
    let layer = ChaosLayer::builder()
        .http()
        .header_faults(HeaderFaults::new().max_delay(secs(1)))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(http_leaf());

    let res = call(&mut svc, with_header(ABORT_HEADER, "503"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let res = call(&mut svc, with_header(GRPC_STATUS_HEADER, "8"))
        .await
        .unwrap();
    assert_eq!(res.headers()["grpc-status"], "8");

    let start = Instant::now();
    let res = call(&mut svc, with_header(DELAY_HEADER, "250"))
        .await
        .unwrap();
    assert_eq!(res.body(), "upstream");
    assert_eq!(start.elapsed(), ms(250));
    let start = Instant::now();
    call(&mut svc, with_header(DELAY_HEADER, "99999999"))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), secs(1), "capped");

    let start = Instant::now();
    for bad in ["-1", "abc", "1.5", "0x10"] {
        let res = call(&mut svc, with_header(DELAY_HEADER, bad))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = call(&mut svc, with_header(ABORT_HEADER, "200"))
        .await
        .unwrap();
    assert_eq!(res.body(), "upstream");
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(handle.injected_by_headers(), 4);

    handle.disable();
    let res = call(&mut svc, with_header(ABORT_HEADER, "503"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn listener_sees_every_injection() {
    type Seen = (String, FaultKind, Option<Duration>);
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    let layer = ChaosLayer::builder()
        .name("upstream")
        .fault(Fault::latency(Latency::fixed(ms(5))).named("slow"))
        .fault(Fault::error().named("down"))
        .listener(FnListener::new(move |e: &ChaosEvent| {
            use seawall_core::Event;
            assert_eq!(e.layer(), "upstream");
            assert_eq!(e.kind(), "fault_injected");
            log.lock()
                .unwrap()
                .push((e.fault().to_owned(), e.fault_kind(), e.delay()));
        }))
        .build()
        .unwrap();
    let _ = call(&mut layer.layer(Counting::default()), ()).await;
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            ("slow".to_owned(), FaultKind::Latency, Some(ms(5))),
            ("down".to_owned(), FaultKind::Error, None),
        ]
    );
}

#[test]
fn invalid_configurations_are_refused() {
    let field = |b: Result<ChaosLayer, seawall_core::ConfigError>| b.unwrap_err().field();
    assert_eq!(
        field(
            ChaosLayer::builder()
                .fault(Fault::error())
                .fault(Fault::error())
                .build()
        ),
        "fault"
    );
    assert_eq!(
        field(
            ChaosLayer::builder()
                .faults((0..63).map(|i| Fault::error().named(i.to_string())))
                .build()
        ),
        "faults"
    );
    assert_eq!(
        field(
            ChaosLayer::builder()
                .fault(Fault::error().rate(2.0))
                .build()
        ),
        "rate"
    );
    assert_eq!(
        field(
            ChaosLayer::builder()
                .fault(Fault::http(StatusCode::BAD_GATEWAY))
                .build()
        ),
        "fault"
    );
    let err = ChaosLayer::builder()
        .http()
        .header_faults(HeaderFaults::new().max_delay(secs(7200)))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_delay");
    assert!(ChaosLayer::builder()
        .faults((0..62).map(|i| Fault::error().named(i.to_string())))
        .build()
        .is_ok());
}

/// A future that is never ready but counts its polls: a busy upstream.
struct Never;
impl Future for Never {
    type Output = Result<(), Infallible>;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Pending
    }
}

#[tokio::test(start_paused = true)]
async fn a_delayed_call_that_is_dropped_never_polls_the_inner_future() {
    let polled = Arc::new(AtomicUsize::new(0));
    let p = polled.clone();
    let leaf = service_fn(move |()| {
        let p = p.clone();
        async move {
            p.fetch_add(1, Ordering::SeqCst);
            Never.await
        }
    });
    let layer = ChaosLayer::builder()
        .fault(Fault::latency(Latency::fixed(secs(10))))
        .build()
        .unwrap();
    let mut svc = tower::timeout::TimeoutLayer::new(secs(1)).layer(layer.layer(leaf));
    let err = call(&mut svc, ()).await.unwrap_err();
    assert!(err.is::<tower::timeout::error::Elapsed>());
    assert_eq!(polled.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_clone_per_call_keeps_the_rate() {
    // axum clones the service for every request: if clones copied the RNG
    // state, every request would get the first draw's verdict.
    let layer = ChaosLayer::builder()
        .seed(21)
        .fault(Fault::error().rate(0.3))
        .build()
        .unwrap();
    let svc = layer.layer(Counting::default());
    let mut failed = 0;
    for _ in 0..10_000 {
        if svc.clone().oneshot(()).await.is_err() {
            failed += 1;
        }
    }
    assert!((2_862..=3_138).contains(&failed), "{failed}");
}

#[tokio::test(start_paused = true)]
async fn header_faults_are_reported_as_such() {
    let seen: Arc<Mutex<Vec<(String, FaultKind)>>> = Arc::default();
    let log = seen.clone();
    let layer = ChaosLayer::builder()
        .http()
        .header_faults(HeaderFaults::new())
        .listener(FnListener::new(move |e: &ChaosEvent| {
            log.lock()
                .unwrap()
                .push((e.fault().to_owned(), e.fault_kind()));
        }))
        .build()
        .unwrap();
    let mut svc = layer.layer(http_leaf());
    let req = Request::builder()
        .header(DELAY_HEADER, "10")
        .header(ABORT_HEADER, "429")
        .body(String::new())
        .unwrap();
    let start = Instant::now();
    let res = call(&mut svc, req).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(start.elapsed(), ms(10));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            ("header".to_owned(), FaultKind::Latency),
            ("header".to_owned(), FaultKind::Http),
        ]
    );
}
