//! Keeping a request so it can be sent again: plain clones for generic
//! requests, buffered bodies and idempotency rules for HTTP.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use seawall_core::BoxError;

/// The attempt number of a request, put in the request's extensions by
/// [`HttpReplay`] on every retry (2 for the first retry, 3 for the next...).
///
/// The first attempt carries none, so that a request that succeeds at once
/// costs no extra allocation: read it with [`Attempt::of`], which gives
/// [`Attempt::FIRST`] when it is absent. A service below the retry layer can
/// use it to log retries or to add a header:
///
/// ```
/// use seawall_retry::Attempt;
///
/// let mut req = http::Request::new(());
/// assert_eq!(Attempt::of(&req), Attempt::FIRST);
/// req.extensions_mut().insert(Attempt::new(2));
/// assert_eq!(Attempt::of(&req).get(), 2);
/// assert!(Attempt::of(&req).is_retry());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attempt(u32);

impl Attempt {
    /// The first attempt.
    pub const FIRST: Attempt = Attempt(1);

    /// Attempt number `n` (1-based; 0 reads as 1).
    pub const fn new(n: u32) -> Self {
        if n == 0 {
            Attempt(1)
        } else {
            Attempt(n)
        }
    }

    /// The attempt of `request`: the one in its extensions, or the first.
    pub fn of<B>(request: &Request<B>) -> Attempt {
        Self::from_extensions(request.extensions())
    }

    /// The attempt recorded in `extensions`, or the first.
    pub fn from_extensions(extensions: &http::Extensions) -> Attempt {
        extensions
            .get::<Attempt>()
            .copied()
            .unwrap_or(Attempt::FIRST)
    }

    /// The attempt number, counting the first attempt as 1.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// `true` from the second attempt on.
    pub const fn is_retry(self) -> bool {
        self.0 > 1
    }
}

/// What [`Replay::stage`] decided for a request.
#[derive(Debug)]
pub enum Staged<R, C, F> {
    /// The request can be sent now; `copy` is `Some` if it may be retried.
    Ready {
        /// The request for the first attempt.
        request: R,
        /// What is kept to rebuild it, if it may be retried.
        copy: Option<C>,
    },
    /// The request must first be prepared (its body read), asynchronously.
    Pending(F),
}

/// How a retry layer keeps a request so it can send it again.
///
/// Implemented by [`CloneRequest`] (any `Req: Clone`) and [`HttpReplay`]
/// (`http::Request` with a streaming body). Implement it to retry requests
/// that are neither, e.g. to re-open a file for each attempt.
pub trait Replay<Req> {
    /// The request type sent to the inner service.
    type Request;
    /// What is kept between attempts.
    type Copy;
    /// Prepares a request asynchronously (reads its body).
    type Pending: Future<Output = Result<(Self::Request, Option<Self::Copy>), BoxError>>;

    /// Prepares `req` for its first attempt. `retryable` is `false` when the
    /// layer will not retry anyway (one attempt allowed), so no copy is
    /// needed.
    fn stage(&self, req: Req, retryable: bool) -> Staged<Self::Request, Self::Copy, Self::Pending>;

    /// Rebuilds the request for attempt `attempt`.
    fn replay(&self, copy: &Self::Copy, attempt: Attempt) -> Self::Request;
}

/// How long a response asks the client to wait before retrying.
///
/// [`HttpReplay`] reads `Retry-After` and `grpc-retry-pushback-ms` from HTTP
/// responses; [`CloneRequest`] knows no hints.
pub trait ReadHint<Res> {
    /// The server's requested delay, if any.
    fn hint(&self, response: &Res) -> Option<Duration>;
}

/// Retries any `Req: Clone` by cloning it before the first attempt.
///
/// A generic request has no extensions, so it carries no [`Attempt`];
/// implement [`Replay`] to number attempts of a request type of your own.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneRequest;

impl<Req: Clone> Replay<Req> for CloneRequest {
    type Request = Req;
    type Copy = Req;
    type Pending = std::future::Pending<Result<(Req, Option<Req>), BoxError>>;

    #[inline]
    fn stage(&self, req: Req, retryable: bool) -> Staged<Req, Req, Self::Pending> {
        let copy = retryable.then(|| req.clone());
        Staged::Ready { request: req, copy }
    }

    #[inline]
    fn replay(&self, copy: &Req, _attempt: Attempt) -> Req {
        copy.clone()
    }
}

impl<Res> ReadHint<Res> for CloneRequest {
    #[inline]
    fn hint(&self, _response: &Res) -> Option<Duration> {
        None
    }
}

/// The `Idempotency-Key` header (IETF draft `httpapi-idempotency-key-header`).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The default body limit of [`HttpReplay`]: 64 KiB.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// Retries HTTP requests safely.
///
/// - Only idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) or
///   requests carrying a usable `Idempotency-Key` header (one line, neither
///   blank nor an empty string `""`) are retried, unless
///   [`any_method`](HttpReplay::any_method) is set: a POST that reached the
///   server once may have had its effect, and sending it again could charge a
///   card twice.
/// - Request bodies up to [`body_limit`](HttpReplay::body_limit) (default
///   64 KiB) are read into memory before the first attempt so that they can be
///   sent again. A body announced larger than the limit is sent as it comes
///   and never retried; a streaming body that turns out larger is sent once,
///   the bytes already read first and the rest of the stream after them.
/// - Each retry carries its [`Attempt`] in the request's extensions.
/// - The delay a response asks for (`Retry-After`, `grpc-retry-pushback-ms`)
///   is read as a hint.
///
/// # What the inner service receives
///
/// A request of body type `B` reaches the inner service as
/// `http::Request<K::Body>`, where `K` is one of the [`InnerBody`] modes:
///
/// | mode | inner service receives | fits |
/// |---|---|---|
/// | [`AsReplayBody`] (default, [`HttpReplay::new`]) | `Request<ReplayBody<B>>` | a hyper-util `Client` whose body type is inferred (`build_http()`), any service generic over its body |
/// | [`AsOriginalBody`] ([`original_body`](HttpReplay::original_body)) | `Request<B>`, the caller's own type | a client already built for `B`, e.g. `Client<_, Full<Bytes>>`; needs `B: From<Bytes>` |
/// | `AsTonicBody` (`tonic_body()`, feature `tonic`) | `Request<tonic::body::Body>` | a tonic `Channel`, or any `GrpcService` |
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use seawall_retry::{HttpReplay, Replay, ReplayBody, Staged};
///
/// let req = || http::Request::get("/").body(Full::new(Bytes::from("hi"))).unwrap();
/// // Default: the inner service gets a `ReplayBody<Full<Bytes>>`.
/// let Staged::Pending(_) = HttpReplay::new().stage(req(), true) else { unreachable!() };
/// // `original_body()`: it gets the caller's `Full<Bytes>` back, so a client
/// // built for `Full<Bytes>` needs no change.
/// let staged = HttpReplay::new().original_body().stage(req(), true);
/// let Staged::Pending(_) = staged else { unreachable!() };
/// ```
#[derive(Debug)]
pub struct HttpReplay<K = AsReplayBody> {
    body_limit: usize,
    any_method: bool,
    _body: PhantomData<fn() -> K>,
}

impl<K> Clone for HttpReplay<K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K> Copy for HttpReplay<K> {}

impl Default for HttpReplay {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpReplay {
    /// Idempotent methods and `Idempotency-Key` requests, bodies up to 64 KiB,
    /// handed to the inner service as [`ReplayBody`]s.
    pub const fn new() -> Self {
        Self {
            body_limit: DEFAULT_BODY_LIMIT,
            any_method: false,
            _body: PhantomData,
        }
    }
}

impl<K> HttpReplay<K> {
    /// The largest body buffered for replay.
    #[must_use]
    pub const fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Retries every method, including POST and PATCH without an
    /// `Idempotency-Key` (for APIs known to be idempotent, e.g. gRPC methods
    /// that are).
    #[must_use]
    pub const fn any_method(mut self, yes: bool) -> Self {
        self.any_method = yes;
        self
    }

    /// Hands the inner service the caller's own body type `B` (which must be
    /// `From<Bytes>`): a client built for `Full<Bytes>` can be wrapped as it
    /// is. See [`AsOriginalBody`] for what changes.
    #[must_use]
    pub const fn original_body(self) -> HttpReplay<AsOriginalBody> {
        self.inner_body()
    }

    /// Hands the inner service `tonic::body::Body`, what a tonic `Channel`
    /// takes.
    #[cfg(feature = "tonic")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
    #[must_use]
    pub const fn tonic_body(self) -> HttpReplay<AsTonicBody> {
        self.inner_body()
    }

    /// Hands the inner service the body type of mode `K2`; see
    /// [`InnerBody`].
    #[must_use]
    pub const fn inner_body<K2>(self) -> HttpReplay<K2> {
        HttpReplay {
            body_limit: self.body_limit,
            any_method: self.any_method,
            _body: PhantomData,
        }
    }

    /// `true` if a request with this method and headers may be retried:
    /// [`any_method`](Self::any_method), an idempotent method, or a usable
    /// `Idempotency-Key`: exactly one header line, neither blank nor an
    /// empty structured-field string (`""`).
    pub fn may_retry(&self, method: &Method, headers: &HeaderMap) -> bool {
        self.any_method
            || matches!(
                *method,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::PUT
                    | Method::DELETE
                    | Method::TRACE
            )
            || has_idempotency_key(headers)
    }
}

/// `true` when `headers` carry a usable `Idempotency-Key`: exactly one
/// header line, whose value is not blank (empty or only spaces and tabs) and
/// is not an empty structured-field string (`""`, with or without
/// parameters).
///
/// A server that deduplicates (`seawall-idempotency`, Stripe, the IETF
/// draft) refuses a repeated, empty or blank key with `400`, and one that
/// does not would treat each copy as a new request: neither makes sending
/// the request twice safe. The value is not otherwise parsed (one pass over
/// its bytes, no allocation); what the server accepts as a key is the
/// server's rule.
fn has_idempotency_key(headers: &HeaderMap) -> bool {
    let mut lines = headers.get_all(IDEMPOTENCY_KEY).iter();
    let (Some(value), None) = (lines.next(), lines.next()) else {
        return false;
    };
    let value = value.as_bytes().trim_ascii();
    !value.is_empty() && !value.starts_with(b"\"\"")
}

/// A request kept for replay by [`HttpReplay`]: its head and whole body.
#[derive(Debug, Clone)]
pub struct HttpCopy {
    parts: http::request::Parts,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl HttpCopy {
    /// The buffered body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
}

mod sealed {
    pub trait Sealed {}
}

/// How [`HttpReplay`] hands a request body of type `B` to the inner service:
/// [`AsReplayBody`], [`AsOriginalBody`] or, with the `tonic` feature,
/// `AsTonicBody`. Sealed: the layer's buffering relies on what each mode can
/// carry.
pub trait InnerBody<B>: sealed::Sealed {
    /// The body type the inner service receives.
    type Body;

    /// `true` if a body of this type can carry what buffering may leave
    /// behind: the bytes already read followed by the rest of a stream,
    /// and trailers. When `false`, only bodies of a known exact length
    /// within the limit are buffered; others are sent once, untouched.
    #[doc(hidden)]
    const STREAMS: bool;

    /// The caller's body, untouched (a request that is not retried).
    #[doc(hidden)]
    fn original(body: B) -> Self::Body;

    /// A buffered body, for the first attempt or a replay. Trailers are
    /// only given to modes that [`STREAMS`](Self::STREAMS).
    #[doc(hidden)]
    fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> Self::Body;

    /// The bytes read, then the rest of the stream; `None` if this mode
    /// cannot carry them.
    #[doc(hidden)]
    fn prefixed(prefix: Bytes, rest: B) -> Option<Self::Body>;
}

/// The default mode: the inner service receives `Request<ReplayBody<B>>`,
/// which carries every case (a buffered copy, a stream sent once, a stream
/// read in part). A hyper-util `Client` built with `build_http()` and no
/// type annotation infers it.
#[derive(Debug, Clone, Copy, Default)]
pub struct AsReplayBody;

impl sealed::Sealed for AsReplayBody {}

impl<B> InnerBody<B> for AsReplayBody {
    type Body = ReplayBody<B>;
    const STREAMS: bool = true;

    fn original(body: B) -> ReplayBody<B> {
        ReplayBody::streaming(body)
    }

    fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> ReplayBody<B> {
        ReplayBody::full(data, trailers)
    }

    fn prefixed(prefix: Bytes, rest: B) -> Option<ReplayBody<B>> {
        Some(ReplayBody::prefixed(prefix, rest))
    }
}

/// The inner service receives the caller's own `Request<B>`, so a client
/// already built for `B` (e.g. hyper-util's `Client<_, Full<Bytes>>`) is
/// wrapped with no change. Replays are rebuilt with `B::from(bytes)`.
///
/// Because `B` cannot carry "the bytes already read, then the rest of the
/// stream", only bodies whose exact length is announced (`size_hint`) and
/// within the limit are buffered for replay; a body of unknown length is
/// sent once, untouched, and not retried. A buffered body that turns out to
/// carry trailers, or more bytes than it announced, fails the request
/// rather than being sent without them.
#[derive(Debug, Clone, Copy, Default)]
pub struct AsOriginalBody;

impl sealed::Sealed for AsOriginalBody {}

impl<B: From<Bytes>> InnerBody<B> for AsOriginalBody {
    type Body = B;
    const STREAMS: bool = false;

    fn original(body: B) -> B {
        body
    }

    fn buffered(data: Bytes, _trailers: Option<HeaderMap>) -> B {
        B::from(data)
    }

    fn prefixed(_prefix: Bytes, _rest: B) -> Option<B> {
        None
    }
}

/// The inner service receives `Request<tonic::body::Body>`, what a tonic
/// `Channel` (and every tonic `GrpcService`) takes; the requests tonic's
/// clients send are `Request<tonic::body::Body>` too, so a retry layer sits
/// between a tonic client and its channel with no conversion.
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
#[derive(Debug, Clone, Copy, Default)]
pub struct AsTonicBody;

#[cfg(feature = "tonic")]
impl sealed::Sealed for AsTonicBody {}

#[cfg(feature = "tonic")]
impl<B> InnerBody<B> for AsTonicBody
where
    B: Body + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Body = tonic::body::Body;
    const STREAMS: bool = true;

    fn original(body: B) -> tonic::body::Body {
        tonic::body::Body::new(ReplayBody::streaming(body))
    }

    fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> tonic::body::Body {
        tonic::body::Body::new(ReplayBody::<B>::full(data, trailers))
    }

    fn prefixed(prefix: Bytes, rest: B) -> Option<tonic::body::Body> {
        Some(tonic::body::Body::new(ReplayBody::prefixed(prefix, rest)))
    }
}

impl<B, K> Replay<Request<B>> for HttpReplay<K>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
    K: InnerBody<B>,
{
    type Request = Request<K::Body>;
    type Copy = HttpCopy;
    type Pending = BufferBody<B, K>;

    fn stage(
        &self,
        req: Request<B>,
        retryable: bool,
    ) -> Staged<Self::Request, HttpCopy, BufferBody<B, K>> {
        let (parts, body) = req.into_parts();
        let retryable = retryable && self.may_retry(&parts.method, &parts.headers);
        let hint = body.size_hint();
        let limit = self.body_limit as u64;
        let too_large = if K::STREAMS {
            hint.lower() > limit
        } else {
            // Only a body known to fit can be buffered without a way to
            // send "what was read, then the rest".
            hint.exact().is_none_or(|n| n > limit)
        };
        if !retryable || too_large {
            let request = Request::from_parts(parts, K::original(body));
            return Staged::Ready {
                request,
                copy: None,
            };
        }
        if body.is_end_stream() {
            let copy = HttpCopy {
                parts: parts.clone(),
                body: Bytes::new(),
                trailers: None,
            };
            let request = Request::from_parts(parts, K::buffered(Bytes::new(), None));
            return Staged::Ready {
                request,
                copy: Some(copy),
            };
        }
        Staged::Pending(BufferBody {
            head: Some(parts),
            body: Some(body),
            data: BytesMut::new(),
            limit: self.body_limit,
            _mode: PhantomData,
        })
    }

    fn replay(&self, copy: &HttpCopy, attempt: Attempt) -> Self::Request {
        let mut parts = copy.parts.clone();
        parts.extensions.insert(attempt);
        Request::from_parts(parts, K::buffered(copy.body.clone(), copy.trailers.clone()))
    }
}

impl<B, K> ReadHint<Response<B>> for HttpReplay<K> {
    /// `Retry-After` if valid, else `grpc-retry-pushback-ms`. A pushback that
    /// is present but negative or unparseable means "do not retry" (gRFC A6):
    /// it reads as an endless delay, which ends retrying. So does a
    /// well-formed `Retry-After` longer than [`MAX_HINT`](seawall_core::hint::MAX_HINT)
    /// (which `seawall_core` declines to parse): the server asked for more
    /// than any `max_delay`, not for nothing. A malformed `Retry-After` is
    /// ignored (RFC 9110).
    fn hint(&self, response: &Response<B>) -> Option<Duration> {
        use seawall_core::hint;
        let headers = response.headers();
        if let Some(after) = retry_after(headers) {
            return Some(after);
        }
        headers
            .contains_key(hint::GRPC_RETRY_PUSHBACK)
            .then(|| hint::grpc_pushback(headers).unwrap_or(Duration::MAX))
    }
}

/// The `Retry-After` of `headers`: the delay, `Duration::MAX` for a
/// well-formed value beyond `seawall_core`'s `MAX_HINT` (a huge number of
/// seconds, or an HTTP-date days away), `None` when absent or malformed.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    use seawall_core::hint;
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    if let Some(after) = hint::parse_retry_after(value) {
        return Some(after);
    }
    let value = value.trim();
    let seconds = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    // Against a clock past the last year an HTTP-date can name, every
    // well-formed date is in the past (zero) and anything else is `None`:
    // so this tells a too-distant date from garbage without a date parser.
    let after_any_date = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_800);
    let date = hint::parse_retry_after_at(value, after_any_date).is_some();
    (seconds || date).then_some(Duration::MAX)
}

/// Reads a request body up to the limit; see [`HttpReplay`].
pub struct BufferBody<B, K = AsReplayBody> {
    head: Option<http::request::Parts>,
    body: Option<B>,
    data: BytesMut,
    limit: usize,
    _mode: PhantomData<fn() -> K>,
}

impl<B, K> fmt::Debug for BufferBody<B, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferBody")
            .field("buffered", &self.data.len())
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

type Prepared<T> = (Request<T>, Option<HttpCopy>);

impl<B, K> Future for BufferBody<B, K>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
    K: InnerBody<B>,
{
    type Output = Result<Prepared<K::Body>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(Err("request body polled after completion".into()));
        };
        let mut trailers = None;
        loop {
            match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut chunk) => {
                        let bytes = chunk.copy_to_bytes(chunk.remaining());
                        this.data.extend_from_slice(&bytes);
                        if this.data.len() > this.limit {
                            // Too large to keep: send it once, what was read
                            // first and the rest of the stream after it.
                            let prefix = std::mem::take(&mut this.data).freeze();
                            let (Some(parts), Some(rest)) = (this.head.take(), this.body.take())
                            else {
                                return Poll::Ready(Err(
                                    "request body polled after completion".into()
                                ));
                            };
                            let Some(body) = K::prefixed(prefix, rest) else {
                                return Poll::Ready(Err(
                                    "request body longer than its announced length".into(),
                                ));
                            };
                            return Poll::Ready(Ok((Request::from_parts(parts, body), None)));
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            trailers = Some(t);
                            break;
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Err(e.into())),
                None => break,
            }
        }
        this.body = None;
        if trailers.is_some() && !K::STREAMS {
            return Poll::Ready(Err(
                "request trailers cannot be sent in this body type".into()
            ));
        }
        let Some(parts) = this.head.take() else {
            return Poll::Ready(Err("request body polled after completion".into()));
        };
        let data = std::mem::take(&mut this.data).freeze();
        let copy = HttpCopy {
            parts: parts.clone(),
            body: data.clone(),
            trailers: trailers.clone(),
        };
        let request = Request::from_parts(parts, K::buffered(data, trailers));
        Poll::Ready(Ok((request, Some(copy))))
    }
}

/// The body of a request sent by [`HttpReplay`]: a buffered copy, or the
/// original stream (possibly after the bytes read while trying to buffer it).
pub struct ReplayBody<B> {
    kind: Kind<B>,
}

enum Kind<B> {
    Full {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    Stream {
        prefix: Option<Bytes>,
        rest: B,
    },
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Full { data, .. } => f
                .debug_struct("ReplayBody::Full")
                .field("remaining", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Stream { prefix, .. } => f
                .debug_struct("ReplayBody::Stream")
                .field("prefix", &prefix.as_ref().map_or(0, Bytes::len))
                .finish_non_exhaustive(),
        }
    }
}

impl<B> ReplayBody<B> {
    fn full(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        let data = (!data.is_empty()).then_some(data);
        Self {
            kind: Kind::Full { data, trailers },
        }
    }

    fn streaming(body: B) -> Self {
        Self {
            kind: Kind::Stream {
                prefix: None,
                rest: body,
            },
        }
    }

    fn prefixed(prefix: Bytes, body: B) -> Self {
        Self {
            kind: Kind::Stream {
                prefix: (!prefix.is_empty()).then_some(prefix),
                rest: body,
            },
        }
    }

    /// `true` if this body is a buffered copy that can be sent again.
    pub fn is_buffered(&self) -> bool {
        matches!(self.kind, Kind::Full { .. })
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match &mut self.kind {
            Kind::Full { data, trailers } => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            Kind::Stream { prefix, rest } => {
                if let Some(prefix) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                let frame = ready!(Pin::new(rest).poll_frame(cx));
                Poll::Ready(
                    frame.map(|r| r.map(|f| f.map_data(|mut d| d.copy_to_bytes(d.remaining())))),
                )
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Stream { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Stream { prefix, rest } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(extra));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(extra));
                }
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    type Frames = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>,
    >;

    fn post(body: Full<Bytes>) -> Request<Full<Bytes>> {
        Request::post("/").body(body).unwrap()
    }

    #[test]
    fn only_idempotent_methods_or_keyed_requests_may_retry() {
        let replay = HttpReplay::new();
        let empty = HeaderMap::new();
        for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
            assert!(replay.may_retry(&m.parse().unwrap(), &empty), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT"] {
            assert!(!replay.may_retry(&m.parse().unwrap(), &empty), "{m}");
        }
        let mut keyed = HeaderMap::new();
        keyed.insert(IDEMPOTENCY_KEY, "k-1".parse().unwrap());
        assert!(replay.may_retry(&Method::POST, &keyed));
        assert!(HttpReplay::new()
            .any_method(true)
            .may_retry(&Method::PATCH, &empty));
    }

    #[tokio::test]
    async fn small_body_is_buffered_and_replayed_identically() {
        let mut req = post(Full::new(Bytes::from_static(b"hello")));
        req.headers_mut()
            .insert(IDEMPOTENCY_KEY, "k".parse().unwrap());
        let Staged::Pending(fut) = HttpReplay::new().stage(req, true) else {
            panic!("a body must be read first");
        };
        let (first, copy) = fut.await.unwrap();
        let copy = copy.expect("kept for replay");
        assert_eq!(
            first.extensions().get::<Attempt>(),
            None,
            "no allocation for it"
        );
        assert_eq!(Attempt::of(&first), Attempt::FIRST);
        assert!(first.body().is_buffered());
        assert_eq!(
            first.into_body().collect().await.unwrap().to_bytes(),
            "hello"
        );
        let again =
            Replay::<Request<Full<Bytes>>>::replay(&HttpReplay::new(), &copy, Attempt::new(2));
        assert_eq!(again.extensions().get::<Attempt>(), Some(&Attempt::new(2)));
        assert_eq!(again.headers()[IDEMPOTENCY_KEY], "k");
        assert_eq!(
            again.into_body().collect().await.unwrap().to_bytes(),
            "hello"
        );
    }

    #[tokio::test]
    async fn announced_large_body_is_streamed_without_copy() {
        let body = Full::new(Bytes::from(vec![7u8; 100]));
        let req = Request::put("/").body(body).unwrap();
        let Staged::Ready { request, copy } = HttpReplay::new().body_limit(99).stage(req, true)
        else {
            panic!("no need to read a body known too large");
        };
        assert!(copy.is_none());
        assert!(!request.body().is_buffered());
        assert_eq!(
            request
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .len(),
            100
        );
    }

    #[tokio::test]
    async fn streaming_body_over_the_limit_keeps_its_bytes_in_order() {
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..10u8)
            .map(|i| Ok(Frame::data(Bytes::from(vec![i; 10]))))
            .collect();
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let req = Request::put("/").body(body).unwrap();
        let Staged::Pending(fut) = HttpReplay::new().body_limit(25).stage(req, true) else {
            panic!("unknown size must be read");
        };
        let (request, copy) = fut.await.unwrap();
        assert!(copy.is_none(), "over the limit: not retried");
        let all = request.into_body().collect().await.unwrap().to_bytes();
        let expected: Vec<u8> = (0..10u8).flat_map(|i| vec![i; 10]).collect();
        assert_eq!(all.as_ref(), expected.as_slice());
    }

    #[tokio::test]
    async fn post_without_key_is_sent_once_as_is() {
        let req = post(Full::new(Bytes::from_static(b"x")));
        let Staged::Ready { copy, request } = HttpReplay::new().stage(req, true) else {
            panic!("not retryable: nothing to read");
        };
        assert!(copy.is_none());
        assert_eq!(request.into_body().collect().await.unwrap().to_bytes(), "x");
    }

    /// A body that announces a length (or none) and yields given frames.
    #[derive(Debug)]
    struct Announced {
        frames: std::collections::VecDeque<Frame<Bytes>>,
        length: Option<u64>,
    }

    impl Announced {
        fn new(length: Option<u64>, frames: Vec<Frame<Bytes>>) -> Self {
            Self {
                frames: frames.into(),
                length,
            }
        }
    }

    impl From<Bytes> for Announced {
        fn from(data: Bytes) -> Self {
            let length = Some(data.len() as u64);
            Self::new(length, vec![Frame::data(data)])
        }
    }

    impl Body for Announced {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.frames.pop_front().map(Ok))
        }

        fn size_hint(&self) -> SizeHint {
            self.length.map_or_else(SizeHint::new, SizeHint::with_exact)
        }
    }

    #[tokio::test]
    async fn original_body_mode_hands_back_the_callers_type() {
        let replay = HttpReplay::new().original_body();
        let mut req = post(Full::new(Bytes::from_static(b"hello")));
        req.headers_mut()
            .insert(IDEMPOTENCY_KEY, "k".parse().unwrap());
        let Staged::Pending(fut) = replay.stage(req, true) else {
            panic!("a body of known length within the limit is read first");
        };
        let (first, copy): (Request<Full<Bytes>>, _) = fut.await.unwrap();
        assert_eq!(
            first.into_body().collect().await.unwrap().to_bytes(),
            "hello"
        );
        let again: Request<Full<Bytes>> = replay.replay(&copy.unwrap(), Attempt::new(2));
        assert_eq!(Attempt::of(&again).get(), 2);
        assert_eq!(
            again.into_body().collect().await.unwrap().to_bytes(),
            "hello"
        );

        // Too large, or of unknown length: sent once, untouched.
        let big = Request::put("/")
            .body(Full::new(Bytes::from(vec![1u8; 100])))
            .unwrap();
        let Staged::Ready { request, copy } = replay.body_limit(99).stage(big, true) else {
            panic!("not read");
        };
        assert!(copy.is_none());
        assert_eq!(
            request
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .len(),
            100
        );
        let unknown = Announced::new(None, vec![Frame::data(Bytes::from_static(b"abc"))]);
        let req = Request::put("/").body(unknown).unwrap();
        let Staged::Ready { request, copy } = replay.stage(req, true) else {
            panic!("a body of unknown length cannot be buffered in this mode");
        };
        assert!(copy.is_none());
        assert_eq!(
            request.into_body().collect().await.unwrap().to_bytes(),
            "abc"
        );
    }

    #[tokio::test]
    async fn original_body_mode_refuses_what_its_type_cannot_carry() {
        let replay = HttpReplay::new().original_body().body_limit(5);
        // Announces 3 bytes, sends 10: cannot be sent as "read + rest".
        let liar = Announced::new(Some(3), vec![Frame::data(Bytes::from(vec![7u8; 10]))]);
        let Staged::Pending(fut) = replay.stage(Request::put("/").body(liar).unwrap(), true) else {
            panic!("announced within the limit: read first");
        };
        let err = fut.await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "request body longer than its announced length"
        );

        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", "1".parse().unwrap());
        let with_trailers = Announced::new(
            Some(2),
            vec![
                Frame::data(Bytes::from_static(b"ab")),
                Frame::trailers(trailers),
            ],
        );
        let Staged::Pending(fut) =
            replay.stage(Request::put("/").body(with_trailers).unwrap(), true)
        else {
            panic!("read first");
        };
        let err = fut.await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "request trailers cannot be sent in this body type"
        );
    }

    #[tokio::test]
    async fn trailers_are_kept_and_body_errors_surface() {
        let mut t = HeaderMap::new();
        t.insert("x-sum", "1".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::trailers(t)),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let Staged::Pending(fut) =
            HttpReplay::new().stage(Request::put("/").body(body).unwrap(), true)
        else {
            panic!()
        };
        let (_, copy) = fut.await.unwrap();
        let copy = copy.unwrap();
        assert_eq!(copy.body(), &Bytes::from_static(b"ab"));
        let replay = HttpReplay::new();
        let again: Request<ReplayBody<Frames>> = replay.replay(&copy, Attempt::new(3));
        let collected = again.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-sum"], "1");

        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> =
            vec![Err(std::io::Error::other("reset"))];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let Staged::Pending(fut) =
            HttpReplay::new().stage(Request::put("/").body(body).unwrap(), true)
        else {
            panic!()
        };
        assert_eq!(fut.await.unwrap_err().to_string(), "reset");
    }
}
