//! One breaker state for a fleet of replicas, shared through Redis
//! (feature `redis`).
//!
//! Every replica keeps its own lock-free breaker: the request path never
//! waits for Redis, and never touches it. A background task per replica,
//! [`FleetSync`], makes one round trip (one Lua script) per sync interval
//! that
//!
//! 1. publishes what this replica's sliding window holds (calls, failures,
//!    slow calls), tagged with the fleet epoch it was counted under;
//! 2. sums the windows of the live replicas (seen within
//!    [`liveness`](FleetSync::liveness)) counted under the current epoch and,
//!    while the fleet is closed, trips it when the sum crosses the breaker's
//!    own rule (`minimum_calls`, failure-rate and slow-call-rate thresholds)
//!    **and** enough replicas fail on their own (the poisoning guard below);
//! 3. hands out the half-open probe lease (`SET NX PX`) once the fleet's
//!    open period is over, and accepts the lease holder's verdict;
//! 4. returns the fleet's state, which the task applies to the local
//!    breaker.
//!
//! Publishing a window (not a delta) makes a publish idempotent: a sync
//! that timed out after Redis applied it, and is sent again, counts nothing
//! twice.
//!
//! # Fleet states and epochs
//!
//! The fleet is *closed* or *open until* a moment on Redis's own clock
//! (`TIME`, so the replicas' clocks do not matter); an open fleet whose
//! period is over is *half-open*. Every change (a trip, a verdict) adds one
//! to the fleet's **epoch**, a fencing counter: counts tagged with an older
//! epoch are ignored, and a verdict is accepted only for the epoch it was
//! made under and only from the lease holder (or when nobody holds the
//! lease), so a stale or slow replica can never undo a newer decision.
//!
//! When the fleet opens, every replica opens within one sync interval of
//! the trip (the replica whose publish crossed the threshold opens at once).
//! While the fleet is open, each replica is *held* open: its local open
//! period is extended, [`hold`](FleetSync::hold) at a time, so that it does
//! not probe on its own.
//!
//! # Bounded half-open probes
//!
//! Once the fleet's open period is over, the first held replica to sync
//! takes the probe lease ([`probe_lease`](FleetSync::probe_lease), renewed
//! while its probes run) and lets its local breaker go half-open: it sends
//! the breaker's `half_open_probes` probes and publishes the verdict, which
//! closes the fleet or opens it again. The others stay open until they read
//! the verdict. **Bound:** a half-open period of the fleet sends at most
//! `half_open_probes` × the number of leases granted in it, and a lease is
//! granted again only when the previous holder neither started its probes
//! nor published a verdict before its lease expired (it crashed, lost
//! Redis, or got no traffic). With live replicas that have traffic, that is
//! `half_open_probes` × 1. A replica whose sync fails judges alone until
//! the next one succeeds (see below) and may send its own
//! `half_open_probes` meanwhile: add that many per such fallback.
//!
//! The holder renews its lease only while a probe it admitted can still
//! report: each sync checks the breaker's `max_half_open_wait` off the
//! request path, so a probe that hangs on a holder that gets no more
//! traffic is declared lost within one interval of that wait, the holder's
//! breaker opens again, and its "open" verdict starts a new open period of
//! the fleet (before, the holder renewed the lease while half-open, and the
//! fleet stayed open for as long as the probe hung).
//!
//! # One bad replica cannot open the fleet
//!
//! A replica whose own network is broken sees every call fail while the
//! dependency is fine for everyone else. With *reporting* the live replicas
//! with at least one call in their window (current epoch) and
//! *need* = `max(min_replicas, ⌈min_replica_fraction × reporting⌉)`
//! ([`min_replicas`](FleetSync::min_replicas), default 2, and
//! [`min_replica_fraction`](FleetSync::min_replica_fraction), default 0),
//! the closed fleet trips when all of these hold:
//!
//! 1. the combined window has at least the breaker's `minimum_calls` and
//!    its failure (or slow-call) rate is at the breaker's threshold;
//! 2. when *need* ≥ 2, that rate is still at the threshold with the replica
//!    that contributed the most failures (slow calls) left out: no trip
//!    rests on one replica's evidence;
//! 3. at least *need* replicas *fail on their own*: their own window has at
//!    least `max(1, ⌈minimum_calls / reporting⌉)` calls (one failed call is
//!    not a witness) and its failure (or slow-call) rate is at the
//!    threshold;
//! 4. counting, in 3, a failing replica *first seen less than one liveness
//!    ago* and a failing replica that has *not synced since it was first
//!    seen* as one (the second may be the first's crashed or restarted
//!    incarnation, whose entry stays live for one liveness period). A new
//!    replica thus becomes a separate witness once every other failing
//!    replica has synced after it appeared (within about one interval).
//!
//! The bad replica's local breaker still opens by local judgement; the
//! others do not. (A fleet with fewer live replicas than *need* never trips
//! through Redis: each breaker judges alone.)
//!
//! A replica whose last [`FleetHandle`] is dropped deletes its entry (a
//! clean leave), so a restart does not leave its old self counting. A crash
//! leaves it for one liveness period, covered by rule 4 as long as the
//! restart comes back as one replica; a stable
//! [`replica_id`](FleetSync::replica_id) (the pod's or host's name) removes
//! the question altogether: the restart overwrites its own entry. The
//! default id is random because two processes on one host (or two
//! containers sharing a host name and pid 1) must never share one.
//!
//! # Garbage in Redis
//!
//! A reply that is not what the script returns, or an open period longer
//! than twice the longest this breaker can set (its open duration's `max`)
//! plus one second, is a failed sync: local judgement.
//!
//! # Redis slow or down
//!
//! Each round trip is bounded by [`timeout`](FleetSync::timeout). A sync
//! that fails or times out switches the replica to local judgement at once:
//! a breaker held open by the fleet is released to the end of the fleet's
//! open period (or now, if it is over) and then probes by itself. Requests
//! never wait for Redis, so none fails or slows down because of it. The
//! task keeps trying every interval; when Redis answers again, the replica
//! publishes its window and reads and applies the fleet's state.
//!
//! The consecutive-failures rule stays local: the fleet judges rates.
//!
//! # Memory in Redis
//!
//! Three keys per fleet (a hash of the state, a hash with one short entry
//! per replica, the lease), all expiring after
//! `max(60 s, 20 × liveness)` without syncs; entries of replicas silent for
//! `10 × liveness` are removed by the script.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use seawall_core::ConfigError;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::breaker::Breaker;
use crate::state::{epoch_of, state_of};
use crate::window::Counts;
use crate::{Handle, State};

const LAYER: &str = "circuit breaker fleet";

/// KEYS: state hash, replicas hash, lease key.
///
/// ARGV: 1 replica, 2 known epoch (used only when the state is missing), 3
/// epoch the counts were taken under, 4 calls, 5 failures, 6 slow, 7
/// liveness ms, 8 minimum calls, 9 failure-rate threshold, 10 slow-call-rate
/// threshold (-1: off), 11 min replicas, 12 min replica fraction, 13 open
/// ms, 14 verdict ('' | 'closed' | 'open'), 15 verdict epoch, 16 verdict
/// open ms, 17 want lease (0/1), 18 lease ms, 19 key ttl ms, 20 renew
/// lease (0/1).
///
/// Returns `{epoch, state, until - now (ms), lease holder or '', live,
/// calls, failures, slow, failing, event}`; event 1 = this call tripped the
/// fleet, 2 = this call's verdict was accepted.
const SYNC_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me = ARGV[1]
local st = redis.call('HMGET', KEYS[1], 'epoch', 'state', 'until')
local epoch = tonumber(st[1])
local state = st[2]
local untl = tonumber(st[3]) or 0
if not epoch then
  epoch = tonumber(ARGV[2])
  state = 'closed'
  untl = 0
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'state', state, 'until', 0)
end
if state ~= 'open' then state = 'closed' end
local event = 0
if ARGV[14] ~= '' and tonumber(ARGV[15]) == epoch and state == 'open' and now >= untl then
  local holder = redis.call('GET', KEYS[3])
  if (not holder) or holder == me then
    epoch = epoch + 1
    if ARGV[14] == 'closed' then
      state = 'closed'
      untl = 0
    else
      state = 'open'
      untl = now + tonumber(ARGV[16])
    end
    redis.call('HSET', KEYS[1], 'epoch', epoch, 'state', state, 'until', untl)
    redis.call('DEL', KEYS[3])
    event = 2
  end
end
local born = now
local mine = redis.call('HGET', KEYS[2], me)
if mine then
  local b = tonumber(string.match(mine, '^%d+ %d+ %d+ %d+ %d+ (%d+)$'))
  if b and b <= now then born = b end
end
redis.call('HSET', KEYS[2], me, ARGV[3] .. ' ' .. ARGV[4] .. ' ' .. ARGV[5] .. ' ' .. ARGV[6] .. ' ' .. now .. ' ' .. born)
local live_ms = tonumber(ARGV[7])
local fr = tonumber(ARGV[9])
local sr = tonumber(ARGV[10])
local live, calls, failures, slow, failing, reporting = 0, 0, 0, 0, 0, 0
local counted = {}
local entries = redis.call('HGETALL', KEYS[2])
for i = 1, #entries, 2 do
  local e, c, f, s, ts, b = string.match(entries[i + 1], '^(%d+) (%d+) (%d+) (%d+) (%d+) ?(%d*)$')
  ts = tonumber(ts)
  if (not ts) or now - ts > 10 * live_ms then
    redis.call('HDEL', KEYS[2], entries[i])
  elseif now - ts <= live_ms then
    live = live + 1
    if tonumber(e) == epoch then
      c = tonumber(c)
      f = tonumber(f)
      s = tonumber(s)
      calls = calls + c
      failures = failures + f
      slow = slow + s
      if c > 0 then
        reporting = reporting + 1
        counted[#counted + 1] = {c, f, s, ts, tonumber(b) or 0}
      end
    end
  end
end
-- A replica fails on its own only with at least its share of the
-- breaker's minimum calls: ceil(minimum calls / reporting replicas), >= 1.
local per = math.max(1, math.ceil(tonumber(ARGV[8]) / math.max(reporting, 1)))
local young, newest = 0, -1
for _, r in ipairs(counted) do
  if r[1] >= per and (r[2] / r[1] >= fr or (sr >= 0 and r[3] / r[1] >= sr)) then
    r[6] = true
    failing = failing + 1
    if now - r[5] < live_ms then
      young = young + 1
      if r[5] > newest then newest = r[5] end
    end
  end
end
-- A failing entry first seen less than one liveness ago may be a restart
-- of a failing entry that has not synced since it appeared: such a pair
-- counts once.
if young > 0 then
  local silent = 0
  for _, r in ipairs(counted) do
    if r[6] and r[4] < newest then silent = silent + 1 end
  end
  failing = failing - math.min(young, silent)
end
if state == 'closed' and calls > 0 and calls >= tonumber(ARGV[8]) then
  local need = math.max(tonumber(ARGV[11]), math.ceil(tonumber(ARGV[12]) * reporting))
  local fail_trip = failures / calls >= fr
  local slow_trip = sr >= 0 and slow / calls >= sr
  if need >= 2 then
    -- No trip on one replica's evidence: the combined rate must cross the
    -- threshold with the largest contributor left out too.
    local bf, bs = nil, nil
    for _, r in ipairs(counted) do
      if (not bf) or r[2] > bf[2] then bf = r end
      if (not bs) or r[3] > bs[3] then bs = r end
    end
    if fail_trip then
      local rc = calls - bf[1]
      fail_trip = rc > 0 and (failures - bf[2]) / rc >= fr
    end
    if slow_trip then
      local rc = calls - bs[1]
      slow_trip = rc > 0 and (slow - bs[3]) / rc >= sr
    end
  end
  if (fail_trip or slow_trip) and failing >= need then
    epoch = epoch + 1
    state = 'open'
    untl = now + tonumber(ARGV[13])
    redis.call('HSET', KEYS[1], 'epoch', epoch, 'state', state, 'until', untl)
    redis.call('DEL', KEYS[3])
    event = 1
  end
end
local holder = false
if state == 'open' and now >= untl then
  if ARGV[17] == '1' then
    redis.call('SET', KEYS[3], me, 'NX', 'PX', ARGV[18])
  end
  holder = redis.call('GET', KEYS[3])
  if holder == me and ARGV[20] == '1' then
    redis.call('PEXPIRE', KEYS[3], ARGV[18])
  end
end
local ttl = tonumber(ARGV[19])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return {epoch, state, untl - now, holder or '', live, calls, failures, slow, failing, event}
";

/// The reply's event when this call's verdict was accepted. (A trip, event
/// 1, needs nothing special: every replica, the tripping one included,
/// applies it through the epoch change.)
const EVENT_VERDICT: i64 = 2;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Shares a [`CircuitBreakerLayer`](crate::CircuitBreakerLayer)'s state with
/// the other replicas of a fleet through Redis: a builder for the
/// background sync task, started by [`spawn`](Self::spawn).
///
/// See the [module documentation](crate::fleet) for what is shared, the
/// probe bound, the poisoning guard and what happens when Redis is away.
/// The fleet's thresholds are the breaker's own (`failure_rate_threshold`,
/// `slow_call_rate_threshold`, `minimum_calls`); its open period is the
/// breaker's base open duration; its probes are the breaker's
/// `half_open_probes`.
///
/// ```no_run
/// use std::time::Duration;
/// use seawall_circuit_breaker::{CircuitBreakerLayer, FleetSync};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), seawall_core::ConfigError> {
/// let breaker = CircuitBreakerLayer::builder()
///     .name("inventory")
///     .count_window(100)
///     .minimum_calls(50)
///     .failure_rate_threshold(0.5)
///     .open_duration(Duration::from_secs(10))
///     .build()?;
/// let fleet = FleetSync::builder("redis://127.0.0.1:6379", "inventory")
///     .replica_id("web-7")
///     .interval(Duration::from_millis(250))
///     .min_replicas(2)
///     .spawn(breaker.handle())?;
///
/// // `fleet.local()` is the breaker's own handle; `fleet.fleet()` the
/// // fleet's view as of the last sync. Keep `fleet` alive: dropping its
/// // last clone stops the sync.
/// println!("{:?} {:?}", fleet.local().state(), fleet.fleet().state);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct FleetSync {
    url: String,
    fleet: String,
    replica_id: Option<String>,
    prefix: String,
    interval: Duration,
    timeout: Duration,
    min_replicas: u32,
    min_replica_fraction: f64,
    liveness: Option<Duration>,
    hold: Option<Duration>,
    probe_lease: Option<Duration>,
}

impl fmt::Debug for FleetSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password: left out.
        f.debug_struct("FleetSync")
            .field("fleet", &self.fleet)
            .field("replica_id", &self.replica_id)
            .field("prefix", &self.prefix)
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("min_replicas", &self.min_replicas)
            .field("min_replica_fraction", &self.min_replica_fraction)
            .finish_non_exhaustive()
    }
}

impl FleetSync {
    /// The default key prefix.
    pub const DEFAULT_PREFIX: &'static str = "seawall:cb:";

    /// A sync through the Redis server at `redis_url` for the fleet named
    /// `fleet` (every replica sharing one breaker state uses the same name).
    ///
    /// Defaults: a random replica id, interval 250 ms, timeout 50 ms,
    /// `min_replicas` 2, `min_replica_fraction` 0, liveness 3 × interval,
    /// hold 4 × interval, probe lease max(2 s, 4 × interval).
    pub fn builder(redis_url: impl Into<String>, fleet: impl Into<String>) -> Self {
        Self {
            url: redis_url.into(),
            fleet: fleet.into(),
            replica_id: None,
            prefix: Self::DEFAULT_PREFIX.to_owned(),
            interval: Duration::from_millis(250),
            timeout: Duration::from_millis(50),
            min_replicas: 2,
            min_replica_fraction: 0.0,
            liveness: None,
            hold: None,
            probe_lease: None,
        }
    }

    /// This replica's name in the fleet (default: random). Give each
    /// replica its own: two replicas with one id count as one. A stable id
    /// (the pod's or host's name) is best: a replica that crashes and
    /// restarts then overwrites its own entry instead of leaving it to
    /// count for one more liveness period (see the
    /// [module documentation](crate::fleet#one-bad-replica-cannot-open-the-fleet)).
    pub fn replica_id(mut self, id: impl Into<String>) -> Self {
        self.replica_id = Some(id.into());
        self
    }

    /// The prefix of the Redis keys (default
    /// [`DEFAULT_PREFIX`](Self::DEFAULT_PREFIX)). Keys are
    /// `prefix + "{" + fleet + "}:" + state|replicas|lease`, one hash slot
    /// per fleet for Redis Cluster.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Time between two syncs (default 250 ms, 1 ms to 60 s). The fleet
    /// opens every replica within one interval of its trip, and a fleet
    /// trip lags the calls behind it by up to one interval.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The longest one sync may wait for Redis (default 50 ms, at most the
    /// interval and 10 s) before the replica falls back to local judgement.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The fewest replicas that must fail on their own for the fleet to
    /// trip (default 2, at least 1).
    pub fn min_replicas(mut self, replicas: u32) -> Self {
        self.min_replicas = replicas;
        self
    }

    /// The share of reporting replicas (with calls in their window) that
    /// must fail on their own for the fleet to trip, rounded up (default 0,
    /// in `[0, 1]`); the larger of this and
    /// [`min_replicas`](Self::min_replicas) applies.
    pub fn min_replica_fraction(mut self, fraction: f64) -> Self {
        self.min_replica_fraction = fraction;
        self
    }

    /// How long a replica's published window counts after its last sync
    /// (default 3 × interval, at least the interval).
    pub fn liveness(mut self, liveness: Duration) -> Self {
        self.liveness = Some(liveness);
        self
    }

    /// How far ahead each sync extends the open period of a replica held
    /// open by the fleet (default 4 × interval, at least the interval). A
    /// replica whose syncs stop (without an error) probes by itself at most
    /// this long after its last one.
    pub fn hold(mut self, hold: Duration) -> Self {
        self.hold = Some(hold);
        self
    }

    /// How long the probe lease lasts without renewal (default max(2 s,
    /// 4 × interval), at least the interval). The holder renews it while
    /// its probes run; an unused lease expires and another replica may
    /// probe.
    pub fn probe_lease(mut self, lease: Duration) -> Self {
        self.probe_lease = Some(lease);
        self
    }

    /// Validates the settings and starts the sync task for the breaker of
    /// `breaker` (a [`CircuitBreakerLayer::handle`](crate::CircuitBreakerLayer::handle)).
    ///
    /// Connects lazily: a Redis that is down now is retried every interval.
    /// Must be called inside a Tokio runtime. The task runs until the last
    /// clone of the returned [`FleetHandle`] is dropped.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for an empty fleet name, prefix or replica id, a
    /// URL that is not a Redis URL, a setting out of its range, or no
    /// Tokio runtime.
    pub fn spawn(self, breaker: Handle) -> Result<FleetHandle, ConfigError> {
        let settings = self.validate(breaker.breaker())?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ConfigError::new(LAYER, "spawn", "must be called inside a Tokio runtime")
        })?;
        let client = redis::Client::open(self.url.as_str())
            .map_err(|_| ConfigError::new(LAYER, "redis_url", "is not a valid Redis URL"))?;
        let conn_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(0);
        let conn = {
            let _enter = runtime.enter();
            client
                .get_connection_manager_lazy(conn_config)
                .map_err(|_| {
                    ConfigError::new(LAYER, "redis_url", "could not set up a connection")
                })?
        };
        let replica: Arc<str> =
            Arc::from(self.replica_id.unwrap_or_else(random_replica_id).as_str());
        let base = format!("{}{{{}}}:", self.prefix, self.fleet);
        let (view_tx, view_rx) = watch::channel(FleetView::new(replica.clone()));
        let task = Task {
            breaker: breaker.clone(),
            conn,
            script: Script::new(SYNC_SCRIPT),
            keys: [
                format!("{base}state"),
                format!("{base}replicas"),
                format!("{base}lease"),
            ],
            settings,
            replica,
            view: view_tx,
            applied_epoch: 0,
            held: false,
            probing: None,
            verdict: None,
            fleet_until: None,
            stale_open: false,
        };
        let leave = Leave {
            runtime: runtime.clone(),
            conn: task.conn.clone(),
            replicas_key: task.keys[1].clone(),
            replica: task.replica.clone(),
            timeout: task.settings.timeout,
        };
        let join = runtime.spawn(task.run());
        Ok(FleetHandle {
            local: breaker,
            view: view_rx,
            _task: Arc::new(AbortOnDrop { task: join, leave }),
        })
    }

    fn validate(&self, breaker: &Breaker) -> Result<Settings, ConfigError> {
        if self.fleet.is_empty() || self.fleet.len() > 200 {
            return Err(ConfigError::new(
                LAYER,
                "fleet",
                "must be 1 to 200 bytes long",
            ));
        }
        if self.prefix.is_empty() {
            return Err(ConfigError::new(LAYER, "prefix", "must not be empty"));
        }
        if let Some(id) = &self.replica_id {
            if id.is_empty() || id.len() > 200 {
                return Err(ConfigError::new(
                    LAYER,
                    "replica_id",
                    "must be 1 to 200 bytes long",
                ));
            }
        }
        if self.interval < Duration::from_millis(1) || self.interval > Duration::from_secs(60) {
            return Err(ConfigError::new(
                LAYER,
                "interval",
                "must be between 1 ms and 60 s",
            ));
        }
        if self.timeout.is_zero()
            || self.timeout > self.interval
            || self.timeout > Duration::from_secs(10)
        {
            return Err(ConfigError::new(
                LAYER,
                "timeout",
                "must be greater than zero and at most the interval and 10 s",
            ));
        }
        if self.min_replicas == 0 {
            return Err(ConfigError::new(
                LAYER,
                "min_replicas",
                "must be at least 1",
            ));
        }
        if !(0.0..=1.0).contains(&self.min_replica_fraction) {
            return Err(ConfigError::new(
                LAYER,
                "min_replica_fraction",
                "must be between 0 and 1",
            ));
        }
        let at_least_interval = |d: Option<Duration>, default: Duration, field: &'static str| {
            let d = d.unwrap_or(default);
            if d < self.interval || d > Duration::from_secs(3600) {
                Err(ConfigError::new(
                    LAYER,
                    field,
                    "must be at least the interval and at most an hour",
                ))
            } else {
                Ok(d)
            }
        };
        let liveness = at_least_interval(self.liveness, self.interval * 3, "liveness")?;
        let hold = at_least_interval(self.hold, self.interval * 4, "hold")?;
        let lease = at_least_interval(
            self.probe_lease,
            (self.interval * 4).max(Duration::from_secs(2)),
            "probe_lease",
        )?;
        let cfg = breaker.config();
        Ok(Settings {
            interval: self.interval,
            timeout: self.timeout,
            liveness_ms: millis(liveness),
            hold,
            lease_ms: millis(lease),
            ttl_ms: millis((liveness * 20).max(Duration::from_secs(60))),
            min_replicas: self.min_replicas,
            min_replica_fraction: self.min_replica_fraction,
            minimum_calls: cfg.minimum_calls,
            failure_rate: cfg.failure_rate,
            slow_call_rate: if cfg.slow_call_duration.is_some() {
                cfg.slow_call_rate
            } else {
                -1.0
            },
            open_ms: millis(cfg.open.base()),
            max_open_ms: i64::try_from(millis(cfg.open.max()))
                .unwrap_or(i64::MAX / 4)
                .saturating_mul(2)
                .saturating_add(1000),
        })
    }
}

fn random_replica_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let hash = RandomState::new().hash_one((nanos, std::process::id()));
    format!("replica-{hash:016x}")
}

/// Validated settings of a running sync.
#[derive(Debug, Clone)]
struct Settings {
    interval: Duration,
    timeout: Duration,
    liveness_ms: u64,
    hold: Duration,
    lease_ms: u64,
    ttl_ms: u64,
    min_replicas: u32,
    min_replica_fraction: f64,
    minimum_calls: u64,
    failure_rate: f64,
    slow_call_rate: f64,
    open_ms: u64,
    /// The longest open period (ms) the fleet's state may report before it
    /// is taken for garbage: twice the longest this breaker can set (its
    /// open duration's `max`: a trip sets the base, a failed probe's
    /// verdict at most the max), plus one second.
    max_open_ms: i64,
}

/// The fleet as this replica last saw it, from [`FleetHandle::fleet`].
///
/// For a health page, say, next to the local breaker's state:
///
/// ```no_run
/// use seawall_circuit_breaker::{FleetHandle, State};
///
/// fn health(fleet: &FleetHandle) -> String {
///     let view = fleet.fleet();
///     format!(
///         "local {} / fleet {} (epoch {}, {} of {} replicas failing, {})",
///         fleet.local().state().as_str(),
///         view.state.map_or("unknown", State::as_str),
///         view.epoch,
///         view.failing_replicas,
///         view.live_replicas,
///         if view.connected { "synced" } else { "judging alone" },
///     )
/// }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FleetView {
    /// This replica's id.
    pub replica_id: Arc<str>,
    /// Whether the last sync reached Redis in time. `false`: the breaker
    /// judges alone.
    pub connected: bool,
    /// The fleet's state: `Closed`, `Open`, or `HalfOpen` (open period over,
    /// waiting for the probe lease holder's verdict). `None` before the
    /// first successful sync.
    pub state: Option<State>,
    /// The fleet's epoch: one more for every trip and verdict.
    pub epoch: u64,
    /// While the fleet is `Open`, the time left in its open period.
    pub open_remaining: Option<Duration>,
    /// While `HalfOpen`, the replica holding the probe lease.
    pub probe_holder: Option<String>,
    /// Replicas that synced within the liveness period.
    pub live_replicas: u32,
    /// Live replicas whose own window fails at the breaker's threshold.
    pub failing_replicas: u32,
    /// Calls in the fleet's combined window (current epoch).
    pub calls: u64,
    /// Failures in the fleet's combined window.
    pub failures: u64,
    /// Slow calls in the fleet's combined window.
    pub slow_calls: u64,
    /// Whether the local breaker is held open by the fleet.
    pub held_open: bool,
    /// Whether this replica holds the probe lease and probes for the fleet.
    pub probing: bool,
    /// When the last successful sync finished.
    pub last_sync: Option<Instant>,
    /// Successful syncs.
    pub syncs: u64,
    /// Syncs that failed or timed out.
    pub failed_syncs: u64,
}

impl FleetView {
    fn new(replica_id: Arc<str>) -> Self {
        Self {
            replica_id,
            connected: false,
            state: None,
            epoch: 0,
            open_remaining: None,
            probe_holder: None,
            live_replicas: 0,
            failing_replicas: 0,
            calls: 0,
            failures: 0,
            slow_calls: 0,
            held_open: false,
            probing: false,
            last_sync: None,
            syncs: 0,
            failed_syncs: 0,
        }
    }
}

/// A running fleet sync: the local breaker's [`Handle`] and the fleet's
/// view, from [`FleetSync::spawn`].
///
/// Cheap to clone; the sync stops when the last clone is dropped (the local
/// breaker then judges alone, after at most one [`hold`](FleetSync::hold)).
///
/// With no Redis to reach, the breaker keeps judging alone and the view
/// says so:
///
/// ```
/// use std::time::Duration;
/// use seawall_circuit_breaker::{CircuitBreakerLayer, FleetSync, State};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let breaker = CircuitBreakerLayer::new();
/// // Nothing listens on port 1.
/// let fleet = FleetSync::builder("redis://127.0.0.1:1", "inventory")
///     .interval(Duration::from_millis(10))
///     .timeout(Duration::from_millis(10))
///     .spawn(breaker.handle())
///     .expect("valid settings");
///
/// let mut views = fleet.subscribe();
/// let view = views
///     .wait_for(|v| v.failed_syncs > 0)
///     .await
///     .expect("the sync runs")
///     .clone();
/// assert!(!view.connected);
/// assert_eq!(view.state, None); // never heard from the fleet
/// assert_eq!(fleet.local().state(), State::Closed);
/// # }
/// ```
#[derive(Clone)]
pub struct FleetHandle {
    local: Handle,
    view: watch::Receiver<FleetView>,
    _task: Arc<AbortOnDrop>,
}

impl fmt::Debug for FleetHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetHandle")
            .field("local", &self.local)
            .field("fleet", &*self.view.borrow())
            .finish_non_exhaustive()
    }
}

impl FleetHandle {
    /// The local breaker: its state, metrics, events, overrides. A
    /// forced-open or disabled breaker is left alone by the fleet.
    pub fn local(&self) -> &Handle {
        &self.local
    }

    /// The fleet as of the last sync.
    pub fn fleet(&self) -> FleetView {
        self.view.borrow().clone()
    }

    /// A receiver that sees the fleet view after every sync.
    pub fn subscribe(&self) -> watch::Receiver<FleetView> {
        self.view.clone()
    }
}

/// Stops the sync task when the last [`FleetHandle`] goes, and publishes
/// the replica's leave: its entry is deleted (one `HDEL`, bounded by the
/// timeout, in a spawned task) so that it stops counting at once rather
/// than for one more liveness period.
struct AbortOnDrop {
    task: JoinHandle<()>,
    leave: Leave,
}

struct Leave {
    runtime: tokio::runtime::Handle,
    conn: ConnectionManager,
    replicas_key: String,
    replica: Arc<str>,
    timeout: Duration,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.task.abort();
        let Leave {
            runtime,
            conn,
            replicas_key,
            replica,
            timeout,
        } = &self.leave;
        let mut conn = conn.clone();
        let (key, replica, timeout) = (replicas_key.clone(), replica.clone(), *timeout);
        // Sent on the task's own connection, after anything it sent: Redis
        // applies them in order. (A sync the aborted task sends after this,
        // a tiny window, leaves an entry that counts until liveness, as
        // after a crash.)
        runtime.spawn(async move {
            let mut hdel = redis::cmd("HDEL");
            hdel.arg(key).arg(&*replica);
            let _ = tokio::time::timeout(timeout, hdel.query_async::<Value>(&mut conn)).await;
        });
    }
}

/// What the fleet said in one round trip.
#[derive(Debug)]
struct Reply {
    epoch: u64,
    open: bool,
    remaining_ms: i64,
    holder: Option<String>,
    live: u32,
    calls: u64,
    failures: u64,
    slow: u64,
    failing: u32,
    event: i64,
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn parse(reply: &Value) -> Option<Reply> {
    let Value::Array(items) = reply else {
        return None;
    };
    if items.len() != 10 {
        return None;
    }
    let count = |v: &Value| int(v).and_then(|n| u64::try_from(n).ok());
    let small = |v: &Value| int(v).and_then(|n| u32::try_from(n).ok());
    let holder = text(&items[3])?;
    Some(Reply {
        epoch: count(&items[0])?,
        open: text(&items[1])? == "open",
        remaining_ms: int(&items[2])?,
        holder: (!holder.is_empty()).then_some(holder),
        live: small(&items[4])?,
        calls: count(&items[5])?,
        failures: count(&items[6])?,
        slow: count(&items[7])?,
        failing: small(&items[8])?,
        event: int(&items[9])?,
    })
}

/// A half-open verdict of this replica's probes, to publish.
#[derive(Debug, Clone, Copy)]
struct Verdict {
    epoch: u64,
    /// `None`: closed; `Some(d)`: open again for `d`.
    open_for: Option<Duration>,
}

struct Task {
    breaker: Handle,
    conn: ConnectionManager,
    script: Script,
    keys: [String; 3],
    settings: Settings,
    replica: Arc<str>,
    view: watch::Sender<FleetView>,
    /// The fleet epoch whose state this replica has applied (its counts are
    /// tagged with it).
    applied_epoch: u64,
    /// The local breaker is open on the fleet's word.
    held: bool,
    /// Holding the probe lease: the local state word when the breaker was
    /// let go half-open.
    probing: Option<u64>,
    verdict: Option<Verdict>,
    /// End of the fleet's open period, on this replica's clock.
    fleet_until: Option<Instant>,
    /// The fleet is open at the applied epoch, over, and this replica is
    /// not held (it judged alone while Redis was away).
    stale_open: bool,
}

impl Task {
    async fn run(mut self) {
        let mut changes = self.breaker.subscribe();
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            // A local transition (a trip, a probe verdict) is published at
            // once rather than at the next tick.
            tokio::select! {
                _ = tick.tick() => {}
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    changes.borrow_and_update();
                }
            }
            self.step().await;
        }
    }

    fn local(&self) -> &Breaker {
        self.breaker.breaker()
    }

    async fn step(&mut self) {
        if self.probing.is_some() {
            // A probe lost past `max_half_open_wait` is noticed here too, not
            // only on the next admission (an idle lease holder gets none):
            // the breaker opens again and the verdict below says so, rather
            // than renewing the lease while half-open forever.
            self.local().fleet_reopen_lost_probe();
        }
        let (word, counts) = self.local().fleet_snapshot();
        let local = state_of(word);
        self.note_verdict(word);
        let counts = match local {
            State::Closed | State::Open | State::HalfOpen => counts,
            State::ForcedOpen | State::Disabled => Counts::default(),
        };
        let want_lease = (self.held && self.probing.is_none() && local == State::Open)
            || (self.stale_open && !self.held && local == State::Closed);
        let renew = self.probing.is_some() && local == State::HalfOpen;
        let s = &self.settings;
        let mut call = self.script.prepare_invoke();
        for key in &self.keys {
            call.key(key.as_str());
        }
        let (verdict, verdict_epoch, verdict_ms) = match self.verdict {
            None => ("", 0, 0),
            Some(Verdict {
                epoch,
                open_for: None,
            }) => ("closed", epoch, 0),
            Some(Verdict {
                epoch,
                open_for: Some(d),
            }) => ("open", epoch, millis(d)),
        };
        call.arg(&*self.replica)
            .arg(self.applied_epoch)
            .arg(self.applied_epoch)
            .arg(counts.calls)
            .arg(counts.failures)
            .arg(counts.slow)
            .arg(s.liveness_ms)
            .arg(s.minimum_calls)
            .arg(s.failure_rate)
            .arg(s.slow_call_rate)
            .arg(s.min_replicas)
            .arg(s.min_replica_fraction)
            .arg(s.open_ms)
            .arg(verdict)
            .arg(verdict_epoch)
            .arg(verdict_ms)
            .arg(u8::from(want_lease))
            .arg(s.lease_ms)
            .arg(s.ttl_ms)
            .arg(u8::from(renew));
        let mut conn = self.conn.clone();
        let reply = tokio::time::timeout(s.timeout, call.invoke_async::<Value>(&mut conn)).await;
        match reply.ok().and_then(Result::ok).as_ref().and_then(parse) {
            // An open period longer than any this fleet can set is garbage
            // in Redis, not a decision: judged alone, like a bad reply.
            Some(reply) if reply.open && reply.remaining_ms > s.max_open_ms => self.lost(),
            Some(reply) => self.apply(&reply),
            None => self.lost(),
        }
    }

    /// Turns the local outcome of this replica's probes into a verdict to
    /// publish.
    fn note_verdict(&mut self, word: u64) {
        let Some(released) = self.probing else {
            return;
        };
        if self.verdict.is_some() || epoch_of(word) <= epoch_of(released) {
            return;
        }
        match state_of(word) {
            State::Closed => {
                self.verdict = Some(Verdict {
                    epoch: self.applied_epoch,
                    open_for: None,
                });
            }
            State::Open => {
                let open_for = self
                    .breaker
                    .metrics()
                    .open_remaining
                    .unwrap_or(Duration::ZERO);
                self.verdict = Some(Verdict {
                    epoch: self.applied_epoch,
                    open_for: Some(open_for),
                });
            }
            State::HalfOpen => {}
            // An operator took over: no verdict; the lease runs out.
            State::ForcedOpen | State::Disabled => {
                self.probing = None;
                self.held = false;
            }
        }
    }

    fn apply(&mut self, r: &Reply) {
        let now = Instant::now();
        let mine = r.holder.as_deref() == Some(&*self.replica);
        if r.event == EVENT_VERDICT {
            // Our verdict is the fleet's state now; the local breaker is in
            // it already.
            self.verdict = None;
            self.probing = None;
            self.applied_epoch = r.epoch;
            self.held = r.open;
        } else if self.verdict.is_some_and(|v| v.epoch != r.epoch) {
            // The fleet moved on: the verdict is stale.
            self.verdict = None;
            self.probing = None;
        }
        let remaining = Duration::from_millis(u64::try_from(r.remaining_ms).unwrap_or(0));
        let over = r.open && r.remaining_ms <= 0;
        self.fleet_until = r.open.then(|| now + remaining);
        let (word, counts) = self.local().fleet_snapshot();
        let local = state_of(word);
        if !r.open {
            if r.epoch != self.applied_epoch {
                if self.held {
                    self.local().fleet_close(r.epoch);
                }
                self.held = false;
                self.probing = None;
                self.verdict = None;
                self.applied_epoch = r.epoch;
            }
            self.stale_open = false;
        } else if r.epoch != self.applied_epoch {
            // A new decision: a trip, or a verdict that opens it again.
            self.applied_epoch = r.epoch;
            self.probing = None;
            self.verdict = None;
            self.stale_open = false;
            let until = (now + remaining).max(now + self.settings.hold);
            self.local().fleet_open_until(until, r.epoch);
            self.held = matches!(self.local().state(), State::Open | State::HalfOpen);
        } else if self.held {
            match self.probing {
                None if mine && over && local == State::Open => {
                    // The lease is ours: let the local breaker probe now.
                    self.local().fleet_open_until(now, r.epoch);
                    self.probing = Some(self.local().fleet_snapshot().0);
                }
                None if local == State::Open => {
                    let until = (now + remaining).max(now + self.settings.hold);
                    self.local().fleet_open_until(until, r.epoch);
                }
                None if local == State::Closed => {
                    // Closed by an operator's reset: judged alone from now.
                    self.held = false;
                }
                Some(released) if !mine && self.verdict.is_none() && word == released => {
                    // The lease ran out before the first probe: hold again.
                    self.probing = None;
                    let until = now + self.settings.hold;
                    self.local().fleet_open_until(until, r.epoch);
                }
                _ => {}
            }
        } else if local == State::Open {
            // Back after a failed sync, still open: the fleet holds it
            // again rather than let it probe on its own.
            self.held = true;
            self.stale_open = false;
            let until = (now + remaining).max(now + self.settings.hold);
            self.local().fleet_open_until(until, r.epoch);
        } else if over && local == State::Closed && self.healthy_alone(counts) {
            // The fleet stayed open while this replica judged alone, probed
            // and closed, and its calls since are healthy: with the lease,
            // its local verdict closes the fleet.
            self.stale_open = true;
            if mine && self.verdict.is_none() {
                self.verdict = Some(Verdict {
                    epoch: r.epoch,
                    open_for: None,
                });
            }
        }
        let state = match (r.open, over) {
            (false, _) => State::Closed,
            (true, false) => State::Open,
            (true, true) => State::HalfOpen,
        };
        let held = self.held;
        let probing = self.probing.is_some();
        self.view.send_modify(|v| {
            v.connected = true;
            v.state = Some(state);
            v.epoch = r.epoch;
            v.open_remaining = (state == State::Open).then_some(remaining);
            v.probe_holder = if state == State::HalfOpen {
                r.holder.clone()
            } else {
                None
            };
            v.live_replicas = r.live;
            v.failing_replicas = r.failing;
            v.calls = r.calls;
            v.failures = r.failures;
            v.slow_calls = r.slow;
            v.held_open = held;
            v.probing = probing;
            v.last_sync = Some(now);
            v.syncs += 1;
        });
    }

    /// Whether this replica's own calls since it closed say the dependency
    /// is healthy: some calls, under the failure and slow-call thresholds.
    /// A metrics-only breaker, which never opens, has no such verdict.
    fn healthy_alone(&self, c: Counts) -> bool {
        let cfg = self.local().config();
        if cfg.metrics_only || c.calls == 0 {
            return false;
        }
        #[allow(clippy::cast_precision_loss)]
        let (calls, failures, slow) = (c.calls as f64, c.failures as f64, c.slow as f64);
        failures / calls < cfg.failure_rate
            && (cfg.slow_call_duration.is_none() || slow / calls < cfg.slow_call_rate)
    }

    /// Redis failed or timed out: local judgement, at once.
    fn lost(&mut self) {
        let now = Instant::now();
        if self.held && self.local().state() == State::Open {
            let until = self.fleet_until.filter(|u| *u > now).unwrap_or(now);
            self.local().fleet_open_until(until, self.applied_epoch);
        }
        self.held = false;
        self.probing = None;
        self.verdict = None;
        self.view.send_modify(|v| {
            v.connected = false;
            v.held_open = false;
            v.probing = false;
            v.failed_syncs += 1;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(items: Vec<Value>) -> Value {
        Value::Array(items)
    }

    fn good(holder: &str) -> Vec<Value> {
        vec![
            Value::Int(3),
            Value::BulkString(b"open".to_vec()),
            Value::Int(-5),
            Value::BulkString(holder.as_bytes().to_vec()),
            Value::Int(3),
            Value::Int(60),
            Value::Int(40),
            Value::Int(0),
            Value::Int(2),
            Value::Int(0),
        ]
    }

    #[test]
    fn parses_the_script_reply() {
        let r = parse(&reply(good("r1"))).expect("well formed");
        assert_eq!(r.epoch, 3);
        assert!(r.open);
        assert_eq!(r.remaining_ms, -5);
        assert_eq!(r.holder.as_deref(), Some("r1"));
        assert_eq!(
            (r.live, r.calls, r.failures, r.slow, r.failing),
            (3, 60, 40, 0, 2)
        );
        let r = parse(&reply(good(""))).expect("well formed");
        assert_eq!(r.holder, None);
    }

    /// Anything else is a failed sync (local judgement), never a panic.
    #[test]
    fn a_malformed_reply_is_none() {
        assert!(parse(&Value::Nil).is_none());
        assert!(parse(&reply(good("r1")[..9].to_vec())).is_none());
        let mut negative = good("r1");
        negative[5] = Value::Int(-1);
        assert!(parse(&reply(negative)).is_none());
        let mut wrong = good("r1");
        wrong[1] = Value::Int(1);
        assert!(parse(&reply(wrong)).is_none());
    }

    #[test]
    fn durations_go_to_redis_in_whole_milliseconds_of_at_least_one() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_micros(1500)), 1);
        assert_eq!(millis(Duration::from_secs(2)), 2000);
    }

    #[test]
    fn random_replica_ids_differ() {
        assert_ne!(random_replica_id(), random_replica_id());
    }
}
