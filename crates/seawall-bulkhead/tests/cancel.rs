//! Waiters leaving the queue from several threads at once: `queued` stays
//! exact, permits handed to departing waiters pass on, and whoever is left
//! is still served most important class first, first come first served.
//!
//! Bounded for CI; `SEAWALL_STRESS=<factor>` multiplies the number of
//! waiters (e.g. `SEAWALL_STRESS=20 cargo test -p seawall-bulkhead --test
//! cancel --release`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread;

use seawall_bulkhead::{BulkheadLayer, Handle, Priority};
use seawall_core::BoxError;
use tower::{Layer, Service};

/// A request: an id and a class.
type Job = (u32, Priority);

/// A dependency whose calls never finish and which records the order in
/// which calls start.
#[derive(Clone, Default)]
struct Recorder {
    started: Arc<Mutex<Vec<u32>>>,
}

impl Recorder {
    fn started(&self) -> usize {
        self.started.lock().unwrap().len()
    }

    fn last(&self, n: usize) -> Vec<u32> {
        let started = self.started.lock().unwrap();
        started[started.len() - n..].to_vec()
    }
}

impl Service<Job> for Recorder {
    type Response = ();
    type Error = BoxError;
    type Future = std::future::Pending<Result<(), BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (id, _): Job) -> Self::Future {
        self.started.lock().unwrap().push(id);
        std::future::pending()
    }
}

fn poll_once<F: Future + ?Sized>(f: Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

fn scale() -> usize {
    std::env::var("SEAWALL_STRESS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

fn class_of(id: u32) -> Priority {
    // Not a plain `id % 3`, so that neighbours in one thread's share are of
    // mixed classes.
    Priority::ALL[(id as usize * 7 / 3) % 3]
}

type Fut = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

#[test]
fn queued_stays_exact_while_several_threads_cancel_waiters() {
    const LIMIT: usize = 2;
    const THREADS: usize = 4;
    let waiters = 12_000 * scale();
    let layer = BulkheadLayer::builder()
        .max_concurrent(LIMIT)
        .max_queue(waiters)
        .max_wait(None)
        .priority(|job: &Job| job.1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let rec = Recorder::default();
    let mut svc = layer.layer(rec.clone());

    let total = u32::try_from(LIMIT + waiters).unwrap();
    let mut futures: Vec<(u32, Fut)> = (0..total)
        .map(|id| (id, Box::pin(svc.call((id, class_of(id)))) as Fut))
        .collect();
    for (_, f) in &mut futures {
        assert!(poll_once(f.as_mut()).is_pending());
    }
    assert_eq!((handle.in_flight(), handle.queued()), (LIMIT, waiters));
    let running: Vec<(u32, Fut)> = futures.drain(..LIMIT).collect();

    // Phase 1: four threads drop half of their waiters, newest first (the
    // order that made every departure a scan of the whole class), while a
    // fifth watches `queued` only ever fall, one by one.
    let mut shares: Vec<Vec<(u32, Fut)>> = (0..THREADS).map(|_| Vec::new()).collect();
    for (i, f) in futures.into_iter().enumerate() {
        shares[i % THREADS].push(f);
    }
    let start = Arc::new(Barrier::new(THREADS + 1));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (handle, done) = (handle.clone(), done.clone());
        thread::spawn(move || {
            let mut last = handle.queued();
            let mut seen = 0u64;
            while !done.load(Ordering::Acquire) {
                let now = handle.queued();
                assert!(now <= last, "queued rose from {last} to {now}");
                assert_eq!(handle.in_flight(), LIMIT, "nobody was granted");
                last = now;
                seen += 1;
            }
            seen
        })
    };
    let cancellers: Vec<_> = shares
        .into_iter()
        .map(|mut share| {
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                let keep = share.len() / 2;
                while share.len() > keep {
                    drop(share.pop());
                }
                share
            })
        })
        .collect();
    start.wait();
    let mut left: Vec<(u32, Fut)> = cancellers
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    done.store(true, Ordering::Release);
    assert!(watcher.join().unwrap() > 0);
    assert_eq!(handle.queued(), left.len(), "queued is exact");
    assert_eq!(handle.in_flight(), LIMIT);
    assert_eq!(handle.rejected(), 0);

    // Phase 2: the survivors are served in priority order, FIFO within a
    // class, whatever left from between them.
    left.sort_by_key(|(id, _)| (std::cmp::Reverse(class_of(*id)), *id));
    let mut left: std::collections::VecDeque<(u32, Fut)> = left.into();
    let mut running = running;
    let checked = 300.min(left.len() / LIMIT);
    for _ in 0..checked {
        let before = rec.started();
        running.clear(); // gives both permits back, to the two next waiters
        running = left.drain(..LIMIT).collect();
        for (_, f) in &mut running {
            assert!(poll_once(f.as_mut()).is_pending());
        }
        assert_eq!(rec.started(), before + LIMIT, "the next two started");
        let expected: Vec<u32> = running.iter().map(|(id, _)| *id).collect();
        assert_eq!(rec.last(LIMIT), expected, "served out of order");
        assert_eq!(handle.queued(), left.len());
    }

    // Phase 3: the rest leave from several threads while permits are
    // released and handed to waiters that are leaving at the same moment.
    let mut shares: Vec<Vec<(u32, Fut)>> = (0..THREADS).map(|_| Vec::new()).collect();
    for (i, f) in left.into_iter().enumerate() {
        shares[i % THREADS].push(f);
    }
    let start = Arc::new(Barrier::new(THREADS + 1));
    let threads: Vec<_> = shares
        .into_iter()
        .map(|mut share| {
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                while let Some(f) = share.pop() {
                    drop(f);
                }
            })
        })
        .collect();
    start.wait();
    drop(running);
    for t in threads {
        t.join().unwrap();
    }
    assert_idle(&handle, LIMIT);

    // The queue still works: new waiters queue and are counted exactly.
    let mut again: Vec<Fut> = (0..(LIMIT as u32 + 10))
        .map(|i| Box::pin(svc.call((total + i, Priority::Normal))) as Fut)
        .collect();
    for f in &mut again {
        assert!(poll_once(f.as_mut()).is_pending());
    }
    assert_eq!((handle.in_flight(), handle.queued()), (LIMIT, 10));
    drop(again);
    assert_idle(&handle, LIMIT);
}

fn assert_idle(handle: &Handle, limit: usize) {
    assert_eq!(handle.in_flight(), 0, "permits leaked");
    assert_eq!(handle.queued(), 0, "waiters leaked");
    assert_eq!(handle.available(), limit);
}
