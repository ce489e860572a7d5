//! Half-open admits exactly N probes when hundreds of tasks race for them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use seawall_circuit_breaker::{CircuitBreakerLayer, CircuitOpen, State};
use seawall_core::BoxError;
use tokio::sync::{Barrier, Semaphore};
use tower::{service_fn, Layer, Service, ServiceExt};

const TASKS: usize = 400;

fn race(probes: u32) {
    let layer = CircuitBreakerLayer::builder()
        .count_window(4)
        .minimum_calls(4)
        .open_duration(Duration::from_secs(5))
        .half_open_probes(probes)
        .max_half_open_wait(Duration::from_secs(3_600))
        .build()
        .unwrap();
    let handle = layer.handle();
    let reached = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let (r, g) = (reached.clone(), gate.clone());
    let svc = layer.layer(service_fn(move |fail: bool| {
        r.fetch_add(1, Ordering::SeqCst);
        let g = g.clone();
        async move {
            if fail {
                return Err::<(), BoxError>("boom".into());
            }
            // Probes hold their slot until the test opens the gate.
            let _ = g.acquire().await;
            Ok(())
        }
    }));

    // Trip, let the open duration pass in virtual time, and take the
    // breaker half-open with one admission that is then given back.
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(async {
            let mut svc = svc.clone();
            for _ in 0..4 {
                let _ = svc.ready().await.unwrap().call(true).await;
            }
            assert_eq!(handle.state(), State::Open);
            tokio::time::advance(Duration::from_secs(5)).await;
            let mut taker = svc.clone();
            taker.ready().await.unwrap();
            assert_eq!(handle.state(), State::HalfOpen);
            drop(taker);
            assert_eq!(handle.metrics().probes_in_flight, 0);
        });
    reached.store(0, Ordering::SeqCst);

    let rejected = Arc::new(AtomicUsize::new(0));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap()
        .block_on(async {
            let barrier = Arc::new(Barrier::new(TASKS));
            let tasks: Vec<_> = (0..TASKS)
                .map(|_| {
                    let (mut svc, barrier, rejected) =
                        (svc.clone(), barrier.clone(), rejected.clone());
                    tokio::spawn(async move {
                        barrier.wait().await;
                        let res = svc.ready().await.unwrap().call(false).await;
                        if let Err(e) = res {
                            assert!(e.is::<CircuitOpen>());
                            rejected.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            while reached.load(Ordering::SeqCst) + rejected.load(Ordering::SeqCst) < TASKS {
                tokio::task::yield_now().await;
            }
            assert_eq!(reached.load(Ordering::SeqCst), probes as usize);
            assert_eq!(rejected.load(Ordering::SeqCst), TASKS - probes as usize);
            assert_eq!(handle.metrics().probes_in_flight, probes);
            gate.close();
            for t in tasks {
                t.await.unwrap();
            }
        });
    assert_eq!(handle.state(), State::Closed);
}

#[test]
fn half_open_admits_exactly_n_among_racing_tasks() {
    for probes in [1, 3, 10, 64] {
        race(probes);
    }
}
