//! The response body of the layer.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use seawall_core::BoxError;

pin_project! {
    /// The body of an [`Idempotency`](crate::Idempotency) response: the
    /// handler's own body (requests the layer passes through), the buffered
    /// or replayed bytes, or the buffered start of a body that was too large
    /// to store followed by the rest of it.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Full { data: Option<Bytes> },
        Prefixed { prefix: Option<Bytes>, rest: Pin<Box<B>> },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    pub(crate) fn prefixed(prefix: Bytes, rest: Pin<Box<B>>) -> Self {
        Self {
            kind: Kind::Prefixed {
                prefix: (!prefix.is_empty()).then_some(prefix),
                rest,
            },
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Inner { .. } => "inner",
            Kind::Full { .. } => "full",
            Kind::Prefixed { .. } => "prefixed",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

fn to_bytes<D: Buf>(frame: Frame<D>) -> Frame<Bytes> {
    frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map(to_bytes).map_err(Into::into))),
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Prefixed { prefix, rest } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                rest.as_mut()
                    .poll_frame(cx)
                    .map(|f| f.map(|r| r.map(to_bytes).map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
            Kind::Prefixed { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Prefixed { prefix, rest } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let hint = rest.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(hint.lower() + extra);
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper + extra);
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn variants_yield_their_bytes() {
        let inner = ResponseBody::inner(Full::new(Bytes::from_static(b"abc")));
        assert_eq!(inner.size_hint().exact(), Some(3));
        assert_eq!(inner.collect().await.unwrap().to_bytes(), "abc");

        let full = ResponseBody::<Full<Bytes>>::full(Bytes::from_static(b"xy"));
        assert_eq!(full.size_hint().exact(), Some(2));
        assert_eq!(full.collect().await.unwrap().to_bytes(), "xy");
        assert!(ResponseBody::<Full<Bytes>>::full(Bytes::new()).is_end_stream());

        let pre = ResponseBody::prefixed(
            Bytes::from_static(b"head-"),
            Box::pin(Full::new(Bytes::from_static(b"tail"))),
        );
        assert_eq!(pre.size_hint().exact(), Some(9));
        assert!(!pre.is_end_stream());
        assert_eq!(pre.collect().await.unwrap().to_bytes(), "head-tail");
    }
}
