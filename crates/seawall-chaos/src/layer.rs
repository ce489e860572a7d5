//! The layer and its builder.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use seawall_core::{ConfigError, NoopListener};
use tokio::time::Instant;
use tower_layer::Layer;

use crate::fault::Fault;
use crate::handle::{ChaosHandle, Core, FaultState, HEADERS_ON, MASTER_ON, MAX_FAULTS};
use crate::headers::HeaderFaults;
use crate::protocol::{BodyFn, DefaultBody, Http, Plain, Protocol};
use crate::service::Chaos;

/// The layer name in configuration errors.
pub(crate) const LAYER: &str = "chaos";

/// Injects faults into the calls of the service it wraps: added latency,
/// errors, HTTP and gRPC answers, hangs, at a rate and on a schedule,
/// switchable at run time through a [`ChaosHandle`].
///
/// Clones of a layer share its faults, switches and counters.
///
/// - `P` is the [`Protocol`]: [`Plain`] for any service, [`Http`] for
///   `http` services (answer faults, header-triggered faults).
/// - `L` receives a [`ChaosEvent`](crate::ChaosEvent) per injected fault
///   ([`NoopListener`] by default).
///
/// ```
/// use std::time::Duration;
/// use seawall_chaos::{ChaosLayer, Fault, InjectedFault};
/// use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let chaos = ChaosLayer::builder().seed(1).fault(Fault::error()).build().unwrap();
/// let svc = ServiceBuilder::new()
///     .timeout(Duration::from_secs(1))
///     .layer(chaos)
///     .service(service_fn(|n: u32| async move { Ok::<_, BoxError>(n) }));
/// let err = svc.oneshot(1).await.unwrap_err();
/// assert!(err.is::<InjectedFault>());
/// # }
/// ```
///
/// See the [crate documentation](crate) for more.
pub struct ChaosLayer<P = Plain, L = NoopListener> {
    core: Arc<Core>,
    protocol: P,
    listener: L,
}

impl<P: Clone, L: Clone> Clone for ChaosLayer<P, L> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
            protocol: self.protocol.clone(),
            listener: self.listener.clone(),
        }
    }
}

impl<P: fmt::Debug, L> fmt::Debug for ChaosLayer<P, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosLayer")
            .field("handle", &self.handle())
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl ChaosLayer {
    /// A builder; see [`ChaosBuilder`].
    pub fn builder() -> ChaosBuilder {
        ChaosBuilder {
            name: Arc::from("chaos"),
            seed: None,
            start: None,
            faults: Vec::new(),
            headers: None,
            enabled: true,
            protocol: Plain,
            listener: NoopListener,
        }
    }
}

impl<P, L> ChaosLayer<P, L> {
    /// A handle on the layer's switches and counters, shared by every
    /// clone of the layer and every service it makes.
    pub fn handle(&self) -> ChaosHandle {
        ChaosHandle {
            core: self.core.clone(),
        }
    }
}

impl<S, P: Clone, L: Clone> Layer<S> for ChaosLayer<P, L> {
    type Service = Chaos<S, P, L>;

    fn layer(&self, inner: S) -> Self::Service {
        Chaos::new(
            inner,
            self.core.clone(),
            self.protocol.clone(),
            self.listener.clone(),
        )
    }
}

/// Builds a [`ChaosLayer`]; setters take the builder by value, and
/// [`build`](Self::build) checks the whole configuration.
#[must_use]
pub struct ChaosBuilder<P = Plain, L = NoopListener> {
    name: Arc<str>,
    seed: Option<u64>,
    start: Option<Instant>,
    faults: Vec<Fault>,
    headers: Option<HeaderFaults>,
    enabled: bool,
    protocol: P,
    listener: L,
}

impl<P: fmt::Debug, L> fmt::Debug for ChaosBuilder<P, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosBuilder")
            .field("name", &self.name)
            .field("seed", &self.seed)
            .field("faults", &self.faults)
            .field("headers", &self.headers)
            .field("enabled", &self.enabled)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl<P, L> ChaosBuilder<P, L> {
    /// The layer's name in events and errors (`"chaos"` unless set).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Seeds the RNG that decides which calls get a fault, for
    /// reproducible runs (a random seed unless set). See the crate
    /// documentation for what is reproducible.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Measures schedules from `start` instead of the instant of
    /// [`build`](Self::build).
    pub fn start_at(mut self, start: Instant) -> Self {
        self.start = Some(start);
        self
    }

    /// Adds a fault. Faults are evaluated in the order they are added; at
    /// most 62.
    pub fn fault(mut self, fault: Fault) -> Self {
        self.faults.push(fault);
        self
    }

    /// Adds several faults.
    pub fn faults(mut self, faults: impl IntoIterator<Item = Fault>) -> Self {
        self.faults.extend(faults);
        self
    }

    /// The layer starts with its master switch off, passing every call
    /// through until [`ChaosHandle::enable`] is called.
    pub fn disabled(mut self) -> Self {
        self.enabled = false;
        self
    }

    /// Lets requests trigger their own faults through headers; needs an
    /// HTTP protocol. Off unless called. See [`HeaderFaults`].
    pub fn header_faults(mut self, headers: HeaderFaults) -> Self {
        self.headers = Some(headers);
        self
    }

    /// For `http` services answering `http::Response<B>` with
    /// `B: Default`: allows [`Fault::http`] and [`Fault::grpc`] answers and
    /// [header-triggered faults](Self::header_faults).
    pub fn http(self) -> ChaosBuilder<Http<DefaultBody>, L> {
        self.protocol(Http::new(DefaultBody))
    }

    /// As [`http`](Self::http), for bodies without `Default`: answers get
    /// the body `make_body` returns.
    pub fn http_body<F, B>(self, make_body: F) -> ChaosBuilder<Http<BodyFn<F>>, L>
    where
        F: Fn() -> B + Clone + Send + Sync + 'static,
    {
        self.protocol(Http::new(BodyFn(make_body)))
    }

    /// Uses a protocol of your own for other request and response types.
    pub fn protocol<P2>(self, protocol: P2) -> ChaosBuilder<P2, L> {
        ChaosBuilder {
            name: self.name,
            seed: self.seed,
            start: self.start,
            faults: self.faults,
            headers: self.headers,
            enabled: self.enabled,
            protocol,
            listener: self.listener,
        }
    }

    /// Sends a [`ChaosEvent`](crate::ChaosEvent) to `listener` for every
    /// injected fault.
    pub fn listener<L2>(self, listener: L2) -> ChaosBuilder<P, L2> {
        ChaosBuilder {
            name: self.name,
            seed: self.seed,
            start: self.start,
            faults: self.faults,
            headers: self.headers,
            enabled: self.enabled,
            protocol: self.protocol,
            listener,
        }
    }
}

impl<P: Protocol, L> ChaosBuilder<P, L> {
    /// Checks the configuration and builds the layer.
    ///
    /// Refuses with a [`ConfigError`]: a rate outside `[0, 1]` (or NaN), a
    /// latency or cap over an hour or with invalid parameters, an empty or
    /// reversed schedule window, a flapping schedule with `on` zero or
    /// longer than `every`, an HTTP or gRPC fault or header-triggered
    /// faults on a protocol that cannot serve them, an HTTP status outside
    /// 4xx and 5xx, a gRPC `OK`, duplicate fault names, more than 62
    /// faults.
    pub fn build(self) -> Result<ChaosLayer<P, L>, ConfigError> {
        if self.faults.len() > MAX_FAULTS {
            return Err(ConfigError::new(
                LAYER,
                "faults",
                format!("at most {MAX_FAULTS}, got {}", self.faults.len()),
            ));
        }
        let answers = self.protocol.answers();
        let mut switches = if self.enabled { MASTER_ON } else { 0 };
        let mut faults: Vec<FaultState> = Vec::with_capacity(self.faults.len());
        for (i, fault) in self.faults.into_iter().enumerate() {
            let (name, armed, schedule, rate, enabled) = fault.arm(answers)?;
            if faults.iter().any(|f| f.name == name) {
                return Err(ConfigError::new(
                    LAYER,
                    "fault",
                    format!("duplicate fault name `{name}`: name faults with `.named(..)`"),
                ));
            }
            if enabled {
                switches |= 1 << i;
            }
            faults.push(FaultState {
                name,
                armed,
                schedule,
                rate: AtomicU64::new(rate.to_bits()),
                injected: AtomicU64::new(0),
            });
        }
        if let Some(headers) = &self.headers {
            if !self.protocol.reads_headers() {
                return Err(ConfigError::new(
                    LAYER,
                    "header_faults",
                    "need a protocol that reads headers: build the layer with `.http()`",
                ));
            }
            headers.validate()?;
            switches |= HEADERS_ON;
        }
        let seed = self
            .seed
            .unwrap_or_else(|| RandomState::new().build_hasher().finish());
        let start = self.start.unwrap_or_else(Instant::now);
        Ok(ChaosLayer {
            core: Arc::new(Core::new(
                self.name,
                faults.into_boxed_slice(),
                self.headers,
                switches,
                start,
                seed,
            )),
            protocol: self.protocol,
            listener: self.listener,
        })
    }
}
