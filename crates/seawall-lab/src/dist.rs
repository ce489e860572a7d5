//! Random numbers for the simulation: service times and arrival schedules,
//! all from seeded generators so a run is reproducible.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::scenario::{Latency, Process, Scenario};

/// A seeded generator derived from the run's seed and a purpose, so that
/// the arrivals do not change when, say, the upstream draws more numbers.
pub fn rng(seed: u64, stream: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// A standard normal deviate (Box–Muller).
fn normal(rng: &mut SmallRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// The 99th percentile of the standard normal distribution.
const Z99: f64 = 2.326_347_874;

impl Latency {
    /// Draws one service time.
    pub fn sample(&self, rng: &mut SmallRng) -> Duration {
        let secs = match *self {
            Latency::Fixed { value } => value.0.as_secs_f64(),
            Latency::Uniform { min, max } => {
                let (a, b) = (min.0.as_secs_f64(), max.0.as_secs_f64());
                a + (b - a) * rng.random::<f64>()
            }
            Latency::Exponential { mean } => {
                -mean.0.as_secs_f64() * (1.0 - rng.random::<f64>()).ln()
            }
            Latency::Lognormal { median, p99 } => {
                let mu = median.0.as_secs_f64().ln();
                let sigma = (p99.0.as_secs_f64() / median.0.as_secs_f64()).ln() / Z99;
                (mu + sigma * normal(rng)).exp()
            }
            Latency::Mixture {
                min,
                max,
                slow_share,
                slow_factor,
            } => {
                let (a, b) = (min.0.as_secs_f64(), max.0.as_secs_f64());
                let fast = a + (b - a) * rng.random::<f64>();
                if rng.random::<f64>() < slow_share {
                    fast * slow_factor
                } else {
                    fast
                }
            }
        };
        Duration::from_secs_f64(secs.clamp(0.0, 3600.0))
    }

    /// The mean service time.
    pub fn mean(&self) -> Duration {
        let secs = match *self {
            Latency::Fixed { value } => value.0.as_secs_f64(),
            Latency::Uniform { min, max } => {
                f64::midpoint(min.0.as_secs_f64(), max.0.as_secs_f64())
            }
            Latency::Exponential { mean } => mean.0.as_secs_f64(),
            Latency::Lognormal { median, p99 } => {
                let sigma = (p99.0.as_secs_f64() / median.0.as_secs_f64()).ln() / Z99;
                median.0.as_secs_f64() * (sigma * sigma / 2.0).exp()
            }
            Latency::Mixture {
                min,
                max,
                slow_share,
                slow_factor,
            } => {
                f64::midpoint(min.0.as_secs_f64(), max.0.as_secs_f64())
                    * (1.0 + slow_share * (slow_factor - 1.0))
            }
        };
        Duration::from_secs_f64(secs)
    }
}

/// One request of the open-loop schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    /// When it arrives, from the start of the run.
    pub at: Duration,
    /// Its number, unique in the run.
    pub id: u64,
    /// The upstream (route) it goes to.
    pub route: usize,
    /// The client instance that sends it.
    pub client: usize,
}

/// The arrival schedule of a scenario: the same for every stack at a seed.
pub fn arrivals(scenario: &Scenario, seed: u64) -> Vec<Arrival> {
    let mut rng = rng(seed, 1);
    let end = scenario.duration.0.as_secs_f64();
    let shares: Vec<f64> = scenario.upstream.iter().map(|u| u.share).collect();
    let total_share: f64 = shares.iter().sum();
    let rate_at = |t: f64| {
        scenario
            .arrivals
            .surge
            .iter()
            .find(|s| s.start.0.as_secs_f64() <= t && t < s.end.0.as_secs_f64())
            .map_or(scenario.arrivals.rate, |s| s.rate)
    };
    // The next time the rate may change after `t`.
    let next_change = |t: f64| {
        scenario
            .arrivals
            .surge
            .iter()
            .flat_map(|s| [s.start.0.as_secs_f64(), s.end.0.as_secs_f64()])
            .filter(|&c| c > t)
            .fold(end, f64::min)
    };
    let mut out = Vec::new();
    let mut t = 0.0;
    let mut id = 0;
    while t < end {
        let rate = rate_at(t);
        let change = next_change(t);
        match scenario.arrivals.process {
            Process::Poisson => {
                let gap = -(1.0 - rng.random::<f64>()).ln() / rate;
                if t + gap >= change {
                    // Memorylessness lets the process restart at the change.
                    t = change;
                    continue;
                }
                t += gap;
                out.push(pick(&mut rng, &shares, total_share, t, id, scenario));
                id += 1;
            }
            Process::Fixed => {
                // Evenly spaced from the segment's start, computed from the
                // index so that no rounding drifts across the segment.
                let segment = t;
                let mut k = 0_u64;
                loop {
                    let at = segment + k as f64 / rate;
                    if at >= change - 1e-9 {
                        break;
                    }
                    out.push(pick(&mut rng, &shares, total_share, at, id, scenario));
                    id += 1;
                    k += 1;
                }
                t = change;
            }
        }
    }
    out
}

fn pick(
    rng: &mut SmallRng,
    shares: &[f64],
    total: f64,
    t: f64,
    id: u64,
    scenario: &Scenario,
) -> Arrival {
    let mut x = rng.random::<f64>() * total;
    let mut route = shares.len() - 1;
    for (i, s) in shares.iter().enumerate() {
        if x < *s {
            route = i;
            break;
        }
        x -= s;
    }
    Arrival {
        at: Duration::from_secs_f64(t),
        id,
        route,
        client: (id % scenario.arrivals.clients as u64) as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Dur;

    fn scenario(text: &str) -> Scenario {
        Scenario::from_toml("t", text).unwrap()
    }

    const BASE: &str = r#"
        name = "t"
        duration = "100s"
        [arrivals]
        rate = 50
        [[arrivals.surge]]
        start = "40s"
        end = "60s"
        rate = 200
        [[upstream]]
        name = "a"
        share = 3
        capacity = 4
        latency = { dist = "fixed", value = "10ms" }
        [[upstream]]
        name = "b"
        capacity = 4
        latency = { dist = "fixed", value = "10ms" }
    "#;

    #[test]
    fn poisson_rates_and_shares() {
        let s = scenario(BASE);
        let a = arrivals(&s, 7);
        let in_window = |from: f64, to: f64| {
            a.iter()
                .filter(|x| x.at.as_secs_f64() >= from && x.at.as_secs_f64() < to)
                .count() as f64
                / (to - from)
        };
        assert!((in_window(0.0, 40.0) - 50.0).abs() < 5.0);
        assert!((in_window(40.0, 60.0) - 200.0).abs() < 15.0);
        let route_a = a.iter().filter(|x| x.route == 0).count() as f64 / a.len() as f64;
        assert!((route_a - 0.75).abs() < 0.03, "{route_a}");
        assert_eq!(a, arrivals(&s, 7), "same seed, same schedule");
        assert_ne!(a, arrivals(&s, 8));
    }

    #[test]
    fn fixed_process_is_even() {
        let s = scenario(&BASE.replace("rate = 50", "rate = 50\nprocess = \"fixed\""));
        let a = arrivals(&s, 1);
        assert_eq!(
            a.iter().filter(|x| x.at < Duration::from_secs(40)).count(),
            2000
        );
        assert_eq!(a.len(), 2000 + 4000 + 2000);
    }

    #[test]
    fn lognormal_matches_its_percentiles() {
        let l = Latency::Lognormal {
            median: Dur(Duration::from_millis(20)),
            p99: Dur(Duration::from_millis(80)),
        };
        let mut r = rng(3, 2);
        let mut v: Vec<Duration> = (0..20_000).map(|_| l.sample(&mut r)).collect();
        v.sort();
        let p50 = v[10_000].as_secs_f64() * 1e3;
        let p99 = v[19_800].as_secs_f64() * 1e3;
        assert!((p50 - 20.0).abs() < 1.0, "{p50}");
        assert!((p99 - 80.0).abs() < 8.0, "{p99}");
        let mean = v.iter().map(Duration::as_secs_f64).sum::<f64>() / v.len() as f64;
        assert!((mean - l.mean().as_secs_f64()).abs() < 0.001);
    }

    #[test]
    fn mixture_has_its_slow_share() {
        let l = Latency::Mixture {
            min: Dur(Duration::from_millis(5)),
            max: Dur(Duration::from_millis(10)),
            slow_share: 0.02,
            slow_factor: 50.0,
        };
        let mut r = rng(5, 2);
        let v: Vec<Duration> = (0..50_000).map(|_| l.sample(&mut r)).collect();
        let slow = v.iter().filter(|d| **d > Duration::from_millis(10)).count();
        let share = slow as f64 / v.len() as f64;
        assert!((share - 0.02).abs() < 0.003, "{share}");
        assert!(v.iter().all(|d| *d >= Duration::from_millis(5)));
        assert!(v.iter().all(|d| *d <= Duration::from_millis(500)));
        assert!(v.iter().any(|d| *d >= Duration::from_millis(450)));
        let mean = v.iter().map(Duration::as_secs_f64).sum::<f64>() / v.len() as f64;
        assert!((mean - l.mean().as_secs_f64()).abs() < 0.0005, "{mean}");
    }
}
