//! The atomics behind the half-open probe gate, swapped for loom's under
//! `cfg(loom)` so the model checker can explore every interleaving.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::AtomicU64;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::AtomicU64;
