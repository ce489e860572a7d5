//! Run with: cargo run -p seawall-examples --example fallback
//!
//! A shop calls two services that go down halfway. The fallback layer
//! answers from the last good response, then from a static value, and marks
//! each substitute with `seawall-degraded`.
//!
//! - `GET /recs/{user}`: public recommendations, the same for everyone who
//!   asks for that path, so the path is the key.
//! - `GET /me/orders`: each user's own orders, behind authentication. An
//!   authentication layer outside the fallback turns the bearer token into
//!   a `User` extension (or answers `401`); the last-known-good key includes
//!   that user and says so (`key_includes_principal`), so a stored answer
//!   only ever reaches the user it was for. Without that opt-in, answers to
//!   requests carrying `Authorization` are never stored.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request as AxumRequest};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response as AxumResponse};
use axum::routing::get;
use axum::{Extension, Router};
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use seawall::fallback::{FallbackLayer, LastKnownGood, RequestInfo};
use seawall::http::RejectionResponseLayer;
use seawall::BoxError;
use tower::ServiceBuilder;

/// The principal the authentication layer established.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct User(&'static str);

/// Checks the bearer token; a real service would verify a signature or ask
/// an identity provider.
async fn authenticate(mut req: AxumRequest, next: Next) -> AxumResponse {
    let user = match req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes) {
        Some(b"Bearer ana-token") => User("ana"),
        Some(b"Bearer bob-token") => User("bob"),
        _ => return (StatusCode::UNAUTHORIZED, "who are you?").into_response(),
    };
    req.extensions_mut().insert(user);
    next.run(req).await
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let down = Arc::new(AtomicBool::new(false));

    let recs_down = down.clone();
    let recommendations = Router::new()
        .route(
            "/recs/{user}",
            get(move |Path(user): Path<String>| {
                let down = recs_down.load(Ordering::SeqCst);
                async move {
                    if down {
                        (StatusCode::SERVICE_UNAVAILABLE, String::from("overloaded"))
                    } else {
                        (StatusCode::OK, format!("[\"socks for {user}\"]"))
                    }
                }
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(RejectionResponseLayer::new())
                .layer(
                    FallbackLayer::http()
                        .name("recommendations")
                        .last_known_good(
                            LastKnownGood::new()
                                .capacity(10_000)
                                .max_staleness(Duration::from_secs(600)),
                            |info: &RequestInfo| {
                                (info.method() == Method::GET).then(|| info.uri().path().to_owned())
                            },
                        )
                        .value(Response::new(Bytes::from_static(b"[]")))
                        .build()?,
                ),
        );

    let orders_down = down.clone();
    let orders = Router::new()
        .route(
            "/me/orders",
            get(move |Extension(User(user)): Extension<User>| {
                let down = orders_down.load(Ordering::SeqCst);
                async move {
                    if down {
                        return (StatusCode::SERVICE_UNAVAILABLE, "orders down").into_response();
                    }
                    (
                        [("cache-control", "private"), ("vary", "Authorization")],
                        format!("[\"order 42 of {user}\"]"),
                    )
                        .into_response()
                }
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(RejectionResponseLayer::new())
                .layer(
                    FallbackLayer::http()
                        .name("orders")
                        .capture_extension::<User>()
                        .last_known_good(
                            // The key includes the principal, and says so.
                            LastKnownGood::new().key_includes_principal(),
                            |info: &RequestInfo| {
                                let user = info.extensions().get::<User>()?.clone();
                                (info.method() == Method::GET)
                                    .then(|| (user, info.uri().path().to_owned()))
                            },
                        )
                        .value(Response::new(Bytes::from_static(b"[]")))
                        .build()?,
                ),
        )
        // Outside the fallback: a stored answer is served only to a caller
        // this layer let through.
        .layer(middleware::from_fn(authenticate));

    let app = recommendations.merge(orders);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let fetch = |path: &'static str, token: Option<&'static str>| {
        let client = client.clone();
        async move {
            let mut req = Request::get(format!("http://{addr}{path}"));
            if let Some(token) = token {
                req = req.header(AUTHORIZATION, format!("Bearer {token}"));
            }
            let res = client.request(req.body(Full::default())?).await?;
            let degraded = res
                .headers()
                .get("seawall-degraded")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            let status = res.status();
            let body = res.into_body().collect().await?.to_bytes();
            println!(
                "GET {path:<11} as {:<9} -> {status} degraded={degraded:<16} {}",
                token.unwrap_or("anonymous"),
                String::from_utf8_lossy(&body)
            );
            Ok::<_, BoxError>(())
        }
    };

    fetch("/recs/ana", None).await?;
    fetch("/me/orders", Some("ana-token")).await?;
    println!("-- the services go down --");
    down.store(true, Ordering::SeqCst);
    fetch("/recs/ana", None).await?;
    fetch("/recs/bob", None).await?;
    fetch("/me/orders", Some("ana-token")).await?;
    fetch("/me/orders", Some("bob-token")).await?;
    fetch("/me/orders", Some("forged")).await?;
    fetch("/me/orders", None).await?;

    server.abort();
    Ok(())
}
