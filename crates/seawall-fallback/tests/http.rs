//! The HTTP mode: tiers, markers, body recording limits and rejections.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use seawall_core::event::{Event, FnListener};
use seawall_core::{BoxError, Rejected, Rejection};
use seawall_fallback::{
    CauseKind, Degraded, FallbackEvent, FallbackLayer, LastKnownGood, Rejections, RequestInfo, Tier,
};
use tower::{service_fn, Layer, Service, ServiceExt};

/// A body made of given frames, to exercise chunking and trailers.
#[derive(Debug, Default)]
struct Frames(VecDeque<Result<Frame<Bytes>, BoxError>>);

impl Frames {
    fn data(chunks: &[&'static str]) -> Self {
        Self(
            chunks
                .iter()
                .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
                .collect(),
        )
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.pop_front())
    }
}

/// What the fake dependency does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    Answer(u16),
    Fail,
    Reject,
}

#[derive(Clone)]
struct Dependency {
    next: Arc<Mutex<Next>>,
    body: Arc<Mutex<Vec<&'static str>>>,
    trailers: Arc<Mutex<bool>>,
}

/// A refusal shaped like the circuit breaker's `CircuitOpen`.
#[derive(Debug)]
struct CircuitOpen(Rejected);

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("circuit open")
    }
}

impl std::error::Error for CircuitOpen {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl Rejection for CircuitOpen {
    fn rejected(&self) -> &Rejected {
        &self.0
    }
}

impl Dependency {
    fn new() -> Self {
        Self {
            next: Arc::new(Mutex::new(Next::Answer(200))),
            body: Arc::new(Mutex::new(vec!["fresh"])),
            trailers: Arc::new(Mutex::new(false)),
        }
    }

    fn set(&self, next: Next) {
        *self.next.lock().unwrap() = next;
    }

    fn set_body(&self, chunks: &[&'static str]) {
        *self.body.lock().unwrap() = chunks.to_vec();
    }

    fn service(
        &self,
    ) -> impl Service<Request<()>, Response = Response<Frames>, Error = BoxError, Future = impl Send>
           + Clone {
        let dep = self.clone();
        service_fn(move |_req: Request<()>| {
            let next = *dep.next.lock().unwrap();
            let mut frames = Frames::data(&dep.body.lock().unwrap());
            if *dep.trailers.lock().unwrap() {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                frames.0.push_back(Ok(Frame::trailers(trailers)));
            }
            async move {
                match next {
                    Next::Answer(status) => Ok(Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(frames)?),
                    Next::Fail => Err::<_, BoxError>("connection reset".into()),
                    Next::Reject => Err(Box::new(CircuitOpen(Rejected::new(
                        "circuit_open",
                        StatusCode::SERVICE_UNAVAILABLE,
                        Some(Duration::from_secs(5)),
                    ))) as BoxError),
                }
            }
        })
    }
}

fn get(path: &str) -> Request<()> {
    Request::get(path).body(()).unwrap()
}

fn by_uri(info: &RequestInfo) -> Option<String> {
    (info.method() == Method::GET).then(|| info.uri().to_string())
}

async fn text<B>(res: Response<B>) -> String
where
    B: Body<Data = Bytes>,
    B::Error: fmt::Debug,
{
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn tier_of<B>(res: &Response<B>) -> Option<Tier> {
    res.extensions().get::<Degraded>().map(|d| d.tier)
}

#[tokio::test(start_paused = true)]
async fn last_known_good_serves_the_remembered_body_with_markers() {
    let dep = Dependency::new();
    dep.set_body(&["[\"a\",", "\"b\"]"]);
    let layer = FallbackLayer::http()
        .last_known_good(LastKnownGood::new(), by_uri)
        .build()
        .unwrap();
    let svc = layer.layer(dep.service());

    let fresh = svc.clone().oneshot(get("/items")).await.unwrap();
    assert_eq!(tier_of(&fresh), None);
    assert!(fresh.headers().get("seawall-degraded").is_none());
    assert_eq!(text(fresh).await, "[\"a\",\"b\"]");

    tokio::time::advance(Duration::from_secs(42)).await;
    dep.set(Next::Answer(503));
    let stale = svc.clone().oneshot(get("/items")).await.unwrap();
    assert_eq!(stale.status(), StatusCode::OK);
    assert_eq!(stale.headers()["seawall-degraded"], "last-known-good");
    assert_eq!(stale.headers()["content-type"], "application/json");
    assert_eq!(stale.headers()["age"], "42");
    let degraded = *stale.extensions().get::<Degraded>().unwrap();
    assert_eq!(degraded.tier, Tier::LastKnownGood);
    assert_eq!(degraded.age, Some(Duration::from_secs(42)));
    assert_eq!(text(stale).await, "[\"a\",\"b\"]");

    // Another key has nothing remembered: the 503 passes through untouched.
    let other = svc.oneshot(get("/other")).await.unwrap();
    assert_eq!(other.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(tier_of(&other), None);
}

#[tokio::test(start_paused = true)]
async fn staleness_expires_in_virtual_time() {
    let dep = Dependency::new();
    let layer = FallbackLayer::http()
        .last_known_good(
            LastKnownGood::new().max_staleness(Duration::from_secs(60)),
            by_uri,
        )
        .value(Response::new(Bytes::from_static(b"static")))
        .build()
        .unwrap();
    let svc = layer.layer(dep.service());
    assert_eq!(
        text(svc.clone().oneshot(get("/")).await.unwrap()).await,
        "fresh"
    );

    dep.set(Next::Fail);
    tokio::time::advance(Duration::from_secs(60)).await;
    let res = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(tier_of(&res), Some(Tier::LastKnownGood));
    assert_eq!(text(res).await, "fresh");

    tokio::time::advance(Duration::from_secs(1)).await;
    let res = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(tier_of(&res), Some(Tier::Value), "too stale: next tier");
    assert_eq!(text(res).await, "static");

    // A new success refreshes the entry.
    dep.set(Next::Answer(200));
    dep.set_body(&["newer"]);
    assert_eq!(
        text(svc.clone().oneshot(get("/")).await.unwrap()).await,
        "newer"
    );
    dep.set(Next::Fail);
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(text(svc.oneshot(get("/")).await.unwrap()).await, "newer");
}

#[tokio::test(start_paused = true)]
async fn capacity_bounds_the_cache() {
    let dep = Dependency::new();
    let layer = FallbackLayer::http()
        .last_known_good(LastKnownGood::new().capacity(8), by_uri)
        .build()
        .unwrap();
    let cache = layer.last_known_good().expect("tier configured");
    let svc = layer.layer(dep.service());
    for i in 0..100 {
        let res = svc.clone().oneshot(get(&format!("/k/{i}"))).await.unwrap();
        text(res).await;
    }
    cache.run_pending_tasks();
    let count = cache.entry_count();
    assert!((1..=8).contains(&count), "entries: {count}");

    cache.clear();
    cache.run_pending_tasks();
    assert_eq!(cache.entry_count(), 0);
    dep.set(Next::Fail);
    assert!(
        svc.oneshot(get("/k/99")).await.is_err(),
        "cleared cache serves nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn oversized_bodies_pass_intact_and_are_not_stored() {
    let dep = Dependency::new();
    dep.set_body(&["0123", "4567", "89"]);
    let layer = FallbackLayer::http()
        .max_body_size(9)
        .last_known_good(LastKnownGood::new(), by_uri)
        .build()
        .unwrap();
    let cache = layer.last_known_good().unwrap();
    let svc = layer.layer(dep.service());

    let res = svc.clone().oneshot(get("/big")).await.unwrap();
    assert_eq!(text(res).await, "0123456789", "client gets the whole body");
    cache.run_pending_tasks();
    assert_eq!(cache.entry_count(), 0);

    dep.set_body(&["0123", "45678"]);
    let res = svc.clone().oneshot(get("/fits")).await.unwrap();
    assert_eq!(text(res).await, "012345678");

    dep.set(Next::Fail);
    let err = svc.clone().oneshot(get("/big")).await.unwrap_err();
    assert_eq!(err.to_string(), "connection reset");
    let res = svc.oneshot(get("/fits")).await.unwrap();
    assert_eq!(
        text(res).await,
        "012345678",
        "a body at the limit is stored"
    );
}

#[tokio::test(start_paused = true)]
async fn bodies_are_stored_only_once_read_to_the_end_without_trailers() {
    let dep = Dependency::new();
    dep.set_body(&["partial", "rest"]);
    let layer = FallbackLayer::http()
        .last_known_good(LastKnownGood::new(), by_uri)
        .build()
        .unwrap();
    let svc = layer.layer(dep.service());

    // Dropped after one frame: nothing is stored.
    let mut body = svc
        .clone()
        .oneshot(get("/dropped"))
        .await
        .unwrap()
        .into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "partial");
    drop(body);

    *dep.trailers.lock().unwrap() = true;
    let res = svc.clone().oneshot(get("/trailers")).await.unwrap();
    let collected = res.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");

    dep.set(Next::Fail);
    assert!(svc.clone().oneshot(get("/dropped")).await.is_err());
    assert!(svc.oneshot(get("/trailers")).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn tiers_run_in_configured_order_skipping_empty_ones() {
    let dep = Dependency::new();
    dep.set(Next::Fail);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let alt_calls = Arc::new(Mutex::new(0));
    let alt_count = alt_calls.clone();
    let layer = FallbackLayer::http()
        .last_known_good(LastKnownGood::new(), by_uri)
        .function(move |info: &RequestInfo, cause| {
            log.lock()
                .unwrap()
                .push((info.uri().path().to_owned(), cause.kind()));
            (info.uri().path() == "/computed")
                .then(|| Response::new(Bytes::from_static(b"computed")))
        })
        .alternative(service_fn(move |info: RequestInfo| {
            *alt_count.lock().unwrap() += 1;
            async move {
                let status = if info.uri().path() == "/alt-down" {
                    503
                } else {
                    200
                };
                Response::builder()
                    .status(status)
                    .body(http_body_util::Full::new(Bytes::from_static(b"secondary")))
            }
        }))
        .value(Response::new(Bytes::from_static(b"static")))
        .build()
        .unwrap();
    let svc = layer.layer(dep.service());

    let res = svc.clone().oneshot(get("/computed")).await.unwrap();
    assert_eq!(tier_of(&res), Some(Tier::Function));
    assert_eq!(res.headers()["seawall-degraded"], "function");
    assert_eq!(text(res).await, "computed");
    assert_eq!(*alt_calls.lock().unwrap(), 0, "later tiers do not run");

    let res = svc.clone().oneshot(get("/anything")).await.unwrap();
    assert_eq!(tier_of(&res), Some(Tier::Alternative));
    assert_eq!(res.headers()["seawall-degraded"], "alternative");
    assert_eq!(text(res).await, "secondary");

    let res = svc.clone().oneshot(get("/alt-down")).await.unwrap();
    assert_eq!(
        tier_of(&res),
        Some(Tier::Value),
        "a failing alternative is skipped"
    );
    assert_eq!(res.headers()["seawall-degraded"], "static");
    assert_eq!(text(res).await, "static");

    assert_eq!(*alt_calls.lock().unwrap(), 2);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|(_, kind)| *kind == CauseKind::Error));
}

#[tokio::test(start_paused = true)]
async fn a_value_first_shadows_every_later_tier() {
    let dep = Dependency::new();
    dep.set(Next::Answer(500));
    let layer = FallbackLayer::http()
        .value(Response::new(Bytes::from_static(b"first")))
        .function(|_: &RequestInfo, _| Some(Response::new(Bytes::from_static(b"second"))))
        .build()
        .unwrap();
    let res = layer.layer(dep.service()).oneshot(get("/")).await.unwrap();
    assert_eq!(text(res).await, "first");
}

#[tokio::test(start_paused = true)]
async fn exhaustion_returns_the_original_failure() {
    let dep = Dependency::new();
    let layer = FallbackLayer::http()
        .function(|_: &RequestInfo, _| None)
        .alternative(service_fn(|_: RequestInfo| async {
            Err::<Response<http_body_util::Empty<Bytes>>, _>("secondary down too")
        }))
        .build()
        .unwrap();
    let svc = layer.layer(dep.service());

    dep.set(Next::Fail);
    let err = svc.clone().oneshot(get("/")).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "connection reset",
        "not the alternative's error"
    );

    dep.set(Next::Answer(502));
    dep.set_body(&["bad gateway"]);
    let res = svc.oneshot(get("/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(tier_of(&res), None);
    assert_eq!(
        text(res).await,
        "bad gateway",
        "the original response, body intact"
    );
}

#[tokio::test(start_paused = true)]
async fn success_and_ignored_outcomes_pass_through() {
    let dep = Dependency::new();
    let layer = FallbackLayer::http()
        .classifier(seawall_core::HttpClassifier::new().ignore(StatusCode::SERVICE_UNAVAILABLE))
        .value(Response::new(Bytes::from_static(b"static")))
        .build()
        .unwrap();
    let svc = layer.layer(dep.service());

    let res = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(tier_of(&res), None);
    assert_eq!(text(res).await, "fresh");

    dep.set(Next::Answer(503));
    let res = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "ignored, not replaced"
    );
    assert_eq!(tier_of(&res), None);

    dep.set(Next::Answer(404));
    let res = svc.oneshot(get("/")).await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "a success by the classifier"
    );
    assert_eq!(tier_of(&res), None);
}

#[tokio::test(start_paused = true)]
async fn fires_after_an_open_breaker_as_selected() {
    let dep = Dependency::new();
    let causes = Arc::new(Mutex::new(Vec::new()));
    let log = causes.clone();
    let build = |rejections: Rejections| {
        let log = log.clone();
        FallbackLayer::http()
            .on_rejections(rejections)
            .function(move |_: &RequestInfo, cause| {
                log.lock().unwrap().push((cause.kind(), cause.status()));
                Some(Response::new(Bytes::from_static(b"degraded")))
            })
            .build()
            .unwrap()
    };
    dep.set(Next::Reject);

    let res = build(Rejections::all())
        .layer(dep.service())
        .oneshot(get("/"))
        .await
        .unwrap();
    assert_eq!(tier_of(&res), Some(Tier::Function));
    assert_eq!(
        causes.lock().unwrap().as_slice(),
        &[(
            CauseKind::Rejection("circuit_open"),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        )]
    );

    let res = build(Rejections::only(["circuit_open"]))
        .layer(dep.service())
        .oneshot(get("/"))
        .await;
    assert_eq!(tier_of(&res.unwrap()), Some(Tier::Function));

    for rejections in [Rejections::none(), Rejections::except(["circuit_open"])] {
        let err = build(rejections)
            .layer(dep.service())
            .oneshot(get("/"))
            .await
            .unwrap_err();
        assert!(
            err.is::<CircuitOpen>(),
            "rejection passes through untouched: {err}"
        );
    }
    assert_eq!(causes.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn degraded_header_is_configurable() {
    let dep = Dependency::new();
    dep.set(Next::Fail);
    let custom = FallbackLayer::http()
        .degraded_header(Some(HeaderName::from_static("x-served-by")))
        .value(Response::new(Bytes::new()))
        .build()
        .unwrap();
    let res = custom.layer(dep.service()).oneshot(get("/")).await.unwrap();
    assert_eq!(res.headers()["x-served-by"], "static");
    assert!(res.headers().get("seawall-degraded").is_none());
    assert!(res.into_body().is_end_stream());

    let none = FallbackLayer::http()
        .degraded_header(None)
        .value(Response::new(Bytes::new()))
        .build()
        .unwrap();
    let res = none.layer(dep.service()).oneshot(get("/")).await.unwrap();
    assert!(res.headers().is_empty());
    assert_eq!(tier_of(&res), Some(Tier::Value), "the extension stays");
}

#[tokio::test(start_paused = true)]
async fn captured_headers_key_the_cache_per_tenant() {
    let dep = Dependency::new();
    let layer = FallbackLayer::http()
        .capture_headers([HeaderName::from_static("x-tenant")])
        .last_known_good(LastKnownGood::new(), |info: &RequestInfo| {
            let tenant = info.headers().get("x-tenant")?.to_str().ok()?.to_owned();
            Some((tenant, info.uri().to_string()))
        })
        .build()
        .unwrap();
    let svc = layer.layer(dep.service());
    let tenant = |t: &str| {
        Request::get("/profile")
            .header("x-tenant", t)
            .body(())
            .unwrap()
    };
    dep.set_body(&["acme's"]);
    text(svc.clone().oneshot(tenant("acme")).await.unwrap()).await;

    dep.set(Next::Fail);
    let res = svc.clone().oneshot(tenant("acme")).await.unwrap();
    assert_eq!(text(res).await, "acme's");
    assert!(
        svc.clone().oneshot(tenant("globex")).await.is_err(),
        "no cross-tenant answers"
    );
    assert!(
        svc.oneshot(get("/profile")).await.is_err(),
        "no key, no answer"
    );
}

#[tokio::test(start_paused = true)]
async fn alternative_sees_the_captured_request() {
    let dep = Dependency::new();
    dep.set(Next::Fail);
    let layer = FallbackLayer::http()
        .capture_all_headers()
        .alternative(service_fn(|info: RequestInfo| async move {
            let req = info.to_request(());
            let echo = format!(
                "{} {} {}",
                req.method(),
                req.uri(),
                req.headers()["accept-language"].to_str().unwrap()
            );
            Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from(echo))))
        }))
        .build()
        .unwrap();
    let req = Request::post("/q?x=1")
        .header("accept-language", "fr")
        .body(())
        .unwrap();
    let res = layer.layer(dep.service()).oneshot(req).await.unwrap();
    assert_eq!(text(res).await, "POST /q?x=1 fr");
}

#[tokio::test(start_paused = true)]
async fn events_name_the_tier_and_exhaustion() {
    let dep = Dependency::new();
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let layer = FallbackLayer::http()
        .name("recs")
        .listener(FnListener::new(move |e: &FallbackEvent| {
            log.lock().unwrap().push(e.clone());
        }))
        .function(|info: &RequestInfo, _| {
            (info.uri().path() == "/ok").then(|| Response::new(Bytes::new()))
        })
        .build()
        .unwrap();
    let svc = layer.layer(dep.service());
    text(svc.clone().oneshot(get("/ok")).await.unwrap()).await;
    assert!(events.lock().unwrap().is_empty(), "no event on success");

    dep.set(Next::Answer(503));
    svc.clone().oneshot(get("/ok")).await.unwrap();
    svc.oneshot(get("/nothing")).await.unwrap();
    let events = events.lock().unwrap();
    assert_eq!(
        events.as_slice(),
        &[
            FallbackEvent::Served {
                layer: "recs".into(),
                tier: Tier::Function,
                cause: CauseKind::Response(Some(StatusCode::SERVICE_UNAVAILABLE)),
            },
            FallbackEvent::Exhausted {
                layer: "recs".into(),
                cause: CauseKind::Response(Some(StatusCode::SERVICE_UNAVAILABLE)),
            },
        ]
    );
    assert_eq!(events[0].kind(), "fallback_served");
    assert_eq!(events[1].kind(), "fallback_exhausted");
    assert_eq!(events[1].layer(), "recs");
}

#[test]
fn invalid_settings_are_config_errors() {
    let no_tiers = FallbackLayer::http().build().unwrap_err();
    assert_eq!(no_tiers.field(), "tiers");
    let zero = FallbackLayer::http()
        .max_body_size(0)
        .value(Response::new(Bytes::new()))
        .build()
        .unwrap_err();
    assert_eq!(zero.field(), "max_body_size");
    let twice = FallbackLayer::http()
        .last_known_good(LastKnownGood::new(), by_uri)
        .last_known_good(LastKnownGood::new(), by_uri)
        .build()
        .unwrap_err();
    assert_eq!(twice.field(), "last_known_good");
    let capacity = FallbackLayer::http()
        .last_known_good(LastKnownGood::new().capacity(0), by_uri)
        .build()
        .unwrap_err();
    assert_eq!(capacity.field(), "capacity");
    // Before, `moka` panicked at build time on a staleness over 1000 years.
    let forever = FallbackLayer::http()
        .last_known_good(LastKnownGood::new().max_staleness(Duration::MAX), by_uri)
        .build()
        .unwrap_err();
    assert_eq!(forever.field(), "max_staleness");
    assert_eq!(forever.reason(), "must be at most 365 days");
    let bytes = FallbackLayer::http()
        .last_known_good(LastKnownGood::new().max_bytes(0), by_uri)
        .build()
        .unwrap_err();
    assert_eq!(bytes.field(), "max_bytes");
    let name = FallbackLayer::http()
        .name("")
        .value(Response::new(Bytes::new()))
        .build()
        .unwrap_err();
    assert_eq!(name.field(), "name");
    assert!(name.to_string().starts_with("invalid fallback config"));
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct UserId(u64);

#[tokio::test(start_paused = true)]
async fn captured_extensions_key_the_cache_per_user() {
    let dep = Dependency::new();
    let layer = FallbackLayer::http()
        .capture_extension::<UserId>()
        .last_known_good(LastKnownGood::new(), |info: &RequestInfo| {
            info.extensions().get::<UserId>().cloned()
        })
        .build()
        .unwrap();
    let svc = layer.layer(dep.service());
    let as_user = |id: u64| {
        let mut req = get("/feed");
        req.extensions_mut().insert(UserId(id));
        req
    };
    dep.set_body(&["feed of 1"]);
    text(svc.clone().oneshot(as_user(1)).await.unwrap()).await;
    dep.set(Next::Fail);
    assert_eq!(
        text(svc.clone().oneshot(as_user(1)).await.unwrap()).await,
        "feed of 1"
    );
    assert!(svc.oneshot(as_user(2)).await.is_err());
}

/// A one-chunk body that reports its end right after the chunk, as hyper's
/// and `Full`'s do; a server stops polling it then.
#[tokio::test(start_paused = true)]
async fn bodies_that_report_their_end_early_are_stored() {
    let answer = Arc::new(Mutex::new(Some("full body")));
    let source = answer.clone();
    let inner = service_fn(move |_req: Request<()>| {
        let next = source.lock().unwrap().take();
        async move {
            match next {
                Some(body) => Ok(Response::new(http_body_util::Full::new(Bytes::from(body)))),
                None => Err::<_, BoxError>("down".into()),
            }
        }
    });
    let layer = FallbackLayer::http()
        .last_known_good(LastKnownGood::new(), by_uri)
        .build()
        .unwrap();
    let svc = layer.layer(inner);

    let mut body = svc.clone().oneshot(get("/")).await.unwrap().into_body();
    assert!(!body.is_end_stream());
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "full body");
    assert!(body.is_end_stream());
    drop(body); // never polled to `None`

    let res = svc.oneshot(get("/")).await.unwrap();
    assert_eq!(tier_of(&res), Some(Tier::LastKnownGood));
    assert_eq!(res.body().size_hint().exact(), Some(9));
    assert_eq!(text(res).await, "full body");
}

#[tokio::test(start_paused = true)]
async fn empty_bodies_are_stored_and_served_empty() {
    let dep = Dependency::new();
    dep.set_body(&[]);
    let layer = FallbackLayer::http()
        .last_known_good(LastKnownGood::new(), by_uri)
        .build()
        .unwrap();
    let svc = layer.layer(dep.service());
    text(svc.clone().oneshot(get("/empty")).await.unwrap()).await;
    dep.set(Next::Fail);
    let res = svc.oneshot(get("/empty")).await.unwrap();
    assert_eq!(tier_of(&res), Some(Tier::LastKnownGood));
    assert!(res.body().is_end_stream());
    assert_eq!(text(res).await, "");
}

#[tokio::test(start_paused = true)]
async fn only_successes_are_remembered() {
    let dep = Dependency::new();
    let layer = FallbackLayer::http()
        .classifier(seawall_core::HttpClassifier::new().ignore(StatusCode::NOT_FOUND))
        .last_known_good(LastKnownGood::new(), by_uri)
        .build()
        .unwrap();
    let cache = layer.last_known_good().unwrap();
    let svc = layer.layer(dep.service());
    for status in [404, 503, 500] {
        dep.set(Next::Answer(status));
        text(svc.clone().oneshot(get("/x")).await.unwrap()).await;
    }
    cache.run_pending_tasks();
    assert_eq!(cache.entry_count(), 0);
    dep.set(Next::Answer(200));
    text(svc.oneshot(get("/x")).await.unwrap()).await;
    cache.run_pending_tasks();
    assert_eq!(cache.entry_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn rejection_events_name_the_rejection() {
    let dep = Dependency::new();
    dep.set(Next::Reject);
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let layer = FallbackLayer::http()
        .listener(FnListener::new(move |e: &FallbackEvent| {
            log.lock().unwrap().push(e.clone());
        }))
        .value(Response::new(Bytes::new()))
        .build()
        .unwrap();
    layer.layer(dep.service()).oneshot(get("/")).await.unwrap();
    assert_eq!(
        events.lock().unwrap().as_slice(),
        &[FallbackEvent::Served {
            layer: "fallback".into(),
            tier: Tier::Value,
            cause: CauseKind::Rejection("circuit_open"),
        }]
    );
}

#[test]
fn services_fit_axum_and_hyper() {
    fn assert_shareable<T: Clone + Send + Sync + 'static>(_: &T) {}
    fn assert_send<T: Send + 'static>(_: &T) {}
    let layer = FallbackLayer::http()
        .last_known_good(LastKnownGood::new(), by_uri)
        .value(Response::new(Bytes::new()))
        .build()
        .unwrap();
    assert_shareable(&layer);
    let mut svc = layer.layer(Dependency::new().service());
    assert_shareable(&svc);
    let fut = svc.call(get("/"));
    assert_send(&fut);
}

#[tokio::test(start_paused = true)]
async fn no_store_private_and_set_cookie_answers_are_not_stored() {
    let next = Arc::new(Mutex::new(Some(vec![
        ("cache-control", "private, No-Store"),
        ("set-cookie", "session=alice"),
    ])));
    let source = next.clone();
    let inner = service_fn(move |_req: Request<()>| {
        let headers = source.lock().unwrap().take();
        async move {
            let headers = headers.ok_or("down")?;
            let mut res = Response::new(http_body_util::Full::new(Bytes::from("hello")));
            for (name, value) in headers {
                res.headers_mut()
                    .append(name, HeaderValue::from_static(value));
            }
            res.headers_mut()
                .insert("x-kept", HeaderValue::from_static("yes"));
            Ok::<_, BoxError>(res)
        }
    });
    let layer = FallbackLayer::http()
        .last_known_good(LastKnownGood::new(), by_uri)
        .build()
        .unwrap();
    let svc = layer.layer(inner);

    let res = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(
        res.headers()["set-cookie"],
        "session=alice",
        "passes to its client"
    );
    text(res).await;
    assert!(
        svc.clone().oneshot(get("/")).await.is_err(),
        "no-store: nothing kept"
    );

    // An answer that sets a cookie is someone's own: not stored at all.
    *next.lock().unwrap() = Some(vec![("set-cookie", "session=alice")]);
    text(svc.clone().oneshot(get("/")).await.unwrap()).await;
    assert!(
        svc.clone().oneshot(get("/")).await.is_err(),
        "Set-Cookie answer stored"
    );

    // Private: meant for one user, not stored by a shared cache.
    *next.lock().unwrap() = Some(vec![("cache-control", "max-age=60, private")]);
    text(svc.clone().oneshot(get("/")).await.unwrap()).await;
    assert!(
        svc.clone().oneshot(get("/")).await.is_err(),
        "private answer stored"
    );

    *next.lock().unwrap() = Some(vec![("cache-control", "public, max-age=60")]);
    text(svc.clone().oneshot(get("/")).await.unwrap()).await;
    let replay = svc.oneshot(get("/")).await.unwrap();
    assert_eq!(tier_of(&replay), Some(Tier::LastKnownGood));
    assert_eq!(replay.headers()["x-kept"], "yes");
    assert_eq!(text(replay).await, "hello");
}

/// A 304 validates the client's own copy and a 206 carries one range: neither
/// is a whole response another request could be given.
#[tokio::test(start_paused = true)]
async fn not_modified_and_partial_answers_are_not_replayed() {
    let answers = Arc::new(Mutex::new(VecDeque::from([
        Some(StatusCode::NOT_MODIFIED),
        None,
        Some(StatusCode::PARTIAL_CONTENT),
        None,
    ])));
    let source = answers.clone();
    let inner = service_fn(move |_req: Request<()>| {
        let next = source.lock().unwrap().pop_front().flatten();
        async move {
            let status = next.ok_or("down")?;
            let body = if status == StatusCode::PARTIAL_CONTENT {
                "01"
            } else {
                ""
            };
            Ok::<_, BoxError>(
                Response::builder()
                    .status(status)
                    .body(http_body_util::Full::new(Bytes::from(body)))?,
            )
        }
    });
    let layer = FallbackLayer::http()
        .last_known_good(LastKnownGood::new(), by_uri)
        .build()
        .unwrap();
    let svc = layer.layer(inner);
    for status in [StatusCode::NOT_MODIFIED, StatusCode::PARTIAL_CONTENT] {
        let res = svc.clone().oneshot(get("/doc")).await.unwrap();
        assert_eq!(res.status(), status, "passes to its client");
        text(res).await;
        let err = svc.clone().oneshot(get("/doc")).await;
        assert!(err.is_err(), "{status} was replayed");
    }
}

/// RFC 9111 §4.2.3: the age a response already had when it was stored
/// (from a cache upstream) plus the time it was held here.
#[tokio::test(start_paused = true)]
async fn age_adds_the_upstream_age_to_the_time_held() {
    let answers = Arc::new(Mutex::new(VecDeque::from([
        Some("100"),
        None,
        Some("x"),
        None,
    ])));
    let source = answers.clone();
    let inner = service_fn(move |_req: Request<()>| {
        let next = source.lock().unwrap().pop_front().flatten();
        async move {
            let age = next.ok_or("down")?;
            Ok::<_, BoxError>(
                Response::builder()
                    .header("age", age)
                    .body(http_body_util::Full::new(Bytes::from("cached upstream")))?,
            )
        }
    });
    let layer = FallbackLayer::http()
        .last_known_good(LastKnownGood::new(), by_uri)
        .build()
        .unwrap();
    let svc = layer.layer(inner);
    text(svc.clone().oneshot(get("/")).await.unwrap()).await;
    tokio::time::advance(Duration::from_secs(42)).await;
    let res = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(res.headers()["age"], "142");
    assert_eq!(
        res.extensions().get::<Degraded>().unwrap().age,
        Some(Duration::from_secs(42))
    );

    // An unreadable upstream value counts for nothing, and does not panic.
    text(svc.clone().oneshot(get("/")).await.unwrap()).await;
    tokio::time::advance(Duration::from_secs(7)).await;
    let res = svc.oneshot(get("/")).await.unwrap();
    assert_eq!(res.headers()["age"], "7");
}

/// A response to HEAD has no body; a key that ignores the method (here the
/// path) must not turn it into a GET's empty substitute.
#[tokio::test(start_paused = true)]
async fn responses_to_head_are_not_stored() {
    let up = Arc::new(Mutex::new(true));
    let source = up.clone();
    let inner = service_fn(move |req: Request<()>| {
        let up = *source.lock().unwrap();
        async move {
            if !up {
                return Err::<_, BoxError>("down".into());
            }
            let body = if req.method() == Method::HEAD {
                ""
            } else {
                "hello"
            };
            Ok(Response::builder()
                .header("content-length", "5")
                .body(http_body_util::Full::new(Bytes::from(body)))?)
        }
    });
    let layer = FallbackLayer::http()
        .last_known_good(LastKnownGood::new(), |info: &RequestInfo| {
            Some(info.uri().path().to_owned())
        })
        .build()
        .unwrap();
    let cache = layer.last_known_good().unwrap();
    let svc = layer.layer(inner);
    let head = Request::head("/doc").body(()).unwrap();
    text(svc.clone().oneshot(head).await.unwrap()).await;
    cache.run_pending_tasks();
    assert_eq!(cache.entry_count(), 0, "HEAD answer stored");

    // A GET's answer is stored and serves a later HEAD as well.
    text(svc.clone().oneshot(get("/doc")).await.unwrap()).await;
    *up.lock().unwrap() = false;
    let head = Request::head("/doc").body(()).unwrap();
    let res = svc.clone().oneshot(head).await.unwrap();
    assert_eq!(tier_of(&res), Some(Tier::LastKnownGood));
    assert_eq!(text(svc.oneshot(get("/doc")).await.unwrap()).await, "hello");
}

/// A body that fails after some data reaches its client with the error and
/// is not stored, even once the frames before the error fit the limit.
#[tokio::test(start_paused = true)]
async fn bodies_that_fail_midway_are_not_stored() {
    let up = Arc::new(Mutex::new(true));
    let source = up.clone();
    let inner = service_fn(move |_req: Request<()>| {
        let up = *source.lock().unwrap();
        async move {
            if !up {
                return Err::<Response<Frames>, BoxError>("down".into());
            }
            let mut frames = Frames::data(&["half"]);
            frames.0.push_back(Err("reset mid-body".into()));
            Ok(Response::new(frames))
        }
    });
    let layer = FallbackLayer::http()
        .last_known_good(LastKnownGood::new(), by_uri)
        .build()
        .unwrap();
    let cache = layer.last_known_good().unwrap();
    let svc = layer.layer(inner);
    let mut body = svc.clone().oneshot(get("/")).await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "half");
    let err = body.frame().await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "reset mid-body");
    assert!(body.frame().await.is_none());
    cache.run_pending_tasks();
    assert_eq!(cache.entry_count(), 0);
    *up.lock().unwrap() = false;
    assert!(svc.oneshot(get("/")).await.is_err());
}

/// Fields that `Connection` names are hop-by-hop too (RFC 9110 §7.6.1).
#[tokio::test(start_paused = true)]
async fn fields_named_by_connection_are_not_replayed() {
    let up = Arc::new(Mutex::new(true));
    let source = up.clone();
    let inner = service_fn(move |_req: Request<()>| {
        let up = *source.lock().unwrap();
        async move {
            if !up {
                return Err::<_, BoxError>("down".into());
            }
            Ok(Response::builder()
                .header("connection", "X-Hop, keep-alive")
                .header("x-hop", "1")
                .header("keep-alive", "timeout=5")
                .header("x-end-to-end", "kept")
                .body(http_body_util::Full::new(Bytes::from("hello")))?)
        }
    });
    let layer = FallbackLayer::http()
        .last_known_good(LastKnownGood::new(), by_uri)
        .build()
        .unwrap();
    let svc = layer.layer(inner);
    let fresh = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(fresh.headers()["x-hop"], "1", "passes to its client");
    text(fresh).await;
    *up.lock().unwrap() = false;
    let replay = svc.oneshot(get("/")).await.unwrap();
    assert_eq!(tier_of(&replay), Some(Tier::LastKnownGood));
    for name in ["connection", "x-hop", "keep-alive"] {
        assert!(replay.headers().get(name).is_none(), "{name} replayed");
    }
    assert_eq!(replay.headers()["x-end-to-end"], "kept");
}

/// A scripted dependency's next answer: status and response headers.
type Script = Arc<Mutex<Option<(u16, Vec<(&'static str, &'static str)>)>>>;

/// A dependency that answers `next` (status and response headers) once and
/// then fails.
fn scripted(
    next: Script,
) -> impl Service<
    Request<()>,
    Response = Response<http_body_util::Full<Bytes>>,
    Error = BoxError,
    Future = impl Send,
> + Clone {
    service_fn(move |_req: Request<()>| {
        let answer = next.lock().unwrap().take();
        async move {
            let (status, headers) = answer.ok_or("down")?;
            let mut res = Response::builder().status(status);
            for (name, value) in headers {
                res = res.header(name, value);
            }
            Ok::<_, BoxError>(res.body(http_body_util::Full::new(Bytes::from("answer")))?)
        }
    })
}

fn with_header(name: &'static str, value: &'static str) -> Request<()> {
    Request::get("/doc").header(name, value).body(()).unwrap()
}

/// RFC 9111 §3.5: an answer to a request with credentials is someone's own;
/// `Cookie` and `Proxy-Authorization` identify a principal as well. A
/// request's own `no-store` is honoured too.
#[tokio::test(start_paused = true)]
async fn answers_to_requests_with_credentials_or_no_store_are_not_stored() {
    for (name, value) in [
        ("authorization", "Bearer alice"),
        ("proxy-authorization", "Basic YWxpY2U6cHc="),
        ("cookie", "session=alice"),
        ("cache-control", "no-store"),
    ] {
        let next = Arc::new(Mutex::new(Some((200, vec![]))));
        let layer = FallbackLayer::http()
            .last_known_good(LastKnownGood::new(), by_uri)
            .build()
            .unwrap();
        let cache = layer.last_known_good().unwrap();
        let svc = layer.layer(scripted(next.clone()));
        text(svc.clone().oneshot(with_header(name, value)).await.unwrap()).await;
        cache.run_pending_tasks();
        assert_eq!(cache.entry_count(), 0, "{name} answer stored");
        assert!(
            svc.oneshot(get("/doc")).await.is_err(),
            "{name} answer served"
        );
    }
}

/// With the explicit opt-in, answers to requests with credentials are
/// stored — private ones included, as a per-principal cache may — and
/// served to the same key only while `Vary` matches.
#[tokio::test(start_paused = true)]
async fn a_key_that_includes_the_principal_stores_private_answers_for_their_principal() {
    let next = Arc::new(Mutex::new(Some((
        200,
        vec![("cache-control", "private"), ("vary", "Authorization")],
    ))));
    let layer = FallbackLayer::http()
        .capture_headers([http::header::AUTHORIZATION])
        .last_known_good(
            LastKnownGood::new().key_includes_principal(),
            |info: &RequestInfo| {
                let who = info.headers().get("authorization")?.to_str().ok()?;
                Some(who.split_whitespace().last()?.to_owned())
            },
        )
        .build()
        .unwrap();
    let svc = layer.layer(scripted(next.clone()));
    let alice = || with_header("authorization", "Bearer alice");
    text(svc.clone().oneshot(alice()).await.unwrap()).await;
    let res = svc.clone().oneshot(alice()).await.unwrap();
    assert_eq!(tier_of(&res), Some(Tier::LastKnownGood));
    assert_eq!(text(res).await, "answer");
    // Same key ("alice"), another credential: Vary: Authorization differs.
    assert!(svc
        .clone()
        .oneshot(with_header("authorization", "Basic alice"))
        .await
        .is_err());
    assert!(svc.oneshot(get("/doc")).await.is_err(), "no key, no answer");
}

/// A private answer to a request without credentials is not stored even
/// with the opt-in: there is no principal it would be kept for.
#[tokio::test(start_paused = true)]
async fn private_answers_to_anonymous_requests_are_not_stored_even_with_the_opt_in() {
    let next = Arc::new(Mutex::new(Some((200, vec![("cache-control", "private")]))));
    let layer = FallbackLayer::http()
        .last_known_good(LastKnownGood::new().key_includes_principal(), by_uri)
        .build()
        .unwrap();
    let svc = layer.layer(scripted(next));
    text(svc.clone().oneshot(get("/doc")).await.unwrap()).await;
    assert!(svc.oneshot(get("/doc")).await.is_err());
}

/// Only 200, 203 and 204 replace an entry; every other status leaves the
/// good one in place.
#[tokio::test(start_paused = true)]
async fn only_healthy_whole_statuses_replace_an_entry() {
    let next = Arc::new(Mutex::new(Some((200, vec![]))));
    let layer = FallbackLayer::http()
        .last_known_good(LastKnownGood::new(), by_uri)
        .build()
        .unwrap();
    let svc = layer.layer(scripted(next.clone()));
    text(svc.clone().oneshot(get("/doc")).await.unwrap()).await;
    for status in [201, 202, 301, 401, 403, 404, 410] {
        *next.lock().unwrap() = Some((status, vec![]));
        let res = svc.clone().oneshot(get("/doc")).await.unwrap();
        assert_eq!(res.status().as_u16(), status);
        text(res).await;
        let replay = svc.clone().oneshot(get("/doc")).await.unwrap();
        assert_eq!(
            replay.status(),
            StatusCode::OK,
            "{status} replaced the entry"
        );
        assert_eq!(tier_of(&replay), Some(Tier::LastKnownGood));
    }
    for status in [203, 204] {
        *next.lock().unwrap() = Some((status, vec![]));
        text(svc.clone().oneshot(get("/doc")).await.unwrap()).await;
        let replay = svc.clone().oneshot(get("/doc")).await.unwrap();
        assert_eq!(
            replay.status().as_u16(),
            status,
            "{status} is a healthy answer"
        );
    }
}

/// `Vary` names fields the key ignores: each variant is served only to
/// matching requests, and `Vary: *` is never stored.
#[tokio::test(start_paused = true)]
async fn vary_fields_must_match_to_be_served() {
    let next = Arc::new(Mutex::new(Some((
        200,
        vec![("vary", "Accept-Encoding, X-Tenant")],
    ))));
    let layer = FallbackLayer::http()
        .last_known_good(LastKnownGood::new(), by_uri)
        .build()
        .unwrap();
    let svc = layer.layer(scripted(next.clone()));
    let req = |encoding: &'static str, tenant: Option<&'static str>| {
        let mut req = Request::get("/doc").header("accept-encoding", encoding);
        if let Some(tenant) = tenant {
            req = req.header("x-tenant", tenant);
        }
        req.body(()).unwrap()
    };
    text(
        svc.clone()
            .oneshot(req("gzip", Some("acme")))
            .await
            .unwrap(),
    )
    .await;
    assert!(svc.clone().oneshot(req("br", Some("acme"))).await.is_err());
    assert!(svc
        .clone()
        .oneshot(req("gzip", Some("globex")))
        .await
        .is_err());
    assert!(svc.clone().oneshot(req("gzip", None)).await.is_err());
    let res = svc
        .clone()
        .oneshot(req("gzip", Some("acme")))
        .await
        .unwrap();
    assert_eq!(tier_of(&res), Some(Tier::LastKnownGood));
    assert!(res.extensions().get::<Degraded>().is_some());

    *next.lock().unwrap() = Some((200, vec![("vary", "*")]));
    text(svc.clone().oneshot(get("/star")).await.unwrap()).await;
    assert!(svc.oneshot(get("/star")).await.is_err(), "Vary: * stored");
}

/// The layer keeps the byte bound: big answers under many keys never take
/// more than `max_bytes`.
#[tokio::test(start_paused = true)]
async fn the_cache_is_bounded_in_bytes() {
    let dep = Dependency::new();
    dep.set_body(&["0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"]);
    let layer = FallbackLayer::http()
        .last_known_good(
            LastKnownGood::new().capacity(1_000).max_bytes(8 * 1024),
            by_uri,
        )
        .build()
        .unwrap();
    let cache = layer.last_known_good().unwrap();
    let svc = layer.layer(dep.service());
    for i in 0..500 {
        text(svc.clone().oneshot(get(&format!("/k/{i}"))).await.unwrap()).await;
    }
    cache.run_pending_tasks();
    assert!(
        cache.weighted_size() <= 8 * 1024,
        "{}",
        cache.weighted_size()
    );
    assert!(
        (1..500).contains(&cache.entry_count()),
        "{}",
        cache.entry_count()
    );
}

/// Issue #12: a panicking tier never panics the response future nor skips
/// the tiers after it; each panic is reported.
#[tokio::test(start_paused = true)]
async fn panicking_tiers_are_skipped_and_reported() {
    let dep = Dependency::new();
    dep.set(Next::Answer(503));
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let layer = FallbackLayer::http()
        .listener(FnListener::new(move |e: &FallbackEvent| {
            log.lock().unwrap().push(e.clone());
        }))
        .last_known_good(
            LastKnownGood::new(),
            |info: &RequestInfo| -> Option<String> {
                assert!(info.uri().path() != "/", "key function bug");
                None
            },
        )
        .alternative(service_fn(|info: RequestInfo| async move {
            assert!(info.uri().path() != "/", "alternative future bug");
            Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::new())))
        }))
        .function(|_: &RequestInfo, _| -> Option<Response<Bytes>> { panic!("function bug") })
        .value(Response::new(Bytes::from_static(b"static")))
        .build()
        .unwrap();
    let res = layer.layer(dep.service()).oneshot(get("/")).await.unwrap();
    assert_eq!(tier_of(&res), Some(Tier::Value));
    assert_eq!(text(res).await, "static");
    let panicked = |tier| FallbackEvent::TierPanicked {
        layer: "fallback".into(),
        tier,
    };
    assert_eq!(
        events.lock().unwrap().as_slice(),
        &[
            panicked(Tier::LastKnownGood),
            panicked(Tier::Alternative),
            panicked(Tier::Function),
            FallbackEvent::Served {
                layer: "fallback".into(),
                tier: Tier::Value,
                cause: CauseKind::Response(Some(StatusCode::SERVICE_UNAVAILABLE)),
            },
        ]
    );
    assert_eq!(events.lock().unwrap()[0].kind(), "fallback_tier_panicked");
}

/// A service whose `call` panics, as opposed to its future.
#[derive(Clone)]
struct PanicsOnCall;

impl Service<RequestInfo> for PanicsOnCall {
    type Response = Response<http_body_util::Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: RequestInfo) -> Self::Future {
        panic!("alternative call bug")
    }
}

/// A panicking `call`, and a key function that panics while a success is
/// recorded: the failure goes on to the next tier, the success passes
/// through unrecorded, and neither panics the caller.
#[tokio::test(start_paused = true)]
async fn a_panicking_call_or_key_function_never_panics_the_response_future() {
    let dep = Dependency::new();
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let layer = FallbackLayer::http()
        .listener(FnListener::new(move |e: &FallbackEvent| {
            log.lock().unwrap().push(e.clone());
        }))
        .last_known_good(LastKnownGood::new(), |_: &RequestInfo| -> Option<String> {
            panic!("key function bug")
        })
        .alternative(PanicsOnCall)
        .value(Response::new(Bytes::from_static(b"static")))
        .build()
        .unwrap();
    let cache = layer.last_known_good().unwrap();
    let svc = layer.layer(dep.service());

    let fresh = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(tier_of(&fresh), None);
    assert_eq!(text(fresh).await, "fresh");
    cache.run_pending_tasks();
    assert_eq!(cache.entry_count(), 0);

    dep.set(Next::Fail);
    let res = svc.oneshot(get("/")).await.unwrap();
    assert_eq!(text(res).await, "static");
    let tiers: Vec<_> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            FallbackEvent::TierPanicked { tier, .. } => Some(*tier),
            _ => None,
        })
        .collect();
    assert_eq!(
        tiers,
        [Tier::LastKnownGood, Tier::LastKnownGood, Tier::Alternative],
        "recording, then serving, then the alternative"
    );
}
