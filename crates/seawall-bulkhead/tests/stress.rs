//! Stress in virtual time: thousands of tasks never push the bulkhead past
//! its limit, and futures dropped mid-wait or mid-call give every permit
//! back.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use seawall_bulkhead::{BulkheadLayer, Handle, Priority};
use seawall_core::BoxError;
use support::{job, Gate};
use tower::{Layer, Service, ServiceExt};

/// A dependency that counts concurrent calls and remembers the peak.
#[derive(Clone, Default)]
struct Counting {
    active: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
}

impl Service<(Priority, Duration)> for Counting {
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (_, latency): (Priority, Duration)) -> Self::Future {
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let (active, done) = (self.active.clone(), self.done.clone());
        Box::pin(async move {
            // Give other tasks (and threads) a chance to run mid-call.
            tokio::task::yield_now().await;
            tokio::time::sleep(latency).await;
            active.fetch_sub(1, Ordering::SeqCst);
            done.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

/// A small deterministic generator so the load is the same on every run.
fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *seed >> 33
}

#[tokio::test(start_paused = true)]
async fn thousands_of_tasks_never_exceed_the_limit() {
    const LIMIT: usize = 50;
    const TASKS: usize = 4_000;
    let layer = BulkheadLayer::builder()
        .max_concurrent(LIMIT)
        .max_queue(1_000)
        .max_wait(Duration::from_millis(200))
        .priority(|r: &(Priority, Duration)| r.0)
        .build()
        .unwrap();
    let handle = layer.handle();
    let dep = Counting::default();
    let svc = layer.layer(dep.clone());

    let mut seed = 7;
    let mut tasks = Vec::with_capacity(TASKS);
    for i in 0..TASKS {
        let svc = svc.clone();
        let start = Duration::from_micros(lcg(&mut seed) % 500_000);
        let latency = Duration::from_millis(1 + lcg(&mut seed) % 40);
        let priority = Priority::ALL[i % 3];
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(start).await;
            let mut outcomes = [0usize; 2];
            for _ in 0..3 {
                match svc.clone().oneshot((priority, latency)).await {
                    Ok(()) => outcomes[0] += 1,
                    Err(_) => outcomes[1] += 1,
                }
            }
            outcomes
        }));
    }
    // Sample the pool while the load runs: the permit count itself must
    // never pass the limit either.
    let watcher = {
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            for _ in 0..2_000 {
                peak = peak.max(handle.in_flight());
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            peak
        })
    };
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let [o, r] = t.await.unwrap();
        ok += o;
        refused += r;
    }
    let watched_peak = watcher.await.unwrap();

    assert_eq!(ok + refused, TASKS * 3);
    assert_eq!(
        dep.done.load(Ordering::SeqCst),
        ok,
        "every admitted call ran"
    );
    let peak = dep.peak.load(Ordering::SeqCst);
    assert!(
        peak <= LIMIT,
        "{peak} concurrent calls with a limit of {LIMIT}"
    );
    assert_eq!(peak, LIMIT, "the load saturates the pool");
    assert!(watched_peak <= LIMIT);
    assert!(refused > 0, "the load overflows the queue at times");
    assert_eq!(handle.rejected() as usize, refused);
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_threads_never_exceed_the_limit() {
    const LIMIT: usize = 8;
    let layer = BulkheadLayer::builder()
        .max_concurrent(LIMIT)
        .max_queue(10_000)
        .max_wait(None)
        .build()
        .unwrap();
    let handle = layer.handle();
    let dep = Counting::default();
    let svc = layer.layer(dep.clone());
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                for _ in 0..200 {
                    let req = (Priority::Normal, Duration::ZERO);
                    svc.clone().oneshot(req).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(dep.peak.load(Ordering::SeqCst) <= LIMIT);
    assert_eq!(dep.done.load(Ordering::SeqCst), 64 * 200);
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
    assert_eq!(handle.rejected(), 0, "an unbounded wait never refuses");
}

fn poll_once<F: Future + ?Sized>(f: Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

fn assert_empty(handle: &Handle, limit: usize) {
    assert_eq!(handle.in_flight(), 0, "permits leaked");
    assert_eq!(handle.queued(), 0, "waiters leaked");
    assert_eq!(handle.available(), limit);
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_futures_dropped_mid_wait_and_mid_call_give_every_permit_back() {
    const LIMIT: usize = 100;
    const N: u32 = 10_000;
    let layer = BulkheadLayer::builder()
        .max_concurrent(LIMIT)
        .max_queue(N as usize)
        .max_wait(Duration::from_secs(60))
        .priority(support::by_class)
        .build()
        .unwrap();
    let handle = layer.handle();
    let gate = Gate::default();
    let mut svc = layer.layer(gate.clone());

    let mut futures: Vec<_> = (0..N)
        .map(|id| {
            let class = Priority::ALL[id as usize % 3];
            Box::pin(svc.call(job(id, class)))
        })
        .collect();
    for f in &mut futures {
        assert!(poll_once(f.as_mut()).is_pending());
    }
    assert_eq!(handle.in_flight(), LIMIT);
    assert_eq!(handle.queued(), N as usize - LIMIT);
    assert_eq!(gate.active(), LIMIT);

    // Drop half the running calls: their permits pass to waiters, which
    // have not been polled since and so hold permits they never collected.
    let running: Vec<usize> = (0..futures.len())
        .filter(|&i| gate.started().contains(&(i as u32)))
        .collect();
    assert_eq!(running.len(), LIMIT);
    let mut slots: Vec<_> = futures.into_iter().map(Some).collect();
    for &i in running.iter().step_by(2) {
        slots[i] = None;
    }
    assert_eq!(handle.in_flight(), LIMIT, "handed over, not freed");
    assert_eq!(handle.queued(), N as usize - LIMIT - LIMIT / 2);

    // Drop everything else in an interleaved order: waiting, granted but
    // uncollected, and running futures alike.
    for i in (0..slots.len()).rev().step_by(2) {
        slots[i] = None;
    }
    for slot in &mut slots {
        *slot = None;
    }
    drop(slots);
    assert_empty(&handle, LIMIT);
    assert_eq!(gate.active(), 0);

    // Every permit can be taken again.
    let mut again: Vec<_> = (0..LIMIT as u32)
        .map(|i| Box::pin(svc.call(job(N + i, Priority::Critical))))
        .collect();
    for f in &mut again {
        assert!(poll_once(f.as_mut()).is_pending());
    }
    assert_eq!(handle.in_flight(), LIMIT);
    assert_eq!(gate.active(), LIMIT);
    drop(again);
    assert_empty(&handle, LIMIT);
    assert_eq!(handle.rejected(), 0);
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_services_dropped_while_waiting_in_poll_ready_give_every_permit_back() {
    const LIMIT: usize = 10;
    let layer = BulkheadLayer::builder()
        .max_concurrent(LIMIT)
        .build()
        .unwrap()
        .backpressure();
    let handle = layer.handle();
    let gate = Gate::default();
    let proto = layer.layer(gate.clone());
    let mut waker_cx = Context::from_waker(Waker::noop());
    let mut services: Vec<_> = (0..10_000).map(|_| proto.clone()).collect();
    let mut ready = 0;
    for svc in &mut services {
        if svc.poll_ready(&mut waker_cx).is_ready() {
            ready += 1;
        }
    }
    assert_eq!(ready, LIMIT);
    assert_eq!(handle.in_flight(), LIMIT);
    assert_eq!(handle.queued(), 10_000 - LIMIT);
    // Free a few permits, so some waiters are granted but never polled.
    services.drain(..5);
    assert_eq!(handle.in_flight(), LIMIT);
    drop(services);
    assert_empty(&handle, LIMIT);
}
