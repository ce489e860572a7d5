//! How the layer reads requests and builds responses: [`Plain`] values or
//! [`Http`](crate::http::Http) messages.

use std::fmt;
use std::marker::PhantomData;

use http::StatusCode;

use crate::tier::Degraded;

/// The shape of the messages a fallback layer handles.
///
/// Tiers are configured before the inner service is known, so a mode fixes
/// the types they work with. Two modes ship: [`Plain`] for any `Clone`
/// response, and [`Http`](crate::http::Http) for `http::Response`s with
/// streaming bodies.
pub trait Mode: Send + Sync + 'static {
    /// What is kept of each request before the inner service consumes it;
    /// tiers and last-known-good keys are computed from it.
    type Info: Clone + Send + Sync + 'static;
    /// What the last-known-good, function and value tiers hold and produce.
    type Stored: Clone + Send + Sync + 'static;
    /// What the alternative service answers.
    type Alternative: Send + 'static;

    /// `false` if an alternative service's answer is itself a failure and the
    /// next tier should be tried.
    fn alternative_usable(&self, res: &Self::Alternative) -> bool {
        let _ = res;
        true
    }

    /// `false` if no answer to this request may be stored for the
    /// last-known-good tier, whatever its key. `key_includes_principal` is
    /// [`LastKnownGood::key_includes_principal`](crate::LastKnownGood::key_includes_principal).
    fn storable(&self, info: &Self::Info, key_includes_principal: bool) -> bool {
        let _ = (info, key_includes_principal);
        true
    }

    /// `false` if a stored answer must not be served to this request even
    /// though its key matches (for HTTP: its `Vary` fields differ).
    fn usable(&self, stored: &Self::Stored, info: &Self::Info) -> bool {
        let _ = (stored, info);
        true
    }

    /// Called once when the last-known-good tier is added, so the mode can
    /// capture what that tier needs from each request.
    fn enable_last_known_good(&mut self) {}
}

/// A [`Mode`] that can capture [`Info`](Mode::Info) from requests of type `Req`.
pub trait Capture<Req>: Mode {
    /// Captures what tiers need from `req`. Only called when a configured
    /// tier needs it.
    fn capture(&self, req: &Req) -> Self::Info;
}

/// A [`Mode`] that turns responses of type `Res` into the layer's responses.
pub trait Respond<Res>: Mode {
    /// The layer's response type.
    type Response: Send + 'static;

    /// A response passed through unchanged (success, ignored, or a failure
    /// no tier could replace).
    fn pass(res: Res) -> Self::Response;

    /// A successful response to the request `info` was captured from,
    /// remembered by `recorder` for the last-known-good tier if the mode
    /// judges it fit to stand in for later answers.
    fn record(
        &self,
        res: Res,
        info: &Self::Info,
        recorder: Recorder<Self::Stored>,
    ) -> Self::Response;

    /// A response made from a stored value, marked as degraded.
    fn serve(&self, stored: Self::Stored, degraded: Degraded) -> Self::Response;

    /// The alternative service's response, marked as degraded.
    fn serve_alternative(&self, res: Self::Alternative, degraded: Degraded) -> Self::Response;

    /// The status of a failing response, if the mode knows one.
    fn status(&self, res: &Res) -> Option<StatusCode> {
        let _ = res;
        None
    }
}

/// Stores one successful response in the last-known-good cache under the key
/// computed for its request.
pub struct Recorder<V> {
    store: Box<dyn FnOnce(V, usize) + Send>,
    key_includes_principal: bool,
}

impl<V> Recorder<V> {
    pub(crate) fn new(store: impl FnOnce(V, usize) + Send + 'static) -> Self {
        Self {
            store: Box::new(store),
            key_includes_principal: false,
        }
    }

    pub(crate) fn key_includes_principal(mut self, yes: bool) -> Self {
        self.key_includes_principal = yes;
        self
    }

    /// Whether the tier's key keeps principals apart (see
    /// [`LastKnownGood::key_includes_principal`](crate::LastKnownGood::key_includes_principal)).
    pub fn includes_principal(&self) -> bool {
        self.key_includes_principal
    }

    /// Remembers `value`, which holds `bytes` bytes of memory (counted
    /// against [`LastKnownGood::max_bytes`](crate::LastKnownGood::max_bytes)).
    pub fn record(self, value: V, bytes: usize) {
        (self.store)(value, bytes);
    }
}

impl<V> fmt::Debug for Recorder<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder").finish_non_exhaustive()
    }
}

/// The mode for responses of any `Clone` type `Res`.
///
/// Tiers produce `Res` values, the last-known-good tier stores clones of
/// successful responses, and [`Info`](Mode::Info) is `I`, captured from each
/// request by `X` (nothing by default). A plain response has no standard
/// place for a degraded marker; set one with
/// [`Builder::mark_degraded`](crate::Builder::mark_degraded).
pub struct Plain<Res, I = (), X = NoCapture> {
    capture: X,
    mark: Option<fn(&mut Res, Degraded)>,
    _types: PhantomData<fn() -> (Res, I)>,
}

impl<Res, I, X> Plain<Res, I, X> {
    pub(crate) fn new(capture: X) -> Self {
        Self {
            capture,
            mark: None,
            _types: PhantomData,
        }
    }

    pub(crate) fn set_mark(&mut self, mark: fn(&mut Res, Degraded)) {
        self.mark = Some(mark);
    }

    fn marked(&self, mut res: Res, degraded: Degraded) -> Res {
        if let Some(mark) = self.mark {
            mark(&mut res, degraded);
        }
        res
    }
}

impl<Res, I, X: fmt::Debug> fmt::Debug for Plain<Res, I, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plain")
            .field("capture", &self.capture)
            .field("marks", &self.mark.is_some())
            .finish()
    }
}

/// Captures nothing from requests: [`Plain`]'s default.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCapture;

/// A request-info capture for [`Plain`]: [`NoCapture`] or any
/// `Fn(&Req) -> I`.
pub trait CaptureWith<Req, I> {
    /// Captures `I` from `req`.
    fn capture_with(&self, req: &Req) -> I;
}

impl<Req> CaptureWith<Req, ()> for NoCapture {
    #[inline]
    fn capture_with(&self, _req: &Req) {}
}

impl<F, Req, I> CaptureWith<Req, I> for F
where
    F: Fn(&Req) -> I,
{
    #[inline]
    fn capture_with(&self, req: &Req) -> I {
        self(req)
    }
}

impl<Res, I, X> Mode for Plain<Res, I, X>
where
    Res: Clone + Send + Sync + 'static,
    I: Clone + Send + Sync + 'static,
    X: Send + Sync + 'static,
{
    type Info = I;
    type Stored = Res;
    type Alternative = Res;
}

impl<Req, Res, I, X> Capture<Req> for Plain<Res, I, X>
where
    Res: Clone + Send + Sync + 'static,
    I: Clone + Send + Sync + 'static,
    X: CaptureWith<Req, I> + Send + Sync + 'static,
{
    #[inline]
    fn capture(&self, req: &Req) -> I {
        self.capture.capture_with(req)
    }
}

impl<Res, I, X> Respond<Res> for Plain<Res, I, X>
where
    Res: Clone + Send + Sync + 'static,
    I: Clone + Send + Sync + 'static,
    X: Send + Sync + 'static,
{
    type Response = Res;

    #[inline]
    fn pass(res: Res) -> Res {
        res
    }

    /// Stores a clone, charged its inline size: the heap data a plain
    /// value owns is unknown to the layer.
    fn record(&self, res: Res, _info: &I, recorder: Recorder<Res>) -> Res {
        recorder.record(res.clone(), std::mem::size_of::<Res>());
        res
    }

    fn serve(&self, stored: Res, degraded: Degraded) -> Res {
        self.marked(stored, degraded)
    }

    fn serve_alternative(&self, res: Res, degraded: Degraded) -> Res {
        self.marked(res, degraded)
    }
}
