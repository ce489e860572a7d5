//! `fleet-outage`: seawall's local breakers against breakers that share one
//! state through Redis (`seawall_circuit_breaker::FleetSync`), over the same
//! simulated dependency.
//!
//! Every client instance of the scenario is a replica with its own stack;
//! in "seawall + fleet" each replica's breaker syncs with the others'
//! through Redis, one round trip per interval, off the request path. Redis
//! is real I/O and the fleet's open periods are timed on Redis's clock, so
//! this cannot run in paused virtual time: the scenario is compressed like
//! `--real` (windows and open time scaled together) and run in wall time,
//! in process (no HTTP). It needs Redis at `REDIS_URL` (default
//! `redis://127.0.0.1:6379`); each run uses its own key prefix.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use seawall_core::BoxError;

use crate::dist::{self, Arrival};
use crate::real::compress;
use crate::recorder::Recorder;
use crate::run::{drive_with, ScenarioResult, StackResult};
use crate::scenario::Scenario;
use crate::stacks::StackKind;
use crate::upstream::{ChaosInjector, UpstreamSet};

/// The Redis URL: `REDIS_URL`, or `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// `Ok` when something listens at the host and port of `url` (within
/// 500 ms); otherwise why not, in a sentence.
pub fn redis_reachable(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| format!("{url:?} is not a redis:// URL"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:6379")
    };
    let addr = host_port
        .to_socket_addrs()
        .map_err(|e| format!("Redis at {url}: {e}"))?
        .next()
        .ok_or_else(|| format!("Redis at {url}: no address"))?;
    TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .map(drop)
        .map_err(|e| format!("Redis at {url} is unreachable: {e}"))
}

/// Runs a `[client.fleet]` scenario, compressed to `max` seconds of
/// arrivals, through "seawall" and "seawall + fleet" in wall time, against
/// Redis at `redis_url`.
pub fn run_fleet(
    scenario: &Scenario,
    seed: u64,
    max: Duration,
    redis_url: &str,
    mut progress: impl FnMut(StackKind),
) -> Result<ScenarioResult, BoxError> {
    let mut s = compress(scenario, max);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let prefix = format!("seawall-lab:{}:{nanos}:", std::process::id());
    let fleet = s
        .client
        .fleet
        .as_mut()
        .ok_or("the scenario has no [client.fleet]")?;
    fleet.redis = Some((redis_url.to_owned(), prefix));
    let arrivals = dist::arrivals(&s, seed);
    // The stacks run side by side, each on its own runtime (their
    // dependencies are separate simulations): half the wall time.
    let runs: Vec<_> = s
        .stacks()
        .into_iter()
        .map(|kind| {
            let (s, arrivals) = (s.clone(), arrivals.clone());
            std::thread::spawn(move || run_one(&s, seed, kind, &arrivals))
        })
        .collect();
    let mut stacks = Vec::new();
    for run in runs {
        let result = run
            .join()
            .map_err(|_| "a fleet-outage run panicked")?
            .map_err(|e| -> BoxError { e.to_string().into() })?;
        progress(result.stack);
        stacks.push(result);
    }
    Ok(ScenarioResult {
        scenario: format!("{} (wall time, Redis)", s.name),
        description: s.description.clone(),
        seed,
        routes: s.upstream.iter().map(|u| u.name.clone()).collect(),
        fault_window: s
            .fault_window()
            .map(|(a, b)| (a.as_secs_f64(), b.as_secs_f64())),
        duration_s: s.duration.0.as_secs_f64(),
        breaker_open_s: s.client.breaker_open.0.as_secs_f64(),
        stacks,
    })
}

/// One stack's run in wall time, on its own runtime.
fn run_one(
    s: &Scenario,
    seed: u64,
    kind: StackKind,
    arrivals: &[Arrival],
) -> Result<StackResult, BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let figures = runtime.block_on(async {
        let recorder = Recorder::new(arrivals.len(), s.upstream.len());
        let upstreams = UpstreamSet::build(
            &s.upstream,
            seed,
            &recorder,
            &ChaosInjector,
            kind.is_seawall().then_some(arrivals.len()),
        )?;
        let routes = (0..s.upstream.len()).map(|r| upstreams.route(r)).collect();
        drive_with(s, seed, kind, arrivals, &recorder, routes).await
    })?;
    // Stops the syncs and drops what is still pending.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(StackResult {
        stack: kind,
        figures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_redis_is_a_sentence() {
        assert!(redis_reachable("http://x")
            .unwrap_err()
            .contains("redis://"));
        // Port 1 on loopback: nothing listens there.
        let err = redis_reachable("redis://127.0.0.1:1").unwrap_err();
        assert!(err.contains("unreachable"), "{err}");
    }
}
