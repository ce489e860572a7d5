use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use seawall_core::{hint, BoxError};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};
use tower_layer::Layer;
use tower_service::Service;

use crate::http::problem::Answer;

/// The answer to a seawall-recognised error (a rejection, a timeout, tower's
/// `Overloaded`), or `None`.
fn seawall_answer(err: &(dyn Error + 'static)) -> Option<Answer> {
    let answer = Answer::of(err);
    (answer.problem.kind() != "internal").then_some(answer)
}

fn status_of(answer: &Answer) -> Status {
    let mut metadata = MetadataMap::new();
    if let Some(after) = answer.problem.retry_after() {
        metadata.insert(
            hint::GRPC_RETRY_PUSHBACK,
            MetadataValue::from(hint::grpc_pushback_ms(after)),
        );
    }
    Status::with_metadata(
        Code::from_i32(answer.grpc_code.as_i32()),
        answer.problem.detail().unwrap_or("the request failed"),
        metadata,
    )
}

/// The [`Status`] for an error, with seawall's own text only: no text,
/// details or metadata of any other error reaches it, so it may be sent to
/// a remote caller.
///
/// - A seawall rejection anywhere in the source chain gives its code
///   ([`Rejected::grpc_code`](crate::Rejected::grpc_code): `UNAVAILABLE` for
///   an open breaker or a full bulkhead, `RESOURCE_EXHAUSTED` for a rate
///   limit, ...), its fixed text as the message, and its hint as
///   `grpc-retry-pushback-ms` metadata.
/// - tower's or tokio's `Elapsed` gives `DEADLINE_EXCEEDED`, tower's
///   `Overloaded` `UNAVAILABLE`.
/// - A `Status` in the chain (one a downstream service answered, say) keeps
///   only its code: the message becomes the fixed "the upstream call
///   failed", and its details and metadata (which may carry the
///   downstream's internal text, tokens or its own pushback) are dropped.
///   A client that wants the downstream status as it came uses
///   [`into_status`] or the error itself; a server proxying statuses should
///   also consider whether the downstream's code (`UNAUTHENTICATED`,
///   `NOT_FOUND`...) means the same to its own callers.
/// - Anything else gives `UNKNOWN` with a fixed message.
///
/// ```
/// use std::time::Duration;
/// use http::StatusCode;
/// use seawall::{grpc, BoxError, Rejected};
/// use tonic::Code;
///
/// let err: BoxError = Rejected::new(
///     "rate_limited",
///     StatusCode::TOO_MANY_REQUESTS,
///     Some(Duration::from_millis(300)),
/// )
/// .into();
/// let status = grpc::to_status(&*err);
/// assert_eq!(status.code(), Code::ResourceExhausted);
/// assert_eq!(status.metadata().get("grpc-retry-pushback-ms").unwrap(), "300");
///
/// let secret: BoxError = "postgres://admin:hunter2@db".into();
/// let status = grpc::to_status(&*secret);
/// assert_eq!(status.code(), Code::Unknown);
/// assert!(!status.message().contains("hunter2"));
///
/// let downstream: BoxError = tonic::Status::not_found("row 7 in db10.internal").into();
/// let status = grpc::to_status(&*downstream);
/// assert_eq!(status.code(), Code::NotFound);
/// assert_eq!(status.message(), "the upstream call failed");
/// ```
pub fn to_status(err: &(dyn Error + 'static)) -> Status {
    if let Some(answer) = seawall_answer(err) {
        return status_of(&answer);
    }
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(status) = e.downcast_ref::<Status>() {
            // The code only: the message, details and metadata are the
            // downstream's text, not seawall's.
            return Status::new(status.code(), "the upstream call failed");
        }
        current = e.source();
    }
    Status::unknown("the request failed")
}

/// The [`Status`] for an error a client got from its own stack.
///
/// A seawall-recognised error gives the same code, message and metadata as
/// [`to_status`], and the original error stays reachable as the status's
/// [`source`](Error::source) (so `CircuitOpen` can still be matched). Any
/// other error is handed to tonic's own [`Status::from_error`], exactly as
/// if seawall were not there (for an unknown error, that message is the
/// error's text: do not forward such a status to a remote caller; use
/// [`to_status`] for that).
///
/// ```
/// use http::StatusCode;
/// use seawall::{grpc, BoxError, Rejected};
/// use tonic::Code;
///
/// let err: BoxError = Rejected::new("circuit_open", StatusCode::SERVICE_UNAVAILABLE, None).into();
/// let status = grpc::into_status(err);
/// assert_eq!(status.code(), Code::Unavailable);
/// assert!(std::error::Error::source(&status).unwrap().is::<Rejected>());
/// ```
pub fn into_status(err: BoxError) -> Status {
    match seawall_answer(&*err) {
        Some(answer) => {
            let mut status = status_of(&answer);
            status.set_source(Arc::from(err));
            status
        }
        None => Status::from_error(err),
    }
}

/// Turns the errors of a client stack into [`tonic::Status`] (boxed, so the
/// stack still returns `BoxError`), which tonic's generated clients return
/// to the caller as they are.
///
/// Put it outermost in a client stack under the tonic client
/// (`ServiceBuilder::new().rejection_status().circuit_breaker(..).service(channel)`):
/// an open breaker then reaches client code as `Code::Unavailable` with the
/// message "the circuit breaker is open", instead of `Code::Unknown`. See
/// [`into_status`] for the mapping.
///
/// ```
/// use http::StatusCode;
/// use seawall::{grpc::RejectionStatusLayer, BoxError, Rejected};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(RejectionStatusLayer::new())
///     .service_fn(|_: ()| async {
///         Err::<(), BoxError>(Rejected::new("bulkhead_full", StatusCode::SERVICE_UNAVAILABLE, None).into())
///     });
/// let err = svc.oneshot(()).await.unwrap_err();
/// let status = err.downcast_ref::<tonic::Status>().unwrap();
/// assert_eq!(status.code(), tonic::Code::Unavailable);
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct RejectionStatusLayer {
    _priv: (),
}

impl RejectionStatusLayer {
    /// A new layer.
    pub const fn new() -> Self {
        Self { _priv: () }
    }
}

impl<S> Layer<S> for RejectionStatusLayer {
    type Service = RejectionStatus<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RejectionStatus { inner }
    }
}

/// The service made by [`RejectionStatusLayer`].
#[derive(Debug, Clone)]
pub struct RejectionStatus<S> {
    inner: S,
}

impl<S> RejectionStatus<S> {
    /// Wraps `inner`.
    pub const fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

fn boxed_status(err: impl Into<BoxError>) -> BoxError {
    Box::new(into_status(err.into()))
}

impl<S, Req> Service<Req> for RejectionStatus<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = RejectionStatusFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(boxed_status)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        RejectionStatusFuture {
            future: self.inner.call(req),
        }
    }
}

pin_project! {
    /// The response future of [`RejectionStatus`].
    pub struct RejectionStatusFuture<F> {
        #[pin]
        future: F,
    }
}

impl<F> std::fmt::Debug for RejectionStatusFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RejectionStatusFuture")
            .finish_non_exhaustive()
    }
}

impl<F, T, E> Future for RejectionStatusFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(ready!(self.project().future.poll(cx)).map_err(boxed_status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use seawall_core::Rejected;
    use std::time::Duration;

    #[test]
    fn codes_by_error() {
        let cases: [(BoxError, Code); 5] = [
            (
                Rejected::new("circuit_open", StatusCode::SERVICE_UNAVAILABLE, None).into(),
                Code::Unavailable,
            ),
            (
                Rejected::new("rate_limited", StatusCode::TOO_MANY_REQUESTS, None).into(),
                Code::ResourceExhausted,
            ),
            (
                Box::new(tower::timeout::error::Elapsed::new()),
                Code::DeadlineExceeded,
            ),
            (
                Box::new(tower::load_shed::error::Overloaded::new()),
                Code::Unavailable,
            ),
            (Box::new(Status::not_found("no such row")), Code::NotFound),
        ];
        for (err, code) in cases {
            assert_eq!(to_status(&*err).code(), code, "{err}");
            assert_eq!(into_status(err).code(), code);
        }
    }

    #[test]
    fn to_status_never_sends_inner_text() {
        let err: BoxError = "https://api.example/?key=SECRET".into();
        let status = to_status(&*err);
        assert_eq!(status.code(), Code::Unknown);
        assert_eq!(status.message(), "the request failed");
        // into_status leaves unknown errors to tonic, for local use.
        assert_eq!(into_status(err).code(), Code::Unknown);
    }

    #[test]
    fn to_status_keeps_only_the_code_of_a_downstream_status() {
        #[derive(Debug)]
        struct Wrapped(Status);
        impl std::fmt::Display for Wrapped {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("call failed")
            }
        }
        impl Error for Wrapped {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                Some(&self.0)
            }
        }
        let mut metadata = MetadataMap::new();
        metadata.insert("x-internal-token", MetadataValue::from_static("SECRET-T"));
        metadata.insert("grpc-retry-pushback-ms", MetadataValue::from_static("5"));
        let downstream = Status::with_details_and_metadata(
            Code::PermissionDenied,
            "user 42 lacks role admin on db10.internal (SECRET-M)",
            b"SECRET-D".to_vec().into(),
            metadata,
        );
        let err: BoxError = Box::new(Wrapped(downstream));
        let status = to_status(&*err);
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(status.message(), "the upstream call failed");
        assert!(status.details().is_empty());
        assert!(status.metadata().is_empty(), "{:?}", status.metadata());
        let shown = format!("{status:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
    }

    #[test]
    fn pushback_metadata_saturates() {
        let err: BoxError = Rejected::new(
            "circuit_open",
            StatusCode::SERVICE_UNAVAILABLE,
            Some(Duration::MAX),
        )
        .into();
        let status = into_status(err);
        assert_eq!(
            status.metadata().get("grpc-retry-pushback-ms").unwrap(),
            "86400000"
        );
        assert!(status.source().unwrap().is::<Rejected>());
    }
}
