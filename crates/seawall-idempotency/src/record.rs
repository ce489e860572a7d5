//! The stored form of a handler's response.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use crate::key::Fingerprint;

/// A response kept for replay: status, the headers worth replaying, and the
/// body (unless it was over the size cap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    body_omitted: bool,
}

/// Headers never stored: they describe one connection or one moment
/// (hop-by-hop fields of RFC 9110 §7.6.1, `Date`), would hand one client's
/// session to another (`Set-Cookie`), or are recomputed (`Content-Length`).
const NOT_STORED: [HeaderName; 10] = [
    header::SET_COOKIE,
    header::DATE,
    header::CONTENT_LENGTH,
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("keep-alive"),
];

fn is_stored(name: &HeaderName, connection: &HeaderMap) -> bool {
    if NOT_STORED.contains(name) || name.as_str() == "proxy-connection" {
        return false;
    }
    // Fields named by `Connection` are hop-by-hop too.
    !connection
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|n| n.trim().eq_ignore_ascii_case(name.as_str()))
}

impl StoredResponse {
    /// Keeps `status`, the replayable subset of `headers`, and `body`;
    /// `body_omitted` marks a response whose body was over the cap.
    pub fn new(status: StatusCode, headers: &HeaderMap, body: Bytes, body_omitted: bool) -> Self {
        let mut kept = HeaderMap::new();
        for (name, value) in headers {
            if is_stored(name, headers) {
                kept.append(name.clone(), value.clone());
            }
        }
        Self {
            status,
            headers: kept,
            body: if body_omitted { Bytes::new() } else { body },
            body_omitted,
        }
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The kept headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body (empty when [`body_omitted`](Self::body_omitted)).
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// `true` if the original body was over the size cap and is not kept.
    pub fn body_omitted(&self) -> bool {
        self.body_omitted
    }

    /// Roughly how many bytes of memory the record takes: the body, each
    /// header's name and value, and a fixed allowance per header for the
    /// map's own bookkeeping.
    pub(crate) fn size(&self) -> usize {
        const PER_HEADER: usize = 48;
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| PER_HEADER + n.as_str().len() + v.len())
            .sum();
        self.body.len().saturating_add(headers)
    }

    /// The same record without its body, marked as omitted.
    pub(crate) fn without_body(&self) -> Self {
        Self {
            status: self.status,
            headers: self.headers.clone(),
            body: Bytes::new(),
            body_omitted: true,
        }
    }

    /// The status alone: no headers, no body.
    pub(crate) fn status_only(&self) -> Self {
        Self {
            status: self.status,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            body_omitted: true,
        }
    }

    /// The status, kept headers and body.
    pub fn into_parts(self) -> (StatusCode, HeaderMap, Bytes) {
        (self.status, self.headers, self.body)
    }

    /// A compact binary form, prefixed with the request fingerprint, that
    /// the Redis and PostgreSQL stores keep.
    ///
    /// Layout: version `1`, fingerprint (32), status (u16), flags (u8),
    /// header count (u32), each header as name length (u32), name, value
    /// length (u32), value; then the body. Integers are big-endian.
    pub fn encode(&self, fingerprint: &Fingerprint) -> Vec<u8> {
        let headers_len: usize = self
            .headers
            .iter()
            .map(|(n, v)| 8 + n.as_str().len() + v.len())
            .sum();
        let mut out = Vec::with_capacity(1 + 32 + 2 + 1 + 4 + headers_len + self.body.len());
        out.push(1u8);
        out.extend_from_slice(fingerprint.as_bytes());
        out.extend_from_slice(&self.status.as_u16().to_be_bytes());
        out.push(u8::from(self.body_omitted));
        out.extend_from_slice(&(self.headers.len() as u32).to_be_bytes());
        for (name, value) in &self.headers {
            out.extend_from_slice(&(name.as_str().len() as u32).to_be_bytes());
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        out.extend_from_slice(&self.body);
        out
    }

    /// Reads back what [`encode`](Self::encode) wrote; `None` for bytes it
    /// did not write (a corrupt or foreign value).
    pub fn decode(bytes: &[u8]) -> Option<(Fingerprint, Self)> {
        let mut r = Reader(bytes);
        if r.take(1)? != [1u8] {
            return None;
        }
        let fingerprint = Fingerprint::from_bytes(r.take(32)?.try_into().ok()?);
        let status = StatusCode::from_u16(u16::from_be_bytes(r.take(2)?.try_into().ok()?)).ok()?;
        let body_omitted = match r.take(1)? {
            [0] => false,
            [1] => true,
            _ => return None,
        };
        let count = r.u32()?;
        let mut headers = HeaderMap::new();
        for _ in 0..count {
            let n = r.u32()? as usize;
            let name = HeaderName::from_bytes(r.take(n)?).ok()?;
            let n = r.u32()? as usize;
            let value = HeaderValue::from_bytes(r.take(n)?).ok()?;
            // `append` panics past the map's size limit: a forged record
            // must not take the process down.
            headers.try_append(name, value).ok()?;
        }
        let body = Bytes::copy_from_slice(r.0);
        Some((
            fingerprint,
            Self {
                status,
                headers,
                body,
                body_omitted,
            },
        ))
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (HeaderMap, StoredResponse) {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.append("x-trace", HeaderValue::from_static("a"));
        h.append("x-trace", HeaderValue::from_static("b"));
        h.insert(
            header::SET_COOKIE,
            HeaderValue::from_static("session=secret"),
        );
        h.insert(
            header::DATE,
            HeaderValue::from_static("Tue, 01 Jan 2030 00:00:00 GMT"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        let r = StoredResponse::new(StatusCode::CREATED, &h, Bytes::from_static(b"{}"), false);
        (h, r)
    }

    #[test]
    fn keeps_only_replayable_headers() {
        let (_, r) = sample();
        let names: Vec<_> = r.headers().keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type", "x-trace"]);
        assert_eq!(r.headers().get_all("x-trace").iter().count(), 2);
    }

    #[test]
    fn encoding_round_trips() {
        let (_, r) = sample();
        let fp = Fingerprint::from_bytes([7; 32]);
        let bytes = r.encode(&fp);
        let (fp2, back) = StoredResponse::decode(&bytes).unwrap();
        assert_eq!(fp2, fp);
        assert_eq!(back, r);
        for cut in 0..bytes.len() - r.body().len() {
            assert!(
                StoredResponse::decode(&bytes[..cut]).is_none(),
                "cut at {cut}"
            );
        }
        assert!(StoredResponse::decode(b"garbage").is_none());
    }

    #[test]
    fn omitted_body_is_empty() {
        let r = StoredResponse::new(
            StatusCode::OK,
            &HeaderMap::new(),
            Bytes::from_static(b"big"),
            true,
        );
        assert!(r.body().is_empty());
        assert!(r.body_omitted());
        let (_, back) =
            StoredResponse::decode(&r.encode(&Fingerprint::from_bytes([0; 32]))).unwrap();
        assert!(back.body_omitted());
    }

    #[test]
    fn a_record_with_more_header_names_than_a_header_map_holds_is_refused() {
        // A corrupt or forged value in a shared store: more distinct names
        // than `HeaderMap` can index, where `append` would panic.
        let count: u32 = 40_000;
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(&[0; 32]);
        bytes.extend_from_slice(&200u16.to_be_bytes());
        bytes.push(0);
        bytes.extend_from_slice(&count.to_be_bytes());
        for i in 0..count {
            let name = format!("x-{i}");
            bytes.extend_from_slice(&(name.len() as u32).to_be_bytes());
            bytes.extend_from_slice(name.as_bytes());
            bytes.extend_from_slice(&0u32.to_be_bytes());
        }
        assert!(StoredResponse::decode(&bytes).is_none());
    }

    fn arbitrary_response() -> impl proptest::strategy::Strategy<Value = StoredResponse> {
        use proptest::prelude::*;
        (
            100u16..1000,
            proptest::collection::vec(("[a-z][a-z0-9-]{0,12}", "[ -~]{0,40}"), 0..8),
            proptest::collection::vec(any::<u8>(), 0..512),
            any::<bool>(),
        )
            .prop_map(|(status, pairs, body, omitted)| {
                let mut headers = HeaderMap::new();
                for (n, v) in pairs {
                    headers.append(
                        HeaderName::from_bytes(n.as_bytes()).unwrap(),
                        HeaderValue::from_str(&v).unwrap(),
                    );
                }
                StoredResponse::new(
                    StatusCode::from_u16(status).unwrap(),
                    &headers,
                    Bytes::from(body),
                    omitted,
                )
            })
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz_config())]

        /// Fuzz: a value read back from a shared store may be anything.
        #[test]
        fn decoding_any_bytes_never_panics(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..1024),
        ) {
            let _ = StoredResponse::decode(&bytes);
        }

        /// Fuzz: a valid record with bytes flipped, cut or appended decodes
        /// to something or to `None`, never a panic; what decodes
        /// re-encodes to a record that decodes the same.
        #[test]
        fn damaged_records_never_panic(
            r in arbitrary_response(),
            flips in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 0..6),
            cut in proptest::option::of(proptest::num::usize::ANY),
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..16),
        ) {
            let fp = Fingerprint::from_bytes([5; 32]);
            let mut bytes = r.encode(&fp);
            for (at, b) in flips {
                let i = at % bytes.len();
                bytes[i] = b;
            }
            if let Some(c) = cut {
                bytes.truncate(c % (bytes.len() + 1));
            }
            bytes.extend_from_slice(&tail);
            if let Some((fp2, back)) = StoredResponse::decode(&bytes) {
                let again = StoredResponse::decode(&back.encode(&fp2));
                proptest::prop_assert_eq!(again, Some((fp2, back)));
            }
        }

        #[test]
        fn any_response_round_trips(r in arbitrary_response(), fp in proptest::array::uniform32(proptest::num::u8::ANY)) {
            let fp = Fingerprint::from_bytes(fp);
            let (fp2, back) = StoredResponse::decode(&r.encode(&fp)).unwrap();
            proptest::prop_assert_eq!(fp2, fp);
            proptest::prop_assert_eq!(back, r);
        }
    }
}
