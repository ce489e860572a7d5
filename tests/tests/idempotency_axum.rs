//! `IdempotencyLayer` on a real axum server over loopback, under
//! `RejectionResponseLayer`: replay headers survive HTTP; a handler that
//! panics turns into a 500 problem document whose key is already free for
//! the retry; records are scoped by the caller's credentials; a stalled
//! upload gets 408.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::Full;
use seawall::http::RejectionResponseLayer;
use seawall::idempotency::IdempotencyLayer;
use seawall_tests::{TestClient, TestServer};
use tower::ServiceBuilder;

async fn flaky(
    State(runs): State<Arc<AtomicUsize>>,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
    assert!(n != 1, "the first run crashes");
    (
        StatusCode::CREATED,
        [(header::SET_COOKIE, "session=secret")],
        format!("created on run {n}"),
    )
}

fn charge(server: &TestServer) -> Request<Full<Bytes>> {
    Request::post(server.url("/charges"))
        .header("idempotency-key", "\"order-1\"")
        .body(Full::new(Bytes::from_static(b"amount=5")))
        .expect("valid request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_is_a_500_and_the_retry_runs_then_replays() {
    let runs = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::builder().build().expect("valid settings");
    let router = Router::new()
        .route("/charges", post(flaky))
        .with_state(runs.clone())
        .layer(
            ServiceBuilder::new()
                .layer(RejectionResponseLayer::new())
                .layer(layer),
        );
    let server = TestServer::start(router).await.expect("a loopback port");
    let client = TestClient::new();

    let crashed = client.send(charge(&server)).await.expect("a response");
    assert_eq!(crashed.head.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        crashed.head.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let doc: serde_json::Value = serde_json::from_slice(&crashed.body).expect("json");
    assert_eq!(doc["kind"], "handler_panicked");

    // The claim was released before the 500 was sent: the client's
    // immediate retry runs the handler, with no 409 and no waiting.
    let retry = client.send(charge(&server)).await.expect("a response");
    assert_eq!(retry.head.status, StatusCode::CREATED);
    assert_eq!(retry.body, "created on run 2");
    assert!(retry.head.headers.get("idempotent-replayed").is_none());

    let replay = client.send(charge(&server)).await.expect("a response");
    assert_eq!(replay.head.status, StatusCode::CREATED);
    assert_eq!(replay.head.headers["idempotent-replayed"], "true");
    assert_eq!(replay.head.headers[header::CONTENT_LENGTH], "16");
    assert!(replay.head.headers.get(header::SET_COOKIE).is_none());
    assert_eq!(replay.body, "created on run 2");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

async fn charge_for(
    State(runs): State<Arc<AtomicUsize>>,
    headers: http::HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
    let who = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous");
    (
        StatusCode::CREATED,
        format!(
            "charge #{n} for {who}: {}, card 4242",
            String::from_utf8_lossy(&body)
        ),
    )
}

/// Issue #11: Bob sending Alice's key value `order-42` used to get her
/// charge replayed. Scoped by credentials by default, each principal runs
/// its own request and replays only its own answer; an anonymous caller and
/// one with a bogus token get neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principals_never_share_a_record_over_http() {
    let runs = Arc::new(AtomicUsize::new(0));
    let router = Router::new()
        .route("/charges", post(charge_for))
        .with_state(runs.clone())
        .layer(
            ServiceBuilder::new()
                .layer(RejectionResponseLayer::new())
                .layer(IdempotencyLayer::new()),
        );
    let server = TestServer::start(router).await.expect("a loopback port");
    let client = TestClient::new();
    let send = |auth: Option<&'static str>| {
        // A bare key, as Stripe clients send it.
        let mut b = Request::post(server.url("/charges")).header("idempotency-key", "order-42");
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        let req = b
            .body(Full::new(Bytes::from_static(b"amount=100")))
            .expect("valid request");
        let client = client.clone();
        async move { client.send(req).await.expect("a response") }
    };
    let alice = send(Some("Bearer alice")).await;
    assert_eq!(alice.head.status, StatusCode::CREATED);
    let bob = send(Some("Bearer bob")).await;
    let anonymous = send(None).await;
    let bogus = send(Some("Bearer mallory")).await;
    for other in [&bob, &anonymous, &bogus] {
        assert_eq!(other.head.status, StatusCode::CREATED);
        assert!(other.head.headers.get("idempotent-replayed").is_none());
        assert_ne!(other.body, alice.body, "never Alice's charge");
        assert!(!String::from_utf8_lossy(&other.body).contains("alice"));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    let alice_again = send(Some("Bearer alice")).await;
    assert_eq!(alice_again.head.headers["idempotent-replayed"], "true");
    assert_eq!(alice_again.body, alice.body);
    let bob_again = send(Some("Bearer bob")).await;
    assert_eq!(bob_again.head.headers["idempotent-replayed"], "true");
    assert_eq!(bob_again.body, bob.body);
    assert_eq!(runs.load(Ordering::SeqCst), 4);
}

/// A client that sends its headers and part of the body, then nothing: the
/// layer answers 408 at its body timeout and closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_gets_408_over_http() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let runs = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::builder()
        .request_body_timeout(std::time::Duration::from_millis(200))
        .build()
        .expect("valid settings");
    let router = Router::new()
        .route("/charges", post(charge_for))
        .with_state(runs.clone())
        .layer(
            ServiceBuilder::new()
                .layer(RejectionResponseLayer::new())
                .layer(layer),
        );
    let server = TestServer::start(router).await.expect("a loopback port");
    let mut conn = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    conn.write_all(
        b"POST /charges HTTP/1.1\r\nhost: x\r\nidempotency-key: up-1\r\n\
          content-length: 100\r\n\r\namount=",
    )
    .await
    .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        conn.read_to_end(&mut answer),
    )
    .await
    .expect("the server answers and closes")
    .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("idempotency_body_timeout"), "{answer}");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}
