//! What a run observes, and the figures computed from it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The dependency's own answer.
    Ok,
    /// A fallback's answer.
    Degraded,
    /// An error (the dependency's, a timeout, a refusal).
    Failed,
}

#[derive(Debug, Clone, Copy)]
struct RequestLog {
    at: Duration,
    route: usize,
    done: Option<(Duration, Outcome)>,
}

#[derive(Debug, Default)]
struct Log {
    requests: Vec<RequestLog>,
    attempts: Vec<(Duration, usize)>,
    in_flight: Vec<u64>,
    peak: Vec<u64>,
    total_in_flight: u64,
    total_peak: u64,
    /// Highest total in-flight count seen in each second.
    in_flight_series: Vec<u64>,
    executions: HashMap<u64, u32>,
    /// `(time, breaker index, open)` for the seawall breakers.
    breaker: Vec<(Duration, usize, bool)>,
}

/// Collects the observations of one run (one stack through one scenario).
/// Shared by the driver, the upstreams and the breakers' listeners.
#[derive(Debug, Clone)]
pub struct Recorder {
    log: Arc<Mutex<Log>>,
    start: Instant,
}

impl Recorder {
    /// A recorder for `requests` requests to `routes` routes, starting now.
    pub fn new(requests: usize, routes: usize) -> Self {
        let log = Log {
            requests: Vec::with_capacity(requests),
            in_flight: vec![0; routes],
            peak: vec![0; routes],
            ..Log::default()
        };
        Self {
            log: Arc::new(Mutex::new(log)),
            start: Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        // A panicking task cannot leave the log half-written in a way that
        // matters to the figures, so a poisoned lock is still read.
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When the run started.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// Time since the run started.
    pub fn now(&self) -> Duration {
        Instant::now() - self.start
    }

    /// Registers request `id` (ids are dealt in arrival order from 0).
    pub fn arrive(&self, id: u64, route: usize) {
        let at = self.now();
        let mut log = self.lock();
        debug_assert_eq!(log.requests.len() as u64, id);
        log.requests.push(RequestLog {
            at,
            route,
            done: None,
        });
    }

    /// Request `id` finished.
    pub fn finish(&self, id: u64, outcome: Outcome) {
        let now = self.now();
        let mut log = self.lock();
        if let Some(r) = log.requests.get_mut(id as usize) {
            r.done = Some((now.saturating_sub(r.at), outcome));
        }
    }

    /// An attempt reached upstream `route`; it counts as in flight until the
    /// guard is dropped (answer, error, or the caller giving up).
    pub fn attempt(&self, route: usize) -> AttemptGuard {
        let now = self.now();
        let mut log = self.lock();
        log.attempts.push((now, route));
        log.in_flight[route] += 1;
        log.peak[route] = log.peak[route].max(log.in_flight[route]);
        log.total_in_flight += 1;
        log.total_peak = log.total_peak.max(log.total_in_flight);
        let second = now.as_secs() as usize;
        if log.in_flight_series.len() <= second {
            log.in_flight_series.resize(second + 1, 0);
        }
        let total = log.total_in_flight;
        log.in_flight_series[second] = log.in_flight_series[second].max(total);
        AttemptGuard {
            recorder: self.clone(),
            route,
        }
    }

    /// The handler of upstream ran for logical request `id` (a side effect).
    pub fn execute(&self, id: u64) {
        *self.lock().executions.entry(id).or_insert(0) += 1;
    }

    /// Breaker `index` opened (`true`) or closed (`false`).
    pub fn breaker(&self, index: usize, open: bool) {
        let now = self.now();
        self.lock().breaker.push((now, index, open));
    }

    /// Computes the figures of the run.
    pub fn analyse(&self, input: &AnalysisInput<'_>) -> RunFigures {
        let log = self.lock();
        let routes = log.in_flight.len();
        let mut by_route = Vec::new();
        if routes > 1 {
            for r in 0..routes {
                by_route.push(figures(&log, input, Some(r)));
            }
        }
        RunFigures {
            overall: figures(&log, input, None),
            by_route,
            series: series(&log, input),
        }
    }
}

/// Decrements the in-flight count of an attempt when dropped.
#[derive(Debug)]
pub struct AttemptGuard {
    recorder: Recorder,
    route: usize,
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        let mut log = self.recorder.lock();
        log.in_flight[self.route] -= 1;
        log.total_in_flight -= 1;
    }
}

/// What the analysis needs to know about the scenario.
#[derive(Debug, Clone, Copy)]
pub struct AnalysisInput<'a> {
    /// Arrivals stop at this time.
    pub duration: Duration,
    /// The fault (or surge) window, if any.
    pub fault: Option<(Duration, Duration)>,
    /// Route names.
    pub routes: &'a [String],
}

/// How long the stack took to serve as well as before the fault.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "seconds")]
pub enum Recovery {
    /// Seconds after the fault ended.
    After(f64),
    /// Not before the run ended.
    Never,
    /// The scenario has no fault window.
    NoFault,
}

/// The figures of one run, for all routes or one.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// The route, or `None` for all of them.
    pub route: Option<String>,
    /// Requests sent.
    pub requests: u64,
    /// Share answered by the dependency, in percent.
    pub ok_pct: f64,
    /// Share answered by a fallback, in percent.
    pub degraded_pct: f64,
    /// Requests without an answer when the run ended (counted as failed).
    pub unfinished: u64,
    /// Latency of the dependency's answers, milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th percentile, milliseconds.
    pub p99_ms: Option<f64>,
    /// 99.9th percentile, milliseconds.
    pub p999_ms: Option<f64>,
    /// p99 of answers to requests that arrived before the fault window.
    pub healthy_p99_ms: Option<f64>,
    /// p99 of answers to requests that arrived in the fault window.
    pub fault_p99_ms: Option<f64>,
    /// Downstream attempts per request, whole run.
    pub attempts_per_request: f64,
    /// Downstream attempts started in the fault window per request arriving
    /// in it.
    pub fault_attempts_per_request: Option<f64>,
    /// Most attempts in flight at once at the dependency.
    pub peak_concurrency: u64,
    /// Time to recover after the fault ends: the start of the first 1 s
    /// window (at a 100 ms step, by arrival time) whose success rate is at
    /// least 95% of the pre-fault success rate, minus the fault's end.
    pub recovery: Recovery,
    /// Extra runs of the handler for one logical request, summed.
    pub duplicates: u64,
}

/// Per-second time series of one run (all routes).
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    /// Requests arriving per second.
    pub requests: Vec<u64>,
    /// Requests answered by the dependency, by arrival second.
    pub ok: Vec<u64>,
    /// Downstream attempts started per second.
    pub attempts: Vec<u64>,
    /// p50 of answered requests, by arrival second, milliseconds.
    pub p50_ms: Vec<Option<f64>>,
    /// p99 of answered requests, by arrival second, milliseconds.
    pub p99_ms: Vec<Option<f64>>,
    /// Periods (seconds from the start) when a seawall breaker was open.
    pub breaker_open: Vec<(f64, f64)>,
}

/// All figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunFigures {
    /// All routes together.
    pub overall: Figures,
    /// Each route, when there are several.
    pub by_route: Vec<Figures>,
    /// Time series for the charts.
    pub series: Series,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 1 hour, 3 significant digits; bounds are fixed so creation
    // cannot fail.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| unreachable!())
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record((d.as_micros() as u64).clamp(1, 3_600_000_000));
}

fn quantile(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1e3)
}

fn figures(log: &Log, input: &AnalysisInput<'_>, route: Option<usize>) -> Figures {
    let in_route = |r: usize| route.is_none_or(|x| x == r);
    let requests: Vec<&RequestLog> = log.requests.iter().filter(|r| in_route(r.route)).collect();
    let n = requests.len() as u64;
    let count = |o: Outcome| {
        requests
            .iter()
            .filter(|r| r.done.is_some_and(|(_, x)| x == o))
            .count() as f64
    };
    let pct = |x: f64| if n == 0 { 0.0 } else { 100.0 * x / n as f64 };
    let mut all = histogram();
    let mut healthy = histogram();
    let mut faulty = histogram();
    for r in &requests {
        if let Some((latency, Outcome::Ok)) = r.done {
            record(&mut all, latency);
            if let Some((start, end)) = input.fault {
                if r.at < start {
                    record(&mut healthy, latency);
                } else if r.at < end {
                    record(&mut faulty, latency);
                }
            }
        }
    }
    let attempts = log.attempts.iter().filter(|(_, r)| in_route(*r)).count() as f64;
    let fault_attempts_per_request = input.fault.map(|(start, end)| {
        let inside = |t: Duration| t >= start && t < end;
        let a = log
            .attempts
            .iter()
            .filter(|(t, r)| in_route(*r) && inside(*t))
            .count() as f64;
        let q = requests.iter().filter(|r| inside(r.at)).count() as f64;
        if q == 0.0 {
            0.0
        } else {
            a / q
        }
    });
    let peak = match route {
        Some(r) => log.peak[r],
        None => log.total_peak,
    };
    let duplicates = log
        .executions
        .iter()
        .filter(|(id, _)| {
            log.requests
                .get(**id as usize)
                .is_some_and(|r| in_route(r.route))
        })
        .map(|(_, n)| u64::from(n.saturating_sub(1)))
        .sum();
    Figures {
        route: route.map(|r| input.routes[r].clone()),
        requests: n,
        ok_pct: pct(count(Outcome::Ok)),
        degraded_pct: pct(count(Outcome::Degraded)),
        unfinished: requests.iter().filter(|r| r.done.is_none()).count() as u64,
        p50_ms: quantile(&all, 0.5),
        p99_ms: quantile(&all, 0.99),
        p999_ms: quantile(&all, 0.999),
        healthy_p99_ms: quantile(&healthy, 0.99),
        fault_p99_ms: quantile(&faulty, 0.99),
        attempts_per_request: if n == 0 { 0.0 } else { attempts / n as f64 },
        fault_attempts_per_request,
        peak_concurrency: peak,
        recovery: recovery(&requests, input),
        duplicates,
    }
}

const STEP: Duration = Duration::from_millis(100);
const WINDOW_STEPS: usize = 10;

fn recovery(requests: &[&RequestLog], input: &AnalysisInput<'_>) -> Recovery {
    let Some((start, end)) = input.fault else {
        return Recovery::NoFault;
    };
    let before: Vec<_> = requests.iter().filter(|r| r.at < start).collect();
    if before.is_empty() {
        return Recovery::Never;
    }
    let baseline = before
        .iter()
        .filter(|r| r.done.is_some_and(|(_, o)| o == Outcome::Ok))
        .count() as f64
        / before.len() as f64;
    let steps = (input.duration.as_nanos() / STEP.as_nanos()) as usize + 1;
    let mut sent = vec![0_u64; steps];
    let mut good = vec![0_u64; steps];
    for r in requests {
        let i = (r.at.as_nanos() / STEP.as_nanos()) as usize;
        if i < steps {
            sent[i] += 1;
            if r.done.is_some_and(|(_, o)| o == Outcome::Ok) {
                good[i] += 1;
            }
        }
    }
    let first = end.as_nanos().div_ceil(STEP.as_nanos()) as usize;
    for i in first..steps.saturating_sub(WINDOW_STEPS) {
        let s: u64 = sent[i..i + WINDOW_STEPS].iter().sum();
        let g: u64 = good[i..i + WINDOW_STEPS].iter().sum();
        if s > 0 && g as f64 / s as f64 >= 0.95 * baseline {
            let t = STEP * i as u32;
            return Recovery::After(t.saturating_sub(end).as_secs_f64());
        }
    }
    Recovery::Never
}

fn series(log: &Log, input: &AnalysisInput<'_>) -> Series {
    let seconds =
        input.duration.as_secs() as usize + usize::from(input.duration.subsec_nanos() > 0);
    let mut requests = vec![0; seconds];
    let mut ok = vec![0; seconds];
    let mut attempts = vec![0; seconds];
    let mut hists: Vec<Histogram<u64>> = (0..seconds).map(|_| histogram()).collect();
    for r in &log.requests {
        let s = r.at.as_secs() as usize;
        if s < seconds {
            requests[s] += 1;
            if let Some((latency, Outcome::Ok)) = r.done {
                ok[s] += 1;
                record(&mut hists[s], latency);
            }
        }
    }
    for (t, _) in &log.attempts {
        let s = t.as_secs() as usize;
        if s < seconds {
            attempts[s] += 1;
        }
    }
    Series {
        requests,
        ok,
        attempts,
        p50_ms: hists.iter().map(|h| quantile(h, 0.5)).collect(),
        p99_ms: hists.iter().map(|h| quantile(h, 0.99)).collect(),
        breaker_open: open_periods(&log.breaker, input.duration),
    }
}

/// Periods during which at least one breaker was open.
fn open_periods(events: &[(Duration, usize, bool)], end: Duration) -> Vec<(f64, f64)> {
    let mut open: HashMap<usize, bool> = HashMap::new();
    let mut periods = Vec::new();
    let mut since: Option<Duration> = None;
    for &(t, index, is_open) in events {
        open.insert(index, is_open);
        let any = open.values().any(|&o| o);
        match (since, any) {
            (None, true) => since = Some(t),
            (Some(s), false) => {
                periods.push((s.as_secs_f64(), t.as_secs_f64()));
                since = None;
            }
            _ => {}
        }
    }
    if let Some(s) = since {
        periods.push((s.as_secs_f64(), end.max(s).as_secs_f64()));
    }
    periods
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(routes: &[String]) -> AnalysisInput<'_> {
        AnalysisInput {
            duration: Duration::from_secs(20),
            fault: Some((Duration::from_secs(5), Duration::from_secs(10))),
            routes,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn recovery_is_measured_from_the_fault_end() {
        let rec = Recorder::new(2000, 1);
        // 100 requests per second; failures from 5 s to 12.5 s.
        for id in 0..2000_u64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            rec.arrive(id, 0);
            let t = rec.now();
            let failed = t >= Duration::from_secs(5) && t < Duration::from_millis(12_500);
            let _g = rec.attempt(0);
            rec.finish(id, if failed { Outcome::Failed } else { Outcome::Ok });
        }
        let routes = ["a".to_owned()];
        let f = rec.analyse(&input(&routes)).overall;
        match f.recovery {
            Recovery::After(s) => assert!((s - 2.5).abs() < 0.11, "{s}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(f.unfinished, 0);
        assert!((f.attempts_per_request - 1.0).abs() < 1e-9);
        assert_eq!(f.peak_concurrency, 1);
        assert!((f.ok_pct - 62.5).abs() < 0.2, "{}", f.ok_pct);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_duplicates_and_breaker_periods() {
        let rec = Recorder::new(10, 2);
        rec.arrive(0, 0);
        rec.arrive(1, 1);
        tokio::time::advance(Duration::from_secs(6)).await;
        let a = rec.attempt(0);
        let b = rec.attempt(0);
        let c = rec.attempt(1);
        rec.execute(0);
        rec.execute(0);
        rec.execute(1);
        rec.breaker(0, true);
        rec.breaker(1, true);
        tokio::time::advance(Duration::from_secs(1)).await;
        rec.breaker(0, false);
        tokio::time::advance(Duration::from_secs(1)).await;
        rec.breaker(1, false);
        drop((a, b, c));
        let routes = ["a".to_owned(), "b".to_owned()];
        let figs = rec.analyse(&input(&routes));
        assert_eq!(figs.overall.peak_concurrency, 3);
        assert_eq!(figs.by_route[0].peak_concurrency, 2);
        assert_eq!(figs.overall.duplicates, 1);
        assert_eq!(figs.by_route[1].duplicates, 0);
        assert_eq!(figs.overall.unfinished, 2);
        assert_eq!(figs.series.breaker_open, vec![(6.0, 8.0)]);
    }
}
