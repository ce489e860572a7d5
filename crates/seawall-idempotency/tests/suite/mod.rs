//! The behaviour of the layer, run against every store.
//!
//! Each check builds a layer with its own name, so checks that share one
//! store (Redis, PostgreSQL) never see each other's records.

#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use seawall_idempotency::store::StoreFuture;
use seawall_idempotency::{
    Claim, Completion, FencingToken, Fingerprint, HandlerPanicked, IdempotencyLayer, KeepPolicy,
    RequestBody, ResponseBody, Scope, Store, StoreKey, StoredResponse,
};
use tokio::sync::Semaphore;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceExt};

/// Forces the record of a key to expire now (its lease or retention ends).
pub type Expire = Arc<dyn Fn(StoreKey) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The handler of the checks: counts its runs and answers `run N`.
///
/// Request headers steer it: `x-status` sets the status, `x-gate` makes it
/// wait for a permit of `gate`, `x-panic` panics, `x-big` answers a body of
/// that many bytes.
#[derive(Clone)]
pub struct Handler {
    pub runs: Arc<AtomicUsize>,
    pub entered: Arc<Semaphore>,
    pub gate: Arc<Semaphore>,
}

impl Handler {
    pub fn new() -> Self {
        Self {
            runs: Arc::new(AtomicUsize::new(0)),
            entered: Arc::new(Semaphore::new(0)),
            gate: Arc::new(Semaphore::new(0)),
        }
    }

    pub fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    async fn handle(
        self,
        req: Request<RequestBody<Full<Bytes>>>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        let h = req.headers().clone();
        let body = req
            .into_body()
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        if h.contains_key("x-gate") {
            self.entered.add_permits(1);
            self.gate.acquire().await.expect("gate open").forget();
        }
        assert!(!h.contains_key("x-panic"), "handler told to panic");
        let status = h
            .get("x-status")
            .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
            .unwrap_or(201);
        let payload = match h
            .get("x-big")
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        {
            Some(len) => Bytes::from(vec![b'x'; len]),
            None => Bytes::from(format!("run {n} body {}", body.len())),
        };
        let res = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/plain")
            .header(header::SET_COOKIE, format!("session=s{n}"))
            .header(header::DATE, "Tue, 01 Jan 2030 00:00:00 GMT")
            .header("x-run", n.to_string())
            .body(Full::new(payload))
            .expect("valid response");
        Ok(res)
    }
}

pub type Svc =
    BoxCloneSyncService<Request<Full<Bytes>>, Response<ResponseBody<Full<Bytes>>>, BoxError>;

pub fn service<St, L>(layer: IdempotencyLayer<St, L>, handler: &Handler) -> Svc
where
    St: Store,
    L: seawall_core::Listener<seawall_idempotency::IdempotencyEvent>,
{
    let h = handler.clone();
    let svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |req| h.clone().handle(req));
    BoxCloneSyncService::new(svc)
}

pub fn post(key: Option<&str>) -> http::request::Builder {
    let b = Request::post("/charges?currency=eur").header(header::CONTENT_TYPE, "application/json");
    match key {
        Some(k) => b.header("idempotency-key", k),
        None => b,
    }
}

pub fn req(key: Option<&str>, body: &'static str) -> Request<Full<Bytes>> {
    post(key)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("valid request")
}

#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }

    pub fn kind(&self) -> String {
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let doc: serde_json::Value = serde_json::from_slice(&self.body).expect("problem json");
        assert_eq!(doc["status"], self.status.as_u16());
        assert_eq!(doc["type"], "about:blank");
        doc["kind"].as_str().expect("kind").to_owned()
    }
}

pub async fn send(svc: &Svc, req: Request<Full<Bytes>>) -> Result<Answer, BoxError> {
    let res = svc.clone().oneshot(req).await?;
    let (head, body) = res.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Answer {
        status: head.status,
        headers: head.headers,
        body,
    })
}

pub async fn ok(svc: &Svc, req: Request<Full<Bytes>>) -> Answer {
    send(svc, req).await.expect("a response")
}

fn layer<St: Store>(store: St, name: &str) -> seawall_idempotency::IdempotencyLayerBuilder<St> {
    IdempotencyLayer::builder()
        .store(store)
        .name(name.to_owned())
}

/// Only the configured methods are handled; others run every time.
pub async fn check_methods<St: Store + Clone>(store: St, name: &str) {
    let h = Handler::new();
    let svc = service(layer(store.clone(), name).build().unwrap(), &h);
    for _ in 0..2 {
        let get = Request::get("/charges")
            .header("idempotency-key", "\"g\"")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert!(!ok(&svc, get).await.replayed());
    }
    assert_eq!(h.runs(), 2);
    let put_only = service(
        layer(store, &format!("{name}-put"))
            .methods([http::Method::PUT])
            .build()
            .unwrap(),
        &h,
    );
    let a = ok(&put_only, req(Some("\"p\""), "{}")).await;
    let b = ok(&put_only, req(Some("\"p\""), "{}")).await;
    assert!(!a.replayed() && !b.replayed());
    assert_eq!(h.runs(), 4);
}

/// Malformed keys get 400 and never reach the handler or the store.
pub async fn check_bad_keys<St: Store + Clone>(store: St, name: &str) {
    let h = Handler::new();
    let svc = service(layer(store.clone(), name).build().unwrap(), &h);
    let long = format!("\"{}\"", "k".repeat(256));
    let long_bare = "k".repeat(256);
    for bad in [
        "\"\"",
        "\"open",
        "a b",
        "a,b",
        "k;p=1",
        "tab\there",
        long.as_str(),
        long_bare.as_str(),
    ] {
        let a = ok(&svc, req(Some(bad), "{}")).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "key {bad}");
        assert_eq!(a.kind(), "idempotency_key_invalid");
    }
    let non_ascii = post(None)
        .header(
            "idempotency-key",
            http::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        )
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    assert_eq!(ok(&svc, non_ascii).await.status, StatusCode::BAD_REQUEST);
    // Strict mode: only structured-field strings.
    let strict = service(
        layer(store, &format!("{name}-strict"))
            .strict_keys(true)
            .build()
            .unwrap(),
        &h,
    );
    for bad in ["unquoted", "12", "8e03978e-40d5"] {
        let a = ok(&strict, req(Some(bad), "{}")).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "key {bad}");
        assert_eq!(a.kind(), "idempotency_key_invalid");
    }
    assert_eq!(
        ok(&strict, req(Some("\"quoted\""), "{}")).await.status,
        StatusCode::CREATED
    );
    assert_eq!(h.runs(), 1);
    let two = post(None)
        .header("idempotency-key", "\"a\"")
        .header("idempotency-key", "\"a\"")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    assert_eq!(ok(&svc, two).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(h.runs(), 1);
}

/// A missing key passes through, unless the route requires one.
pub async fn check_missing_key<St: Store + Clone>(store: St, name: &str) {
    let h = Handler::new();
    let open = service(layer(store.clone(), name).build().unwrap(), &h);
    ok(&open, req(None, "{}")).await;
    ok(&open, req(None, "{}")).await;
    assert_eq!(h.runs(), 2);
    let strict = service(layer(store, name).require_key(true).build().unwrap(), &h);
    let a = ok(&strict, req(None, "{}")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.kind(), "idempotency_key_missing");
    assert_eq!(h.runs(), 2);
}

/// By default the bare tokens Stripe clients send are keys, the same keys
/// as their quoted forms.
pub async fn check_bare_keys<St: Store>(store: St, name: &str) {
    let h = Handler::new();
    let svc = service(layer(store, name).build().unwrap(), &h);
    let first = ok(
        &svc,
        req(Some("8e03978e-40d5-43e8-bc93-6894a57f9324"), "{}"),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = ok(
        &svc,
        req(Some("8e03978e-40d5-43e8-bc93-6894a57f9324"), "{}"),
    )
    .await;
    assert!(again.replayed(), "status {}", again.status);
    let quoted = ok(
        &svc,
        req(Some("\"8e03978e-40d5-43e8-bc93-6894a57f9324\""), "{}"),
    )
    .await;
    assert!(quoted.replayed(), "bare and quoted forms are the same key");
    assert_eq!(quoted.body, first.body);
    assert_eq!(h.runs(), 1);
}

/// The first request runs; repeats replay the stored status, kept headers
/// and body, without `Set-Cookie` or `Date`, with a recomputed length.
pub async fn check_replay<St: Store>(store: St, name: &str) {
    let h = Handler::new();
    let svc = service(layer(store, name).build().unwrap(), &h);
    let first = ok(&svc, req(Some("\"k1\""), "{\"amount\":1}")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(!first.replayed());
    assert_eq!(first.body, "run 1 body 12");
    assert!(first.headers.contains_key(header::SET_COOKIE));
    for _ in 0..3 {
        let again = ok(&svc, req(Some("\"k1\""), "{\"amount\":1}")).await;
        assert!(again.replayed());
        assert_eq!(again.status, StatusCode::CREATED);
        assert_eq!(again.body, first.body);
        assert_eq!(again.headers["x-run"], "1");
        assert_eq!(again.headers[header::CONTENT_TYPE], "text/plain");
        assert_eq!(again.headers[header::CONTENT_LENGTH], "13");
        assert!(!again.headers.contains_key(header::SET_COOKIE));
        assert!(!again.headers.contains_key(header::DATE));
    }
    assert_eq!(h.runs(), 1);
}

/// Same key, different request: 422, handler not run.
pub async fn check_mismatch<St: Store>(store: St, name: &str) {
    let h = Handler::new();
    let svc = service(layer(store, name).build().unwrap(), &h);
    ok(&svc, req(Some("\"m\""), "{\"amount\":1}")).await;
    let other_body = ok(&svc, req(Some("\"m\""), "{\"amount\":2}")).await;
    assert_eq!(other_body.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other_body.kind(), "idempotency_key_mismatch");
    let other_path = Request::post("/refunds?currency=eur")
        .header(header::CONTENT_TYPE, "application/json")
        .header("idempotency-key", "\"m\"")
        .body(Full::new(Bytes::from_static(b"{\"amount\":1}")))
        .unwrap();
    assert_eq!(
        ok(&svc, other_path).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let other_type = Request::post("/charges?currency=eur")
        .header(header::CONTENT_TYPE, "text/plain")
        .header("idempotency-key", "\"m\"")
        .body(Full::new(Bytes::from_static(b"{\"amount\":1}")))
        .unwrap();
    assert_eq!(
        ok(&svc, other_type).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(h.runs(), 1);
}

/// Over the body limit: 413 and the store untouched (the key is still free).
pub async fn check_body_limit<St: Store>(store: St, name: &str) {
    let h = Handler::new();
    let svc = service(layer(store, name).max_request_body(16).build().unwrap(), &h);
    let big = "{\"amount\":100000000000}";
    // No Content-Length: the limit holds while reading.
    let a = ok(&svc, req(Some("\"b\""), big)).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.kind(), "idempotency_body_too_large");
    // A declared length over the limit is refused before reading.
    let declared = post(Some("\"b\""))
        .header(header::CONTENT_LENGTH, "1000000")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    assert_eq!(
        ok(&svc, declared).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(h.runs(), 0);
    let small = ok(&svc, req(Some("\"b\""), "{}")).await;
    assert_eq!(small.status, StatusCode::CREATED);
    assert!(!small.replayed(), "the 413s stored nothing under the key");
}

fn as_principal(key: &str, auth: Option<&str>, cookie: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = post(Some(key));
    if let Some(a) = auth {
        b = b.header(header::AUTHORIZATION, a);
    }
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    b.body(Full::new(Bytes::from_static(b"{\"amount\":100}")))
        .unwrap()
}

/// By default records are scoped by the caller's credentials: Bob sending
/// Alice's key value runs his own request and never sees Alice's body; an
/// anonymous caller and a caller with a bogus token neither; each replays
/// only their own.
pub async fn check_principals<St: Store>(store: St, name: &str) {
    let h = Handler::new();
    let svc = service(layer(store, name).build().unwrap(), &h);
    let alice = ok(&svc, as_principal("order-42", Some("Bearer alice"), None)).await;
    let bob = ok(&svc, as_principal("order-42", Some("Bearer bob"), None)).await;
    let anonymous = ok(&svc, as_principal("order-42", None, None)).await;
    let bogus = ok(&svc, as_principal("order-42", Some("Bearer alice "), None)).await;
    let cookie = ok(&svc, as_principal("order-42", None, Some("session=alice"))).await;
    let answers = [&alice, &bob, &anonymous, &bogus, &cookie];
    for a in answers {
        assert_eq!(a.status, StatusCode::CREATED);
        assert!(!a.replayed(), "{}", String::from_utf8_lossy(&a.body));
    }
    assert_eq!(h.runs(), 5, "five principals, five executions");
    for (i, x) in answers.iter().enumerate() {
        for y in &answers[i + 1..] {
            assert_ne!(x.body, y.body, "no principal sees another's body");
        }
    }
    // The same principal replays its own answer.
    let alice_again = ok(&svc, as_principal("order-42", Some("Bearer alice"), None)).await;
    assert!(alice_again.replayed());
    assert_eq!(alice_again.body, alice.body);
    let bob_again = ok(&svc, as_principal("order-42", Some("Bearer bob"), None)).await;
    assert!(bob_again.replayed());
    assert_eq!(bob_again.body, bob.body);
    let anonymous_again = ok(&svc, as_principal("order-42", None, None)).await;
    assert!(anonymous_again.replayed());
    assert_eq!(anonymous_again.body, anonymous.body);
    assert_eq!(h.runs(), 5);
}

/// A configured API-key field scopes records; `unscoped()` shares them.
pub async fn check_scope_options<St: Store + Clone>(store: St, name: &str) {
    let h = Handler::new();
    let api_key = http::HeaderName::from_static("x-api-key");
    let keyed = service(
        layer(store.clone(), name)
            .credential_headers([header::AUTHORIZATION, api_key.clone()])
            .build()
            .unwrap(),
        &h,
    );
    let with_key = |k: &'static str| {
        post(Some("same"))
            .header(api_key.clone(), k)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    };
    let one = ok(&keyed, with_key("k1")).await;
    let two = ok(&keyed, with_key("k2")).await;
    assert!(!one.replayed() && !two.replayed());
    assert!(ok(&keyed, with_key("k1")).await.replayed());
    assert_eq!(h.runs(), 2);

    let h = Handler::new();
    let shared = service(
        layer(store, &format!("{name}-unscoped"))
            .unscoped()
            .build()
            .unwrap(),
        &h,
    );
    let alice = ok(&shared, as_principal("k", Some("Bearer alice"), None)).await;
    let bob = ok(&shared, as_principal("k", Some("Bearer bob"), None)).await;
    assert!(bob.replayed(), "unscoped: one key space for every caller");
    assert_eq!(bob.body, alice.body);
    assert_eq!(h.runs(), 1);
}

/// Tenants never share records, even with the same key and request.
pub async fn check_tenants<St: Store>(store: St, name: &str) {
    let h = Handler::new();
    let layer = layer(store, name)
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
    let svc = service(layer, &h);
    let as_tenant = |t: Option<&'static str>| {
        let mut b = post(Some("\"shared\""));
        if let Some(t) = t {
            b = b.header("x-tenant", t);
        }
        b.body(Full::new(Bytes::from_static(b"{}"))).unwrap()
    };
    let a = ok(&svc, as_tenant(Some("acme"))).await;
    let b = ok(&svc, as_tenant(Some("globex"))).await;
    let anon = ok(&svc, as_tenant(None)).await;
    assert!(!a.replayed() && !b.replayed() && !anon.replayed());
    assert_eq!(h.runs(), 3);
    let a2 = ok(&svc, as_tenant(Some("acme"))).await;
    assert!(a2.replayed());
    assert_eq!(a2.body, a.body);
    assert_ne!(a.body, b.body);
    assert_eq!(h.runs(), 3);
}

/// A repeat while the first runs gets 409 with Retry-After.
pub async fn check_in_flight<St: Store>(store: St, name: &str) {
    let h = Handler::new();
    let svc = service(layer(store, name).build().unwrap(), &h);
    let gated = post(Some("\"f\""))
        .header("x-gate", "1")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { ok(&svc, gated).await }
    });
    h.entered.acquire().await.unwrap().forget();
    let repeat = ok(&svc, req(Some("\"f\""), "{}")).await;
    assert_eq!(repeat.status, StatusCode::CONFLICT);
    assert_eq!(repeat.kind(), "idempotency_in_flight");
    assert_eq!(repeat.headers[header::RETRY_AFTER], "1");
    h.gate.add_permits(1);
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(ok(&svc, req(Some("\"f\""), "{}")).await.replayed());
    assert_eq!(h.runs(), 1);
}

/// A store that signals `in_flight` each time a claim finds its key in
/// flight, so a check can wait for a request to be *seen* waiting instead of
/// hoping a yield was long enough.
pub struct Watched<St> {
    inner: St,
    pub in_flight: Arc<Semaphore>,
}

impl<St> Watched<St> {
    pub fn new(inner: St) -> Self {
        Self {
            inner,
            in_flight: Arc::new(Semaphore::new(0)),
        }
    }
}

impl<St: Store> Store for Watched<St> {
    fn claim<'a>(
        &'a self,
        key: &'a StoreKey,
        fingerprint: &'a Fingerprint,
        lease: Duration,
    ) -> StoreFuture<'a, Claim> {
        Box::pin(async move {
            let claim = self.inner.claim(key, fingerprint, lease).await?;
            if matches!(claim, Claim::InFlight { .. }) {
                self.in_flight.add_permits(1);
            }
            Ok(claim)
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a FencingToken,
        fingerprint: &'a Fingerprint,
        response: &'a StoredResponse,
        retention: Duration,
    ) -> StoreFuture<'a, Completion> {
        self.inner
            .complete(key, token, fingerprint, response, retention)
    }

    fn release<'a>(&'a self, key: &'a StoreKey, token: &'a FencingToken) -> StoreFuture<'a, bool> {
        self.inner.release(key, token)
    }

    fn renew<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a FencingToken,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        self.inner.renew(key, token, lease)
    }
}

/// Wait mode: the repeat waits for the first and replays its response.
pub async fn check_wait_mode<St: Store>(store: St, name: &str) {
    let h = Handler::new();
    let store = Watched::new(store);
    let seen_in_flight = store.in_flight.clone();
    let svc = service(
        layer(store, name)
            .wait_in_flight(Duration::from_secs(10))
            .build()
            .unwrap(),
        &h,
    );
    let gated = post(Some("\"w\""))
        .header("x-gate", "1")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { ok(&svc, gated).await }
    });
    h.entered.acquire().await.unwrap().forget();
    let repeat = tokio::spawn({
        let svc = svc.clone();
        async move { ok(&svc, req(Some("\"w\""), "{}")).await }
    });
    // The repeat must find the key in flight (and wait) before the first
    // completes; otherwise it would be a plain replay and prove nothing.
    seen_in_flight.acquire().await.unwrap().forget();
    h.gate.add_permits(1);
    let first = first.await.unwrap();
    let repeat = repeat.await.unwrap();
    assert!(repeat.replayed(), "status {}", repeat.status);
    assert_eq!(repeat.body, first.body);
    assert_eq!(h.runs(), 1);
}

/// Default policy keeps errors; the release policy lets a retry run again.
pub async fn check_keep_policy<St: Store + Clone>(store: St, name: &str) {
    let h = Handler::new();
    let keep_all = service(layer(store.clone(), name).build().unwrap(), &h);
    let failing = || {
        post(Some("\"e\""))
            .header("x-status", "500")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    };
    assert_eq!(
        ok(&keep_all, failing()).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let again = ok(&keep_all, failing()).await;
    assert!(again.replayed());
    assert_eq!(again.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(h.runs(), 1);

    let h = Handler::new();
    let release = service(
        layer(store, &format!("{name}-release"))
            .keep(KeepPolicy::ReleaseServerErrors)
            .build()
            .unwrap(),
        &h,
    );
    for status in ["500", "429"] {
        let r = post(Some("\"e\""))
            .header("x-status", status)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        assert!(!ok(&release, r).await.replayed());
    }
    assert_eq!(h.runs(), 2);
    let fine = ok(&release, req(Some("\"e\""), "{}")).await;
    assert_eq!(fine.status, StatusCode::CREATED);
    assert!(ok(&release, req(Some("\"e\""), "{}")).await.replayed());
    assert_eq!(h.runs(), 3);
}

/// A response over the cap is stored without its body; the handler never
/// runs again for it.
pub async fn check_large_response<St: Store>(store: St, name: &str) {
    let h = Handler::new();
    let svc = service(layer(store, name).max_stored_body(64).build().unwrap(), &h);
    let big = || {
        post(Some("\"big\""))
            .header("x-big", "5000")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    };
    let first = ok(&svc, big()).await;
    assert_eq!(first.body.len(), 5000, "the live response is whole");
    let again = ok(&svc, big()).await;
    assert!(again.replayed());
    assert_eq!(again.status, StatusCode::CREATED);
    assert!(again.body.is_empty());
    assert_eq!(again.headers[header::CONTENT_LENGTH], "0");
    assert_eq!(again.headers["x-run"], "1");
    assert_eq!(h.runs(), 1);
}

/// A lease that ends lets the next request take over; the stale owner's
/// completion is refused and the successor's response is the one kept.
pub async fn check_lease_takeover<St: Store>(store: St, name: &str, expire: Expire) {
    let h = Handler::new();
    let svc = service(layer(store, name).build().unwrap(), &h);
    let gated = post(Some("\"t\""))
        .header("x-gate", "1")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let stale = tokio::spawn({
        let svc = svc.clone();
        async move { ok(&svc, gated).await }
    });
    h.entered.acquire().await.unwrap().forget();
    expire(StoreKey::new(name, Scope::Anonymous, "t")).await;
    let successor = ok(&svc, req(Some("\"t\""), "{}")).await;
    assert_eq!(successor.body, "run 2 body 2");
    assert!(!successor.replayed());
    h.gate.add_permits(1);
    let stale = stale.await.unwrap();
    assert_eq!(
        stale.body, "run 1 body 2",
        "the stale owner still answers its own client"
    );
    let replay = ok(&svc, req(Some("\"t\""), "{}")).await;
    assert!(replay.replayed());
    assert_eq!(
        replay.body, successor.body,
        "the stale completion was fenced off"
    );
    assert_eq!(h.runs(), 2);
}

/// A panicking handler fails its request, and its key is free before the
/// failure is returned: the immediate retry runs, never a 409.
pub async fn check_panic_releases<St: Store>(store: St, name: &str) {
    let h = Handler::new();
    let svc = service(layer(store, name).build().unwrap(), &h);
    for round in 0..3 {
        let key = format!("p{round}");
        let panicking = post(Some(&key))
            .header("x-panic", "1")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let err = send(&svc, panicking)
            .await
            .expect_err("the panic is an error");
        assert!(err.is::<HandlerPanicked>());
        // No yield, no wait: the release was awaited before the error.
        let retry = ok(&svc, req(Some(&key), "{}")).await;
        assert_eq!(retry.status, StatusCode::CREATED, "round {round}");
        assert!(!retry.replayed());
        assert!(ok(&svc, req(Some(&key), "{}")).await.replayed());
    }
    assert_eq!(h.runs(), 6, "each panic, then each retry");
}

/// A client that goes away does not stop the handler: it completes and is
/// stored, so the retry replays it.
pub async fn check_dropped_request<St: Store>(store: St, name: &str) {
    let h = Handler::new();
    let svc = service(
        layer(store, name)
            .wait_in_flight(Duration::from_secs(10))
            .build()
            .unwrap(),
        &h,
    );
    let gated = post(Some("\"d\""))
        .header("x-gate", "1")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { ok(&svc, gated).await }
    });
    h.entered.acquire().await.unwrap().forget();
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    h.gate.add_permits(1);
    let retry = ok(&svc, req(Some("\"d\""), "{}")).await;
    assert!(retry.replayed(), "status {}", retry.status);
    assert_eq!(retry.body, "run 1 body 2");
    assert_eq!(h.runs(), 1);
}

/// A store that is down: 503 with Retry-After and no handler call; with
/// fail-open the handler runs.
pub async fn check_store_down<St: Store + Clone>(down: St, name: &str) {
    let h = Handler::new();
    let closed = service(
        layer(down.clone(), name)
            .store_retry_after(Duration::from_secs(3))
            .build()
            .unwrap(),
        &h,
    );
    let a = ok(&closed, req(Some("\"x\""), "{}")).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.kind(), "idempotency_store_unavailable");
    assert_eq!(a.headers[header::RETRY_AFTER], "3");
    assert_eq!(h.runs(), 0);
    let open = service(layer(down, name).fail_open(true).build().unwrap(), &h);
    let b = ok(&open, req(Some("\"x\""), "{}")).await;
    assert_eq!(b.status, StatusCode::CREATED);
    assert_eq!(h.runs(), 1);
}

/// Every check that needs only a working store.
pub async fn check_all<St: Store + Clone>(store: St, prefix: &str, expire: Expire) {
    check_methods(store.clone(), &format!("{prefix}-methods")).await;
    check_bad_keys(store.clone(), &format!("{prefix}-bad-keys")).await;
    check_missing_key(store.clone(), &format!("{prefix}-missing")).await;
    check_bare_keys(store.clone(), &format!("{prefix}-bare")).await;
    check_principals(store.clone(), &format!("{prefix}-principals")).await;
    check_scope_options(store.clone(), &format!("{prefix}-scope-options")).await;
    check_replay(store.clone(), &format!("{prefix}-replay")).await;
    check_mismatch(store.clone(), &format!("{prefix}-mismatch")).await;
    check_body_limit(store.clone(), &format!("{prefix}-limit")).await;
    check_tenants(store.clone(), &format!("{prefix}-tenants")).await;
    check_in_flight(store.clone(), &format!("{prefix}-in-flight")).await;
    check_wait_mode(store.clone(), &format!("{prefix}-wait")).await;
    check_keep_policy(store.clone(), &format!("{prefix}-keep")).await;
    check_large_response(store.clone(), &format!("{prefix}-large")).await;
    check_lease_takeover(store.clone(), &format!("{prefix}-takeover"), expire).await;
    check_panic_releases(store.clone(), &format!("{prefix}-panic")).await;
    check_dropped_request(store, &format!("{prefix}-dropped")).await;
}
