//! `HedgeLayer`: layer, policies, service and future.

pub(crate) mod future;
pub(crate) mod layer;
pub(crate) mod policy;
pub(crate) mod service;
