//! `--real`: the same scenarios over loopback HTTP, in wall time.
//!
//! Each upstream is an axum server on `127.0.0.1:0`: seawall's
//! [`ChaosLayer`] (HTTP mode: `503` answers, hangs, latency spikes) in front
//! of the handler, which queues for the same simulated workers as in the
//! virtual-time runs; in seawall's run the handler also sits behind
//! [`IdempotencyLayer`]. The client stacks are the same as in the
//! simulation, around a hyper-util client. Scenarios are compressed in time
//! (windows, duration and breaker open time scaled together) so that each
//! stack's run lasts a few seconds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use seawall_chaos::{ChaosLayer, Fault};
use seawall_core::BoxError;
use seawall_idempotency::IdempotencyLayer;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::ServiceBuilder;

use crate::dist;
use crate::recorder::Recorder;
use crate::run::{drive_with, ScenarioResult, StackResult};
use crate::scenario::{Dur, Scenario, Upstream as UpstreamSpec};
use crate::stacks::StackKind;
use crate::upstream::{
    chaos_faults, chaos_seed, idempotency_store, link, Call, Reply, SimService, UpstreamError,
    Workers,
};

/// Compresses a scenario in time so that arrivals last at most `max`:
/// duration, fault and surge windows and the breakers' open time shrink by
/// the same factor; rates, latencies and timeouts stay (they are what the
/// stacks react to). The drain is capped at 2 s.
pub fn compress(scenario: &Scenario, max: Duration) -> Scenario {
    let mut s = scenario.clone();
    let factor = (max.as_secs_f64() / s.duration.0.as_secs_f64()).min(1.0);
    let scale = |d: &mut Dur| d.0 = d.0.mul_f64(factor);
    scale(&mut s.duration);
    for surge in &mut s.arrivals.surge {
        scale(&mut surge.start);
        scale(&mut surge.end);
    }
    for up in &mut s.upstream {
        for f in &mut up.fault {
            scale(&mut f.start);
            scale(&mut f.end);
        }
    }
    scale(&mut s.client.breaker_open);
    s.drain.0 = s.drain.0.min(Duration::from_secs(2));
    s
}

/// Runs `scenario`, compressed to `max` seconds of arrivals, through
/// `kinds` over loopback HTTP in wall time, one stack after the other.
pub fn run_real(
    scenario: &Scenario,
    seed: u64,
    kinds: &[StackKind],
    max: Duration,
    mut progress: impl FnMut(StackKind),
) -> Result<ScenarioResult, BoxError> {
    let s = compress(scenario, max);
    let arrivals = dist::arrivals(&s, seed);
    let mut stacks = Vec::new();
    for &kind in kinds {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let figures = runtime.block_on(async {
            let recorder = Recorder::new(arrivals.len(), s.upstream.len());
            let mut routes = Vec::new();
            for (route, spec) in s.upstream.iter().enumerate() {
                let addr = serve(
                    spec,
                    seed,
                    route,
                    &recorder,
                    kind.is_seawall().then_some(arrivals.len()),
                )
                .await?;
                let client = http_client(addr);
                routes.push(link(spec, seed, route, &recorder, client));
            }
            drive_with(&s, seed, kind, &arrivals, &recorder, routes).await
        })?;
        // Stops the servers and drops what is still pending.
        runtime.shutdown_timeout(Duration::from_millis(100));
        stacks.push(StackResult {
            stack: kind,
            figures,
        });
        progress(kind);
    }
    Ok(ScenarioResult {
        scenario: format!("{} (real HTTP)", s.name),
        description: s.description.clone(),
        seed,
        routes: s.upstream.iter().map(|u| u.name.clone()).collect(),
        fault_window: s
            .fault_window()
            .map(|(a, b)| (a.as_secs_f64(), b.as_secs_f64())),
        duration_s: s.duration.0.as_secs_f64(),
        breaker_open_s: s.client.breaker_open.0.as_secs_f64(),
        stacks,
    })
}

const CALL_ID: &str = "x-call-id";

async fn handle(
    State(workers): State<Arc<Workers>>,
    method: Method,
    headers: HeaderMap,
) -> StatusCode {
    let id = headers
        .get(CALL_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let Some(id) = id else {
        return StatusCode::BAD_REQUEST;
    };
    let call = Call {
        id,
        route: 0,
        post: method == Method::POST,
        idempotency_key: false,
    };
    match workers.work_detached(call).await {
        Ok(()) if call.post => StatusCode::CREATED,
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn internal_error(_: BoxError) -> StatusCode {
    StatusCode::INTERNAL_SERVER_ERROR
}

/// Starts the axum server of upstream `spec`; returns its address.
async fn serve(
    spec: &UpstreamSpec,
    seed: u64,
    route: usize,
    recorder: &Recorder,
    idempotent: Option<usize>,
) -> Result<SocketAddr, BoxError> {
    let workers = Workers::start(spec, seed, route, recorder);
    let mut chaos = ChaosLayer::builder()
        .http()
        .name(spec.name.clone())
        .seed(chaos_seed(seed, route))
        .start_at(Instant::now());
    for fault in chaos_faults(spec, || Fault::http(StatusCode::SERVICE_UNAVAILABLE)) {
        chaos = chaos.fault(fault);
    }
    let chaos = chaos.build()?;
    let mut app = Router::new()
        .route("/call", any(handle))
        .with_state(workers);
    if let Some(keys) = idempotent {
        let idempotency = IdempotencyLayer::builder()
            .name(spec.name.clone())
            .store(idempotency_store(keys)?)
            .build()?;
        app = app.layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(internal_error))
                .layer(idempotency),
        );
    }
    let app = app.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(internal_error))
            .layer(chaos),
    );
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

/// A hyper-util client calling `addr`; answers become [`Reply`]s and
/// errors as in the simulation.
fn http_client(addr: SocketAddr) -> SimService {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let uri = format!("http://{addr}/call");
    BoxCloneService::new(tower::service_fn(move |call: Call| {
        let client = client.clone();
        let mut req = Request::builder()
            .method(if call.post { Method::POST } else { Method::GET })
            .uri(&uri)
            .header(CALL_ID, call.id);
        if call.idempotency_key {
            req = req.header("idempotency-key", format!("\"order-{}\"", call.id));
        }
        let req = req.body(Full::new(Bytes::new()));
        async move {
            let req = req.map_err(|e| -> BoxError { Box::new(e) })?;
            let res = client.request(req).await?;
            let status = res.status();
            res.into_body().collect().await?;
            if status.is_success() {
                Ok(Reply { degraded: false })
            } else if status.is_server_error() {
                Err(UpstreamError::UNAVAILABLE.into())
            } else {
                Err(UpstreamError::REFUSED.into())
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compress_scales_windows_and_open_time_together() {
        let s = Scenario::defaults()
            .into_iter()
            .find(|s| s.name == "outage")
            .unwrap();
        let c = compress(&s, Duration::from_secs(6));
        assert_eq!(c.duration.0, Duration::from_secs(6));
        assert_eq!(c.upstream[0].fault[0].start.0, Duration::from_millis(1500));
        assert_eq!(c.upstream[0].fault[0].end.0, Duration::from_millis(4500));
        assert_eq!(c.client.breaker_open.0, Duration::from_millis(500));
        assert_eq!(c.client.attempt_timeout, s.client.attempt_timeout);
    }
}
