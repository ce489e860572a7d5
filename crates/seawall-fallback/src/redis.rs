//! A last-known-good tier shared by a fleet of replicas through Redis.

use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use seawall_core::ConfigError;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::layer::LAYER;

/// Where a [`last_known_good_shared`](crate::Builder::last_known_good_shared)
/// tier keeps its answers besides (or instead of) this process: a Redis
/// server every replica of a service reaches, so that a replica that
/// started after its dependency went down still has an answer to give.
///
/// - Each answer is written once, after it was recorded, by a spawned task
///   (never on the request's path), with `SET … PX <max staleness>`: Redis
///   drops it once it is too stale to serve. At most
///   [`max_writes_in_flight`](Self::max_writes_in_flight) writes run at
///   once; further answers are not written while they do.
/// - On a failure, the local cache is asked first (unless
///   [`without_local_cache`](Self::without_local_cache)), then Redis with
///   one `GET`.
/// - Every Redis call is bounded by [`timeout`](Self::timeout). Redis down,
///   slow, or holding an unreadable value: the tier is skipped (the next
///   tier answers), never an error, and a recording is simply not written.
/// - What may be stored and to whom it is served are the rules of the local
///   tier, unchanged (RFC 9111's shared-cache rules, `Vary`, success
///   only; see [`Http`](crate::Http#what-the-last-known-good-tier-stores)).
///   Values bigger than [`max_value_size`](Self::max_value_size) are not
///   written.
///
/// Redis keys are the prefix followed by the SHA-256 (hex) of the bytes
/// the key value feeds to a hasher, so every replica running the same build
/// on the same architecture computes the same Redis key for equal keys.
/// The default prefix is [`DEFAULT_PREFIX`](Self::DEFAULT_PREFIX) followed
/// by the layer's [name](crate::Builder::name) and `:`
/// (`seawall:last-known-good:fallback:` for a layer left unnamed), so two
/// layers with different names never read each other's answers even when
/// their keys are equal (two services keyed by path). Layers that share a
/// name and a Redis share answers: give each its own name, or its own
/// [`prefix`](Self::prefix).
///
/// # Memory bound
///
/// In this process: the local cache's bound (see
/// [`LastKnownGood`](crate::LastKnownGood#memory-bound)), plus at most
/// `max_writes_in_flight` encoded values waiting to be written. In Redis:
/// each value is at most `max_value_size` bytes plus its key and lives for
/// the staleness; bound the total with Redis's `maxmemory` and an eviction
/// policy such as `volatile-lru` (losing a last-known-good answer costs a
/// fallback, nothing more).
#[derive(Clone)]
pub struct RedisLastKnownGood {
    pub(crate) conn: ConnectionManager,
    /// Set by [`open`](Self::open): the client and runtime to build the
    /// connection again when [`timeout`](Self::timeout) changes, so the
    /// connection's own timeouts are the configured one.
    opened: Option<(redis::Client, tokio::runtime::Handle)>,
    /// `None`: the default, [`Self::DEFAULT_PREFIX`] and the layer's name.
    pub(crate) prefix: Option<Arc<str>>,
    pub(crate) timeout: Duration,
    pub(crate) max_value_size: usize,
    pub(crate) max_writes_in_flight: usize,
    pub(crate) local: bool,
}

impl RedisLastKnownGood {
    /// The start of the default key prefix, which continues with the
    /// layer's name and `:`.
    pub const DEFAULT_PREFIX: &'static str = "seawall:last-known-good:";

    /// The longest timeout accepted: 10 seconds. A fallback waits for it.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(10);

    /// A store on the Redis server at `url` (e.g. `redis://127.0.0.1:6379`).
    ///
    /// Connects lazily: a server that is down when the layer is built is
    /// skipped until it is back. Must be called inside a Tokio runtime (the
    /// connection is driven by a task); outside one it returns an error.
    pub fn open(url: &str) -> Result<Self, ConfigError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError::new(
                LAYER,
                "redis",
                "must be opened inside a Tokio runtime",
            ));
        }
        let client = redis::Client::open(url)
            .map_err(|_| ConfigError::new(LAYER, "redis", "is not a valid Redis URL"))?;
        let conn = Self::connect(&client, Self::default_timeout())
            .map_err(|_| ConfigError::new(LAYER, "redis", "could not set up a connection"))?;
        let mut store = Self::with_connection(conn);
        store.opened = Some((client, tokio::runtime::Handle::current()));
        Ok(store)
    }

    /// A lazy connection whose connect and response timeouts are `timeout`
    /// (each call is also bounded by it from outside).
    fn connect(client: &redis::Client, timeout: Duration) -> redis::RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(0);
        client.get_connection_manager_lazy(config)
    }

    /// A store using `conn` for every command.
    pub fn with_connection(conn: ConnectionManager) -> Self {
        Self {
            conn,
            opened: None,
            prefix: None,
            timeout: Self::default_timeout(),
            max_value_size: 256 * 1024 + 16 * 1024,
            max_writes_in_flight: 64,
            local: true,
        }
    }

    const fn default_timeout() -> Duration {
        Duration::from_millis(100)
    }

    /// The prefix of the Redis keys, used as given (default
    /// [`DEFAULT_PREFIX`](Self::DEFAULT_PREFIX) followed by the layer's
    /// name and `:`). Give each layer its own: layers with the same prefix
    /// and equal keys serve each other's answers.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<Arc<str>>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// How long each Redis call may take before the tier is skipped
    /// (default 100 ms, at most [`MAX_TIMEOUT`](Self::MAX_TIMEOUT)). For a
    /// store made by [`open`](Self::open), the connection's own connect and
    /// response timeouts are set to it too; a connection given to
    /// [`with_connection`](Self::with_connection) keeps its own, so give it
    /// timeouts of at least this one.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        if let Some((client, runtime)) = &self.opened {
            // Not yet connected (lazy): nothing is lost by replacing it. An
            // out-of-range timeout is refused when the layer is built.
            if !timeout.is_zero() && timeout <= Self::MAX_TIMEOUT {
                let _enter = runtime.enter();
                if let Ok(conn) = Self::connect(client, timeout) {
                    self.conn = conn;
                }
            }
        }
        self
    }

    /// The largest encoded answer written to Redis (default 272 KiB: the
    /// default body limit plus room for headers).
    #[must_use]
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.max_value_size = bytes;
        self
    }

    /// How many writes may wait for Redis at once (default 64); answers
    /// recorded while that many are pending are not written.
    #[must_use]
    pub fn max_writes_in_flight(mut self, writes: usize) -> Self {
        self.max_writes_in_flight = writes;
        self
    }

    /// Keeps answers in Redis only, not in a local cache too. By default
    /// the local cache is asked first and Redis on a local miss.
    #[must_use]
    pub fn without_local_cache(mut self) -> Self {
        self.local = false;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.prefix.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::new(LAYER, "prefix", "must not be empty"));
        }
        if self.timeout.is_zero() || self.timeout > Self::MAX_TIMEOUT {
            return Err(ConfigError::new(
                LAYER,
                "timeout",
                "must be greater than zero and at most 10 s",
            ));
        }
        if self.max_value_size == 0 {
            return Err(ConfigError::new(
                LAYER,
                "max_value_size",
                "must be at least 1",
            ));
        }
        if self.max_writes_in_flight == 0 {
            return Err(ConfigError::new(
                LAYER,
                "max_writes_in_flight",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for RedisLastKnownGood {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLastKnownGood")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("max_value_size", &self.max_value_size)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

pub(crate) type Encode<V> = fn(&V) -> Option<Vec<u8>>;
pub(crate) type Decode<V> = fn(&[u8]) -> Option<V>;
pub(crate) type RemoteRead<V> = Pin<Box<dyn Future<Output = Option<(V, Duration)>> + Send>>;

/// The Redis side of a store: encodes, writes and reads answers.
pub(crate) struct Remote<V> {
    redis: RedisLastKnownGood,
    /// The prefix in use: the configured one, or the default with the
    /// layer's name once the layer is built.
    prefix: OnceLock<Arc<str>>,
    max_staleness: Duration,
    encode: Encode<V>,
    decode: Decode<V>,
    writes: Arc<Semaphore>,
}

impl<V: Send + 'static> Remote<V> {
    pub(crate) fn new(
        redis: RedisLastKnownGood,
        max_staleness: Duration,
        encode: Encode<V>,
        decode: Decode<V>,
    ) -> Self {
        let writes = Arc::new(Semaphore::new(redis.max_writes_in_flight));
        let prefix = OnceLock::new();
        if let Some(configured) = &redis.prefix {
            let _ = prefix.set(configured.clone());
        }
        Self {
            redis,
            prefix,
            max_staleness,
            encode,
            decode,
            writes,
        }
    }

    pub(crate) fn local(&self) -> bool {
        self.redis.local
    }

    /// Called when the layer is built: without a configured prefix, keys
    /// start with the default prefix, `layer` and `:`.
    pub(crate) fn name_layer(&self, layer: &str) {
        let _ = self.prefix.get_or_init(|| default_prefix(layer));
    }

    fn prefix(&self) -> &str {
        self.prefix.get_or_init(|| default_prefix(LAYER)).as_ref()
    }

    /// The Redis key of `key`.
    pub(crate) fn key<K: Hash>(&self, key: &K) -> String {
        struct Sha(Sha256);
        impl Hasher for Sha {
            fn finish(&self) -> u64 {
                0
            }
            fn write(&mut self, bytes: &[u8]) {
                self.0.update(bytes);
            }
        }
        let mut sha = Sha(Sha256::new());
        key.hash(&mut sha);
        let digest = sha.0.finalize();
        let prefix = self.prefix();
        let mut out = String::with_capacity(prefix.len() + 64);
        out.push_str(prefix);
        for byte in digest {
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        out
    }

    /// Writes `value` under `key` from a spawned task, if a write slot is
    /// free, a runtime is running and the value fits.
    pub(crate) fn write(&self, key: String, value: &V) {
        let Ok(permit) = self.writes.clone().try_acquire_owned() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(encoded) = (self.encode)(value) else {
            return;
        };
        let stored_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        let mut frame = Vec::with_capacity(encoded.len() + 8);
        frame.extend_from_slice(&stored_at.to_le_bytes());
        frame.extend_from_slice(&encoded);
        if frame.len() > self.redis.max_value_size {
            return;
        }
        let ttl = u64::try_from(self.max_staleness.as_millis()).unwrap_or(u64::MAX);
        let mut conn = self.redis.conn.clone();
        let timeout = self.redis.timeout;
        runtime.spawn(async move {
            let mut set = redis::cmd("SET");
            set.arg(&key).arg(frame).arg("PX").arg(ttl.max(1));
            let set = set.query_async::<()>(&mut conn);
            // Redis down or slow: this answer is not shared, nothing more.
            let _ = tokio::time::timeout(timeout, set).await;
            drop(permit);
        });
    }

    /// Reads the answer under `key`: `None` if absent, too stale,
    /// unreadable, or Redis did not answer in time.
    pub(crate) fn read(&self, key: String) -> RemoteRead<V> {
        let mut conn = self.redis.conn.clone();
        let timeout = self.redis.timeout;
        let decode = self.decode;
        let max_staleness = self.max_staleness;
        Box::pin(async move {
            let mut get = redis::cmd("GET");
            get.arg(&key);
            let get = get.query_async::<Option<Vec<u8>>>(&mut conn);
            let frame = tokio::time::timeout(timeout, get).await.ok()?.ok()??;
            let (stored_at, encoded) = frame.split_first_chunk::<8>()?;
            let stored_at = UNIX_EPOCH + Duration::from_millis(u64::from_le_bytes(*stored_at));
            // Another replica's clock may be ahead: a negative age is zero.
            let age = SystemTime::now()
                .duration_since(stored_at)
                .unwrap_or(Duration::ZERO);
            if age > max_staleness {
                return None;
            }
            Some((decode(encoded)?, age))
        })
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// [`RedisLastKnownGood::DEFAULT_PREFIX`], the layer's name and `:`. Keys
/// end in 64 hex digits, so no name's keys are another name's.
fn default_prefix(layer: &str) -> Arc<str> {
    Arc::from(format!("{}{layer}:", RedisLastKnownGood::DEFAULT_PREFIX))
}
