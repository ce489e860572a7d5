//! The adaptive timeout's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use seawall_core::{BoxError, Classify, Listener};
use tokio::time::Instant;

use crate::error::AdaptiveTimeoutElapsed;
use crate::event::TimeoutEvent;
use crate::timeout::layer::TimeoutShared;
use crate::timer::LazySleep;

pin_project! {
    /// The response future of an [`AdaptiveTimeout`](crate::AdaptiveTimeout)
    /// service. Dropping it drops the inner call.
    pub struct ResponseFuture<F, C, D, L> {
        #[pin]
        inner: F,
        #[pin]
        sleep: LazySleep,
        // Read in `call` when the request carried a deadline.
        called_at: Option<Instant>,
        timeout: Duration,
        threshold: Duration,
        carried: bool,
        shared: Arc<TimeoutShared<C, D, L>>,
    }
}

impl<F, C, D, L> ResponseFuture<F, C, D, L> {
    pub(crate) fn new(
        inner: F,
        called_at: Option<Instant>,
        timeout: Duration,
        threshold: Duration,
        carried: bool,
        shared: Arc<TimeoutShared<C, D, L>>,
    ) -> Self {
        Self {
            inner,
            sleep: LazySleep::new(),
            called_at,
            timeout,
            threshold,
            carried,
            shared,
        }
    }
}

impl<F, C, D, L> fmt::Debug for ResponseFuture<F, C, D, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("timeout", &self.timeout)
            .field("carried", &self.carried)
            .finish_non_exhaustive()
    }
}

impl<F, T, E, C, D, L> Future for ResponseFuture<F, C, D, L>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
    L: Listener<TimeoutEvent>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            // A call answered on its first poll is not a sample: the caller
            // did not wait and no timeout could have fired, and counting
            // it as zero would drag the percentile of the calls that do
            // wait (cache misses under a wall of hits) down to the floor.
            // Of the others, only successes feed the estimate: a failure's
            // latency (a fast refusal, a slow reset) says nothing about how
            // long a real answer takes.
            if let Some(start) = this.sleep.start() {
                if this
                    .shared
                    .classifier
                    .classify(result.as_ref())
                    .is_success()
                {
                    let now = Instant::now();
                    this.shared
                        .estimator
                        .record(now, now.saturating_duration_since(start));
                }
            }
            return Poll::Ready(result.map_err(Into::into));
        }
        let (called_at, timeout, shared) = (*this.called_at, *this.timeout, &*this.shared);
        ready!(this.sleep.as_mut().poll_elapsed(cx, || {
            let start = called_at.unwrap_or_else(Instant::now);
            // Due refreshes of the estimate happen here, off the path of
            // calls that answer at once.
            shared.estimator.current(start);
            (start, deadline(start, timeout))
        }));
        if !*this.carried {
            // The adaptive threshold fired: the call would have taken at
            // least this long, a lower bound of its latency and the only
            // way to learn a latency above the threshold. While fewer than
            // `1 - percentile` of the calls time out, such samples sit
            // above the percentile either way and leave it unchanged; when
            // more do, the percentile becomes the threshold and the next
            // refresh multiplies it, until the calls fit again. A request's
            // own shorter deadline says nothing of the dependency, and is
            // not a sample.
            if let Some(start) = this.sleep.start() {
                let now = Instant::now();
                this.shared
                    .estimator
                    .record(now, now.saturating_duration_since(start));
            }
        }
        if L::ENABLED {
            this.shared.listener.on_event(&TimeoutEvent::TimedOut {
                layer: this.shared.name.clone(),
                timeout: *this.timeout,
                threshold: *this.threshold,
                carried: *this.carried,
            });
        }
        Poll::Ready(Err(Box::new(AdaptiveTimeoutElapsed::new(
            *this.timeout,
            *this.carried,
        ))))
    }
}

fn deadline(start: Instant, timeout: Duration) -> Instant {
    // The threshold is at most a day (validated) and a carried deadline only
    // ever shortens it; saturate rather than panic all the same.
    start
        .checked_add(timeout)
        .unwrap_or_else(|| start + crate::estimator::MAX_SETTING)
}
