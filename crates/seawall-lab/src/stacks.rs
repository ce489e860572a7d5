//! The competing client stacks, built with the same settings
//! ([`ClientSettings`]) around the same simulated dependency.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use seawall_bulkhead::BulkheadLayer;
use seawall_circuit_breaker::{
    CircuitBreakerEvent, CircuitBreakerLayer, EventKind, FleetHandle, FleetSync, Handle, State,
};
use seawall_core::event::FnListener;
use seawall_core::BoxError;
use seawall_fallback::FallbackLayer;
use seawall_retry::{Backoff, Jitter, JitterRetryLayer, RetryBudget};
use seawall_timeout::{AdaptiveTimeoutLayer, CloneRequests, HedgeLayer};
use serde::Serialize;
use tokio::time::sleep;
use tower::limit::ConcurrencyLimitLayer;
use tower::retry::{Policy, RetryLayer};
use tower::timeout::TimeoutLayer;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceBuilder, ServiceExt};

use crate::recorder::Recorder;
use crate::scenario::{ClientSettings, HedgeSettings};
use crate::upstream::{Call, Reply, SimService};

/// A client stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StackKind {
    /// Calls the dependency directly: no timeout, no retry, no limit.
    None,
    /// tower's built-ins: total timeout → `tower::retry` (3 attempts,
    /// exponential backoff with full jitter, no budget) → `ConcurrencyLimit`
    /// → per-attempt timeout.
    Tower,
    /// tower-resilience 0.13 as its composition guide stacks it: total
    /// timeout → its retry (3 attempts, 100 ms exponential) → its circuit
    /// breaker (50% over 100 calls, open 5 s) → its bulkhead → per-attempt
    /// timeout.
    TowerResilience,
    /// seawall: fallback → retry with budget → circuit breaker → bulkhead →
    /// per-attempt timeout.
    Seawall,
    /// seawall's stack with a `HedgeLayer` under the per-attempt timeout
    /// (run only by scenarios with `[client.hedge]`).
    SeawallHedge,
    /// seawall's stack whose breaker shares one state with the other
    /// clients' (replicas') through Redis (`FleetSync`); run only by
    /// scenarios with `[client.fleet]`, in wall time.
    SeawallFleet,
    /// The `seawall::stack::client()` preset with its own defaults, given
    /// the scenario's timeouts and open duration: total timeout → retry →
    /// breaker → attempt timeout, no bulkhead, no fallback (run only by
    /// scenarios with `[client] preset = true`).
    SeawallPreset,
}

impl StackKind {
    /// Every stack, in table order.
    pub const ALL: [StackKind; 4] = [
        StackKind::None,
        StackKind::Tower,
        StackKind::TowerResilience,
        StackKind::Seawall,
    ];

    /// The name in tables.
    pub fn name(self) -> &'static str {
        match self {
            StackKind::None => "no resilience",
            StackKind::Tower => "tower built-ins",
            StackKind::TowerResilience => "tower-resilience",
            StackKind::Seawall => "seawall",
            StackKind::SeawallHedge => "seawall + hedge",
            StackKind::SeawallPreset => "seawall preset",
            StackKind::SeawallFleet => "seawall + fleet",
        }
    }

    /// A seawall stack: its upstream's handler sits behind
    /// `IdempotencyLayer` and its breaker's state is recorded.
    pub fn is_seawall(self) -> bool {
        matches!(
            self,
            StackKind::Seawall | StackKind::SeawallHedge | StackKind::SeawallFleet
        )
    }
}

impl fmt::Display for StackKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Builds one stack instance (one client, one route) around `inner`.
/// `breaker_index` identifies the seawall breaker in the recorder.
pub fn build(
    kind: StackKind,
    settings: &ClientSettings,
    inner: SimService,
    recorder: &Recorder,
    breaker_index: usize,
    seed: u64,
) -> Result<SimService, BoxError> {
    Ok(match kind {
        StackKind::None => inner,
        StackKind::Tower => tower_stack(settings, inner, seed),
        StackKind::TowerResilience => tower_resilience_stack(settings, inner)?,
        StackKind::Seawall => seawall_stack(
            settings,
            Extras::default(),
            inner,
            recorder,
            breaker_index,
            seed,
        )?,
        StackKind::SeawallFleet => seawall_stack(
            settings,
            Extras {
                fleet: true,
                ..Extras::default()
            },
            inner,
            recorder,
            breaker_index,
            seed,
        )?,
        StackKind::SeawallPreset => BoxCloneService::new(
            seawall::stack::client()
                .name("lab")
                .total_timeout(settings.total_timeout.0)
                .attempt_timeout(settings.attempt_timeout.0)
                .open_duration(settings.breaker_open.0)
                .build()?
                .layer(inner),
        ),
        StackKind::SeawallHedge => seawall_stack(
            settings,
            Extras {
                hedge: Some(settings.hedge.unwrap_or_default()),
                ..Extras::default()
            },
            inner,
            recorder,
            breaker_index,
            seed,
        )?,
    })
}

fn tower_stack(s: &ClientSettings, inner: SimService, seed: u64) -> SimService {
    let policy = Attempts {
        left: s.max_attempts.saturating_sub(1),
        done: 0,
        base: Duration::from_millis(50),
        seed,
    };
    BoxCloneService::new(
        ServiceBuilder::new()
            .layer(TimeoutLayer::new(s.total_timeout.0))
            .layer(RetryLayer::new(policy))
            .layer(ConcurrencyLimitLayer::new(s.concurrency))
            .layer(TimeoutLayer::new(s.attempt_timeout.0))
            .service(inner),
    )
}

/// The retry policy most tower users write: a number of attempts with
/// exponential backoff and full jitter, retrying every error.
#[derive(Debug, Clone)]
struct Attempts {
    left: u32,
    done: u32,
    base: Duration,
    seed: u64,
}

impl Policy<Call, Reply, BoxError> for Attempts {
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(
        &mut self,
        req: &mut Call,
        result: &mut Result<Reply, BoxError>,
    ) -> Option<Self::Future> {
        if result.is_ok() || self.left == 0 {
            return None;
        }
        self.left -= 1;
        self.done += 1;
        // Full jitter (Brooker): uniform in [0, base * 2^n), from a hash of
        // the request and attempt so runs are reproducible.
        let cap = self.base.as_secs_f64() * f64::from(1_u32 << self.done.min(10));
        let unit = splitmix(self.seed ^ req.id.wrapping_mul(31) ^ u64::from(self.done)) as f64
            / u64::MAX as f64;
        let delay = Duration::from_secs_f64(cap * unit);
        Some(Box::pin(sleep(delay)))
    }

    fn clone_request(&mut self, req: &Call) -> Option<Call> {
        Some(*req)
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A tower-resilience error turned into a `BoxError` (its layers nest
/// their errors generically, so a stack needs this between layers).
#[derive(Debug)]
struct Refused(String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn tower_resilience_stack(s: &ClientSettings, inner: SimService) -> Result<SimService, BoxError> {
    use tower_resilience::bulkhead::{BulkheadLayer as TrBulkhead, BulkheadServiceError};
    use tower_resilience::circuitbreaker::{CircuitBreakerError, CircuitBreakerLayer as TrBreaker};
    use tower_resilience::retry::RetryLayer as TrRetry;

    let bulkhead = TrBulkhead::builder()
        .max_concurrent_calls(s.concurrency)
        .max_wait_duration(s.queue_wait.0)
        .build()
        .map_err(|e| Refused(e.to_string()))?;
    let breaker = TrBreaker::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .minimum_number_of_calls(20)
        .wait_duration_in_open(s.breaker_open.0)
        .build()
        .map_err(|e| Refused(e.to_string()))?;
    let retry = TrRetry::<Call, Reply, BoxError>::builder()
        .max_attempts(s.max_attempts as usize)
        .exponential_backoff(Duration::from_millis(100))
        .build();

    let timed = ServiceBuilder::new()
        .layer(TimeoutLayer::new(s.attempt_timeout.0))
        .service(inner);
    let bulkheaded = ServiceBuilder::new()
        .map_err(|e: BulkheadServiceError<BoxError>| -> BoxError {
            match e {
                BulkheadServiceError::Inner(e) => e,
                BulkheadServiceError::Bulkhead(b) => Box::new(Refused(b.to_string())),
            }
        })
        .layer(bulkhead)
        .service(timed);
    let broken = ServiceBuilder::new()
        .map_err(|e: CircuitBreakerError<BoxError>| -> BoxError {
            match e {
                CircuitBreakerError::Inner(e) => e,
                other @ CircuitBreakerError::OpenCircuit => Box::new(Refused(other.to_string())),
            }
        })
        .layer(breaker)
        .service(bulkheaded);
    Ok(BoxCloneService::new(
        ServiceBuilder::new()
            .layer(TimeoutLayer::new(s.total_timeout.0))
            .layer(retry)
            .service(broken),
    ))
}

/// Whether a call may be sent twice: anything but a `POST` without an
/// `Idempotency-Key`.
fn safe_to_repeat(call: &Call) -> bool {
    !call.post || call.idempotency_key
}

/// A `HedgeLayer` over `inner`: after the percentile (or fixed delay) of
/// `h`, one more attempt of a call safe to send twice, within the budget.
fn hedged(h: HedgeSettings, inner: SimService) -> Result<SimService, BoxError> {
    let builder = HedgeLayer::builder()
        .name("lab")
        .policy(CloneRequests::new().when(safe_to_repeat as fn(&Call) -> bool))
        .budget_ratio(h.budget);
    let layer = match h.delay {
        Some(d) => builder.delay(d.0).build()?,
        None => builder.percentile(h.percentile).build()?,
    };
    Ok(BoxCloneService::new(layer.layer(inner)))
}

/// What a seawall stack has beyond the base stack.
#[derive(Debug, Clone, Copy, Default)]
struct Extras {
    /// A `HedgeLayer` under the attempt timeout.
    hedge: Option<HedgeSettings>,
    /// The breaker syncs through Redis (`[client.fleet]`).
    fleet: bool,
}

/// Starts the `FleetSync` of one replica's breaker (client instance
/// `replica`), with the run's Redis URL and key prefix.
fn fleet_sync(
    s: &ClientSettings,
    breaker: Handle,
    replica: usize,
) -> Result<FleetHandle, BoxError> {
    let fleet = s
        .fleet
        .as_ref()
        .ok_or("the stack \"seawall + fleet\" needs [client.fleet]")?;
    let (url, prefix) = fleet
        .redis
        .clone()
        .ok_or("the stack \"seawall + fleet\" runs only through seawall_lab::fleet")?;
    Ok(FleetSync::builder(url, "lab")
        .prefix(prefix)
        .replica_id(format!("replica-{replica}"))
        .interval(fleet.interval.0)
        .timeout(fleet.timeout.0)
        .min_replicas(fleet.min_replicas)
        .spawn(breaker)?)
}

fn seawall_stack(
    s: &ClientSettings,
    extras: Extras,
    inner: SimService,
    recorder: &Recorder,
    breaker_index: usize,
    seed: u64,
) -> Result<SimService, BoxError> {
    let fallback = FallbackLayer::builder()
        .name("lab")
        .value(Reply { degraded: true })
        .build()?;
    let retry = JitterRetryLayer::builder()
        .name("lab")
        .max_attempts(s.max_attempts)
        .backoff(Backoff::exponential(Duration::from_millis(50)))
        .jitter(Jitter::Decorrelated)
        // A refusal hinting at a longer wait (an open breaker, a full
        // bulkhead: 1 s by default) ends retrying, and the fallback answers.
        .max_delay(Duration::from_millis(500))
        .deadline(s.total_timeout.0)
        .budget(RetryBudget::new())
        .seed(seed ^ breaker_index as u64)
        .build()?;
    let events = recorder.clone();
    let breaker = CircuitBreakerLayer::builder()
        .name("lab")
        .count_window(100)
        .minimum_calls(20)
        .failure_rate_threshold(0.5)
        .open_duration(s.breaker_open.0)
        .half_open_probes(1)
        .listener(FnListener::new(move |e: &CircuitBreakerEvent| {
            if let EventKind::StateTransition { to, .. } = *e.kind() {
                events.breaker(
                    breaker_index,
                    !matches!(to, State::Closed | State::Disabled),
                );
            }
        }))
        .build()?;
    let bulkhead = BulkheadLayer::builder()
        .name("lab")
        .max_concurrent(s.concurrency)
        .max_queue(s.concurrency)
        .max_wait(s.queue_wait.0)
        .build()?;
    // The attempt timeout: the scenario's, fixed, as every stack has it;
    // or, with `adaptive_timeout`, the p99 x 3 of recent successful calls,
    // never above the scenario's (which applies until 100 samples).
    let adaptive = if s.adaptive_timeout {
        Some(
            AdaptiveTimeoutLayer::builder()
                .name("lab")
                .initial_timeout(s.attempt_timeout.0)
                .ceiling(s.attempt_timeout.0)
                .build()?,
        )
    } else {
        None
    };
    // The hedge sits under the attempt timeout: the timeout bounds the
    // hedged pair, and the breaker, bulkhead and retry above see one call.
    let inner = match extras.hedge {
        Some(h) => hedged(h, inner)?,
        None => inner,
    };
    // Kept alive as long as the stack: dropping it stops the sync.
    let fleet = if extras.fleet {
        Some(Arc::new(fleet_sync(s, breaker.handle(), breaker_index)?))
    } else {
        None
    };
    let stack = ServiceBuilder::new()
        .layer(fallback)
        .layer(retry)
        .layer(breaker)
        .layer(bulkhead)
        .option_layer(
            adaptive
                .is_none()
                .then(|| TimeoutLayer::new(s.attempt_timeout.0)),
        )
        .option_layer(adaptive)
        .service(inner);
    Ok(BoxCloneService::new(stack.map_request(
        move |mut call: Call| {
            let _alive = &fleet;
            // seawall's client names each POST so a retry can be recognised.
            call.idempotency_key = call.post;
            call
        },
    )))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Sends `call` through a hedge (fixed 10 ms) over a dependency that
    /// takes 100 ms; returns how many times the dependency saw it.
    async fn sends(call: Call) -> u32 {
        let seen = Arc::new(AtomicU32::new(0));
        let counter = seen.clone();
        let slow: SimService = BoxCloneService::new(tower::service_fn(move |_: Call| {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                sleep(Duration::from_millis(100)).await;
                Ok::<_, BoxError>(Reply { degraded: false })
            }
        }));
        let settings = HedgeSettings {
            delay: Some(crate::scenario::Dur(Duration::from_millis(10))),
            // Budget for the first hedge: each request deposits a share.
            budget: 1.0,
            ..HedgeSettings::default()
        };
        let svc = hedged(settings, slow).unwrap();
        svc.oneshot(call).await.unwrap();
        seen.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn a_post_without_a_key_is_never_hedged() {
        let call = |post, idempotency_key| Call {
            id: 1,
            route: 0,
            post,
            idempotency_key,
        };
        assert_eq!(sends(call(false, false)).await, 2, "a GET is hedged");
        assert_eq!(sends(call(true, true)).await, 2, "a keyed POST is hedged");
        assert_eq!(sends(call(true, false)).await, 1, "a bare POST is not");
    }

    /// How long a call that hangs takes to come back (degraded, from the
    /// fallback) through seawall's stack once 200 calls of 10 ms have been
    /// answered.
    async fn hung_call_time(adaptive_timeout: bool) -> Duration {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let inner: SimService = BoxCloneService::new(tower::service_fn(move |_: Call| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 200 {
                    sleep(Duration::from_millis(10)).await;
                } else {
                    std::future::pending::<()>().await;
                }
                Ok::<_, BoxError>(Reply { degraded: false })
            }
        }));
        let settings = ClientSettings {
            adaptive_timeout,
            max_attempts: 1,
            ..ClientSettings::default()
        };
        let recorder = Recorder::new(1, 1);
        let svc = build(StackKind::Seawall, &settings, inner, &recorder, 0, 1).unwrap();
        for id in 0..200 {
            let call = Call {
                id,
                route: 0,
                post: false,
                idempotency_key: false,
            };
            assert!(!svc.clone().oneshot(call).await.unwrap().degraded);
        }
        // Past the estimator's refresh.
        sleep(Duration::from_secs(1)).await;
        let start = tokio::time::Instant::now();
        let call = Call {
            id: 999,
            route: 0,
            post: false,
            idempotency_key: false,
        };
        assert!(svc.oneshot(call).await.unwrap().degraded);
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn adaptive_timeout_times_a_hung_call_out_at_the_learned_latency() {
        // Fixed: the scenario's 1 s attempt timeout.
        let fixed = hung_call_time(false).await;
        assert_eq!(fixed, Duration::from_secs(1), "{fixed:?}");
        // Adaptive: p99 x 3 of 10 ms calls.
        let adaptive = hung_call_time(true).await;
        assert!(
            adaptive >= Duration::from_millis(25) && adaptive <= Duration::from_millis(40),
            "{adaptive:?}"
        );
    }
}
