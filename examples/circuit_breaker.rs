//! Run with: cargo run -p seawall-examples --example circuit_breaker
//!
//! A flaky dependency behind a circuit breaker: failures trip it, callers
//! then fail fast with a `Retry-After` hint instead of waiting on the
//! dependency, and after the open duration one probe closes it again. A
//! second part shows keyed mode: one breaker per host; a third, a bulkhead
//! under the breaker whose refusals are not counted as failures.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use seawall::circuit_breaker::{CircuitBreakerEvent, CircuitBreakerLayer, CircuitOpen};
use seawall::core::event::FnListener;
use seawall::{BoxError, Rejection};
use tower::{service_fn, Layer, Service, ServiceExt};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = healthy.clone();
    let dependency = service_fn(move |id: u32| {
        let up = flag.load(Ordering::SeqCst);
        async move {
            if up {
                Ok(format!("order {id} shipped"))
            } else {
                Err::<String, BoxError>("inventory service: connection refused".into())
            }
        }
    });

    let breaker = CircuitBreakerLayer::builder()
        .name("inventory")
        .count_window(20)
        .minimum_calls(5)
        .failure_rate_threshold(0.5)
        .open_duration(Duration::from_millis(200))
        .listener(FnListener::new(|e: &CircuitBreakerEvent| {
            println!("  event: {:?}", e.kind());
        }))
        .build()?;
    let handle = breaker.handle();
    let mut svc = breaker.layer(dependency);

    println!("the dependency is down:");
    for id in 0..7 {
        match svc.ready().await?.call(id).await {
            Ok(done) => println!("  {done}"),
            Err(e) => match e.downcast_ref::<CircuitOpen>() {
                Some(open) => println!(
                    "  order {id}: failed fast ({e}), retry after {:?}",
                    open.retry_after().unwrap_or_default()
                ),
                None => println!("  order {id}: {e}"),
            },
        }
    }
    let m = handle.metrics();
    println!(
        "state {}, failure rate {:?}, rejected {}",
        m.state, m.failure_rate, m.rejected
    );

    println!("the dependency recovers; after the open duration a probe closes the breaker:");
    healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!("  {}", svc.ready().await?.call(99).await?);
    println!("state {}", handle.state());

    println!("keyed mode, one breaker per host:");
    let per_host = CircuitBreakerLayer::builder()
        .count_window(4)
        .minimum_calls(4)
        .key_capacity(100)
        .build_keyed(|req: &(&'static str, u32)| req.0)?;
    let hosts = per_host.handle();
    let mut client = per_host.layer(service_fn(|(host, n): (&'static str, u32)| async move {
        if host == "down.example" {
            Err::<String, BoxError>("timeout".into())
        } else {
            Ok(format!("{host} answered {n}"))
        }
    }));
    for n in 0..5 {
        for host in ["up.example", "down.example"] {
            let _ = client.ready().await?.call((host, n)).await;
        }
    }
    let mut states = hosts.states();
    states.sort_by_key(|s| s.0);
    for (host, state) in states {
        println!("  {host}: {state}");
    }

    println!("a burst of 10 on a healthy dependency behind a bulkhead of 2:");
    let breaker = CircuitBreakerLayer::builder()
        .count_window(10)
        .minimum_calls(5)
        .build()?;
    let handle = breaker.handle();
    let svc = tower::ServiceBuilder::new()
        .layer(breaker)
        .layer(
            seawall::bulkhead::BulkheadLayer::builder()
                .max_concurrent(2)
                .build()?,
        )
        .service(service_fn(|n: u32| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, BoxError>(n)
        }));
    let burst: Vec<_> = (0..10)
        .map(|n| tokio::spawn(svc.clone().oneshot(n)))
        .collect();
    let mut shed = 0;
    for call in burst {
        if call.await?.is_err() {
            shed += 1;
        }
    }
    let m = handle.metrics();
    println!(
        "  {shed} shed by the bulkhead; breaker {} with {} calls and {} failures in its window",
        m.state, m.calls, m.failures
    );
    Ok(())
}
