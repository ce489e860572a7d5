//! The identities of a request: its key, its scope in the store, its
//! fingerprint, and the fencing token of a claim.

use std::fmt;

use http::header::{HeaderMap, HeaderName, CONTENT_TYPE};
use http::{Method, Uri};
use sha2::{Digest, Sha256};

/// The longest key accepted, in characters (the IETF draft and Stripe use 255).
pub const MAX_KEY_LEN: usize = 255;

/// Why an `Idempotency-Key` header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyProblem {
    Missing,
    Repeated,
    Empty,
    TooLong,
    Invalid,
}

impl KeyProblem {
    pub(crate) fn detail(self) -> &'static str {
        match self {
            Self::Missing => "this request requires an Idempotency-Key header",
            Self::Repeated => "the Idempotency-Key header must appear once",
            Self::Empty => "the Idempotency-Key header is empty",
            Self::TooLong => "the Idempotency-Key header is longer than 255 characters",
            Self::Invalid => {
                "the Idempotency-Key header must be a structured field string, e.g. \"8e03978e\""
            }
        }
    }
}

/// Reads the key from `headers`: exactly one line, an RFC 9651 string item
/// (parameters are allowed and ignored), or in lenient mode a bare token of
/// visible ASCII.
pub(crate) fn parse_key(
    headers: &HeaderMap,
    name: &HeaderName,
    lenient: bool,
) -> Result<Option<String>, KeyProblem> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(KeyProblem::Repeated);
    }
    let raw = value.as_bytes();
    let trimmed = raw.trim_ascii();
    if trimmed.is_empty() {
        return Err(KeyProblem::Empty);
    }
    let key = match sfv::Parser::new(raw).parse::<sfv::Item>() {
        Ok(item) => match item.bare_item.as_string() {
            Some(s) => s.as_str().to_owned(),
            None if lenient => bare_token(trimmed)?,
            None => return Err(KeyProblem::Invalid),
        },
        Err(_) if lenient => bare_token(trimmed)?,
        Err(_) => return Err(KeyProblem::Invalid),
    };
    if key.is_empty() {
        return Err(KeyProblem::Empty);
    }
    if key.chars().count() > MAX_KEY_LEN {
        return Err(KeyProblem::TooLong);
    }
    Ok(Some(key))
}

/// A Stripe-style unquoted key: visible ASCII without quotes, backslashes or
/// separators that would make it ambiguous in a list.
fn bare_token(raw: &[u8]) -> Result<String, KeyProblem> {
    if raw.len() > MAX_KEY_LEN {
        return Err(KeyProblem::TooLong);
    }
    let ok = raw
        .iter()
        .all(|&b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b',' | b';'));
    if !ok {
        return Err(KeyProblem::Invalid);
    }
    // Every byte is ASCII, so this never fails.
    String::from_utf8(raw.to_vec()).map_err(|_| KeyProblem::Invalid)
}

/// Feeds `bytes` to `hasher` with its length first, so that no two different
/// sequences of parts hash the same bytes (`"ab" + "c"` vs `"a" + "bc"`).
fn feed(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// Where a record lives in a store: a SHA-256 of the layer's name, the
/// tenant and the key.
///
/// Each part is length-prefixed before hashing, so a tenant cannot forge
/// another tenant's scope by choosing a key (or a tenant name) that contains
/// the other's boundary.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StoreKey([u8; 32]);

impl StoreKey {
    /// The scope of `key` for `tenant` (`None`: requests without a tenant)
    /// in the layer named `namespace`.
    pub fn new(namespace: &str, tenant: Option<&str>, key: &str) -> Self {
        let mut hasher = Sha256::new();
        feed(&mut hasher, b"seawall-idempotency/v1");
        feed(&mut hasher, namespace.as_bytes());
        match tenant {
            None => hasher.update([0u8]),
            Some(t) => {
                hasher.update([1u8]);
                feed(&mut hasher, t.as_bytes());
            }
        }
        feed(&mut hasher, key.as_bytes());
        Self(hasher.finalize().into())
    }

    /// The raw hash.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, as used in Redis keys and PostgreSQL rows.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreKey({})", self.to_hex())
    }
}

/// What a request asks for: a SHA-256 of its method, path and query,
/// `Content-Type` and body. A key reused with another fingerprint is refused
/// with 422.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a request.
    pub fn of(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        feed(&mut hasher, method.as_str().as_bytes());
        let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
        feed(&mut hasher, target.as_bytes());
        match headers.get(CONTENT_TYPE) {
            None => hasher.update([0u8]),
            Some(ct) => {
                hasher.update([1u8]);
                feed(&mut hasher, ct.as_bytes());
            }
        }
        feed(&mut hasher, body);
        Self(hasher.finalize().into())
    }

    /// A fingerprint from its 32 raw bytes (as a store reads it back).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw hash.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", hex(&self.0))
    }
}

/// The random token of one claim. A store accepts a completion or release
/// only with the token of the claim that currently holds the key, so an
/// owner whose lease ran out cannot overwrite its successor's work.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct FencingToken(String);

impl FencingToken {
    /// The length of [`as_str`](Self::as_str): 128 random bits in hex.
    pub const LEN: usize = 32;

    /// A new random token.
    pub fn random() -> Self {
        Self(hex(&rand::random::<[u8; 16]>()))
    }

    /// The token as 32 lowercase hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A token read back from a store.
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Debug for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only a prefix: the token is a capability for this claim.
        let shown: String = self.0.chars().take(6).collect();
        write!(f, "FencingToken({shown}..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const NAME: HeaderName = HeaderName::from_static("idempotency-key");

    fn parse(values: &[&[u8]], lenient: bool) -> Result<Option<String>, KeyProblem> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(NAME, HeaderValue::from_bytes(v).unwrap());
        }
        parse_key(&headers, &NAME, lenient)
    }

    #[test]
    fn structured_string_keys() {
        assert_eq!(parse(&[b"\"abc-123\""], false), Ok(Some("abc-123".into())));
        assert_eq!(parse(&[b"\"a\\\"b\""], false), Ok(Some("a\"b".into())));
        assert_eq!(parse(&[b"\"k\";v=1"], false), Ok(Some("k".into())));
        assert_eq!(parse(&[], false), Ok(None));
    }

    #[test]
    fn bad_keys_are_refused() {
        assert_eq!(parse(&[b"abc"], false), Err(KeyProblem::Invalid));
        assert_eq!(parse(&[b"42"], false), Err(KeyProblem::Invalid));
        assert_eq!(parse(&[b"\"unterminated"], false), Err(KeyProblem::Invalid));
        assert_eq!(parse(&[b"\"\""], false), Err(KeyProblem::Empty));
        assert_eq!(parse(&[b"  "], false), Err(KeyProblem::Empty));
        assert_eq!(
            parse(&[b"\"a\"", b"\"b\""], false),
            Err(KeyProblem::Repeated)
        );
        let long = format!("\"{}\"", "x".repeat(256));
        assert_eq!(parse(&[long.as_bytes()], false), Err(KeyProblem::TooLong));
        let max = format!("\"{}\"", "x".repeat(255));
        assert_eq!(parse(&[max.as_bytes()], false), Ok(Some("x".repeat(255))));
        assert_eq!(parse(&[b"\"caf\xc3\xa9\""], true), Err(KeyProblem::Invalid));
    }

    #[test]
    fn lenient_mode_takes_bare_tokens() {
        assert_eq!(
            parse(&[b"8e03978e-40d5-43e8-bc93-6894a57f9324"], true),
            Ok(Some("8e03978e-40d5-43e8-bc93-6894a57f9324".into()))
        );
        assert_eq!(parse(&[b"123"], true), Ok(Some("123".into())));
        assert_eq!(parse(&[b"\"quoted\""], true), Ok(Some("quoted".into())));
        assert_eq!(parse(&[b"a b"], true), Err(KeyProblem::Invalid));
        assert_eq!(parse(&[b"a,b"], true), Err(KeyProblem::Invalid));
        let long = "y".repeat(256);
        assert_eq!(parse(&[long.as_bytes()], true), Err(KeyProblem::TooLong));
    }

    #[test]
    fn scopes_cannot_be_forged_across_boundaries() {
        let a = StoreKey::new("api", Some("ten"), "ant:k");
        let b = StoreKey::new("api", Some("ten:ant"), "k");
        let c = StoreKey::new("api", Some("tenant"), "k");
        let none = StoreKey::new("api", None, "k");
        let empty = StoreKey::new("api", Some(""), "k");
        let other_layer = StoreKey::new("api2", Some("tenant"), "k");
        let all = [a, b, c, none, empty, other_layer];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y);
            }
        }
        assert_eq!(c, StoreKey::new("api", Some("tenant"), "k"));
        assert_eq!(c.to_hex().len(), 64);
    }

    #[test]
    fn fingerprint_covers_method_target_type_and_body() {
        let uri: Uri = "/pay?x=1".parse().unwrap();
        let mut json = HeaderMap::new();
        json.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let base = Fingerprint::of(&Method::POST, &uri, &json, b"{}");
        assert_eq!(base, Fingerprint::of(&Method::POST, &uri, &json, b"{}"));
        assert_ne!(base, Fingerprint::of(&Method::PATCH, &uri, &json, b"{}"));
        let other: Uri = "/pay?x=2".parse().unwrap();
        assert_ne!(base, Fingerprint::of(&Method::POST, &other, &json, b"{}"));
        assert_ne!(
            base,
            Fingerprint::of(&Method::POST, &uri, &HeaderMap::new(), b"{}")
        );
        assert_ne!(base, Fingerprint::of(&Method::POST, &uri, &json, b"{ }"));
    }

    #[test]
    fn tokens_are_random_hex() {
        let a = FencingToken::random();
        let b = FencingToken::random();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), FencingToken::LEN);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(!format!("{a:?}").contains(a.as_str()));
        let odd = FencingToken::from_stored("é".repeat(8));
        assert_eq!(format!("{odd:?}"), "FencingToken(éééééé..)");
    }

    proptest::proptest! {
        #[test]
        fn any_header_value_parses_or_is_refused(
            raw in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            lenient in proptest::bool::ANY,
        ) {
            if let Ok(value) = HeaderValue::from_bytes(&raw) {
                let mut headers = HeaderMap::new();
                headers.insert(NAME, value);
                if let Ok(Some(key)) = parse_key(&headers, &NAME, lenient) {
                    proptest::prop_assert!(!key.is_empty());
                    proptest::prop_assert!(key.chars().count() <= MAX_KEY_LEN);
                    proptest::prop_assert!(key.bytes().all(|b| (0x20..0x7f).contains(&b)));
                }
            }
        }
    }
}
