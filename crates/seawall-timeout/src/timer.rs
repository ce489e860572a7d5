//! A sleep armed only when a call turns out not to answer at once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{sleep_until, Instant, Sleep};

pin_project! {
    /// A timer that reads the clock and registers with tokio's timer wheel
    /// only when first polled, i.e. once the call it guards has returned
    /// `Pending`: a call answered on its first poll costs neither (tower's
    /// `Timeout` reads the clock and builds its `Sleep` in `call`, for every
    /// request). The instant it was armed is when the caller started
    /// waiting, from which latencies are measured.
    #[project = LazySleepProj]
    #[derive(Debug)]
    pub(crate) enum LazySleep {
        Idle,
        Armed { start: Instant, #[pin] sleep: Sleep },
    }
}

impl LazySleep {
    pub(crate) const fn new() -> Self {
        LazySleep::Idle
    }

    /// When the timer was armed, if it was.
    pub(crate) fn start(&self) -> Option<Instant> {
        match self {
            LazySleep::Idle => None,
            LazySleep::Armed { start, .. } => Some(*start),
        }
    }

    /// `Ready` once the deadline has passed. An idle timer is armed first
    /// with `arm()`, which gives the start and the deadline.
    pub(crate) fn poll_elapsed(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        arm: impl FnOnce() -> (Instant, Instant),
    ) -> Poll<()> {
        if let LazySleepProj::Idle = self.as_mut().project() {
            let (start, deadline) = arm();
            self.set(LazySleep::Armed {
                start,
                sleep: sleep_until(deadline),
            });
        }
        match self.project() {
            LazySleepProj::Armed { sleep, .. } => sleep.poll(cx),
            // Armed just above.
            LazySleepProj::Idle => Poll::Pending,
        }
    }

    /// Moves the deadline of an armed timer.
    pub(crate) fn reset(self: Pin<&mut Self>, deadline: Instant) {
        if let LazySleepProj::Armed { sleep, .. } = self.project() {
            sleep.reset(deadline);
        }
    }
}
