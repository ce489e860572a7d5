use tower::ServiceBuilder;
#[cfg(any(
    feature = "http",
    feature = "idempotency",
    feature = "bulkhead",
    feature = "retry",
    feature = "circuit-breaker",
    feature = "fallback",
    feature = "rate-limit",
    feature = "timeout",
    feature = "chaos"
))]
use tower_layer::Stack;

mod sealed {
    pub trait Sealed<T> {}
}

impl<L> sealed::Sealed<L> for ServiceBuilder<L> {}

/// seawall's layers as methods on [`ServiceBuilder`].
///
/// The trait is sealed: it is implemented for `ServiceBuilder` only, and
/// grows a method for each layer.
///
/// ```
/// use seawall::ServiceBuilderExt;
/// use tower::ServiceBuilder;
///
/// let builder = ServiceBuilder::new().rejection_response();
/// # let _ = builder;
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed<L> + Sized {
    /// Turns the errors of the services below into HTTP responses; see
    /// [`RejectionResponseLayer`](crate::http::RejectionResponseLayer).
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    fn rejection_response(self) -> ServiceBuilder<Stack<crate::http::RejectionResponseLayer, L>>;

    /// Turns the errors of the services below into `tonic::Status`, so a
    /// tonic client sees `Code::Unavailable` for an open breaker; see
    /// [`RejectionStatusLayer`](crate::grpc::RejectionStatusLayer).
    #[cfg(feature = "tonic")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
    fn rejection_status(self) -> ServiceBuilder<Stack<crate::grpc::RejectionStatusLayer, L>>;

    /// Runs the handler once per `Idempotency-Key` and replays its response to
    /// repeats; see [`IdempotencyLayer`](crate::idempotency::IdempotencyLayer).
    #[cfg(feature = "idempotency")]
    #[cfg_attr(docsrs, doc(cfg(feature = "idempotency")))]
    fn idempotency<St, Li>(
        self,
        layer: crate::idempotency::IdempotencyLayer<St, Li>,
    ) -> ServiceBuilder<Stack<crate::idempotency::IdempotencyLayer<St, Li>, L>>;
    /// Bounds concurrency with a bulkhead; see
    /// [`BulkheadLayer`](crate::bulkhead::BulkheadLayer).
    #[cfg(feature = "bulkhead")]
    #[cfg_attr(docsrs, doc(cfg(feature = "bulkhead")))]
    fn bulkhead<P, C>(
        self,
        layer: crate::bulkhead::BulkheadLayer<P, C>,
    ) -> ServiceBuilder<Stack<crate::bulkhead::BulkheadLayer<P, C>, L>>;
    /// Retries failed requests with jittered backoff, a shared retry budget
    /// and the server's hints; see
    /// [`JitterRetryLayer`](crate::retry::JitterRetryLayer).
    #[cfg(feature = "retry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
    fn jitter_retry<P, C, Li, R>(
        self,
        layer: crate::retry::JitterRetryLayer<P, C, Li, R>,
    ) -> ServiceBuilder<Stack<crate::retry::JitterRetryLayer<P, C, Li, R>, L>>;
    /// Fails fast while the services below are failing; see
    /// [`CircuitBreakerLayer`](crate::circuit_breaker::CircuitBreakerLayer).
    /// Take the layer's `handle()` before passing it in.
    #[cfg(feature = "circuit-breaker")]
    #[cfg_attr(docsrs, doc(cfg(feature = "circuit-breaker")))]
    fn circuit_breaker<C>(
        self,
        layer: crate::circuit_breaker::CircuitBreakerLayer<C>,
    ) -> ServiceBuilder<Stack<crate::circuit_breaker::CircuitBreakerLayer<C>, L>>;

    /// One circuit breaker per request key; see
    /// [`KeyedCircuitBreakerLayer`](crate::circuit_breaker::KeyedCircuitBreakerLayer).
    #[cfg(feature = "circuit-breaker")]
    #[cfg_attr(docsrs, doc(cfg(feature = "circuit-breaker")))]
    fn keyed_circuit_breaker<K, F, C>(
        self,
        layer: crate::circuit_breaker::KeyedCircuitBreakerLayer<K, F, C>,
    ) -> ServiceBuilder<Stack<crate::circuit_breaker::KeyedCircuitBreakerLayer<K, F, C>, L>>;
    /// Answers failed calls from tiers of degraded responses; see
    /// [`FallbackLayer`](crate::fallback::FallbackLayer).
    #[cfg(feature = "fallback")]
    #[cfg_attr(docsrs, doc(cfg(feature = "fallback")))]
    fn fallback<M, C, Li>(
        self,
        layer: crate::fallback::FallbackLayer<M, C, Li>,
    ) -> ServiceBuilder<Stack<crate::fallback::FallbackLayer<M, C, Li>, L>>
    where
        M: crate::fallback::Mode;

    /// Limits the request rate per key with GCRA; see
    /// [`RateLimitLayer`](crate::rate_limit::RateLimitLayer).
    ///
    /// Named `rate_limiter` because `ServiceBuilder` has an inherent
    /// `rate_limit(num, per)` (tower's global limit, with the `limit`
    /// feature), which a method of this name would be shadowed by.
    #[cfg(feature = "rate-limit")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
    fn rate_limiter<D, C, H, Li>(
        self,
        layer: crate::rate_limit::RateLimitLayer<D, C, H, Li>,
    ) -> ServiceBuilder<Stack<crate::rate_limit::RateLimitLayer<D, C, H, Li>, L>>;

    /// Times calls out at a percentile of recent latencies times a
    /// multiplier; see
    /// [`AdaptiveTimeoutLayer`](crate::timeout::AdaptiveTimeoutLayer).
    #[cfg(feature = "timeout")]
    #[cfg_attr(docsrs, doc(cfg(feature = "timeout")))]
    fn adaptive_timeout<C, D, Li>(
        self,
        layer: crate::timeout::AdaptiveTimeoutLayer<C, D, Li>,
    ) -> ServiceBuilder<Stack<crate::timeout::AdaptiveTimeoutLayer<C, D, Li>, L>>;

    /// Hedges slow requests that are safe to send twice; see
    /// [`HedgeLayer`](crate::timeout::HedgeLayer).
    #[cfg(feature = "timeout")]
    #[cfg_attr(docsrs, doc(cfg(feature = "timeout")))]
    fn hedge<P, C, Li>(
        self,
        layer: crate::timeout::HedgeLayer<P, C, Li>,
    ) -> ServiceBuilder<Stack<crate::timeout::HedgeLayer<P, C, Li>, L>>;

    /// Injects faults (latency, errors, HTTP or gRPC answers, hangs) into
    /// the calls to the services below; see
    /// [`ChaosLayer`](crate::chaos::ChaosLayer). Take the layer's
    /// `handle()` before passing it in to switch faults at run time.
    ///
    /// ```
    /// use seawall::chaos::{ChaosLayer, Fault, InjectedFault};
    /// use seawall::{BoxError, ServiceBuilderExt};
    /// use tower::{ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let chaos = ChaosLayer::builder()
    ///     .seed(1)
    ///     .fault(Fault::error().rate(1.0))
    ///     .build()
    ///     .unwrap();
    /// let handle = chaos.handle();
    /// let svc = ServiceBuilder::new()
    ///     .chaos(chaos)
    ///     .service_fn(|n: u32| async move { Ok::<_, BoxError>(n) });
    /// let err = svc.clone().oneshot(1).await.unwrap_err();
    /// assert!(err.is::<InjectedFault>());
    ///
    /// handle.disable();
    /// assert_eq!(svc.oneshot(2).await.unwrap(), 2);
    /// # }
    /// ```
    #[cfg(feature = "chaos")]
    #[cfg_attr(docsrs, doc(cfg(feature = "chaos")))]
    fn chaos<P, Li>(
        self,
        layer: crate::chaos::ChaosLayer<P, Li>,
    ) -> ServiceBuilder<Stack<crate::chaos::ChaosLayer<P, Li>, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    #[cfg(feature = "http")]
    fn rejection_response(self) -> ServiceBuilder<Stack<crate::http::RejectionResponseLayer, L>> {
        self.layer(crate::http::RejectionResponseLayer::new())
    }

    #[cfg(feature = "tonic")]
    fn rejection_status(self) -> ServiceBuilder<Stack<crate::grpc::RejectionStatusLayer, L>> {
        self.layer(crate::grpc::RejectionStatusLayer::new())
    }

    #[cfg(feature = "idempotency")]
    fn idempotency<St, Li>(
        self,
        layer: crate::idempotency::IdempotencyLayer<St, Li>,
    ) -> ServiceBuilder<Stack<crate::idempotency::IdempotencyLayer<St, Li>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "bulkhead")]
    fn bulkhead<P, C>(
        self,
        layer: crate::bulkhead::BulkheadLayer<P, C>,
    ) -> ServiceBuilder<Stack<crate::bulkhead::BulkheadLayer<P, C>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "retry")]
    fn jitter_retry<P, C, Li, R>(
        self,
        layer: crate::retry::JitterRetryLayer<P, C, Li, R>,
    ) -> ServiceBuilder<Stack<crate::retry::JitterRetryLayer<P, C, Li, R>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "circuit-breaker")]
    fn circuit_breaker<C>(
        self,
        layer: crate::circuit_breaker::CircuitBreakerLayer<C>,
    ) -> ServiceBuilder<Stack<crate::circuit_breaker::CircuitBreakerLayer<C>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "circuit-breaker")]
    fn keyed_circuit_breaker<K, F, C>(
        self,
        layer: crate::circuit_breaker::KeyedCircuitBreakerLayer<K, F, C>,
    ) -> ServiceBuilder<Stack<crate::circuit_breaker::KeyedCircuitBreakerLayer<K, F, C>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "fallback")]
    fn fallback<M, C, Li>(
        self,
        layer: crate::fallback::FallbackLayer<M, C, Li>,
    ) -> ServiceBuilder<Stack<crate::fallback::FallbackLayer<M, C, Li>, L>>
    where
        M: crate::fallback::Mode,
    {
        self.layer(layer)
    }

    #[cfg(feature = "rate-limit")]
    fn rate_limiter<D, C, H, Li>(
        self,
        layer: crate::rate_limit::RateLimitLayer<D, C, H, Li>,
    ) -> ServiceBuilder<Stack<crate::rate_limit::RateLimitLayer<D, C, H, Li>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "timeout")]
    fn adaptive_timeout<C, D, Li>(
        self,
        layer: crate::timeout::AdaptiveTimeoutLayer<C, D, Li>,
    ) -> ServiceBuilder<Stack<crate::timeout::AdaptiveTimeoutLayer<C, D, Li>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "timeout")]
    fn hedge<P, C, Li>(
        self,
        layer: crate::timeout::HedgeLayer<P, C, Li>,
    ) -> ServiceBuilder<Stack<crate::timeout::HedgeLayer<P, C, Li>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "chaos")]
    fn chaos<P, Li>(
        self,
        layer: crate::chaos::ChaosLayer<P, Li>,
    ) -> ServiceBuilder<Stack<crate::chaos::ChaosLayer<P, Li>, L>> {
        self.layer(layer)
    }
}

#[cfg(all(test, feature = "timeout"))]
mod timeout_tests {
    use super::ServiceBuilderExt;
    use crate::timeout::{AdaptiveTimeoutElapsed, AdaptiveTimeoutLayer, HedgeLayer};
    use crate::BoxError;
    use std::time::Duration;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    #[tokio::test(start_paused = true)]
    async fn timeout_and_hedge_through_the_builder() {
        let timeout = AdaptiveTimeoutLayer::builder()
            .initial_timeout(Duration::from_millis(50))
            .build()
            .unwrap();
        let hedge = HedgeLayer::builder()
            .delay(Duration::from_millis(10))
            .budget_ratio(1.0)
            .build()
            .unwrap();
        let svc = ServiceBuilder::new()
            .adaptive_timeout(timeout)
            .hedge(hedge)
            .service(service_fn(|ms: u64| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, BoxError>(ms)
            }));
        assert_eq!(svc.clone().oneshot(5).await.unwrap(), 5);
        let err = svc.oneshot(500).await.unwrap_err();
        assert!(err.is::<AdaptiveTimeoutElapsed>(), "{err}");
    }
}

#[cfg(all(test, feature = "rate-limit"))]
mod rate_limit_tests {
    use super::ServiceBuilderExt;
    use crate::rate_limit::{Limit, Quota, RateLimitLayer, RateLimited};
    use crate::BoxError;
    use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

    #[tokio::test(start_paused = true)]
    async fn rate_limit_through_the_builder() {
        let layer = RateLimitLayer::builder()
            .limit(Limit::global("all", Quota::per_second(1)))
            .build()
            .unwrap();
        let mut svc = ServiceBuilder::new()
            .rate_limiter(layer)
            .service(service_fn(|n: u32| async move { Ok::<_, BoxError>(n) }));
        assert_eq!(svc.ready().await.unwrap().call(7).await.unwrap(), 7);
        let err = svc.ready().await.unwrap().call(8).await.unwrap_err();
        assert!(err.is::<RateLimited>());
    }
}

#[cfg(all(test, feature = "circuit-breaker"))]
mod tests {
    use super::ServiceBuilderExt;
    use crate::circuit_breaker::{CircuitBreakerLayer, CircuitOpen};
    use crate::BoxError;
    use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

    #[tokio::test]
    async fn keyed_breakers_trip_per_key_through_the_builder() {
        let layer = CircuitBreakerLayer::builder()
            .count_window(2)
            .minimum_calls(2)
            .build_keyed(|host: &&'static str| *host)
            .unwrap();
        let mut svc = ServiceBuilder::new()
            .keyed_circuit_breaker(layer)
            .service(service_fn(|host: &'static str| async move {
                if host == "down" {
                    Err::<&str, BoxError>("refused".into())
                } else {
                    Ok(host)
                }
            }));
        for _ in 0..2 {
            assert!(svc.ready().await.unwrap().call("down").await.is_err());
        }
        let err = svc.ready().await.unwrap().call("down").await.unwrap_err();
        assert!(err.is::<CircuitOpen>(), "{err}");
        assert_eq!(svc.ready().await.unwrap().call("up").await.unwrap(), "up");
    }
}
