//! The simulated dependency: a server with a fixed number of workers and a
//! FIFO queue in front of them, a fault injector, and a lossy link.
//!
//! ```text
//! client stack ─▶ pool ─▶ link (attempt counted, responses lost)
//!                           ─▶ ChaosLayer (errors, hangs, added latency)
//!                             ─▶ [IdempotencyLayer] ─▶ handler (queue, workers, side effect)
//! ```
//!
//! The handler runs detached from the caller: a caller that times out
//! abandons the call, but the server still spends a worker on it, as a real
//! server does. That is what makes retries of timed-out calls expensive.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use rand::rngs::SmallRng;
use rand::Rng;
use seawall_chaos::{ChaosLayer, Fault, Latency as ChaosLatency, Schedule};
use seawall_core::BoxError;
use seawall_idempotency::{IdempotencyLayer, MemoryStore, RequestBody};
use tokio::sync::Semaphore;
use tokio::time::{sleep, sleep_until, Instant};
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};

use crate::dist;
use crate::recorder::Recorder;
use crate::scenario::{Fault as FaultSpec, Latency, Upstream as UpstreamSpec};

/// One request as the simulation sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// Logical request number (retries keep it).
    pub id: u64,
    /// The upstream it goes to.
    pub route: usize,
    /// A `POST` that creates something.
    pub post: bool,
    /// The client attached an `Idempotency-Key` (derived from `id`).
    pub idempotency_key: bool,
}

/// An answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// Served by a fallback, not by the dependency.
    pub degraded: bool,
}

/// A service in the simulation.
pub type SimService = BoxCloneService<Call, Reply, BoxError>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// An error of the simulated dependency or link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamError(&'static str);

impl UpstreamError {
    /// The dependency answered `503`.
    pub const UNAVAILABLE: Self = Self("upstream answered 503");
    /// The response was lost on the way back.
    pub const RESET: Self = Self("connection reset by peer");
    /// The dependency refused the request (e.g. `409`, `422`).
    pub const REFUSED: Self = Self("upstream refused the request");
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for UpstreamError {}

/// Puts the fault schedule of an upstream in front of its server. The lab
/// uses seawall's [`ChaosLayer`] ([`ChaosInjector`]); the trait keeps the
/// simulation independent of how faults are injected.
pub trait Injector: Send + Sync {
    /// Wraps the server of upstream `spec`.
    fn wrap(
        &self,
        spec: &UpstreamSpec,
        seed: u64,
        route: usize,
        server: SimService,
    ) -> Result<SimService, BoxError>;
}

/// Injects the `[[upstream.fault]]` windows with seawall's [`ChaosLayer`]:
/// per window, an error fault, a hang fault and a latency spike, each
/// scheduled for the window and drawn from the run's seed.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChaosInjector;

impl Injector for ChaosInjector {
    fn wrap(
        &self,
        spec: &UpstreamSpec,
        seed: u64,
        route: usize,
        server: SimService,
    ) -> Result<SimService, BoxError> {
        let mut builder = ChaosLayer::builder()
            .name(spec.name.clone())
            .seed(chaos_seed(seed, route))
            .start_at(Instant::now());
        for fault in chaos_faults(spec, Fault::error) {
            builder = builder.fault(fault);
        }
        let layer = builder.build()?;
        Ok(BoxCloneService::new(layer.layer(server)))
    }
}

/// The seed of the chaos layer of upstream `route`.
pub(crate) fn chaos_seed(seed: u64, route: usize) -> u64 {
    seed ^ (100 + route as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The chaos faults of upstream `spec`'s windows: per window, a latency
/// spike, an error (made by `error`) and a hang.
pub(crate) fn chaos_faults(spec: &UpstreamSpec, error: impl Fn() -> Fault) -> Vec<Fault> {
    let mut faults = Vec::new();
    for (j, f) in spec.fault.iter().enumerate() {
        let window = Schedule::between(f.start.0, f.end.0);
        if f.spike_rate > 0.0 && !f.spike.0.is_zero() {
            faults.push(
                Fault::latency(ChaosLatency::fixed(f.spike.0))
                    .rate(f.spike_rate)
                    .schedule(window.clone())
                    .named(format!("spike-{j}")),
            );
        }
        if f.error_rate > 0.0 {
            faults.push(
                error()
                    .rate(f.error_rate)
                    .schedule(window.clone())
                    .named(format!("error-{j}")),
            );
        }
        if f.hang_rate > 0.0 {
            // Faults draw one after the other and the first terminal one
            // wins: conditional on no error, so that `hang_rate` of all
            // calls hang.
            let rate = (f.hang_rate / (1.0 - f.error_rate).max(f64::EPSILON)).min(1.0);
            faults.push(
                Fault::hang()
                    .rate(rate)
                    .schedule(window)
                    .named(format!("hang-{j}")),
            );
        }
    }
    faults
}

/// Builds the upstreams of a scenario for one run. Must be called inside
/// the run's runtime (it schedules the capacity changes).
#[derive(Debug)]
pub struct UpstreamSet {
    services: Vec<SimService>,
}

impl UpstreamSet {
    /// One service per upstream. With `idempotent` (`Some(keys)`: the most
    /// keys the run can create), `POST`s carrying a key reach the handler
    /// through seawall's `IdempotencyLayer`, over a store sized by
    /// [`idempotency_store`].
    pub fn build(
        specs: &[UpstreamSpec],
        seed: u64,
        recorder: &Recorder,
        injector: &dyn Injector,
        idempotent: Option<usize>,
    ) -> Result<Self, BoxError> {
        let services = specs
            .iter()
            .enumerate()
            .map(|(route, spec)| {
                let server = server(spec, seed, route, recorder, idempotent)?;
                let faulty = injector.wrap(spec, seed, route, server)?;
                Ok(link(spec, seed, route, recorder, faulty))
            })
            .collect::<Result<_, BoxError>>()?;
        Ok(Self { services })
    }

    /// The service of upstream `route`.
    pub fn route(&self, route: usize) -> SimService {
        self.services[route].clone()
    }
}

/// The link: counts the attempt (in flight until answered or abandoned)
/// and loses responses in the fault windows.
pub(crate) fn link(
    spec: &UpstreamSpec,
    seed: u64,
    route: usize,
    recorder: &Recorder,
    inner: SimService,
) -> SimService {
    let faults: Arc<[FaultSpec]> = spec.fault.clone().into();
    let rng = Arc::new(Mutex::new(dist::rng(seed, 200 + route as u64)));
    let recorder = recorder.clone();
    let start = Instant::now();
    BoxCloneService::new(tower::service_fn(move |call: Call| {
        let guard = recorder.attempt(route);
        let at = Instant::now() - start;
        let lose = faults
            .iter()
            .find(|f| f.start.0 <= at && at < f.end.0)
            .is_some_and(|f| {
                let mut rng = rng.lock().unwrap_or_else(PoisonError::into_inner);
                rng.random::<f64>() < f.lose_response_rate
            });
        let inner = inner.clone();
        async move {
            let result = inner.oneshot(call).await;
            drop(guard);
            match result {
                Ok(_) if lose => Err(UpstreamError::RESET.into()),
                other => other,
            }
        }
    }))
}

/// The workers of a simulated server and the FIFO queue in front of them.
#[derive(Debug)]
pub(crate) struct Workers {
    slots: Semaphore,
    latency: Latency,
    rng: Mutex<SmallRng>,
    recorder: Recorder,
}

impl Workers {
    /// The workers of upstream `spec`; schedules the capacity windows (so it
    /// must be called inside the run's runtime, at its start).
    pub(crate) fn start(
        spec: &UpstreamSpec,
        seed: u64,
        route: usize,
        recorder: &Recorder,
    ) -> Arc<Self> {
        let workers = Arc::new(Workers {
            slots: Semaphore::new(spec.capacity),
            latency: spec.latency,
            rng: Mutex::new(dist::rng(seed, 300 + route as u64)),
            recorder: recorder.clone(),
        });
        // A struggling dependency: while a window lowers the capacity, a
        // task holds the missing workers.
        let start = Instant::now();
        for fault in &spec.fault {
            if let Some(capacity) = fault.capacity {
                let missing = (spec.capacity - capacity) as u32;
                let workers = workers.clone();
                let (from, to) = (start + fault.start.0, start + fault.end.0);
                tokio::spawn(async move {
                    sleep_until(from).await;
                    if let Ok(held) = workers.slots.acquire_many(missing).await {
                        sleep_until(to).await;
                        drop(held);
                    }
                });
            }
        }
        workers
    }

    /// Waits for a worker, works, and records the side effect of a `POST`.
    pub(crate) async fn work(&self, call: Call) -> Result<(), BoxError> {
        let _slot = self.slots.acquire().await?;
        let service_time = {
            let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
            self.latency.sample(&mut rng)
        };
        sleep(service_time).await;
        if call.post {
            self.recorder.execute(call.id);
        }
        Ok(())
    }

    /// Works detached from the caller: the server finishes the work even if
    /// the caller has gone, as a real server does.
    pub(crate) fn work_detached(
        self: &Arc<Self>,
        call: Call,
    ) -> impl Future<Output = Result<(), BoxError>> + Send + 'static {
        let workers = self.clone();
        let task = tokio::spawn(async move { workers.work(call).await });
        async move { task.await? }
    }
}

fn server(
    spec: &UpstreamSpec,
    seed: u64,
    route: usize,
    recorder: &Recorder,
    idempotent: Option<usize>,
) -> Result<SimService, BoxError> {
    let workers = Workers::start(spec, seed, route, recorder);
    let detached = {
        let workers = workers.clone();
        move |call: Call| -> BoxFuture<Result<Reply, BoxError>> {
            let work = workers.work_detached(call);
            Box::pin(async move {
                work.await?;
                Ok(Reply { degraded: false })
            })
        }
    };
    let Some(keys) = idempotent else {
        return Ok(BoxCloneService::new(tower::service_fn(detached)));
    };
    let handler = {
        let workers = workers.clone();
        tower::service_fn(move |req: Request<RequestBody<Full<Bytes>>>| {
            let workers = workers.clone();
            let call = req.extensions().get::<Call>().copied();
            async move {
                // The handler's error type is concrete: a closure error
                // type of `BoxError` would not be provably `Send` here.
                let worked = match call {
                    Some(call) => workers.work(call).await.is_ok(),
                    None => false,
                };
                let status = if worked {
                    StatusCode::CREATED
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                let mut res = Response::new(Full::new(Bytes::new()));
                *res.status_mut() = status;
                Ok::<_, std::convert::Infallible>(res)
            }
        })
    };
    let layer = IdempotencyLayer::builder()
        .name("orders")
        .store(idempotency_store(keys)?)
        .build()?;
    let idempotency = layer.layer(handler);
    Ok(BoxCloneService::new(tower::service_fn(
        move |call: Call| {
            if !(call.post && call.idempotency_key) {
                return detached(call);
            }
            let svc = idempotency.clone();
            Box::pin(async move {
                let mut req = Request::post("/orders")
                    .header("idempotency-key", format!("\"order-{}\"", call.id))
                    .body(Full::new(Bytes::new()))
                    .map_err(|e| -> BoxError { Box::new(e) })?;
                req.extensions_mut().insert(call);
                let res = svc.oneshot(req).await?;
                if res.status().is_success() {
                    Ok(Reply { degraded: false })
                } else if res.status().is_server_error() {
                    Err(UpstreamError::UNAVAILABLE.into())
                } else {
                    Err(UpstreamError::REFUSED.into())
                }
            })
        },
    )))
}

/// The idempotency store of seawall's runs, with room for `keys` live
/// records in *each* of its shards.
///
/// A default [`MemoryStore`] holds 10,000 live records (625 per shard) and
/// keeps each for the default retention of 24 h, so a run creating more
/// keys than that would see `503 idempotency_store_full` refusals: the
/// store's bound, not the layer's behaviour. The lab keeps the default
/// retention (every record outlives the run, so no late retry can run a
/// handler twice) and raises the bound instead: `16 × keys` records (and
/// 512 bytes each), so that even if every key hashed to one shard it would
/// fit. That is a bound, not an allocation.
pub fn idempotency_store(keys: usize) -> Result<MemoryStore, BoxError> {
    let records = keys.saturating_mul(16).max(MemoryStore::DEFAULT_CAPACITY);
    let bytes = records
        .saturating_mul(512)
        .max(MemoryStore::DEFAULT_MAX_BYTES);
    Ok(MemoryStore::with_limits(records, bytes)?)
}

/// Wraps a route's service in the client's connection pool: a call waits
/// for one of `pool` connections shared by every route of the client.
pub fn pooled(pool: Option<Arc<Semaphore>>, inner: SimService) -> SimService {
    let Some(pool) = pool else { return inner };
    BoxCloneService::new(tower::service_fn(move |call: Call| {
        let pool = pool.clone();
        let inner = inner.clone();
        async move {
            let _connection = pool.acquire_owned().await?;
            inner.oneshot(call).await
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_has_room_for_every_key_in_each_shard() {
        let small = idempotency_store(100).unwrap();
        assert_eq!(small.capacity(), MemoryStore::DEFAULT_CAPACITY);
        assert_eq!(small.max_bytes(), MemoryStore::DEFAULT_MAX_BYTES);
        let big = idempotency_store(15_000).unwrap();
        assert_eq!(big.capacity(), 16 * 15_000);
        assert!(big.max_bytes() >= 16 * 15_000 * 512);
    }
}
