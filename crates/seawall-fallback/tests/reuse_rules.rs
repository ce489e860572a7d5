//! What the last-known-good tier must never store or replay, whatever the
//! classifier says: answers that forbid reuse without validation (RFC 9111
//! §4.2.4), gRPC answers (their status is in trailers, or they are
//! trailers-only errors), and answers whose `Vary` would be lost.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use seawall_core::BoxError;
use seawall_fallback::{FallbackBody, FallbackLayer, LastKnownGood, RequestInfo};
use tower::util::BoxCloneSyncService;
use tower::{service_fn, Layer, Service, ServiceExt};

type Answer = Box<dyn Fn() -> Response<Full<Bytes>> + Send + Sync>;

/// What the dependency answers next.
#[derive(Clone)]
struct Next(Arc<Mutex<Answer>>);

impl Next {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(Box::new(|| resp(200, &[], "")))))
    }

    fn set(&self, f: impl Fn() -> Response<Full<Bytes>> + Send + Sync + 'static) {
        *self.0.lock().unwrap() = Box::new(f);
    }

    fn service(&self) -> BoxCloneSyncService<Request<()>, Response<Full<Bytes>>, BoxError> {
        let next = self.clone();
        BoxCloneSyncService::new(service_fn(move |_req: Request<()>| {
            let res = (next.0.lock().unwrap())();
            async move { Ok::<_, BoxError>(res) }
        }))
    }
}

fn resp(
    status: u16,
    headers: &[(&'static str, &'static str)],
    body: &'static str,
) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = StatusCode::from_u16(status).unwrap();
    for (name, value) in headers {
        res.headers_mut()
            .append(*name, HeaderValue::from_static(value));
    }
    res
}

#[allow(clippy::unnecessary_wraps)] // the key function's signature
fn by_path(info: &RequestInfo) -> Option<String> {
    Some(info.uri().path().to_owned())
}

/// Calls the layer over the dependency once: the tier that answered (from
/// `seawall-degraded`) and the body.
async fn call<L>(layer: &L, next: &Next, req: Request<()>) -> (Option<String>, String)
where
    L: Layer<BoxCloneSyncService<Request<()>, Response<Full<Bytes>>, BoxError>>,
    L::Service:
        Service<Request<()>, Response = Response<FallbackBody<Full<Bytes>>>, Error = BoxError>,
{
    let res = layer.layer(next.service()).oneshot(req).await.unwrap();
    let tier = res
        .headers()
        .get("seawall-degraded")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (tier, String::from_utf8(body.to_vec()).unwrap())
}

fn layer() -> FallbackLayer<seawall_fallback::Http, seawall_core::HttpClassifier> {
    FallbackLayer::http()
        .last_known_good(LastKnownGood::new(), by_path)
        .value(Response::new(Bytes::from_static(b"static")))
        .build()
        .unwrap()
}

fn get(path: &str) -> Request<()> {
    Request::get(path).body(()).unwrap()
}

/// RFC 9111 §4.2.4: "A cache MUST NOT generate a stale response if it is
/// prohibited by an explicit in-protocol directive (e.g., by a no-cache
/// response directive, a must-revalidate response directive, or an
/// applicable s-maxage or proxy-revalidate response directive)". A
/// last-known-good answer is served exactly when the origin cannot validate
/// it, so none of these is stored.
#[tokio::test]
async fn answers_that_forbid_reuse_without_validation_are_never_replayed() {
    let mut leaked = Vec::new();
    for cc in [
        "no-cache",
        "max-age=0, must-revalidate",
        "max-age=0, proxy-revalidate",
        "s-maxage=0",
        "public, max-age=60, s-maxage=600",
        "max-age=3600, must-revalidate",
        "no-cache=\"set-cookie\", max-age=0, must-revalidate",
        "No-Cache=\"x-user\"",
    ] {
        let next = Next::new();
        let layer = layer();
        next.set(move || resp(200, &[("cache-control", cc)], "balance: 1000"));
        let (tier, body) = call(&layer, &next, get("/account")).await;
        assert_eq!((tier, body.as_str()), (None, "balance: 1000"));
        next.set(|| resp(503, &[], "down"));
        let (tier, body) = call(&layer, &next, get("/account")).await;
        if tier.as_deref() != Some("static") {
            leaked.push(format!("{cc:?} -> {tier:?} {body:?}"));
        }
    }
    assert!(
        leaked.is_empty(),
        "replayed without validation: {leaked:#?}"
    );

    // A plain freshness lifetime does not forbid serving stale: still stored.
    let next = Next::new();
    let layer = layer();
    next.set(|| resp(200, &[("cache-control", "public, max-age=0")], "prices"));
    call(&layer, &next, get("/prices")).await;
    next.set(|| resp(503, &[], "down"));
    let (tier, body) = call(&layer, &next, get("/prices")).await;
    assert_eq!(
        (tier.as_deref(), body.as_str()),
        (Some("last-known-good"), "prices")
    );
}

fn grpc_call() -> Request<()> {
    Request::post("/pkg.Svc/Get")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap()
}

/// The gRPC form of a `401` is a trailers-only `grpc-status: 16`
/// (UNAUTHENTICATED): HTTP `200`, empty body, no trailers. `GrpcClassifier`
/// calls it a success; it must not become the answer every caller gets for
/// the rest of an outage.
#[tokio::test]
async fn grpc_trailers_only_errors_are_never_stored_as_last_known_good() {
    let next = Next::new();
    let layer = FallbackLayer::http()
        .classifier(seawall_core::GrpcClassifier::new())
        .last_known_good(LastKnownGood::new(), by_path)
        .value(Response::new(Bytes::from_static(b"static")))
        .build()
        .unwrap();
    next.set(|| {
        resp(
            200,
            &[
                ("content-type", "application/grpc"),
                ("grpc-status", "16"),
                ("grpc-message", "no credentials"),
            ],
            "",
        )
    });
    let (tier, _) = call(&layer, &next, grpc_call()).await;
    assert_eq!(tier, None);
    // The dependency goes down: trailers-only UNAVAILABLE.
    next.set(|| {
        resp(
            200,
            &[("content-type", "application/grpc"), ("grpc-status", "14")],
            "",
        )
    });
    let (tier, _) = call(&layer, &next, grpc_call()).await;
    assert_eq!(
        tier.as_deref(),
        Some("static"),
        "a stored UNAUTHENTICATED was served as the last-known-good answer"
    );
}

/// With the default `HttpClassifier` a trailers-only UNAVAILABLE is an HTTP
/// `200` success; it is not stored either, nor is any other gRPC answer.
#[tokio::test]
async fn grpc_answers_are_not_stored_by_the_default_http_classifier() {
    for headers in [
        &[("content-type", "application/grpc"), ("grpc-status", "14")][..],
        &[
            ("content-type", "application/grpc+proto"),
            ("grpc-status", "0"),
        ],
        &[
            ("content-type", "application/grpc-web"),
            ("grpc-status", "5"),
        ],
        &[("grpc-status", "7")],
    ] {
        let next = Next::new();
        let layer = layer();
        next.set(move || resp(200, headers, ""));
        call(&layer, &next, grpc_call()).await;
        next.set(|| resp(503, &[], ""));
        let (tier, _) = call(&layer, &next, grpc_call()).await;
        assert_eq!(
            tier.as_deref(),
            Some("static"),
            "gRPC answer {headers:?} stored and replayed"
        );
    }
}

/// RFC 9111 §4.1: a stored response's `Vary` must match. The stored copy
/// drops every field the response's `Connection` names; were `Vary` among
/// them, tenant a's variant would match every request. Such an answer is
/// not stored (RFC 9110 §7.6.1 forbids nominating end-to-end fields).
#[tokio::test]
async fn a_connection_nominating_vary_never_turns_a_variant_into_a_match_all() {
    for connection in ["vary", "keep-alive, Vary", "cache-control"] {
        let next = Next::new();
        let layer = layer();
        next.set(move || {
            resp(
                200,
                &[("vary", "x-tenant"), ("connection", connection)],
                "tenant a's price list",
            )
        });
        let req = |t: &'static str| {
            Request::get("/prices")
                .header("x-tenant", t)
                .body(())
                .unwrap()
        };
        call(&layer, &next, req("a")).await;
        next.set(|| resp(503, &[], ""));
        let (tier, body) = call(&layer, &next, req("b")).await;
        assert_eq!(
            tier.as_deref(),
            Some("static"),
            "Connection: {connection}: tenant b got {body:?}"
        );
    }
}
