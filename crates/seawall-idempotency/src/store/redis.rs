use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use super::{millis, Claim, Completion, Store, StoreFuture};
use crate::error::StoreError;
use crate::key::{FencingToken, Fingerprint, StoreKey};
use crate::record::StoredResponse;

/// Claims with `SET NX PX`: the key is free (never used, or its lease or
/// retention ran out and Redis expired it) or it is not. When it is not, the
/// same round trip returns the record and its remaining TTL.
const CLAIM: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
";

/// Replaces the claim by the response only if the caller's token still
/// holds it (`ARGV[1]` is the in-flight value's prefix: `P` and the token).
const COMPLETE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 33) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

const RENEW: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 33) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

const RELEASE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 33) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// Records in Redis, shared by every replica that uses the same server and
/// prefix (feature `redis`).
///
/// Each record is one string key, `{prefix}{scope hash}`, whose TTL in
/// Redis is the lease while in flight and the retention once completed:
///
/// - an in-flight value is `P`, the 32-character token, then the 32-byte
///   fingerprint;
/// - a completed value is `C` followed by the encoded [`StoredResponse`]
///   (which starts with the fingerprint).
///
/// A claim is one `EVALSHA` (a `SET NX PX` that, when it fails, also returns
/// the existing value and its `PTTL`); completion and release are one
/// token-checked `EVALSHA` each. A first request therefore costs two round
/// trips and a replay one (plus one `EVAL` per script the first time a
/// server sees it). A lease renewal is one token-checked `PEXPIRE`.
///
/// # Memory bound
///
/// Records live in Redis, not in this process: each is at most the layer's
/// `max_stored_body` plus its headers and about 100 bytes, and lives for
/// the lease, then the retention. Bound the total with Redis's `maxmemory`
/// and set **`maxmemory-policy noeviction`**: every record has a TTL, so a
/// `volatile-*` (or `allkeys-*`) policy would evict live records and let
/// their handlers run a second time, while `noeviction` makes new claims
/// fail, which the layer answers with 503 (fail closed).
/// [`check_eviction_policy`](Self::check_eviction_policy) checks this at
/// start-up.
///
/// The store works on any [`ConnectionLike`] that can be cloned (a
/// [`ConnectionManager`], a `MultiplexedConnection`, or a wrapper of
/// either).
#[derive(Clone)]
pub struct RedisStore<C = ConnectionManager> {
    conn: C,
    prefix: Arc<str>,
    scripts: Arc<Scripts>,
}

struct Scripts {
    claim: Script,
    complete: Script,
    release: Script,
    renew: Script,
}

impl RedisStore {
    /// The default key prefix.
    pub const DEFAULT_PREFIX: &'static str = "seawall:idempotency:";

    /// A store on the Redis server at `url` (e.g. `redis://127.0.0.1:6379`).
    ///
    /// Connects lazily: a server that is down when the store is created
    /// fails requests with 503 until it is back. Connection attempts and
    /// responses time out after one second, so a store that is down fails
    /// fast instead of holding requests.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(StoreError::unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1);
        let conn = client
            .get_connection_manager_lazy(config)
            .map_err(StoreError::unavailable)?;
        Ok(Self::with_connection(conn))
    }
}

impl<C> RedisStore<C> {
    /// A store using `conn` for every command.
    pub fn with_connection(conn: C) -> Self {
        Self {
            conn,
            prefix: Arc::from(RedisStore::DEFAULT_PREFIX),
            scripts: Arc::new(Scripts {
                claim: Script::new(CLAIM),
                complete: Script::new(COMPLETE),
                release: Script::new(RELEASE),
                renew: Script::new(RENEW),
            }),
        }
    }

    /// Sets the prefix of the Redis keys (default
    /// [`DEFAULT_PREFIX`](RedisStore::DEFAULT_PREFIX)).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<Arc<str>>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The Redis key holding the record of `key`.
    pub fn record_key(&self, key: &StoreKey) -> String {
        format!("{}{}", self.prefix, key.to_hex())
    }

    /// The connection the store uses.
    pub fn connection(&self) -> &C {
        &self.conn
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Checks that the server never evicts records: its
    /// `maxmemory-policy` must be `noeviction`. Any other policy can drop a
    /// live record when Redis is full (every record has a TTL, so even the
    /// `volatile-*` policies apply) and let its handler run a second time.
    ///
    /// Call it once at start-up. Fails with
    /// [`StoreErrorKind::Misconfigured`](crate::StoreErrorKind::Misconfigured)
    /// for an evicting policy, and with `Unavailable` if the server cannot be
    /// asked (managed services that disable `CONFIG` among them: check the
    /// policy in their console instead).
    pub async fn check_eviction_policy(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let reply: std::collections::HashMap<String, String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut conn)
            .await
            .map_err(StoreError::unavailable)?;
        match reply.get("maxmemory-policy") {
            Some(policy) => refuse_evicting_policy(policy),
            None => Err(StoreError::unavailable(
                "the server did not report its maxmemory-policy",
            )),
        }
    }
}

fn refuse_evicting_policy(policy: &str) -> Result<(), StoreError> {
    if policy.eq_ignore_ascii_case("noeviction") {
        Ok(())
    } else {
        Err(StoreError::misconfigured(format!(
            "redis maxmemory-policy is {policy}, which can evict live idempotency records; \
             set it to noeviction"
        )))
    }
}

impl<C> fmt::Debug for RedisStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn in_flight_prefix(token: &FencingToken) -> String {
    format!("P{}", token.as_str())
}

fn decode_existing(value: &[u8], ttl: i64, fingerprint: &Fingerprint) -> Result<Claim, StoreError> {
    match value.split_first() {
        Some((b'P', rest)) if rest.len() == FencingToken::LEN + 32 => {
            if rest[FencingToken::LEN..] != fingerprint.as_bytes()[..] {
                return Ok(Claim::Mismatch);
            }
            let retry_after = Duration::from_millis(u64::try_from(ttl).unwrap_or(0));
            Ok(Claim::InFlight { retry_after })
        }
        Some((b'C', rest)) => {
            let (stored_fp, response) = StoredResponse::decode(rest)
                .ok_or_else(|| StoreError::corrupt("unreadable record in redis"))?;
            if stored_fp == *fingerprint {
                Ok(Claim::Completed(response))
            } else {
                Ok(Claim::Mismatch)
            }
        }
        _ => Err(StoreError::corrupt("unknown value in redis")),
    }
}

impl<C> Store for RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    fn claim<'a>(
        &'a self,
        key: &'a StoreKey,
        fingerprint: &'a Fingerprint,
        lease: Duration,
    ) -> StoreFuture<'a, Claim> {
        Box::pin(async move {
            let token = FencingToken::random();
            let mut value = in_flight_prefix(&token).into_bytes();
            value.extend_from_slice(fingerprint.as_bytes());
            let mut conn = self.conn.clone();
            let reply: Value = self
                .scripts
                .claim
                .key(self.record_key(key))
                .arg(value)
                .arg(millis(lease))
                .invoke_async(&mut conn)
                .await
                .map_err(StoreError::unavailable)?;
            match reply {
                Value::Int(1) => Ok(Claim::Claimed(token)),
                Value::Array(items) => match items.as_slice() {
                    [Value::BulkString(v), Value::Int(ttl)] => {
                        decode_existing(v, *ttl, fingerprint)
                    }
                    _ => Err(StoreError::corrupt("unexpected claim reply from redis")),
                },
                _ => Err(StoreError::corrupt("unexpected claim reply from redis")),
            }
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a FencingToken,
        fingerprint: &'a Fingerprint,
        response: &'a StoredResponse,
        retention: Duration,
    ) -> StoreFuture<'a, Completion> {
        Box::pin(async move {
            let encoded = response.encode(fingerprint);
            let mut value = Vec::with_capacity(1 + encoded.len());
            value.push(b'C');
            value.extend_from_slice(&encoded);
            let mut conn = self.conn.clone();
            let stored: i64 = self
                .scripts
                .complete
                .key(self.record_key(key))
                .arg(in_flight_prefix(token))
                .arg(value)
                .arg(millis(retention))
                .invoke_async(&mut conn)
                .await
                .map_err(StoreError::unavailable)?;
            Ok(if stored == 1 {
                Completion::Stored
            } else {
                Completion::Fenced
            })
        })
    }

    fn release<'a>(&'a self, key: &'a StoreKey, token: &'a FencingToken) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let released: i64 = self
                .scripts
                .release
                .key(self.record_key(key))
                .arg(in_flight_prefix(token))
                .invoke_async(&mut conn)
                .await
                .map_err(StoreError::unavailable)?;
            Ok(released == 1)
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a FencingToken,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let renewed: i64 = self
                .scripts
                .renew
                .key(self.record_key(key))
                .arg(in_flight_prefix(token))
                .arg(millis(lease))
                .invoke_async(&mut conn)
                .await
                .map_err(StoreError::unavailable)?;
            Ok(renewed == 1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreErrorKind;

    #[test]
    fn only_noeviction_is_accepted() {
        assert!(refuse_evicting_policy("noeviction").is_ok());
        for evicting in [
            "allkeys-lru",
            "allkeys-lfu",
            "allkeys-random",
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
        ] {
            let err = refuse_evicting_policy(evicting).unwrap_err();
            assert_eq!(err.kind(), StoreErrorKind::Misconfigured);
            let why = std::error::Error::source(&err).unwrap().to_string();
            assert!(why.contains(evicting), "{why}");
        }
    }
}
