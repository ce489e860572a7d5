//! A sleep armed only when it is first polled.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{sleep_until, Instant, Sleep};

pin_project! {
    /// A timer that registers with tokio's timer wheel only once a call
    /// turns out not to be ready at once: a call answered on its first poll
    /// never touches the runtime's timer (tower's `Timeout` builds its
    /// `Sleep` in `call`, for every request).
    #[project = LazySleepProj]
    #[derive(Debug)]
    pub(crate) enum LazySleep {
        Idle { deadline: Instant },
        Armed { #[pin] sleep: Sleep },
    }
}

impl LazySleep {
    pub(crate) const fn new(deadline: Instant) -> Self {
        LazySleep::Idle { deadline }
    }

    /// `Ready` once the deadline has passed.
    pub(crate) fn poll_elapsed(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.as_mut().project() {
                LazySleepProj::Armed { sleep } => return sleep.poll(cx),
                LazySleepProj::Idle { deadline } => {
                    let deadline = *deadline;
                    self.set(LazySleep::Armed {
                        sleep: sleep_until(deadline),
                    });
                }
            }
        }
    }

    /// Moves the deadline.
    pub(crate) fn reset(self: Pin<&mut Self>, deadline: Instant) {
        match self.project() {
            LazySleepProj::Armed { sleep } => sleep.reset(deadline),
            LazySleepProj::Idle { deadline: d } => *d = deadline,
        }
    }
}
