//! Runs a scenario through each stack in paused virtual time.

use std::sync::Arc;

use seawall_core::BoxError;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::sleep_until;
use tower::ServiceExt;

use crate::dist::{self, Arrival};
use crate::recorder::{AnalysisInput, Outcome, Recorder, RunFigures};
use crate::scenario::Scenario;
use crate::stacks::{self, StackKind};
use crate::upstream::{self, Call, ChaosInjector, Injector, SimService, UpstreamSet};

/// The figures of one stack through one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct StackResult {
    /// The stack.
    pub stack: StackKind,
    /// What it achieved.
    #[serde(flatten)]
    pub figures: RunFigures,
}

/// The figures of every stack through one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    /// The scenario's name.
    pub scenario: String,
    /// What it does.
    pub description: String,
    /// The seed of the arrivals and faults.
    pub seed: u64,
    /// Route names.
    pub routes: Vec<String>,
    /// The fault window, in seconds from the start.
    pub fault_window: Option<(f64, f64)>,
    /// Run length, seconds.
    pub duration_s: f64,
    /// How long seawall's breakers stay open, seconds.
    pub breaker_open_s: f64,
    /// One result per stack.
    pub stacks: Vec<StackResult>,
}

impl ScenarioResult {
    /// The result of `stack`.
    pub fn get(&self, stack: StackKind) -> Option<&StackResult> {
        self.stacks.iter().find(|s| s.stack == stack)
    }
}

/// Runs `scenario` through `kinds` at `seed`; `progress` is called after
/// each stack.
pub fn run_scenario(
    scenario: &Scenario,
    seed: u64,
    kinds: &[StackKind],
    mut progress: impl FnMut(StackKind),
) -> Result<ScenarioResult, BoxError> {
    let arrivals = dist::arrivals(scenario, seed);
    let mut stacks = Vec::new();
    for &kind in kinds {
        let figures = run_stack(scenario, seed, kind, &arrivals, &ChaosInjector)?;
        stacks.push(StackResult {
            stack: kind,
            figures,
        });
        progress(kind);
    }
    Ok(ScenarioResult {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        seed,
        routes: scenario.upstream.iter().map(|u| u.name.clone()).collect(),
        fault_window: scenario
            .fault_window()
            .map(|(a, b)| (a.as_secs_f64(), b.as_secs_f64())),
        duration_s: scenario.duration.0.as_secs_f64(),
        breaker_open_s: scenario.client.breaker_open.0.as_secs_f64(),
        stacks,
    })
}

/// Runs one stack on a fresh current-thread runtime with a paused clock:
/// a minute of traffic takes well under a second.
pub fn run_stack(
    scenario: &Scenario,
    seed: u64,
    kind: StackKind,
    arrivals: &[Arrival],
    injector: &dyn Injector,
) -> Result<RunFigures, BoxError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    let figures = runtime.block_on(drive(scenario, seed, kind, arrivals, injector))?;
    // Dropping the runtime cancels what is still pending (hung calls).
    drop(runtime);
    Ok(figures)
}

async fn drive(
    scenario: &Scenario,
    seed: u64,
    kind: StackKind,
    arrivals: &[Arrival],
    injector: &dyn Injector,
) -> Result<RunFigures, BoxError> {
    let recorder = Recorder::new(arrivals.len(), scenario.upstream.len());
    let upstreams = UpstreamSet::build(
        &scenario.upstream,
        seed,
        &recorder,
        injector,
        kind.is_seawall().then_some(arrivals.len()),
    )?;
    let routes = (0..scenario.upstream.len())
        .map(|r| upstreams.route(r))
        .collect();
    drive_with(scenario, seed, kind, arrivals, &recorder, routes).await
}

/// Sends `arrivals` through `kind` stacks around `upstreams` (one service
/// per route) and analyses what `recorder` saw. The clock may be paused
/// (simulation) or not (`--real`).
pub(crate) async fn drive_with(
    scenario: &Scenario,
    seed: u64,
    kind: StackKind,
    arrivals: &[Arrival],
    recorder: &Recorder,
    upstreams: Vec<SimService>,
) -> Result<RunFigures, BoxError> {
    let routes = scenario.upstream.len();
    let recorder = recorder.clone();
    let start = recorder.started();
    // One stack instance per client and route; the pool is per client.
    let mut clients: Vec<Vec<SimService>> = Vec::with_capacity(scenario.arrivals.clients);
    for client in 0..scenario.arrivals.clients {
        let pool =
            (scenario.client.pool > 0).then(|| Arc::new(Semaphore::new(scenario.client.pool)));
        let mut per_route = Vec::with_capacity(routes);
        for (route, upstream) in upstreams.iter().enumerate() {
            let inner = upstream::pooled(pool.clone(), upstream.clone());
            let index = client * routes + route;
            per_route.push(stacks::build(
                kind,
                &scenario.client,
                inner,
                &recorder,
                index,
                seed.wrapping_add(index as u64),
            )?);
        }
        clients.push(per_route);
    }
    for a in arrivals {
        sleep_until(start + a.at).await;
        recorder.arrive(a.id, a.route);
        let svc = clients[a.client][a.route].clone();
        let rec = recorder.clone();
        let call = Call {
            id: a.id,
            route: a.route,
            post: scenario.arrivals.post,
            idempotency_key: false,
        };
        tokio::spawn(async move {
            let outcome = match svc.oneshot(call).await {
                Ok(reply) if reply.degraded => Outcome::Degraded,
                Ok(_) => Outcome::Ok,
                Err(_) => Outcome::Failed,
            };
            rec.finish(call.id, outcome);
        });
    }
    sleep_until(start + scenario.duration.0 + scenario.drain.0).await;
    let names: Vec<String> = scenario.upstream.iter().map(|u| u.name.clone()).collect();
    Ok(recorder.analyse(&AnalysisInput {
        duration: scenario.duration.0,
        fault: scenario.fault_window(),
        routes: &names,
    }))
}
