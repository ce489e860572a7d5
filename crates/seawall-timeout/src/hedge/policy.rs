//! Which requests may be hedged, and how they are kept to be sent again.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use http::Request;
use seawall_retry::{AsOriginalBody, AsReplayBody, CloneRequest, HttpReplay, Replay};

/// Decides whether a request may be sent more than once, and how it is
/// kept so that it can be.
///
/// The keeping is the retry layer's [`Replay`] machinery, shared rather
/// than written twice: [`CloneRequests`] clones generic requests,
/// [`HttpRequests`] buffers HTTP bodies with [`HttpReplay`].
pub trait HedgePolicy<Req> {
    /// How the request is kept and rebuilt for each attempt.
    type Replay: Replay<Req>;

    /// The replay to stage `request` with, and whether it may be hedged. A
    /// request that may not is still staged (with `retryable = false`), so
    /// that the inner service receives one request type.
    fn replay_for(&self, request: &Req) -> (Self::Replay, bool);
}

/// How a [`HedgeLayer`](crate::HedgeLayer) judges an answer of type `Res`
/// beyond its classifier: whether it only reports that another attempt of
/// the same request is in progress.
///
/// Such an answer never wins while another attempt is still running: the
/// race waits for that attempt instead. Without this, a hedge of a keyed
/// `POST` reaching a deduplicating server (seawall's `IdempotencyLayer`,
/// Stripe, the IETF Idempotency-Key draft) while the first attempt is
/// being processed gets `409 Conflict`, which an HTTP classifier calls a
/// success, and the caller would get the `409` instead of the first
/// attempt's answer. The answer is still returned when no other attempt
/// runs.
///
/// [`CloneRequests`] never says so; [`HttpRequests`] says so of `409
/// Conflict` and `425 Too Early`. A custom [`HedgePolicy`] implements it
/// too, usually with the default method (`impl HedgeResponse<Res> for
/// MyPolicy {}`).
pub trait HedgeResponse<Res> {
    /// `true` when `response` only says another attempt of the same
    /// request is in progress (default `false`).
    #[inline]
    fn in_flight(&self, response: &Res) -> bool {
        let _ = response;
        false
    }
}

/// A predicate over requests: `true` when one may be hedged.
///
/// Implemented by [`EveryRequest`] and by every `Fn(&Req) -> bool`.
pub trait HedgePredicate<Req> {
    /// `true` when `request` is safe to send more than once.
    fn may_hedge(&self, request: &Req) -> bool;
}

/// Every request may be hedged (the default of [`CloneRequests`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EveryRequest;

impl<Req> HedgePredicate<Req> for EveryRequest {
    #[inline]
    fn may_hedge(&self, _request: &Req) -> bool {
        true
    }
}

impl<Req, F> HedgePredicate<Req> for F
where
    F: Fn(&Req) -> bool,
{
    #[inline]
    fn may_hedge(&self, request: &Req) -> bool {
        self(request)
    }
}

/// Hedges generic requests (`Req: Clone`) by cloning them, all of them or
/// those a predicate accepts.
///
/// ```
/// use seawall_timeout::{CloneRequests, HedgePolicy};
///
/// // Reads may be sent twice, writes may not.
/// #[derive(Clone)]
/// enum Op { Get(u32), Put(u32, String) }
/// let policy = CloneRequests::new().when(|op: &Op| matches!(op, Op::Get(_)));
/// assert!(policy.replay_for(&Op::Get(1)).1);
/// assert!(!policy.replay_for(&Op::Put(1, "x".into())).1);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneRequests<F = EveryRequest> {
    predicate: F,
}

impl CloneRequests {
    /// Every request may be hedged.
    pub const fn new() -> Self {
        Self {
            predicate: EveryRequest,
        }
    }
}

impl<F> CloneRequests<F> {
    /// Only requests `predicate` accepts may be hedged.
    pub fn when<F2>(self, predicate: F2) -> CloneRequests<F2> {
        CloneRequests { predicate }
    }
}

impl<Req: Clone, F: HedgePredicate<Req>> HedgePolicy<Req> for CloneRequests<F> {
    type Replay = CloneRequest;

    #[inline]
    fn replay_for(&self, request: &Req) -> (CloneRequest, bool) {
        (CloneRequest, self.predicate.may_hedge(request))
    }
}

impl<Res, F> HedgeResponse<Res> for CloneRequests<F> {}

/// Hedges `http::Request`s that are safe to send twice:
///
/// - idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE), or any
///   request carrying one usable `Idempotency-Key`: a single header line,
///   neither blank nor an empty structured-field string (`""`), the rule of
///   [`HttpReplay::may_retry`]. An empty, blank, `""` or repeated key is
///   refused by a deduplicating server and ignored by any other, so such a
///   request is sent once;
/// - gRPC calls (always POST) only for the methods opted in by path with
///   [`grpc_method`](HttpRequests::grpc_method), e.g.
///   `"/helloworld.Greeter/SayHello"`: whether a gRPC method is idempotent
///   is known only to its owner.
///
/// Everything else is sent once, unhedged. An attempt answered `409
/// Conflict` or `425 Too Early` (what a deduplicating server answers while
/// another attempt with the same `Idempotency-Key` is in progress) does not
/// win while another attempt runs; see [`HedgeResponse`].
///
/// Bodies up to the body limit
/// (64 KiB by default) are buffered by the retry layer's [`HttpReplay`] so
/// each attempt sends the same bytes; a larger body is sent once. Each hedge
/// carries its [`Attempt`](seawall_retry::Attempt) number in its extensions.
///
/// ```
/// use bytes::Bytes;
/// use http::Request;
/// use http_body_util::Empty;
/// use seawall_timeout::{HedgePolicy, HttpRequests};
///
/// let empty = Empty::<Bytes>::new;
///
/// let policy = HttpRequests::new().grpc_method("/kv.Store/Get");
/// let get = Request::get("/items/1").body(empty()).unwrap();
/// let post = Request::post("/items").body(empty()).unwrap();
/// let keyed = Request::post("/items").header("idempotency-key", "k-1").body(empty()).unwrap();
/// let grpc_get = Request::post("/kv.Store/Get").body(empty()).unwrap();
/// let grpc_put = Request::post("/kv.Store/Put").body(empty()).unwrap();
/// assert!(policy.replay_for(&get).1);
/// assert!(!policy.replay_for(&post).1);
/// assert!(policy.replay_for(&keyed).1);
/// assert!(policy.replay_for(&grpc_get).1);
/// assert!(!policy.replay_for(&grpc_put).1);
/// ```
pub struct HttpRequests<K = AsReplayBody> {
    replay: HttpReplay<K>,
    grpc_methods: Arc<HashSet<Box<str>>>,
}

impl<K> Clone for HttpRequests<K> {
    fn clone(&self) -> Self {
        Self {
            replay: self.replay,
            grpc_methods: self.grpc_methods.clone(),
        }
    }
}

impl<K> fmt::Debug for HttpRequests<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRequests")
            .field("grpc_methods", &self.grpc_methods)
            .finish_non_exhaustive()
    }
}

impl Default for HttpRequests {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpRequests {
    /// Idempotent methods and keyed requests; bodies up to 64 KiB handed to
    /// the inner service as [`ReplayBody`](seawall_retry::ReplayBody)s.
    pub fn new() -> Self {
        Self {
            replay: HttpReplay::new(),
            grpc_methods: Arc::default(),
        }
    }

    /// Hands the inner service the caller's own body type (which must be
    /// `From<Bytes>`); see [`HttpReplay::original_body`].
    pub fn original_body(self) -> HttpRequests<AsOriginalBody> {
        self.inner_body()
    }
}

impl<K> HttpRequests<K> {
    /// The largest body buffered for a hedge (default 64 KiB).
    #[must_use]
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.replay = self.replay.body_limit(bytes);
        self
    }

    /// Hedges gRPC calls to `path` (`/package.Service/Method`).
    #[must_use]
    pub fn grpc_method(mut self, path: impl Into<Box<str>>) -> Self {
        Arc::make_mut(&mut self.grpc_methods).insert(path.into());
        self
    }

    /// Hands the inner service the body type of mode `K2`; see
    /// [`InnerBody`](seawall_retry::InnerBody).
    pub fn inner_body<K2>(self) -> HttpRequests<K2> {
        HttpRequests {
            replay: self.replay.inner_body(),
            grpc_methods: self.grpc_methods,
        }
    }
}

impl<B, K> HedgePolicy<Request<B>> for HttpRequests<K>
where
    HttpReplay<K>: Replay<Request<B>>,
{
    type Replay = HttpReplay<K>;

    fn replay_for(&self, request: &Request<B>) -> (HttpReplay<K>, bool) {
        if self.replay.may_retry(request.method(), request.headers()) {
            return (self.replay, true);
        }
        if !self.grpc_methods.is_empty() && self.grpc_methods.contains(request.uri().path()) {
            // Opted in by its owner: staged as if idempotent.
            return (self.replay.any_method(true), true);
        }
        (self.replay, false)
    }
}

impl<B, K> HedgeResponse<http::Response<B>> for HttpRequests<K> {
    #[inline]
    fn in_flight(&self, response: &http::Response<B>) -> bool {
        matches!(
            response.status(),
            http::StatusCode::CONFLICT | http::StatusCode::TOO_EARLY
        )
    }
}
