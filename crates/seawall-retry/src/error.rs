//! The retry layer's own errors.

use std::error::Error;
use std::fmt;

use tower::timeout::error::Elapsed;

/// One attempt took longer than the layer's `attempt_timeout`.
///
/// It is a failure like any other error (retried if attempts, deadline and
/// budget allow) and, when it is the last one, what the caller receives. Its
/// source is tower's [`Elapsed`], so adapters that map timeouts to
/// `504 Gateway Timeout` recognise it.
#[derive(Debug)]
pub struct AttemptTimeout {
    source: Elapsed,
}

impl AttemptTimeout {
    pub(crate) const fn new() -> Self {
        Self {
            source: Elapsed::new(),
        }
    }
}

impl fmt::Display for AttemptTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("retry attempt timed out")
    }
}

impl Error for AttemptTimeout {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.source)
    }
}

/// The request's total `deadline` passed before it could finish: the attempt
/// in flight was cut short (or, in HTTP mode, the wait for the request body
/// or for the inner service's readiness), and no retry follows.
///
/// Every attempt runs for at most the time left before the deadline (and at
/// most `attempt_timeout`, when set), so a request through the layer ends by
/// its deadline: a deadline of 2 s with an attempt timeout of 5 s ends after
/// 2 s, with this error. When the deadline instead stops a retry from
/// starting (its backoff would end at or past the deadline), the last
/// failure is returned as it is.
///
/// Its source is tower's [`Elapsed`], so it reads as a timeout wherever
/// timeouts are recognised: `seawall::http::RejectionResponseLayer` answers
/// it with `504 Gateway Timeout`.
///
/// ```
/// use std::time::Duration;
/// use seawall_retry::{DeadlineExceeded, JitterRetryLayer};
/// use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let layer = JitterRetryLayer::builder()
///     .deadline(Duration::from_secs(2))
///     .build()
///     .unwrap();
/// // A dependency that never answers.
/// let stuck = service_fn(|_: ()| std::future::pending::<Result<(), BoxError>>());
/// let started = tokio::time::Instant::now();
/// let err = ServiceBuilder::new().layer(layer).service(stuck).oneshot(()).await.unwrap_err();
/// assert!(err.is::<DeadlineExceeded>());
/// assert_eq!(started.elapsed(), Duration::from_secs(2));
/// # }
/// ```
#[derive(Debug)]
pub struct DeadlineExceeded {
    source: Elapsed,
}

impl DeadlineExceeded {
    pub(crate) const fn new() -> Self {
        Self {
            source: Elapsed::new(),
        }
    }
}

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("retry deadline exceeded")
    }
}

impl Error for DeadlineExceeded {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.source)
    }
}
