//! Pools shared by name.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use seawall_core::ConfigError;

use crate::pool::{Handle, Pool, PoolBuilder};

/// Pools by name, so routes and clients configured in different places can
/// share one bulkhead per dependency, and a health or metrics endpoint can
/// list them all.
///
/// The registry is only consulted while building services, never per
/// request; a clone shares the same map.
///
/// ```
/// use seawall_bulkhead::{BulkheadLayer, Pool, PoolRegistry};
///
/// let pools = PoolRegistry::new();
/// let db = || Pool::builder().name("db").max_concurrent(10);
/// let users = BulkheadLayer::new(pools.get_or_build(db()).unwrap());
/// let orders = BulkheadLayer::new(pools.get_or_build(db()).unwrap());
/// assert!(users.handle().same_pool(&orders.handle()));
/// assert_eq!(pools.handles().len(), 1);
/// ```
#[derive(Clone, Default)]
pub struct PoolRegistry {
    pools: Arc<Mutex<HashMap<Arc<str>, Pool>>>,
}

impl PoolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The pool named `name`, if registered.
    pub fn get(&self, name: &str) -> Option<Pool> {
        self.lock().get(name).cloned()
    }

    /// The pool with the builder's name: the registered one if there is
    /// one (the builder's other settings are then not used), else a new pool
    /// built from `builder` and registered.
    pub fn get_or_build(&self, builder: PoolBuilder) -> Result<Pool, ConfigError> {
        let name = builder.configured_name().clone();
        let mut pools = self.lock();
        if let Some(pool) = pools.get(&name) {
            return Ok(pool.clone());
        }
        let pool = builder.build()?;
        pools.insert(name, pool.clone());
        Ok(pool)
    }

    /// Registers `pool` under its name, returning the pool it replaces.
    pub fn insert(&self, pool: Pool) -> Option<Pool> {
        let name = pool.shared.name().clone();
        self.lock().insert(name, pool)
    }

    /// A handle on every registered pool, sorted by name.
    pub fn handles(&self) -> Vec<Handle> {
        let mut handles: Vec<Handle> = self.lock().values().map(Pool::handle).collect();
        handles.sort_by(|a, b| a.name().cmp(b.name()));
        handles
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Pool>> {
        self.pools.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for PoolRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.handles()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_by_name_and_lists_pools() {
        let pools = PoolRegistry::new();
        let a = pools
            .get_or_build(Pool::builder().name("a").max_concurrent(3))
            .unwrap();
        let again = pools
            .get_or_build(Pool::builder().name("a").max_concurrent(99))
            .unwrap();
        assert!(a.handle().same_pool(&again.handle()));
        assert_eq!(again.handle().limit(), 3, "the registered pool wins");
        assert!(pools.get("b").is_none());
        assert!(pools
            .get_or_build(Pool::builder().name("b").max_concurrent(0))
            .is_err());
        assert!(pools.get("b").is_none(), "invalid pools are not registered");
        let b = Pool::builder().name("b").build().unwrap();
        assert!(pools.insert(b).is_none());
        let names: Vec<_> = pools
            .handles()
            .iter()
            .map(|h| h.name().to_owned())
            .collect();
        assert_eq!(names, vec!["a", "b"]);
        assert!(pools.clone().get("a").is_some());
    }
}
