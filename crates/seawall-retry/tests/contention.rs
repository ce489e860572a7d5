//! Marc Brooker's optimistic-concurrency contention simulation ("Exponential
//! Backoff and Jitter", AWS Architecture Blog, 2015), run through the real
//! layer in virtual time.
//!
//! N clients each want to write once to one versioned value. A write reads
//! the version, takes `WORK` to prepare, and commits only if the version is
//! unchanged (compare-and-set); otherwise it fails with a conflict and the
//! client's retry layer backs off. All clients start together, the worst case
//! and the study's setting. The table printed is the study's: total calls and
//! time to let every client through, per jitter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use seawall_core::BoxError;
use seawall_retry::{Backoff, Jitter, JitterRetryLayer};
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};

const WORK: Duration = Duration::from_millis(5);
const BASE: Duration = Duration::from_millis(5);
const CAP: Duration = Duration::from_secs(2);
const SEEDS: u64 = 8;

#[derive(Debug, Clone, Copy)]
struct Run {
    calls: u64,
    took: Duration,
}

/// Runs `clients` racing clients with `jitter` on a fresh paused runtime.
fn simulate(clients: u32, jitter: Jitter, seed: u64) -> Run {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let version = Arc::new(Mutex::new(0u64));
        let calls = Arc::new(AtomicU64::new(0));
        let store = {
            let version = version.clone();
            let calls = calls.clone();
            service_fn(move |_client: u32| {
                let version = version.clone();
                calls.fetch_add(1, Ordering::Relaxed);
                async move {
                    let read = *version.lock().unwrap();
                    tokio::time::sleep(WORK).await;
                    let mut current = version.lock().unwrap();
                    if *current == read {
                        *current += 1;
                        Ok(())
                    } else {
                        Err::<(), BoxError>("version conflict".into())
                    }
                }
            })
        };
        let layer = JitterRetryLayer::builder()
            .max_attempts(10_000)
            .backoff(Backoff::exponential(BASE))
            .max_delay(CAP)
            .jitter(jitter)
            .seed(seed)
            .no_budget()
            .build()
            .expect("valid config");
        let start = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|id| tokio::spawn(layer.layer(store.clone()).oneshot(id)))
            .collect();
        for t in tasks {
            t.await
                .expect("task")
                .expect("every client writes eventually");
        }
        assert_eq!(*version.lock().unwrap(), u64::from(clients));
        Run {
            calls: calls.load(Ordering::Relaxed),
            took: start.elapsed(),
        }
    })
}

#[test]
fn full_and_decorrelated_jitter_do_far_less_work_than_plain_exponential() {
    let jitters = [
        ("exponential (no jitter)", Jitter::None),
        ("equal jitter", Jitter::Equal),
        ("full jitter", Jitter::Full),
        ("decorrelated jitter", Jitter::Decorrelated),
    ];
    println!("mean of {SEEDS} seeded runs, virtual time");
    println!(
        "{:<24} {:>8} {:>10} {:>12}",
        "strategy", "clients", "calls", "time"
    );
    for clients in [50, 100] {
        let runs: Vec<(&str, Run)> = jitters
            .iter()
            .map(|&(name, jitter)| {
                // The mean of a few seeds, so one lucky draw decides nothing.
                let seeds = 0..SEEDS;
                let total = seeds.map(|s| simulate(clients, jitter, s)).fold(
                    Run {
                        calls: 0,
                        took: Duration::ZERO,
                    },
                    |a, r| Run {
                        calls: a.calls + r.calls,
                        took: a.took + r.took,
                    },
                );
                let mean = Run {
                    calls: total.calls / SEEDS,
                    took: total.took / SEEDS as u32,
                };
                (name, mean)
            })
            .collect();
        for (name, run) in &runs {
            println!(
                "{name:<24} {clients:>8} {:>10} {:>12.3?}",
                run.calls, run.took
            );
        }
        let none = runs[0].1.calls;
        let full = runs[2].1.calls;
        let decorrelated = runs[3].1.calls;
        // Without jitter clients stay in lock-step: exactly one wins each
        // round, so the work is quadratic.
        let n = u64::from(clients);
        assert_eq!(none, n * (n + 1) / 2, "{clients} clients without jitter");
        // The study's ordering: full and decorrelated jitter far below it.
        assert!(
            full * 3 < none,
            "{clients} clients: full {full} vs none {none}"
        );
        assert!(
            decorrelated * 3 < none,
            "{clients} clients: decorrelated {decorrelated} vs none {none}"
        );
    }
}

#[test]
fn the_simulation_is_reproducible() {
    let a = simulate(50, Jitter::Full, 7);
    let b = simulate(50, Jitter::Full, 7);
    assert_eq!(a.calls, b.calls);
    assert_eq!(a.took, b.took);
}
