//! `--real`: the stacks over loopback HTTP in wall time (a short scenario,
//! so the test takes a few seconds).

use std::time::Duration;

use seawall_lab::real::run_real;
use seawall_lab::scenario::Scenario;
use seawall_lab::stacks::StackKind;

const LOSSY_POSTS: &str = r#"
name = "lossy-posts"
duration = "2.5s"
drain = "1s"
[arrivals]
rate = 60
post = true
[[upstream]]
name = "orders"
capacity = 16
latency = { dist = "fixed", value = "5ms" }
[[upstream.fault]]
start = "0s"
end = "2.5s"
lose_response_rate = 0.2
"#;

#[test]
fn over_real_http_seawall_posts_have_no_duplicates_and_tower_retries_do() {
    let s = Scenario::from_toml("lossy-posts", LOSSY_POSTS).unwrap();
    let r = run_real(
        &s,
        1,
        &[StackKind::Tower, StackKind::Seawall],
        Duration::from_millis(2500),
        |_| {},
    )
    .unwrap();
    assert_eq!(r.scenario, "lossy-posts (real HTTP)");
    let tower = &r.get(StackKind::Tower).unwrap().figures.overall;
    let seawall = &r.get(StackKind::Seawall).unwrap().figures.overall;
    assert!(tower.requests > 100, "{}", tower.requests);
    assert!(tower.duplicates > 5, "{tower:?}");
    assert_eq!(seawall.duplicates, 0, "{seawall:?}");
    assert!(seawall.ok_pct > 95.0, "{seawall:?}");
    assert!(tower.attempts_per_request > 1.1, "{tower:?}");
}
