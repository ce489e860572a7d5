//! `fleet-outage` against a real Redis, in wall time: twenty replicas at
//! 2 requests per second each, every call failing for 3 s. Local breakers
//! never see the 20 calls they need before the outage ends, so every
//! replica keeps retrying into the dead dependency; breakers sharing one
//! state through Redis trip together at once.
//!
//! Needs Redis at `REDIS_URL` (default `redis://127.0.0.1:6379`); when it
//! is unreachable the test says why and passes, unless
//! `SEAWALL_REQUIRE_SERVICES=1`.

use std::time::Duration;

use seawall_lab::fleet::{redis_reachable, redis_url, run_fleet};
use seawall_lab::scenario::Scenario;
use seawall_lab::stacks::StackKind;

fn check(seed: u64) {
    let s = Scenario::defaults()
        .into_iter()
        .find(|s| s.name == "fleet-outage")
        .unwrap();
    let r = run_fleet(&s, seed, Duration::from_secs(6), &redis_url(), |_| {}).unwrap();
    let figures = |kind| &r.get(kind).unwrap().figures.overall;
    let local = figures(StackKind::Seawall);
    let fleet = figures(StackKind::SeawallFleet);
    let (l, f) = (
        local.fault_attempts_per_request.unwrap(),
        fleet.fault_attempts_per_request.unwrap(),
    );
    // Local breakers stay closed: retries go on hitting the dead dependency.
    assert!(
        l >= 1.5,
        "seed {seed}: local {l} attempts/request in the fault"
    );
    // The fleet trips on the replicas' summed windows: a fraction of that.
    assert!(
        f <= 1.0 && f <= 0.5 * l,
        "seed {seed}: fleet {f} against local {l} attempts/request in the fault"
    );
    let open = &r
        .get(StackKind::SeawallFleet)
        .unwrap()
        .figures
        .series
        .breaker_open;
    assert!(!open.is_empty(), "seed {seed}: no fleet breaker opened");
    // Every request is answered, by the dependency or the fallback.
    for x in [local, fleet] {
        assert!(x.ok_pct + x.degraded_pct > 99.9, "seed {seed}: {x:?}");
    }
}

#[test]
fn fleet_outage_shared_breakers_stop_the_retries_local_ones_never_trip() {
    if let Err(why) = redis_reachable(&redis_url()) {
        assert!(
            std::env::var("SEAWALL_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "SEAWALL_REQUIRE_SERVICES=1 and {why}"
        );
        eprintln!("skipping fleet-outage: {why}");
        return;
    }
    // Seed 1 and two others, side by side (wall time; little CPU each).
    let runs: Vec<_> = [1_u64, 2, 3]
        .into_iter()
        .map(|seed| std::thread::spawn(move || check(seed)))
        .collect();
    for run in runs {
        run.join().unwrap();
    }
}
