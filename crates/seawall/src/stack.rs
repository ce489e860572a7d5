//! Presets: a whole client stack or server stack as one layer, with defaults
//! drawn from the field, each overridable.
//!
//! # The client stack
//!
//! For calls to a dependency (a hyper-util or tonic client, any tower
//! service). From the outside in:
//!
//! | position | layer | default | why here |
//! |---|---|---|---|
//! | 1 | total timeout (`tower::timeout`) | 30 s | bounds the whole call, backoff sleeps included, so a caller never waits longer |
//! | 2 | [`JitterRetryLayer`] | 3 attempts, exponential backoff from 2 s with full jitter, a 20% retry budget | outside the breaker, so an open breaker's refusal is seen (and its `Retry-After` honoured) rather than retried blindly |
//! | 3 | [`CircuitBreakerLayer`] | opens at 10% failures over a 30 s window once it holds 100 calls; open 5 s | sees every attempt, so it judges the dependency, not the caller's retries |
//! | 4 | attempt timeout (`tower::timeout`) | 10 s | innermost, so a hung attempt ends as a failure the breaker counts and the retry can repeat |
//!
//! The timeouts and the breaker's numbers are those of .NET's standard
//! resilience handler (`Microsoft.Extensions.Http.Resilience`); the 20%
//! retry budget is Envoy's default retry budget (retries may add at most
//! 20% to the requests in flight). The retry's base delay is .NET's 2 s
//! exponential backoff with jitter.
//!
//! # The server stack
//!
//! For an axum router or route. From the outside in:
//!
//! | position | layer | default | why here |
//! |---|---|---|---|
//! | 1 | [`RejectionResponseLayer`](crate::http::RejectionResponseLayer) | — | turns every refusal below into `503`/`504`/`429` with `Retry-After` (or a trailers-only gRPC status), so no `HandleErrorLayer` is needed |
//! | 2 | [`BulkheadLayer`](crate::bulkhead::BulkheadLayer) | 1,000 concurrent requests, no queue | sheds load before any work is done; .NET's standard handler admits 1,000 concurrent requests with an empty queue |
//! | 3 | request timeout (`tower::timeout`) | 30 s | inside the bulkhead, so a request that runs out of time gives its permit back |
//!
//! Put a [`FallbackLayer`](crate::fallback::FallbackLayer) above either
//! stack when a degraded answer beats an error, and an
//! [`IdempotencyLayer`](crate::idempotency::IdempotencyLayer) between the
//! server stack and a handler with side effects.
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response};
//! use seawall::stack;
//! use tower::{BoxError, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let client = stack::client()
//!     .name("inventory")
//!     .attempt_timeout(Duration::from_secs(2))
//!     .build()?;
//! let breaker = client.breaker();
//!
//! let svc = ServiceBuilder::new()
//!     .layer(client)
//!     .service_fn(|n: u32| async move { Ok::<_, BoxError>(n * 2) });
//! assert_eq!(svc.oneshot(21).await?, 42);
//! assert_eq!(breaker.state(), seawall::circuit_breaker::State::Closed);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::time::Duration;

use rand::rngs::SmallRng;
use seawall_core::{ConfigError, ErrorsFail, HttpClassifier};
use tower::timeout::{Timeout, TimeoutLayer};
use tower_layer::Layer;

use crate::circuit_breaker::{
    CircuitBreaker, CircuitBreakerEvent, CircuitBreakerLayer, Handle as BreakerHandle,
};
use seawall_core::event::{FnListener, Listener};

/// A listener whose concrete type the presets erase: layers whose listener
/// is not a type parameter take it as this.
type ErasedListener<E> = FnListener<Box<dyn Fn(&E) + Send + Sync>>;

fn erase<E: 'static, L: Listener<E>>(listener: L) -> ErasedListener<E> {
    FnListener::new(Box::new(move |event: &E| listener.on_event(event)))
}
use crate::retry::{CloneRequest, HttpReplay, JitterRetry, JitterRetryLayer, RetryBudget};

/// A client stack builder with the defaults in the [module docs](self), for
/// requests that are `Clone` and whose errors are failures.
pub fn client() -> ClientStackBuilder {
    ClientStackBuilder::new(CloneRequest, ErrorsFail)
}

/// A client stack builder for HTTP clients: requests are replayed with
/// bodies buffered (see [`HttpReplay`]), only idempotent requests (or those
/// with an `Idempotency-Key`) are retried, and 5xx, 408 and 429 answers are
/// failures.
pub fn http_client() -> ClientStackBuilder<HttpReplay, HttpClassifier> {
    ClientStackBuilder::new(HttpReplay::new(), HttpClassifier::new())
}

/// A server stack builder with the defaults in the [module docs](self).
#[cfg(all(feature = "bulkhead", feature = "http"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "bulkhead", feature = "http"))))]
pub fn server() -> ServerStackBuilder {
    ServerStackBuilder::new()
}

/// Configures a [`ClientStack`]; every setting starts at the default the
/// [module docs](self) give.
#[must_use]
pub struct ClientStackBuilder<P = CloneRequest, C = ErrorsFail> {
    name: String,
    total_timeout: Duration,
    attempt_timeout: Duration,
    max_attempts: u32,
    base_delay: Duration,
    budget_ratio: f64,
    failure_rate: f64,
    minimum_calls: u64,
    window: Duration,
    open_duration: Duration,
    replay: P,
    classifier: C,
    breaker_listener: Option<ErasedListener<CircuitBreakerEvent>>,
}

impl<P, C> fmt::Debug for ClientStackBuilder<P, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientStackBuilder")
            .field("name", &self.name)
            .field("total_timeout", &self.total_timeout)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("max_attempts", &self.max_attempts)
            .field("base_delay", &self.base_delay)
            .field("budget_ratio", &self.budget_ratio)
            .field("failure_rate", &self.failure_rate)
            .field("minimum_calls", &self.minimum_calls)
            .field("window", &self.window)
            .field("open_duration", &self.open_duration)
            .finish_non_exhaustive()
    }
}

impl<P, C> ClientStackBuilder<P, C> {
    fn new(replay: P, classifier: C) -> Self {
        Self {
            name: "client".to_owned(),
            total_timeout: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(10),
            max_attempts: 3,
            base_delay: Duration::from_secs(2),
            budget_ratio: 0.2,
            failure_rate: 0.1,
            minimum_calls: 100,
            window: Duration::from_secs(30),
            open_duration: Duration::from_secs(5),
            replay,
            classifier,
            breaker_listener: None,
        }
    }

    /// Sends the circuit breaker's events (state changes, refusals, calls)
    /// to `listener`, e.g. `seawall::core::event::MetricsListener` or
    /// `TracingListener`.
    pub fn breaker_listener<L: Listener<CircuitBreakerEvent>>(mut self, listener: L) -> Self {
        self.breaker_listener = Some(erase(listener));
        self
    }

    /// The name of the retry and breaker layers, used in events, metrics
    /// and health reports (default `"client"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The time the whole call may take, retries and backoff included
    /// (default 30 s).
    pub fn total_timeout(mut self, timeout: Duration) -> Self {
        self.total_timeout = timeout;
        self
    }

    /// The time one attempt may take (default 10 s).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Attempts per call, the first included (default 3).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The base of the exponential backoff (default 2 s).
    pub fn base_delay(mut self, delay: Duration) -> Self {
        self.base_delay = delay;
        self
    }

    /// The share of extra load retries may add (default 0.2, Envoy's).
    pub fn retry_budget(mut self, ratio: f64) -> Self {
        self.budget_ratio = ratio;
        self
    }

    /// The failure rate that opens the breaker (default 0.1).
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.failure_rate = rate;
        self
    }

    /// Calls the breaker's window must hold before it judges (default 100).
    pub fn minimum_calls(mut self, calls: u64) -> Self {
        self.minimum_calls = calls;
        self
    }

    /// The breaker's sliding time window (default 30 s, in 10 buckets).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// How long the breaker stays open before probing (default 5 s).
    pub fn open_duration(mut self, open: Duration) -> Self {
        self.open_duration = open;
        self
    }

    /// Validates the settings and builds the stack.
    pub fn build(self) -> Result<ClientStack<P, C>, ConfigError>
    where
        C: Clone,
    {
        if self.total_timeout.is_zero() {
            return Err(ConfigError::new(
                "client_stack",
                "total_timeout",
                "must be greater than zero",
            ));
        }
        if self.attempt_timeout.is_zero() {
            return Err(ConfigError::new(
                "client_stack",
                "attempt_timeout",
                "must be greater than zero",
            ));
        }
        let budget = RetryBudget::builder().ratio(self.budget_ratio).build()?;
        let retry = JitterRetryLayer::builder()
            .name(self.name.as_str())
            .max_attempts(self.max_attempts)
            .backoff(crate::retry::Backoff::exponential(self.base_delay))
            .budget(budget)
            .replay(self.replay)
            .classifier(self.classifier.clone())
            .build()?;
        let breaker = CircuitBreakerLayer::builder()
            .name(self.name.as_str())
            .classifier(self.classifier)
            .failure_rate_threshold(self.failure_rate)
            .minimum_calls(self.minimum_calls)
            .time_window(self.window, 10)
            .open_duration(self.open_duration);
        let breaker = match self.breaker_listener {
            Some(listener) => breaker.listener(listener).build()?,
            None => breaker.build()?,
        };
        Ok(ClientStack {
            total: TimeoutLayer::new(self.total_timeout),
            retry,
            breaker,
            attempt: TimeoutLayer::new(self.attempt_timeout),
        })
    }
}

/// Total timeout → retry → circuit breaker → attempt timeout, as one layer;
/// from [`client`] or [`http_client`].
pub struct ClientStack<P = CloneRequest, C = ErrorsFail>
where
    P: 'static,
    C: 'static,
{
    total: TimeoutLayer,
    retry: JitterRetryLayer<P, C>,
    breaker: CircuitBreakerLayer<C>,
    attempt: TimeoutLayer,
}

impl<P, C> Clone for ClientStack<P, C> {
    fn clone(&self) -> Self {
        Self {
            total: self.total.clone(),
            retry: self.retry.clone(),
            breaker: self.breaker.clone(),
            attempt: self.attempt.clone(),
        }
    }
}

impl<P, C> fmt::Debug for ClientStack<P, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientStack")
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl<P, C: Send + Sync + 'static> ClientStack<P, C> {
    /// A handle on the stack's circuit breaker (state, metrics, force open),
    /// e.g. for [`HealthRegistry`](crate::health::HealthRegistry).
    pub fn breaker(&self) -> BreakerHandle {
        self.breaker.handle()
    }
}

impl<P, C> ClientStack<P, C> {
    /// The stack's retry budget.
    pub fn retry_budget(&self) -> Option<&RetryBudget> {
        self.retry.budget()
    }
}

impl<S, P, C> Layer<S> for ClientStack<P, C> {
    type Service = Timeout<
        JitterRetry<CircuitBreaker<Timeout<S>, C>, P, C, seawall_core::NoopListener, SmallRng>,
    >;

    fn layer(&self, inner: S) -> Self::Service {
        let attempt = self.attempt.layer(inner);
        let breaker = self.breaker.layer(attempt);
        let retry = self.retry.layer(breaker);
        self.total.layer(retry)
    }
}

/// Configures a [`ServerStack`]; every setting starts at the default the
/// [module docs](self) give.
#[cfg(all(feature = "bulkhead", feature = "http"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "bulkhead", feature = "http"))))]
#[must_use]
pub struct ServerStackBuilder {
    name: String,
    max_concurrent: usize,
    max_queue: usize,
    max_wait: Option<Duration>,
    timeout: Duration,
    bulkhead_listener: Option<ErasedListener<crate::bulkhead::BulkheadEvent>>,
}

#[cfg(all(feature = "bulkhead", feature = "http"))]
impl fmt::Debug for ServerStackBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerStackBuilder")
            .field("name", &self.name)
            .field("max_concurrent", &self.max_concurrent)
            .field("max_queue", &self.max_queue)
            .field("max_wait", &self.max_wait)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(all(feature = "bulkhead", feature = "http"))]
impl ServerStackBuilder {
    fn new() -> Self {
        Self {
            name: "server".to_owned(),
            max_concurrent: 1_000,
            max_queue: 0,
            max_wait: None,
            timeout: Duration::from_secs(30),
            bulkhead_listener: None,
        }
    }

    /// Sends the bulkhead's events (refusals, limit changes) to `listener`,
    /// e.g. `seawall::core::event::MetricsListener`.
    pub fn bulkhead_listener<L: Listener<crate::bulkhead::BulkheadEvent>>(
        mut self,
        listener: L,
    ) -> Self {
        self.bulkhead_listener = Some(erase(listener));
        self
    }

    /// The bulkhead's name, used in events, metrics and health reports
    /// (default `"server"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Requests served at once (default 1,000).
    pub fn max_concurrent(mut self, n: usize) -> Self {
        self.max_concurrent = n;
        self
    }

    /// Requests that may wait for a permit (default 0: refuse at once), and
    /// how long each may wait.
    pub fn queue(mut self, max_queue: usize, max_wait: Duration) -> Self {
        self.max_queue = max_queue;
        self.max_wait = Some(max_wait);
        self
    }

    /// The time a request may take (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Validates the settings and builds the stack.
    pub fn build(self) -> Result<ServerStack, ConfigError> {
        if self.timeout.is_zero() {
            return Err(ConfigError::new(
                "server_stack",
                "timeout",
                "must be greater than zero",
            ));
        }
        let mut bulkhead = crate::bulkhead::BulkheadLayer::builder()
            .name(self.name.as_str())
            .max_concurrent(self.max_concurrent)
            .max_queue(self.max_queue)
            .max_wait(self.max_wait);
        if let Some(listener) = self.bulkhead_listener {
            bulkhead = bulkhead.listener(listener);
        }
        let bulkhead = bulkhead.build()?;
        Ok(ServerStack {
            bulkhead,
            timeout: TimeoutLayer::new(self.timeout),
        })
    }
}

/// Rejection responses → bulkhead → request timeout, as one layer; from
/// [`server`].
#[cfg(all(feature = "bulkhead", feature = "http"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "bulkhead", feature = "http"))))]
#[derive(Clone, Debug)]
pub struct ServerStack {
    bulkhead: crate::bulkhead::BulkheadLayer,
    timeout: TimeoutLayer,
}

#[cfg(all(feature = "bulkhead", feature = "http"))]
impl ServerStack {
    /// A handle on the stack's bulkhead (in flight, queued, refusals).
    pub fn bulkhead(&self) -> crate::bulkhead::Handle {
        self.bulkhead.handle()
    }
}

#[cfg(all(feature = "bulkhead", feature = "http"))]
impl<S> Layer<S> for ServerStack {
    type Service = crate::http::RejectionResponse<crate::bulkhead::Bulkhead<Timeout<S>>>;

    fn layer(&self, inner: S) -> Self::Service {
        let timeout = self.timeout.layer(inner);
        let bulkhead = self.bulkhead.layer(timeout);
        crate::http::RejectionResponseLayer::new().layer(bulkhead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

    #[test]
    fn invalid_settings_are_refused() {
        assert!(client().total_timeout(Duration::ZERO).build().is_err());
        assert!(client().attempt_timeout(Duration::ZERO).build().is_err());
        assert!(client().max_attempts(0).build().is_err());
        assert!(client().failure_rate(1.5).build().is_err());
        assert!(client().retry_budget(-1.0).build().is_err());
        #[cfg(all(feature = "bulkhead", feature = "http"))]
        assert!(server().timeout(Duration::ZERO).build().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_attempt_is_cut_by_the_attempt_timeout_and_retried() {
        let calls = Arc::new(AtomicU32::new(0));
        let seen = calls.clone();
        let stack = client()
            .attempt_timeout(Duration::from_millis(100))
            .base_delay(Duration::from_millis(10))
            .build()
            .unwrap();
        let svc = ServiceBuilder::new()
            .layer(stack)
            .service_fn(move |n: u32| {
                let first = seen.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    if first {
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, BoxError>(n)
                }
            });
        assert_eq!(svc.oneshot(7).await.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_total_timeout_bounds_every_retry() {
        let stack = client()
            .total_timeout(Duration::from_secs(1))
            .attempt_timeout(Duration::from_millis(400))
            .base_delay(Duration::from_millis(300))
            .max_attempts(10)
            .build()
            .unwrap();
        let started = tokio::time::Instant::now();
        let svc = ServiceBuilder::new()
            .layer(stack)
            .service_fn(|_: u32| async {
                std::future::pending::<()>().await;
                Ok::<u32, BoxError>(0)
            });
        let err = svc.oneshot(1).await.unwrap_err();
        assert!(err.is::<tower::timeout::error::Elapsed>(), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_on_failures_and_the_handle_sees_it() {
        let stack = client()
            .minimum_calls(4)
            .failure_rate(0.5)
            .max_attempts(1)
            .build()
            .unwrap();
        let breaker = stack.breaker();
        let mut svc = ServiceBuilder::new()
            .layer(stack)
            .service_fn(|_: u32| async { Err::<u32, BoxError>("down".into()) });
        for _ in 0..4 {
            assert!(svc.ready().await.unwrap().call(1).await.is_err());
        }
        assert!(breaker.state().is_open());
        let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
        assert!(
            seawall_core::rejection::is_rejection(&*err),
            "an open breaker refuses: {err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_listener_sees_the_trip() {
        use crate::circuit_breaker::{EventKind, State};
        use std::sync::Mutex;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let stack = client()
            .minimum_calls(2)
            .failure_rate(0.5)
            .max_attempts(1)
            .breaker_listener(FnListener::new(move |e: &CircuitBreakerEvent| {
                if let EventKind::StateTransition { to, .. } = e.kind() {
                    log.lock().unwrap().push(*to);
                }
            }))
            .build()
            .unwrap();
        let mut svc = ServiceBuilder::new()
            .layer(stack)
            .service_fn(|_: u32| async { Err::<u32, BoxError>("down".into()) });
        for _ in 0..2 {
            assert!(svc.ready().await.unwrap().call(1).await.is_err());
        }
        assert_eq!(*seen.lock().unwrap(), vec![State::Open]);
    }

    #[cfg(all(feature = "bulkhead", feature = "http"))]
    #[tokio::test(start_paused = true)]
    async fn the_server_stack_refuses_past_its_limit_with_503() {
        use http::{Request, Response, StatusCode};
        let refusals = Arc::new(AtomicU32::new(0));
        let counted = refusals.clone();
        let stack = server()
            .max_concurrent(1)
            .bulkhead_listener(FnListener::new(
                move |_: &crate::bulkhead::BulkheadEvent| {
                    counted.fetch_add(1, Ordering::SeqCst);
                },
            ))
            .build()
            .unwrap();
        let bulkhead = stack.bulkhead();
        let mut svc = ServiceBuilder::new()
            .layer(stack)
            .service_fn(|_: Request<String>| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, BoxError>(Response::new(String::new()))
            });
        let first = svc.ready().await.unwrap().call(Request::new(String::new()));
        let first = tokio::spawn(first);
        tokio::task::yield_now().await;
        assert_eq!(bulkhead.in_flight(), 1);
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(String::new()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            refusals.load(Ordering::SeqCst),
            1,
            "the listener saw the refusal"
        );
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
    }
}
