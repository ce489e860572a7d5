//! One keyed request: buffer and fingerprint, claim, run the handler,
//! store or release.
//!
//! Everything from the claim on runs in a spawned task. A client that goes
//! away (its response future dropped) therefore does not stop a handler
//! that already holds the key: the handler runs to completion and its
//! response is stored, so the client's retry gets a replay instead of
//! a second execution. A handler that panics is caught by [`CatchUnwind`]
//! and its claim released (awaited) before the request fails, so the
//! client's immediate retry finds the key free. [`ClaimGuard`] releases the
//! claim from its `Drop` if the task is dropped some other way (the runtime
//! shutting down).

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH};
use http::request::Parts;
use http::{response, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use seawall_core::{BoxError, Listener};
use tokio::time::Instant;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::error::{HandlerPanicked, StoreError, StoreErrorKind};
use crate::event::{IdempotencyEvent, IdempotencyEventKind as Kind};
use crate::key::{
    CredentialDigest, FencingToken, Fingerprint, Scope, StoreKey, DEFAULT_CREDENTIAL_HEADERS,
};
use crate::layer::{Config, KeepPolicy, ScopeBy, Shared};
use crate::problem::Problem;
use crate::record::StoredResponse;
use crate::service::{RequestBody, IDEMPOTENT_REPLAYED, TOO_LARGE};
use crate::store::{Claim, Completion, Store};

type Output<B> = Result<Response<ResponseBody<B>>, BoxError>;

const IN_FLIGHT: Problem = Problem::new(
    StatusCode::CONFLICT,
    "idempotency_in_flight",
    "a request with this Idempotency-Key is still being processed; retry later",
);
const MISMATCH: Problem = Problem::new(
    StatusCode::UNPROCESSABLE_ENTITY,
    "idempotency_key_mismatch",
    "this Idempotency-Key was used with a different request",
);
const UNAVAILABLE: Problem = Problem::new(
    StatusCode::SERVICE_UNAVAILABLE,
    "idempotency_store_unavailable",
    "the idempotency store is unavailable; the request was not processed",
);
const STORE_FULL: Problem = Problem::new(
    StatusCode::SERVICE_UNAVAILABLE,
    "idempotency_store_full",
    "the idempotency store has no room for a new key; the request was not processed",
);
const BODY_TIMEOUT: Problem = Problem::new(
    StatusCode::REQUEST_TIMEOUT,
    "idempotency_body_timeout",
    "the request body did not arrive in time; the request was not processed",
);
const UNREADABLE: Problem = Problem::new(
    StatusCode::BAD_REQUEST,
    "request_body_unreadable",
    "the request body could not be read",
);

/// Clients are told to come back within a second: handlers usually finish
/// well before their lease ends.
const MAX_IN_FLIGHT_RETRY_AFTER: Duration = Duration::from_secs(1);

pub(crate) async fn execute<S, St, L, ReqB, ResB>(
    shared: Arc<Shared<St, L>>,
    inner: S,
    req: Request<ReqB>,
    key: String,
) -> Output<ResB>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    St: Store,
    L: Listener<IdempotencyEvent>,
    ReqB: Body + Send + 'static,
    ReqB::Data: Send,
    ReqB::Error: Into<BoxError>,
    ResB: Body + Send + 'static,
    ResB::Data: Send,
    ResB::Error: Into<BoxError>,
{
    // Outside a Tokio runtime the body timer and `tokio::spawn` would
    // panic; refuse instead.
    let runtime = tokio::runtime::Handle::try_current().map_err(Box::new)?;
    let (parts, body) = req.into_parts();
    let config = &shared.config;
    let scope = record_key(config, &parts, &key);
    let read = Limited::new(body, config.max_request_body).collect();
    // On timeout the read future, the body and what was buffered are
    // dropped here; nothing was claimed yet.
    let bytes = match tokio::time::timeout(config.body_timeout, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => {
            shared.emit(Kind::BodyTooLarge);
            return Ok(TOO_LARGE.response());
        }
        Ok(Err(_)) => return Ok(UNREADABLE.response()),
        Err(_) => {
            shared.emit(Kind::BodyTimedOut);
            let mut res = BODY_TIMEOUT.response();
            // The rest of the body may still come: the connection cannot
            // carry another request (RFC 9110 §15.5.9).
            res.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return Ok(res);
        }
    };
    let fingerprint = Fingerprint::of(&parts.method, &parts.uri, &parts.headers, &bytes);
    let req = Request::from_parts(parts, Either::Right(Full::new(bytes)));
    match runtime
        .spawn(run(shared, inner, req, scope, fingerprint))
        .await
    {
        Ok(out) => out,
        Err(e) if e.is_panic() => Err(Box::new(HandlerPanicked::new())),
        Err(e) => Err(Box::new(e)),
    }
}

/// The record key of a request: the layer's name, the request's scope and
/// the key.
fn record_key(config: &Config, parts: &Parts, key: &str) -> StoreKey {
    match &config.scope {
        ScopeBy::Shared => StoreKey::new(&config.name, Scope::Shared, key),
        ScopeBy::Tenant(f) => match f(parts) {
            Some(tenant) => StoreKey::new(&config.name, Scope::Tenant(&tenant), key),
            // No tenant found: the default credential scope, never one
            // shared by every credentialed caller the function missed.
            None => match CredentialDigest::of(&parts.headers, &DEFAULT_CREDENTIAL_HEADERS) {
                Some(digest) => StoreKey::new(&config.name, Scope::Credentials(&digest), key),
                None => StoreKey::new(&config.name, Scope::Anonymous, key),
            },
        },
        ScopeBy::Credentials(names) => match CredentialDigest::of(&parts.headers, names) {
            Some(digest) => StoreKey::new(&config.name, Scope::Credentials(&digest), key),
            None => StoreKey::new(&config.name, Scope::Anonymous, key),
        },
    }
}

async fn run<S, St, L, ReqB, ResB>(
    shared: Arc<Shared<St, L>>,
    mut inner: S,
    req: Request<RequestBody<ReqB>>,
    scope: StoreKey,
    fingerprint: Fingerprint,
) -> Output<ResB>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    St: Store,
    L: Listener<IdempotencyEvent>,
    ResB: Body,
    ResB::Error: Into<BoxError>,
{
    let token = match claim(&shared, &scope, &fingerprint).await {
        Ok(Claim::Claimed(token)) => token,
        Ok(Claim::Completed(stored)) => {
            shared.emit(Kind::Replayed);
            return Ok(replay(stored));
        }
        Ok(Claim::InFlight { retry_after }) => {
            shared.emit(Kind::InFlight);
            return Ok(IN_FLIGHT
                .retry_after(retry_after.min(MAX_IN_FLIGHT_RETRY_AFTER))
                .response());
        }
        Ok(Claim::Mismatch) => {
            shared.emit(Kind::Mismatch);
            return Ok(MISMATCH.response());
        }
        // A full store is not a failure to ride over: running the handler
        // without a record would let its retry run it again.
        Err(e) if e.kind() == StoreErrorKind::Full => {
            shared.emit(Kind::StoreFull);
            return Ok(STORE_FULL
                .retry_after(shared.config.store_retry_after)
                .response());
        }
        Err(_) if shared.config.fail_open => {
            shared.emit(Kind::FailedOpen);
            let res = inner.call(req).await.map_err(Into::into)?;
            return Ok(res.map(ResponseBody::inner));
        }
        Err(_) => {
            shared.emit(Kind::StoreUnavailable);
            return Ok(UNAVAILABLE
                .retry_after(shared.config.store_retry_after)
                .response());
        }
    };
    shared.emit(Kind::Claimed);
    let renewal = shared
        .config
        .renew_lease
        .then(|| tokio::spawn(renew_lease(shared.clone(), scope, token.clone())));
    let mut guard = ClaimGuard {
        shared: shared.clone(),
        scope,
        token,
        armed: true,
        renewal,
    };
    let keep = shared.config.keep;
    let cap = shared.config.max_stored_body;
    let (head, buf, over_cap, rest) = match CatchUnwind::new(handle(inner, req, keep, cap)).await {
        Ok(Ok(Handled::Collected {
            head,
            buf,
            over_cap,
            rest,
        })) => (head, buf, over_cap, rest),
        Ok(Ok(Handled::NotKept(res))) => {
            guard.release().await;
            return Ok(res.map(ResponseBody::inner));
        }
        Ok(Err(e)) => {
            guard.release().await;
            return Err(e);
        }
        Err(panic) => {
            // Released before the 500 is returned, so a retry the client
            // sends on seeing it finds the key free.
            guard.release().await;
            drop(panic);
            return Err(Box::new(HandlerPanicked::new()));
        }
    };
    let stored = StoredResponse::new(head.status, &head.headers, buf.clone(), over_cap);
    // The claim ends here whatever the store says: stored, fenced, or left
    // to expire with its lease if the store failed.
    guard.disarm();
    match shared
        .store
        .complete(
            &scope,
            &guard.token,
            &fingerprint,
            &stored,
            shared.config.retention,
        )
        .await
    {
        Ok(Completion::Stored) if over_cap => shared.emit(Kind::StoredWithoutBody),
        Ok(Completion::Stored) => shared.emit(Kind::Stored),
        Ok(Completion::StoredWithoutBody) => shared.emit(Kind::StoredWithoutBody),
        Ok(Completion::Fenced) => shared.emit(Kind::Fenced),
        Err(_) => shared.emit(Kind::CompleteFailed),
    }
    let body = if over_cap {
        ResponseBody::prefixed(buf, rest)
    } else {
        ResponseBody::full(buf)
    };
    Ok(Response::from_parts(head, body))
}

/// What the handler answered, read up to the storing cap.
enum Handled<B> {
    /// A status the [`KeepPolicy`] does not keep: answered as it is.
    NotKept(Response<B>),
    /// The head and the body read so far (all of it unless `over_cap`),
    /// with what is left of the body.
    Collected {
        head: response::Parts,
        buf: Bytes,
        over_cap: bool,
        rest: Pin<Box<B>>,
    },
}

/// Calls the handler and reads its body for storing, up to `cap` bytes.
async fn handle<S, ReqB, ResB>(
    mut inner: S,
    req: Request<RequestBody<ReqB>>,
    keep: KeepPolicy,
    cap: usize,
) -> Result<Handled<ResB>, BoxError>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body,
    ResB::Error: Into<BoxError>,
{
    let res = inner.call(req).await.map_err(Into::into)?;
    if !keep.keeps(res.status()) {
        return Ok(Handled::NotKept(res));
    }
    let (head, body) = res.into_parts();
    let mut body = Box::pin(body);
    let mut buf = BytesMut::new();
    let mut over_cap = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Into::into)?;
        // Trailers are not stored (nor forwarded for a stored response).
        if let Ok(mut data) = frame.into_data() {
            let n = data.remaining();
            buf.extend_from_slice(&data.copy_to_bytes(n));
            if buf.len() > cap {
                over_cap = true;
                break;
            }
        }
    }
    // A body that arrived in several frames grew the buffer by doubling; a
    // stored copy would keep the slack alive for the whole retention, out
    // of sight of a store's byte count. Past a little slack, keep an exact
    // copy instead (the common one-frame body is exact already).
    let buf = if !over_cap && buf.capacity() - buf.len() > buf.len() / 8 + 1024 {
        Bytes::copy_from_slice(&buf)
    } else {
        buf.freeze()
    };
    Ok(Handled::Collected {
        head,
        buf,
        over_cap,
        rest: body,
    })
}

pin_project_lite::pin_project! {
    /// Resolves to `Err` with the panic's payload if polling the future
    /// panics, which it then never polls again.
    struct CatchUnwind<F> {
        #[pin]
        fut: F,
    }
}

impl<F> CatchUnwind<F> {
    fn new(fut: F) -> Self {
        Self { fut }
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.project().fut;
        // Unwind safety: after a panic the future is only dropped, never
        // polled again, so no broken invariant of it is observed.
        match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// Claims the key; in wait mode, polls while the key is in flight, until
/// the wait bound.
async fn claim<St: Store, L>(
    shared: &Shared<St, L>,
    scope: &StoreKey,
    fingerprint: &Fingerprint,
) -> Result<Claim, StoreError> {
    let config = &shared.config;
    let deadline = config.wait.map(|w| Instant::now() + w);
    let mut pause = Duration::from_millis(10);
    loop {
        let claim = shared.store.claim(scope, fingerprint, config.lease).await?;
        let (Claim::InFlight { retry_after }, Some(deadline)) = (&claim, deadline) else {
            return Ok(claim);
        };
        let now = Instant::now();
        if now >= deadline {
            return Ok(claim);
        }
        // Never sleep past the wait bound, nor past the holder's lease (the
        // key may be taken over then).
        let nap = pause
            .min(deadline - now)
            .min(*retry_after)
            .max(Duration::from_millis(1));
        tokio::time::sleep(nap).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

fn replay<B>(stored: StoredResponse) -> Response<ResponseBody<B>> {
    let (status, headers, body) = stored.into_parts();
    let len = body.len();
    let mut res = Response::new(ResponseBody::full(body));
    *res.status_mut() = status;
    *res.headers_mut() = headers;
    res.headers_mut()
        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    // RFC 9110 §8.6: no Content-Length in a 1xx or 204; in a 304 it would
    // describe the selected representation, which is not stored.
    let framed = !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED);
    if framed {
        res.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    res
}

/// Renews the claim every third of its lease until the store refuses (the
/// token lost the key) or the task is aborted (the claim ended). A store
/// error skips one renewal: the lease has two more periods to be renewed.
async fn renew_lease<St: Store, L>(
    shared: Arc<Shared<St, L>>,
    scope: StoreKey,
    token: FencingToken,
) {
    let lease = shared.config.lease;
    loop {
        tokio::time::sleep(lease / 3).await;
        if let Ok(false) = shared.store.renew(&scope, &token, lease).await {
            return;
        }
    }
}

/// Holds a claim while the handler runs; releases it by token if dropped
/// armed (a panic unwinding, or the runtime dropping the task).
struct ClaimGuard<St: Store, L: Listener<IdempotencyEvent>> {
    shared: Arc<Shared<St, L>>,
    scope: StoreKey,
    token: FencingToken,
    armed: bool,
    renewal: Option<tokio::task::JoinHandle<()>>,
}

impl<St: Store, L: Listener<IdempotencyEvent>> ClaimGuard<St, L> {
    fn stop_renewal(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
    }

    async fn release(&mut self) {
        self.stop_renewal();
        if self.armed {
            self.armed = false;
            // A failed release leaves the claim to expire with its lease.
            let _ = self.shared.store.release(&self.scope, &self.token).await;
            self.shared.emit(Kind::Released);
        }
    }

    fn disarm(&mut self) {
        self.stop_renewal();
        self.armed = false;
    }
}

impl<St: Store, L: Listener<IdempotencyEvent>> Drop for ClaimGuard<St, L> {
    fn drop(&mut self) {
        self.stop_renewal();
        if !self.armed {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = self.shared.clone();
        let scope = self.scope;
        let token = self.token.clone();
        handle.spawn(async move {
            let _ = shared.store.release(&scope, &token).await;
            shared.emit(Kind::Released);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::HeaderMap;
    use http_body_util::Full;

    fn replayed(status: StatusCode, body: &'static [u8]) -> Response<ResponseBody<Full<Bytes>>> {
        let stored =
            StoredResponse::new(status, &HeaderMap::new(), Bytes::from_static(body), false);
        replay(stored)
    }

    /// A body of several frames, as a streaming handler answers.
    struct Frames(std::collections::VecDeque<Bytes>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
        }
    }

    fn frames(n: usize, len: usize) -> Response<Frames> {
        Response::new(Frames(
            (0..n)
                .map(|i| Bytes::from(vec![b'a' + u8::try_from(i % 26).unwrap(); len]))
                .collect(),
        ))
    }

    async fn collect(n: usize, len: usize, cap: usize) -> (Bytes, bool, Bytes) {
        let svc = tower::service_fn(move |_req: Request<RequestBody<Full<Bytes>>>| async move {
            Ok::<_, std::convert::Infallible>(frames(n, len))
        });
        let req = Request::new(Either::Right(Full::new(Bytes::new())));
        let Ok(Handled::Collected {
            buf,
            over_cap,
            rest,
            ..
        }) = handle(svc, req, KeepPolicy::All, cap).await
        else {
            panic!("collected");
        };
        let rest = http_body_util::BodyExt::collect(rest)
            .await
            .unwrap()
            .to_bytes();
        (buf, over_cap, rest)
    }

    #[tokio::test]
    async fn a_body_of_many_frames_is_collected_whole_or_up_to_the_cap() {
        let whole: Vec<u8> = (0..40)
            .flat_map(|i| vec![b'a' + u8::try_from(i % 26).unwrap(); 1000])
            .collect();
        let (buf, over_cap, rest) = collect(40, 1000, 1 << 20).await;
        assert!(!over_cap);
        assert_eq!(buf, whole);
        assert!(rest.is_empty());
        // Over the cap: the collected prefix and the rest make the body.
        let (buf, over_cap, rest) = collect(40, 1000, 10_500).await;
        assert!(over_cap);
        assert_eq!(buf.len(), 11_000);
        assert_eq!([&buf[..], &rest[..]].concat(), whole);
    }

    #[tokio::test]
    async fn a_panic_in_a_polled_future_is_caught_once() {
        let caught = CatchUnwind::new(async {
            tokio::task::yield_now().await;
            panic!("boom");
        })
        .await;
        let payload = caught.expect_err("the panic is caught");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom"));
        assert_eq!(CatchUnwind::new(async { 7 }).await.ok(), Some(7));
    }

    #[test]
    fn replay_recomputes_content_length_where_http_allows_one() {
        let res = replayed(StatusCode::CREATED, b"created");
        assert_eq!(res.headers()[CONTENT_LENGTH], "7");
        assert_eq!(res.headers()[IDEMPOTENT_REPLAYED], "true");
        assert_eq!(replayed(StatusCode::OK, b"").headers()[CONTENT_LENGTH], "0");
        // RFC 9110 §8.6: never in a 1xx or 204; in a 304 it would describe
        // the selected representation, which is not stored.
        for status in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
            let res = replayed(status, b"");
            assert!(!res.headers().contains_key(CONTENT_LENGTH), "{status}");
            assert_eq!(res.headers()[IDEMPOTENT_REPLAYED], "true");
        }
    }
}
