//! `FallbackLayer` on a real axum server over loopback: a failing handler's
//! answers are replaced by the last good body or a static value, marked for
//! the client; when no tier answers, the client sees the original failure.
//! The last-known-good tier keeps to RFC 9111's shared-cache rules: one
//! caller's private answer never reaches another, a `401` never replaces a
//! good answer, and `Vary` keeps variants apart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Path;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use seawall::fallback::{FallbackLayer, LastKnownGood, RequestInfo};
use seawall::http::RejectionResponseLayer;
use seawall::{BoxError, HttpClassifier};
use seawall_circuit_breaker::{CircuitBreakerLayer, State as BreakerState};
use seawall_tests::{TestClient, TestServer};
use tower::ServiceBuilder;

/// A recommendations route that answers 503 while `down` is set.
fn recommendations(down: Arc<AtomicBool>) -> Router {
    Router::new().route(
        "/recs/{user}",
        get(move |Path(user): Path<String>| {
            let down = down.load(Ordering::SeqCst);
            async move {
                if down {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "recommender down".to_owned(),
                    )
                } else {
                    (StatusCode::OK, format!("[\"for {user}\"]"))
                }
            }
        }),
    )
}

#[tokio::test]
async fn last_known_good_then_static_value_over_http() -> Result<(), BoxError> {
    let down = Arc::new(AtomicBool::new(false));
    let fallback = FallbackLayer::http()
        .name("recommendations")
        .last_known_good(LastKnownGood::new(), |info: &RequestInfo| {
            (info.method() == Method::GET).then(|| info.uri().path().to_owned())
        })
        .value(Response::new(Bytes::from_static(b"[]")))
        .build()?;
    let router = recommendations(down.clone()).layer(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new())
            .layer(fallback),
    );
    let server = TestServer::start(router).await?;
    let client = TestClient::new();

    let fresh = client.get(&server.url("/recs/ana")).await?;
    assert_eq!(fresh.head.status, StatusCode::OK);
    assert!(fresh.head.headers.get("seawall-degraded").is_none());
    assert_eq!(fresh.body, "[\"for ana\"]");

    down.store(true, Ordering::SeqCst);
    let stale = client.get(&server.url("/recs/ana")).await?;
    assert_eq!(stale.head.status, StatusCode::OK);
    assert_eq!(stale.head.headers["seawall-degraded"], "last-known-good");
    assert!(stale.head.headers.contains_key("age"));
    assert_eq!(stale.body, "[\"for ana\"]");

    let never_seen = client.get(&server.url("/recs/bob")).await?;
    assert_eq!(never_seen.head.status, StatusCode::OK);
    assert_eq!(never_seen.head.headers["seawall-degraded"], "static");
    assert_eq!(never_seen.body, "[]");
    Ok(())
}

#[tokio::test]
async fn exhausted_tiers_return_the_original_failure_over_http() -> Result<(), BoxError> {
    let down = Arc::new(AtomicBool::new(true));
    let fallback = FallbackLayer::http()
        .function(|info: &RequestInfo, _| {
            (info.uri().path() == "/recs/vip")
                .then(|| Response::new(Bytes::from_static(b"[\"curated\"]")))
        })
        .build()?;
    let router = recommendations(down).layer(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new())
            .layer(fallback),
    );
    let server = TestServer::start(router).await?;
    let client = TestClient::new();

    let vip = client.get(&server.url("/recs/vip")).await?;
    assert_eq!(vip.head.headers["seawall-degraded"], "function");
    assert_eq!(vip.body, "[\"curated\"]");

    let other = client.get(&server.url("/recs/joe")).await?;
    assert_eq!(other.head.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(other.head.headers.get("seawall-degraded").is_none());
    assert_eq!(other.body, "recommender down");
    Ok(())
}

/// What the account route sends Alice: private, varying by credentials, and
/// carrying a secret.
const ALICE_SECRET: &str = "{\"card\":\"4111 1111 1111 1111\"}";

/// An account route that checks its own credentials (only Alice's token is
/// valid), answers Alice's private data, and answers 503 while `down`.
fn account(down: Arc<AtomicBool>) -> Router {
    Router::new().route(
        "/account",
        get(move |headers: http::HeaderMap| {
            let down = down.load(Ordering::SeqCst);
            async move {
                if down {
                    return Response::builder()
                        .status(StatusCode::SERVICE_UNAVAILABLE)
                        .body(axum::body::Body::from("account service down"))
                        .expect("valid response");
                }
                let authorized = headers
                    .get(http::header::AUTHORIZATION)
                    .is_some_and(|v| v == "Bearer alice-token");
                if !authorized {
                    return Response::builder()
                        .status(StatusCode::UNAUTHORIZED)
                        .body(axum::body::Body::from("who are you?"))
                        .expect("valid response");
                }
                Response::builder()
                    .header("cache-control", "private, max-age=60")
                    .header("vary", "Authorization")
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(ALICE_SECRET))
                    .expect("valid response")
            }
        }),
    )
}

/// The breaker that opens once the account service fails twice in a row,
/// and stays open for the test.
fn account_breaker() -> CircuitBreakerLayer<HttpClassifier> {
    CircuitBreakerLayer::builder()
        .name("account")
        .classifier(HttpClassifier::new())
        .consecutive_failures(2)
        .open_duration(Duration::from_secs(600))
        .build()
        .expect("valid breaker")
}

fn with_token(url: &str, token: Option<&str>) -> Result<Request<Full<Bytes>>, http::Error> {
    let mut req = Request::get(url);
    if let Some(token) = token {
        req = req.header(http::header::AUTHORIZATION, token);
    }
    req.body(Full::new(Bytes::new()))
}

/// The review's scenario, with the key the README used to show
/// (`info.uri()`): Alice's private answer is not stored, so once the
/// breaker opens neither an anonymous caller nor one with a bogus token
/// gets her body; they get the static tier.
#[tokio::test]
async fn alices_private_answer_never_reaches_another_caller() -> Result<(), BoxError> {
    let down = Arc::new(AtomicBool::new(false));
    let fallback = FallbackLayer::http()
        .name("account")
        .last_known_good(LastKnownGood::new(), |info: &RequestInfo| {
            (info.method() == Method::GET).then(|| info.uri().clone())
        })
        .value(Response::new(Bytes::from_static(b"{}")))
        .build()?;
    let cache = fallback.last_known_good().expect("tier configured");
    let breaker = account_breaker();
    let state = breaker.handle();
    let router = account(down.clone()).layer(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new())
            .layer(fallback)
            .layer(breaker),
    );
    let server = TestServer::start(router).await?;
    let client = TestClient::new();
    let url = server.url("/account");

    let alice = client
        .send(with_token(&url, Some("Bearer alice-token"))?)
        .await?;
    assert_eq!(alice.head.status, StatusCode::OK);
    assert_eq!(alice.body, ALICE_SECRET);
    cache.run_pending_tasks();
    assert_eq!(cache.entry_count(), 0, "Alice's private answer was stored");

    down.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        client.send(with_token(&url, None)?).await?;
    }
    assert_eq!(state.state(), BreakerState::Open);

    for token in [None, Some("Bearer bogus"), Some("Bearer alice-token")] {
        let res = client.send(with_token(&url, token)?).await?;
        assert_ne!(res.body, ALICE_SECRET, "{token:?} got Alice's body");
        assert_eq!(res.head.headers["seawall-degraded"], "static", "{token:?}");
        assert_eq!(res.body, "{}");
    }
    Ok(())
}

/// With a key that includes the principal, and saying so, Alice's own
/// answer is kept for Alice: while the breaker is open she gets it, and
/// an anonymous caller or a wrong token still gets only the static tier.
#[tokio::test]
async fn a_key_with_the_principal_serves_each_caller_only_their_own() -> Result<(), BoxError> {
    let down = Arc::new(AtomicBool::new(false));
    let fallback = FallbackLayer::http()
        .name("account")
        .capture_headers([http::header::AUTHORIZATION])
        .last_known_good(
            LastKnownGood::new().key_includes_principal(),
            |info: &RequestInfo| {
                let principal = info.headers().get(http::header::AUTHORIZATION)?.clone();
                (info.method() == Method::GET).then(|| (principal, info.uri().path().to_owned()))
            },
        )
        .value(Response::new(Bytes::from_static(b"{}")))
        .build()?;
    let breaker = account_breaker();
    let state = breaker.handle();
    let router = account(down.clone()).layer(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new())
            .layer(fallback)
            .layer(breaker),
    );
    let server = TestServer::start(router).await?;
    let client = TestClient::new();
    let url = server.url("/account");

    let alice = client
        .send(with_token(&url, Some("Bearer alice-token"))?)
        .await?;
    assert_eq!(alice.body, ALICE_SECRET);
    // A 401 for a bogus token is not stored under that token either.
    let bogus = client.send(with_token(&url, Some("Bearer bogus"))?).await?;
    assert_eq!(bogus.head.status, StatusCode::UNAUTHORIZED);

    down.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        client.send(with_token(&url, None)?).await?;
    }
    assert_eq!(state.state(), BreakerState::Open);

    let alice = client
        .send(with_token(&url, Some("Bearer alice-token"))?)
        .await?;
    assert_eq!(alice.head.headers["seawall-degraded"], "last-known-good");
    assert_eq!(alice.body, ALICE_SECRET);
    for token in [None, Some("Bearer bogus"), Some("Bearer alice-token2")] {
        let res = client.send(with_token(&url, token)?).await?;
        assert_eq!(res.head.headers["seawall-degraded"], "static", "{token:?}");
        assert_eq!(res.body, "{}", "{token:?}");
    }
    Ok(())
}

/// A public route whose next answer is set by the test.
fn news(next: Arc<Mutex<StatusCode>>) -> Router {
    Router::new().route(
        "/news",
        get(move || {
            let status = *next.lock().expect("lock");
            async move {
                let body = if status == StatusCode::OK {
                    "headlines"
                } else {
                    "not for you"
                };
                (status, body)
            }
        }),
    )
}

/// `401`, `403` and `404` are successes to the classifier (the dependency
/// is up) but no stand-in for a healthy answer: none replaces or removes
/// the good entry, so the outage that follows is still answered with it.
#[tokio::test]
async fn a_401_403_or_404_never_overwrites_a_good_entry() -> Result<(), BoxError> {
    let next = Arc::new(Mutex::new(StatusCode::OK));
    let fallback = FallbackLayer::http()
        .last_known_good(LastKnownGood::new(), |info: &RequestInfo| {
            Some(info.uri().path().to_owned())
        })
        .build()?;
    let router = news(next.clone()).layer(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new())
            .layer(fallback),
    );
    let server = TestServer::start(router).await?;
    let client = TestClient::new();
    let url = server.url("/news");

    assert_eq!(client.get(&url).await?.body, "headlines");
    for status in [
        StatusCode::UNAUTHORIZED,
        StatusCode::FORBIDDEN,
        StatusCode::NOT_FOUND,
        StatusCode::SERVICE_UNAVAILABLE,
    ] {
        *next.lock().expect("lock") = status;
        let res = client.get(&url).await?;
        if status.is_server_error() {
            assert_eq!(res.head.headers["seawall-degraded"], "last-known-good");
            assert_eq!(res.body, "headlines");
        } else {
            assert_eq!(res.head.status, status, "passes to its client");
            assert_eq!(res.body, "not for you");
        }
    }
    *next.lock().expect("lock") = StatusCode::SERVICE_UNAVAILABLE;
    let res = client.get(&url).await?;
    assert_eq!(res.head.status, StatusCode::OK);
    assert_eq!(res.head.headers["seawall-degraded"], "last-known-good");
    assert_eq!(res.body, "headlines");
    Ok(())
}

/// A greeting that varies by `Accept-Language` (or, on `/anything`, by
/// everything), failing while `down`.
fn greetings(down: Arc<AtomicBool>) -> Router {
    let answer = move |vary: &'static str, headers: http::HeaderMap| {
        let down = down.load(Ordering::SeqCst);
        async move {
            if down {
                return (StatusCode::SERVICE_UNAVAILABLE, [("vary", vary)], "down").into_response();
            }
            let french = headers
                .get("accept-language")
                .is_some_and(|v| v.as_bytes().starts_with(b"fr"));
            let text = if french { "bonjour" } else { "hello" };
            (StatusCode::OK, [("vary", vary)], text).into_response()
        }
    };
    let any = answer.clone();
    Router::new()
        .route(
            "/greeting",
            get(move |headers: http::HeaderMap| answer("Accept-Language", headers)),
        )
        .route(
            "/anything",
            get(move |headers: http::HeaderMap| any("*", headers)),
        )
}

fn in_language(url: &str, language: &str) -> Result<Request<Full<Bytes>>, http::Error> {
    Request::get(url)
        .header("accept-language", language)
        .body(Full::new(Bytes::new()))
}

/// A stored variant is served only to requests whose `Vary` fields match;
/// `Vary: *` is never stored.
#[tokio::test]
async fn vary_keeps_variants_apart() -> Result<(), BoxError> {
    let down = Arc::new(AtomicBool::new(false));
    let fallback = FallbackLayer::http()
        .last_known_good(LastKnownGood::new(), |info: &RequestInfo| {
            Some(info.uri().path().to_owned())
        })
        .value(Response::new(Bytes::from_static(b"...")))
        .build()?;
    let router = greetings(down.clone()).layer(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new())
            .layer(fallback),
    );
    let server = TestServer::start(router).await?;
    let client = TestClient::new();
    let greeting = server.url("/greeting");
    let anything = server.url("/anything");

    let fr = client.send(in_language(&greeting, "fr")?).await?;
    assert_eq!(fr.body, "bonjour");
    assert_eq!(
        client.send(in_language(&anything, "fr")?).await?.body,
        "bonjour"
    );

    down.store(true, Ordering::SeqCst);
    let en = client.send(in_language(&greeting, "en")?).await?;
    assert_eq!(en.head.headers["seawall-degraded"], "static");
    assert_eq!(en.body, "...");
    let none = client.get(&greeting).await?;
    assert_eq!(none.body, "...", "no Accept-Language is another variant");
    let fr = client.send(in_language(&greeting, "fr")?).await?;
    assert_eq!(fr.head.headers["seawall-degraded"], "last-known-good");
    assert_eq!(fr.body, "bonjour");

    let star = client.send(in_language(&anything, "fr")?).await?;
    assert_eq!(
        star.head.headers["seawall-degraded"], "static",
        "Vary: * stored"
    );
    assert_eq!(star.body, "...");
    Ok(())
}
