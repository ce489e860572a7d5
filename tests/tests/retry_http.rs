//! The retry layer end to end: a real hyper client under `JitterRetryLayer`
//! against a real axum server over loopback, and the retry layer's errors
//! through `RejectionResponseLayer`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use seawall::http::RejectionResponseLayer;
use seawall::retry::{Attempt, Backoff, HttpReplay, Jitter, JitterRetryLayer, ReplayBody};
use seawall::BoxError;
use seawall_tests::TestServer;
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};

/// What the server saw of one attempt: its key, its `x-attempt`, its body.
type Seen = (Option<String>, Option<String>, Bytes);

#[derive(Clone, Default)]
struct Recorded {
    hits: Arc<AtomicU32>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// 503 to the first two attempts, then 201 echoing the body.
async fn flaky_orders(
    State(rec): State<Recorded>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Bytes) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    rec.seen
        .lock()
        .unwrap()
        .push((header("idempotency-key"), header("x-attempt"), body.clone()));
    if rec.hits.fetch_add(1, Ordering::SeqCst) < 2 {
        (StatusCode::SERVICE_UNAVAILABLE, Bytes::from_static(b"busy"))
    } else {
        (StatusCode::CREATED, body)
    }
}

#[tokio::test]
async fn keyed_post_is_replayed_byte_for_byte_over_loopback() {
    let rec = Recorded::default();
    let app = Router::new()
        .route("/orders", post(flaky_orders))
        .with_state(rec.clone());
    let server = TestServer::start(app).await.unwrap();

    let retry = JitterRetryLayer::builder()
        .http()
        .max_attempts(3)
        // Zero delays: this test talks to a real socket, so it must not wait.
        .backoff(Backoff::constant(Duration::ZERO))
        .max_delay(Duration::ZERO)
        .jitter(Jitter::None)
        .build()
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    let mut svc = ServiceBuilder::new()
        .layer(retry)
        .map_request(|mut req: Request<ReplayBody<Full<Bytes>>>| {
            let n = Attempt::of(&req).get();
            req.headers_mut().insert("x-attempt", n.into());
            req
        })
        .service(client);

    let body = Bytes::from(format!("{{\"order\":7,\"note\":\"{}\"}}", "x".repeat(4000)));
    let req = Request::post(server.url("/orders"))
        .header("idempotency-key", "order-7")
        .body(Full::new(body.clone()))
        .unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), body);

    let seen = rec.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    for (i, (key, attempt, got)) in seen.iter().enumerate() {
        assert_eq!(key.as_deref(), Some("order-7"));
        assert_eq!(attempt.as_deref(), Some((i + 1).to_string().as_str()));
        assert_eq!(got, &body);
    }

    // Without a key the same POST is sent once and its 503 returned.
    rec.hits.store(0, Ordering::SeqCst);
    let req = Request::post(server.url("/orders"))
        .body(Full::new(body.clone()))
        .unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rec.seen.lock().unwrap().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn an_attempt_timeout_becomes_a_504_under_rejection_response() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let slow = service_fn(move |_req: Request<ReplayBody<Full<Bytes>>>| {
        seen.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"late"))))
        }
    });
    let retry = JitterRetryLayer::builder()
        .http()
        .max_attempts(2)
        .attempt_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let svc = RejectionResponseLayer::new().layer(retry.layer(slow));
    let req = Request::get("/slow").body(Full::new(Bytes::new())).unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

fn zero_delay_retry() -> JitterRetryLayer<HttpReplay, seawall::core::HttpClassifier> {
    JitterRetryLayer::builder()
        .http()
        .max_attempts(3)
        // Zero delays: this test talks to a real socket, so it must not wait.
        .backoff(Backoff::constant(Duration::ZERO))
        .max_delay(Duration::ZERO)
        .jitter(Jitter::None)
        .build()
        .unwrap()
}

async fn keyed_post(
    svc: impl Service<
        Request<Full<Bytes>>,
        Response = Response<hyper::body::Incoming>,
        Error = BoxError,
    >,
    url: String,
    body: &Bytes,
) -> (StatusCode, Bytes) {
    let req = Request::post(url)
        .header("idempotency-key", "order-8")
        .body(Full::new(body.clone()))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    let status = res.status();
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn a_hyper_client_built_without_annotation_needs_no_glue() {
    let rec = Recorded::default();
    let app = Router::new()
        .route("/orders", post(flaky_orders))
        .with_state(rec.clone());
    let server = TestServer::start(app).await.unwrap();

    // No body type named anywhere: the client's is inferred from what the
    // retry layer hands it (`ReplayBody<Full<Bytes>>`).
    let client = Client::builder(TokioExecutor::new()).build_http();
    let svc = ServiceBuilder::new()
        .layer(zero_delay_retry())
        .service(client);

    let body = Bytes::from("x".repeat(10_000));
    let (status, echoed) = keyed_post(svc, server.url("/orders"), &body).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(echoed, body);
    let seen = rec.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "two 503s, then 201");
    assert!(seen.iter().all(|(_, _, got)| got == &body));
}

#[tokio::test]
async fn an_existing_full_bytes_client_is_wrapped_as_it_is_with_original_body() {
    let rec = Recorded::default();
    let app = Router::new()
        .route("/orders", post(flaky_orders))
        .with_state(rec.clone());
    let server = TestServer::start(app).await.unwrap();

    // A client built for the caller's own body type, as most code has one.
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let retry = JitterRetryLayer::builder()
        .http()
        .replay(HttpReplay::new().original_body())
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::ZERO))
        .max_delay(Duration::ZERO)
        .jitter(Jitter::None)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(retry).service(client);

    let body = Bytes::from(format!("{{\"order\":8,\"note\":\"{}\"}}", "y".repeat(3000)));
    let (status, echoed) = keyed_post(svc, server.url("/orders"), &body).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(echoed, body);
    let seen = rec.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "replayed byte for byte after two 503s");
    for (key, _, got) in &seen {
        assert_eq!(key.as_deref(), Some("order-8"));
        assert_eq!(got, &body);
    }
}

#[tokio::test(start_paused = true)]
async fn a_deadline_that_cuts_an_attempt_becomes_a_504_under_rejection_response() {
    let slow = service_fn(|_req: Request<ReplayBody<Full<Bytes>>>| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"late"))))
    });
    let retry = JitterRetryLayer::builder()
        .http()
        .deadline(Duration::from_secs(2))
        .attempt_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let svc = RejectionResponseLayer::new().layer(retry.layer(slow));
    let start = tokio::time::Instant::now();
    let req = Request::get("/slow").body(Full::new(Bytes::new())).unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}
