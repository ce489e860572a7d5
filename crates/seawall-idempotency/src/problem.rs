//! The layer's own answers: RFC 9457 problem documents.

use std::fmt::Write;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::body::ResponseBody;

/// The media type of the layer's own error responses.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A refusal by the layer, before or instead of the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) status: StatusCode,
    pub(crate) kind: &'static str,
    pub(crate) detail: &'static str,
    pub(crate) retry_after: Option<Duration>,
}

impl Problem {
    pub(crate) const fn new(status: StatusCode, kind: &'static str, detail: &'static str) -> Self {
        Self {
            status,
            kind,
            detail,
            retry_after: None,
        }
    }

    pub(crate) const fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The same document shape as `seawall::http::error_response`: `type`,
    /// `title`, `status`, `detail`, and the extension member `kind`.
    pub(crate) fn body(&self) -> String {
        let mut out = String::with_capacity(96 + self.detail.len());
        out.push_str("{\"type\":\"about:blank\",\"title\":");
        push_json_str(&mut out, self.status.canonical_reason().unwrap_or("Error"));
        out.push_str(",\"status\":");
        out.push_str(self.status.as_str());
        out.push_str(",\"detail\":");
        push_json_str(&mut out, self.detail);
        out.push_str(",\"kind\":");
        push_json_str(&mut out, self.kind);
        out.push('}');
        out
    }

    pub(crate) fn response<B>(&self) -> Response<ResponseBody<B>> {
        let mut res = Response::new(ResponseBody::full(Bytes::from(self.body())));
        *res.status_mut() = self.status;
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(after) = self.retry_after {
            res.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(after)));
        }
        res
    }
}

/// Whole seconds, rounded up so a client never comes back early, and at
/// least 1.
pub(crate) fn retry_after_secs(after: Duration) -> u64 {
    after
        .as_secs()
        .saturating_add(u64::from(after.subsec_nanos() > 0))
        .max(1)
}

fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_shape_and_escaping() {
        let p = Problem::new(
            StatusCode::CONFLICT,
            "idempotency_in_flight",
            "a \"quoted\"\n\\ detail",
        )
        .retry_after(Duration::from_millis(1_500));
        let doc: serde_json::Value = serde_json::from_str(&p.body()).unwrap();
        assert_eq!(doc["type"], "about:blank");
        assert_eq!(doc["title"], "Conflict");
        assert_eq!(doc["status"], 409);
        assert_eq!(doc["detail"], "a \"quoted\"\n\\ detail");
        assert_eq!(doc["kind"], "idempotency_in_flight");
        let res = p.response::<http_body_util::Empty<Bytes>>();
        assert_eq!(res.headers()[CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(res.headers()[RETRY_AFTER], "2");
    }

    #[test]
    fn retry_after_is_whole_seconds_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(10)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(Duration::from_millis(3_001)), 4);
        assert_eq!(retry_after_secs(Duration::MAX), u64::MAX);
    }
}
