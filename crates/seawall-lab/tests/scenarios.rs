//! The qualitative results of the default scenarios, at a fixed seed and at
//! other seeds. Scenarios run in paused virtual time; the heavy ones are
//! scaled down (`Scenario::scaled`) to keep the debug-build suite fast.

use seawall_lab::recorder::{Figures, Recovery};
use seawall_lab::run::{run_scenario, ScenarioResult};
use seawall_lab::scenario::Scenario;
use seawall_lab::stacks::StackKind;

const SEED: u64 = 1;
const OTHER_SEEDS: [u64; 3] = [2, 3, 4];

fn scenario(name: &str) -> Scenario {
    Scenario::defaults()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap()
}

fn run(s: &Scenario, seed: u64, kinds: &[StackKind]) -> ScenarioResult {
    run_scenario(s, seed, kinds, |_| {}).unwrap()
}

fn overall(r: &ScenarioResult, kind: StackKind) -> &Figures {
    &r.get(kind).unwrap().figures.overall
}

fn route<'a>(r: &'a ScenarioResult, kind: StackKind, name: &str) -> &'a Figures {
    r.get(kind)
        .unwrap()
        .figures
        .by_route
        .iter()
        .find(|f| f.route.as_deref() == Some(name))
        .unwrap()
}

fn check_outage(seed: u64) {
    let s = scenario("outage");
    let r = run(&s, seed, &[StackKind::Tower, StackKind::Seawall]);
    let seawall = overall(&r, StackKind::Seawall);
    let tower = overall(&r, StackKind::Tower);
    let ours = seawall.fault_attempts_per_request.unwrap();
    let theirs = tower.fault_attempts_per_request.unwrap();
    assert!(
        ours <= 1.1,
        "seed {seed}: seawall attempts/request in the fault {ours}"
    );
    assert!(
        theirs >= 2.0,
        "seed {seed}: tower attempts/request in the fault {theirs}"
    );
    // The breaker may have opened just before the fault ended: it waits its
    // open duration, then one probe (a ~20 ms call) closes it; plus one
    // 100 ms step of the measurement.
    let bound = r.breaker_open_s + 0.1 + 0.1;
    match seawall.recovery {
        Recovery::After(t) => assert!(t <= bound, "seed {seed}: recovered after {t} s > {bound}"),
        other => panic!("seed {seed}: seawall did not recover: {other:?}"),
    }
    // Breaker open periods were recorded for the chart.
    let open = &r
        .get(StackKind::Seawall)
        .unwrap()
        .figures
        .series
        .breaker_open;
    assert!(
        !open.is_empty(),
        "seed {seed}: no breaker-open period recorded"
    );
}

#[test]
fn outage_seawall_stops_hammering_and_recovers_within_open_duration_plus_a_probe() {
    check_outage(SEED);
}

fn check_overload(seed: u64) {
    let s = scenario("overload");
    let r = run(&s, seed, &[StackKind::None, StackKind::Seawall]);
    let none = overall(&r, StackKind::None);
    let seawall = overall(&r, StackKind::Seawall);
    let healthy = none.healthy_p99_ms.unwrap();
    let ours = seawall.fault_p99_ms.unwrap();
    assert!(
        ours <= 3.0 * healthy,
        "seed {seed}: seawall p99 in the overload {ours} ms > 3 x healthy {healthy} ms"
    );
    // Without resilience the queue, hence the p99, grows for as long as the
    // overload lasts: each 10 s of it ends far worse than the last.
    let p99 = &r.get(StackKind::None).unwrap().figures.series.p99_ms;
    let at = |sec: usize| p99[sec].unwrap_or(f64::INFINITY);
    let (after10, after20, after30) = (at(24), at(34), at(44));
    assert!(
        after10 > 10.0 * healthy,
        "seed {seed}: {after10} ms after 10 s of overload"
    );
    assert!(
        after20 > after10 + 4000.0 && after30 > after20 + 4000.0,
        "seed {seed}: p99 {after10} → {after20} → {after30} ms"
    );
    assert!(
        none.unfinished > 0,
        "seed {seed}: the backlog outlives the run"
    );
}

#[test]
fn overload_seawall_keeps_p99_within_3x_healthy_while_no_resilience_grows_without_bound() {
    check_overload(SEED);
}

fn check_slow_dependency(seed: u64) {
    let s = scenario("slow-dependency").scaled(0.5);
    let r = run(&s, seed, &[StackKind::None, StackKind::Seawall]);
    let search = route(&r, StackKind::Seawall, "search");
    let healthy = search.healthy_p99_ms.unwrap();
    let during = search.fault_p99_ms.unwrap();
    assert!(
        (during - healthy).abs() <= 0.2 * healthy,
        "seed {seed}: search p99 {healthy} ms before, {during} ms while inventory hangs"
    );
    assert!(
        search.ok_pct > 99.9,
        "seed {seed}: search ok {}%",
        search.ok_pct
    );
    // Without isolation the hung calls take the whole pool: search starves.
    let starved = route(&r, StackKind::None, "search");
    assert!(starved.ok_pct < 50.0, "seed {seed}: {}", starved.ok_pct);
}

#[test]
fn slow_dependency_bulkhead_keeps_the_healthy_route_p99_within_20_percent() {
    check_slow_dependency(SEED);
}

fn check_duplicate_posts(seed: u64) {
    let s = scenario("duplicate-posts");
    let r = run(&s, seed, &[StackKind::Tower, StackKind::Seawall]);
    let seawall = overall(&r, StackKind::Seawall);
    let tower = overall(&r, StackKind::Tower);
    assert_eq!(seawall.duplicates, 0, "seed {seed}");
    assert!(seawall.ok_pct > 97.0, "seed {seed}: {}", seawall.ok_pct);
    assert!(tower.duplicates > 100, "seed {seed}: {}", tower.duplicates);
}

#[test]
fn duplicate_posts_seawall_creates_no_duplicates() {
    check_duplicate_posts(SEED);
}

#[test]
fn retry_storm_unbudgeted_retries_stay_overloaded_seawall_recovers() {
    let s = scenario("retry-storm").scaled(0.25);
    let r = run(&s, SEED, &[StackKind::Tower, StackKind::Seawall]);
    let tower = overall(&r, StackKind::Tower);
    let seawall = overall(&r, StackKind::Seawall);
    assert!(tower.fault_attempts_per_request.unwrap() >= 2.0);
    assert!(seawall.fault_attempts_per_request.unwrap() <= 1.2);
    assert_eq!(tower.recovery, Recovery::Never, "{tower:?}");
    match seawall.recovery {
        Recovery::After(t) => assert!(t <= 10.0, "{t}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn brownout_seawall_sheds_attempts_and_tail_latency() {
    let s = scenario("brownout");
    let r = run(&s, SEED, &[StackKind::Tower, StackKind::Seawall]);
    let tower = overall(&r, StackKind::Tower);
    let seawall = overall(&r, StackKind::Seawall);
    assert!(
        seawall.fault_attempts_per_request.unwrap()
            < 0.5 * tower.fault_attempts_per_request.unwrap()
    );
    assert!(seawall.fault_p99_ms.unwrap() < tower.fault_p99_ms.unwrap());
    // Every request is answered, by the dependency or the fallback.
    assert!(seawall.ok_pct + seawall.degraded_pct > 99.9);
}

// The same claims at other seeds, one test per scenario so that they run in
// parallel.

#[test]
fn outage_claims_hold_at_other_seeds() {
    OTHER_SEEDS.into_iter().for_each(check_outage);
}

#[test]
fn overload_claims_hold_at_other_seeds() {
    OTHER_SEEDS.into_iter().for_each(check_overload);
}

#[test]
fn slow_dependency_claims_hold_at_other_seeds() {
    OTHER_SEEDS.into_iter().for_each(check_slow_dependency);
}

#[test]
fn duplicate_posts_claims_hold_at_other_seeds() {
    OTHER_SEEDS.into_iter().for_each(check_duplicate_posts);
}

#[test]
fn same_seed_same_figures() {
    let s = scenario("outage").scaled(0.3);
    let a = serde_json::to_string(&run(&s, 9, &[StackKind::Seawall])).unwrap();
    let b = serde_json::to_string(&run(&s, 9, &[StackKind::Seawall])).unwrap();
    assert_eq!(a, b);
    let c = serde_json::to_string(&run(&s, 10, &[StackKind::Seawall])).unwrap();
    assert_ne!(a, c);
}

fn check_slow_tail(seed: u64) {
    let s = scenario("slow-tail");
    let budget = s.client.hedge.unwrap().budget;
    let r = run(&s, seed, &[StackKind::Seawall, StackKind::SeawallHedge]);
    let plain = overall(&r, StackKind::Seawall);
    let hedged = overall(&r, StackKind::SeawallHedge);
    // Nothing fails: neither stack needs a fallback.
    assert!(plain.ok_pct > 99.99 && hedged.ok_pct > 99.99, "seed {seed}");
    // Without a hedge the slow mode (250-500 ms) is the p99.9; with one,
    // a slow call is overtaken by its copy: p99.9 falls at least tenfold.
    let (before, after) = (plain.p999_ms.unwrap(), hedged.p999_ms.unwrap());
    assert!(
        before > 250.0,
        "seed {seed}: p99.9 without hedging {before} ms"
    );
    assert!(
        after * 10.0 <= before,
        "seed {seed}: p99.9 {before} ms → {after} ms with hedging"
    );
    assert!(
        hedged.p99_ms.unwrap() * 10.0 <= plain.p99_ms.unwrap(),
        "seed {seed}: p99 {:?} → {:?}",
        plain.p99_ms,
        hedged.p99_ms
    );
    // The fast path is untouched.
    assert!(
        (hedged.p50_ms.unwrap() - plain.p50_ms.unwrap()).abs() <= 1.0,
        "seed {seed}"
    );
    // The extra load stays within the hedge budget, and hedges did fire.
    assert!(
        (plain.attempts_per_request - 1.0).abs() < 1e-9,
        "seed {seed}"
    );
    let extra = hedged.attempts_per_request - 1.0;
    assert!(
        extra > 0.005 && extra <= budget,
        "seed {seed}: hedges added {extra} attempts per request (budget {budget})"
    );
}

#[test]
fn slow_tail_hedging_cuts_p999_tenfold_within_its_budget() {
    check_slow_tail(SEED);
}

#[test]
fn slow_tail_claims_hold_at_other_seeds() {
    OTHER_SEEDS.into_iter().for_each(check_slow_tail);
}

#[test]
fn only_scenarios_with_a_hedge_run_the_hedged_stack() {
    assert_eq!(
        scenario("slow-tail").stacks().last(),
        Some(&StackKind::SeawallHedge)
    );
    assert_eq!(scenario("brownout").stacks(), StackKind::ALL.to_vec());
}

#[test]
fn duplicate_posts_beyond_the_default_store_bound_still_reflect_the_layer() {
    // Five times the traffic and capacity: 15,000 keys in a minute, more
    // than the 10,000 live records a default `MemoryStore` holds (with the
    // default 24 h retention every record is live). The lab sizes seawall's
    // store for the run, so no key is refused with `idempotency_store_full`.
    // (With a default store, this run answered 61% of the POSTs: a third of
    // them met a full store.) What remains is the retry budget's doing: at
    // 250 POSTs/s, its 10% + 10/s is less than the 20% lost responses need,
    // so about 5% get the fallback instead of a third attempt.
    let s = scenario("duplicate-posts").scaled(5.0);
    let r = run(&s, SEED, &[StackKind::Seawall]);
    let seawall = overall(&r, StackKind::Seawall);
    assert!(seawall.requests > 12_000, "{}", seawall.requests);
    assert_eq!(seawall.duplicates, 0);
    assert!(seawall.ok_pct > 90.0, "{}", seawall.ok_pct);
    assert!(seawall.ok_pct + seawall.degraded_pct > 99.9);
}

fn check_preset_outage(seed: u64) {
    // `seawall::stack::client()` with its own defaults (10% over a 30 s
    // window, 100 calls minimum, 2 s backoff, 20% budget), given the
    // scenario's timeouts and open duration. Its retry jitter is unseeded,
    // so only the qualitative result is checked.
    let s = scenario("outage");
    assert!(s.stacks().contains(&StackKind::SeawallPreset));
    let r = run(&s, seed, &[StackKind::SeawallPreset]);
    let preset = overall(&r, StackKind::SeawallPreset);
    let during = preset.fault_attempts_per_request.unwrap();
    assert!(
        during <= 1.1,
        "seed {seed}: {during} attempts/request in the fault"
    );
    match preset.recovery {
        Recovery::After(t) => assert!(t <= r.breaker_open_s, "seed {seed}: {t} s"),
        other => panic!("seed {seed}: the preset did not recover: {other:?}"),
    }
}

#[test]
fn outage_the_client_preset_also_stops_hammering_and_recovers() {
    check_preset_outage(SEED);
}

#[test]
fn preset_claims_hold_at_other_seeds() {
    OTHER_SEEDS.into_iter().for_each(check_preset_outage);
}
