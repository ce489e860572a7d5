use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use seawall_core::BoxError;
use tower_layer::Layer;
use tower_service::Service;

use super::problem::Answer;

/// Turns the errors of the inner service into HTTP responses, or gRPC
/// answers for gRPC requests.
///
/// The resulting service's error type is [`Infallible`], so it mounts on an
/// axum `Router` directly (`Router::route_service`, or as a layer) without
/// `HandleErrorLayer`. See [`error_response`](super::error_response) for
/// the mapping: a seawall rejection keeps its status and `Retry-After`,
/// timeouts are 504, anything else is 500; the body is
/// `application/problem+json` and carries seawall's own text only.
///
/// A request whose `content-type` starts with `application/grpc` gets a
/// trailers-only gRPC answer instead (see
/// [`grpc::error_response`](crate::grpc::error_response)): HTTP 200,
/// `grpc-status` `UNAVAILABLE` for an open breaker or a full bulkhead,
/// `RESOURCE_EXHAUSTED` for a rate limit, `DEADLINE_EXCEEDED` for a
/// timeout, `UNKNOWN` for any other error, with `grpc-retry-pushback-ms`
/// from the hint. A tonic client then sees the right `Code` instead of
/// failing to read a problem document as a gRPC frame. The answer's
/// `content-type` is `application/grpc`, or for a gRPC-Web request
/// `application/grpc-web` (`application/grpc-web-text` for a
/// `application/grpc-web-text…` request), so a gRPC-Web client reads it in
/// its own protocol; the rest of the answer is the same.
///
/// Successful responses pass through untouched; the body type becomes
/// [`Either`]`<B, Full<Bytes>>`, which allocates nothing on that path.
///
/// ```
/// use http::{Request, Response, StatusCode};
/// use seawall::http::RejectionResponseLayer;
/// use tower::{BoxError, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(RejectionResponseLayer::new())
///     .service_fn(|_req: Request<()>| async {
///         Err::<Response<String>, BoxError>("boom".into())
///     });
/// let res = svc.oneshot(Request::new(())).await.unwrap();
/// assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct RejectionResponseLayer {
    _priv: (),
}

impl RejectionResponseLayer {
    /// A new layer.
    pub const fn new() -> Self {
        Self { _priv: () }
    }
}

impl<S> Layer<S> for RejectionResponseLayer {
    type Service = RejectionResponse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RejectionResponse::new(inner)
    }
}

/// The service made by [`RejectionResponseLayer`].
#[derive(Debug)]
pub struct RejectionResponse<S> {
    inner: S,
    /// The answer to an error the inner service reported from `poll_ready`;
    /// the next call answers with it instead of calling in.
    not_ready: Option<Answer>,
}

impl<S: Clone> Clone for RejectionResponse<S> {
    fn clone(&self) -> Self {
        // A clone has not been polled ready; it owns no pending error.
        Self::new(self.inner.clone())
    }
}

impl<S> RejectionResponse<S> {
    /// Wraps `inner`.
    pub const fn new(inner: S) -> Self {
        Self {
            inner,
            not_ready: None,
        }
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

impl<S, ReqBody, B> Service<Request<ReqBody>> for RejectionResponse<S>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Either<B, Full<Bytes>>>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.not_ready.is_some() {
            return Poll::Ready(Ok(()));
        }
        match ready!(self.inner.poll_ready(cx)) {
            Ok(()) => {}
            Err(err) => self.not_ready = Some(Answer::of(&*err.into())),
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let grpc = grpc_content_type(req.headers());
        match self.not_ready.take() {
            Some(answer) => ResponseFuture {
                state: State::Failed {
                    res: Some(respond(&answer, grpc)),
                },
            },
            None => ResponseFuture {
                state: State::Called {
                    future: self.inner.call(req),
                    grpc,
                },
            },
        }
    }
}

/// The `content-type` of the gRPC answer to a request with these headers,
/// or `None` for a request that is not gRPC: `application/grpc-web-text`
/// and `application/grpc-web` (with any `+format`) answer in kind, any
/// other `application/grpc…` with `application/grpc`.
fn grpc_content_type(headers: &http::HeaderMap) -> Option<&'static str> {
    const WEB_TEXT: &[u8] = b"application/grpc-web-text";
    const WEB: &[u8] = b"application/grpc-web";
    if !crate::grpc::is_grpc_request(headers) {
        return None;
    }
    let value = headers
        .get(http::header::CONTENT_TYPE)
        .map_or(&b""[..], http::HeaderValue::as_bytes);
    let starts = |prefix: &[u8]| {
        value.len() >= prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix)
    };
    Some(if starts(WEB_TEXT) {
        "application/grpc-web-text"
    } else if starts(WEB) {
        "application/grpc-web"
    } else {
        crate::grpc::GRPC_CONTENT_TYPE
    })
}

fn respond(answer: &Answer, grpc: Option<&'static str>) -> Response<Full<Bytes>> {
    match grpc {
        Some(content_type) => {
            let mut res = answer.grpc_response();
            res.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(content_type),
            );
            res
        }
        None => answer.http_response(),
    }
}

pin_project! {
    /// The response future of [`RejectionResponse`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] future: F, grpc: Option<&'static str> },
        Failed { res: Option<Response<Full<Bytes>>> },
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Either<B, Full<Bytes>>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { future, grpc } => Poll::Ready(Ok(match ready!(future.poll(cx)) {
                Ok(res) => res.map(Either::Left),
                Err(err) => {
                    let err = err.into();
                    let mut res = respond(&Answer::of(&*err), *grpc);
                    super::problem::add_refusal_fields(&*err, &mut res);
                    res.map(Either::Right)
                }
            })),
            StateProj::Failed { res } => Poll::Ready(Ok(res
                .take()
                .map_or_else(failed_twice, |res| res.map(Either::Right)))),
        }
    }
}

/// A `Failed` future polled again after completion: answer 500 rather than
/// panic.
#[cold]
fn failed_twice<B>() -> Response<Either<B, Full<Bytes>>> {
    let err: BoxError = "response future polled after completion".into();
    super::error_response(&*err).map(Either::Right)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, StatusCode};
    use std::time::Duration;
    use tower::{ServiceBuilder, ServiceExt};

    #[tokio::test]
    async fn success_passes_through() {
        let svc = RejectionResponseLayer::new().layer(tower::service_fn(|_: Request<()>| async {
            Ok::<_, BoxError>(Response::new("fine"))
        }));
        let res = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(matches!(res.into_body(), Either::Left("fine")));
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_below_becomes_504() {
        let svc = ServiceBuilder::new()
            .layer(RejectionResponseLayer::new())
            .timeout(Duration::from_secs(1))
            .service_fn(|_: Request<()>| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, BoxError>(Response::new(()))
            });
        let res = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    }

    /// A service whose `poll_ready` fails once.
    #[derive(Clone)]
    struct FailsReady(bool);
    impl Service<Request<()>> for FailsReady {
        type Response = Response<()>;
        type Error = BoxError;
        type Future = std::future::Ready<Result<Response<()>, BoxError>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            if std::mem::take(&mut self.0) {
                Poll::Ready(Err(Box::new(tower::load_shed::error::Overloaded::new())))
            } else {
                Poll::Ready(Ok(()))
            }
        }
        fn call(&mut self, _: Request<()>) -> Self::Future {
            std::future::ready(Ok(Response::new(())))
        }
    }

    fn grpc_request() -> Request<()> {
        Request::builder()
            .header("content-type", "application/grpc+proto")
            .body(())
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_requests_get_trailers_only_answers() {
        use http_body::Body as _;
        let svc = ServiceBuilder::new()
            .layer(RejectionResponseLayer::new())
            .timeout(Duration::from_secs(1))
            .service_fn(|_: Request<()>| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, BoxError>(Response::new(()))
            });
        let res = svc.clone().oneshot(grpc_request()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "application/grpc");
        assert_eq!(res.headers()["grpc-status"], "4");
        assert_eq!(res.headers()["grpc-message"], "the request timed out");
        match res.body() {
            Either::Right(body) => assert!(body.is_end_stream(), "trailers-only: no body"),
            Either::Left(()) => panic!("the inner service did not answer"),
        }

        // The same error for a plain HTTP request stays a problem document.
        let res = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
    }

    /// gRPC-Web clients read a trailers-only answer in their own protocol:
    /// the same status fields, with their own `content-type`.
    #[tokio::test(start_paused = true)]
    async fn grpc_web_requests_are_answered_as_grpc_web() {
        let svc = ServiceBuilder::new()
            .layer(RejectionResponseLayer::new())
            .timeout(Duration::from_secs(1))
            .service_fn(|_: Request<()>| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, BoxError>(Response::new(()))
            });
        for (asked, answered) in [
            ("application/grpc-web", "application/grpc-web"),
            ("application/grpc-web+proto", "application/grpc-web"),
            ("Application/gRPC-Web+json", "application/grpc-web"),
            ("application/grpc-web-text", "application/grpc-web-text"),
            (
                "application/grpc-web-text+proto",
                "application/grpc-web-text",
            ),
            ("application/grpc", "application/grpc"),
            ("application/grpc+proto", "application/grpc"),
        ] {
            let req = Request::builder()
                .header("content-type", asked)
                .body(())
                .unwrap();
            let res = svc.clone().oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{asked}");
            assert_eq!(res.headers()["content-type"], answered, "{asked}");
            assert_eq!(res.headers()["grpc-status"], "4", "{asked}");
            assert_eq!(
                res.headers()["grpc-message"],
                "the request timed out",
                "{asked}"
            );
        }
        // A poll_ready failure answers gRPC-Web in kind too.
        let mut svc = RejectionResponse::new(FailsReady(true));
        let req = Request::builder()
            .header("content-type", "application/grpc-web-text")
            .body(())
            .unwrap();
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.headers()["content-type"], "application/grpc-web-text");
        assert_eq!(res.headers()["grpc-status"], "14");
    }

    #[tokio::test]
    async fn poll_ready_error_answers_grpc_too() {
        let mut svc = RejectionResponse::new(FailsReady(true));
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(grpc_request())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["grpc-status"], "14");
    }

    #[tokio::test]
    async fn poll_ready_error_answers_the_next_call() {
        let mut svc = RejectionResponse::new(FailsReady(true));
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
}
