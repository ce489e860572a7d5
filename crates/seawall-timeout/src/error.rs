//! The adaptive timeout's error.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use tower::timeout::error::Elapsed;

/// A call through an [`AdaptiveTimeoutLayer`](crate::AdaptiveTimeoutLayer)
/// took longer than its timeout: the adaptive threshold, or the deadline the
/// request carried when that came first.
///
/// It is a failure of the dependency, not a local refusal: on purpose it is
/// *not* a seawall [`Rejection`](seawall_core::Rejection), so a circuit
/// breaker above counts it and a retry above may retry it. Its source is
/// tower's [`Elapsed`], so it reads as a timeout wherever timeouts are
/// recognised: `seawall::http::RejectionResponseLayer` answers it with
/// `504 Gateway Timeout`, and with `DEADLINE_EXCEEDED` to gRPC callers.
///
/// ```
/// use std::time::Duration;
/// use seawall_timeout::{AdaptiveTimeoutElapsed, AdaptiveTimeoutLayer};
/// use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let layer = AdaptiveTimeoutLayer::builder()
///     .initial_timeout(Duration::from_millis(200))
///     .build()
///     .unwrap();
/// let stuck = service_fn(|_: ()| std::future::pending::<Result<(), BoxError>>());
/// let err = ServiceBuilder::new().layer(layer).service(stuck).oneshot(()).await.unwrap_err();
/// let elapsed = err.downcast_ref::<AdaptiveTimeoutElapsed>().unwrap();
/// assert_eq!(elapsed.timeout(), Duration::from_millis(200));
/// assert!(!elapsed.carried());
/// assert_eq!(err.to_string(), "request timed out after 200ms");
/// # }
/// ```
#[derive(Debug)]
pub struct AdaptiveTimeoutElapsed {
    timeout: Duration,
    carried: bool,
    source: Elapsed,
}

impl AdaptiveTimeoutElapsed {
    pub(crate) const fn new(timeout: Duration, carried: bool) -> Self {
        Self {
            timeout,
            carried,
            source: Elapsed::new(),
        }
    }

    /// The timeout that elapsed.
    pub const fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `true` when the request's own deadline (`grpc-timeout` or a
    /// [`Deadline`](crate::Deadline)) was shorter than the adaptive timeout
    /// and ended the call.
    pub const fn carried(&self) -> bool {
        self.carried
    }
}

impl fmt::Display for AdaptiveTimeoutElapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request timed out after {:?}", self.timeout)
    }
}

impl Error for AdaptiveTimeoutElapsed {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.source)
    }
}
