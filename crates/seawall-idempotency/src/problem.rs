//! The layer's own answers: RFC 9457 problem documents, written by
//! [`seawall_core::problem`] so they match every other seawall answer member
//! for member.

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};

use crate::body::ResponseBody;

/// The media type of the layer's own error responses.
pub use seawall_core::problem::PROBLEM_JSON;

/// A refusal by the layer, before or instead of the handler. Its texts are
/// `&'static str`: the layer's own words, never request data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Problem(seawall_core::problem::Problem);

impl Problem {
    pub(crate) const fn new(status: StatusCode, kind: &'static str, detail: &'static str) -> Self {
        Self(seawall_core::problem::Problem::new(status, kind).with_detail(detail))
    }

    /// Adds a `Retry-After`, in whole seconds rounded up, at least 1 and at
    /// most a day ([`seawall_core::hint::retry_after_secs`]).
    pub(crate) const fn retry_after(self, after: Duration) -> Self {
        Self(self.0.with_retry_after(after))
    }

    pub(crate) fn response<B>(&self) -> Response<ResponseBody<B>> {
        self.0
            .to_response()
            .map(|json| ResponseBody::full(Bytes::from(json)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONTENT_TYPE, RETRY_AFTER};
    use http_body_util::BodyExt;

    async fn body_text(res: Response<ResponseBody<http_body_util::Empty<Bytes>>>) -> String {
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn document_shape_order_and_escaping() {
        let p = Problem::new(
            StatusCode::CONFLICT,
            "idempotency_in_flight",
            "a \"quoted\"\n\\ detail",
        )
        .retry_after(Duration::from_millis(1_500));
        let res = p.response::<http_body_util::Empty<Bytes>>();
        assert_eq!(res.status(), StatusCode::CONFLICT);
        assert_eq!(res.headers()[CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(res.headers()[RETRY_AFTER], "2");
        let text = body_text(res).await;
        // The one field order shared with `seawall::http::error_response`.
        assert_eq!(
            text,
            r#"{"type":"about:blank","title":"Conflict","status":409,"detail":"a \"quoted\"\u000a\\ detail","kind":"idempotency_in_flight"}"#
        );
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["detail"], "a \"quoted\"\n\\ detail");
    }

    #[test]
    fn retry_after_is_whole_seconds_at_least_one_at_most_a_day() {
        let header = |after| {
            Problem::new(StatusCode::CONFLICT, "k", "d")
                .retry_after(after)
                .response::<http_body_util::Empty<Bytes>>()
                .headers()[RETRY_AFTER]
                .clone()
        };
        assert_eq!(header(Duration::ZERO), "1");
        assert_eq!(header(Duration::from_millis(10)), "1");
        assert_eq!(header(Duration::from_secs(3)), "3");
        assert_eq!(header(Duration::from_millis(3_001)), "4");
        assert_eq!(header(Duration::MAX), "86400");
    }
}
