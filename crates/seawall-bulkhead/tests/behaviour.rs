//! Limits, queueing, refusals and permit accounting of the bulkhead.

mod support;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use seawall_bulkhead::limit::Aimd;
use seawall_bulkhead::{
    BulkheadEvent, BulkheadFull, BulkheadLayer, BulkheadTimeout, Pool, PoolRegistry, Priority,
    RejectReason,
};
use seawall_core::event::FnListener;
use seawall_core::{rejection, BoxError, Event, Outcome};
use support::{job, run_pending, Gate, Job};
use tokio::task::JoinHandle;
use tower::{Layer, Service, ServiceExt};

type Svc = seawall_bulkhead::Bulkhead<Gate>;

fn spawn_call<S>(svc: &S, id: u32) -> JoinHandle<Result<u32, BoxError>>
where
    S: Service<Job, Response = u32, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let svc = svc.clone();
    tokio::spawn(async move { svc.oneshot(job(id, Priority::Normal)).await })
}

#[tokio::test(start_paused = true)]
async fn refuses_past_the_limit_and_releases_on_completion() {
    let layer = BulkheadLayer::builder().max_concurrent(2).build().unwrap();
    let handle = layer.handle();
    let gate = Gate::default();
    let svc = layer.layer(gate.clone());

    let a = spawn_call(&svc, 1);
    let b = spawn_call(&svc, 2);
    run_pending().await;
    assert_eq!(handle.in_flight(), 2);
    assert_eq!(handle.available(), 0);

    let err = svc
        .clone()
        .oneshot(job(3, Priority::Normal))
        .await
        .unwrap_err();
    let full = err.downcast_ref::<BulkheadFull>().expect("BulkheadFull");
    assert!(!full.is_shed());
    assert_eq!(full.priority(), None, "no prioritiser configured");
    let rejected = rejection::find(&*err).expect("a seawall rejection");
    assert_eq!(rejected.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rejected.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(
        gate.started(),
        vec![1, 2],
        "the refused call never reached the service"
    );
    assert_eq!(handle.rejected_full(), 1);

    gate.finish(1);
    assert_eq!(a.await.unwrap().unwrap(), 1);
    assert_eq!(handle.in_flight(), 1);
    gate.finish(2);
    assert_eq!(b.await.unwrap().unwrap(), 2);
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.available(), 2);
}

#[tokio::test(start_paused = true)]
async fn waits_inside_the_future_while_poll_ready_stays_ready() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .max_queue(2)
        .max_wait(None)
        .build()
        .unwrap();
    let handle = layer.handle();
    let gate = Gate::default();
    let mut svc = layer.layer(gate.clone());

    let first = spawn_call(&svc, 1);
    run_pending().await;
    // Full, yet ready: axum's routes must never be pending.
    let second = svc.ready().await.unwrap().call(job(2, Priority::Normal));
    let third = svc.ready().await.unwrap().call(job(3, Priority::Normal));
    let second = tokio::spawn(second);
    let third = tokio::spawn(third);
    run_pending().await;
    assert_eq!(handle.queued(), 2);
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(job(4, Priority::Normal))
        .await
        .unwrap_err();
    assert!(err.is::<BulkheadFull>(), "queue full: refused at once");

    // First in, first out.
    gate.finish(1);
    first.await.unwrap().unwrap();
    run_pending().await;
    assert_eq!(gate.started(), vec![1, 2]);
    assert_eq!(handle.queued(), 1);
    gate.finish(2);
    run_pending().await;
    assert_eq!(gate.started(), vec![1, 2, 3]);
    gate.finish(3);
    assert_eq!(second.await.unwrap().unwrap(), 2);
    assert_eq!(third.await.unwrap().unwrap(), 3);
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
    assert_eq!(gate.max_active(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_wait_past_max_wait_is_a_bulkhead_timeout() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .max_queue(4)
        .max_wait(Duration::from_millis(50))
        .retry_after(Duration::from_secs(2))
        .build()
        .unwrap();
    let handle = layer.handle();
    let gate = Gate::default();
    let svc = layer.layer(gate.clone());
    let _first = spawn_call(&svc, 1);
    run_pending().await;

    let started = tokio::time::Instant::now();
    let err = svc
        .clone()
        .oneshot(job(2, Priority::Normal))
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_millis(50));
    assert!(err.is::<BulkheadTimeout>());
    let rejected = rejection::find(&*err).unwrap();
    assert_eq!(rejected.kind(), "bulkhead_timeout");
    assert_eq!(rejected.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rejected.retry_after(), Some(Duration::from_secs(2)));
    assert_eq!(handle.rejected_timeout(), 1);
    assert_eq!(handle.queued(), 0, "the timed-out request left the queue");
    assert_eq!(gate.started(), vec![1]);
}

#[tokio::test(start_paused = true)]
async fn permits_come_back_after_errors_and_panics() {
    let layer = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let handle = layer.handle();
    let gate = Gate::default();
    let svc = layer.layer(gate.clone());

    let failing = spawn_call(&svc, 1);
    run_pending().await;
    gate.fail(1);
    let err = failing.await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "dependency failed");
    assert_eq!(handle.in_flight(), 0);

    let panicking = BulkheadLayer::new(Pool::builder().max_concurrent(1).build().unwrap());
    let panicking_handle = panicking.handle();
    let svc = panicking.layer(tower::service_fn(|(): ()| async {
        tokio::task::yield_now().await;
        panic!("handler bug");
        #[allow(unreachable_code)]
        Ok::<(), BoxError>(())
    }));
    let task = tokio::spawn(svc.oneshot(()));
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(panicking_handle.in_flight(), 0, "released while unwinding");
}

#[tokio::test(start_paused = true)]
async fn backpressure_mode_reserves_in_poll_ready_and_clones_hold_nothing() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .max_wait(Duration::from_millis(100))
        .build()
        .unwrap()
        .backpressure();
    let handle = layer.handle();
    let gate = Gate::default();
    let mut a = layer.layer(gate.clone());
    let mut b = a.clone();

    a.ready().await.unwrap();
    assert_eq!(handle.in_flight(), 1, "reserved by poll_ready");
    // A clone of a ready service holds no permit.
    let mut c = a.clone();
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    assert!(c.poll_ready(&mut cx).is_pending());
    assert!(b.poll_ready(&mut cx).is_pending());
    assert_eq!(handle.in_flight(), 1);
    drop(c);

    let call = tokio::spawn(a.call(job(1, Priority::Normal)));
    run_pending().await;
    gate.finish(1);
    call.await.unwrap().unwrap();
    assert!(b.poll_ready(&mut cx).is_ready(), "the permit moved on to b");
    assert_eq!(handle.in_flight(), 1);
    // Readiness that is never used is given back when the service is dropped.
    drop(b);
    assert_eq!(handle.in_flight(), 0);

    // Waiting past max_wait: poll_ready turns ready, call refuses.
    let mut holder = layer.layer(gate.clone());
    holder.ready().await.unwrap();
    let mut late = layer.layer(gate.clone());
    let started = tokio::time::Instant::now();
    late.ready().await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    let err = late.call(job(2, Priority::Normal)).await.unwrap_err();
    assert!(err.is::<BulkheadTimeout>());
    assert_eq!(handle.in_flight(), 1);
    drop(holder);
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn backpressure_mode_sheds_by_priority_in_call() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(5)
        .priority(support::by_class)
        .build()
        .unwrap()
        .backpressure();
    let handle = layer.handle();
    let gate = Gate::default();
    let svc = layer.layer(gate.clone());
    let held: Vec<_> = (1..=4)
        .map(|id| tokio::spawn(svc.clone().oneshot(job(id, Priority::Critical))))
        .collect();
    run_pending().await;
    assert_eq!(handle.in_flight(), 4);

    // poll_ready cannot know the class; call finds the sheddable request
    // past its 80% share and gives the reserved permit back.
    let mut sheddable = svc.clone();
    sheddable.ready().await.unwrap();
    assert_eq!(handle.in_flight(), 5);
    let err = sheddable
        .call(job(5, Priority::Sheddable))
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<BulkheadFull>().unwrap().is_shed());
    assert_eq!(handle.in_flight(), 4);
    assert_eq!(handle.rejected_shed(), 1);

    let normal = tokio::spawn(svc.clone().oneshot(job(6, Priority::Normal)));
    run_pending().await;
    assert_eq!(
        gate.started(),
        vec![1, 2, 3, 4, 6],
        "normal work still fits under 95%"
    );
    for id in [1, 2, 3, 4, 6] {
        gate.finish(id);
    }
    for h in held {
        h.await.unwrap().unwrap();
    }
    normal.await.unwrap().unwrap();
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn backpressure_works_behind_a_buffer() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(2)
        .build()
        .unwrap()
        .backpressure();
    let handle = layer.handle();
    let gate = Gate::default();
    let svc = tower::buffer::Buffer::new(layer.layer(gate.clone()), 64);
    let calls: Vec<_> = (1..=5)
        .map(|id| tokio::spawn(svc.clone().oneshot(job(id, Priority::Normal))))
        .collect();
    run_pending().await;
    assert_eq!(gate.started(), vec![1, 2]);
    assert_eq!(handle.in_flight(), 2);
    for id in 1..=5 {
        gate.finish(id);
        run_pending().await;
    }
    for (call, id) in calls.into_iter().zip(1..) {
        assert_eq!(call.await.unwrap().unwrap(), id);
    }
    assert_eq!(gate.max_active(), 2);
    assert_eq!(handle.rejected(), 0);
}

#[tokio::test(start_paused = true)]
async fn layers_on_one_pool_share_it_and_separate_layers_do_not() {
    let pool = Pool::builder()
        .name("db")
        .max_concurrent(1)
        .build()
        .unwrap();
    let users = BulkheadLayer::new(pool.clone());
    let orders = BulkheadLayer::new(pool.clone());
    let other = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    assert!(users.handle().same_pool(&orders.handle()));
    assert!(!users.handle().same_pool(&other.handle()));

    let gate = Gate::default();
    let users = users.layer(gate.clone());
    let orders_svc = orders.layer(gate.clone());
    let other_svc = other.layer(gate.clone());
    let _held = spawn_call(&users, 1);
    run_pending().await;
    let err = orders_svc
        .clone()
        .oneshot(job(2, Priority::Normal))
        .await
        .unwrap_err();
    assert!(err.is::<BulkheadFull>(), "the shared pool is full");
    let _other = tokio::spawn(other_svc.oneshot(job(3, Priority::Normal)));
    run_pending().await;
    assert_eq!(gate.started(), vec![1, 3], "a separate pool is unaffected");
    assert_eq!(pool.handle().rejected(), 1);
    assert_eq!(pool.handle().name(), "db");
}

#[tokio::test(start_paused = true)]
async fn events_report_refusals_and_limit_changes() {
    let events = Arc::new(Mutex::new(Vec::<BulkheadEvent>::new()));
    let log = events.clone();
    let layer = BulkheadLayer::builder()
        .name("payments")
        .adaptive(
            Aimd::builder()
                .initial_limit(2)
                .min_limit(1)
                .max_limit(10)
                .build()
                .unwrap(),
        )
        .listener(FnListener::new(move |e: &BulkheadEvent| {
            log.lock().unwrap().push(e.clone());
        }))
        .priority(support::by_class)
        .build()
        .unwrap();
    let handle = layer.handle();
    let gate = Gate::default();
    let svc = layer.layer(gate.clone());

    let a = tokio::spawn(svc.clone().oneshot(job(1, Priority::Critical)));
    let b = tokio::spawn(svc.clone().oneshot(job(2, Priority::Critical)));
    run_pending().await;
    let err = svc
        .clone()
        .oneshot(job(3, Priority::Sheddable))
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<BulkheadFull>().unwrap().priority() == Some(Priority::Sheddable));

    gate.finish(1); // success at full use: +1
    a.await.unwrap().unwrap();
    assert_eq!(handle.limit(), 3);
    gate.fail(2); // failure: a drop, × 0.9
    b.await.unwrap().unwrap_err();
    assert_eq!(handle.limit(), 2);

    let events = events.lock().unwrap();
    let kinds: Vec<_> = events.iter().map(Event::kind).collect();
    assert_eq!(kinds, vec!["rejected", "limit_changed", "limit_changed"]);
    assert!(events.iter().all(|e| e.layer() == "payments"));
    match &events[0] {
        BulkheadEvent::Rejected {
            reason,
            priority,
            in_flight,
            limit,
            ..
        } => {
            assert_eq!(*reason, RejectReason::Full);
            assert_eq!(*priority, Some(Priority::Sheddable));
            assert_eq!((*in_flight, *limit), (2, 2));
        }
        other => panic!("unexpected {other:?}"),
    }
    match (&events[1], &events[2]) {
        (
            BulkheadEvent::LimitChanged { from: 2, to: 3, .. },
            BulkheadEvent::LimitChanged { from: 3, to: 2, .. },
        ) => {}
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_classifier_decides_what_an_adaptive_limit_sees() {
    // Errors are ignored, successes are sampled.
    let classify = |res: Result<&u32, &BoxError>| match res {
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Ignore,
    };
    let layer = BulkheadLayer::builder()
        .adaptive(
            Aimd::builder()
                .initial_limit(1)
                .min_limit(1)
                .build()
                .unwrap(),
        )
        .classifier(classify)
        .build()
        .unwrap();
    let handle = layer.handle();
    let gate = Gate::default();
    let svc = layer.layer(gate.clone());

    let call = spawn_call(&svc, 1);
    run_pending().await;
    gate.fail(1);
    call.await.unwrap().unwrap_err();
    assert_eq!(handle.limit(), 1, "an ignored outcome is not sampled");
    let call = spawn_call(&svc, 2);
    run_pending().await;
    gate.finish(2);
    call.await.unwrap().unwrap();
    assert_eq!(handle.limit(), 2);

    // A call cancelled before it finishes is not sampled either.
    let call = spawn_call(&svc, 3);
    run_pending().await;
    call.abort();
    run_pending().await;
    assert_eq!(handle.limit(), 2);
    assert_eq!(handle.in_flight(), 0);
}

#[test]
fn invalid_settings_are_config_errors() {
    let err = BulkheadLayer::builder()
        .max_concurrent(0)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_concurrent");
    assert_eq!(
        err.to_string(),
        "invalid bulkhead config: `max_concurrent` must be in [1, 2147483647], got 0"
    );
    let err = BulkheadLayer::builder()
        .sheddable_share(0.99)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "sheddable_share");
}

#[allow(dead_code)]
fn assert_send<T: Send>(_: &T) {}

#[allow(dead_code)]
fn futures_are_send(svc: &mut Svc) {
    let fut = svc.call(Job {
        id: 0,
        priority: Priority::Normal,
    });
    assert_send(&fut);
}

#[tokio::test(start_paused = true)]
async fn a_fixed_limit_can_change_at_run_time() {
    let pool = Pool::builder()
        .max_concurrent(1)
        .max_queue(5)
        .max_wait(None)
        .build()
        .unwrap();
    let handle = pool.handle();
    let gate = Gate::default();
    let svc = BulkheadLayer::new(pool.clone()).layer(gate.clone());
    let calls: Vec<_> = (1..=3).map(|id| spawn_call(&svc, id)).collect();
    run_pending().await;
    assert_eq!((handle.in_flight(), handle.queued()), (1, 2));

    pool.set_max_concurrent(3).unwrap();
    run_pending().await;
    assert_eq!(gate.started(), vec![1, 2, 3], "waiters admitted at once");
    pool.set_max_concurrent(1).unwrap();
    assert_eq!(handle.limit(), 1);
    assert_eq!(handle.in_flight(), 3, "running calls are not cut short");
    let fourth = spawn_call(&svc, 4);
    gate.finish(1);
    gate.finish(2);
    run_pending().await;
    assert_eq!(
        gate.started(),
        vec![1, 2, 3],
        "no admission above the new limit"
    );
    gate.finish(3);
    run_pending().await;
    assert_eq!(gate.started(), vec![1, 2, 3, 4]);
    gate.finish(4);
    for c in calls {
        c.await.unwrap().unwrap();
    }
    fourth.await.unwrap().unwrap();

    assert_eq!(
        pool.set_max_concurrent(0).unwrap_err().field(),
        "max_concurrent"
    );
    let adaptive = Pool::builder()
        .adaptive(Aimd::builder().build().unwrap())
        .build()
        .unwrap();
    assert!(adaptive.set_max_concurrent(5).is_err());
}

#[test]
fn a_missing_timer_panics_without_leaking_a_queue_place() {
    // Outside any Tokio runtime the wait timer cannot be armed; tokio panics,
    // and the pool must be left exactly as it was.
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .max_queue(1)
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    let gate = Gate::default();
    let mut svc = layer.layer(gate.clone());
    let held = svc.call(job(1, Priority::Normal));
    assert_eq!(handle.in_flight(), 1);
    let queued = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(svc.call(job(2, Priority::Normal)));
    }));
    assert!(queued.is_err(), "tokio::time::sleep needs a runtime");
    assert_eq!((handle.in_flight(), handle.queued()), (1, 0));
    drop(held);
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_permit_returns_on_completion_even_if_the_future_is_kept() {
    let layer = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(tower::service_fn(
        |n: u32| async move { Ok::<_, BoxError>(n) },
    ));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut fut = Box::pin(svc.call(7));
    assert_eq!(handle.in_flight(), 1);
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(Ok(7)) => {}
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(handle.in_flight(), 0, "released at completion, not at drop");
    drop(fut);
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_free_permit_is_reserved_by_poll_ready_and_returned_if_unused() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .max_queue(1)
        .max_wait(None)
        .build()
        .unwrap();
    let handle = layer.handle();
    let gate = Gate::default();
    let mut a = layer.layer(gate.clone());
    a.ready().await.unwrap();
    assert_eq!(handle.in_flight(), 1, "reserved for the coming call");
    // Another service is still ready at once: it waits inside its future.
    let mut b = a.clone();
    b.ready().await.unwrap();
    assert_eq!(handle.in_flight(), 1, "nothing free to reserve");
    let waiting = tokio::spawn(b.call(job(2, Priority::Normal)));
    run_pending().await;
    assert_eq!(handle.queued(), 1);
    // `a` is dropped without calling: its permit passes to the waiter.
    drop(a);
    run_pending().await;
    assert_eq!(gate.started(), vec![2]);
    gate.finish(2);
    assert_eq!(waiting.await.unwrap().unwrap(), 2);
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_leaked_layer_limits_and_queues_on_the_pool_its_earlier_handles_see() {
    let layer = BulkheadLayer::builder()
        .name("db")
        .max_concurrent(2)
        .max_queue(1)
        .max_wait(Duration::from_millis(50))
        .build()
        .unwrap();
    // Taken before the leak: they must reach the very same pool.
    let handle = layer.handle();
    let pool = layer.pool().clone();
    let earlier = layer.clone();
    let leaked = layer.leak();
    assert!(leaked.handle().same_pool(&handle));
    assert_eq!(leaked.handle().name(), "db");

    let gate = Gate::default();
    let svc = leaked.layer(gate.clone());
    let earlier_svc = earlier.layer(gate.clone());
    let a = spawn_call(&svc, 1);
    let b = spawn_call(&svc, 2);
    run_pending().await;
    assert_eq!(handle.in_flight(), 2, "the earlier handle sees the permits");
    assert_eq!(handle.available(), 0);

    // The third call queues, so the queue (one place) is full...
    let started = tokio::time::Instant::now();
    let queued = spawn_call(&svc, 3);
    run_pending().await;
    assert_eq!(handle.queued(), 1);
    // ...and a service of the layer as it was before the leak is refused:
    // one pool, not two.
    let err = earlier_svc
        .clone()
        .oneshot(job(4, Priority::Normal))
        .await
        .unwrap_err();
    assert!(err.is::<BulkheadFull>(), "the shared pool is full");
    assert_eq!(handle.rejected_full(), 1);

    // The queued call gives up after `max_wait`, in virtual time.
    let err = queued.await.unwrap().unwrap_err();
    assert!(err.is::<BulkheadTimeout>());
    assert_eq!(started.elapsed(), Duration::from_millis(50));
    assert_eq!((handle.queued(), handle.rejected_timeout()), (0, 1));
    assert_eq!(gate.started(), vec![1, 2]);
    assert_eq!(gate.max_active(), 2, "the leaked layer kept the limit");

    // The pool taken before the leak still controls the limit.
    pool.set_max_concurrent(3).unwrap();
    assert_eq!(leaked.handle().limit(), 3);
    let c = spawn_call(&svc, 5);
    run_pending().await;
    assert_eq!(gate.started(), vec![1, 2, 5]);
    assert_eq!(handle.in_flight(), 3);

    for id in [1, 2, 5] {
        gate.finish(id);
    }
    assert_eq!(a.await.unwrap().unwrap(), 1);
    assert_eq!(b.await.unwrap().unwrap(), 2);
    assert_eq!(c.await.unwrap().unwrap(), 5);
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
    assert_eq!(leaked.handle().rejected(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_leaked_layer_on_a_registered_pool_keeps_every_behaviour() {
    let pools = PoolRegistry::new();
    let db = || Pool::builder().name("db").max_concurrent(5);
    let leaked = BulkheadLayer::new(pools.get_or_build(db()).unwrap())
        .priority(support::by_class)
        .backpressure()
        .leak();
    // Looked up by name after the leak: still the same pool.
    let registered = pools.get("db").unwrap().handle();
    assert!(registered.same_pool(&leaked.handle()));
    let later = BulkheadLayer::new(pools.get_or_build(db()).unwrap());
    assert!(later.handle().same_pool(&registered));

    // Back-pressure and priorities: four critical calls hold permits, a
    // sheddable one is past its 80% share.
    let gate = Gate::default();
    let svc = leaked.layer(gate.clone());
    let held: Vec<_> = (1..=4)
        .map(|id| tokio::spawn(svc.clone().oneshot(job(id, Priority::Critical))))
        .collect();
    run_pending().await;
    assert_eq!(registered.in_flight(), 4);
    let err = svc
        .clone()
        .oneshot(job(5, Priority::Sheddable))
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<BulkheadFull>().unwrap().is_shed());
    assert_eq!(
        registered.in_flight(),
        4,
        "the shed call's permit came back"
    );

    // A layer built from the registry after the leak takes the last permit;
    // the leaked service then waits in `poll_ready`.
    let later_svc = later.layer(gate.clone());
    let fifth = spawn_call(&later_svc, 6);
    run_pending().await;
    assert_eq!(registered.in_flight(), 5);
    let mut waiting = svc.clone();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(waiting.poll_ready(&mut cx).is_pending(), "back-pressure");
    gate.finish(6);
    fifth.await.unwrap().unwrap();
    assert!(
        waiting.poll_ready(&mut cx).is_ready(),
        "the permit moved on"
    );
    drop(waiting);
    assert_eq!(
        registered.in_flight(),
        4,
        "an unused reservation comes back"
    );

    // Errors and panics give permits back too.
    gate.fail(1);
    for (id, h) in (1..).zip(held) {
        if id > 1 {
            gate.finish(id);
        }
        let result = h.await.unwrap();
        assert_eq!(result.is_ok(), id > 1);
    }
    assert_eq!(registered.in_flight(), 0);
    let panicking = BulkheadLayer::new(pools.get("db").unwrap())
        .leak()
        .layer(tower::service_fn(|(): ()| async {
            tokio::task::yield_now().await;
            panic!("handler bug");
            #[allow(unreachable_code)]
            Ok::<(), BoxError>(())
        }));
    let task = tokio::spawn(panicking.oneshot(()));
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(registered.in_flight(), 0, "released while unwinding");
    assert_eq!(registered.rejected_shed(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_leaked_layer_feeds_its_adaptive_limit() {
    let layer = BulkheadLayer::builder()
        .adaptive(
            Aimd::builder()
                .initial_limit(1)
                .min_limit(1)
                .max_limit(10)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let handle = layer.handle();
    let gate = Gate::default();
    let svc = layer.leak().layer(gate.clone());
    let call = spawn_call(&svc, 1);
    run_pending().await;
    gate.finish(1); // success at full use: +1
    call.await.unwrap().unwrap();
    assert_eq!(handle.limit(), 2, "the earlier handle sees the new limit");
    let call = spawn_call(&svc, 2);
    run_pending().await;
    gate.fail(2); // a drop: × 0.9, rounded down
    call.await.unwrap().unwrap_err();
    assert_eq!(handle.limit(), 1);
    assert_eq!(handle.in_flight(), 0);
}
