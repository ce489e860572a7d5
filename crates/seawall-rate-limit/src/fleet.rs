//! Fleet-wide limits: GCRA on a Redis server.
//!
//! Every decision is one `EVALSHA` of a Lua script (the script is loaded
//! with `EVAL` on first use or after a Redis restart). The script reads the
//! server's clock with `TIME`, so the replicas' clocks do not matter, checks
//! every limit of the request and, only if all admit it, moves each key's
//! TAT: the same all-or-nothing decision as the local limiter, for all
//! limits in one round trip. Each key expires (`PX`) when its bucket would
//! be full again, so idle keys vanish from Redis without a sweep.
//!
//! All keys of one decision must live on one server; with Redis Cluster put
//! a hash tag in the prefix (`"{rl}:"`).
//!
//! # When Redis is slow or down
//!
//! Each call is bounded by [`RedisBackend::timeout`] (default 50 ms), so a
//! stalled Redis never holds a request longer than that. A call that fails
//! or times out follows [`OnBackendError`]:
//!
//! - Fall back to a local limit, [`OnBackendError::Local`] (the default):
//!   decide with a limit of `rate / replicas` (and `burst / replicas`,
//!   rounded up) per key in this process, so the fleet together stays near
//!   the shared limit while Redis is away.
//! - Fail open, [`OnBackendError::FailOpen`]: admit the request.
//! - Fail closed, [`OnBackendError::FailClosed`]: refuse with
//!   [`RateLimited`] and no `Retry-After`.
//!
//! [`RateLimited`]: crate::RateLimited

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script, Value};
use seawall_core::ConfigError;

use crate::gcra::Gcra;
use crate::headers::StateWriter;
use crate::limit::{Decide, Decision};
use crate::service::Answer;

/// KEYS: one per limit. ARGV: cost, then per limit its emission interval in
/// nanoseconds and its burst in units. Returns `{admitted, wait_ns,
/// remaining_1, until_full_ns_1, ...}`; `wait_ns` is -1 when the cost
/// exceeds a burst.
///
/// Lua's numbers are doubles, exact only below 2^53, and the server's clock
/// in nanoseconds since 1970 is above that; so a TAT is stored as
/// `"seconds:nanoseconds"` and the script works with how far it is ahead of
/// `now`, in nanoseconds: exact, like the local limiter, while a bucket is
/// within about 104 days of full (beyond that the relative error is
/// 2^-53). A value in the old format (whole microseconds) is still read.
const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_us = tonumber(t[2])
local now_n = now_us * 1000
local cost = tonumber(ARGV[1])
local n = #KEYS
local aheads = {}
local wait = 0
for i = 1, n do
  local interval = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local ahead = 0
  local v = redis.call('GET', KEYS[i])
  if v then
    local s, ns = string.match(v, '^(%d+):(%d+)$')
    if s then
      ahead = (tonumber(s) - now_s) * 1000000000 + (tonumber(ns) - now_n)
    else
      local us = tonumber(v)
      if us then ahead = (us - (now_s * 1000000 + now_us)) * 1000 end
    end
    if ahead < 0 then ahead = 0 end
  end
  aheads[i] = ahead
  if cost > burst then
    wait = -1
  elseif wait >= 0 then
    local over = ahead + cost * interval - burst * interval
    if over > wait then wait = over end
  end
end
local out = {0, wait}
if wait == 0 then out[1] = 1 end
for i = 1, n do
  local interval = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local ahead = aheads[i]
  if wait == 0 then
    ahead = ahead + cost * interval
    local total = now_n + ahead
    local carry = math.floor(total / 1000000000)
    local tat = string.format('%d:%d', now_s + carry, total - carry * 1000000000)
    redis.call('SET', KEYS[i], tat, 'PX', math.floor(ahead / 1000000) + 2)
  end
  out[2 * i + 1] = math.floor((burst * interval - ahead) / interval)
  out[2 * i + 2] = ahead
end
return out
";

/// What a layer does when Redis cannot answer within the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBackendError {
    /// Decide locally with each limit's rate and burst divided by the
    /// number of replicas sharing it.
    Local {
        /// Replicas sharing the limit (at least 1).
        replicas: u32,
    },
    /// Admit the request.
    FailOpen,
    /// Refuse the request with [`RateLimited`](crate::RateLimited).
    FailClosed,
}

/// What the service does after a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failed {
    Open,
    Closed,
    Local,
}

/// Fleet-wide limits on a Redis server, for
/// [`Builder::redis`](crate::Builder::redis).
///
/// ```no_run
/// use std::time::Duration;
/// use seawall_rate_limit::{Limit, OnBackendError, Quota, RateLimitLayer, RedisBackend};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let backend = RedisBackend::open("redis://127.0.0.1:6379")?
///     .prefix("shop:rl:")
///     .timeout(Duration::from_millis(20))
///     .on_error(OnBackendError::Local { replicas: 3 });
/// let layer = RateLimitLayer::builder()
///     .limit(Limit::global("all", Quota::per_second(100)))
///     .redis(backend)
///     .build()?;
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    conn: ConnectionManager,
    prefix: Arc<str>,
    timeout: Duration,
    on_error: OnBackendError,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("on_error", &self.on_error)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// The default key prefix.
    pub const DEFAULT_PREFIX: &'static str = "seawall:rl:";

    /// A backend on the Redis server at `url`. Connects lazily, and
    /// reconnects by itself after a failure.
    pub fn open(url: &str) -> Result<Self, RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(250)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(0);
        let conn = client.get_connection_manager_lazy(config)?;
        Ok(Self::with_connection(conn))
    }

    /// A backend using `conn`.
    pub fn with_connection(conn: ConnectionManager) -> Self {
        Self {
            conn,
            prefix: Arc::from(Self::DEFAULT_PREFIX),
            timeout: Duration::from_millis(50),
            on_error: OnBackendError::Local { replicas: 1 },
        }
    }

    /// Sets the prefix of every key (default
    /// [`DEFAULT_PREFIX`](Self::DEFAULT_PREFIX)). Keys are
    /// `prefix + limit name + ":" + key`.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<Arc<str>>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The longest a decision may wait for Redis (default 50 ms).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What to do when Redis fails or times out (default: a local limit
    /// for one replica, i.e. the full rate locally; say how many replicas
    /// share the limit).
    #[must_use]
    pub fn on_error(mut self, policy: OnBackendError) -> Self {
        self.on_error = policy;
        self
    }

    pub(crate) fn fallback_replicas(&self) -> Result<Option<u64>, ConfigError> {
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(10) {
            return Err(ConfigError::new(
                "rate limit",
                "redis timeout",
                format!("must be positive and at most 10 s, got {:?}", self.timeout),
            ));
        }
        match self.on_error {
            OnBackendError::Local { replicas: 0 } => Err(ConfigError::new(
                "rate limit",
                "replicas",
                "must be at least 1",
            )),
            OnBackendError::Local { replicas } => Ok(Some(u64::from(replicas))),
            _ => Ok(None),
        }
    }

    pub(crate) fn into_backend(self, gcras: &[Gcra]) -> Backend {
        let mut params = Vec::with_capacity(gcras.len());
        for g in gcras {
            // Nanoseconds on the server too: the same interval as the local
            // limiter (and its fallback), not one rounded to microseconds.
            params.push((g.interval, g.burst));
        }
        Backend {
            conn: self.conn,
            prefix: self.prefix,
            timeout: self.timeout,
            failed: match self.on_error {
                OnBackendError::Local { .. } => Failed::Local,
                OnBackendError::FailOpen => Failed::Open,
                OnBackendError::FailClosed => Failed::Closed,
            },
            script: Script::new(GCRA_SCRIPT),
            params,
        }
    }
}

/// A built backend.
pub(crate) struct Backend {
    conn: ConnectionManager,
    prefix: Arc<str>,
    timeout: Duration,
    failed: Failed,
    script: Script,
    params: Vec<(u64, u64)>,
}

impl Backend {
    /// The Redis keys of `req`, one per limit.
    pub(crate) fn keys<Req, D: Decide<Req>>(
        &self,
        limits: &D,
        req: &Req,
        max_key_bytes: usize,
    ) -> Vec<Vec<u8>> {
        let mut keys = Vec::with_capacity(self.params.len());
        limits.redis_keys(req, max_key_bytes, &mut keys);
        for key in &mut keys {
            let mut full = Vec::with_capacity(self.prefix.len() + key.len());
            full.extend_from_slice(self.prefix.as_bytes());
            full.extend_from_slice(key);
            *key = full;
        }
        keys
    }

    /// One round trip: the script decides for every limit. A call made by
    /// a waiting request gets at most until its `deadline`, so waiting plus
    /// the call never exceeds the wait mode's bound; past it the policy
    /// decides at once.
    pub(crate) async fn decide(
        &self,
        keys: Vec<Vec<u8>>,
        names: &[Arc<str>],
        cost: u64,
        fields: bool,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Answer, Failed> {
        let mut invocation = self.script.prepare_invoke();
        for key in &keys {
            invocation.key(key.as_slice());
        }
        invocation.arg(cost);
        for (interval, burst) in &self.params {
            invocation.arg(*interval).arg(*burst);
        }
        let mut conn = self.conn.clone();
        let timeout = match deadline {
            Some(d) => self
                .timeout
                .min(d.saturating_duration_since(tokio::time::Instant::now())),
            None => self.timeout,
        };
        let reply = tokio::time::timeout(timeout, invocation.invoke_async::<Value>(&mut conn))
            .await
            .map_err(|_| self.failed)?
            .map_err(|_| self.failed)?;
        parse(&reply, names, fields).ok_or(self.failed)
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

fn parse(reply: &Value, names: &[Arc<str>], fields: bool) -> Option<Answer> {
    let Value::Array(items) = reply else {
        return None;
    };
    if items.len() != 2 + 2 * names.len() {
        return None;
    }
    let admitted = int(&items[0])? == 1;
    let wait_ns = int(&items[1])?;
    let mut writer = StateWriter::default();
    let mut binding = 0;
    let mut longest = i64::MIN;
    for (i, name) in names.iter().enumerate() {
        let remaining = int(&items[2 + 2 * i])?;
        let until_full_ns = int(&items[3 + 2 * i])?;
        if until_full_ns > longest {
            longest = until_full_ns;
            binding = i;
        }
        if fields {
            writer.push_raw(
                name,
                u64::try_from(remaining).unwrap_or(0),
                u64::try_from(until_full_ns).unwrap_or(0),
            );
        }
    }
    let decision = if admitted {
        Decision::Admit
    } else {
        Decision::Refuse {
            wait: u64::try_from(wait_ns).ok(),
            limit: binding,
        }
    };
    Some(Answer {
        decision,
        state: fields
            .then(|| writer.finish())
            .filter(|v: &HeaderValue| !v.is_empty()),
        backend_failed: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_replies_and_rejects_malformed_ones() {
        let names: Vec<Arc<str>> = vec![Arc::from("ip"), Arc::from("all")];
        let reply = Value::Array(vec![
            Value::Int(0),
            Value::Int(250_000_000),
            Value::Int(0),
            Value::Int(1_250_000_000),
            Value::Int(40),
            Value::Int(100_000_000),
        ]);
        let answer = parse(&reply, &names, true).unwrap();
        assert_eq!(
            answer.decision,
            Decision::Refuse {
                wait: Some(250_000_000),
                limit: 0
            }
        );
        assert_eq!(answer.state.unwrap(), r#""ip";r=0;t=2, "all";r=40;t=1"#);
        let never = Value::Array(vec![
            Value::Int(0),
            Value::Int(-1),
            Value::Int(0),
            Value::Int(0),
            Value::Int(0),
            Value::Int(0),
        ]);
        assert_eq!(
            parse(&never, &names, false).unwrap().decision,
            Decision::Refuse {
                wait: None,
                limit: 0
            }
        );
        assert!(parse(&Value::Int(1), &names, false).is_none());
        assert!(parse(&Value::Array(vec![Value::Int(1)]), &names, false).is_none());
    }
}
