//! The hedge layer in paused virtual time: the tail it cuts within its
//! budget, the requests it must never send twice, cancellation, and how
//! attempts are judged.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use seawall_core::event::FnListener;
use seawall_core::BoxError;
use seawall_retry::{Attempt, ReplayBody, RetryBudget};
use seawall_timeout::{CloneRequests, HedgeEvent, HedgeLayer, HttpRequests};
use tokio::time::{sleep, Instant};
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// xorshift64*: deterministic draws without an RNG crate.
struct Draws(u64);

impl Draws {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A dependency whose every attempt draws its own latency: 98% uniform in
/// 5-10 ms, 2% fifty times slower (250-500 ms). Counts the calls it gets.
fn mixture(
    seed: u64,
    calls: Arc<AtomicU32>,
) -> impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone + Send {
    let draws = Arc::new(Mutex::new(Draws(seed)));
    service_fn(move |req: u32| {
        calls.fetch_add(1, Ordering::Relaxed);
        let latency = {
            let mut d = draws.lock().unwrap();
            let fast = Duration::from_micros(5_000 + (d.next_f64() * 5_000.0) as u64);
            if d.next_f64() < 0.98 {
                fast
            } else {
                fast * 50
            }
        };
        async move {
            sleep(latency).await;
            Ok::<_, BoxError>(req)
        }
    })
}

/// One request per millisecond; the client-side latency of each.
async fn run<S>(svc: S, n: u32) -> Vec<Duration>
where
    S: Service<u32, Response = u32, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut tasks = Vec::new();
    for i in 0..n {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            assert_eq!(svc.oneshot(i).await.unwrap(), i);
            started.elapsed()
        }));
        sleep(MS).await;
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn quantile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::test(start_paused = true)]
async fn hedging_at_p95_cuts_p999_tenfold_within_the_budget() {
    const N: u32 = 20_000;
    // Warm-up: the first second (estimator filling, budget earning its first
    // tokens) is left out of the percentiles of both runs alike.
    const WARM_UP: usize = 1_000;

    let plain_calls = Arc::new(AtomicU32::new(0));
    let plain = run(mixture(42, plain_calls.clone()), N).await;
    let plain_p999 = quantile(&plain[WARM_UP..], 0.999);

    let calls = Arc::new(AtomicU32::new(0));
    // The defaults: p95, a 5% budget, one hedge per request.
    let layer = HedgeLayer::builder().percentile(0.95).build().unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(mixture(42, calls.clone()));
    let hedged = run(svc, N).await;
    let hedged_p999 = quantile(&hedged[WARM_UP..], 0.999);

    let extra = calls.load(Ordering::Relaxed) - N;
    let ratio = plain_p999.as_secs_f64() / hedged_p999.as_secs_f64();
    println!(
        "p99.9 {plain_p999:?} -> {hedged_p999:?} ({ratio:.1}x), p50 {:?} -> {:?}, \
         extra {extra} of {N} ({:.2}%), delay {:?}",
        quantile(&plain, 0.5),
        quantile(&hedged, 0.5),
        f64::from(extra) * 100.0 / f64::from(N),
        layer.delay(),
    );
    assert!(plain_p999 >= Duration::from_millis(250), "{plain_p999:?}");
    assert!(ratio >= 10.0, "{plain_p999:?} -> {hedged_p999:?}");
    assert!(extra > 0);
    assert!(
        f64::from(extra) <= f64::from(N) * 0.05,
        "{extra} hedges for {N} requests"
    );
    // The delay learned is the fast part's p95, censored losers included.
    let delay = layer.delay();
    assert!(delay > 8 * MS && delay < 11 * MS, "{delay:?}");
    assert_eq!(plain_calls.load(Ordering::Relaxed), N);
}

#[tokio::test(start_paused = true)]
async fn the_budget_caps_hedges_when_everything_is_slow() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let slow = service_fn(move |_: u32| {
        seen.fetch_add(1, Ordering::Relaxed);
        async {
            sleep(100 * MS).await;
            Ok::<_, BoxError>(0)
        }
    });
    let layer = HedgeLayer::builder()
        .delay(10 * MS)
        .budget_ratio(0.05)
        .max_hedges(3)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(layer).service(slow);
    let n = 2_000;
    run_ok(svc, n).await;
    let extra = calls.load(Ordering::Relaxed) - n;
    assert!(extra <= n / 20, "{extra} hedges for {n} requests");
    assert!(extra >= n / 20 - 3, "{extra}: the budget is spent");
}

/// Tokens saved during calm traffic must not buy a burst of hedges in the
/// next slowdown: after 30 s of healthy traffic, 1,000 slow requests get at
/// most `ratio x (n + 100)` = 55 hedges (5%, plus the reserve of what 100
/// requests earn); the retry budget's default reserve of 100 tokens gave 149.
#[tokio::test(start_paused = true)]
async fn hedges_after_calm_traffic_stay_within_the_ratio() {
    let calls = Arc::new(AtomicU32::new(0));
    let slow = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (c, s) = (calls.clone(), slow.clone());
    let layer = HedgeLayer::builder()
        .delay(20 * MS)
        .budget_ratio(0.05)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(service_fn(move |i: u32| {
            c.fetch_add(1, Ordering::SeqCst);
            let d = if s.load(Ordering::SeqCst) {
                200 * MS
            } else {
                MS
            };
            async move {
                sleep(d).await;
                Ok::<_, BoxError>(i)
            }
        }));
    let run = |n: u32| {
        let svc = svc.clone();
        async move {
            let futs = (0..n).map(|i| {
                let svc = svc.clone();
                async move {
                    sleep(10 * MS * i).await;
                    svc.oneshot(i).await.unwrap();
                }
            });
            futures_util::future::join_all(futs).await;
        }
    };
    run(3_000).await; // 30 s calm, 100 requests a second
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3_000,
        "no hedges while healthy"
    );
    let saved = layer.budget().tokens();
    slow.store(true, Ordering::SeqCst);
    calls.store(0, Ordering::SeqCst);
    run(1_000).await; // 10 s slow
    let extra = calls.load(Ordering::SeqCst) - 1_000;
    assert!(
        extra <= 50 + 5,
        "{extra} hedges for 1000 requests during the slowdown, bound 5% x (1000 + 100)"
    );
    assert!(extra >= 50, "{extra}: the budget is spent");
    assert_eq!(saved, 5, "the reserve: what 100 requests earn");

    // The reserve follows the ratio, and may be set.
    for (ratio, reserve, expected) in [
        (0.05, None, 5),
        (0.1, None, 10),
        (0.001, None, 1),
        (0.05, Some(1), 1),
    ] {
        let mut builder = HedgeLayer::builder().delay(20 * MS).budget_ratio(ratio);
        if let Some(tokens) = reserve {
            builder = builder.budget_reserve(tokens);
        }
        let layer = builder.build().unwrap();
        for _ in 0..100_000 {
            layer.budget().deposit();
        }
        assert_eq!(layer.budget().tokens(), expected, "{ratio} {reserve:?}");
    }
    assert_eq!(
        HedgeLayer::builder()
            .budget_reserve(0)
            .build()
            .unwrap_err()
            .field(),
        "budget_reserve"
    );
}

async fn run_ok<S>(svc: S, n: u32)
where
    S: Service<u32, Response = u32, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut tasks = Vec::new();
    for i in 0..n {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move { svc.oneshot(i).await.unwrap() }));
        sleep(MS).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// A call seen by [`Recorder`]: method, path, attempt, body.
type Call = (String, String, u32, Bytes);

/// An HTTP dependency whose first call hangs; every call is recorded with
/// its method, path, attempt and body.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Call>>>,
}

impl Recorder {
    fn service(
        &self,
    ) -> impl Service<
        Request<ReplayBody<Full<Bytes>>>,
        Response = Response<Bytes>,
        Error = BoxError,
        Future: Send,
    > + Clone {
        let seen = self.seen.clone();
        service_fn(move |req: Request<ReplayBody<Full<Bytes>>>| {
            let seen = seen.clone();
            async move {
                let method = req.method().to_string();
                let path = req.uri().path().to_owned();
                let attempt = Attempt::of(&req).get();
                let body = req.into_body().collect().await?.to_bytes();
                let first = {
                    let mut seen = seen.lock().unwrap();
                    seen.push((method, path, attempt, body.clone()));
                    seen.len() == 1
                };
                if first {
                    sleep(Duration::from_secs(1)).await;
                }
                Ok::<_, BoxError>(Response::new(body))
            }
        })
    }

    fn calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

async fn send(policy: HttpRequests, req: Request<Full<Bytes>>) -> (Duration, Vec<Call>) {
    let recorder = Recorder::default();
    let layer = HedgeLayer::builder()
        .policy(policy)
        .classifier(seawall_core::HttpClassifier::new())
        .delay(20 * MS)
        .budget(
            RetryBudget::builder()
                .ratio(1.0)
                .min_per_sec(0)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(recorder.service());
    let started = Instant::now();
    let res = svc.oneshot(req).await.unwrap();
    let _ = res;
    (started.elapsed(), recorder.calls())
}

#[tokio::test(start_paused = true)]
async fn a_post_without_a_key_is_never_sent_twice() {
    let body = || Full::new(Bytes::from_static(b"charge 10 EUR"));
    let (took, calls) = send(
        HttpRequests::new(),
        Request::post("/payments").body(body()).unwrap(),
    )
    .await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(took, Duration::from_secs(1), "waited for the only attempt");

    // Same with PATCH, and with a gRPC method not opted in.
    let (_, calls) = send(
        HttpRequests::new().grpc_method("/kv.Store/Get"),
        Request::patch("/payments/1").body(body()).unwrap(),
    )
    .await;
    assert_eq!(calls.len(), 1);
    let (_, calls) = send(
        HttpRequests::new().grpc_method("/kv.Store/Get"),
        Request::post("/kv.Store/Put").body(body()).unwrap(),
    )
    .await;
    assert_eq!(calls.len(), 1);
}

/// Only one usable `Idempotency-Key` makes a POST safe to send twice: an
/// empty, blank, `""` (an empty structured-field string) or repeated key is
/// refused by a deduplicating server and ignored by any other.
#[tokio::test(start_paused = true)]
async fn a_post_with_an_unusable_key_is_never_sent_twice() {
    let unusable: [&[&[u8]]; 6] = [
        &[b""],
        &[b"   "],
        &[b"\t"],
        &[b"\"\""],
        &[b"\"\";p=1"],
        &[b"k-1", b"k-2"],
    ];
    for values in unusable {
        let mut req = Request::post("/payments")
            .body(Full::new(Bytes::from_static(b"charge 10 EUR")))
            .unwrap();
        for v in values {
            req.headers_mut()
                .append("idempotency-key", http::HeaderValue::from_bytes(v).unwrap());
        }
        let (took, calls) = send(HttpRequests::new(), req).await;
        assert_eq!(calls.len(), 1, "{values:?}: {calls:?}");
        assert_eq!(took, Duration::from_secs(1), "{values:?}");
    }
    for key in ["\"order-42\"", " k-1 "] {
        let req = Request::post("/payments")
            .header("idempotency-key", key)
            .body(Full::new(Bytes::from_static(b"charge 10 EUR")))
            .unwrap();
        let (_, calls) = send(HttpRequests::new(), req).await;
        assert_eq!(calls.len(), 2, "{key}: a usable key is hedged");
    }
}

#[tokio::test(start_paused = true)]
async fn safe_requests_are_hedged_with_the_same_body() {
    let body = || Full::new(Bytes::from_static(b"state=on"));
    for req in [
        Request::get("/items/1").body(Full::default()).unwrap(),
        Request::put("/items/1").body(body()).unwrap(),
        Request::delete("/items/1").body(Full::default()).unwrap(),
        Request::post("/payments")
            .header("idempotency-key", "k-1")
            .body(body())
            .unwrap(),
    ] {
        let method = req.method().to_string();
        let (took, calls) = send(HttpRequests::new(), req).await;
        assert_eq!(calls.len(), 2, "{method}: {calls:?}");
        assert_eq!(took, 20 * MS, "{method}: the hedge answered");
        assert_eq!(calls[0].3, calls[1].3, "{method}: same bytes");
        assert_eq!((calls[0].2, calls[1].2), (1, 2), "attempt numbers");
    }
    let (_, calls) = send(
        HttpRequests::new().grpc_method("/kv.Store/Get"),
        Request::post("/kv.Store/Get").body(body()).unwrap(),
    )
    .await;
    assert_eq!(calls.len(), 2, "opted-in gRPC method");
    assert_eq!(calls[1].3, Bytes::from_static(b"state=on"));
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_limit_is_sent_once() {
    let (_, calls) = send(
        HttpRequests::new().body_limit(4),
        Request::put("/items/1")
            .body(Full::new(Bytes::from_static(b"too long")))
            .unwrap(),
    )
    .await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].3, Bytes::from_static(b"too long"));
}

/// Counts attempts started and attempts dropped before finishing.
#[derive(Clone, Default)]
struct Tracked {
    started: Arc<AtomicU32>,
    live: Arc<AtomicU32>,
}

struct Live(Arc<AtomicU32>);
impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Tracked {
    /// Attempt `n` (0-based) takes `latencies[n]` and then answers `Ok(n)`,
    /// or fails when the latency is in `fail`.
    fn service(
        &self,
        latencies: Vec<Duration>,
        fail: Vec<usize>,
    ) -> impl Service<(), Response = u32, Error = BoxError> + Clone {
        let t = self.clone();
        service_fn(move |()| {
            let n = t.started.fetch_add(1, Ordering::SeqCst);
            t.live.fetch_add(1, Ordering::SeqCst);
            let live = Live(t.live.clone());
            let latency = latencies[n as usize];
            let fails = fail.contains(&(n as usize));
            async move {
                let _live = live;
                sleep(latency).await;
                if fails {
                    Err::<u32, BoxError>(format!("attempt {n} failed").into())
                } else {
                    Ok(n)
                }
            }
        })
    }
}

fn fixed(delay: Duration, max_hedges: u32) -> HedgeLayer {
    HedgeLayer::builder()
        .delay(delay)
        .max_hedges(max_hedges)
        .budget(
            RetryBudget::builder()
                .ratio(10.0)
                .min_per_sec(0)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn cancelling_the_response_future_drops_every_attempt() {
    let t = Tracked::default();
    let svc = ServiceBuilder::new()
        .layer(fixed(10 * MS, 2))
        .service(t.service(vec![Duration::from_secs(9); 3], vec![]));
    let fut = svc.oneshot(());
    // Both hedges sent (at 10 and 20 ms), then the caller gives up.
    assert!(tokio::time::timeout(25 * MS, fut).await.is_err());
    assert_eq!(t.started.load(Ordering::SeqCst), 3);
    assert_eq!(t.live.load(Ordering::SeqCst), 0, "all three dropped");
}

#[tokio::test(start_paused = true)]
async fn the_first_success_wins_and_the_losers_are_dropped() {
    let t = Tracked::default();
    let svc = ServiceBuilder::new()
        .layer(fixed(10 * MS, 2))
        .service(t.service(vec![100 * MS, 50 * MS, 5 * MS], vec![]));
    let started = Instant::now();
    assert_eq!(svc.oneshot(()).await.unwrap(), 2, "the second hedge");
    assert_eq!(started.elapsed(), 25 * MS);
    assert_eq!(t.live.load(Ordering::SeqCst), 0, "losers dropped at once");
}

#[tokio::test(start_paused = true)]
async fn a_failure_does_not_win_while_another_attempt_runs() {
    let t = Tracked::default();
    let svc = ServiceBuilder::new()
        .layer(fixed(10 * MS, 1))
        .service(t.service(vec![100 * MS, 5 * MS], vec![1]));
    // The hedge fails at 15 ms; the first attempt answers at 100 ms.
    let started = Instant::now();
    assert_eq!(svc.oneshot(()).await.unwrap(), 0);
    assert_eq!(started.elapsed(), 100 * MS);

    // Every attempt fails: the last failure is the answer.
    let t = Tracked::default();
    let svc = ServiceBuilder::new()
        .layer(fixed(10 * MS, 1))
        .service(t.service(vec![30 * MS, 5 * MS], vec![0, 1]));
    let err = svc.oneshot(()).await.unwrap_err();
    assert_eq!(err.to_string(), "attempt 0 failed");
}

/// A keyed POST hedged into seawall's own `IdempotencyLayer`: the hedge
/// reaches the server while the first attempt is being processed and gets
/// `409 Conflict` (in flight, per the IETF draft), which the HTTP
/// classifier calls a success. It must not win: the caller gets the first
/// attempt's `201`, and the handler runs once.
#[tokio::test(start_paused = true)]
async fn a_keyed_post_hedged_into_an_idempotency_layer_gets_the_first_answer() {
    let (reached, handled) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let h = handled.clone();
    let server = seawall_idempotency::IdempotencyLayer::new().layer(service_fn(
        move |req: Request<seawall_idempotency::RequestBody<ReplayBody<Full<Bytes>>>>| {
            h.fetch_add(1, Ordering::SeqCst);
            async move {
                let _ = req.into_body().collect().await?;
                sleep(100 * MS).await;
                let mut res = Response::new(Full::new(Bytes::from_static(b"charged")));
                *res.status_mut() = http::StatusCode::CREATED;
                Ok::<_, BoxError>(res)
            }
        },
    ));
    let r = reached.clone();
    let server = tower::ServiceBuilder::new()
        .map_request(move |req: Request<ReplayBody<Full<Bytes>>>| {
            r.fetch_add(1, Ordering::SeqCst);
            req
        })
        .service(server);
    let client = HedgeLayer::builder()
        .http()
        .delay(10 * MS)
        .budget_ratio(1.0)
        .build()
        .unwrap()
        .layer(server);
    let req = Request::post("/charge")
        .header("idempotency-key", "\"order-42\"")
        .body(Full::new(Bytes::from_static(b"amount=100")))
        .unwrap();
    let started = Instant::now();
    let res = client.oneshot(req).await.unwrap();
    assert_eq!(
        res.status(),
        http::StatusCode::CREATED,
        "the hedge's in-flight 409 won the race"
    );
    assert_eq!(started.elapsed(), 100 * MS, "waited for the first attempt");
    assert_eq!(reached.load(Ordering::SeqCst), 2, "the hedge was sent");
    assert_eq!(handled.load(Ordering::SeqCst), 1, "and deduplicated");
}

/// An HTTP dependency whose attempt `n` answers `script[n]` (status,
/// latency).
fn scripted(
    script: Vec<(u16, Duration)>,
) -> impl Service<
    Request<ReplayBody<Full<Bytes>>>,
    Response = Response<Bytes>,
    Error = BoxError,
    Future: Send,
> + Clone {
    let n = Arc::new(AtomicU32::new(0));
    service_fn(move |_req: Request<ReplayBody<Full<Bytes>>>| {
        let i = n.fetch_add(1, Ordering::SeqCst) as usize;
        let (status, latency) = script[i];
        async move {
            sleep(latency).await;
            let mut res = Response::new(Bytes::from(format!("attempt {i}")));
            *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
            Ok::<_, BoxError>(res)
        }
    })
}

type Case = (
    &'static str,
    Vec<(u16, Duration)>,
    u16,
    &'static str,
    Duration,
);

/// Only a success wins while another attempt runs: an in-flight answer
/// (`409`, `425`) or a failure waits for the other attempts; when none
/// succeeds, an in-flight answer does not hide the other's.
#[tokio::test(start_paused = true)]
async fn an_in_flight_answer_does_not_win_while_another_attempt_runs() {
    let layer = || {
        HedgeLayer::builder()
            .http()
            .delay(10 * MS)
            .budget_ratio(1.0)
            .build()
            .unwrap()
    };
    let get = || Request::get("/items/1").body(Full::default()).unwrap();
    // (case, script, status answered, by which attempt, after how long)
    let cases: [Case; 5] = [
        // The hedge's 409 / 425 at 15 ms; the first attempt's 200 at 100 ms.
        (
            "409 hedge",
            vec![(200, 100 * MS), (409, 5 * MS)],
            200,
            "attempt 0",
            100 * MS,
        ),
        (
            "425 hedge",
            vec![(200, 100 * MS), (425, 5 * MS)],
            200,
            "attempt 0",
            100 * MS,
        ),
        // The first attempt's 409 while the hedge runs: the hedge's 200.
        (
            "409 first",
            vec![(409, 30 * MS), (200, 50 * MS)],
            200,
            "attempt 1",
            60 * MS,
        ),
        // No success: the 503 is the answer, not the in-flight 409.
        (
            "409 then 503",
            vec![(503, 100 * MS), (409, 5 * MS)],
            503,
            "attempt 0",
            100 * MS,
        ),
        // A 409 with no other attempt running is the answer.
        ("409 alone", vec![(409, 5 * MS)], 409, "attempt 0", 5 * MS),
    ];
    for (name, script, status, body, took) in cases {
        let svc = layer().layer(scripted(script));
        let started = Instant::now();
        let res = svc.oneshot(get()).await.unwrap();
        assert_eq!(res.status().as_u16(), status, "{name}");
        assert_eq!(res.body(), body, "{name}");
        assert_eq!(started.elapsed(), took, "{name}");
    }
}

/// An outcome the classifier ignores (neither success nor failure) does not
/// win while another attempt runs either.
#[tokio::test(start_paused = true)]
async fn an_ignored_outcome_does_not_win_while_another_attempt_runs() {
    let t = Tracked::default();
    let layer = HedgeLayer::builder()
        .delay(10 * MS)
        .budget_ratio(1.0)
        .classifier(|r: Result<&u32, &BoxError>| match r {
            Ok(1) => seawall_core::Outcome::Ignore,
            Ok(_) => seawall_core::Outcome::Success,
            Err(_) => seawall_core::Outcome::Failure,
        })
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(t.service(vec![100 * MS, 5 * MS], vec![]));
    let started = Instant::now();
    assert_eq!(
        svc.oneshot(()).await.unwrap(),
        0,
        "the hedge's answer is ignored"
    );
    assert_eq!(started.elapsed(), 100 * MS);
}

#[tokio::test(start_paused = true)]
async fn a_failure_before_the_delay_is_not_hedged() {
    let t = Tracked::default();
    let svc = ServiceBuilder::new()
        .layer(fixed(10 * MS, 1))
        .service(t.service(vec![5 * MS, 5 * MS], vec![0]));
    let started = Instant::now();
    let err = svc.oneshot(()).await.unwrap_err();
    assert_eq!(err.to_string(), "attempt 0 failed");
    assert_eq!(started.elapsed(), 5 * MS);
    assert_eq!(t.started.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_fast_call_sends_nothing_more_and_spends_nothing() {
    let t = Tracked::default();
    let layer = fixed(10 * MS, 1);
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(t.service(vec![9 * MS], vec![]));
    assert_eq!(svc.oneshot(()).await.unwrap(), 0);
    assert_eq!(t.started.load(Ordering::SeqCst), 1);
    assert_eq!(layer.budget().tokens(), 10, "one deposit of 10, none spent");
}

#[tokio::test(start_paused = true)]
async fn generic_requests_hedge_only_what_the_predicate_allows() {
    let t = Tracked::default();
    let layer = HedgeLayer::builder()
        .policy(CloneRequests::new().when(|safe: &bool| *safe))
        .delay(10 * MS)
        .budget_ratio(1.0)
        .build()
        .unwrap();
    let inner = t.service(vec![50 * MS, 50 * MS, 5 * MS], vec![]);
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(inner.map_request(|_: bool| ()));
    assert_eq!(svc.clone().oneshot(false).await.unwrap(), 0);
    assert_eq!(t.started.load(Ordering::SeqCst), 1, "not hedged");
    assert_eq!(svc.oneshot(true).await.unwrap(), 2);
    assert_eq!(t.started.load(Ordering::SeqCst), 3, "hedged");
}

#[tokio::test(start_paused = true)]
async fn events_report_hedges_and_an_empty_budget() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let layer = HedgeLayer::builder()
        .delay(10 * MS)
        .budget_ratio(0.5)
        .name("search")
        .listener(FnListener::new(move |e: &HedgeEvent| {
            log.lock().unwrap().push(e.clone());
        }))
        .build()
        .unwrap();
    let t = Tracked::default();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(t.service(vec![30 * MS, 30 * MS, 30 * MS], vec![]));
    // The first request earns half a token: not enough for a hedge.
    svc.clone().oneshot(()).await.unwrap();
    // The second one completes it.
    svc.oneshot(()).await.unwrap();
    assert_eq!(t.started.load(Ordering::SeqCst), 3);
    let events = events.lock().unwrap();
    assert!(
        matches!(
            &events[..],
            [
                HedgeEvent::BudgetExhausted { tokens: 0, .. },
                HedgeEvent::HedgeSent { attempt: 2, delay, layer },
            ] if *delay == 10 * MS && &**layer == "search"
        ),
        "{events:?}"
    );
}

#[test]
fn invalid_settings_are_config_errors() {
    let b = HedgeLayer::builder;
    assert_eq!(
        b().delay(Duration::ZERO).build().unwrap_err().field(),
        "delay"
    );
    assert_eq!(
        b().percentile(0.0).build().unwrap_err().field(),
        "percentile"
    );
    assert_eq!(b().max_hedges(0).build().unwrap_err().field(), "max_hedges");
    assert_eq!(b().max_hedges(9).build().unwrap_err().field(), "max_hedges");
    assert_eq!(
        b().budget_ratio(f64::NAN).build().unwrap_err().field(),
        "budget_ratio"
    );
    assert_eq!(
        b().min_delay(Duration::from_secs(20))
            .build()
            .unwrap_err()
            .field(),
        "floor"
    );
}

#[tokio::test(start_paused = true)]
async fn the_hedge_waits_for_the_inner_service_to_be_ready() {
    let (mock, mut handle) = tower_test::mock::pair::<u32, u32>();
    handle.allow(1);
    let layer = fixed(10 * MS, 1);
    let mut svc = ServiceBuilder::new().layer(layer).service(mock);
    let fut = tokio::spawn(svc.ready().await.unwrap().call(7));
    let (first, _first_reply) = handle.next_request().await.unwrap();
    assert_eq!(first, 7);
    // The delay passes, but the inner service has no capacity: the hedge
    // waits inside the response future instead of being sent.
    tokio::time::advance(30 * MS).await;
    tokio::task::yield_now().await;
    assert!(tokio::time::timeout(MS, handle.next_request())
        .await
        .is_err());
    handle.allow(1);
    let (again, reply) = handle.next_request().await.unwrap();
    assert_eq!(again, 7, "the hedge, once the service is ready");
    reply.send_response(70);
    assert_eq!(fut.await.unwrap().unwrap(), 70);
}

/// Calls answered on their first poll (nothing to hedge) are not samples of
/// the hedge delay: counted as zero, a wall of cache hits would pull the
/// p95 of the calls that wait down to the floor and hedge every miss.
#[tokio::test(start_paused = true)]
async fn calls_answered_at_once_are_not_samples_of_the_delay() {
    let layer = HedgeLayer::builder().min_samples(20).build().unwrap();
    let n = Arc::new(AtomicU32::new(0));
    let seen = n.clone();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(service_fn(move |(): ()| {
            let i = seen.fetch_add(1, Ordering::SeqCst);
            async move {
                if i.is_multiple_of(100) {
                    sleep(20 * MS).await;
                }
                Ok::<_, BoxError>(i)
            }
        }));
    for _ in 0..5_000 {
        svc.clone().oneshot(()).await.unwrap();
        sleep(MS).await;
    }
    sleep(100 * MS).await;
    let delay = layer.delay();
    assert!(
        delay > 19 * MS && delay < 21 * MS,
        "the misses' p95: {delay:?}"
    );
    assert_eq!(n.load(Ordering::SeqCst), 5_000, "no miss hedged");
}
