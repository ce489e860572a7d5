//! Fuzzing the priority header: whatever bytes a client sends, reading the
//! class never panics and never yields anything but a class name it wrote
//! (ignoring ASCII case and surrounding whitespace) or the default.
//!
//! CI runs a bounded number of cases; run longer with
//! `SEAWALL_FUZZ_CASES=1000000 cargo test -p seawall-bulkhead --release --test fuzz_priority`.

use http::{HeaderName, HeaderValue, Request};
use proptest::prelude::*;
use seawall_bulkhead::{HeaderPriority, Prioritize, Priority};

/// Cases per property: `SEAWALL_FUZZ_CASES`, or 512.
fn cases() -> u32 {
    std::env::var("SEAWALL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

fn header() -> HeaderName {
    HeaderName::from_static("x-priority")
}

/// What the documentation promises for a header value: the class whose name
/// it is, ignoring ASCII case and surrounding spaces and tabs; nothing for
/// anything else (including bytes that are not visible ASCII).
fn expected(bytes: &[u8]) -> Option<Priority> {
    let text = std::str::from_utf8(bytes).ok()?;
    if !text
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return None;
    }
    let name = text.trim_matches([' ', '\t']).to_ascii_lowercase();
    Priority::ALL.into_iter().find(|p| p.as_str() == name)
}

fn request_with(values: &[HeaderValue]) -> Request<()> {
    let mut req = Request::new(());
    for v in values {
        req.headers_mut().append(header(), v.clone());
    }
    req
}

fn class() -> impl Strategy<Value = Priority> {
    prop_oneof![
        Just(Priority::Critical),
        Just(Priority::Normal),
        Just(Priority::Sheddable)
    ]
}

/// A class name in a random mix of cases, padded with spaces and tabs.
fn spelled(p: Priority) -> impl Strategy<Value = String> {
    let name = p.as_str();
    (
        proptest::collection::vec(any::<bool>(), name.len()),
        "[ \t]{0,3}",
        "[ \t]{0,3}",
    )
        .prop_map(move |(upper, before, after)| {
            let body: String = name
                .chars()
                .zip(upper)
                .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
                .collect();
            format!("{before}{body}{after}")
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Arbitrary bytes: never a panic; a class only for a class's name,
    /// the default otherwise.
    #[test]
    fn arbitrary_header_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
        default in class(),
    ) {
        let prioritize = HeaderPriority::new(header()).default_priority(default);
        // Bytes `http` refuses as a header value never reach the parser;
        // for them only `FromStr` is exercised.
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            let got = prioritize.priority(&request_with(&[value]));
            prop_assert_eq!(got, expected(&bytes).unwrap_or(default));
        }
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let parsed = text.parse::<Priority>().ok();
            if let Some(p) = parsed {
                prop_assert!(text.trim().eq_ignore_ascii_case(p.as_str()));
            }
            if expected(&bytes).is_some() {
                prop_assert_eq!(parsed, expected(&bytes));
            }
        }
    }

    /// Arbitrary text near the class names (prefixes, suffixes, junk
    /// between): the same verdict as the specification.
    #[test]
    fn near_misses_fall_back_to_the_default(
        p in class(),
        junk in "[a-zA-Z!-/ \t]{0,3}",
        at_start in any::<bool>(),
    ) {
        let text = if at_start {
            format!("{junk}{}", p.as_str())
        } else {
            format!("{}{junk}", p.as_str())
        };
        let prioritize = HeaderPriority::new(header()).default_priority(Priority::Sheddable);
        let value = HeaderValue::from_str(&text).unwrap();
        let got = prioritize.priority(&request_with(&[value]));
        prop_assert_eq!(got, expected(text.as_bytes()).unwrap_or(Priority::Sheddable));
    }

    /// Valid values round-trip, whatever their case and padding, through
    /// `FromStr` and through the header.
    #[test]
    fn valid_values_round_trip(p in class(), default in class(), text in class().prop_flat_map(spelled)) {
        prop_assert_eq!(p.to_string().parse::<Priority>(), Ok(p));
        let spelled_class = text.trim().parse::<Priority>();
        prop_assert!(spelled_class.is_ok(), "{:?} did not parse", text);
        let spelled_class = spelled_class.unwrap();
        prop_assert_eq!(text.parse::<Priority>(), Ok(spelled_class));
        let prioritize = HeaderPriority::new(header()).default_priority(default);
        let value = HeaderValue::from_str(&text).unwrap();
        prop_assert_eq!(prioritize.priority(&request_with(&[value])), spelled_class);
        let exact = HeaderValue::from_static(p.as_str());
        prop_assert_eq!(prioritize.priority(&request_with(&[exact])), p);
    }

    /// With the header repeated, the first value decides: a valid first
    /// value is used whatever follows, an unreadable one gives the default.
    #[test]
    fn the_first_of_repeated_values_decides(
        first in proptest::collection::vec(any::<u8>(), 0..16),
        then in class(),
        default in class(),
    ) {
        let prioritize = HeaderPriority::new(header()).default_priority(default);
        if let Ok(first_value) = HeaderValue::from_bytes(&first) {
            let then_value = HeaderValue::from_static(then.as_str());
            let got = prioritize.priority(&request_with(&[first_value, then_value]));
            prop_assert_eq!(got, expected(&first).unwrap_or(default));
        }
    }
}

#[test]
fn the_oracle_agrees_with_the_documented_examples() {
    assert_eq!(expected(b" Sheddable\t"), Some(Priority::Sheddable));
    assert_eq!(expected(b"CRITICAL"), Some(Priority::Critical));
    assert_eq!(expected(b"urgent!!"), None);
    assert_eq!(expected(b"\xffcritical"), None);
    assert_eq!(expected(b""), None);
    let prioritize = HeaderPriority::new(header());
    assert_eq!(prioritize.priority(&request_with(&[])), Priority::Normal);
}
