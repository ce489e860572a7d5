//! The service.

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rand::rngs::SmallRng;
use seawall_core::{BoxError, Listener, NoopListener};
use tokio::time::Instant;
use tower_service::Service;

use crate::error::{FaultKind, InjectedFault};
use crate::event::ChaosEvent;
use crate::fault::{unit, Armed};
use crate::future::{ResponseFuture, Then};
use crate::handle::{ChaosHandle, Core, HEADERS_ON, MASTER_ON};
use crate::protocol::{Answer, Plain, ProtocolFor};

/// Injects the faults of its [`ChaosLayer`](crate::ChaosLayer) into calls to
/// `S`.
///
/// Each service, and each clone of one, draws from its own RNG stream (see
/// the crate documentation on reproducibility).
pub struct Chaos<S, P = Plain, L = NoopListener> {
    inner: S,
    core: Arc<Core>,
    protocol: P,
    listener: L,
    rng: SmallRng,
}

impl<S, P, L> Chaos<S, P, L> {
    pub(crate) fn new(inner: S, core: Arc<Core>, protocol: P, listener: L) -> Self {
        let rng = core.rng();
        Self {
            inner,
            core,
            protocol,
            listener,
            rng,
        }
    }

    /// A handle on the layer's switches and counters.
    pub fn handle(&self) -> ChaosHandle {
        ChaosHandle {
            core: self.core.clone(),
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, P: Clone, L: Clone> Clone for Chaos<S, P, L> {
    /// A clone draws from a new RNG stream: a clone that copied the state
    /// would repeat the original's decisions (axum clones a service for
    /// every request).
    fn clone(&self) -> Self {
        Self::new(
            self.inner.clone(),
            self.core.clone(),
            self.protocol.clone(),
            self.listener.clone(),
        )
    }
}

impl<S: fmt::Debug, P: fmt::Debug, L> fmt::Debug for Chaos<S, P, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chaos")
            .field("inner", &self.inner)
            .field("handle", &self.handle())
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl<S, Req, P, L> Service<Req> for Chaos<S, P, L>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: ProtocolFor<Req, S::Response>,
    L: Listener<ChaosEvent>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S::Response>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let word = self.core.switches.load(Relaxed);
        // Only the master bit, or not even that: nothing can fire.
        if word <= MASTER_ON {
            return ResponseFuture::passthrough(self.inner.call(req));
        }
        self.call_with_faults(word, req)
    }
}

impl<S, P, L> Chaos<S, P, L> {
    #[inline(never)]
    fn call_with_faults<Req>(
        &mut self,
        word: u64,
        req: Req,
    ) -> ResponseFuture<S::Future, S::Response>
    where
        S: Service<Req>,
        P: ProtocolFor<Req, S::Response>,
        L: Listener<ChaosEvent>,
    {
        let core = &*self.core;
        let mut delay = Duration::ZERO;
        let mut then: Option<Then<S::Response>> = None;

        if word & HEADERS_ON != 0 {
            let triggered = core
                .headers
                .as_ref()
                .zip(self.protocol.headers(&req))
                .and_then(|(faults, headers)| faults.read(headers));
            if let Some(triggered) = triggered {
                core.header_injections.fetch_add(1, Relaxed);
                let name = &core.header_fault;
                if let Some(d) = triggered.delay {
                    delay = d;
                    self.emit(name, FaultKind::Latency, Some(d));
                }
                if let Some(answer) = triggered.answer {
                    self.emit(name, answer.kind(), None);
                    then = Some(self.answer::<Req, S::Response>(&answer, name));
                }
            }
        }

        // The clock is read at most once, and only for a scheduled fault.
        let mut elapsed: Option<Option<Duration>> = None;
        for (i, fault) in core.faults.iter().enumerate() {
            if word & (1 << i) == 0 {
                continue;
            }
            let latency = matches!(fault.armed, Armed::Latency(_));
            if then.is_some() && !latency {
                continue;
            }
            if !fault.schedule.is_always() {
                let elapsed = *elapsed.get_or_insert_with(|| core.elapsed(Instant::now()));
                if !fault.schedule.is_active_at(elapsed) {
                    continue;
                }
            }
            let rate = f64::from_bits(fault.rate.load(Relaxed));
            if unit(&mut self.rng) >= rate {
                continue;
            }
            fault.injected.fetch_add(1, Relaxed);
            match &fault.armed {
                Armed::Latency(latency) => {
                    let d = latency.sample(&mut self.rng);
                    delay = delay.saturating_add(d);
                    self.emit(&fault.name, FaultKind::Latency, Some(d));
                }
                Armed::Error => {
                    then = Some(fail(InjectedFault::new(
                        fault.name.clone(),
                        FaultKind::Error,
                    )));
                    self.emit(&fault.name, FaultKind::Error, None);
                }
                Armed::ErrorWith(make) => {
                    then = Some(Then::Fail(make()));
                    self.emit(&fault.name, FaultKind::Error, None);
                }
                Armed::ConnectionReset => {
                    then = Some(fail(InjectedFault::new(
                        fault.name.clone(),
                        FaultKind::ConnectionReset,
                    )));
                    self.emit(&fault.name, FaultKind::ConnectionReset, None);
                }
                Armed::Answer(answer) => {
                    then = Some(self.answer::<Req, S::Response>(answer, &fault.name));
                    self.emit(&fault.name, answer.kind(), None);
                }
                Armed::Hang => {
                    then = Some(Then::Hang);
                    self.emit(&fault.name, FaultKind::Hang, None);
                }
            }
        }

        match then {
            // The dependency "failed": the request never reaches it.
            Some(then) => ResponseFuture::injected(None, delay, then),
            None if delay.is_zero() => ResponseFuture::passthrough(self.inner.call(req)),
            None => ResponseFuture::injected(Some(self.inner.call(req)), delay, Then::Call),
        }
    }

    fn answer<Req, Res>(&self, answer: &Answer, name: &Arc<str>) -> Then<Res>
    where
        P: ProtocolFor<Req, Res>,
    {
        match self.protocol.answer(answer) {
            Some(res) => Then::Answer(res),
            None => fail(InjectedFault::new(name.clone(), answer.kind())),
        }
    }

    fn emit(&self, fault: &Arc<str>, kind: FaultKind, delay: Option<Duration>)
    where
        L: Listener<ChaosEvent>,
    {
        if L::ENABLED {
            self.listener.on_event(&ChaosEvent {
                layer: self.core.name.clone(),
                fault: fault.clone(),
                kind,
                delay,
            });
        }
    }
}

fn fail<T>(fault: InjectedFault) -> Then<T> {
    Then::Fail(Box::new(fault))
}
