//! The atomics behind the half-open probe gate and the time window, swapped
//! for loom's under `cfg(loom)` so the model checker can explore every
//! interleaving.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU64};
#[cfg(loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU64};
#[cfg(not(loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

/// Locks a mutex whose data stays valid even if a holder panicked.
#[cfg(not(loom))]
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Locks a mutex whose data stays valid even if a holder panicked.
#[cfg(loom)]
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One step of waiting for another thread: spins a little, then yields.
#[cfg(not(loom))]
pub(crate) fn backoff(spins: &mut u32) {
    if *spins < 64 {
        *spins += 1;
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// One step of waiting for another thread (under loom, a yield, so the
/// model lets the other thread run).
#[cfg(loom)]
pub(crate) fn backoff(_spins: &mut u32) {
    loom::thread::yield_now();
}
