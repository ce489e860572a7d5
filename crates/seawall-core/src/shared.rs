//! [`SharedState`]: how a layer's services and response futures reach the
//! state the layer was built with.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// The state a layer shares with every service it makes and every response
/// future those services return.
///
/// A response future can outlive the service that made it, so it needs its
/// own hold on the state. By default that hold is an [`Arc`]: every call
/// clones it and every finished future drops it, one atomic increment and
/// one atomic decrement of a counter that every call through the layer
/// shares. Alone that pair costs about 8 ns on one core in this
/// repository's benches; inside a layer's call, where the processor
/// overlaps it with other work, 1–3 ns. The counter's cache line also moves
/// between cores when many of them call through one layer.
///
/// A layer built once for the whole life of the program does not need the
/// count. [`leak`](Self::leak) turns the handle into a plain `&'static`
/// reference, which is copied instead of counted; tracing's global
/// dispatcher makes the same trade. The state is then never freed, and its
/// `Drop` never runs (a listener that flushes on drop never flushes), so
/// leak only what is built a bounded number of times, such as the layers of
/// a server built at start-up.
///
/// A handle is two words (which kind, and the pointer), one more than an
/// `Arc`.
///
/// # Example
///
/// ```
/// use seawall_core::SharedState;
///
/// let counted = SharedState::new(vec![1, 2, 3]);
/// assert!(!counted.is_static());
///
/// let leaked = counted.leak();
/// assert!(leaked.is_static());
/// let copy = leaked.clone(); // no reference count touched
/// assert_eq!(*copy, [1, 2, 3]);
/// ```
pub struct SharedState<T: ?Sized + 'static> {
    kind: Kind<T>,
}

enum Kind<T: ?Sized + 'static> {
    Counted(Arc<T>),
    Static(&'static T),
}

impl<T> SharedState<T> {
    /// Puts `state` behind a reference count.
    pub fn new(state: T) -> Self {
        Self::from(Arc::new(state))
    }
}

impl<T: ?Sized + 'static> SharedState<T> {
    /// A handle on state that lives for the whole program.
    ///
    /// ```
    /// use seawall_core::SharedState;
    ///
    /// static LIMITS: [u32; 2] = [10, 20];
    /// let limits = SharedState::from_static(&LIMITS);
    /// assert!(limits.is_static());
    /// assert_eq!(limits[1], 20);
    /// ```
    pub fn from_static(state: &'static T) -> Self {
        Self {
            kind: Kind::Static(state),
        }
    }

    /// Makes the state live for the rest of the program, so that this
    /// handle and its clones are plain references, copied without touching
    /// a reference count.
    ///
    /// The state is never freed, even once every handle is gone, and its
    /// `Drop` never runs. Handles cloned before the call keep counting;
    /// they still reach the same state.
    #[must_use]
    pub fn leak(self) -> Self {
        match self.kind {
            Kind::Counted(arc) => {
                let arc: &'static Arc<T> = Box::leak(Box::new(arc));
                Self::from_static(&**arc)
            }
            Kind::Static(_) => self,
        }
    }

    /// `true` if this handle is a plain reference to state that is never
    /// freed.
    pub fn is_static(&self) -> bool {
        matches!(self.kind, Kind::Static(_))
    }
}

impl<T: ?Sized + 'static> From<Arc<T>> for SharedState<T> {
    fn from(arc: Arc<T>) -> Self {
        Self {
            kind: Kind::Counted(arc),
        }
    }
}

impl<T: ?Sized + 'static> Deref for SharedState<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        match &self.kind {
            Kind::Counted(arc) => arc,
            Kind::Static(state) => state,
        }
    }
}

impl<T: ?Sized + 'static> Clone for SharedState<T> {
    #[inline]
    fn clone(&self) -> Self {
        let kind = match &self.kind {
            Kind::Counted(arc) => Kind::Counted(Arc::clone(arc)),
            Kind::Static(state) => Kind::Static(*state),
        };
        Self { kind }
    }
}

impl<T: ?Sized + fmt::Debug + 'static> fmt::Debug for SharedState<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_clones_share_one_allocation() {
        let a = SharedState::new(5u32);
        let b = a.clone();
        assert!(std::ptr::eq(&raw const *a, &raw const *b));
        assert!(!b.is_static());
    }

    #[test]
    fn leaking_keeps_the_state_and_stops_counting() {
        let arc = Arc::new(String::from("state"));
        let counted = SharedState::from(Arc::clone(&arc));
        let earlier = counted.clone();
        assert_eq!(Arc::strong_count(&arc), 3);

        let leaked = counted.leak();
        assert!(leaked.is_static());
        assert!(
            std::ptr::eq(&raw const *leaked, &raw const *arc),
            "the same state"
        );
        let copies: Vec<_> = (0..10).map(|_| leaked.clone()).collect();
        assert_eq!(
            Arc::strong_count(&arc),
            3,
            "clones of a leaked handle do not count"
        );
        assert!(copies.iter().all(SharedState::is_static));

        drop(copies);
        drop(leaked);
        drop(earlier);
        assert_eq!(
            Arc::strong_count(&arc),
            2,
            "the leaked count is never given back"
        );
        assert!(SharedState::from_static("x").leak().is_static());
    }
}
