//! The synchronisation primitives of the pool: `std`'s, or loom's when the
//! unit tests run under `--cfg loom` to check the permit hand-off.

#[cfg(all(test, loom))]
pub(crate) use loom::sync::{
    atomic::{AtomicU64, AtomicUsize, Ordering},
    Arc, Mutex, MutexGuard,
};

#[cfg(not(all(test, loom)))]
pub(crate) use std::sync::{
    atomic::{AtomicU64, AtomicUsize, Ordering},
    Arc, Mutex, MutexGuard,
};
