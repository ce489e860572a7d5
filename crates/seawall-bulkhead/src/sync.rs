//! The synchronisation primitives of the pool: `std`'s, or loom's when the
//! unit tests run under `--cfg loom` to check the permit hand-off.
//!
//! The pool itself is reached through `seawall_core::SharedState`, a `std`
//! `Arc` (or a leaked reference) in both cases: what loom must check is the
//! hand-off through the state word and the queue, not the reference count.

#[cfg(all(test, loom))]
pub(crate) use loom::sync::{
    atomic::{AtomicU64, AtomicUsize, Ordering},
    Mutex, MutexGuard,
};

#[cfg(not(all(test, loom)))]
pub(crate) use std::sync::{
    atomic::{AtomicU64, AtomicUsize, Ordering},
    Mutex, MutexGuard,
};
