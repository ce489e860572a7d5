//! Events a bulkhead pool emits.

use std::fmt;
use std::sync::Arc;

use seawall_core::event::{Facts, Severity};
use seawall_core::{Event, Listener};

use crate::priority::Priority;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Every permit was in use and the queue was full or disabled
    /// ([`BulkheadFull`](crate::BulkheadFull)).
    Full,
    /// The request's class had used up its share of the limit
    /// ([`BulkheadFull`](crate::BulkheadFull) with `is_shed()`), or a more
    /// important request took its place in a full queue.
    Shed,
    /// The request waited `max_wait` in the queue
    /// ([`BulkheadTimeout`](crate::BulkheadTimeout)).
    Timeout,
}

impl RejectReason {
    /// `"full"`, `"shed"` or `"timeout"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RejectReason::Full => "full",
            RejectReason::Shed => "shed",
            RejectReason::Timeout => "timeout",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that happened in a bulkhead pool.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum BulkheadEvent {
    /// A request was refused.
    Rejected {
        /// The pool's name.
        pool: Arc<str>,
        /// Why.
        reason: RejectReason,
        /// The request's class, if the bulkhead prioritises requests.
        priority: Option<Priority>,
        /// Permits in use at the time.
        in_flight: usize,
        /// The limit at the time.
        limit: usize,
    },
    /// The limit moved: an adaptive limit's update, or
    /// [`Pool::set_max_concurrent`](crate::Pool::set_max_concurrent).
    LimitChanged {
        /// The pool's name.
        pool: Arc<str>,
        /// The previous limit.
        from: usize,
        /// The new limit.
        to: usize,
    },
}

impl Event for BulkheadEvent {
    fn kind(&self) -> &'static str {
        match self {
            BulkheadEvent::Rejected { .. } => "rejected",
            BulkheadEvent::LimitChanged { .. } => "limit_changed",
        }
    }

    fn layer(&self) -> &str {
        match self {
            BulkheadEvent::Rejected { pool, .. } | BulkheadEvent::LimitChanged { pool, .. } => pool,
        }
    }

    fn severity(&self) -> Severity {
        match self {
            BulkheadEvent::Rejected { .. } => Severity::Warn,
            // Adaptive limits move on most samples; only worth a debug line.
            BulkheadEvent::LimitChanged { .. } => Severity::Debug,
        }
    }

    fn pattern(&self) -> &'static str {
        "bulkhead"
    }

    fn facts(&self) -> Facts {
        match self {
            BulkheadEvent::Rejected {
                reason,
                in_flight,
                limit,
                ..
            } => {
                let kind = match reason {
                    RejectReason::Full | RejectReason::Shed => crate::BulkheadFull::KIND,
                    RejectReason::Timeout => crate::BulkheadTimeout::KIND,
                };
                // The queue's length is not known here, so `queued` stays unset.
                let mut facts = Facts::NONE.refusal(kind);
                facts.in_flight = Some(*in_flight as u64);
                facts.limit = Some(*limit as u64);
                facts
            }
            BulkheadEvent::LimitChanged { to, .. } => {
                let mut facts = Facts::NONE;
                facts.limit = Some(*to as u64);
                facts
            }
        }
    }
}

/// A listener with its type erased, so that pools with different listeners
/// are the same type and can be shared across routes. `None` when the
/// listener is disabled, so no event is ever built for a `NoopListener`.
#[derive(Clone)]
pub(crate) struct Sink(Option<Arc<EmitFn>>);

type EmitFn = dyn Fn(&BulkheadEvent) + Send + Sync;

impl Sink {
    pub(crate) const NONE: Sink = Sink(None);

    pub(crate) fn new<L: Listener<BulkheadEvent>>(listener: L) -> Self {
        if L::ENABLED {
            Sink(Some(Arc::new(move |e: &BulkheadEvent| {
                listener.on_event(e);
            })))
        } else {
            Sink(None)
        }
    }

    #[inline]
    pub(crate) fn emit(&self, build: impl FnOnce() -> BulkheadEvent) {
        if let Some(f) = &self.0 {
            f(&build());
        }
    }
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Sink(listener)"
        } else {
            "Sink(none)"
        })
    }
}
