//! The identities of a request: its key, its scope in the store, its
//! fingerprint, and the fencing token of a claim.

use std::fmt;

use http::header::{
    HeaderMap, HeaderName, AUTHORIZATION, CONTENT_TYPE, COOKIE, PROXY_AUTHORIZATION,
};
use http::{Method, Uri};
use sha2::{Digest, Sha256};

/// The longest key accepted, in characters (the IETF draft and Stripe use 255).
pub const MAX_KEY_LEN: usize = 255;

/// The longest header line read at all: a 255-character structured-field
/// string with every character escaped, plus room for parameters. Longer
/// values are refused before any parsing.
const MAX_RAW_LEN: usize = 1024;

/// Why an `Idempotency-Key` header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyProblem {
    Missing,
    Repeated,
    Empty,
    TooLong,
    /// Not a token nor a structured-field string (default syntax).
    Invalid,
    /// Not a structured-field string (strict syntax).
    NotString,
}

impl KeyProblem {
    pub(crate) fn detail(self) -> &'static str {
        match self {
            Self::Missing => "this request requires an Idempotency-Key header",
            Self::Repeated => "the Idempotency-Key header must appear once",
            Self::Empty => "the Idempotency-Key header is empty",
            Self::TooLong => "the Idempotency-Key header is longer than 255 characters",
            Self::Invalid => {
                "the Idempotency-Key header must be visible ASCII without quotes, backslashes, \
                 commas or semicolons (8e03978e-40d5), or a structured field string (\"8e03978e\")"
            }
            Self::NotString => {
                "the Idempotency-Key header must be a structured field string, e.g. \"8e03978e\""
            }
        }
    }
}

/// Reads the key from `headers`: exactly one line, at most [`MAX_KEY_LEN`]
/// characters once parsed.
///
/// By default the line is either a bare token of visible ASCII (what Stripe
/// clients send) or, when it starts with `"`, an RFC 9651 string item
/// (parameters are allowed and ignored); `strict` accepts only the string.
pub(crate) fn parse_key(
    headers: &HeaderMap,
    name: &HeaderName,
    strict: bool,
) -> Result<Option<String>, KeyProblem> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(KeyProblem::Repeated);
    }
    let raw = value.as_bytes();
    if raw.len() > MAX_RAW_LEN {
        return Err(KeyProblem::TooLong);
    }
    let trimmed = raw.trim_ascii();
    if trimmed.is_empty() {
        return Err(KeyProblem::Empty);
    }
    let key = if strict || trimmed.starts_with(b"\"") {
        let refused = if strict {
            KeyProblem::NotString
        } else {
            KeyProblem::Invalid
        };
        match sfv::Parser::new(raw).parse::<sfv::Item>() {
            Ok(item) => match item.bare_item.as_string() {
                Some(s) => s.as_str().to_owned(),
                None => return Err(refused),
            },
            Err(_) => return Err(refused),
        }
    } else {
        bare_token(trimmed)?
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
/// the separators that would make it ambiguous once a proxy joins header
/// lines (`,`) or adds parameters (`;`).
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

/// The request fields that name a caller by default: `Authorization`,
/// `Proxy-Authorization` and `Cookie`, the credentials RFC 9111 (§3.5) keeps
/// a shared cache from serving across.
pub const DEFAULT_CREDENTIAL_HEADERS: [HeaderName; 3] =
    [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE];

/// A SHA-256 of the credentials a request carries (see
/// [`IdempotencyLayerBuilder::credential_headers`]).
///
/// Every configured field is fed with its number of lines and each line
/// length-prefixed, so no two different sets of credentials digest alike
/// (`Authorization: a` + `Cookie: b` is not `Authorization: ab`). Two rules
/// keep one principal's retries in one scope:
///
/// - **`Cookie` is read as one cookie string.** An HTTP/2 client may split
///   it into one field per cookie pair (RFC 9113 §8.2.3), and a retry over
///   HTTP/1.1 or through a proxy sends them joined: every `Cookie` line is
///   split at `;`, each pair trimmed of surrounding spaces and tabs, empty
///   pairs dropped, and the rest joined with `"; "` in their order. So
///   `cookie: a=1` + `cookie: b=2`, `cookie: a=1; b=2` and `cookie: a=1;b=2`
///   are one principal; the pairs' order and values still count.
/// - **`Cookie` counts only when no other listed field is present.** A
///   request carrying `Authorization` (or `Proxy-Authorization`, or any
///   other field in `names`) is scoped by those fields alone, so a cookie
///   that changes between retries (a load balancer's affinity cookie,
///   analytics) cannot make a bearer-token client's retry a second
///   execution. A service that authenticates by cookie *and* header, where
///   the cookie alone names the principal, should scope with
///   [`tenant`](crate::IdempotencyLayerBuilder::tenant).
///
/// ```
/// use http::{header, HeaderMap, HeaderValue};
/// use seawall_idempotency::{CredentialDigest, DEFAULT_CREDENTIAL_HEADERS};
///
/// let mut alice = HeaderMap::new();
/// alice.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer alice"));
/// let mut bob = HeaderMap::new();
/// bob.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer bob"));
///
/// let a = CredentialDigest::of(&alice, &DEFAULT_CREDENTIAL_HEADERS).unwrap();
/// let b = CredentialDigest::of(&bob, &DEFAULT_CREDENTIAL_HEADERS).unwrap();
/// assert_ne!(a, b);
/// // With Authorization, cookies do not count.
/// let mut alice_with_cookie = alice.clone();
/// alice_with_cookie.insert(header::COOKIE, HeaderValue::from_static("AWSALB=2"));
/// assert_eq!(CredentialDigest::of(&alice_with_cookie, &DEFAULT_CREDENTIAL_HEADERS), Some(a));
/// // No credentials at all: an anonymous request, no digest.
/// assert!(CredentialDigest::of(&HeaderMap::new(), &DEFAULT_CREDENTIAL_HEADERS).is_none());
/// ```
///
/// [`IdempotencyLayerBuilder::credential_headers`]: crate::IdempotencyLayerBuilder::credential_headers
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CredentialDigest([u8; 32]);

impl CredentialDigest {
    /// The digest of the fields `names` in `headers`; `None` if the request
    /// carries none of them (an anonymous request).
    pub fn of(headers: &HeaderMap, names: &[HeaderName]) -> Option<Self> {
        // Anonymous requests hash nothing.
        if !names.iter().any(|n| headers.contains_key(n)) {
            return None;
        }
        // Cookies name the caller only when nothing else listed does.
        let skip_cookie = names
            .iter()
            .any(|n| *n != COOKIE && headers.contains_key(n));
        let mut hasher = Sha256::new();
        feed(&mut hasher, b"seawall-idempotency/credentials/v2");
        for name in names {
            if *name == COOKIE {
                if skip_cookie {
                    continue;
                }
                feed(&mut hasher, name.as_str().as_bytes());
                // One canonical cookie string, fed as one line (when present).
                let present = headers.contains_key(name);
                hasher.update(u64::from(present).to_be_bytes());
                if present {
                    feed(&mut hasher, &cookie_string(headers));
                }
                continue;
            }
            let values = headers.get_all(name);
            feed(&mut hasher, name.as_str().as_bytes());
            hasher.update((values.iter().count() as u64).to_be_bytes());
            for value in values {
                feed(&mut hasher, value.as_bytes());
            }
        }
        Some(Self(hasher.finalize().into()))
    }

    /// The raw hash.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Every `Cookie` line of `headers` as one cookie string (RFC 9113 §8.2.3,
/// RFC 6265 §5.4): pairs split at `;`, trimmed of spaces and tabs, empty
/// ones dropped, joined with `"; "` in order.
fn cookie_string(headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::new();
    let pairs = headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|pair| !pair.is_empty());
    for pair in pairs {
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(pair);
    }
    out
}

impl fmt::Debug for CredentialDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A prefix is enough to tell two apart in a log.
        write!(f, "CredentialDigest({}..)", hex(&self.0[..4]))
    }
}

/// Whose record a key names: the part of a [`StoreKey`] that keeps one
/// caller's records from another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every caller shares the key space
    /// ([`unscoped`](crate::IdempotencyLayerBuilder::unscoped)).
    Shared,
    /// Requests that carry no credentials (or whose
    /// [`tenant`](crate::IdempotencyLayerBuilder::tenant) function found
    /// none): one scope, apart from every principal and tenant.
    Anonymous,
    /// A tenant or principal named by the layer's tenant function.
    Tenant(&'a str),
    /// The caller identified by the digest of its credentials.
    Credentials(&'a CredentialDigest),
}

/// Where a record lives in a store: a SHA-256 of the layer's name, the
/// [`Scope`] of the request and the key.
///
/// Each part is tagged and length-prefixed before hashing, so no caller can
/// reach another's scope by choosing a key (or a tenant name) that contains
/// the other's boundary: tenant `a:b` with key `c` is not tenant `a` with key
/// `b:c`, and tenant names never collide with credential digests.
///
/// ```
/// use seawall_idempotency::{Scope, StoreKey};
///
/// let a = StoreKey::new("api", Scope::Tenant("a:b"), "c");
/// let b = StoreKey::new("api", Scope::Tenant("a"), "b:c");
/// assert_ne!(a, b);
/// assert_ne!(StoreKey::new("api", Scope::Anonymous, "k"), StoreKey::new("api", Scope::Shared, "k"));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StoreKey([u8; 32]);

impl StoreKey {
    /// The key `key` of `scope` in the layer named `namespace`.
    pub fn new(namespace: &str, scope: Scope<'_>, key: &str) -> Self {
        let mut hasher = Sha256::new();
        feed(&mut hasher, b"seawall-idempotency/v2");
        feed(&mut hasher, namespace.as_bytes());
        match scope {
            Scope::Shared => hasher.update([0u8]),
            Scope::Tenant(t) => {
                hasher.update([1u8]);
                feed(&mut hasher, t.as_bytes());
            }
            Scope::Anonymous => hasher.update([2u8]),
            Scope::Credentials(d) => {
                hasher.update([3u8]);
                feed(&mut hasher, d.as_bytes());
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
    use proptest::prelude::*;

    const NAME: HeaderName = HeaderName::from_static("idempotency-key");

    fn parse(values: &[&[u8]], strict: bool) -> Result<Option<String>, KeyProblem> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(NAME, HeaderValue::from_bytes(v).unwrap());
        }
        parse_key(&headers, &NAME, strict)
    }

    #[test]
    fn bare_tokens_are_accepted_by_default() {
        assert_eq!(
            parse(&[b"8e03978e-40d5-43e8-bc93-6894a57f9324"], false),
            Ok(Some("8e03978e-40d5-43e8-bc93-6894a57f9324".into()))
        );
        assert_eq!(parse(&[b"  abc  "], false), Ok(Some("abc".into())));
        assert_eq!(parse(&[b"123"], false), Ok(Some("123".into())));
        assert_eq!(parse(&[b"a:b/c=d"], false), Ok(Some("a:b/c=d".into())));
        // The quoted form of the same key is the same key.
        assert_eq!(parse(&[b"\"quoted\""], false), Ok(Some("quoted".into())));
        assert_eq!(parse(&[b"\"k\";v=1"], false), Ok(Some("k".into())));
        assert_eq!(parse(&[], false), Ok(None));
    }

    #[test]
    fn strict_mode_takes_only_structured_strings() {
        assert_eq!(parse(&[b"\"abc-123\""], true), Ok(Some("abc-123".into())));
        assert_eq!(parse(&[b"\"a\\\"b\""], true), Ok(Some("a\"b".into())));
        assert_eq!(parse(&[b"\"k\";v=1"], true), Ok(Some("k".into())));
        assert_eq!(parse(&[b"abc"], true), Err(KeyProblem::NotString));
        assert_eq!(parse(&[b"42"], true), Err(KeyProblem::NotString));
        assert_eq!(parse(&[b"\"open"], true), Err(KeyProblem::NotString));
        assert!(KeyProblem::NotString
            .detail()
            .contains("structured field string"));
    }

    #[test]
    fn bad_keys_are_refused_in_both_modes() {
        for strict in [false, true] {
            let invalid = if strict {
                KeyProblem::NotString
            } else {
                KeyProblem::Invalid
            };
            assert_eq!(parse(&[b"\"unterminated"], strict), Err(invalid));
            assert_eq!(parse(&[b"\"caf\xc3\xa9\""], strict), Err(invalid));
            assert_eq!(parse(&[b"\"\""], strict), Err(KeyProblem::Empty));
            assert_eq!(parse(&[b"  "], strict), Err(KeyProblem::Empty));
            assert_eq!(
                parse(&[b"\"a\"", b"\"b\""], strict),
                Err(KeyProblem::Repeated)
            );
            let long = format!("\"{}\"", "x".repeat(256));
            assert_eq!(parse(&[long.as_bytes()], strict), Err(KeyProblem::TooLong));
            let max = format!("\"{}\"", "x".repeat(255));
            assert_eq!(parse(&[max.as_bytes()], strict), Ok(Some("x".repeat(255))));
            let huge = format!("\"k\";p=\"{}\"", "x".repeat(2000));
            assert_eq!(parse(&[huge.as_bytes()], strict), Err(KeyProblem::TooLong));
        }
        // Bare tokens: no spaces, controls, quotes, backslashes, list or
        // parameter separators, nothing outside ASCII.
        for bad in [
            &b"a b"[..],
            b"a,b",
            b"a;b",
            b"a\\b",
            b"a\"b",
            b"a\tb",
            b"caf\xc3\xa9",
        ] {
            assert_eq!(parse(&[bad], false), Err(KeyProblem::Invalid), "{bad:?}");
        }
        let long = "y".repeat(256);
        assert_eq!(parse(&[long.as_bytes()], false), Err(KeyProblem::TooLong));
        let max = "y".repeat(255);
        assert_eq!(parse(&[max.as_bytes()], false), Ok(Some(max.clone())));
    }

    #[test]
    fn scopes_cannot_be_forged_across_boundaries() {
        let alice = CredentialDigest([1; 32]);
        let a = StoreKey::new("api", Scope::Tenant("ten"), "ant:k");
        let b = StoreKey::new("api", Scope::Tenant("ten:ant"), "k");
        let c = StoreKey::new("api", Scope::Tenant("tenant"), "k");
        let shared = StoreKey::new("api", Scope::Shared, "k");
        let anonymous = StoreKey::new("api", Scope::Anonymous, "k");
        let empty = StoreKey::new("api", Scope::Tenant(""), "k");
        let credentials = StoreKey::new("api", Scope::Credentials(&alice), "k");
        // A tenant whose name is the digest's bytes is still not that principal.
        let forged_name = String::from_utf8(vec![1; 32]).unwrap();
        let forged = StoreKey::new("api", Scope::Tenant(&forged_name), "k");
        let other_layer = StoreKey::new("api2", Scope::Tenant("tenant"), "k");
        let all = [
            a,
            b,
            c,
            shared,
            anonymous,
            empty,
            credentials,
            forged,
            other_layer,
        ];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y);
            }
        }
        assert_eq!(c, StoreKey::new("api", Scope::Tenant("tenant"), "k"));
        assert_eq!(c.to_hex().len(), 64);
    }

    #[test]
    fn credential_digest_tells_principals_apart() {
        let with = |pairs: &[(HeaderName, &'static str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(n.clone(), HeaderValue::from_static(v));
            }
            CredentialDigest::of(&h, &DEFAULT_CREDENTIAL_HEADERS)
        };
        let alice = with(&[(AUTHORIZATION, "Bearer alice")]).unwrap();
        assert_eq!(alice, with(&[(AUTHORIZATION, "Bearer alice")]).unwrap());
        let others = [
            with(&[(AUTHORIZATION, "Bearer bob")]).unwrap(),
            with(&[(AUTHORIZATION, "")]).unwrap(),
            with(&[(COOKIE, "Bearer alice")]).unwrap(),
            with(&[(PROXY_AUTHORIZATION, "Bearer alice")]).unwrap(),
            with(&[(AUTHORIZATION, "Bearer "), (AUTHORIZATION, "alice")]).unwrap(),
        ];
        for (i, x) in others.iter().enumerate() {
            assert_ne!(*x, alice);
            for y in &others[i + 1..] {
                assert_ne!(x, y);
            }
        }
        assert_eq!(with(&[(CONTENT_TYPE, "text/plain")]), None);
        // With Authorization, cookies do not count (they may rotate).
        assert_eq!(
            with(&[(AUTHORIZATION, "Bearer alice"), (COOKIE, "AWSALB=one")]),
            Some(alice)
        );
        let proxy = with(&[(PROXY_AUTHORIZATION, "Basic x")]);
        assert_eq!(
            with(&[(PROXY_AUTHORIZATION, "Basic x"), (COOKIE, "s=1")]),
            proxy
        );
        let api_key = HeaderName::from_static("x-api-key");
        let mut h = HeaderMap::new();
        h.insert(api_key.clone(), HeaderValue::from_static("k1"));
        assert!(CredentialDigest::of(&h, &DEFAULT_CREDENTIAL_HEADERS).is_none());
        assert!(CredentialDigest::of(&h, &[api_key]).is_some());
        assert!(!format!("{alice:?}").contains(&hex(alice.as_bytes())));
    }

    #[test]
    fn crumbled_and_joined_cookies_are_one_principal() {
        let with = |cookies: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in cookies {
                h.append(COOKIE, HeaderValue::from_static(v));
            }
            CredentialDigest::of(&h, &DEFAULT_CREDENTIAL_HEADERS).unwrap()
        };
        let joined = with(&["session=alice; theme=dark"]);
        for same in [
            &["session=alice", "theme=dark"][..],
            &["session=alice;theme=dark"],
            &[" session=alice ;  theme=dark; "],
            &["session=alice;", "; theme=dark"],
            &["session=alice\t;\ttheme=dark"],
        ] {
            assert_eq!(with(same), joined, "{same:?}");
        }
        for other in [
            &["theme=dark; session=alice"][..],
            &["session=bob; theme=dark"],
            &["session=alice"],
            &["session=alice; theme=dark; x=1"],
            &["session=alice theme=dark"],
        ] {
            assert_ne!(with(other), joined, "{other:?}");
        }
        // A cookie-only request is scoped by its cookies, even if empty.
        assert_ne!(with(&[""]), joined);
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

    /// A valid bare key: visible ASCII without `"`, `\`, `,`, `;`.
    fn bare_key() -> impl Strategy<Value = String> {
        "[!#-+\\--:<-\\[\\]-~]{1,255}"
    }

    /// Any key a structured-field string can carry: printable ASCII.
    fn string_key() -> impl Strategy<Value = String> {
        "[ -~]{1,255}"
    }

    fn sf_string(key: &str) -> String {
        let mut out = String::from("\"");
        for c in key.chars() {
            if matches!(c, '"' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        out
    }

    proptest! {
        #![proptest_config(crate::fuzz_config())]

        /// Fuzz: whatever bytes a client sends, the parser answers a key
        /// within the limits or a refusal, never a panic.
        #[test]
        fn any_header_value_parses_or_is_refused(
            raw in proptest::collection::vec(any::<u8>(), 0..1100),
            strict in any::<bool>(),
        ) {
            if let Ok(value) = HeaderValue::from_bytes(&raw) {
                let mut headers = HeaderMap::new();
                headers.insert(NAME, value);
                if let Ok(Some(key)) = parse_key(&headers, &NAME, strict) {
                    prop_assert!(!key.is_empty());
                    prop_assert!(key.chars().count() <= MAX_KEY_LEN);
                    prop_assert!(key.bytes().all(|b| (0x20..0x7f).contains(&b)));
                }
            }
        }

        /// Fuzz: header-like text around quotes, escapes and separators.
        #[test]
        fn structured_looking_values_never_panic(
            raw in "[\"\\\\;,=a-z0-9 \t*:?()]{0,300}",
            strict in any::<bool>(),
        ) {
            if let Ok(value) = HeaderValue::from_str(&raw) {
                let mut headers = HeaderMap::new();
                headers.insert(NAME, value);
                let _ = parse_key(&headers, &NAME, strict);
            }
        }

        #[test]
        fn valid_bare_keys_round_trip(key in bare_key()) {
            prop_assert_eq!(parse(&[key.as_bytes()], false), Ok(Some(key.clone())));
            prop_assert_eq!(parse(&[key.as_bytes()], true).ok(), None::<Option<String>>);
        }

        #[test]
        fn valid_string_keys_round_trip(key in string_key(), strict in any::<bool>()) {
            let quoted = sf_string(&key);
            prop_assert_eq!(parse(&[quoted.as_bytes()], strict), Ok(Some(key)));
        }
    }
}
