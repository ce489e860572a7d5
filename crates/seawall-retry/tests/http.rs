//! HTTP mode: idempotency rules, body replay and server hints, in virtual
//! time.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use seawall_core::event::FnListener;
use seawall_core::BoxError;
use seawall_retry::{
    Attempt, Backoff, GiveUpReason, HttpReplay, JitterRetryLayer, ReplayBody, RetryCause,
    RetryEvent, IDEMPOTENCY_KEY,
};
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};

/// What the fake server saw of one attempt.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    attempt: Attempt,
    body: Bytes,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A server answering the i-th call with `script[i]` (the last entry
/// repeats), recording every request it saw.
fn server<B>(
    script: Vec<Response<String>>,
) -> (
    Log,
    impl tower::Service<
            Request<ReplayBody<B>>,
            Response = Response<String>,
            Error = BoxError,
            Future = impl Send,
        > + Clone,
)
where
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let log: Log = Arc::default();
    let seen = log.clone();
    let script = Arc::new(script);
    let svc = service_fn(move |req: Request<ReplayBody<B>>| {
        let seen = seen.clone();
        let script = script.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map_err(Into::into)?.to_bytes();
            let mut log = seen.lock().unwrap();
            log.push(Seen {
                method: parts.method,
                attempt: Attempt::from_extensions(&parts.extensions),
                body,
            });
            let i = (log.len() - 1).min(script.len() - 1);
            let r = &script[i];
            let mut res = Response::builder().status(r.status());
            for (k, v) in r.headers() {
                res = res.header(k, v);
            }
            Ok::<_, BoxError>(res.body(r.body().clone()).unwrap())
        }
    });
    (log, svc)
}

fn status(code: u16) -> Response<String> {
    Response::builder()
        .status(code)
        .body(String::new())
        .unwrap()
}

fn status_with(code: u16, header: &str, value: &str) -> Response<String> {
    Response::builder()
        .status(code)
        .header(header, value)
        .body(String::new())
        .unwrap()
}

fn layer() -> seawall_retry::JitterRetryBuilder<HttpReplay, seawall_core::HttpClassifier> {
    JitterRetryLayer::builder()
        .http()
        .max_attempts(3)
        .backoff(Backoff::exponential(Duration::from_millis(10)))
        .no_budget()
}

fn get() -> Request<Full<Bytes>> {
    Request::get("/items/1")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn get_5xx_is_retried_and_4xx_is_not() {
    let (log, svc) = server(vec![status(502), status(503), status(200)]);
    let res = layer()
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let attempts: Vec<_> = log
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.attempt.get())
        .collect();
    assert_eq!(attempts, [1, 2, 3]);

    let (log, svc) = server(vec![status(404)]);
    let res = layer()
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_after_in_seconds_sets_the_least_delay() {
    let (log, svc) = server(vec![status_with(503, "retry-after", "3"), status(200)]);
    let start = Instant::now();
    let res = layer()
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(log.lock().unwrap().len(), 2);
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn retry_after_as_an_http_date_is_honoured() {
    // An HTTP-date has one-second resolution, and the layer measures it
    // against the wall clock when the response arrives: the wait lies between
    // the date seen from after the call and from before it (tokio's timer
    // adds up to a millisecond). Bounds on wall-clock readings, not fixed
    // ones, so a loaded machine cannot make this fail.
    let before = SystemTime::now();
    let date = httpdate::fmt_http_date(before + Duration::from_secs(5));
    let when = httpdate::parse_http_date(&date).unwrap();
    let (log, svc) = server(vec![status_with(429, "retry-after", &date), status(200)]);
    let start = Instant::now();
    let res = layer()
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap();
    let after = SystemTime::now();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(log.lock().unwrap().len(), 2);
    let waited = start.elapsed();
    let least = when.duration_since(after).unwrap_or_default();
    let most = when.duration_since(before).unwrap() + Duration::from_millis(1);
    assert!(
        waited >= least
            && waited <= most
            && most <= Duration::from_secs(5) + Duration::from_millis(1),
        "{waited:?} not in [{least:?}, {most:?}]"
    );
}

#[tokio::test(start_paused = true)]
async fn grpc_pushback_is_honoured() {
    let (log, svc) = server(vec![
        status_with(503, "grpc-retry-pushback-ms", "1500"),
        status(200),
    ]);
    let start = Instant::now();
    layer()
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(log.lock().unwrap().len(), 2);
    assert_eq!(start.elapsed(), Duration::from_millis(1500));
}

#[tokio::test(start_paused = true)]
async fn a_negative_grpc_pushback_means_do_not_retry() {
    let (log, svc) = server(vec![
        status_with(503, "grpc-retry-pushback-ms", "-1"),
        status(200),
    ]);
    let res = layer()
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(log.lock().unwrap().len(), 1);

    // A garbage Retry-After is ignored (RFC 9110): the backoff applies.
    let (log, svc) = server(vec![status_with(503, "retry-after", "soon"), status(200)]);
    let res = layer()
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(log.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_429_hint_beyond_the_cap_ends_retrying() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let log_events = events.clone();
    let listener =
        FnListener::new(move |e: &RetryEvent| log_events.lock().unwrap().push(e.clone()));
    let (log, svc) = server(vec![status_with(429, "retry-after", "120"), status(200)]);
    let start = Instant::now();
    let res = layer()
        .max_delay(Duration::from_secs(10))
        .listener(listener)
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "120");
    assert_eq!(log.lock().unwrap().len(), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(matches!(
        events.lock().unwrap()[..],
        [RetryEvent::RetriesExhausted {
            reason: GiveUpReason::HintTooLong,
            attempts: 1,
            ..
        }]
    ));
}

#[tokio::test(start_paused = true)]
async fn a_hint_past_the_deadline_ends_retrying() {
    let (log, svc) = server(vec![status_with(503, "retry-after", "5"), status(200)]);
    let res = layer()
        .max_delay(Duration::from_secs(30))
        .deadline(Duration::from_secs(4))
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn post_without_key_is_not_retried() {
    let (log, svc) = server(vec![status(503), status(200)]);
    let req = Request::post("/orders")
        .body(Full::new(Bytes::from_static(b"{\"qty\":1}")))
        .unwrap();
    let res = layer()
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].body, "{\"qty\":1}");
}

#[tokio::test(start_paused = true)]
async fn post_with_key_replays_the_identical_body() {
    let (log, svc) = server(vec![status(500), status(503), status(201)]);
    let body = Bytes::from_static(b"{\"order\":42,\"amount\":\"19.99\"}");
    let req = Request::post("/orders")
        .header(IDEMPOTENCY_KEY, "8e03978e-40d5-43e8-bc93-6894a57f9324")
        .body(Full::new(body.clone()))
        .unwrap();
    let res = layer()
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 3);
    for (i, seen) in log.iter().enumerate() {
        assert_eq!(seen.method, Method::POST);
        assert_eq!(seen.body, body, "attempt {}", i + 1);
        assert_eq!(seen.attempt, Attempt::new(i as u32 + 1));
    }
}

#[tokio::test(start_paused = true)]
async fn streaming_body_is_buffered_when_small() {
    let (log, svc) = server(vec![status(503), status(200)]);
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(b"he"))),
        Ok(Frame::data(Bytes::from_static(b"llo"))),
    ];
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let req = Request::put("/doc").body(body).unwrap();
    let res = layer()
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|s| s.body == "hello"));
}

#[tokio::test(start_paused = true)]
async fn large_bodies_are_sent_once_intact() {
    // Announced larger than the limit.
    let (log, svc) = server(vec![status(503), status(200)]);
    let big = Bytes::from(vec![b'x'; 100 * 1024]);
    let req = Request::put("/blob").body(Full::new(big.clone())).unwrap();
    let res = layer()
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(log.lock().unwrap().len(), 1);
    assert_eq!(log.lock().unwrap()[0].body, big);

    // Streaming, of unknown size, found larger while buffering.
    let (log, svc) = server(vec![status(503), status(200)]);
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = (0..8u8)
        .map(|i| Ok(Frame::data(Bytes::from(vec![i; 1000]))))
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let req = Request::put("/blob").body(body).unwrap();
    let svc = layer()
        .replay(HttpReplay::new().body_limit(2500))
        .build()
        .unwrap()
        .layer(svc);
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 1);
    let expected: Vec<u8> = (0..8u8).flat_map(|i| vec![i; 1000]).collect();
    assert_eq!(log[0].body.as_ref(), expected.as_slice());
}

#[tokio::test(start_paused = true)]
async fn any_method_retries_post_without_key() {
    let (log, svc) = server(vec![status(503), status(200)]);
    let req = Request::post("/rpc")
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    let res = layer()
        .replay(HttpReplay::new().any_method(true))
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(log.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn transport_errors_are_retried_and_reported_as_errors() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let log_events = events.clone();
    let listener =
        FnListener::new(move |e: &RetryEvent| log_events.lock().unwrap().push(e.clone()));
    let calls = Arc::new(Mutex::new(0u32));
    let seen = calls.clone();
    let svc = service_fn(move |_req: Request<ReplayBody<Full<Bytes>>>| {
        let seen = seen.clone();
        async move {
            let mut n = seen.lock().unwrap();
            *n += 1;
            if *n == 1 {
                Err::<Response<String>, BoxError>("connection refused".into())
            } else {
                Ok(status(200))
            }
        }
    });
    let res = layer()
        .listener(listener)
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(*calls.lock().unwrap(), 2);
    assert!(matches!(
        events.lock().unwrap()[..],
        [RetryEvent::RetryScheduled {
            cause: RetryCause::Error,
            attempt: 1,
            ..
        }]
    ));
}

#[tokio::test(start_paused = true)]
async fn failed_responses_are_reported_as_responses() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let log_events = events.clone();
    let listener =
        FnListener::new(move |e: &RetryEvent| log_events.lock().unwrap().push(e.clone()));
    let (_, svc) = server(vec![status_with(503, "retry-after", "1"), status(200)]);
    layer()
        .listener(listener)
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert!(matches!(
        events.lock().unwrap()[..],
        [RetryEvent::RetryScheduled { cause: RetryCause::Response, hint: Some(h), delay, .. }]
            if h == Duration::from_secs(1) && delay == h
    ));
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_beyond_a_day_ends_retrying_instead_of_being_ignored() {
    // `seawall_core` refuses to parse hints longer than a day; such a hint is
    // still the server asking for more than any cap, not a malformed header.
    let two_days = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2 * 86_400));
    for value in ["86401", "18446744073709551616", two_days.as_str()] {
        let (log, svc) = server(vec![status_with(503, "retry-after", value), status(200)]);
        let res = layer()
            .max_delay(Duration::from_secs(10))
            .build()
            .unwrap()
            .layer(svc)
            .oneshot(get())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{value}");
        assert_eq!(log.lock().unwrap().len(), 1, "{value}");
    }
}

#[tokio::test(start_paused = true)]
async fn do_not_retry_hints_end_retrying_even_without_a_delay_cap() {
    for (header, value) in [("grpc-retry-pushback-ms", "-1"), ("retry-after", "86401")] {
        let (log, svc) = server(vec![status_with(503, header, value), status(200)]);
        let start = Instant::now();
        let res = layer()
            .max_delay(Duration::MAX)
            .build()
            .unwrap()
            .layer(svc)
            .oneshot(get())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{header}");
        assert_eq!(log.lock().unwrap().len(), 1, "{header}");
        assert_eq!(start.elapsed(), Duration::ZERO, "{header}");
    }
}

/// An `Idempotency-Key` licenses a retry only when it is one usable key:
/// an empty, blank, `""` (an empty structured-field string) or repeated
/// key is refused by a deduplicating server and ignored by any other, so
/// such a POST is sent once.
#[tokio::test(start_paused = true)]
async fn post_with_an_unusable_key_is_not_retried() {
    let unusable: [&[&[u8]]; 6] = [
        &[b""],
        &[b"   "],
        &[b"\t"],
        &[b"\"\""],
        &[b"\"\";p=1"],
        &[b"k-1", b"k-2"],
    ];
    for values in unusable {
        let mut headers = http::HeaderMap::new();
        for v in values {
            headers.append(IDEMPOTENCY_KEY, http::HeaderValue::from_bytes(v).unwrap());
        }
        assert!(
            !HttpReplay::new().may_retry(&Method::POST, &headers),
            "{values:?}"
        );
        let (log, svc) = server(vec![status(503), status(201)]);
        let mut req = Request::post("/orders")
            .body(Full::new(Bytes::from_static(b"{\"qty\":1}")))
            .unwrap();
        *req.headers_mut() = headers;
        let res = layer()
            .build()
            .unwrap()
            .layer(svc)
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{values:?}");
        assert_eq!(log.lock().unwrap().len(), 1, "{values:?} sent twice");
    }
    // One usable key, bare or as a string, is retried.
    for value in ["k-1", " k-1 ", "\"order-42\""] {
        let mut headers = http::HeaderMap::new();
        headers.insert(IDEMPOTENCY_KEY, value.parse().unwrap());
        assert!(
            HttpReplay::new().may_retry(&Method::POST, &headers),
            "{value}"
        );
    }
}
