//! What a layer knows about its requests and responses: whether it can
//! answer a call itself, and where a request's headers are.
//!
//! [`Plain`] serves any service, [`Http`] serves `http` services. For other
//! types, a protocol of your own lets HTTP faults answer in your response
//! type, e.g. in a simulation:
//!
//! ```
//! use http::{HeaderMap, StatusCode};
//! use seawall_chaos::protocol::{Answer, Protocol, ProtocolFor};
//! use seawall_chaos::{ChaosLayer, Fault};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! #[derive(Debug, PartialEq)]
//! enum Reply { Ok(u32), Status(u16) }
//!
//! #[derive(Debug, Clone, Copy)]
//! struct Sim;
//! impl Protocol for Sim {
//!     fn answers(&self) -> bool { true }
//!     fn reads_headers(&self) -> bool { false }
//! }
//! impl ProtocolFor<u32, Reply> for Sim {
//!     fn answer(&self, answer: &Answer) -> Option<Reply> {
//!         Some(Reply::Status(answer.status().as_u16()))
//!     }
//!     fn headers<'r>(&self, _req: &'r u32) -> Option<&'r HeaderMap> { None }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = ChaosLayer::builder()
//!     .protocol(Sim)
//!     .fault(Fault::http(StatusCode::TOO_MANY_REQUESTS))
//!     .build()
//!     .unwrap();
//! let svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(Reply::Ok(n)) }));
//! assert_eq!(svc.oneshot(1).await.unwrap(), Reply::Status(429));
//! # }
//! ```

use std::fmt;
use std::time::Duration;

use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use seawall_core::GrpcCode;

use crate::error::FaultKind;

/// A response an HTTP or gRPC fault answers with: a status and headers,
/// built once when the layer is built. The body comes from the layer's
/// [`Protocol`].
#[derive(Debug, Clone)]
pub struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    kind: FaultKind,
}

impl Answer {
    pub(crate) fn http(status: StatusCode, retry_after: Option<Duration>) -> Self {
        let mut headers = HeaderMap::new();
        if let Some(after) = retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        Self {
            status,
            headers,
            kind: FaultKind::Http,
        }
    }

    pub(crate) fn grpc(code: GrpcCode, message: &str) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from(code.as_i32()));
        if !message.is_empty() {
            // Percent-encoding leaves only visible ASCII, always a valid
            // header value.
            if let Ok(value) = HeaderValue::from_str(&percent_encode(message)) {
                headers.insert("grpc-message", value);
            }
        }
        Self {
            status: StatusCode::OK,
            headers,
            kind: FaultKind::Grpc,
        }
    }

    /// The HTTP status (200 for a gRPC answer).
    pub const fn status(&self) -> StatusCode {
        self.status
    }

    /// The headers: `Retry-After` for an HTTP answer that has one;
    /// `content-type`, `grpc-status` and `grpc-message` for a gRPC answer.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// [`FaultKind::Http`] or [`FaultKind::Grpc`].
    pub const fn kind(&self) -> FaultKind {
        self.kind
    }

    /// The answer as a response with `body`.
    pub fn to_response<B>(&self, body: B) -> Response<B> {
        let mut res = Response::new(body);
        *res.status_mut() = self.status;
        res.headers_mut().clone_from(&self.headers);
        res
    }
}

/// gRPC's percent-encoding of `grpc-message`: every byte outside visible
/// ASCII, and `%` itself, as `%XX`.
fn percent_encode(message: &str) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// What a [`ChaosLayer`](crate::ChaosLayer) can do with its service's
/// requests and responses, whatever their types.
///
/// [`Plain`] (the default) works with any service and can neither answer a
/// call nor read headers; [`Http`] works with `http` services. `build()`
/// refuses HTTP and gRPC faults, and header-triggered faults, that the
/// protocol cannot serve.
pub trait Protocol: Clone + Send + Sync + 'static {
    /// Whether the protocol can build responses for HTTP and gRPC faults.
    fn answers(&self) -> bool;

    /// Whether the protocol can read a request's headers, for
    /// header-triggered faults.
    fn reads_headers(&self) -> bool;
}

/// A [`Protocol`] for a service taking `Req` and answering `Res`.
pub trait ProtocolFor<Req, Res>: Protocol {
    /// The response for `answer`, or `None` if this protocol cannot build
    /// one (the call then fails with an
    /// [`InjectedFault`](crate::InjectedFault)).
    fn answer(&self, answer: &Answer) -> Option<Res>;

    /// The request's headers, if it has any.
    fn headers<'r>(&self, req: &'r Req) -> Option<&'r HeaderMap>;
}

/// The protocol of any service: latency, error, connection-reset and hang
/// faults only.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl Protocol for Plain {
    fn answers(&self) -> bool {
        false
    }

    fn reads_headers(&self) -> bool {
        false
    }
}

impl<Req, Res> ProtocolFor<Req, Res> for Plain {
    #[inline]
    fn answer(&self, _answer: &Answer) -> Option<Res> {
        None
    }

    #[inline]
    fn headers<'r>(&self, _req: &'r Req) -> Option<&'r HeaderMap> {
        None
    }
}

/// The protocol of services taking `http::Request<_>` and answering
/// `http::Response<B>`: answers HTTP and gRPC faults with a body from `M`,
/// and reads request headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Http<M = DefaultBody> {
    body: M,
}

impl<M> Http<M> {
    /// The protocol with bodies made by `body`.
    pub const fn new(body: M) -> Self {
        Self { body }
    }
}

impl<M: Clone + Send + Sync + 'static> Protocol for Http<M> {
    fn answers(&self) -> bool {
        true
    }

    fn reads_headers(&self) -> bool {
        true
    }
}

impl<ReqBody, B, M> ProtocolFor<Request<ReqBody>, Response<B>> for Http<M>
where
    M: MakeBody<B>,
{
    fn answer(&self, answer: &Answer) -> Option<Response<B>> {
        Some(answer.to_response(self.body.make_body()))
    }

    #[inline]
    fn headers<'r>(&self, req: &'r Request<ReqBody>) -> Option<&'r HeaderMap> {
        Some(req.headers())
    }
}

/// Makes the (empty) body of an answered response.
pub trait MakeBody<B>: Clone + Send + Sync + 'static {
    /// A new body.
    fn make_body(&self) -> B;
}

/// Bodies from `B::default()`: an empty body for `String`, `Bytes`,
/// `http_body_util::Empty`, `Full`, `axum::body::Body` and most others.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultBody;

impl<B: Default> MakeBody<B> for DefaultBody {
    fn make_body(&self) -> B {
        B::default()
    }
}

/// Bodies from a closure, for body types without `Default`.
#[derive(Clone, Copy)]
pub struct BodyFn<F>(pub(crate) F);

impl<F> fmt::Debug for BodyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BodyFn(..)")
    }
}

impl<B, F> MakeBody<B> for BodyFn<F>
where
    F: Fn() -> B + Clone + Send + Sync + 'static,
{
    fn make_body(&self) -> B {
        (self.0)()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answer_rounds_retry_after_up() {
        let a = Answer::http(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_millis(1500)),
        );
        let res = a.to_response(String::new());
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[RETRY_AFTER], "2");
        assert_eq!(a.kind(), FaultKind::Http);
        let none = Answer::http(StatusCode::SERVICE_UNAVAILABLE, None);
        assert!(none.headers().is_empty());
    }

    #[test]
    fn grpc_answer_is_trailers_only_with_an_encoded_message() {
        let a = Answer::grpc(GrpcCode::Unavailable, "down 100% ünd\nout");
        assert_eq!(a.status(), StatusCode::OK);
        assert_eq!(a.headers()["grpc-status"], "14");
        assert_eq!(a.headers()[CONTENT_TYPE], "application/grpc");
        assert_eq!(a.headers()["grpc-message"], "down 100%25 %C3%BCnd%0Aout");
        assert_eq!(
            GrpcCode::from_headers(a.headers()),
            Some(GrpcCode::Unavailable)
        );
        assert!(Answer::grpc(GrpcCode::Internal, "")
            .headers()
            .get("grpc-message")
            .is_none());
    }

    #[test]
    fn protocols_say_what_they_can_do() {
        assert!(!Plain.answers() && !Plain.reads_headers());
        let http = Http::<DefaultBody>::default();
        assert!(http.answers() && http.reads_headers());
        let a = Answer::http(StatusCode::BAD_GATEWAY, None);
        let res: Option<Response<String>> = ProtocolFor::<Request<()>, _>::answer(&http, &a);
        assert_eq!(res.map(|r| r.status()), Some(StatusCode::BAD_GATEWAY));
        let plain: Option<u32> = ProtocolFor::<u32, u32>::answer(&Plain, &a);
        assert!(plain.is_none());
        let custom = Http::new(BodyFn(|| "gone".to_owned()));
        let res: Option<Response<String>> = ProtocolFor::<Request<()>, _>::answer(&custom, &a);
        assert_eq!(res.map(Response::into_body).as_deref(), Some("gone"));
    }
}
