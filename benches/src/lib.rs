//! Leaf services shared by seawall's benchmarks.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

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
