//! Which requests share a record by default: one principal's retries always
//! do (however its cookies are framed, whatever cookies rotate beside its
//! `Authorization`), two principals never do, and a tenant function that
//! finds no tenant does not pool credentialed callers.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use seawall_idempotency::{IdempotencyLayer, RequestBody};
use tower::{service_fn, Layer, Service, ServiceExt};

/// A handler that counts its runs and answers `charge #<run>`.
fn counting(
    n: Arc<AtomicUsize>,
) -> impl Service<
    Request<RequestBody<Full<Bytes>>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send {
    service_fn(move |_req: Request<RequestBody<Full<Bytes>>>| {
        let n = n.clone();
        async move {
            let i = n.fetch_add(1, Ordering::SeqCst) + 1;
            let mut res = Response::new(Full::new(Bytes::from(format!("charge #{i}"))));
            *res.status_mut() = StatusCode::CREATED;
            Ok::<_, Infallible>(res)
        }
    })
}

fn post(key: &str, fields: &[(&'static str, &'static str)]) -> Request<Full<Bytes>> {
    let mut b = Request::post("/charges").header("idempotency-key", key);
    for (name, value) in fields {
        b = b.header(*name, *value);
    }
    b.body(Full::new(Bytes::from_static(b"{\"amount\":100}")))
        .unwrap()
}

/// Sends `req` through `layer` over the counting handler: whether it was a
/// replay, and the body.
async fn send(
    layer: &IdempotencyLayer,
    n: &Arc<AtomicUsize>,
    req: Request<Full<Bytes>>,
) -> (bool, String) {
    let res = layer.layer(counting(n.clone())).oneshot(req).await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let replayed = res.headers().get("idempotent-replayed").is_some();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (replayed, String::from_utf8(body.to_vec()).unwrap())
}

/// RFC 9113 §8.2.3: an HTTP/2 client may split `Cookie` into one field per
/// pair; the retry (over HTTP/1.1 after the connection broke, or through a
/// proxy that joins them) carries the same cookies in one field. Same
/// principal: the handler runs once.
#[tokio::test]
async fn the_same_cookies_crumbled_or_joined_are_one_principal() {
    let n = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::new();
    let mut first = post("order-42", &[]);
    first
        .headers_mut()
        .append("cookie", "session=alice".parse().unwrap());
    first
        .headers_mut()
        .append("cookie", "theme=dark".parse().unwrap());
    let (replayed, body) = send(&layer, &n, first).await;
    assert!(!replayed);
    for retry in ["session=alice; theme=dark", "session=alice;theme=dark"] {
        let (replayed, again) = send(&layer, &n, post("order-42", &[("cookie", retry)])).await;
        assert!(replayed, "{retry:?} ran the handler again");
        assert_eq!(again, body);
    }
    assert_eq!(n.load(Ordering::SeqCst), 1);
    // Other cookies are another principal.
    let (replayed, _) = send(&layer, &n, post("order-42", &[("cookie", "session=bob")])).await;
    assert!(!replayed);
    assert_eq!(n.load(Ordering::SeqCst), 2);
}

/// A retry whose only difference is an affinity cookie the load balancer
/// re-set between attempts, with the same `Authorization`: one execution.
/// Another bearer token with the same cookie is still another principal.
#[tokio::test]
async fn a_rotated_cookie_beside_the_same_authorization_replays() {
    let n = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::new();
    let alice = |cookie| {
        post(
            "order-43",
            &[("authorization", "Bearer alice"), ("cookie", cookie)],
        )
    };
    let (replayed, body) = send(&layer, &n, alice("AWSALB=one")).await;
    assert!(!replayed);
    let (replayed, again) = send(&layer, &n, alice("AWSALB=two")).await;
    assert!(
        replayed,
        "same bearer token, the retry ran the handler twice"
    );
    assert_eq!(again, body);
    let (replayed, bob) = send(
        &layer,
        &n,
        post(
            "order-43",
            &[("authorization", "Bearer bob"), ("cookie", "AWSALB=one")],
        ),
    )
    .await;
    assert!(!replayed);
    assert_ne!(bob, body);
    let (replayed, _) = send(
        &layer,
        &n,
        post(
            "order-43",
            &[
                ("proxy-authorization", "Basic alice"),
                ("cookie", "AWSALB=one"),
            ],
        ),
    )
    .await;
    assert!(!replayed, "proxy credentials are a principal of their own");
    assert_eq!(n.load(Ordering::SeqCst), 3);
}

/// A tenant function that finds no tenant (the route's auth did not set
/// one) falls back to the credential scope: Alice and Bob, both without a
/// tenant, never share a record; anonymous requests still share theirs.
#[tokio::test]
async fn a_request_without_a_tenant_falls_back_to_its_credentials() {
    let n = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::builder()
        .tenant(|parts| {
            parts
                .headers
                .get("x-tenant")?
                .to_str()
                .ok()
                .map(str::to_owned)
        })
        .build()
        .unwrap();
    let (_, alice) = send(&layer, &n, post("k", &[("authorization", "Bearer alice")])).await;
    let (replayed, bob) = send(&layer, &n, post("k", &[("authorization", "Bearer bob")])).await;
    assert!(!replayed, "Bob got Alice's record: {bob:?}");
    assert_ne!(alice, bob);
    let (replayed, again) = send(&layer, &n, post("k", &[("authorization", "Bearer alice")])).await;
    assert!(replayed);
    assert_eq!(again, alice);
    // A tenant and the same credentials without one are different scopes.
    let (replayed, _) = send(
        &layer,
        &n,
        post(
            "k",
            &[("authorization", "Bearer alice"), ("x-tenant", "acme")],
        ),
    )
    .await;
    assert!(!replayed);
    let (_, anonymous) = send(&layer, &n, post("k", &[])).await;
    let (replayed, again) = send(&layer, &n, post("k", &[])).await;
    assert!(replayed);
    assert_eq!(again, anonymous);
    assert_eq!(n.load(Ordering::SeqCst), 4);
}
