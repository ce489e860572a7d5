//! Rate-limit keys: what a request is counted against.
//!
//! A limit takes a key function `Fn(&Req) -> K`; every distinct `K` gets its
//! own bucket. The functions here read the usual keys from an
//! `http::Request`: the peer IP, a header (an API key, a tenant), the path,
//! or a typed extension set by an earlier layer (the authenticated
//! principal). A global limit is the constant key, [`Limit::global`].
//!
//! Keys from request data are bounded in bytes: a key longer than the
//! limiter's `max_key_bytes` never gets a bucket of its own and is counted
//! against its shard's shared long-key bucket instead (see
//! [`Builder::max_key_bytes`]).
//!
//! [`Limit::global`]: crate::Limit::global
//! [`Builder::max_key_bytes`]: crate::Builder::max_key_bytes

use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Request};

/// A value requests are counted against.
///
/// Implemented for the usual key types; implement it for your own (a tenant
/// id, a principal) to use them as keys.
///
/// ```
/// use seawall_rate_limit::RateKey;
///
/// #[derive(Clone, PartialEq, Eq, Hash)]
/// struct Tenant(u32);
///
/// impl RateKey for Tenant {
///     fn heap_bytes(&self) -> usize {
///         0
///     }
///     fn write_key(&self, out: &mut Vec<u8>) {
///         out.extend_from_slice(self.0.to_string().as_bytes());
///     }
/// }
///
/// let mut name = Vec::new();
/// Tenant(7).write_key(&mut name);
/// assert_eq!(name, b"7");
/// ```
pub trait RateKey: Hash + Eq + Clone + Send + Sync + 'static {
    /// Bytes the key holds on the heap, counted against the registry's byte
    /// bound (the inline size is counted already).
    fn heap_bytes(&self) -> usize;

    /// Writes the key's text into a Redis key name (fleet-wide limits).
    /// Distinct keys must write distinct bytes.
    fn write_key(&self, out: &mut Vec<u8>);

    /// The copy of the key the registry stores when the key gets a bucket
    /// (once per new key; lookups of stored keys allocate nothing). It must
    /// equal `self` and hold no more heap than [`heap_bytes`] says.
    ///
    /// The default is `clone`. Keys that may be a view into a larger buffer
    /// override it with a detached copy: a [`HeaderValue`] parsed by hyper
    /// (or h2) shares the `Bytes` of the whole request head, so storing a
    /// clone would keep that buffer alive for as long as the key is
    /// limited, far beyond the registry's byte bound.
    ///
    /// [`heap_bytes`]: RateKey::heap_bytes
    fn to_stored(&self) -> Self {
        self.clone()
    }
}

impl RateKey for () {
    fn heap_bytes(&self) -> usize {
        0
    }
    fn write_key(&self, out: &mut Vec<u8>) {
        out.push(b'*');
    }
}

impl RateKey for IpAddr {
    fn heap_bytes(&self) -> usize {
        0
    }
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.to_string().as_bytes());
    }
}

macro_rules! int_keys {
    ($($t:ty),*) => {$(
        impl RateKey for $t {
            fn heap_bytes(&self) -> usize {
                0
            }
            fn write_key(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(self.to_string().as_bytes());
            }
        }
    )*};
}
int_keys!(u16, u32, u64, u128, i32, i64);

impl RateKey for String {
    fn heap_bytes(&self) -> usize {
        self.len()
    }
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

impl RateKey for Box<str> {
    fn heap_bytes(&self) -> usize {
        self.len()
    }
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

impl RateKey for Arc<str> {
    fn heap_bytes(&self) -> usize {
        // The count and weak count live with the text.
        self.len() + 2 * std::mem::size_of::<usize>()
    }
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

impl RateKey for &'static str {
    fn heap_bytes(&self) -> usize {
        0
    }
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

impl RateKey for Vec<u8> {
    fn heap_bytes(&self) -> usize {
        self.len()
    }
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

impl RateKey for HeaderValue {
    fn heap_bytes(&self) -> usize {
        self.len()
    }
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
    fn to_stored(&self) -> Self {
        // An exact-size copy, not a view into the request's head buffer.
        match HeaderValue::from_bytes(self.as_bytes()) {
            Ok(mut copy) => {
                copy.set_sensitive(self.is_sensitive());
                copy
            }
            // Unreachable: the bytes come from a valid value.
            Err(_) => self.clone(),
        }
    }
}

/// `None` is one key of its own: every request without the key's source
/// (no header, no peer address) shares one bucket.
impl<K: RateKey> RateKey for Option<K> {
    fn heap_bytes(&self) -> usize {
        self.as_ref().map_or(0, RateKey::heap_bytes)
    }
    fn write_key(&self, out: &mut Vec<u8>) {
        match self {
            Some(k) => {
                out.push(b'=');
                k.write_key(out);
            }
            None => out.push(b'-'),
        }
    }
    fn to_stored(&self) -> Self {
        self.as_ref().map(RateKey::to_stored)
    }
}

impl<A: RateKey, B: RateKey> RateKey for (A, B) {
    fn heap_bytes(&self) -> usize {
        self.0.heap_bytes() + self.1.heap_bytes()
    }
    fn write_key(&self, out: &mut Vec<u8>) {
        // Length-prefixed so that ("a:b", "c") and ("a", "b:c") differ.
        let start = out.len();
        self.0.write_key(out);
        let len = out.len() - start;
        out.extend_from_slice(format!("#{len}:").as_bytes());
        self.1.write_key(out);
    }
    fn to_stored(&self) -> Self {
        (self.0.to_stored(), self.1.to_stored())
    }
}

/// The peer's IP address: axum's `ConnectInfo<SocketAddr>` (feature `axum`,
/// with `into_make_service_with_connect_info`) or a plain `SocketAddr`
/// request extension; `None` when the request carries neither.
///
/// Behind a proxy the peer is the proxy; key on a header the proxy sets
/// instead ([`header`]) if and only if every request comes through it.
///
/// ```
/// use std::net::{IpAddr, SocketAddr};
/// use http::Request;
/// use seawall_rate_limit::key;
///
/// let mut req = Request::new(());
/// assert_eq!(key::peer_ip(&req), None);
/// req.extensions_mut().insert(SocketAddr::from(([10, 0, 0, 7], 4711)));
/// assert_eq!(key::peer_ip(&req), Some(IpAddr::from([10, 0, 0, 7])));
/// ```
pub fn peer_ip<B>(req: &Request<B>) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(addr.ip());
    }
    req.extensions().get::<SocketAddr>().map(SocketAddr::ip)
}

/// A key function reading the header `name` (its first value, as bytes);
/// `None` when absent.
///
/// ```
/// use http::{HeaderValue, Request};
/// use seawall_rate_limit::key;
///
/// let api_key = key::header("x-api-key");
/// let req = Request::builder().header("x-api-key", "k-123").body(()).unwrap();
/// assert_eq!(api_key(&req), Some(HeaderValue::from_static("k-123")));
/// assert_eq!(api_key(&Request::new(())), None);
/// ```
pub fn header<B>(name: &'static str) -> impl Fn(&Request<B>) -> Option<HeaderValue> + Clone {
    let name = HeaderName::from_static(name);
    move |req| req.headers().get(&name).cloned()
}

/// The request's path (without the query), e.g. to give each route its own
/// limit.
///
/// ```
/// use http::Request;
/// use seawall_rate_limit::key;
///
/// let req = Request::get("/orders/7?x=1").body(()).unwrap();
/// assert_eq!(&*key::path(&req), "/orders/7");
/// ```
pub fn path<B>(req: &Request<B>) -> Box<str> {
    req.uri().path().into()
}

/// A key function reading a typed request extension, e.g. the principal an
/// authentication layer stored; `None` when absent.
///
/// ```
/// use http::Request;
/// use seawall_rate_limit::key;
///
/// #[derive(Clone)]
/// struct Principal(&'static str);
///
/// let principal = key::extension(|p: &Principal| p.0);
/// let mut req = Request::new(());
/// assert_eq!(principal(&req), None);
/// req.extensions_mut().insert(Principal("alice"));
/// assert_eq!(principal(&req), Some("alice"));
/// ```
pub fn extension<B, T, K>(
    project: impl Fn(&T) -> K + Clone,
) -> impl Fn(&Request<B>) -> Option<K> + Clone
where
    T: Clone + Send + Sync + 'static,
{
    move |req| req.extensions().get::<T>().map(&project)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written<K: RateKey>(k: &K) -> Vec<u8> {
        let mut out = Vec::new();
        k.write_key(&mut out);
        out
    }

    #[test]
    fn keys_write_distinct_text_and_count_heap_bytes() {
        assert_eq!(written(&()), b"*");
        assert_eq!(written(&IpAddr::from([127, 0, 0, 1])), b"127.0.0.1");
        assert_eq!(written(&Some(5u64)), b"=5");
        assert_eq!(written(&None::<u64>), b"-");
        assert_ne!(
            written(&("a:b".to_owned(), "c".to_owned())),
            written(&("a".to_owned(), "b:c".to_owned()))
        );
        assert_eq!(String::from("abcd").heap_bytes(), 4);
        assert_eq!(HeaderValue::from_static("xyz").heap_bytes(), 3);
        assert_eq!(Some(vec![1u8, 2]).heap_bytes(), 2);
        assert_eq!(7u32.heap_bytes(), 0);
    }

    #[test]
    fn stored_header_values_are_detached_copies() {
        let mut value = HeaderValue::from_str("k-123").unwrap();
        value.set_sensitive(true);
        // A clone shares the buffer (hyper's values share the request head).
        assert_eq!(value.clone().as_bytes().as_ptr(), value.as_bytes().as_ptr());
        for stored in [value.to_stored(), Some(value.clone()).to_stored().unwrap()] {
            assert_eq!(stored, value);
            assert!(stored.is_sensitive());
            assert_ne!(stored.as_bytes().as_ptr(), value.as_bytes().as_ptr());
        }
    }

    #[cfg(feature = "axum")]
    #[test]
    fn peer_ip_reads_connect_info() {
        let mut req = Request::new(());
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(SocketAddr::from((
                [192, 0, 2, 1],
                80,
            ))));
        assert_eq!(peer_ip(&req), Some(IpAddr::from([192, 0, 2, 1])));
    }
}
