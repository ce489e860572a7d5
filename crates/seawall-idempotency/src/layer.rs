use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderName, Method, StatusCode};
use seawall_core::{ConfigError, NoopListener};
use tower_layer::Layer;

use crate::key::DEFAULT_CREDENTIAL_HEADERS;
use crate::service::Idempotency;
use crate::store::MemoryStore;

const LAYER: &str = "idempotency";

/// Stores count time in whole milliseconds.
const MIN_DURATION: Duration = Duration::from_millis(1);

/// The longest lease, retention or wait: 100 years. Far beyond any real
/// setting, and well within what `Instant`, Redis (`PX`) and PostgreSQL
/// (`interval`, `timestamptz`) can add to the current time.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The longest `Retry-After` the layer sends for a store that failed: past
/// an hour a client has given up, and a larger figure is a typo.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);

/// How long the request body may take to arrive by default.
const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Which of the handler's responses are stored for replay.
///
/// The layer's own answers (400, 409, 413, 422, 503) are never stored.
#[derive(Clone, Copy, Default)]
pub enum KeepPolicy {
    /// Keep every response the handler produced, errors included: a retry
    /// gets the same 500 (Stripe's behaviour). The handler runs at most once
    /// per key.
    #[default]
    All,
    /// Release the key on 5xx and 429, so a retry runs the handler again.
    /// Right when those statuses guarantee the handler had no effect.
    ReleaseServerErrors,
    /// Keep the responses for which the function returns `true`; release
    /// the key for the others.
    Custom(fn(StatusCode) -> bool),
}

impl KeepPolicy {
    /// `true` if a response with `status` is stored.
    pub fn keeps(&self, status: StatusCode) -> bool {
        match self {
            Self::All => true,
            Self::ReleaseServerErrors => {
                !(status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS)
            }
            Self::Custom(f) => f(status),
        }
    }
}

impl fmt::Debug for KeepPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("All"),
            Self::ReleaseServerErrors => f.write_str("ReleaseServerErrors"),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Finds the tenant (or principal) of a request; see
/// [`IdempotencyLayerBuilder::tenant`].
pub(crate) type TenantFn = dyn Fn(&Parts) -> Option<String> + Send + Sync;

/// How a layer finds whose record a key names.
#[derive(Clone)]
pub(crate) enum ScopeBy {
    /// A digest of these request fields (the default).
    Credentials(Arc<[HeaderName]>),
    /// The tenant function's answer.
    Tenant(Arc<TenantFn>),
    /// Nothing: every caller shares the key space.
    Shared,
}

impl fmt::Debug for ScopeBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Credentials(names) => f.debug_tuple("Credentials").field(names).finish(),
            Self::Tenant(_) => f.write_str("Tenant(..)"),
            Self::Shared => f.write_str("Shared"),
        }
    }
}

/// The validated settings shared by every service of one layer.
// Independent on/off settings of a builder, not a state machine in disguise.
#[allow(clippy::struct_excessive_bools)]
pub(crate) struct Config {
    pub(crate) name: Arc<str>,
    pub(crate) methods: Vec<Method>,
    pub(crate) require_key: bool,
    pub(crate) strict_keys: bool,
    pub(crate) scope: ScopeBy,
    pub(crate) max_request_body: usize,
    pub(crate) body_timeout: Duration,
    pub(crate) max_stored_body: usize,
    pub(crate) lease: Duration,
    pub(crate) renew_lease: bool,
    pub(crate) retention: Duration,
    pub(crate) keep: KeepPolicy,
    pub(crate) wait: Option<Duration>,
    pub(crate) fail_open: bool,
    pub(crate) store_retry_after: Duration,
}

/// The state of one layer: settings, store and listener, shared by its
/// services through an `Arc`.
pub(crate) struct Shared<St, L> {
    pub(crate) config: Config,
    pub(crate) store: St,
    pub(crate) listener: L,
}

/// Makes retried `POST`/`PATCH` requests safe: the handler runs once per
/// `Idempotency-Key`, and repeats get the stored response.
///
/// See the [crate documentation](crate) for the behaviour, and
/// [`IdempotencyLayer::builder`] for the settings.
pub struct IdempotencyLayer<St = MemoryStore, L = NoopListener> {
    shared: Arc<Shared<St, L>>,
}

impl<St, L> Clone for IdempotencyLayer<St, L> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<St: fmt::Debug, L> fmt::Debug for IdempotencyLayer<St, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.shared.config;
        f.debug_struct("IdempotencyLayer")
            .field("name", &c.name)
            .field("methods", &c.methods)
            .field("require_key", &c.require_key)
            .field("strict_keys", &c.strict_keys)
            .field("scope", &c.scope)
            .field("lease", &c.lease)
            .field("renew_lease", &c.renew_lease)
            .field("retention", &c.retention)
            .field("keep", &c.keep)
            .field("store", &self.shared.store)
            .finish_non_exhaustive()
    }
}

impl IdempotencyLayer {
    /// A layer with the default settings and a fresh [`MemoryStore`].
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                config: IdempotencyLayerBuilder::new().config(),
                store: MemoryStore::new(),
                listener: NoopListener,
            }),
        }
    }

    /// A builder with the default settings.
    pub fn builder() -> IdempotencyLayerBuilder {
        IdempotencyLayerBuilder::new()
    }
}

impl Default for IdempotencyLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<St, L> IdempotencyLayer<St, L> {
    /// The store of this layer.
    pub fn store(&self) -> &St {
        &self.shared.store
    }

    /// The name of this layer instance.
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }
}

impl<S, St, L> Layer<S> for IdempotencyLayer<St, L> {
    type Service = Idempotency<S, St, L>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency::new(inner, self.shared.clone())
    }
}

/// Builds an [`IdempotencyLayer`]; [`build`](Self::build) checks the
/// settings.
#[must_use]
#[allow(clippy::struct_excessive_bools)] // independent on/off settings
pub struct IdempotencyLayerBuilder<St = MemoryStore, L = NoopListener> {
    name: Arc<str>,
    methods: Vec<Method>,
    require_key: bool,
    strict_keys: bool,
    scope: ScopeBy,
    max_request_body: usize,
    body_timeout: Duration,
    max_stored_body: usize,
    lease: Duration,
    renew_lease: bool,
    retention: Duration,
    keep: KeepPolicy,
    wait: Option<Duration>,
    fail_open: bool,
    store_retry_after: Duration,
    store: St,
    listener: L,
}

impl<St: fmt::Debug, L> fmt::Debug for IdempotencyLayerBuilder<St, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayerBuilder")
            .field("name", &self.name)
            .field("methods", &self.methods)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl IdempotencyLayerBuilder {
    fn new() -> Self {
        Self {
            name: Arc::from(LAYER),
            methods: vec![Method::POST, Method::PATCH],
            require_key: false,
            strict_keys: false,
            scope: ScopeBy::Credentials(Arc::from(DEFAULT_CREDENTIAL_HEADERS.as_slice())),
            max_request_body: 1024 * 1024,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_stored_body: 1024 * 1024,
            lease: Duration::from_secs(60),
            renew_lease: false,
            retention: Duration::from_secs(24 * 60 * 60),
            keep: KeepPolicy::All,
            wait: None,
            fail_open: false,
            store_retry_after: Duration::from_secs(1),
            store: MemoryStore::new(),
            listener: NoopListener,
        }
    }
}

impl<St, L> IdempotencyLayerBuilder<St, L> {
    fn config(&self) -> Config {
        Config {
            name: self.name.clone(),
            methods: self.methods.clone(),
            require_key: self.require_key,
            strict_keys: self.strict_keys,
            scope: self.scope.clone(),
            max_request_body: self.max_request_body,
            body_timeout: self.body_timeout,
            max_stored_body: self.max_stored_body,
            lease: self.lease,
            renew_lease: self.renew_lease,
            retention: self.retention,
            keep: self.keep,
            wait: self.wait,
            fail_open: self.fail_open,
            store_retry_after: self.store_retry_after,
        }
    }

    /// The name of this instance, used in events and as part of every
    /// record's scope: layers with different names never share records,
    /// even in one store. Default `"idempotency"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The methods the layer applies to; others pass through untouched.
    /// Default `POST` and `PATCH`.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// Refuse requests of the configured methods that carry no key (400).
    /// Default `false`: they pass through without idempotency.
    pub fn require_key(mut self, require: bool) -> Self {
        self.require_key = require;
        self
    }

    /// Accept only RFC 9651 structured-field strings
    /// (`Idempotency-Key: "8e03978e-40d5"`), as the IETF draft specifies.
    ///
    /// Default `false`: a bare token of visible ASCII
    /// (`Idempotency-Key: 8e03978e-40d5`, what Stripe clients send) is
    /// accepted too, and is the same key as its quoted form. Either way a
    /// key is at most 255 characters, and one with spaces, control
    /// characters or non-ASCII bytes gets 400.
    pub fn strict_keys(mut self, strict: bool) -> Self {
        self.strict_keys = strict;
        self
    }

    /// Scopes records by the tenant or principal `f` finds in the request
    /// (for example an account id that authentication put in the
    /// extensions), instead of by the request's credentials. Requests of
    /// different tenants never share a record. A request for which `f`
    /// returns `None` falls back to the default scope: a digest of its
    /// [`DEFAULT_CREDENTIAL_HEADERS`] (see [`CredentialDigest`](crate::CredentialDigest)), or, with
    /// none of them, the anonymous scope shared by anonymous requests only.
    /// Tenant and credential scopes never meet.
    ///
    /// ```
    /// # #[derive(Clone)] struct AccountId(u64);
    /// use seawall_idempotency::IdempotencyLayer;
    ///
    /// let layer = IdempotencyLayer::builder()
    ///     .tenant(|parts| parts.extensions.get::<AccountId>().map(|id| id.0.to_string()))
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn tenant<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.scope = ScopeBy::Tenant(Arc::new(f));
        self
    }

    /// Scopes records by a digest of these request fields (the default
    /// scope, with [`DEFAULT_CREDENTIAL_HEADERS`]: `Authorization`,
    /// `Proxy-Authorization`, `Cookie`). Add the field of an API key your
    /// service accepts, e.g. `x-api-key`; leave out `Cookie` if your
    /// cookie-only clients carry cookies that change between retries
    /// (analytics) and do not authenticate with them.
    ///
    /// Two requests share a record only if they carry the same values of
    /// every field listed — except that `Cookie` counts only for a request
    /// that carries none of the other listed fields (a bearer-token client's
    /// rotating affinity cookie does not split its retries), and that
    /// cookies split into several fields (HTTP/2) equal the same cookies
    /// joined (see [`CredentialDigest`](crate::CredentialDigest)). A request
    /// with none of the fields is anonymous and shares only with other
    /// anonymous requests. A list of no fields is
    /// refused by [`build`](Self::build) (use [`unscoped`](Self::unscoped)).
    ///
    /// ```
    /// use http::header::{HeaderName, AUTHORIZATION};
    /// use seawall_idempotency::IdempotencyLayer;
    ///
    /// let layer = IdempotencyLayer::builder()
    ///     .credential_headers([AUTHORIZATION, HeaderName::from_static("x-api-key")])
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn credential_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.scope = ScopeBy::Credentials(names.into_iter().collect());
        self
    }

    /// Every caller shares one key space: a key sent by one client replays
    /// to any other client that sends it.
    ///
    /// Safe only when keys cannot be guessed or reused across callers *and*
    /// a response holds nothing one caller may not see of another's: for
    /// example a service reachable only by one trusted internal client, or
    /// where a gateway in front already rewrote the key to include the
    /// caller. Otherwise keep the default (credentials) or use
    /// [`tenant`](Self::tenant).
    pub fn unscoped(mut self) -> Self {
        self.scope = ScopeBy::Shared;
        self
    }

    /// The largest request body buffered for the fingerprint; a larger one
    /// gets 413 and the store is not touched. Default 1 MiB.
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.max_request_body = bytes;
        self
    }

    /// How long the layer waits for the whole request body (which it
    /// buffers to fingerprint the request) before answering `408 Request
    /// Timeout` with `Connection: close`. The key is claimed only once the
    /// body is read, so a stalled upload holds neither the key nor, after
    /// this bound, its buffer. Default 30 s.
    pub fn request_body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// The largest response body stored; a larger response is stored
    /// without its body (a replay gets the status and headers with an empty
    /// body). Default 1 MiB.
    pub fn max_stored_body(mut self, bytes: usize) -> Self {
        self.max_stored_body = bytes;
        self
    }

    /// How long a claim holds its key. A handler still running after this
    /// loses the key: the next request runs the handler again, and the slow
    /// one's response is not stored. Default 60 s; set it above the
    /// handler's worst-case duration.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Renew the lease while the handler runs (every third of the lease), so
    /// a handler slower than the lease keeps its key. A process that dies
    /// stops renewing, and its keys free one lease after the crash. Default
    /// `false`. Needs a store that implements [`Store::renew`]; the shipped
    /// ones do.
    ///
    /// [`Store::renew`]: crate::Store::renew
    pub fn renew_lease(mut self, renew: bool) -> Self {
        self.renew_lease = renew;
        self
    }

    /// How long a completed response is kept for replay. Default 24 h.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Which responses are stored; default [`KeepPolicy::All`].
    pub fn keep(mut self, keep: KeepPolicy) -> Self {
        self.keep = keep;
        self
    }

    /// Wait mode: a repeat that finds its key in flight waits up to `max`
    /// for the first request to complete and gets its response (or runs the
    /// handler if the first released the key), instead of an immediate 409.
    pub fn wait_in_flight(mut self, max: Duration) -> Self {
        self.wait = Some(max);
        self
    }

    /// When the store fails, run the handler anyway (without idempotency)
    /// instead of answering 503. Default `false` (fail closed).
    pub fn fail_open(mut self, fail_open: bool) -> Self {
        self.fail_open = fail_open;
        self
    }

    /// The `Retry-After` of the 503 sent when the store fails or is full.
    /// Default 1 s; at most 1 h.
    pub fn store_retry_after(mut self, after: Duration) -> Self {
        self.store_retry_after = after;
        self
    }

    /// The store of records; default a [`MemoryStore`].
    pub fn store<St2>(self, store: St2) -> IdempotencyLayerBuilder<St2, L> {
        IdempotencyLayerBuilder {
            name: self.name,
            methods: self.methods,
            require_key: self.require_key,
            strict_keys: self.strict_keys,
            scope: self.scope,
            max_request_body: self.max_request_body,
            body_timeout: self.body_timeout,
            max_stored_body: self.max_stored_body,
            lease: self.lease,
            renew_lease: self.renew_lease,
            retention: self.retention,
            keep: self.keep,
            wait: self.wait,
            fail_open: self.fail_open,
            store_retry_after: self.store_retry_after,
            store,
            listener: self.listener,
        }
    }

    /// The listener of [`IdempotencyEvent`](crate::IdempotencyEvent)s.
    pub fn listener<L2>(self, listener: L2) -> IdempotencyLayerBuilder<St, L2> {
        IdempotencyLayerBuilder {
            name: self.name,
            methods: self.methods,
            require_key: self.require_key,
            strict_keys: self.strict_keys,
            scope: self.scope,
            max_request_body: self.max_request_body,
            body_timeout: self.body_timeout,
            max_stored_body: self.max_stored_body,
            lease: self.lease,
            renew_lease: self.renew_lease,
            retention: self.retention,
            keep: self.keep,
            wait: self.wait,
            fail_open: self.fail_open,
            store_retry_after: self.store_retry_after,
            store: self.store,
            listener,
        }
    }

    /// Checks the settings and builds the layer: a non-empty name, method
    /// list and credential field list; a lease, retention, wait bound and
    /// body timeout each between 1 ms and 100 years; a store `Retry-After`
    /// of at most 1 h.
    pub fn build(self) -> Result<IdempotencyLayer<St, L>, ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new(LAYER, "name", "must not be empty"));
        }
        if self.methods.is_empty() {
            return Err(ConfigError::new(
                LAYER,
                "methods",
                "must name at least one method",
            ));
        }
        if self.lease < MIN_DURATION {
            return Err(ConfigError::new(LAYER, "lease", "must be at least 1 ms"));
        }
        if self.retention < MIN_DURATION {
            return Err(ConfigError::new(
                LAYER,
                "retention",
                "must be at least 1 ms",
            ));
        }
        if matches!(&self.scope, ScopeBy::Credentials(names) if names.is_empty()) {
            return Err(ConfigError::new(
                LAYER,
                "credential_headers",
                "must name at least one field (use `unscoped()` to share records across callers)",
            ));
        }
        if self.body_timeout < MIN_DURATION {
            return Err(ConfigError::new(
                LAYER,
                "request_body_timeout",
                "must be at least 1 ms",
            ));
        }
        if self.store_retry_after > MAX_RETRY_AFTER {
            return Err(ConfigError::new(
                LAYER,
                "store_retry_after",
                "must be at most 1 hour",
            ));
        }
        if self.wait.is_some_and(|w| w.is_zero()) {
            return Err(ConfigError::new(
                LAYER,
                "wait_in_flight",
                "must be greater than zero",
            ));
        }
        for (field, d) in [
            ("lease", Some(self.lease)),
            ("retention", Some(self.retention)),
            ("wait_in_flight", self.wait),
            ("request_body_timeout", Some(self.body_timeout)),
        ] {
            if d.is_some_and(|d| d > MAX_DURATION) {
                return Err(ConfigError::new(LAYER, field, "must be at most 100 years"));
            }
        }
        Ok(IdempotencyLayer {
            shared: Arc::new(Shared {
                config: self.config(),
                store: self.store,
                listener: self.listener,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_settings_are_refused() {
        let err = IdempotencyLayer::builder()
            .lease(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "lease");
        let err = IdempotencyLayer::builder()
            .retention(Duration::from_micros(10))
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "retention");
        let err = IdempotencyLayer::builder().methods([]).build().unwrap_err();
        assert_eq!(err.field(), "methods");
        let err = IdempotencyLayer::builder().name("").build().unwrap_err();
        assert_eq!(err.field(), "name");
        let err = IdempotencyLayer::builder()
            .wait_in_flight(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "wait_in_flight");
        assert!(IdempotencyLayer::builder().build().is_ok());
    }

    #[test]
    fn durations_no_store_can_count_are_refused() {
        // `Instant + Duration::MAX` panics, and Redis and PostgreSQL refuse
        // such expiries: a "keep forever" setting must fail at build time,
        // not on the first request or when storing its response.
        let err = IdempotencyLayer::builder()
            .retention(Duration::MAX)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "retention");
        let err = IdempotencyLayer::builder()
            .lease(Duration::MAX)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "lease");
        let err = IdempotencyLayer::builder()
            .wait_in_flight(Duration::MAX)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "wait_in_flight");
        let err = IdempotencyLayer::builder()
            .request_body_timeout(Duration::MAX)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "request_body_timeout");
        let err = IdempotencyLayer::builder()
            .request_body_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "request_body_timeout");
        // A Retry-After of centuries is a typo, not a policy.
        let err = IdempotencyLayer::builder()
            .store_retry_after(Duration::MAX)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "store_retry_after");
        assert!(IdempotencyLayer::builder()
            .store_retry_after(MAX_RETRY_AFTER)
            .build()
            .is_ok());
        assert!(IdempotencyLayer::builder()
            .retention(MAX_DURATION)
            .lease(MAX_DURATION)
            .wait_in_flight(MAX_DURATION)
            .build()
            .is_ok());
    }

    #[test]
    fn scope_settings() {
        let layer = IdempotencyLayer::new();
        assert!(format!("{layer:?}").contains("Credentials"));
        let err = IdempotencyLayer::builder()
            .credential_headers([])
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "credential_headers");
        let tenant = IdempotencyLayer::builder()
            .tenant(|_| None)
            .build()
            .unwrap();
        assert!(format!("{tenant:?}").contains("Tenant(..)"));
        // The last scope setting wins.
        let shared = IdempotencyLayer::builder()
            .tenant(|_| None)
            .unscoped()
            .build()
            .unwrap();
        assert!(format!("{shared:?}").contains("Shared"));
    }

    #[test]
    fn keep_policies() {
        assert!(KeepPolicy::All.keeps(StatusCode::INTERNAL_SERVER_ERROR));
        let p = KeepPolicy::ReleaseServerErrors;
        assert!(!p.keeps(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!p.keeps(StatusCode::TOO_MANY_REQUESTS));
        assert!(p.keeps(StatusCode::BAD_REQUEST));
        assert!(p.keeps(StatusCode::CREATED));
        let only_2xx = KeepPolicy::Custom(|s| s.is_success());
        assert!(only_2xx.keeps(StatusCode::OK));
        assert!(!only_2xx.keeps(StatusCode::NOT_FOUND));
    }
}
