use std::error::Error;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use seawall_core::problem::Problem;
use seawall_core::{hint, rejection, GrpcCode};

/// The media type of an RFC 9457 problem document.
pub use seawall_core::problem::PROBLEM_JSON;

/// What seawall answers for an error, over HTTP or gRPC: only seawall's own
/// status, kind, fixed text and hint, never the error's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) problem: Problem,
    pub(crate) grpc_code: GrpcCode,
}

fn in_chain<T: Error + 'static>(err: &(dyn Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.is::<T>() {
            return true;
        }
        current = e.source();
    }
    false
}

impl Answer {
    pub(crate) fn of(err: &(dyn Error + 'static)) -> Self {
        if let Some(rejected) = rejection::find(err) {
            return Self {
                problem: Problem::from_rejected(rejected),
                grpc_code: rejected.grpc_code(),
            };
        }
        if in_chain::<tower::timeout::error::Elapsed>(err)
            || in_chain::<tokio::time::error::Elapsed>(err)
        {
            return Self {
                problem: Problem::new(StatusCode::GATEWAY_TIMEOUT, "timeout")
                    .with_detail("the request timed out"),
                grpc_code: GrpcCode::DeadlineExceeded,
            };
        }
        if in_chain::<tower::load_shed::error::Overloaded>(err) {
            return Self {
                problem: Problem::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded")
                    .with_detail("the service is overloaded"),
                grpc_code: GrpcCode::Unavailable,
            };
        }
        // An unknown error's message may describe internals; it is not sent.
        Self {
            problem: Problem::internal(),
            grpc_code: GrpcCode::Unknown,
        }
    }

    pub(crate) fn http_response(&self) -> Response<Full<Bytes>> {
        self.problem
            .to_response()
            .map(|json| Full::new(Bytes::from(json)))
    }

    /// A trailers-only gRPC answer: HTTP 200, `content-type:
    /// application/grpc`, `grpc-status`, `grpc-message` and, with a hint,
    /// `grpc-retry-pushback-ms`; no body.
    pub(crate) fn grpc_response(&self) -> Response<Full<Bytes>> {
        let mut res = Response::new(Full::new(Bytes::new()));
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::grpc::GRPC_CONTENT_TYPE),
        );
        headers.insert(
            seawall_core::grpc::GRPC_STATUS,
            HeaderValue::from_static(self.grpc_code.as_str()),
        );
        let message = self.problem.detail().unwrap_or("the request failed");
        if let Ok(value) =
            HeaderValue::try_from(seawall_core::grpc::percent_encode_message(message))
        {
            headers.insert(seawall_core::grpc::GRPC_MESSAGE, value);
        }
        if let Some(after) = self.problem.retry_after() {
            headers.insert(
                hint::GRPC_RETRY_PUSHBACK,
                HeaderValue::from(hint::grpc_pushback_ms(after)),
            );
        }
        res
    }
}

/// The problem+json response for an error.
///
/// - A seawall [`Rejection`](crate::Rejection) anywhere in the error's source
///   chain gives its status, a `Retry-After` header in whole seconds (see
///   [`retry_after_secs`](seawall_core::hint::retry_after_secs): rounded up,
///   at least 1, at most a day) when it has a hint, and its own fixed text
///   ([`Rejected::detail`](crate::Rejected::detail)) as `detail`. The
///   message of the error that wraps it is never sent: it may hold a URL, a
///   key or a password.
/// - tower's or tokio's `Elapsed` gives 504, tower's `Overloaded` 503, each
///   with a fixed `detail`.
/// - Anything else gives 500 with no `detail`.
///
/// The document is written by [`seawall_core::problem`]: members `type`
/// (`about:blank`), `title`, `status`, `detail` and the extension member
/// `kind` (e.g. `"circuit_open"`, `"timeout"`, `"internal"`), in that order.
///
/// ```
/// use seawall::http::error_response;
/// use seawall::BoxError;
///
/// let err: BoxError = "database password is hunter2".into();
/// let res = error_response(&*err);
/// assert_eq!(res.status(), 500);
/// assert_eq!(res.headers()["content-type"], "application/problem+json");
/// ```
pub fn error_response(err: &(dyn Error + 'static)) -> Response<Full<Bytes>> {
    let mut res = Answer::of(err).http_response();
    add_refusal_fields(err, &mut res);
    res
}

/// Adds the fields a refusal asks to be answered with: the rate limiter's
/// `RateLimit-Policy` and `RateLimit` (feature `rate-limit`, when its layer
/// writes them), so a `429` carries them like every other answer.
#[cfg_attr(not(feature = "rate-limit"), allow(unused_variables))]
pub(crate) fn add_refusal_fields<B>(err: &(dyn Error + 'static), res: &mut Response<B>) {
    #[cfg(feature = "rate-limit")]
    {
        let mut current = Some(err);
        while let Some(e) = current {
            if let Some(limited) = e.downcast_ref::<seawall_rate_limit::RateLimited>() {
                if let Some((policy, state)) = limited.fields() {
                    let headers = res.headers_mut();
                    headers.insert(
                        seawall_rate_limit::headers::RATELIMIT_POLICY,
                        policy.clone(),
                    );
                    headers.insert(seawall_rate_limit::headers::RATELIMIT, state.clone());
                }
                return;
            }
            current = e.source();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use seawall_core::{BoxError, Rejected};
    use std::fmt;
    use std::time::Duration;

    async fn json(res: Response<Full<Bytes>>) -> serde_json::Value {
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn rejection_keeps_status_hint_and_own_text() {
        let err: BoxError = Box::new(Rejected::new(
            "test_reject",
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_millis(2_100)),
        ));
        let res = error_response(&*err);
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[header::RETRY_AFTER], "3");
        let doc = json(res).await;
        assert_eq!(doc["status"], 429);
        assert_eq!(doc["title"], "Too Many Requests");
        assert_eq!(doc["type"], "about:blank");
        assert_eq!(doc["kind"], "test_reject");
        assert_eq!(doc["detail"], "too many requests");
    }

    #[derive(Debug)]
    struct Leaky(BoxError);
    impl fmt::Display for Leaky {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("GET https://pay.example/charge?api_key=sk_live_SECRET: ")?;
            fmt::Display::fmt(&self.0, f)
        }
    }
    impl Error for Leaky {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[tokio::test]
    async fn wrapping_error_text_never_reaches_the_body() {
        let open = Rejected::new(
            "circuit_open",
            StatusCode::SERVICE_UNAVAILABLE,
            Some(Duration::MAX),
        );
        let err: BoxError = Box::new(Leaky(Box::new(open)));
        let res = error_response(&*err);
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        // A Duration::MAX hint saturates to one day instead of overflowing.
        assert_eq!(res.headers()[header::RETRY_AFTER], "86400");
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(!text.contains("SECRET"), "{text}");
        assert!(!text.contains("pay.example"), "{text}");
        assert_eq!(
            text,
            r#"{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"the circuit breaker is open","kind":"circuit_open"}"#
        );
    }

    #[tokio::test]
    async fn timeouts_overload_and_unknown() {
        let elapsed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        let res = error_response(&*elapsed);
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(res.headers().get(header::RETRY_AFTER).is_none());
        assert_eq!(json(res).await["kind"], "timeout");

        let overloaded: BoxError = Box::new(tower::load_shed::error::Overloaded::new());
        assert_eq!(
            error_response(&*overloaded).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );

        let secret: BoxError = "connection string postgres://admin:pw@db".into();
        let res = error_response(&*secret);
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let doc = json(res).await;
        assert_eq!(doc["kind"], "internal");
        assert!(doc.get("detail").is_none());
        assert!(!doc.to_string().contains("admin"));
    }

    #[test]
    fn grpc_answers_by_kind() {
        let cases: [(BoxError, GrpcCode); 6] = [
            (
                Rejected::new("circuit_open", StatusCode::SERVICE_UNAVAILABLE, None).into(),
                GrpcCode::Unavailable,
            ),
            (
                Rejected::new("bulkhead_timeout", StatusCode::SERVICE_UNAVAILABLE, None).into(),
                GrpcCode::Unavailable,
            ),
            (
                Rejected::new("rate_limited", StatusCode::TOO_MANY_REQUESTS, None).into(),
                GrpcCode::ResourceExhausted,
            ),
            (
                Rejected::new("upstream_timeout", StatusCode::GATEWAY_TIMEOUT, None).into(),
                GrpcCode::DeadlineExceeded,
            ),
            (
                Box::new(tower::timeout::error::Elapsed::new()),
                GrpcCode::DeadlineExceeded,
            ),
            ("secret text".into(), GrpcCode::Unknown),
        ];
        for (err, code) in cases {
            let res = Answer::of(&*err).grpc_response();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(res.headers()[header::CONTENT_TYPE], "application/grpc");
            assert_eq!(res.headers()["grpc-status"], code.as_str(), "{err}");
            let message = res.headers()["grpc-message"].to_str().unwrap();
            assert!(!message.contains("secret"));
            assert!(res.headers().get("grpc-retry-pushback-ms").is_none());
        }
    }

    #[test]
    fn grpc_answer_carries_pushback_and_encoded_message() {
        let r = Rejected::new(
            "quota",
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_millis(1_500)),
        )
        .with_detail("100% used");
        let err: BoxError = r.into();
        let res = Answer::of(&*err).grpc_response();
        assert_eq!(res.headers()["grpc-status"], "8");
        assert_eq!(res.headers()["grpc-message"], "100%25 used");
        assert_eq!(res.headers()["grpc-retry-pushback-ms"], "1500");
    }
}
