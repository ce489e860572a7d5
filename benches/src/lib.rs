//! Leaf services shared by seawall's benchmarks.

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use tower::Service;

/// A leaf service that answers at once. `call` is `#[inline(never)]` so every
/// layer under test pays one real call, as it would in production.
#[derive(Debug, Clone, Copy, Default)]
pub struct Leaf;

impl<R> Service<R> for Leaf {
    type Response = R;
    type Error = Infallible;
    type Future = Ready<Result<R, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    #[inline(never)]
    fn call(&mut self, req: R) -> Self::Future {
        ready(Ok(std::hint::black_box(req)))
    }
}

/// Drives one call through `svc` on the current thread: readiness, `call`,
/// and a single poll of the response future, with a no-op waker.
///
/// Every service measured with it answers at once, so this measures the
/// layers and not an executor. It is `#[inline(always)]` so that the
/// response future is built and polled in the benchmark's own frame for
/// every contender alike: otherwise whether the compiler inlines a polling
/// helper for one future type and not another, and moves the future into
/// it, shows up as a difference between the layers.
///
/// # Panics
///
/// If the service is not ready, fails, or its response is not ready at
/// once: a benchmark set up wrongly.
#[allow(clippy::inline_always)] // the point of the helper; see above
#[inline(always)]
pub fn call_now<S, R>(svc: &mut S, req: R) -> S::Response
where
    S: Service<R>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => panic!("service failed readiness: {e:?}"),
        Poll::Pending => panic!("service not ready"),
    }
    let fut = pin!(svc.call(req));
    match fut.poll(&mut cx) {
        Poll::Ready(Ok(res)) => res,
        Poll::Ready(Err(e)) => panic!("call failed: {e:?}"),
        Poll::Pending => panic!("the response is not ready at once"),
    }
}
