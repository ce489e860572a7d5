//! HTTP support: the [`Http`] mode, the captured [`RequestInfo`] and the
//! [`FallbackBody`] that streams, records or replays response bodies.

use std::fmt;
use std::mem::size_of;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{
    HeaderName, HeaderValue, AGE, AUTHORIZATION, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, COOKIE,
    PROXY_AUTHORIZATION, SET_COOKIE, TE, TRANSFER_ENCODING, UPGRADE, VARY,
};
use http::{Extensions, HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use seawall_core::{BoxError, Classify, ConfigError, HttpClassifier};
use sha2::{Digest, Sha256};
use tower::util::BoxCloneSyncService;
use tower_service::Service;

#[cfg(feature = "redis")]
use crate::last_known_good::Store;
use crate::layer::{Builder, FallbackLayer, LAYER};
use crate::mode::{Capture, Mode, Recorder, Respond};
use crate::tier::Degraded;
#[cfg(feature = "redis")]
use crate::LastKnownGood;
#[cfg(feature = "redis")]
use std::hash::Hash;
#[cfg(feature = "redis")]
use std::sync::Arc;

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
///   reaches the client intact but is not stored.
/// - Degraded responses carry a [`Degraded`] extension and, by default, the
///   header `seawall-degraded: <tier>`; last-known-good answers also carry
///   `Age` (RFC 9111 §5.1): the `Age` the response arrived with plus the
///   time it was held.
///
/// # What the last-known-good tier stores
///
/// The tier is a cache shared by every caller whose request has the same
/// key, so it follows RFC 9111's rules for a shared cache. An answer is
/// stored — and replaces the entry under its key — only if all hold:
///
/// - the classifier calls it a success **and** its status is `200 OK`,
///   `203 Non-Authoritative Information` or `204 No Content`: a whole,
///   healthy answer. Any other status (`201`, `206`, `304`, every 3xx, 4xx
///   such as `401`/`403`/`404`, and 5xx) passes to its client and leaves
///   the stored entry as it was;
/// - the request is not `HEAD`, and carries no `Cache-Control: no-store`;
/// - the request carries no credentials (`Authorization`,
///   `Proxy-Authorization`, `Cookie`; §3.5), unless the tier was told that
///   its key [includes the principal](crate::LastKnownGood::key_includes_principal);
/// - the response's `Cache-Control` has no `no-store`, and no `private`
///   (§5.2.2.7) — except, with a key that includes the principal, for an
///   answer to a request that carried credentials; a `Cache-Control` value
///   that is not readable text counts as forbidding;
/// - the response's `Cache-Control` has none of the directives that forbid
///   serving it stale without validation (§4.2.4): `no-cache` (with or
///   without a field list), `must-revalidate`, `proxy-revalidate` or
///   `s-maxage` (any value). The tier answers exactly when the origin
///   cannot validate, so such an answer is never stored, however long its
///   freshness lifetime (`stale-if-error` is not read);
/// - it is not a gRPC answer (`Content-Type: application/grpc…`, or a
///   `grpc-status` header): a healthy one carries its status in trailers,
///   which are not kept, so the only storable ones would be trailers-only
///   errors behind an HTTP `200`;
/// - its `Connection` does not name `Vary`, `Cache-Control` or `Set-Cookie`
///   (the stored copy drops what `Connection` names, and without its `Vary`
///   a variant would match every request);
/// - the response carries no `Set-Cookie`: it is per-user by nature;
/// - its `Vary` is not `*` (§4.1) and names only valid field names.
///
/// A stored answer is served only to a request with the same key **and**
/// the same values (byte for byte, in order) of every request field its
/// `Vary` names; other variants fall through to the next tier. One variant
/// is kept per key, the latest. The variant is remembered as a SHA-256
/// digest of those values, so credentials named by `Vary` are not kept.
/// Stored copies drop hop-by-hop headers. While the tier is configured, the
/// request's header map is kept (reference-counted values, not copies of
/// them) until the call ends, to judge the above.
#[derive(Debug, Clone)]
pub struct Http {
    headers: CapturedHeaders,
    extensions: Vec<fn(&Extensions, &mut Extensions)>,
    max_body_size: usize,
    degraded_header: Option<HeaderName>,
    alternative_classifier: HttpClassifier,
    /// Set when the last-known-good tier is configured: it needs every
    /// request field (credentials, `Cache-Control`, those `Vary` names).
    keep_request_headers: bool,
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
            keep_request_headers: false,
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

    /// Adds the last-known-good tier, sharing its answers with every replica
    /// through Redis (see [`RedisLastKnownGood`](crate::RedisLastKnownGood)):
    /// the same tier as [`last_known_good`](Builder::last_known_good), with
    /// the same rules for what is stored and served, that also writes each
    /// answer it records to Redis and, on a local miss, reads Redis.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use seawall_fallback::{FallbackLayer, LastKnownGood, RedisLastKnownGood, RequestInfo};
    ///
    /// # fn main() -> Result<(), seawall_core::ConfigError> {
    /// let redis = RedisLastKnownGood::open("redis://127.0.0.1:6379")?
    ///     .prefix("catalog:lkg:")
    ///     .timeout(Duration::from_millis(50));
    /// let layer = FallbackLayer::http()
    ///     .last_known_good_shared(LastKnownGood::new(), redis, |info: &RequestInfo| {
    ///         Some(info.uri().path().to_owned())
    ///     })
    ///     .build()?;
    /// # let _ = layer;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    #[must_use]
    pub fn last_known_good_shared<K, F>(
        self,
        config: LastKnownGood,
        redis: crate::RedisLastKnownGood,
        key: F,
    ) -> Self
    where
        F: Fn(&RequestInfo) -> Option<K> + Send + Sync + 'static,
        K: Hash + Eq + Send + Sync + 'static,
    {
        let valid = redis.validate();
        self.add_last_known_good(config, valid, move |config| {
            let remote =
                crate::redis::Remote::new(redis, config.staleness(), encode_stored, decode_stored);
            Arc::new(Store::shared(config, key, remote))
        })
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
#[derive(Clone)]
pub struct RequestInfo {
    parts: Box<InfoParts>,
}

impl fmt::Debug for RequestInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.parts.fmt(f)
    }
}

#[derive(Clone)]
struct InfoParts {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
    /// Every request field, when kept for the last-known-good tier and not
    /// already in `headers`.
    request_headers: Option<HeaderMap>,
}

impl fmt::Debug for InfoParts {
    /// The captured parts only: the request's full header map, kept for the
    /// last-known-good tier, holds credentials that must not reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestInfo")
            .field("method", &self.method)
            .field("uri", &self.uri)
            .field("version", &self.version)
            .field("headers", &self.headers)
            .field("extensions", &self.extensions)
            .finish_non_exhaustive()
    }
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
                request_headers: None,
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

    /// Every field of the request when kept, else the captured ones.
    fn request_headers(&self) -> &HeaderMap {
        self.parts
            .request_headers
            .as_ref()
            .unwrap_or(&self.parts.headers)
    }

    /// `true` if the request carried credentials: it was made on someone's
    /// behalf (RFC 9111 §3.5 names `Authorization`; a cookie or a proxy's
    /// credentials identify a principal as well).
    fn has_credentials(&self) -> bool {
        let headers = self.request_headers();
        [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE]
            .iter()
            .any(|name| headers.contains_key(name))
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
    /// A request's `no-store` asks that nothing of this exchange be kept;
    /// one with credentials is someone's own.
    fn storable(&self, info: &RequestInfo, key_includes_principal: bool) -> bool {
        info.method() != Method::HEAD
            && !cache_control(info.request_headers()).no_store
            && (key_includes_principal || !info.has_credentials())
    }

    fn usable(&self, stored: &StoredResponse, info: &RequestInfo) -> bool {
        match vary_names(stored.headers()) {
            Some(names) if names.is_empty() => true,
            Some(names) => stored
                .extensions()
                .get::<Variant>()
                .is_some_and(|variant| *variant == Variant::of(&names, info.request_headers())),
            None => false,
        }
    }

    fn enable_last_known_good(&mut self) {
        self.keep_request_headers = true;
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
        let request_headers = (self.keep_request_headers
            && !matches!(self.headers, CapturedHeaders::All))
        .then(|| req.headers().clone());
        RequestInfo {
            parts: Box::new(InfoParts {
                method: req.method().clone(),
                uri: req.uri().clone(),
                version: req.version(),
                headers,
                extensions,
                request_headers,
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

    fn record(
        &self,
        res: Response<B>,
        info: &RequestInfo,
        recorder: Recorder<StoredResponse>,
    ) -> Self::Response {
        let (parts, body) = res.into_parts();
        let fits = body
            .size_hint()
            .lower()
            .try_into()
            .is_ok_and(|lower: usize| lower <= self.max_body_size);
        let variant = fits
            .then(|| storable_variant(&parts, info, recorder.includes_principal()))
            .flatten();
        let Some(variant) = variant else {
            return Response::from_parts(parts, FallbackBody::new(Kind::Inner { body }));
        };
        let mut headers = parts.headers.clone();
        // Hop-by-hop fields belong to the original connection and framing,
        // not to a replay whose body is now a single buffer; `Connection`
        // can name more of them (RFC 9110 §7.6.1).
        for name in HOP_BY_HOP.into_iter().chain(nominated(&parts.headers)) {
            headers.remove(name);
        }
        let recording = Recording {
            status: parts.status,
            version: parts.version,
            headers,
            variant,
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
        res.extensions_mut().remove::<Variant>();
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

/// The fields a response's `Connection` names (RFC 9110 §7.6.1): hop-by-hop,
/// dropped from the stored copy.
fn nominated(headers: &HeaderMap) -> impl Iterator<Item = HeaderName> + '_ {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
}

/// `true` if `Connection` names a field the storing and serving rules read
/// (`Vary`, `Cache-Control`, `Set-Cookie`). Dropping it from the stored copy
/// would change what the copy may be served to — without its `Vary` a
/// variant would match every request — so such an answer is not stored.
/// (A sender must not nominate end-to-end fields, RFC 9110 §7.6.1.)
fn nominates_a_rule_field(headers: &HeaderMap) -> bool {
    nominated(headers).any(|name| name == VARY || name == CACHE_CONTROL || name == SET_COOKIE)
}

/// The `Cache-Control` directives that decide storing (RFC 9111 §5.2).
#[derive(Debug, Default, PartialEq, Eq)]
struct CacheControl {
    /// `no-store`, or a value that is not readable text (which might have
    /// said so).
    no_store: bool,
    /// `private`, with or without a field list (§5.2.2.7): either way the
    /// response was meant for one user.
    private: bool,
    /// A directive that forbids serving the response stale, i.e. without
    /// validating it with the origin first (§4.2.4): `no-cache` with or
    /// without a field list (§5.2.2.4), `must-revalidate` (§5.2.2.2),
    /// `proxy-revalidate` (§5.2.2.8) or `s-maxage` (§5.2.2.10, which
    /// applies to a shared cache such as this tier). A last-known-good
    /// answer is served exactly when the origin cannot validate it.
    no_stale: bool,
}

fn cache_control(headers: &HeaderMap) -> CacheControl {
    let mut found = CacheControl::default();
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(value) = value.to_str() else {
            found.no_store = true;
            continue;
        };
        // A quoted comma splits a `private="a, b"` argument; the directive
        // name before it is still read, and what follows is no directive.
        for directive in value.split(',') {
            let name = directive.split('=').next().unwrap_or_default().trim();
            if name.eq_ignore_ascii_case("no-store") {
                found.no_store = true;
            } else if name.eq_ignore_ascii_case("private") {
                found.private = true;
            } else if [
                "no-cache",
                "must-revalidate",
                "proxy-revalidate",
                "s-maxage",
            ]
            .iter()
            .any(|forbids| name.eq_ignore_ascii_case(forbids))
            {
                found.no_stale = true;
            }
        }
    }
    found
}

/// A whole, healthy answer that can stand in for a later one: `200`, `203`
/// or `204`. Not a `206` (one range of it), a `304` (confirms a copy its
/// client holds), a `201`/`202` (the outcome of one request), a redirect,
/// nor any 4xx or 5xx.
fn stands_in(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::OK | StatusCode::NON_AUTHORITATIVE_INFORMATION | StatusCode::NO_CONTENT
    )
}

/// `true` for a gRPC answer: one whose `Content-Type` is `application/grpc`
/// or `application/grpc+…`/`application/grpc-web…` (any case), or that
/// carries `grpc-status` among its headers. A healthy gRPC answer ends with
/// its status in trailers, which the tier does not keep, so the only gRPC
/// answers it could store are trailers-only ones — errors
/// (`UNAUTHENTICATED`, `UNAVAILABLE`...) behind an HTTP `200`. None is
/// stored, whatever the classifier says.
fn is_grpc(headers: &HeaderMap) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    headers.contains_key(GRPC_STATUS)
        || headers.get_all(CONTENT_TYPE).iter().any(|value| {
            let value = value.as_bytes().trim_ascii_start();
            value.len() >= GRPC.len() && value[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        })
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The request fields a response's `Vary` names, in order; `None` for
/// `Vary: *` or a value that cannot be read as field names.
fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in headers.get_all(VARY) {
        let value = value.to_str().ok()?;
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if token == "*" {
                return None;
            }
            names.push(HeaderName::from_bytes(token.as_bytes()).ok()?);
        }
    }
    Some(names)
}

/// The values of the request fields a stored response's `Vary` names, as a
/// SHA-256 digest: compared on recall, never kept in clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Variant([u8; 32]);

impl Variant {
    fn of(names: &[HeaderName], request: &HeaderMap) -> Self {
        // No `Vary`: every request matches, and nothing needs hashing.
        if names.is_empty() {
            return Self([0; 32]);
        }
        let mut digest = Sha256::new();
        // Length-prefixed, so that no two different sets of values give
        // the same input.
        for name in names {
            digest.update((name.as_str().len() as u64).to_le_bytes());
            digest.update(name.as_str());
            let values = request.get_all(name);
            digest.update((values.iter().count() as u64).to_le_bytes());
            for value in values {
                digest.update((value.len() as u64).to_le_bytes());
                digest.update(value.as_bytes());
            }
        }
        Self(digest.finalize().into())
    }
}

/// The variant to store this answer as, if it may be stored at all (see
/// [`Http`]'s rules).
fn storable_variant(
    parts: &http::response::Parts,
    info: &RequestInfo,
    key_includes_principal: bool,
) -> Option<Variant> {
    if !stands_in(parts.status)
        || parts.headers.contains_key(SET_COOKIE)
        || is_grpc(&parts.headers)
        || nominates_a_rule_field(&parts.headers)
    {
        return None;
    }
    let directives = cache_control(&parts.headers);
    let private_ok = key_includes_principal && info.has_credentials();
    if directives.no_store || directives.no_stale || (directives.private && !private_ok) {
        return None;
    }
    let names = vary_names(&parts.headers)?;
    Some(Variant::of(&names, info.request_headers()))
}

/// The memory a stored response holds: its body, its fields and the
/// response itself.
fn stored_size(headers: &HeaderMap, body: usize) -> usize {
    const PER_FIELD: usize = size_of::<HeaderName>() + size_of::<HeaderValue>();
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + PER_FIELD)
        .fold(body, usize::saturating_add)
        .saturating_add(size_of::<StoredResponse>() + size_of::<Variant>())
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

/// Encodes a stored answer for a shared store: a version byte, the status,
/// the HTTP version, the variant digest, the fields, then the body, each
/// length-prefixed.
#[cfg(feature = "redis")]
fn encode_stored(res: &StoredResponse) -> Option<Vec<u8>> {
    fn put(out: &mut Vec<u8>, bytes: &[u8]) -> Option<()> {
        out.extend_from_slice(&u32::try_from(bytes.len()).ok()?.to_le_bytes());
        out.extend_from_slice(bytes);
        Some(())
    }
    let variant = res.extensions().get::<Variant>()?;
    let mut out = Vec::with_capacity(res.body().len() + 64 * res.headers().len() + 48);
    out.push(CODEC_VERSION);
    out.extend_from_slice(&res.status().as_u16().to_le_bytes());
    out.push(match res.version() {
        Version::HTTP_09 => 0,
        Version::HTTP_10 => 1,
        Version::HTTP_2 => 3,
        Version::HTTP_3 => 4,
        _ => 2,
    });
    out.extend_from_slice(&variant.0);
    out.extend_from_slice(&u32::try_from(res.headers().len()).ok()?.to_le_bytes());
    for (name, value) in res.headers() {
        put(&mut out, name.as_str().as_bytes())?;
        put(&mut out, value.as_bytes())?;
    }
    put(&mut out, res.body())?;
    Some(out)
}

#[cfg(feature = "redis")]
const CODEC_VERSION: u8 = 1;

/// Decodes what [`encode_stored`] wrote; `None` for anything else, never a
/// panic: the bytes come from a server other processes write to.
#[cfg(feature = "redis")]
fn decode_stored(mut input: &[u8]) -> Option<StoredResponse> {
    fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = input.split_at_checked(n)?;
        *input = rest;
        Some(head)
    }
    fn take_u32(input: &mut &[u8]) -> Option<usize> {
        let bytes = take(input, 4)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(bytes)).ok()
    }
    fn take_chunk<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = take_u32(input)?;
        take(input, len)
    }
    if take(&mut input, 1)? != [CODEC_VERSION] {
        return None;
    }
    let status =
        StatusCode::from_u16(u16::from_le_bytes(take(&mut input, 2)?.try_into().ok()?)).ok()?;
    let version = match take(&mut input, 1)?[0] {
        0 => Version::HTTP_09,
        1 => Version::HTTP_10,
        2 => Version::HTTP_11,
        3 => Version::HTTP_2,
        4 => Version::HTTP_3,
        _ => return None,
    };
    let variant = Variant(take(&mut input, 32)?.try_into().ok()?);
    let fields = take_u32(&mut input)?;
    // Each field takes at least 8 bytes: a count beyond that is a lie.
    let mut headers = HeaderMap::with_capacity(fields.min(input.len() / 8));
    for _ in 0..fields {
        let name = HeaderName::from_bytes(take_chunk(&mut input)?).ok()?;
        let value = HeaderValue::from_bytes(take_chunk(&mut input)?).ok()?;
        headers.append(name, value);
    }
    let body = Bytes::copy_from_slice(take_chunk(&mut input)?);
    if !input.is_empty() {
        return None;
    }
    let mut res = Response::new(body);
    *res.status_mut() = status;
    *res.version_mut() = version;
    *res.headers_mut() = headers;
    res.extensions_mut().insert(variant);
    Some(res)
}

struct Recording {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    variant: Variant,
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
            variant,
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
        let bytes = stored_size(&headers, body.len());
        let mut res = Response::new(body);
        *res.status_mut() = status;
        *res.version_mut() = version;
        *res.headers_mut() = headers;
        res.extensions_mut().insert(variant);
        recorder.record(res, bytes);
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
    fn cache_control_directives_are_found() {
        let cc = |values: &[&'static str]| cache_control(&headers(values));
        assert!(cc(&["no-store"]).no_store);
        assert!(cc(&["max-age=0 , NO-STORE"]).no_store);
        assert!(cc(&["public", "no-store"]).no_store);
        assert_eq!(cc(&["max-age=60, public"]), CacheControl::default());
        assert_eq!(cc(&["x-no-store-hint"]), CacheControl::default());
        assert_eq!(
            cc(&["x-no-cache-hint, s-maxage-ish"]),
            CacheControl::default()
        );
        // Each forbids serving stale (RFC 9111 §4.2.4): never stored.
        for value in [
            "no-cache",
            "No-Cache, max-age=60",
            "no-cache=\"set-cookie\"",
            "max-age=0, must-revalidate",
            "max-age=0, PROXY-REVALIDATE",
            "public, s-maxage=600",
            "s-maxage = 0",
        ] {
            let found = cc(&[value]);
            assert!(found.no_stale && !found.no_store, "{value}");
        }
        assert!(cc(&["public", "must-revalidate"]).no_stale);
        assert_eq!(cache_control(&HeaderMap::new()), CacheControl::default());
        assert!(cc(&["Private"]).private);
        assert!(cc(&["max-age=60, private=\"set-cookie, x-user\""]).private);
        assert!(!cc(&["public, max-age=60"]).private);
        let mut opaque = HeaderMap::new();
        opaque.insert(
            CACHE_CONTROL,
            HeaderValue::from_bytes(b"public\xff").expect("obs-text is a valid value"),
        );
        assert!(
            cache_control(&opaque).no_store,
            "an unreadable value may have said no-store"
        );
    }

    #[test]
    fn only_whole_healthy_statuses_stand_in() {
        for code in [200, 203, 204] {
            assert!(stands_in(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [201, 202, 205, 206, 301, 304, 401, 403, 404, 429, 500, 503] {
            assert!(!stands_in(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    #[test]
    fn grpc_answers_are_recognised() {
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.append(*name, HeaderValue::from_static(value));
            }
            is_grpc(&map)
        };
        assert!(with(&[("content-type", "application/grpc")]));
        assert!(with(&[("content-type", "Application/GRPC+proto")]));
        assert!(with(&[("content-type", "application/grpc-web-text")]));
        assert!(with(&[("grpc-status", "0")]));
        assert!(with(&[
            ("content-type", "text/plain"),
            ("grpc-status", "14")
        ]));
        assert!(!with(&[("content-type", "application/json")]));
        assert!(!with(&[("content-type", "application/grp")]));
        assert!(!with(&[]));
    }

    #[test]
    fn connection_nominating_a_rule_field_is_found() {
        let with = |values: &[&'static str]| {
            let mut map = HeaderMap::new();
            for value in values {
                map.append(CONNECTION, HeaderValue::from_static(value));
            }
            nominates_a_rule_field(&map)
        };
        assert!(with(&["vary"]));
        assert!(with(&["keep-alive, VARY"]));
        assert!(with(&["close", " Cache-Control "]));
        assert!(with(&["set-cookie"]));
        assert!(!with(&["keep-alive, x-hop"]));
        assert!(!with(&["x-vary"]));
        assert!(!with(&[]));
    }

    #[test]
    fn vary_is_read_defensively() {
        let vary = |values: &[&'static str]| {
            let mut map = HeaderMap::new();
            for value in values {
                map.append(VARY, HeaderValue::from_static(value));
            }
            vary_names(&map)
        };
        assert_eq!(vary(&[]), Some(vec![]));
        assert_eq!(
            vary(&["Accept-Encoding, Authorization", "x-tenant"]),
            Some(vec![
                HeaderName::from_static("accept-encoding"),
                AUTHORIZATION,
                HeaderName::from_static("x-tenant"),
            ])
        );
        assert_eq!(vary(&["accept, *"]), None);
        assert_eq!(vary(&["*"]), None);
        assert_eq!(vary(&["a b"]), None, "not a field name");
    }

    #[test]
    fn variants_differ_by_any_named_value() {
        let names = [AUTHORIZATION, HeaderName::from_static("accept")];
        let req = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.append(*name, HeaderValue::from_static(value));
            }
            map
        };
        let alice = Variant::of(&names, &req(&[("authorization", "Bearer alice")]));
        assert_eq!(
            alice,
            Variant::of(
                &names,
                &req(&[("authorization", "Bearer alice"), ("x-other", "1")])
            )
        );
        assert_ne!(alice, Variant::of(&names, &req(&[])));
        assert_ne!(
            alice,
            Variant::of(&names, &req(&[("authorization", "Bearer eve")]))
        );
        // Moving bytes between fields or values changes the digest.
        assert_ne!(
            Variant::of(&names, &req(&[("accept", "ab")])),
            Variant::of(&names, &req(&[("accept", "a"), ("accept", "b")]))
        );
        assert_ne!(Variant::of(&names, &req(&[])), Variant::of(&[], &req(&[])));
    }

    #[cfg(feature = "redis")]
    #[test]
    fn stored_answers_survive_encoding_and_garbage_never_panics() {
        let mut res = Response::new(Bytes::from_static(b"{\"stock\":7}"));
        *res.status_mut() = StatusCode::NON_AUTHORITATIVE_INFORMATION;
        *res.version_mut() = Version::HTTP_2;
        res.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        res.headers_mut()
            .append(VARY, HeaderValue::from_static("accept"));
        res.headers_mut()
            .append(VARY, HeaderValue::from_static("x-tenant"));
        let variant = Variant([7; 32]);
        res.extensions_mut().insert(variant);
        let encoded = encode_stored(&res).expect("encodable");
        let decoded = decode_stored(&encoded).expect("decodable");
        assert_eq!(decoded.status(), res.status());
        assert_eq!(decoded.version(), Version::HTTP_2);
        assert_eq!(decoded.headers(), res.headers());
        assert_eq!(decoded.body(), res.body());
        assert_eq!(decoded.extensions().get::<Variant>(), Some(&variant));

        // Every truncation, a trailing byte, and bytes from elsewhere: `None`.
        for len in 0..encoded.len() {
            assert!(decode_stored(&encoded[..len]).is_none(), "prefix of {len}");
        }
        let mut longer = encoded.clone();
        longer.push(0);
        assert!(decode_stored(&longer).is_none());
        let mut lying = encoded.clone();
        lying[36..40].copy_from_slice(&u32::MAX.to_le_bytes()); // field count
        assert!(decode_stored(&lying).is_none());
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..512 {
            let garbage: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state.to_le_bytes()[0]
                })
                .collect();
            let _ = decode_stored(&garbage);
        }
        // An answer without its variant is never encoded.
        assert!(encode_stored(&Response::new(Bytes::new())).is_none());
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
    fn request_info_debug_never_shows_uncaptured_credentials() {
        let mut mode = Http::default();
        mode.enable_last_known_good();
        let req = Request::get("/me")
            .header("authorization", "Bearer secret-token")
            .body(())
            .unwrap();
        let info = mode.capture(&req);
        assert!(info.has_credentials());
        let shown = format!("{info:?}");
        assert!(!shown.contains("secret-token"), "{shown}");
        assert!(shown.contains("/me"), "{shown}");
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
