//! HTTP support: the [`Http`] mode, the captured [`RequestInfo`] and the
//! [`FallbackBody`] that streams, records or replays response bodies.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{
    HeaderName, HeaderValue, AGE, CACHE_CONTROL, CONNECTION, SET_COOKIE, TE, TRANSFER_ENCODING,
    UPGRADE,
};
use http::{Extensions, HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use seawall_core::{BoxError, Classify, ConfigError, HttpClassifier};
use tower::util::BoxCloneSyncService;
use tower_service::Service;

use crate::layer::{Builder, FallbackLayer, LAYER};
use crate::mode::{Capture, Mode, Recorder, Respond};
use crate::tier::Degraded;

/// The header that names the serving tier by default: `seawall-degraded`.
pub const DEGRADED_HEADER: HeaderName = HeaderName::from_static("seawall-degraded");

/// The default limit of a body the last-known-good tier buffers: 256 KiB.
pub const DEFAULT_MAX_BODY_SIZE: usize = 256 * 1024;

/// A stored or substitute HTTP response, body in memory.
pub type StoredResponse = Response<Bytes>;

/// The alternative service's response, body boxed.
pub type AlternativeResponse = Response<UnsyncBoxBody<Bytes, BoxError>>;

/// The mode for `http::Request`s and `http::Response`s.
///
/// - Requests: [`RequestInfo`] (method, URI, version and the headers asked
///   for) is captured before the inner service consumes the request.
/// - Responses: the layer answers `Response<FallbackBody<B>>`. Successful
///   bodies pass through as they stream; when the last-known-good tier
///   records one, up to [`max_body_size`](Builder::max_body_size) bytes are
///   copied aside as they pass and stored when the body ends. A bigger body,
///   one that errs or one with trailers (gRPC status lives there) still
///   reaches the client intact but is not stored; neither is a response
///   marked `Cache-Control: no-store`, nor a `304 Not Modified` or
///   `206 Partial Content`, nor an answer to `HEAD`. Stored copies drop
///   `Set-Cookie` and hop-by-hop headers.
/// - Degraded responses carry a [`Degraded`] extension and, by default, the
///   header `seawall-degraded: <tier>`; last-known-good answers also carry
///   `Age` (RFC 9111 §5.1): the `Age` the response arrived with plus the
///   time it was held.
#[derive(Debug, Clone)]
pub struct Http {
    headers: CapturedHeaders,
    extensions: Vec<fn(&Extensions, &mut Extensions)>,
    max_body_size: usize,
    degraded_header: Option<HeaderName>,
    alternative_classifier: HttpClassifier,
}

#[derive(Debug, Clone)]
enum CapturedHeaders {
    Named(Vec<HeaderName>),
    All,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            headers: CapturedHeaders::Named(Vec::new()),
            extensions: Vec::new(),
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            degraded_header: Some(DEGRADED_HEADER),
            alternative_classifier: HttpClassifier::new(),
        }
    }
}

impl FallbackLayer<Http, HttpClassifier> {
    /// A builder for HTTP services, classifying with
    /// [`HttpClassifier::new`] (5xx, 408 and 429 fail).
    pub fn http() -> Builder<Http, HttpClassifier> {
        Builder::new(Http::default(), HttpClassifier::new())
    }
}

impl<C, L> Builder<Http, C, L> {
    /// Captures these request headers into [`RequestInfo`] (none by
    /// default), e.g. to key the last-known-good tier by tenant or language.
    #[must_use]
    pub fn capture_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.mode.headers = CapturedHeaders::Named(names.into_iter().collect());
        self
    }

    /// Captures every request header into [`RequestInfo`]. This copies the
    /// header map on each call; prefer [`capture_headers`](Self::capture_headers).
    #[must_use]
    pub fn capture_all_headers(mut self) -> Self {
        self.mode.headers = CapturedHeaders::All;
        self
    }

    /// Captures the request extension of type `T` into [`RequestInfo`], e.g.
    /// the user an authentication layer put there, to key the
    /// last-known-good tier by it.
    #[must_use]
    pub fn capture_extension<T>(mut self) -> Self
    where
        T: Clone + Send + Sync + 'static,
    {
        fn copy<T: Clone + Send + Sync + 'static>(from: &Extensions, to: &mut Extensions) {
            if let Some(value) = from.get::<T>() {
                to.insert(value.clone());
            }
        }
        self.mode.extensions.push(copy::<T>);
        self
    }

    /// The largest body the last-known-good tier stores (default 256 KiB).
    #[must_use]
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        if bytes == 0 {
            self.fail(ConfigError::new(
                LAYER,
                "max_body_size",
                "must be at least 1 byte",
            ));
        }
        self.mode.max_body_size = bytes;
        self
    }

    /// The header naming the tier on degraded responses
    /// (default [`DEGRADED_HEADER`]); `None` sets no header.
    #[must_use]
    pub fn degraded_header(mut self, name: Option<HeaderName>) -> Self {
        self.mode.degraded_header = name;
        self
    }

    /// Adds a secondary service, called with the request info (see
    /// [`RequestInfo::to_request`] to turn it into a request). The request
    /// body is not kept, so this suits reads. Answers that the
    /// [`alternative_classifier`](Self::alternative_classifier) calls
    /// failures, and errors, pass to the next tier. Bound its latency with a
    /// timeout layer: the caller waits for it.
    #[must_use]
    pub fn alternative<S, B>(self, svc: S) -> Self
    where
        S: Service<RequestInfo, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        use tower::ServiceExt;
        let svc = svc
            .map_response(|res: Response<B>| {
                res.map(|body| body.map_err(Into::into).boxed_unsync())
            })
            .map_err(Into::into);
        self.push_alternative(BoxCloneSyncService::new(svc))
    }

    /// Which answers of the alternative service count as failures (default
    /// [`HttpClassifier::new`]).
    #[must_use]
    pub fn alternative_classifier(mut self, classifier: HttpClassifier) -> Self {
        self.mode.alternative_classifier = classifier;
        self
    }
}

/// What the [`Http`] mode keeps of a request for the tiers: method, URI,
/// version, and the headers and extensions asked for with
/// [`capture_headers`](Builder::capture_headers) and
/// [`capture_extension`](Builder::capture_extension).
///
/// It is boxed so that the response future stays small while the inner
/// service runs.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    parts: Box<InfoParts>,
}

#[derive(Debug, Clone)]
struct InfoParts {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
}

impl RequestInfo {
    /// Request info without headers.
    pub fn new(method: Method, uri: Uri) -> Self {
        Self {
            parts: Box::new(InfoParts {
                method,
                uri,
                version: Version::default(),
                headers: HeaderMap::new(),
                extensions: Extensions::new(),
            }),
        }
    }

    /// The request method.
    pub fn method(&self) -> &Method {
        &self.parts.method
    }

    /// The request URI.
    pub fn uri(&self) -> &Uri {
        &self.parts.uri
    }

    /// The request's HTTP version.
    pub fn version(&self) -> Version {
        self.parts.version
    }

    /// The captured headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.parts.headers
    }

    /// The captured headers, mutably.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.parts.headers
    }

    /// The captured extensions.
    pub fn extensions(&self) -> &Extensions {
        &self.parts.extensions
    }

    /// The captured extensions, mutably.
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.parts.extensions
    }

    /// A request with the same method, URI, version, captured headers and
    /// extensions, and `body`; for calling an alternative HTTP service.
    pub fn to_request<B>(&self, body: B) -> Request<B> {
        let mut req = Request::new(body);
        *req.method_mut() = self.parts.method.clone();
        *req.uri_mut() = self.parts.uri.clone();
        *req.version_mut() = self.parts.version;
        *req.headers_mut() = self.parts.headers.clone();
        *req.extensions_mut() = self.parts.extensions.clone();
        req
    }
}

impl Mode for Http {
    type Info = RequestInfo;
    type Stored = StoredResponse;
    type Alternative = AlternativeResponse;

    fn alternative_usable(&self, res: &AlternativeResponse) -> bool {
        !Classify::<_, ()>::classify(&self.alternative_classifier, Ok(res)).is_failure()
    }

    /// An answer to HEAD has no body: under a key that ignores the method
    /// it would be replayed to a GET as an empty (or truncated) response.
    fn storable(&self, info: &RequestInfo) -> bool {
        info.method() != Method::HEAD
    }
}

impl<B> Capture<Request<B>> for Http {
    fn capture(&self, req: &Request<B>) -> RequestInfo {
        let headers = match &self.headers {
            CapturedHeaders::All => req.headers().clone(),
            CapturedHeaders::Named(names) => {
                let mut headers = HeaderMap::new();
                for name in names {
                    for value in req.headers().get_all(name) {
                        headers.append(name.clone(), value.clone());
                    }
                }
                headers
            }
        };
        let mut extensions = Extensions::new();
        for copy in &self.extensions {
            copy(req.extensions(), &mut extensions);
        }
        RequestInfo {
            parts: Box::new(InfoParts {
                method: req.method().clone(),
                uri: req.uri().clone(),
                version: req.version(),
                headers,
                extensions,
            }),
        }
    }
}

impl Http {
    fn mark<B>(&self, res: &mut Response<B>, degraded: Degraded) {
        if let Some(name) = &self.degraded_header {
            res.headers_mut().insert(
                name.clone(),
                HeaderValue::from_static(degraded.tier.as_str()),
            );
        }
        if let Some(age) = degraded.age {
            // RFC 9111 §4.2.3: the age it had when stored, plus the time held.
            let age = upstream_age(res.headers()).saturating_add(age.as_secs());
            res.headers_mut().insert(AGE, HeaderValue::from(age));
        }
        res.extensions_mut().insert(degraded);
    }
}

impl<B> Respond<Response<B>> for Http
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<FallbackBody<B>>;

    #[inline]
    fn pass(res: Response<B>) -> Self::Response {
        res.map(|body| FallbackBody::new(Kind::Inner { body }))
    }

    fn record(&self, res: Response<B>, recorder: Recorder<StoredResponse>) -> Self::Response {
        let (parts, body) = res.into_parts();
        let fits = body
            .size_hint()
            .lower()
            .try_into()
            .is_ok_and(|lower: usize| lower <= self.max_body_size);
        if !fits || !is_whole(parts.status) || forbids_storing(&parts.headers) {
            return Response::from_parts(parts, FallbackBody::new(Kind::Inner { body }));
        }
        let mut headers = parts.headers.clone();
        // Hop-by-hop fields belong to the original connection and framing,
        // not to a replay whose body is now a single buffer; `Connection`
        // can name more of them (RFC 9110 §7.6.1).
        let nominated: Vec<HeaderName> = parts
            .headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect();
        for name in HOP_BY_HOP.into_iter().chain(nominated) {
            headers.remove(name);
        }
        // A replay may reach another client with the same key: never hand
        // it someone else's session.
        headers.remove(SET_COOKIE);
        let recording = Recording {
            status: parts.status,
            version: parts.version,
            headers,
            chunks: Vec::new(),
            len: 0,
            limit: self.max_body_size,
            recorder,
        };
        let recording = if body.is_end_stream() {
            recording.finish();
            None
        } else {
            Some(Box::new(recording))
        };
        Response::from_parts(
            parts,
            FallbackBody::new(Kind::Recording { body, recording }),
        )
    }

    fn serve(&self, stored: StoredResponse, degraded: Degraded) -> Self::Response {
        let mut res = stored.map(|data| FallbackBody::new(Kind::Full { data: Some(data) }));
        self.mark(&mut res, degraded);
        res
    }

    fn serve_alternative(&self, res: AlternativeResponse, degraded: Degraded) -> Self::Response {
        let mut res = res.map(|body| FallbackBody::new(Kind::Alternative { body }));
        self.mark(&mut res, degraded);
        res
    }

    fn status(&self, res: &Response<B>) -> Option<StatusCode> {
        Some(res.status())
    }
}

const HOP_BY_HOP: [HeaderName; 6] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// `Cache-Control: no-store` (RFC 9111 §5.2.2.5) asks that the response not
/// be kept anywhere; a last-known-good copy would be one.
fn forbids_storing(headers: &HeaderMap) -> bool {
    headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|directive| directive.trim().eq_ignore_ascii_case("no-store"))
}

/// A 304 confirms the copy its client already holds and a 206 carries one
/// range of it: replayed to another request, either would be wrong.
fn is_whole(status: StatusCode) -> bool {
    status != StatusCode::NOT_MODIFIED && status != StatusCode::PARTIAL_CONTENT
}

/// The `Age` a stored response arrived with (RFC 9111 §5.1, delta-seconds):
/// 0 if absent or unreadable, capped at 2^31 as §1.2.2 asks.
fn upstream_age(headers: &HeaderMap) -> u64 {
    const CAP: u64 = 1 << 31;
    let Some(digits) = headers
        .get(AGE)
        .map(HeaderValue::as_bytes)
        .filter(|d| !d.is_empty() && d.iter().all(u8::is_ascii_digit))
    else {
        return 0;
    };
    std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse::<u64>().ok())
        .map_or(CAP, |age| age.min(CAP))
}

struct Recording {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    chunks: Vec<Bytes>,
    len: usize,
    limit: usize,
    recorder: Recorder<StoredResponse>,
}

impl Recording {
    /// `false` once the body outgrows the limit: the copy is abandoned.
    fn push(&mut self, data: &Bytes) -> bool {
        self.len = self.len.saturating_add(data.len());
        if self.len > self.limit {
            return false;
        }
        if !data.is_empty() {
            self.chunks.push(data.clone());
        }
        true
    }

    fn finish(self) {
        let Recording {
            status,
            version,
            headers,
            chunks,
            len,
            recorder,
            ..
        } = self;
        // Copied rather than kept as slices: a chunk may be a view into a
        // much larger read buffer that the cache would otherwise pin.
        let mut buf = BytesMut::with_capacity(len);
        for chunk in &chunks {
            buf.extend_from_slice(chunk);
        }
        let body = buf.freeze();
        let mut res = Response::new(body);
        *res.status_mut() = status;
        *res.version_mut() = version;
        *res.headers_mut() = headers;
        recorder.record(res);
    }
}

pin_project! {
    /// The body of an HTTP fallback layer's responses: the inner body
    /// (possibly being recorded), a stored body, or the alternative
    /// service's body.
    pub struct FallbackBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner {
            #[pin]
            body: B,
        },
        Recording {
            #[pin]
            body: B,
            recording: Option<Box<Recording>>,
        },
        Full {
            data: Option<Bytes>,
        },
        Alternative {
            body: UnsyncBoxBody<Bytes, BoxError>,
        },
    }
}

impl<B> FallbackBody<B> {
    fn new(kind: Kind<B>) -> Self {
        Self { kind }
    }
}

impl<B> fmt::Debug for FallbackBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Inner { .. } => "inner",
            Kind::Recording { .. } => "recording",
            Kind::Full { .. } => "stored",
            Kind::Alternative { .. } => "alternative",
        };
        f.debug_struct("FallbackBody")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

impl<B> Body for FallbackBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Recording {
                mut body,
                recording,
            } => {
                let frame = match body.as_mut().poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(frame) => frame,
                };
                match &frame {
                    Some(Ok(frame)) => match frame.data_ref() {
                        Some(data) => {
                            if recording.as_mut().is_some_and(|r| !r.push(data)) {
                                *recording = None;
                            }
                        }
                        // Trailers carry status (gRPC); a body stored
                        // without them would misreport it.
                        None => *recording = None,
                    },
                    Some(Err(_)) => *recording = None,
                    None => {}
                }
                let done = frame.is_none() || body.is_end_stream();
                if done && !matches!(frame, Some(Err(_))) {
                    if let Some(rec) = recording.take() {
                        (*rec).finish();
                    }
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            KindProj::Full { data } => Poll::Ready(
                data.take()
                    .filter(|d| !d.is_empty())
                    .map(|d| Ok(Frame::data(d))),
            ),
            KindProj::Alternative { body } => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } | Kind::Recording { body, .. } => body.is_end_stream(),
            Kind::Full { data } => data.as_ref().is_none_or(Bytes::is_empty),
            Kind::Alternative { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } | Kind::Recording { body, .. } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Alternative { body } => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(CACHE_CONTROL, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn no_store_is_found_among_directives() {
        assert!(forbids_storing(&headers(&["no-store"])));
        assert!(forbids_storing(&headers(&["max-age=0 , NO-STORE"])));
        assert!(forbids_storing(&headers(&["public", "no-store"])));
        assert!(!forbids_storing(&headers(&["no-cache, max-age=60"])));
        assert!(!forbids_storing(&headers(&["x-no-store-hint"])));
        assert!(!forbids_storing(&HeaderMap::new()));
        let mut opaque = HeaderMap::new();
        opaque.insert(
            CACHE_CONTROL,
            HeaderValue::from_bytes(b"no-store\xff").expect("obs-text is a valid value"),
        );
        assert!(!forbids_storing(&opaque), "unreadable values are ignored");
    }

    #[test]
    fn upstream_age_is_read_defensively() {
        let age = |value: &'static [u8]| {
            let mut map = HeaderMap::new();
            map.insert(AGE, HeaderValue::from_bytes(value).expect("valid value"));
            upstream_age(&map)
        };
        assert_eq!(upstream_age(&HeaderMap::new()), 0);
        assert_eq!(age(b"120"), 120);
        assert_eq!(age(b"+5"), 0);
        assert_eq!(age(b"-5"), 0);
        assert_eq!(age(b"1.5"), 0);
        assert_eq!(age(b"\xff"), 0);
        assert_eq!(age(b"99999999999999999999999"), 1 << 31);
    }

    #[test]
    fn stored_bodies_report_their_size_and_end() {
        let empty: FallbackBody<String> = FallbackBody::new(Kind::Full {
            data: Some(Bytes::new()),
        });
        assert!(empty.is_end_stream());
        assert_eq!(empty.size_hint().exact(), Some(0));
        let full: FallbackBody<String> = FallbackBody::new(Kind::Full {
            data: Some(Bytes::from_static(b"abc")),
        });
        assert!(!full.is_end_stream());
        assert_eq!(full.size_hint().exact(), Some(3));
        assert_eq!(format!("{full:?}"), "FallbackBody { kind: \"stored\", .. }");
    }

    #[test]
    fn request_info_rebuilds_a_request() {
        let mut info = RequestInfo::new(Method::GET, Uri::from_static("/a?b=c"));
        info.headers_mut()
            .insert("accept", HeaderValue::from_static("text/plain"));
        info.extensions_mut().insert(7_u8);
        let req = info.to_request(());
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/a?b=c");
        assert_eq!(req.headers()["accept"], "text/plain");
        assert_eq!(req.extensions().get::<u8>(), Some(&7));
        assert_eq!(info.version(), Version::HTTP_11);
    }
}
