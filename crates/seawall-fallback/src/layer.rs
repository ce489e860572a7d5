//! [`FallbackLayer`] and its [`Builder`].

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use seawall_core::{BoxError, ConfigError, ErrorsFail, NoopListener, SharedState};
use tower::util::BoxCloneSyncService;
use tower_layer::Layer;
use tower_service::Service;

use crate::chain::{Shared, Stage};
use crate::last_known_good::{LastKnownGood, LastKnownGoodCache, Slot, Store};
use crate::mode::{Mode, NoCapture, Plain};
use crate::service::Fallback;
use crate::tier::{Cause, Degraded, Rejections};

pub(crate) const LAYER: &str = "fallback";

/// Applies [`Fallback`] to services: on a failure, answers from the
/// configured tiers instead. See the [crate docs](crate).
pub struct FallbackLayer<M: Mode, C: 'static = ErrorsFail, L: 'static = NoopListener> {
    shared: SharedState<Shared<M, C, L>>,
}

impl<Res> FallbackLayer<Plain<Res>>
where
    Res: Clone + Send + Sync + 'static,
{
    /// A builder for responses of any `Clone` type, capturing nothing from
    /// requests: tiers see `&()` as the request info.
    pub fn builder() -> Builder<Plain<Res>> {
        Builder::new(Plain::new(NoCapture), ErrorsFail)
    }
}

impl<Res, I, X> FallbackLayer<Plain<Res, I, X>>
where
    Res: Clone + Send + Sync + 'static,
    I: Clone + Send + Sync + 'static,
    X: Send + Sync + 'static,
{
    /// A builder for responses of any `Clone` type, capturing `I` from each
    /// request with `capture` (called only if a tier other than
    /// [`value`](Builder::value) is configured).
    ///
    /// ```
    /// use seawall_fallback::{FallbackLayer, LastKnownGood};
    ///
    /// struct Lookup { user: u64 }
    /// let layer = FallbackLayer::capturing(|req: &Lookup| req.user)
    ///     .last_known_good(LastKnownGood::new(), |user: &u64| Some(*user))
    ///     .build()
    ///     .unwrap();
    /// # let _: FallbackLayer<seawall_fallback::Plain<String, u64, _>> = layer;
    /// ```
    pub fn capturing<Req>(capture: X) -> Builder<Plain<Res, I, X>>
    where
        X: Fn(&Req) -> I,
    {
        Builder::new(Plain::new(capture), ErrorsFail)
    }
}

impl<M: Mode, C, L> FallbackLayer<M, C, L> {
    /// The layer's name, used in events.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// A handle on the last-known-good cache, if that tier is configured.
    /// Every service built from this layer shares it.
    pub fn last_known_good(&self) -> Option<LastKnownGoodCache> {
        self.shared
            .last_known_good
            .as_ref()
            .map(|slot| LastKnownGoodCache::new(slot.clone()))
    }

    /// Makes the layer's tiers and settings live for the rest of the
    /// program, so that its services and their response futures hold a
    /// plain reference to them instead of a reference count.
    ///
    /// Every call then skips one atomic increment and one atomic decrement
    /// of a counter shared by all calls through the layer (see
    /// [`SharedState`]): about a nanosecond per call in this repository's
    /// benches on one core, more where many cores call through one layer.
    /// The state, the last-known-good cache included, is never freed and
    /// its listener never dropped: leak layers built once, at start-up, not
    /// per request or per key.
    ///
    /// ```
    /// use seawall_fallback::FallbackLayer;
    /// use tower::{service_fn, ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // Built once, when the server is set up.
    /// let fallback = FallbackLayer::builder()
    ///     .value(Vec::<u64>::new())
    ///     .build()
    ///     .expect("valid fallback settings")
    ///     .leak();
    ///
    /// let recommendations = ServiceBuilder::new()
    ///     .layer(fallback)
    ///     .service(service_fn(|_: ()| async { Err::<Vec<u64>, _>("recommender down") }));
    /// assert!(recommendations.oneshot(()).await.unwrap().is_empty());
    /// # }
    /// ```
    #[must_use]
    pub fn leak(self) -> Self {
        Self {
            shared: self.shared.leak(),
        }
    }
}

impl<S, M: Mode, C, L> Layer<S> for FallbackLayer<M, C, L> {
    type Service = Fallback<S, M, C, L>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback::new(inner, self.shared.clone())
    }
}

impl<M: Mode, C, L> Clone for FallbackLayer<M, C, L> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<M: Mode, C, L> fmt::Debug for FallbackLayer<M, C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tiers: Vec<_> = self.shared.stages.iter().map(Stage::tier).collect();
        f.debug_struct("FallbackLayer")
            .field("name", &self.shared.name)
            .field("tiers", &tiers)
            .field("rejections", &self.shared.rejections)
            .finish_non_exhaustive()
    }
}

/// Configures a [`FallbackLayer`]: its tiers, in the order they are tried,
/// the classifier, the rejections it replaces, its name and its listener.
pub struct Builder<M: Mode, C = ErrorsFail, L = NoopListener> {
    pub(crate) name: Arc<str>,
    pub(crate) mode: M,
    classifier: C,
    listener: L,
    rejections: Rejections,
    stages: Vec<Stage<M>>,
    last_known_good: Option<Arc<dyn Slot<M::Info, M::Stored>>>,
    pub(crate) error: Option<ConfigError>,
}

impl<M: Mode, C> Builder<M, C, NoopListener> {
    pub(crate) fn new(mode: M, classifier: C) -> Self {
        Self {
            name: Arc::from(LAYER),
            mode,
            classifier,
            listener: NoopListener,
            rejections: Rejections::all(),
            stages: Vec::new(),
            last_known_good: None,
            error: None,
        }
    }
}

impl<M: Mode, C, L> Builder<M, C, L> {
    /// The layer's name, used in events (default `"fallback"`) and in the
    /// default Redis key prefix of a
    /// [shared last-known-good tier](crate::RedisLastKnownGood).
    #[must_use]
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Decides which responses and errors are failures (default: every error,
    /// or for HTTP [`HttpClassifier`](seawall_core::HttpClassifier)).
    /// Successes and ignored outcomes pass through untouched.
    pub fn classifier<C2>(self, classifier: C2) -> Builder<M, C2, L> {
        Builder {
            name: self.name,
            mode: self.mode,
            classifier,
            listener: self.listener,
            rejections: self.rejections,
            stages: self.stages,
            last_known_good: self.last_known_good,
            error: self.error,
        }
    }

    /// Receives [`FallbackEvent`](crate::FallbackEvent)s.
    pub fn listener<L2>(self, listener: L2) -> Builder<M, C, L2> {
        Builder {
            name: self.name,
            mode: self.mode,
            classifier: self.classifier,
            listener,
            rejections: self.rejections,
            stages: self.stages,
            last_known_good: self.last_known_good,
            error: self.error,
        }
    }

    /// Which seawall rejections fire the fallback (default: all).
    #[must_use]
    pub fn on_rejections(mut self, rejections: Rejections) -> Self {
        self.rejections = rejections;
        self
    }

    /// Adds the last-known-good tier: successful responses are remembered
    /// under `key(info)` and served, while fresh enough, when a later call
    /// with the same key fails. A `None` key neither records nor serves.
    ///
    /// The key decides who may see whose response: include everything that
    /// makes responses differ (user, tenant, language...). Whatever the key,
    /// answers to requests carrying credentials are stored only if `config`
    /// says [`key_includes_principal`](LastKnownGood::key_includes_principal),
    /// and for HTTP the rules of a shared cache apply (see
    /// [`Http`](crate::Http#what-the-last-known-good-tier-stores)).
    ///
    /// A key function that panics is caught: the request is neither
    /// recorded nor served from this tier, and a
    /// [`FallbackEvent::TierPanicked`](crate::FallbackEvent::TierPanicked)
    /// is emitted.
    #[must_use]
    pub fn last_known_good<K, F>(self, config: LastKnownGood, key: F) -> Self
    where
        F: Fn(&M::Info) -> Option<K> + Send + Sync + 'static,
        K: Hash + Eq + Send + Sync + 'static,
    {
        self.add_last_known_good(config, Ok(()), |config| Arc::new(Store::new(config, key)))
    }

    /// Adds the last-known-good tier made by `slot` once `config` (and the
    /// shared store's `extra` check) are valid.
    pub(crate) fn add_last_known_good(
        mut self,
        config: LastKnownGood,
        extra: Result<(), ConfigError>,
        slot: impl FnOnce(LastKnownGood) -> Arc<dyn Slot<M::Info, M::Stored>>,
    ) -> Self {
        if self.last_known_good.is_some() {
            self.fail(ConfigError::new(
                LAYER,
                "last_known_good",
                "is configured more than once",
            ));
            return self;
        }
        if let Err(err) = config.validate().and(extra) {
            self.fail(err);
            return self;
        }
        self.mode.enable_last_known_good();
        let slot = slot(config);
        self.last_known_good = Some(slot.clone());
        self.stages.push(Stage::LastKnownGood(slot));
        self
    }

    /// Adds a tier computed from the request info and the failure; `None`
    /// passes to the next tier.
    #[must_use]
    pub fn function<F>(mut self, f: F) -> Self
    where
        F: Fn(&M::Info, &Cause<'_>) -> Option<M::Stored> + Send + Sync + 'static,
    {
        self.stages.push(Stage::Function(Arc::new(f)));
        self
    }

    /// Adds a fixed answer. It always answers, so tiers after it never run.
    #[must_use]
    pub fn value(mut self, value: M::Stored) -> Self {
        self.stages.push(Stage::Value(value));
        self
    }

    pub(crate) fn push_alternative(
        mut self,
        svc: BoxCloneSyncService<M::Info, M::Alternative, BoxError>,
    ) -> Self {
        self.stages.push(Stage::Alternative(svc));
        self
    }

    pub(crate) fn fail(&mut self, err: ConfigError) {
        self.error.get_or_insert(err);
    }

    /// Validates the settings and builds the layer.
    pub fn build(self) -> Result<FallbackLayer<M, C, L>, ConfigError> {
        if let Some(err) = self.error {
            return Err(err);
        }
        if self.name.is_empty() {
            return Err(ConfigError::new(LAYER, "name", "must not be empty"));
        }
        if self.stages.is_empty() {
            return Err(ConfigError::new(
                LAYER,
                "tiers",
                "at least one tier is required",
            ));
        }
        if let Some(slot) = &self.last_known_good {
            slot.name_layer(&self.name);
        }
        let needs_info = self
            .stages
            .iter()
            .any(|stage| !matches!(stage, Stage::Value(_)));
        Ok(FallbackLayer {
            shared: SharedState::new(Shared {
                name: self.name,
                mode: self.mode,
                classifier: self.classifier,
                listener: self.listener,
                rejections: self.rejections,
                stages: self.stages.into_boxed_slice(),
                last_known_good: self.last_known_good,
                needs_info,
            }),
        })
    }
}

impl<Res, I, X, C, L> Builder<Plain<Res, I, X>, C, L>
where
    Plain<Res, I, X>: Mode<Info = I, Stored = Res, Alternative = Res>,
{
    /// Adds a secondary service, called with the request info.
    #[must_use]
    pub fn alternative<S>(self, svc: S) -> Self
    where
        S: Service<I, Response = Res> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        use tower::ServiceExt;
        self.push_alternative(BoxCloneSyncService::new(svc.map_err(Into::into)))
    }

    /// Marks responses served by a tier, e.g. by setting a field; plain
    /// responses are otherwise left as the tier made them.
    #[must_use]
    pub fn mark_degraded(mut self, mark: fn(&mut Res, Degraded)) -> Self {
        self.mode.set_mark(mark);
        self
    }
}

impl<M: Mode, C, L> fmt::Debug for Builder<M, C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tiers: Vec<_> = self.stages.iter().map(Stage::tier).collect();
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("tiers", &tiers)
            .field("rejections", &self.rejections)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::future::{ready, Ready};

    fn leaf(n: u64) -> Ready<Result<u64, Infallible>> {
        ready(Ok(n))
    }

    #[test]
    fn services_of_a_leaked_layer_hold_a_plain_reference() {
        let layer = FallbackLayer::builder().value(0u64).build().unwrap();
        let counted = layer.layer(tower::service_fn(leaf as fn(_) -> _));
        assert!(!counted.shared().is_static());

        let leaked = layer.leak();
        assert!(leaked.shared.is_static());
        let svc = leaked.layer(tower::service_fn(leaf as fn(_) -> _));
        assert!(svc.shared().is_static());
        assert!(svc.clone().shared().is_static());
    }
}
