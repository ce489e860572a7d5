//! Priority admission and shedding order under a saturated pool.

mod support;

use http::{HeaderName, Request, Response};
use seawall_bulkhead::{BulkheadFull, BulkheadLayer, HeaderPriority, Priority};
use seawall_core::BoxError;
use support::{by_class, job, run_pending, Gate};
use tower::{Layer, ServiceExt};

use Priority::{Critical, Normal, Sheddable};

#[tokio::test(start_paused = true)]
async fn shares_refuse_sheddable_first_then_normal_and_keep_the_rest_for_critical() {
    // Limit 20: sheddable work may start while fewer than 16 (80%) permits
    // are in use, normal work while fewer than 19 (95%), critical up to 20.
    let layer = BulkheadLayer::builder()
        .max_concurrent(20)
        .priority(by_class)
        .build()
        .unwrap();
    let handle = layer.handle();
    let gate = Gate::default();
    let svc = layer.layer(gate.clone());
    let mut held = Vec::new();
    let mut id = 0;
    let mut call = |class| {
        id += 1;
        tokio::spawn(svc.clone().oneshot(job(id, class)))
    };

    for _ in 0..15 {
        held.push(call(Sheddable));
    }
    run_pending().await;
    assert_eq!(handle.in_flight(), 15);
    held.push(call(Sheddable)); // the 16th: 15 < 16, admitted
    run_pending().await;
    assert_eq!(handle.in_flight(), 16);

    let shed = call(Sheddable).await.unwrap().unwrap_err();
    let shed = shed.downcast_ref::<BulkheadFull>().expect("refused");
    assert!(shed.is_shed(), "refused by share while permits remain");
    assert_eq!(shed.priority(), Some(Sheddable));

    for _ in 0..3 {
        held.push(call(Normal));
    }
    run_pending().await;
    assert_eq!(handle.in_flight(), 19);
    let err = call(Normal).await.unwrap().unwrap_err();
    assert!(err.downcast_ref::<BulkheadFull>().unwrap().is_shed());

    held.push(call(Critical));
    run_pending().await;
    assert_eq!(handle.in_flight(), 20, "critical work may use every permit");
    let err = call(Critical).await.unwrap().unwrap_err();
    assert!(
        !err.downcast_ref::<BulkheadFull>().unwrap().is_shed(),
        "simply full"
    );

    assert_eq!(handle.rejected_shed(), 2);
    assert_eq!(handle.rejected_full(), 1);
    for id in gate.started() {
        gate.finish(id);
    }
    for h in held {
        h.await.unwrap().unwrap();
    }
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_saturated_pool_admits_the_most_important_waiters_first_fifo_within_a_class() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(10)
        .max_queue(100)
        .max_wait(None)
        .priority(by_class)
        .build()
        .unwrap();
    let handle = layer.handle();
    let gate = Gate::default();
    let svc = layer.layer(gate.clone());
    let spawn = |id, class| tokio::spawn(svc.clone().oneshot(job(id, class)));

    // Saturate with critical work (ids 1..=10).
    let mut calls: Vec<_> = (1..=10).map(|id| spawn(id, Critical)).collect();
    run_pending().await;
    // Queue, interleaved: sheddable 101, 102; normal 201, 202; critical 301, 302.
    for (id, class) in [
        (101, Sheddable),
        (201, Normal),
        (301, Critical),
        (102, Sheddable),
        (202, Normal),
        (302, Critical),
    ] {
        calls.push(spawn(id, class));
        run_pending().await;
    }
    assert_eq!(handle.queued(), 6);

    // Finish the saturating calls one by one and watch who starts.
    let mut order = Vec::new();
    let mut in_use = Vec::new();
    for id in 1..=10 {
        let before = gate.started().len();
        gate.finish(id);
        run_pending().await;
        order.extend_from_slice(&gate.started()[before..]);
        in_use.push(handle.in_flight());
    }
    // Critical first, then normal, each in arrival order; sheddable work
    // only once use falls below 80% (8 of 10), again in arrival order.
    assert_eq!(order, vec![301, 302, 201, 202, 101, 102]);
    assert_eq!(in_use, vec![10, 10, 10, 10, 9, 8, 8, 8, 7, 6]);
    assert_eq!(handle.queued(), 0);
    for id in [301, 302, 201, 202, 101, 102] {
        gate.finish(id);
    }
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert_eq!(handle.rejected(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_evicts_the_newest_least_important_waiter() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .max_queue(2)
        .max_wait(None)
        .priority(by_class)
        .build()
        .unwrap();
    let handle = layer.handle();
    let gate = Gate::default();
    let svc = layer.layer(gate.clone());
    let spawn = |id, class| tokio::spawn(svc.clone().oneshot(job(id, class)));

    let holder = spawn(1, Critical);
    run_pending().await;
    let s1 = spawn(101, Sheddable);
    let s2 = spawn(102, Sheddable);
    run_pending().await;
    assert_eq!(handle.queued(), 2);

    // A sheddable newcomer cannot displace its peers.
    let err = spawn(103, Sheddable).await.unwrap().unwrap_err();
    assert!(!err.downcast_ref::<BulkheadFull>().unwrap().is_shed());

    let n1 = spawn(201, Normal);
    run_pending().await;
    let evicted = s2.await.unwrap().unwrap_err();
    let evicted = evicted.downcast_ref::<BulkheadFull>().expect("evicted");
    assert!(evicted.is_shed());
    assert_eq!(evicted.priority(), Some(Sheddable));

    let c1 = spawn(301, Critical);
    run_pending().await;
    assert!(s1.await.unwrap().unwrap_err().is::<BulkheadFull>());
    let c2 = spawn(302, Critical);
    run_pending().await;
    assert!(n1.await.unwrap().unwrap_err().is::<BulkheadFull>());
    // Only critical work is left waiting: a critical newcomer is refused.
    assert!(spawn(303, Critical)
        .await
        .unwrap()
        .unwrap_err()
        .is::<BulkheadFull>());
    assert_eq!(handle.queued(), 2);
    assert_eq!(handle.rejected_shed(), 3);
    assert_eq!(handle.rejected_full(), 2);

    gate.finish(1);
    run_pending().await;
    gate.finish(301);
    run_pending().await;
    gate.finish(302);
    for c in [holder, c1, c2] {
        c.await.unwrap().unwrap();
    }
    assert_eq!(gate.started(), vec![1, 301, 302]);
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn the_class_can_come_from_an_http_header() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(5)
        .priority(HeaderPriority::new(HeaderName::from_static("x-priority")))
        .build()
        .unwrap();
    let handle = layer.handle();
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let svc = {
        let release = release.clone();
        layer.layer(tower::service_fn(move |_req: Request<()>| {
            let release = release.clone();
            async move {
                release.notified().await;
                Ok::<_, BoxError>(Response::new(()))
            }
        }))
    };
    let request = |p: &str| Request::get("/").header("x-priority", p).body(()).unwrap();

    // 4 of 5 in use (80%): sheddable refused, a malformed header counts as
    // normal and is admitted, critical too.
    let held: Vec<_> = (0..4)
        .map(|_| tokio::spawn(svc.clone().oneshot(request("critical"))))
        .collect();
    run_pending().await;
    let err = svc.clone().oneshot(request("sheddable")).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<BulkheadFull>().unwrap().priority(),
        Some(Sheddable)
    );
    let normal = tokio::spawn(svc.clone().oneshot(request("\u{1F525}")));
    run_pending().await;
    assert_eq!(handle.in_flight(), 5);
    release.notify_waiters();
    for h in held {
        h.await.unwrap().unwrap();
    }
    normal.await.unwrap().unwrap();
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn refusal_events_say_why() {
    use seawall_bulkhead::{BulkheadEvent, BulkheadTimeout, RejectReason};
    use seawall_core::event::FnListener;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    let reasons = Arc::new(Mutex::new(Vec::new()));
    let log = reasons.clone();
    let layer = BulkheadLayer::builder()
        .max_concurrent(5)
        .max_queue(1)
        .max_wait(Duration::from_millis(10))
        .priority(by_class)
        .listener(FnListener::new(move |e: &BulkheadEvent| {
            if let BulkheadEvent::Rejected {
                reason, priority, ..
            } = e
            {
                log.lock().unwrap().push((*reason, *priority));
            }
        }))
        .build()
        .unwrap();
    let gate = Gate::default();
    let svc = layer.layer(gate.clone());
    let spawn = |id, class| tokio::spawn(svc.clone().oneshot(job(id, class)));

    let held: Vec<_> = (1..=4).map(|id| spawn(id, Critical)).collect();
    run_pending().await;
    // 4 of 5 in use: a sheddable request waits (the queue has room)...
    let s = spawn(101, Sheddable);
    run_pending().await;
    // ...until a normal one, which may start, leaves the pool full and a
    // critical one evicts the sheddable waiter.
    held.into_iter().for_each(drop);
    let n = spawn(201, Normal);
    run_pending().await;
    let c = spawn(301, Critical);
    run_pending().await;
    assert!(s.await.unwrap().unwrap_err().is::<BulkheadFull>());
    // The critical waiter times out: nothing finishes within 10 ms.
    let err = c.await.unwrap().unwrap_err();
    assert!(err.is::<BulkheadTimeout>());
    // Full, queue full, nothing less important to evict.
    let c2 = spawn(302, Critical);
    run_pending().await;
    let c3 = spawn(303, Critical).await.unwrap().unwrap_err();
    assert!(c3.is::<BulkheadFull>());
    drop((n, c2));

    let reasons = reasons.lock().unwrap().clone();
    assert_eq!(
        reasons,
        vec![
            (RejectReason::Shed, Some(Sheddable)),
            (RejectReason::Timeout, Some(Critical)),
            (RejectReason::Full, Some(Critical)),
        ]
    );
}
