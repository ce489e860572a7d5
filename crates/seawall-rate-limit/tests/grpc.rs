//! A gRPC request refused by the rate limiter under the facade's
//! `RejectionResponseLayer`, built with `ServiceBuilder`: a trailers-only
//! answer with `grpc-status: 8` (RESOURCE_EXHAUSTED) and the exact wait as
//! `grpc-retry-pushback-ms`, where a plain HTTP request gets a `429`.

use std::convert::Infallible;

use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::Either;
use seawall::http::RejectionResponseLayer;
use seawall::rate_limit::{key, Limit, Quota, RateLimitLayer};
use tower::{service_fn, ServiceBuilder, ServiceExt};

fn request(content_type: &str) -> Request<()> {
    Request::builder()
        .header("x-tenant", "t1")
        .header("content-type", content_type)
        .body(())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn refused_grpc_request_gets_resource_exhausted_with_pushback() {
    // 4 a second (one unit every 250 ms), burst 1.
    let limit = RateLimitLayer::builder()
        .limit(Limit::per_key(
            "tenant",
            Quota::per_second(4).burst(1),
            key::header("x-tenant"),
        ))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(RejectionResponseLayer::new())
        .layer(limit)
        .service(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new("reply"))
        }));

    // The burst passes untouched.
    let res = svc
        .clone()
        .oneshot(request("application/grpc"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get("grpc-status").is_none());
    assert!(matches!(res.into_body(), Either::Left("reply")));

    // The next is refused: trailers-only RESOURCE_EXHAUSTED.
    let res = svc
        .clone()
        .oneshot(request("application/grpc+proto"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "gRPC answers are HTTP 200");
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert_eq!(res.headers()["grpc-status"], "8");
    assert_eq!(res.headers()["grpc-retry-pushback-ms"], "250");
    assert!(res.headers().get("retry-after").is_none());
    match res.body() {
        Either::Right(body) => assert!(body.is_end_stream(), "trailers-only: no body"),
        Either::Left(_) => panic!("the inner service answered a refused request"),
    }

    // The same refusal for a plain HTTP request is a 429.
    let res = svc.oneshot(request("application/json")).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "1");
}
