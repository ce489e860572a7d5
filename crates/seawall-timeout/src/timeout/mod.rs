//! `AdaptiveTimeoutLayer`: layer, service and future.

pub(crate) mod future;
pub(crate) mod layer;
pub(crate) mod service;
