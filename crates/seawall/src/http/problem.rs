use std::error::Error;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// The media type of an RFC 9457 problem document.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// What an error means to an HTTP client.
struct Problem {
    status: StatusCode,
    kind: &'static str,
    detail: Option<String>,
    retry_after: Option<Duration>,
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

impl Problem {
    fn of(err: &(dyn Error + 'static)) -> Self {
        if let Some(rejected) = seawall_core::rejection::find(err) {
            return Self {
                status: rejected.status(),
                kind: rejected.kind(),
                detail: Some(err.to_string()),
                retry_after: rejected.retry_after(),
            };
        }
        if in_chain::<tower::timeout::error::Elapsed>(err)
            || in_chain::<tokio::time::error::Elapsed>(err)
        {
            return Self {
                status: StatusCode::GATEWAY_TIMEOUT,
                kind: "timeout",
                detail: Some("the request timed out".to_owned()),
                retry_after: None,
            };
        }
        if in_chain::<tower::load_shed::error::Overloaded>(err) {
            return Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                kind: "overloaded",
                detail: Some("the service is overloaded".to_owned()),
                retry_after: None,
            };
        }
        // An unknown error's message may describe internals; it is not sent.
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "internal",
            detail: None,
            retry_after: None,
        }
    }

    fn body(&self) -> Bytes {
        let mut doc = serde_json::Map::new();
        doc.insert("type".into(), "about:blank".into());
        doc.insert(
            "title".into(),
            self.status.canonical_reason().unwrap_or("Error").into(),
        );
        doc.insert("status".into(), self.status.as_u16().into());
        if let Some(detail) = &self.detail {
            doc.insert("detail".into(), detail.as_str().into());
        }
        doc.insert("kind".into(), self.kind.into());
        Bytes::from(serde_json::Value::Object(doc).to_string())
    }
}

/// Whole seconds, rounded up so a client never comes back early.
fn retry_after_secs(after: Duration) -> u64 {
    after.as_secs() + u64::from(after.subsec_nanos() > 0)
}

/// The problem+json response for an error.
///
/// - A seawall [`Rejection`](crate::Rejection) anywhere in the error's source
///   chain gives its status, a `Retry-After` header in whole seconds (rounded
///   up) when it has a hint, and its message as `detail`.
/// - tower's or tokio's `Elapsed` gives 504, tower's `Overloaded` 503.
/// - Anything else gives 500, without the error's message (it may describe
///   internals).
///
/// The document has the RFC 9457 members `type` (`about:blank`), `title`,
/// `status` and `detail`, and the extension member `kind` (e.g.
/// `"circuit_open"`, `"timeout"`, `"internal"`).
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
    let problem = Problem::of(err);
    let mut res = Response::new(Full::new(problem.body()));
    *res.status_mut() = problem.status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    if let Some(after) = problem.retry_after {
        res.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after_secs(after)),
        );
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use seawall_core::{BoxError, Rejected};

    async fn json(res: Response<Full<Bytes>>) -> serde_json::Value {
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn rejection_keeps_status_hint_and_message() {
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
        assert_eq!(doc["detail"], err.to_string());
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
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 0);
        assert_eq!(retry_after_secs(Duration::from_secs(7)), 7);
        assert_eq!(retry_after_secs(Duration::from_millis(6_001)), 7);
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
    }
}
