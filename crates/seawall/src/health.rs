//! Health: one registry of the breakers and bulkheads a service depends on,
//! a serialisable snapshot of their state, and ready-made HTTP endpoints.
//!
//! Register each layer's handle under a name, marking the dependencies the
//! service cannot do without as *critical*. The snapshot follows the shape
//! operators know from Spring Boot's actuator: an overall `status` and one
//! entry per component.
//!
//! | component | `status` |
//! |---|---|
//! | breaker closed or disabled | `UP` |
//! | breaker half-open (probing) | `UNKNOWN` |
//! | breaker open or forced open | `DOWN` |
//! | bulkhead | `UP` (its in-flight, queued, limit and refusals are reported) |
//!
//! The overall status is `DOWN` when a critical component is `DOWN`,
//! `DEGRADED` when only non-critical components are, and `UP` otherwise.
//!
//! [`HealthRegistry::health_service`] always answers `200` with the JSON
//! snapshot (a liveness-style report: the process is running);
//! [`HealthRegistry::readiness_service`] answers `503` while the overall
//! status is `DOWN`, so a load balancer stops sending traffic to a replica
//! whose critical dependency is out. Both are tower services that mount on
//! an axum `Router` with `route_service`.
//!
//! ```
//! use http::{Request, StatusCode};
//! use seawall::circuit_breaker::CircuitBreakerLayer;
//! use seawall::health::{HealthRegistry, Status};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let payments = CircuitBreakerLayer::builder().name("payments").build().unwrap();
//! let health = HealthRegistry::new();
//! health.register_breaker("payments", payments.handle()).critical();
//!
//! assert_eq!(health.snapshot().status, Status::Up);
//! payments.handle().force_open();
//! assert_eq!(health.snapshot().status, Status::Down);
//!
//! let res = health
//!     .readiness_service()
//!     .oneshot(Request::new(()))
//!     .await
//!     .unwrap();
//! assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
//! # }
//! ```

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Ready};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use tower_service::Service;

/// The health of a component, or of the whole service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Status {
    /// Working.
    #[serde(rename = "UP")]
    Up,
    /// The service works, but a non-critical dependency is down.
    #[serde(rename = "DEGRADED")]
    Degraded,
    /// Not known yet (a breaker probing its dependency).
    #[serde(rename = "UNKNOWN")]
    Unknown,
    /// Not working.
    #[serde(rename = "DOWN")]
    Down,
}

impl Status {
    /// The upper-case name used in the JSON snapshot, e.g. `"UP"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Up => "UP",
            Status::Degraded => "DEGRADED",
            Status::Unknown => "UNKNOWN",
            Status::Down => "DOWN",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One component of a [`HealthSnapshot`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ComponentHealth {
    /// The component's status.
    pub status: Status,
    /// Whether the service is down while this component is.
    pub critical: bool,
    /// What kind of layer reported it: `"circuit_breaker"` or `"bulkhead"`.
    pub kind: &'static str,
    /// Details of the layer's state (breaker state and window, bulkhead
    /// occupancy), as numbers and short strings.
    pub details: BTreeMap<&'static str, serde_json::Value>,
}

/// A point-in-time view of every registered component.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HealthSnapshot {
    /// `DOWN` if a critical component is down, `DEGRADED` if a non-critical
    /// one is, `UP` otherwise.
    pub status: Status,
    /// Each component by its registered name.
    pub components: BTreeMap<String, ComponentHealth>,
}

impl HealthSnapshot {
    /// The snapshot as a JSON document.
    pub fn to_json(&self) -> Bytes {
        // Serialising plain maps of strings and numbers cannot fail; an
        // empty object is still a valid answer if it ever did.
        Bytes::from(serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec()))
    }
}

#[derive(Clone)]
enum Source {
    #[cfg(feature = "circuit-breaker")]
    Breaker(crate::circuit_breaker::Handle),
    #[cfg(feature = "bulkhead")]
    Bulkhead(crate::bulkhead::Handle),
    Custom(Arc<dyn Fn() -> Status + Send + Sync>),
}

impl Source {
    fn report(&self, critical: bool) -> ComponentHealth {
        let mut details = BTreeMap::new();
        let (status, kind) = match self {
            #[cfg(feature = "circuit-breaker")]
            Source::Breaker(handle) => {
                use crate::circuit_breaker::State;
                let m = handle.metrics();
                details.insert("state", m.state.as_str().into());
                details.insert("calls", m.calls.into());
                details.insert("failures", m.failures.into());
                details.insert("slow_calls", m.slow_calls.into());
                if let Some(rate) = m.failure_rate {
                    details.insert("failure_rate", rate.into());
                }
                details.insert("rejected", m.rejected.into());
                if let Some(left) = m.open_remaining {
                    details.insert("open_remaining_seconds", left.as_secs_f64().into());
                }
                let status = match m.state {
                    State::Open | State::ForcedOpen => Status::Down,
                    State::HalfOpen => Status::Unknown,
                    _ => Status::Up,
                };
                (status, "circuit_breaker")
            }
            #[cfg(feature = "bulkhead")]
            Source::Bulkhead(handle) => {
                details.insert("in_flight", handle.in_flight().into());
                details.insert("queued", handle.queued().into());
                details.insert("limit", handle.limit().into());
                details.insert("rejected", handle.rejected().into());
                (Status::Up, "bulkhead")
            }
            Source::Custom(check) => (check(), "custom"),
        };
        ComponentHealth {
            status,
            critical,
            kind,
            details,
        }
    }
}

struct Component {
    name: String,
    critical: bool,
    source: Source,
}

/// Named breakers and bulkheads, for health checks and readiness probes.
///
/// Cloning shares the registry. Registering a name again replaces the
/// earlier component.
#[derive(Clone, Default)]
pub struct HealthRegistry {
    components: Arc<RwLock<Vec<Component>>>,
}

impl fmt::Debug for HealthRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.read(|c| c.iter().map(|c| c.name.clone()).collect());
        f.debug_struct("HealthRegistry")
            .field("components", &names)
            .finish()
    }
}

/// Returned by the `register_*` methods to mark the component critical.
#[derive(Debug)]
pub struct Registration<'a> {
    registry: &'a HealthRegistry,
    name: String,
}

impl Registration<'_> {
    /// Marks the component critical: while it is `DOWN`, so is the service,
    /// and the readiness endpoint answers `503`.
    pub fn critical(self) {
        let name = self.name;
        self.registry.write(|components| {
            if let Some(c) = components.iter_mut().find(|c| c.name == name) {
                c.critical = true;
            }
        });
    }
}

impl HealthRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn read<T>(&self, f: impl FnOnce(&[Component]) -> T) -> T {
        // A panic while holding the lock cannot leave the list half-written
        // (every write is one push, one replace or one flag), so a poisoned
        // lock is still safe to read.
        let guard = self
            .components
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        f(&guard)
    }

    fn write<T>(&self, f: impl FnOnce(&mut Vec<Component>) -> T) -> T {
        let mut guard = self
            .components
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }

    fn register(&self, name: impl Into<String>, source: Source) -> Registration<'_> {
        let name = name.into();
        self.write(|components| {
            let component = Component {
                name: name.clone(),
                critical: false,
                source,
            };
            if let Some(existing) = components.iter_mut().find(|c| c.name == name) {
                *existing = component;
            } else {
                components.push(component);
            }
        });
        Registration {
            registry: self,
            name,
        }
    }

    /// Registers a circuit breaker (from `CircuitBreakerLayer::handle`).
    #[cfg(feature = "circuit-breaker")]
    #[cfg_attr(docsrs, doc(cfg(feature = "circuit-breaker")))]
    pub fn register_breaker(
        &self,
        name: impl Into<String>,
        handle: crate::circuit_breaker::Handle,
    ) -> Registration<'_> {
        self.register(name, Source::Breaker(handle))
    }

    /// Registers a bulkhead (from `BulkheadLayer::handle`).
    #[cfg(feature = "bulkhead")]
    #[cfg_attr(docsrs, doc(cfg(feature = "bulkhead")))]
    pub fn register_bulkhead(
        &self,
        name: impl Into<String>,
        handle: crate::bulkhead::Handle,
    ) -> Registration<'_> {
        self.register(name, Source::Bulkhead(handle))
    }

    /// Registers a check of your own; it is called on every snapshot, so it
    /// must be quick and must not block.
    pub fn register_check<F>(&self, name: impl Into<String>, check: F) -> Registration<'_>
    where
        F: Fn() -> Status + Send + Sync + 'static,
    {
        self.register(name, Source::Custom(Arc::new(check)))
    }

    /// Removes a component; `true` if it was registered.
    pub fn unregister(&self, name: &str) -> bool {
        self.write(|components| {
            let before = components.len();
            components.retain(|c| c.name != name);
            components.len() != before
        })
    }

    /// The state of every component now.
    pub fn snapshot(&self) -> HealthSnapshot {
        // Clone the sources out so that reading handles (which may take
        // their own locks) happens outside the registry's lock.
        let sources: Vec<(String, bool, Source)> = self.read(|components| {
            components
                .iter()
                .map(|c| (c.name.clone(), c.critical, c.source.clone()))
                .collect()
        });
        let mut status = Status::Up;
        let mut components = BTreeMap::new();
        for (name, critical, source) in sources {
            let health = source.report(critical);
            if health.status == Status::Down {
                if critical {
                    status = Status::Down;
                } else if status == Status::Up {
                    status = Status::Degraded;
                }
            }
            components.insert(name, health);
        }
        HealthSnapshot { status, components }
    }

    /// Sets the `metrics` gauges of every registered breaker and bulkhead
    /// from its handle: `seawall_circuit_breaker_state{name,state}` (1 for
    /// the current state, 0 for the others) and
    /// `seawall_in_flight` / `seawall_queued` / `seawall_limit`
    /// `{pattern="bulkhead",name}` — the same series
    /// [`MetricsListener`](crate::core::event::MetricsListener) sets from
    /// events. Events only move a gauge when something happens (a refusal,
    /// a transition); call this before each scrape, or on an interval, so
    /// the gauges are current and exist from the start.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn export_metrics(&self) {
        let sources: Vec<(String, Source)> = self.read(|components| {
            components
                .iter()
                .map(|c| (c.name.clone(), c.source.clone()))
                .collect()
        });
        for (registered, source) in sources {
            match source {
                #[cfg(feature = "circuit-breaker")]
                Source::Breaker(handle) => {
                    let current = handle.state();
                    let name = handle.name().to_owned();
                    for state in crate::circuit_breaker::State::ALL {
                        let value = if state == current { 1.0 } else { 0.0 };
                        metrics::gauge!(
                            "seawall_circuit_breaker_state",
                            "name" => name.clone(),
                            "state" => state.as_str(),
                        )
                        .set(value);
                    }
                }
                #[cfg(feature = "bulkhead")]
                Source::Bulkhead(handle) => {
                    let name = handle.name().to_owned();
                    let gauges = [
                        ("seawall_in_flight", handle.in_flight()),
                        ("seawall_queued", handle.queued()),
                        ("seawall_limit", handle.limit()),
                    ];
                    for (metric, value) in gauges {
                        metrics::gauge!(metric, "pattern" => "bulkhead", "name" => name.clone())
                            .set(value as f64);
                    }
                }
                Source::Custom(check) => {
                    let up = if check() == Status::Down { 0.0 } else { 1.0 };
                    metrics::gauge!("seawall_health_up", "name" => registered).set(up);
                }
            }
        }
    }

    /// A service answering every request with `200` and the JSON snapshot.
    pub fn health_service(&self) -> HealthService {
        HealthService {
            registry: self.clone(),
            readiness: false,
        }
    }

    /// A service answering with the JSON snapshot: `200` unless the overall
    /// status is `DOWN` (a critical component is down), then `503`.
    pub fn readiness_service(&self) -> HealthService {
        HealthService {
            registry: self.clone(),
            readiness: true,
        }
    }
}

/// The endpoint from [`HealthRegistry::health_service`] or
/// [`HealthRegistry::readiness_service`].
#[derive(Clone, Debug)]
pub struct HealthService {
    registry: HealthRegistry,
    readiness: bool,
}

impl<B> Service<Request<B>> for HealthService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        let snapshot = self.registry.snapshot();
        let status = if self.readiness && snapshot.status == Status::Down {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        let mut res = Response::new(Full::new(snapshot.to_json()));
        *res.status_mut() = status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_checks_drive_the_overall_status() {
        let registry = HealthRegistry::new();
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = down.clone();
        registry.register_check("cache", move || {
            if flag.load(std::sync::atomic::Ordering::Relaxed) {
                Status::Down
            } else {
                Status::Up
            }
        });
        assert_eq!(registry.snapshot().status, Status::Up);
        down.store(true, std::sync::atomic::Ordering::Relaxed);
        let snap = registry.snapshot();
        assert_eq!(snap.status, Status::Degraded);
        assert_eq!(snap.components["cache"].status, Status::Down);
        assert!(!snap.components["cache"].critical);

        registry.register_check("db", || Status::Down).critical();
        assert_eq!(registry.snapshot().status, Status::Down);
        assert!(registry.unregister("db"));
        assert!(!registry.unregister("db"));
        assert_eq!(registry.snapshot().status, Status::Degraded);
    }

    #[test]
    fn registering_a_name_again_replaces_it() {
        let registry = HealthRegistry::new();
        registry.register_check("x", || Status::Down).critical();
        registry.register_check("x", || Status::Up);
        let snap = registry.snapshot();
        assert_eq!(snap.components.len(), 1);
        assert_eq!(snap.status, Status::Up);
        assert!(!snap.components["x"].critical);
    }

    #[cfg(all(feature = "metrics", feature = "circuit-breaker", feature = "bulkhead"))]
    #[test]
    fn export_metrics_sets_gauges_from_the_handles() {
        use crate::bulkhead::BulkheadLayer;
        use crate::circuit_breaker::CircuitBreakerLayer;
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};

        let breaker = CircuitBreakerLayer::builder()
            .name("payments")
            .build()
            .unwrap();
        let bulkhead = BulkheadLayer::builder()
            .name("db")
            .max_concurrent(7)
            .build()
            .unwrap();
        let registry = HealthRegistry::new();
        registry.register_breaker("payments", breaker.handle());
        registry.register_bulkhead("db", bulkhead.handle());
        breaker.handle().force_open();

        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || registry.export_metrics());
        let snapshot = snapshotter.snapshot().into_vec();
        let gauge = |name: &str, label: (&str, &str)| {
            snapshot
                .iter()
                .find(|(k, ..)| {
                    k.key().name() == name
                        && k.key()
                            .labels()
                            .any(|l| l.key() == label.0 && l.value() == label.1)
                })
                .map(|(_, _, _, v)| v)
        };
        assert_eq!(
            gauge("seawall_circuit_breaker_state", ("state", "forced_open")),
            Some(&DebugValue::Gauge(1.0.into()))
        );
        assert_eq!(
            gauge("seawall_circuit_breaker_state", ("state", "closed")),
            Some(&DebugValue::Gauge(0.0.into()))
        );
        assert_eq!(
            gauge("seawall_limit", ("name", "db")),
            Some(&DebugValue::Gauge(7.0.into()))
        );
        assert_eq!(
            gauge("seawall_in_flight", ("name", "db")),
            Some(&DebugValue::Gauge(0.0.into()))
        );
    }

    #[cfg(feature = "circuit-breaker")]
    #[tokio::test]
    async fn readiness_follows_a_critical_breaker_and_json_names_the_state() {
        use crate::circuit_breaker::CircuitBreakerLayer;
        use http_body_util::BodyExt;
        use tower::ServiceExt;

        let breaker = CircuitBreakerLayer::builder()
            .name("payments")
            .build()
            .unwrap();
        let optional = CircuitBreakerLayer::builder()
            .name("recommendations")
            .build()
            .unwrap();
        let registry = HealthRegistry::new();
        registry
            .register_breaker("payments", breaker.handle())
            .critical();
        registry.register_breaker("recommendations", optional.handle());

        optional.handle().force_open();
        let res = registry
            .readiness_service()
            .oneshot(Request::new(()))
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "a non-critical outage keeps the replica ready"
        );

        breaker.handle().force_open();
        let res = registry
            .readiness_service()
            .oneshot(Request::new(()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["status"], "DOWN");
        assert_eq!(doc["components"]["payments"]["status"], "DOWN");
        assert_eq!(
            doc["components"]["payments"]["details"]["state"],
            "forced_open"
        );
        assert_eq!(doc["components"]["recommendations"]["critical"], false);

        let res = registry
            .health_service()
            .oneshot(Request::new(()))
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "the health report itself always answers"
        );

        breaker.handle().reset();
        let res = registry
            .readiness_service()
            .oneshot(Request::new(()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
}
