//! Faults: what to inject, how often and when.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use rand::RngCore;
use seawall_core::{BoxError, ConfigError, GrpcCode};

use crate::error::FaultKind;
use crate::layer::LAYER;
use crate::protocol::Answer;
use crate::schedule::Schedule;

/// The longest latency a fault may add, and the largest cap: anything
/// longer is a configuration mistake (use [`Fault::hang`] for "forever").
pub const MAX_LATENCY: Duration = Duration::from_secs(3600);

/// The default cap of a [`Latency`] sample.
pub const DEFAULT_LATENCY_CAP: Duration = Duration::from_secs(60);

/// The longest `Retry-After` an HTTP fault may carry: one day.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// The longest `grpc-message` a gRPC fault may carry, in bytes.
const MAX_GRPC_MESSAGE: usize = 1024;

/// How much latency a [`Fault::latency`] adds to a call.
///
/// Every sample is capped at [`with_max`](Self::with_max) (60 s by default).
/// Parameters are checked by the layer's `build()`: durations and the cap
/// may not exceed [`MAX_LATENCY`] (one hour), `sigma` must be finite and in
/// `[0, 10]`, `shape` finite and positive.
///
/// ```
/// use std::time::Duration;
/// use seawall_chaos::Latency;
///
/// let ms = Duration::from_millis;
/// let _spike = Latency::fixed(ms(500));
/// let _jitter = Latency::uniform(ms(10), ms(50));
/// // Median 20 ms; one call in 20 beyond about 45 ms (sigma 0.5).
/// let _service_time = Latency::log_normal(ms(20), 0.5);
/// // At least 10 ms; the tail falls like x^-1.5, capped at 2 s.
/// let _heavy_tail = Latency::pareto(ms(10), 1.5).with_max(Duration::from_secs(2));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    dist: Dist,
    max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Dist {
    Fixed(Duration),
    Uniform(Duration, Duration),
    LogNormal { median: Duration, sigma: f64 },
    Pareto { scale: Duration, shape: f64 },
}

impl Latency {
    /// Always `delay`.
    pub const fn fixed(delay: Duration) -> Self {
        Self {
            dist: Dist::Fixed(delay),
            max: DEFAULT_LATENCY_CAP,
        }
    }

    /// Uniformly distributed between `low` and `high` (both included up
    /// to the resolution of a 53-bit draw).
    pub const fn uniform(low: Duration, high: Duration) -> Self {
        Self {
            dist: Dist::Uniform(low, high),
            max: DEFAULT_LATENCY_CAP,
        }
    }

    /// Log-normal: `median * exp(sigma * Z)` with `Z` a standard normal
    /// variable. The median is the 50th percentile; the 99th is
    /// `median * exp(2.326 * sigma)`. Service times of real dependencies
    /// are often close to log-normal.
    pub const fn log_normal(median: Duration, sigma: f64) -> Self {
        Self {
            dist: Dist::LogNormal { median, sigma },
            max: DEFAULT_LATENCY_CAP,
        }
    }

    /// Pareto (type I): `scale / U^(1 / shape)` with `U` uniform in
    /// `(0, 1]`. Never below `scale`; the probability of exceeding `x` is
    /// `(scale / x)^shape`, so a small `shape` (1 to 2) gives the long tail
    /// of a dependency that sometimes stalls.
    pub const fn pareto(scale: Duration, shape: f64) -> Self {
        Self {
            dist: Dist::Pareto { scale, shape },
            max: DEFAULT_LATENCY_CAP,
        }
    }

    /// Caps every sample at `max` (60 s unless set).
    #[must_use]
    pub const fn with_max(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// The cap of every sample.
    pub const fn max(&self) -> Duration {
        self.max
    }

    /// Draws one latency from `rng`.
    pub fn sample<R: RngCore + ?Sized>(&self, rng: &mut R) -> Duration {
        let delay = match self.dist {
            Dist::Fixed(d) => d,
            Dist::Uniform(low, high) => {
                let span = high.saturating_sub(low).as_secs_f64();
                low.saturating_add(secs(span * unit(rng)))
            }
            Dist::LogNormal { median, sigma } => {
                secs(median.as_secs_f64() * (sigma * standard_normal(rng)).exp())
            }
            Dist::Pareto { scale, shape } => {
                secs(scale.as_secs_f64() / open_unit(rng).powf(1.0 / shape))
            }
        };
        delay.min(self.max)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let too_long = |d: Duration| d > MAX_LATENCY;
        let bad = |reason: String| Err(ConfigError::new(LAYER, "latency", reason));
        if too_long(self.max) {
            return bad(format!("cap must be at most 1 h, got {:?}", self.max));
        }
        match self.dist {
            Dist::Fixed(d) if too_long(d) => bad(format!("must be at most 1 h, got {d:?}")),
            Dist::Uniform(low, high) if low > high || too_long(high) => bad(format!(
                "uniform range must have low <= high <= 1 h, got {low:?}..{high:?}"
            )),
            Dist::LogNormal { median, sigma }
                if too_long(median) || !(0.0..=10.0).contains(&sigma) =>
            {
                bad(format!(
                    "log-normal needs median <= 1 h and sigma in [0, 10], got {median:?} and {sigma}"
                ))
            }
            Dist::Pareto { scale, shape }
                if too_long(scale) || !shape.is_finite() || shape <= 0.0 =>
            {
                bad(format!(
                    "pareto needs scale <= 1 h and a finite shape > 0, got {scale:?} and {shape}"
                ))
            }
            _ => Ok(()),
        }
    }
}

/// A duration from seconds; infinite or absurd values saturate (and are
/// then capped by the latency's maximum).
fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(if s > 0.0 {
        Duration::MAX
    } else {
        Duration::ZERO
    })
}

/// Uniform in `[0, 1)` from the top 53 bits of a draw.
pub(crate) fn unit<R: RngCore + ?Sized>(rng: &mut R) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Uniform in `(0, 1]`.
fn open_unit<R: RngCore + ?Sized>(rng: &mut R) -> f64 {
    ((rng.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A standard normal draw (Box–Muller; one of the pair is discarded so that
/// a draw depends on nothing but the RNG state).
fn standard_normal<R: RngCore + ?Sized>(rng: &mut R) -> f64 {
    let radius = (-2.0 * open_unit(rng).ln()).sqrt();
    radius * (std::f64::consts::TAU * unit(rng)).cos()
}

/// A user function producing the error of a [`Fault::error_with`].
type ErrorFn = Arc<dyn Fn() -> BoxError + Send + Sync>;

#[derive(Clone)]
pub(crate) enum Action {
    Latency(Latency),
    Error,
    ErrorWith(ErrorFn),
    ConnectionReset,
    Http(StatusCode),
    Grpc(GrpcCode, Cow<'static, str>),
    Hang,
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Latency(l) => f.debug_tuple("Latency").field(l).finish(),
            Action::Error => f.write_str("Error"),
            Action::ErrorWith(_) => f.write_str("ErrorWith(..)"),
            Action::ConnectionReset => f.write_str("ConnectionReset"),
            Action::Http(s) => f.debug_tuple("Http").field(s).finish(),
            Action::Grpc(c, m) => f.debug_tuple("Grpc").field(c).field(m).finish(),
            Action::Hang => f.write_str("Hang"),
        }
    }
}

impl Action {
    fn kind(&self) -> FaultKind {
        match self {
            Action::Latency(_) => FaultKind::Latency,
            Action::Error | Action::ErrorWith(_) => FaultKind::Error,
            Action::ConnectionReset => FaultKind::ConnectionReset,
            Action::Http(_) => FaultKind::Http,
            Action::Grpc(..) => FaultKind::Grpc,
            Action::Hang => FaultKind::Hang,
        }
    }
}

/// One fault of a [`ChaosLayer`](crate::ChaosLayer): what it does, at what
/// rate, on what [`Schedule`], under what name.
///
/// Built by value; checked by the layer's `build()`.
///
/// ```
/// use std::time::Duration;
/// use http::StatusCode;
/// use seawall_chaos::{Fault, Latency, Schedule};
///
/// let secs = Duration::from_secs;
/// // 30% of calls fail during an outage from 10 s to 40 s.
/// let outage = Fault::error()
///     .rate(0.3)
///     .schedule(Schedule::between(secs(10), secs(40)))
///     .named("outage");
/// // 5% of calls are answered 503 with Retry-After: 2.
/// let shedding = Fault::http(StatusCode::SERVICE_UNAVAILABLE)
///     .retry_after(secs(2))
///     .rate(0.05);
/// // Every call is 20 ms slower, log-normally.
/// let slow = Fault::latency(Latency::log_normal(Duration::from_millis(20), 0.4));
/// assert_eq!(outage.name(), "outage");
/// assert_eq!(shedding.name(), "http_503");
/// assert_eq!(slow.name(), "latency");
/// ```
#[derive(Debug, Clone)]
pub struct Fault {
    pub(crate) name: Option<Arc<str>>,
    pub(crate) action: Action,
    pub(crate) rate: f64,
    pub(crate) schedule: Schedule,
    pub(crate) enabled: bool,
    pub(crate) retry_after: Option<Duration>,
}

impl Fault {
    fn new(action: Action) -> Self {
        Self {
            name: None,
            action,
            rate: 1.0,
            schedule: Schedule::always(),
            enabled: true,
            retry_after: None,
        }
    }

    /// Adds latency before the call proceeds. The inner service is called
    /// at once (so its readiness is used as tower requires) and its
    /// response future is first polled once the delay has passed; for the
    /// usual lazy futures (hyper clients, axum handlers) the request starts
    /// after the delay. Latencies of several faults add up.
    ///
    /// Needs a tokio runtime with time enabled.
    pub fn latency(latency: Latency) -> Self {
        Self::new(Action::Latency(latency))
    }

    /// Fails the call with [`InjectedFault`](crate::InjectedFault) without
    /// calling the inner service.
    pub fn error() -> Self {
        Self::new(Action::Error)
    }

    /// Fails the call with the error `make` returns, without calling the
    /// inner service.
    ///
    /// ```
    /// use seawall_chaos::Fault;
    /// use seawall_core::BoxError;
    ///
    /// let timeout = Fault::error_with(|| -> BoxError {
    ///     Box::new(std::io::Error::from(std::io::ErrorKind::TimedOut))
    /// });
    /// ```
    pub fn error_with<F>(make: F) -> Self
    where
        F: Fn() -> BoxError + Send + Sync + 'static,
    {
        Self::new(Action::ErrorWith(Arc::new(make)))
    }

    /// Fails the call as a hyper client does when the connection drops
    /// before a response: an [`InjectedFault`](crate::InjectedFault) of
    /// kind [`ConnectionReset`](FaultKind::ConnectionReset) whose source
    /// is an [`std::io::Error`] of kind
    /// [`ConnectionReset`](std::io::ErrorKind::ConnectionReset).
    ///
    /// A drop in the middle of a response body is not simulated: it would
    /// need the layer to change the response's body type.
    pub fn connection_reset() -> Self {
        Self::new(Action::ConnectionReset)
    }

    /// Answers the call with `status` and an empty body, without calling
    /// the inner service. Needs an HTTP protocol
    /// ([`ChaosBuilder::http`](crate::ChaosBuilder::http)); `status` must
    /// be a 4xx or 5xx.
    pub fn http(status: StatusCode) -> Self {
        Self::new(Action::Http(status))
    }

    /// Answers the call with a trailers-only gRPC status: HTTP 200,
    /// `content-type: application/grpc`, `grpc-status` and a percent-encoded
    /// `grpc-message`, as a gRPC server does when it fails before any
    /// message. Needs an HTTP protocol; `code` may not be `Ok`, `message`
    /// is at most 1 KiB.
    pub fn grpc(code: GrpcCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Action::Grpc(code, message.into()))
    }

    /// The call never completes, until something above (a timeout, a
    /// dropped connection) drops it. The inner service is not called.
    pub fn hang() -> Self {
        Self::new(Action::Hang)
    }

    /// The share of calls the fault applies to while active, in `[0, 1]`
    /// (1 unless set). Changeable at run time with
    /// [`ChaosHandle::set_rate`](crate::ChaosHandle::set_rate).
    #[must_use]
    pub fn rate(mut self, rate: f64) -> Self {
        self.rate = rate;
        self
    }

    /// When the fault is active ([`Schedule::always`] unless set).
    #[must_use]
    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// The name the [`ChaosHandle`](crate::ChaosHandle), events and
    /// [`InjectedFault::fault`](crate::InjectedFault::fault) know the fault
    /// by. Defaults to its kind (`"latency"`, `"error"`,
    /// `"connection_reset"`, `"http_503"`, `"grpc_14"`, `"hang"`); names
    /// must be unique within a layer.
    #[must_use]
    pub fn named(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The fault starts switched off; turn it on with
    /// [`ChaosHandle::enable_fault`](crate::ChaosHandle::enable_fault).
    #[must_use]
    pub fn disabled(mut self) -> Self {
        self.enabled = false;
        self
    }

    /// For an [`http`](Self::http) fault: the `Retry-After` header, in
    /// whole seconds rounded up (at most one day).
    #[must_use]
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The fault's name.
    pub fn name(&self) -> Cow<'_, str> {
        match &self.name {
            Some(name) => Cow::Borrowed(name),
            None => match &self.action {
                Action::Http(status) => Cow::Owned(format!("http_{}", status.as_u16())),
                Action::Grpc(code, _) => Cow::Owned(format!("grpc_{}", code.as_i32())),
                other => Cow::Borrowed(other.kind().as_str()),
            },
        }
    }

    /// What the fault does.
    pub fn kind(&self) -> FaultKind {
        self.action.kind()
    }

    /// Checks the settings and prepares what the request path needs.
    pub(crate) fn arm(
        self,
        answers: bool,
    ) -> Result<(Arc<str>, Armed, Schedule, f64, bool), ConfigError> {
        let name: Arc<str> = match &self.name {
            Some(name) => name.clone(),
            None => self.name().into(),
        };
        if !(0.0..=1.0).contains(&self.rate) {
            return Err(ConfigError::new(
                LAYER,
                "rate",
                format!("must be in [0, 1], got {} for fault `{name}`", self.rate),
            ));
        }
        self.schedule.validate()?;
        if self.retry_after.is_some() && !matches!(self.action, Action::Http(_)) {
            return Err(ConfigError::new(
                LAYER,
                "retry_after",
                format!("applies to http faults only (fault `{name}`)"),
            ));
        }
        if matches!(self.action, Action::Http(_) | Action::Grpc(..)) && !answers {
            return Err(ConfigError::new(
                LAYER,
                "fault",
                format!(
                    "`{name}` answers with a response: build the layer with `.http()` or `.http_body(..)`"
                ),
            ));
        }
        let armed = match self.action {
            Action::Latency(latency) => {
                latency.validate()?;
                Armed::Latency(latency)
            }
            Action::Error => Armed::Error,
            Action::ErrorWith(f) => Armed::ErrorWith(f),
            Action::ConnectionReset => Armed::ConnectionReset,
            Action::Hang => Armed::Hang,
            Action::Http(status) => {
                if !(status.is_client_error() || status.is_server_error()) {
                    return Err(ConfigError::new(
                        LAYER,
                        "status",
                        format!("must be a 4xx or 5xx, got {status} for fault `{name}`"),
                    ));
                }
                let retry_after = match self.retry_after {
                    Some(after) if after > MAX_RETRY_AFTER => {
                        return Err(ConfigError::new(
                            LAYER,
                            "retry_after",
                            format!("must be at most one day, got {after:?}"),
                        ))
                    }
                    other => other,
                };
                Armed::Answer(Answer::http(status, retry_after))
            }
            Action::Grpc(code, message) => {
                if code == GrpcCode::Ok {
                    return Err(ConfigError::new(
                        LAYER,
                        "grpc_status",
                        format!("must be an error, got OK for fault `{name}`"),
                    ));
                }
                if message.len() > MAX_GRPC_MESSAGE {
                    return Err(ConfigError::new(
                        LAYER,
                        "grpc_message",
                        format!("must be at most 1024 bytes, got {}", message.len()),
                    ));
                }
                Armed::Answer(Answer::grpc(code, &message))
            }
        };
        Ok((name, armed, self.schedule, self.rate, self.enabled))
    }
}

/// A checked fault, ready for the request path.
#[derive(Clone)]
pub(crate) enum Armed {
    Latency(Latency),
    Error,
    ErrorWith(ErrorFn),
    ConnectionReset,
    Answer(Answer),
    Hang,
}

impl Armed {
    pub(crate) fn kind(&self) -> FaultKind {
        match self {
            Armed::Latency(_) => FaultKind::Latency,
            Armed::Error | Armed::ErrorWith(_) => FaultKind::Error,
            Armed::ConnectionReset => FaultKind::ConnectionReset,
            Armed::Answer(answer) => answer.kind(),
            Armed::Hang => FaultKind::Hang,
        }
    }
}

impl fmt::Debug for Armed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Armed::Latency(l) => f.debug_tuple("Latency").field(l).finish(),
            Armed::ErrorWith(_) => f.write_str("ErrorWith(..)"),
            Armed::Answer(a) => f.debug_tuple("Answer").field(a).finish(),
            other => f.write_str(other.kind().as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn fixed_and_uniform_stay_in_range_and_cover_it() {
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(Latency::fixed(ms(7)).sample(&mut rng), ms(7));
        let u = Latency::uniform(ms(10), ms(20));
        let samples: Vec<Duration> = (0..10_000).map(|_| u.sample(&mut rng)).collect();
        assert!(samples.iter().all(|d| (ms(10)..=ms(20)).contains(d)));
        let mean = samples.iter().map(Duration::as_secs_f64).sum::<f64>() / 10_000.0;
        assert!((mean - 0.015).abs() < 0.0002, "mean {mean}");
        assert!(samples.iter().any(|d| *d < ms(11)));
        assert!(samples.iter().any(|d| *d > ms(19)));
    }

    fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q) as usize]
    }

    #[test]
    fn log_normal_has_its_median_and_tail() {
        let mut rng = SmallRng::seed_from_u64(2);
        let l = Latency::log_normal(ms(20), 0.5);
        let v: Vec<f64> = (0..20_000)
            .map(|_| l.sample(&mut rng).as_secs_f64())
            .collect();
        let p50 = quantile(v.clone(), 0.5);
        let p99 = quantile(v, 0.99);
        assert!((p50 - 0.020).abs() < 0.0008, "p50 {p50}");
        let expected_p99 = 0.020 * (2.326_f64 * 0.5).exp();
        assert!((p99 / expected_p99 - 1.0).abs() < 0.08, "p99 {p99}");
    }

    #[test]
    fn pareto_tail_follows_the_shape_and_the_cap() {
        let mut rng = SmallRng::seed_from_u64(3);
        let l = Latency::pareto(ms(10), 1.5).with_max(ms(500));
        let v: Vec<Duration> = (0..20_000).map(|_| l.sample(&mut rng)).collect();
        assert!(v.iter().all(|d| *d >= ms(10) && *d <= ms(500)));
        // P(X > 40 ms) = (10/40)^1.5 = 0.125
        let share = v.iter().filter(|d| **d > ms(40)).count() as f64 / 20_000.0;
        assert!((share - 0.125).abs() < 0.01, "share {share}");
        assert!(v.iter().any(|d| *d == ms(500)), "the cap is reached");
    }

    #[test]
    fn invalid_latencies_are_refused() {
        for bad in [
            Latency::fixed(Duration::from_secs(3601)),
            Latency::uniform(ms(20), ms(10)),
            Latency::log_normal(ms(20), f64::NAN),
            Latency::log_normal(ms(20), -1.0),
            Latency::pareto(ms(10), 0.0),
            Latency::pareto(ms(10), f64::INFINITY),
            Latency::fixed(ms(1)).with_max(Duration::MAX),
        ] {
            let err = bad.validate().expect_err("invalid");
            assert_eq!(err.field(), "latency");
        }
        assert!(Latency::log_normal(ms(1), 0.0).validate().is_ok());
    }

    #[test]
    fn secs_saturates() {
        assert_eq!(secs(f64::INFINITY), Duration::MAX);
        assert_eq!(secs(-1.0), Duration::ZERO);
        assert_eq!(secs(f64::NAN), Duration::ZERO);
    }

    #[test]
    fn faults_are_checked_when_armed() {
        let field = |f: Fault, answers| f.arm(answers).expect_err("invalid").field();
        assert_eq!(field(Fault::error().rate(1.5), false), "rate");
        assert_eq!(field(Fault::error().rate(f64::NAN), false), "rate");
        assert_eq!(field(Fault::error().rate(-0.1), false), "rate");
        assert_eq!(
            field(Fault::error().retry_after(ms(1)), false),
            "retry_after"
        );
        assert_eq!(
            field(Fault::http(StatusCode::SERVICE_UNAVAILABLE), false),
            "fault"
        );
        assert_eq!(
            field(Fault::grpc(GrpcCode::Unavailable, "x"), false),
            "fault"
        );
        assert_eq!(field(Fault::http(StatusCode::OK), true), "status");
        assert_eq!(
            field(
                Fault::http(StatusCode::TOO_MANY_REQUESTS).retry_after(Duration::from_secs(86_401)),
                true
            ),
            "retry_after"
        );
        assert_eq!(
            field(Fault::grpc(GrpcCode::Ok, "fine"), true),
            "grpc_status"
        );
        assert_eq!(
            field(Fault::grpc(GrpcCode::Internal, "x".repeat(1025)), true),
            "grpc_message"
        );
        assert_eq!(
            field(
                Fault::error().schedule(Schedule::between(ms(2), ms(1))),
                false
            ),
            "schedule"
        );
        assert_eq!(
            field(
                Fault::latency(Latency::fixed(Duration::from_secs(7200))),
                false
            ),
            "latency"
        );
        let (name, armed, _, rate, enabled) = Fault::grpc(GrpcCode::Unavailable, "down")
            .rate(0.0)
            .disabled()
            .arm(true)
            .expect("valid");
        assert_eq!(&*name, "grpc_14");
        assert_eq!(armed.kind(), FaultKind::Grpc);
        assert!(rate == 0.0 && !enabled);
    }
}
