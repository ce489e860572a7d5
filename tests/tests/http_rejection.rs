//! `RejectionResponseLayer` on a real axum server over loopback: a layer's
//! `Rejection` reaches a real HTTP client as its status, `Retry-After` and a
//! problem+json body with seawall's own text only; an unknown error as a 500;
//! an application error wrapping a rejection never shows its own text.

use std::error::Error;
use std::fmt;
use std::future::{ready, Ready};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::{routing::get, Router};
use http::{header, StatusCode};
use seawall::{BoxError, Rejected, Rejection, ServiceBuilderExt};
use seawall_tests::{TestClient, TestServer};
use tower::{Layer, Service, ServiceBuilder};

/// The kind of refusal a seawall layer produces: 503, come back in 7 s.
#[derive(Debug)]
struct Closed(Rejected);

impl Closed {
    fn new() -> Self {
        Self(
            Rejected::new(
                "test_closed",
                StatusCode::SERVICE_UNAVAILABLE,
                Some(Duration::from_secs(7)),
            )
            .with_detail("the test gate is closed"),
        )
    }
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the test gate is closed")
    }
}

impl Error for Closed {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.0)
    }
}

impl Rejection for Closed {
    fn rejected(&self) -> &Rejected {
        &self.0
    }
}

/// An application error whose message holds secrets, wrapping whatever the
/// layers below returned.
#[derive(Debug)]
struct UpstreamFailed(BoxError);

impl fmt::Display for UpstreamFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "GET https://pay.example/v1/charge?api_key=sk_live_SECRET via \
             postgres://admin:hunter2@db failed: {}",
            self.0
        )
    }
}

impl Error for UpstreamFailed {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

/// How a [`Gate`] refuses.
#[derive(Clone, Copy)]
enum Refusal {
    /// With `Closed`, a seawall rejection.
    Known,
    /// With an error no seawall layer knows.
    Unknown,
    /// With an application error that wraps `Closed`.
    Wrapped,
}

/// A layer that refuses every request.
#[derive(Clone, Copy)]
struct Gate {
    refusal: Refusal,
}

impl Gate {
    const fn new(refusal: Refusal) -> Self {
        Self { refusal }
    }
}

impl<S> Layer<S> for Gate {
    type Service = GateService;
    fn layer(&self, _inner: S) -> GateService {
        GateService {
            refusal: self.refusal,
        }
    }
}

#[derive(Clone, Copy)]
struct GateService {
    refusal: Refusal,
}

impl<R> Service<R> for GateService {
    type Response = http::Response<axum::body::Body>;
    type Error = BoxError;
    type Future = Ready<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: R) -> Self::Future {
        let err: BoxError = match self.refusal {
            Refusal::Known => Box::new(Closed::new()),
            Refusal::Unknown => "disk on fire at /var/secret".into(),
            Refusal::Wrapped => Box::new(UpstreamFailed(Box::new(Closed::new()))),
        };
        ready(Err(err))
    }
}

async fn hello() -> &'static str {
    "hello"
}

#[tokio::test]
async fn rejection_reaches_a_real_client_as_503_with_retry_after() {
    let router = Router::new()
        .route(
            "/closed",
            get(hello).layer(
                ServiceBuilder::new()
                    .rejection_response()
                    .layer(Gate::new(Refusal::Known)),
            ),
        )
        .route(
            "/broken",
            get(hello).layer(
                ServiceBuilder::new()
                    .rejection_response()
                    .layer(Gate::new(Refusal::Unknown)),
            ),
        )
        .route(
            "/open",
            get(hello).layer(ServiceBuilder::new().rejection_response()),
        );
    let server = TestServer::start(router).await.unwrap();
    let client = TestClient::new();

    let res = client.get(&server.url("/closed")).await.unwrap();
    assert_eq!(res.head.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.head.headers[header::RETRY_AFTER], "7");
    assert_eq!(
        res.head.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let doc: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
    assert_eq!(doc["status"], 503);
    assert_eq!(doc["title"], "Service Unavailable");
    assert_eq!(doc["kind"], "test_closed");
    assert_eq!(doc["detail"], "the test gate is closed");

    let res = client.get(&server.url("/broken")).await.unwrap();
    assert_eq!(res.head.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(res.head.headers.get(header::RETRY_AFTER).is_none());
    let doc: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
    assert_eq!(doc["status"], 500);
    assert_eq!(doc["kind"], "internal");
    assert!(!String::from_utf8_lossy(&res.body).contains("secret"));

    let res = client.get(&server.url("/open")).await.unwrap();
    assert_eq!(res.head.status, StatusCode::OK);
    assert_eq!(&res.body[..], b"hello");
}

#[tokio::test]
async fn wrapping_error_text_never_reaches_the_client() {
    let router = Router::new().route(
        "/wrapped",
        get(hello).layer(
            ServiceBuilder::new()
                .rejection_response()
                .layer(Gate::new(Refusal::Wrapped)),
        ),
    );
    let server = TestServer::start(router).await.unwrap();
    let res = TestClient::new()
        .get(&server.url("/wrapped"))
        .await
        .unwrap();
    // The rejection inside still decides status and Retry-After ...
    assert_eq!(res.head.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.head.headers[header::RETRY_AFTER], "7");
    // ... and its own fixed text is the only text sent.
    let body = String::from_utf8_lossy(&res.body).into_owned();
    for secret in ["SECRET", "api_key", "pay.example", "hunter2", "postgres"] {
        assert!(!body.contains(secret), "{secret} leaked: {body}");
    }
    for (_, value) in &res.head.headers {
        assert!(!String::from_utf8_lossy(value.as_bytes()).contains("SECRET"));
    }
    assert_eq!(
        body,
        r#"{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"the test gate is closed","kind":"test_closed"}"#
    );
}

#[tokio::test]
async fn route_service_accepts_the_infallible_stack() {
    // No HandleErrorLayer: the stack's error type is Infallible.
    let svc = ServiceBuilder::new()
        .rejection_response()
        .timeout(Duration::from_millis(20))
        .service_fn(|_req: http::Request<axum::body::Body>| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, BoxError>(http::Response::new(axum::body::Body::empty()))
        });
    let router = Router::new().route_service("/slow", svc);
    let server = TestServer::start(router).await.unwrap();
    let res = TestClient::new().get(&server.url("/slow")).await.unwrap();
    assert_eq!(res.head.status, StatusCode::GATEWAY_TIMEOUT);
    let doc: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
    assert_eq!(doc["kind"], "timeout");
}
