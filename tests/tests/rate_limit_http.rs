//! The rate limiter in an axum app keyed by the client's IP (axum's
//! `ConnectInfo`), answered through the facade's `RejectionResponseLayer`:
//! admitted answers and the `429` alike carry the IETF `RateLimit` fields,
//! and the `429` a `Retry-After` and a problem+json body of seawall's own.

use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use http::StatusCode;
use seawall::http::RejectionResponseLayer;
use seawall::rate_limit::{key, Limit, Quota, RateLimitLayer};
use seawall_tests::TestClient;
use tower::ServiceBuilder;

#[tokio::test]
async fn every_answer_carries_the_fields_and_the_429_a_retry_after() {
    let limit = RateLimitLayer::builder()
        .limit(Limit::per_key("ip", Quota::per_hour(2), key::peer_ip))
        .headers()
        .build()
        .expect("valid settings");
    let app = Router::new().route("/", get(|| async { "ok" })).layer(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new())
            .layer(limit),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    let client = TestClient::new();
    let url = format!("http://{addr}/");
    for remaining in [1, 0] {
        let res = client.get(&url).await.expect("answer");
        assert_eq!(res.head.status, StatusCode::OK);
        assert_eq!(res.head.headers["ratelimit-policy"], r#""ip";q=2;w=3600"#);
        assert_eq!(
            res.head.headers["ratelimit"],
            format!(r#""ip";r={remaining};t={}"#, 1800 * (2 - remaining)).as_str()
        );
    }
    let res = client.get(&url).await.expect("answer");
    assert_eq!(res.head.status, StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = res.head.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1799..=1800).contains(&retry_after), "{retry_after}");
    assert_eq!(res.head.headers["ratelimit-policy"], r#""ip";q=2;w=3600"#);
    assert_eq!(res.head.headers["ratelimit"], r#""ip";r=0;t=3600"#);
    let body: serde_json::Value = serde_json::from_slice(&res.body).expect("json");
    assert_eq!(body["kind"], "rate_limited");
    assert_eq!(body["status"], 429);
    server.abort();
}
