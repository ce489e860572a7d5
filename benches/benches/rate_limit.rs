//! The rate limiter's allow path (the request is admitted), against
//! `tower::limit::RateLimit`, governor 0.10's keyed limiter (wrapped in the
//! thinnest tower service, as tower_governor does) and
//! `tower_resilience::ratelimiter` 0.13, in the same run (governor twice: on
//! its default TSC clock, and on `std::time::Instant`, the clock seawall
//! reads through `tokio::time::Instant` so that its tests can pause time); then the same
//! with two worker threads (many keys, and one hot key); then the Redis
//! path on loopback.
//!
//! Each single-thread iteration readies the service, calls it and polls the
//! response future with a no-op waker (`call_now`), so the figures are the
//! layers' own cost plus one call of the `#[inline(never)]` leaf. tower's
//! `RateLimit` and tower-resilience's limiter are global (they have no
//! keys); governor and seawall are measured keyed (10,000 keys, cycled) and
//! global. Every limit is set far above the request rate, so every request
//! is admitted.
//!
//! `rate_limit_contention/*`: two OS threads, each with its own clone of
//! the service, make `iters / 2` calls each; the time reported is the wall
//! time divided by `iters`, i.e. the inverse of the pair's throughput.
//!
//! `rate_limit_redis/decision`: one admitted request through a
//! `RedisBackend` (one `EVALSHA` on loopback). Before it, a fixed run of
//! 5,000 decisions through a counting TCP proxy prints the p50 / p99
//! latency of a decision, the same for a bare `PING`, and the number of
//! commands the proxy saw per decision (round trips). Skipped with a
//! message when Redis (`REDIS_URL`) is unreachable.
//!
//! Run with:
//! `cargo bench -p seawall-benches --bench rate_limit -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)] // criterion's macros generate undocumented public items

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use governor::DefaultKeyedRateLimiter;
use seawall_benches::{call_now, Leaf};
use seawall_rate_limit::{Limit, Quota, RateLimitLayer, RedisBackend};
use tower::{Layer, Service, ServiceExt};

const KEYS: u64 = 10_000;
/// Per-key rate of the keyed limiters: slow enough that a key cycled every
/// 10,000 calls is still limited (its bucket not full again) when it comes
/// back, as a real client's key is; the huge burst keeps every request
/// admitted.
const KEY_RATE: u32 = 10;
/// Decisions in the Redis path's fixed run.
const RUN: u64 = 5_000;
/// Far above any rate a benchmark reaches: every request is admitted.
const HUGE: u64 = 1 << 30;
/// seawall's quotas for "every request is admitted": 1e9/s, the most whole
/// nanoseconds per unit represent exactly (a faster rate is a ConfigError;
/// 2^30/s used to be silently enforced as 1e9/s, so this measures the same).
const SEAWALL_HUGE_RATE: u64 = 1_000_000_000;

/// governor's keyed limiter with clock `C`.
type GovernorKeyed<C> = governor::RateLimiter<
    u64,
    governor::state::keyed::DefaultKeyedStateStore<u64>,
    C,
    governor::middleware::NoOpMiddleware<<C as governor::clock::Clock>::Instant>,
>;

/// governor's keyed limiter as a tower service: check the key, then call.
struct Governed<C: governor::clock::Clock> {
    limiter: Arc<GovernorKeyed<C>>,
}

impl<C: governor::clock::Clock> Clone for Governed<C> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
        }
    }
}

impl<C: governor::clock::Clock> Service<u64> for Governed<C> {
    type Response = u64;
    type Error = &'static str;
    type Future = Ready<Result<u64, &'static str>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        if self.limiter.check_key(&req).is_err() {
            return ready(Err("rate limited"));
        }
        let res: Result<u64, Infallible> = Leaf.call(req).into_inner();
        ready(res.map_err(|e| match e {}))
    }
}

fn governor_quota() -> governor::Quota {
    let rate = NonZeroU32::new(KEY_RATE).expect("non-zero");
    let burst = NonZeroU32::new(HUGE as u32).expect("non-zero");
    governor::Quota::per_second(rate).allow_burst(burst)
}

/// governor as shipped: its default clock (quanta, the TSC).
fn governed() -> Governed<governor::clock::DefaultClock> {
    Governed {
        limiter: Arc::new(DefaultKeyedRateLimiter::keyed(governor_quota())),
    }
}

/// governor on the clock seawall reads: `std::time::Instant` (what
/// `tokio::time::Instant::now()` is when time is not paused).
fn governed_std_clock() -> Governed<governor::clock::MonotonicClock> {
    Governed {
        limiter: Arc::new(governor::RateLimiter::dashmap_with_clock(
            governor_quota(),
            governor::clock::MonotonicClock,
        )),
    }
}

fn key_quota() -> Quota {
    Quota::per_second(u64::from(KEY_RATE)).burst(HUGE)
}

fn seawall_keyed(
) -> impl Service<u64, Response = u64, Error = seawall_core::BoxError> + Clone + Send {
    RateLimitLayer::builder()
        .limit(Limit::per_key("key", key_quota(), |k: &u64| *k))
        .build()
        .expect("valid settings")
        .layer(Leaf)
}

fn run<S>(c: &mut Criterion, name: &str, mut svc: S, keyed: bool)
where
    S: Service<u64>,
    S::Error: std::fmt::Debug,
{
    let mut i = 0u64;
    c.bench_function(name, |b| {
        b.iter(|| {
            i = if keyed { (i + 1) % KEYS } else { 0 };
            black_box(call_now(&mut svc, black_box(i)))
        });
    });
}

fn allow_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    // tower's RateLimit and tower-resilience read the runtime's clock.
    let _guard = rt.enter();

    run(c, "rate_limit_allow/bare_leaf", Leaf, false);
    run(
        c,
        "rate_limit_allow/tower_rate_limit_global",
        tower::limit::RateLimitLayer::new(HUGE, Duration::from_secs(1)).layer(Leaf),
        false,
    );
    let resilience = tower_resilience::ratelimiter::RateLimiterLayer::builder()
        .limit_for_period(HUGE as usize)
        .refresh_period(Duration::from_secs(1))
        .timeout_duration(Duration::ZERO)
        .build()
        .expect("valid settings");
    run(
        c,
        "rate_limit_allow/tower_resilience_global",
        resilience.layer(Leaf),
        false,
    );
    run(c, "rate_limit_allow/governor_keyed", governed(), true);
    run(
        c,
        "rate_limit_allow/governor_keyed_std_clock",
        governed_std_clock(),
        true,
    );
    run(c, "rate_limit_allow/seawall_keyed", seawall_keyed(), true);
    let global = RateLimitLayer::builder()
        .limit(Limit::global(
            "all",
            Quota::per_second(SEAWALL_HUGE_RATE).burst(HUGE),
        ))
        .build()
        .expect("valid settings");
    run(
        c,
        "rate_limit_allow/seawall_global",
        global.layer(Leaf),
        false,
    );
    let two = RateLimitLayer::builder()
        .limit(Limit::per_key("key", key_quota(), |k: &u64| *k))
        .limit(Limit::global(
            "all",
            Quota::per_second(SEAWALL_HUGE_RATE).burst(HUGE),
        ))
        .build()
        .expect("valid settings");
    run(
        c,
        "rate_limit_allow/seawall_keyed_plus_global",
        two.layer(Leaf),
        true,
    );
}

/// Two workers, `iters / 2` calls each, keys from `key(worker, i)`.
fn contend<S>(svc: &S, iters: u64, key: fn(u64, u64) -> u64) -> Duration
where
    S: Service<u64> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    std::thread::scope(|scope| {
        for worker in 0..2 {
            let mut svc = svc.clone();
            scope.spawn(move || {
                for i in 0..iters / 2 {
                    black_box(call_now(&mut svc, key(worker, i)));
                }
            });
        }
    });
    start.elapsed()
}

fn contention(c: &mut Criterion) {
    let many: fn(u64, u64) -> u64 = |worker, i| (worker * KEYS / 2 + i) % KEYS;
    let hot: fn(u64, u64) -> u64 = |_, _| 7;
    let seawall = seawall_keyed();
    let governor = governed();
    for (name, key) in [("many_keys", many), ("hot_key", hot)] {
        c.bench_function(&format!("rate_limit_contention/{name}/governor"), |b| {
            b.iter_custom(|iters| contend(&governor, iters, key));
        });
        c.bench_function(&format!("rate_limit_contention/{name}/seawall"), |b| {
            b.iter_custom(|iters| contend(&seawall, iters, key));
        });
    }
}

/// A TCP proxy in front of Redis that counts the commands clients send.
async fn counting_proxy(
    upstream: std::net::SocketAddr,
    commands: Arc<AtomicU64>,
) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let commands = commands.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
                let mut parser = RespCounter::default();
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    commands.fetch_add(parser.feed(&buf[..n]), Ordering::Relaxed);
                }
            });
        }
    });
    addr
}

/// Counts top-level RESP arrays (commands) in a client's byte stream.
#[derive(Default)]
struct RespCounter {
    pending: Vec<u8>,
}

impl RespCounter {
    fn feed(&mut self, bytes: &[u8]) -> u64 {
        self.pending.extend_from_slice(bytes);
        let mut count = 0;
        loop {
            match command_len(&self.pending) {
                Some(len) => {
                    self.pending.drain(..len);
                    count += 1;
                }
                None => return count,
            }
        }
    }
}

fn line(buf: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let end = buf[from..].windows(2).position(|w| w == b"\r\n")? + from;
    Some((&buf[from..end], end + 2))
}

/// The length of the complete command at the start of `buf`, if complete.
fn command_len(buf: &[u8]) -> Option<usize> {
    let (head, mut at) = line(buf, 0)?;
    let n: usize = std::str::from_utf8(head.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    for _ in 0..n {
        let (bulk, next) = line(buf, at)?;
        let len: usize = std::str::from_utf8(bulk.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        at = next + len + 2;
        if at > buf.len() {
            return None;
        }
    }
    Some(at)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn redis_path(c: &mut Criterion) {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let Some(upstream) = rt.block_on(async {
        let client = seawall_rate_limit::redis::Client::open(url.as_str()).ok()?;
        let mut conn = tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        .ok()?
        .ok()?;
        let _: String = seawall_rate_limit::redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .ok()?;
        let info = client.get_connection_info();
        match info.addr() {
            seawall_rate_limit::redis::ConnectionAddr::Tcp(host, port) => {
                tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .ok()?
                    .next()
            }
            _ => None,
        }
    }) else {
        eprintln!("skipping rate_limit_redis: Redis at {url} unreachable");
        return;
    };
    let prefix = format!("seawall-bench:rl:{}:", std::process::id());
    let commands = Arc::new(AtomicU64::new(0));
    let proxied = rt.block_on(counting_proxy(upstream, commands.clone()));
    let proxied_url = format!("redis://{proxied}");

    let layer = rt.block_on(async {
        RateLimitLayer::builder()
            .limit(Limit::per_key(
                "key",
                Quota::per_second(SEAWALL_HUGE_RATE).burst(HUGE),
                |k: &u64| *k,
            ))
            .limit(Limit::global(
                "all",
                Quota::per_second(SEAWALL_HUGE_RATE).burst(HUGE),
            ))
            .redis(
                RedisBackend::open(&proxied_url)
                    .expect("url")
                    .prefix(prefix.clone())
                    .timeout(Duration::from_secs(1)),
            )
            .build()
            .expect("valid settings")
    });
    let mut svc = layer.layer(Leaf);

    // A fixed run for the latency distribution and the round trips.
    let (decisions, pings, per_decision) = rt.block_on(async {
        // First call loads the script (EVALSHA, then EVAL on NOSCRIPT).
        svc.ready()
            .await
            .expect("ready")
            .call(0)
            .await
            .expect("admitted");
        let before = commands.load(Ordering::Relaxed);
        let mut decisions = Vec::with_capacity(RUN as usize);
        for i in 0..RUN {
            let start = Instant::now();
            svc.ready()
                .await
                .expect("ready")
                .call(i % KEYS)
                .await
                .expect("admitted");
            decisions.push(start.elapsed());
        }
        let per_decision = (commands.load(Ordering::Relaxed) - before) as f64 / RUN as f64;
        let client = seawall_rate_limit::redis::Client::open(proxied_url.as_str()).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let mut pings = Vec::with_capacity(RUN as usize);
        for _ in 0..RUN {
            let start = Instant::now();
            let _: String = seawall_rate_limit::redis::cmd("PING")
                .query_async(&mut conn)
                .await
                .expect("ping");
            pings.push(start.elapsed());
        }
        decisions.sort();
        pings.sort();
        (decisions, pings, per_decision)
    });
    let total: Duration = decisions.iter().sum();
    eprintln!(
        "rate_limit_redis (through the counting proxy): {RUN} decisions, {:.0} decisions/s on one task, \
         decision p50 {:?} p99 {:?}; bare PING p50 {:?} p99 {:?}; {per_decision:.3} commands per decision",
        RUN as f64 / total.as_secs_f64(),
        percentile(&decisions, 0.5),
        percentile(&decisions, 0.99),
        percentile(&pings, 0.5),
        percentile(&pings, 0.99),
    );

    // The criterion figure, straight to Redis (no proxy).
    let direct = rt.block_on(async {
        RateLimitLayer::builder()
            .limit(Limit::per_key(
                "key",
                Quota::per_second(SEAWALL_HUGE_RATE).burst(HUGE),
                |k: &u64| *k,
            ))
            .limit(Limit::global(
                "all",
                Quota::per_second(SEAWALL_HUGE_RATE).burst(HUGE),
            ))
            .redis(
                RedisBackend::open(&url)
                    .expect("url")
                    .prefix(prefix.clone())
                    .timeout(Duration::from_secs(1)),
            )
            .build()
            .expect("valid settings")
    });
    let mut svc = direct.layer(Leaf);
    let mut i = 0u64;
    c.bench_function("rate_limit_redis/decision", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            rt.block_on(async {
                black_box(
                    svc.ready()
                        .await
                        .expect("ready")
                        .call(i)
                        .await
                        .expect("admitted"),
                )
            })
        });
    });
    // The keys expire by themselves within milliseconds; remove them anyway.
    rt.block_on(async {
        let client = seawall_rate_limit::redis::Client::open(url.as_str()).expect("url");
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
            let keys: Vec<String> = seawall_rate_limit::redis::cmd("KEYS")
                .arg(format!("{prefix}*"))
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = seawall_rate_limit::redis::cmd("DEL")
                    .arg(keys)
                    .query_async(&mut conn)
                    .await;
            }
        }
    });
}

criterion_group!(benches, allow_path, contention, redis_path);
criterion_main!(benches);
