use std::fmt;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderName, CONTENT_LENGTH};
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{Either, Full};
use seawall_core::{BoxError, Listener};
use tower_service::Service;

use crate::body::ResponseBody;
use crate::event::{IdempotencyEvent, IdempotencyEventKind};
use crate::execution;
use crate::future::ResponseFuture;
use crate::key::{parse_key, KeyProblem};
use crate::layer::Shared;
use crate::problem::Problem;
use crate::store::Store;

/// The `Idempotency-Key` request header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The response header marking a replayed response (`true`).
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The body the wrapped service receives: the original body for requests
/// the layer passes through, the buffered body for the others.
pub type RequestBody<B> = Either<B, Full<Bytes>>;

/// The service of an [`IdempotencyLayer`](crate::IdempotencyLayer).
pub struct Idempotency<S, St, L> {
    inner: S,
    shared: Arc<Shared<St, L>>,
}

impl<S, St, L> Idempotency<S, St, L> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<St, L>>) -> Self {
        Self { inner, shared }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone, St, L> Clone for Idempotency<S, St, L> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, St, L> fmt::Debug for Idempotency<S, St, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("name", &self.shared.config.name)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<St, L: Listener<IdempotencyEvent>> Shared<St, L> {
    pub(crate) fn emit(&self, kind: IdempotencyEventKind) {
        if L::ENABLED {
            self.listener
                .on_event(&IdempotencyEvent::new(self.config.name.clone(), kind));
        }
    }
}

pub(crate) fn key_problem(p: KeyProblem) -> Problem {
    let kind = if p == KeyProblem::Missing {
        "idempotency_key_missing"
    } else {
        "idempotency_key_invalid"
    };
    Problem::new(StatusCode::BAD_REQUEST, kind, p.detail())
}

pub(crate) const TOO_LARGE: Problem = Problem::new(
    StatusCode::PAYLOAD_TOO_LARGE,
    "idempotency_body_too_large",
    "the request body is larger than this endpoint buffers for idempotency",
);

impl<S, St, L, ReqB, ResB> Service<Request<ReqB>> for Idempotency<S, St, L>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    St: Store,
    L: Listener<IdempotencyEvent>,
    ReqB: Body + Send + 'static,
    ReqB::Data: Send,
    ReqB::Error: Into<BoxError>,
    ResB: Body + Send + 'static,
    ResB::Data: Send,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let config = &self.shared.config;
        if !config.methods.contains(req.method()) {
            return ResponseFuture::passthrough(self.inner.call(req.map(Either::Left)));
        }
        let key = match parse_key(req.headers(), &IDEMPOTENCY_KEY, config.strict_keys) {
            Ok(Some(key)) => key,
            Ok(None) if !config.require_key => {
                return ResponseFuture::passthrough(self.inner.call(req.map(Either::Left)));
            }
            Ok(None) => {
                self.shared.emit(IdempotencyEventKind::KeyRefused);
                return ResponseFuture::ready(key_problem(KeyProblem::Missing).response());
            }
            Err(problem) => {
                self.shared.emit(IdempotencyEventKind::KeyRefused);
                return ResponseFuture::ready(key_problem(problem).response());
            }
        };
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > config.max_request_body as u64) {
            self.shared.emit(IdempotencyEventKind::BodyTooLarge);
            return ResponseFuture::ready(TOO_LARGE.response());
        }
        // The readied service goes into the future; this one keeps a fresh
        // clone (tower-service's "be careful when cloning inner services").
        let clone = self.inner.clone();
        let inner = mem::replace(&mut self.inner, clone);
        ResponseFuture::running(Box::pin(execution::execute(
            self.shared.clone(),
            inner,
            req,
            key,
        )))
    }
}
