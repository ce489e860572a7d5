//! Property-based fuzzing of every parser seawall-core applies to network
//! input: `Retry-After` (delta-seconds and HTTP-date),
//! `grpc-retry-pushback-ms`, `grpc-status`; and of what it writes back
//! (`Retry-After`, `grpc-message`, problem documents).
//!
//! Each property runs `SEAWALL_FUZZ_CASES` cases (default 1024, enough for
//! CI). To fuzz longer:
//!
//! ```text
//! SEAWALL_FUZZ_CASES=1000000 cargo test -p seawall-core --release --test fuzz
//! ```

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, StatusCode};
use proptest::prelude::*;
use seawall_core::grpc::percent_encode_message;
use seawall_core::hint::{
    grpc_pushback, grpc_pushback_ms, parse_grpc_pushback, parse_retry_after_at, retry_after,
    retry_after_secs, server_hint, MAX_HINT, MAX_RETRY_AFTER,
};
use seawall_core::problem::Problem;
use seawall_core::GrpcCode;

fn config() -> ProptestConfig {
    let cases = std::env::var("SEAWALL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A fixed "now" (2023-11-14), so that dates are judged the same on every run.
fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// Text that looks like what a header parser meets: digits, signs, spaces,
/// date words, and now and then anything at all.
fn header_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9+\\- .,:]{0,24}",
        "[A-Za-z]{3}, [0-9]{1,2} [A-Za-z]{3} [0-9]{1,5} [0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2} [A-Z]{0,4}",
        "\\PC{0,40}",
        ".{0,40}",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn retry_after_never_panics_and_stays_bounded(value in header_like()) {
        if let Some(delay) = parse_retry_after_at(&value, now()) {
            prop_assert!(delay <= MAX_HINT, "{value:?} gave {delay:?}");
        }
    }

    #[test]
    fn retry_after_from_any_header_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::RETRY_AFTER, value.clone());
            headers.insert("grpc-retry-pushback-ms", value);
            for hint in [retry_after(&headers), grpc_pushback(&headers), server_hint(&headers)]
                .into_iter()
                .flatten()
            {
                prop_assert!(hint <= MAX_HINT);
            }
        }
    }

    #[test]
    fn delta_seconds_read_exactly_up_to_a_day(secs in 0u64..200_000, pad in 0usize..3) {
        let value = format!("{}{secs}{}", " ".repeat(pad), " ".repeat(pad));
        let expected = (secs <= MAX_HINT.as_secs()).then(|| Duration::from_secs(secs));
        prop_assert_eq!(parse_retry_after_at(&value, now()), expected);
    }

    #[test]
    fn signed_or_fractional_delta_is_refused(secs in 0u64..100_000, sign in "[+\\-]", frac in 0u32..10) {
        let signed = format!("{sign}{secs}");
        let fractional = format!("{secs}.{frac}");
        prop_assert_eq!(parse_retry_after_at(&signed, now()), None);
        prop_assert_eq!(parse_retry_after_at(&fractional, now()), None);
    }

    #[test]
    fn http_dates_read_as_the_wait_until_then(offset in -400_000i64..400_000) {
        let then = if offset >= 0 {
            now() + Duration::from_secs(offset.unsigned_abs())
        } else {
            now() - Duration::from_secs(offset.unsigned_abs())
        };
        let value = httpdate::fmt_http_date(then);
        let expected = if offset <= 0 {
            Some(Duration::ZERO)
        } else if offset.unsigned_abs() <= MAX_HINT.as_secs() {
            Some(Duration::from_secs(offset.unsigned_abs()))
        } else {
            None
        };
        prop_assert_eq!(parse_retry_after_at(&value, now()), expected, "{}", value);
    }

    #[test]
    fn pushback_never_panics_and_reads_digits_exactly(value in header_like(), ms in 0u64..200_000_000) {
        if let Some(delay) = parse_grpc_pushback(&value) {
            prop_assert!(delay <= MAX_HINT);
        }
        let expected = (ms <= 86_400_000).then(|| Duration::from_millis(ms));
        prop_assert_eq!(parse_grpc_pushback(&ms.to_string()), expected);
        prop_assert_eq!(parse_grpc_pushback(&format!("-{ms}")), None);
    }

    #[test]
    fn grpc_status_is_only_its_canonical_decimal(bytes in proptest::collection::vec(any::<u8>(), 0..6)) {
        let code = GrpcCode::parse(&bytes);
        let canonical = GrpcCode::ALL.iter().find(|c| c.as_str().as_bytes() == bytes.as_slice());
        let expected = canonical.copied().unwrap_or(GrpcCode::Unknown);
        prop_assert_eq!(code, expected, "{:?}", bytes);
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-status", value);
            prop_assert_eq!(GrpcCode::from_headers(&headers), Some(code));
        }
    }

    #[test]
    fn grpc_status_numbers_with_any_decoration(n in 0i64..40, deco in "[+\\- 0]{1,3}") {
        // A sign, a space or a leading zero never yields a code other than UNKNOWN.
        let value = format!("{deco}{n}");
        prop_assert_eq!(GrpcCode::parse(value.as_bytes()), GrpcCode::Unknown, "{}", value);
    }

    #[test]
    fn sent_hints_round_up_and_saturate(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
        let after = Duration::new(secs, nanos);
        let sent = retry_after_secs(after);
        prop_assert!((1..=MAX_RETRY_AFTER.as_secs()).contains(&sent));
        if after <= MAX_RETRY_AFTER {
            prop_assert!(Duration::from_secs(sent) >= after, "never early");
            prop_assert!(Duration::from_secs(sent) < after + Duration::from_secs(1) || sent == 1);
        } else {
            prop_assert_eq!(sent, MAX_RETRY_AFTER.as_secs());
        }
        let ms = grpc_pushback_ms(after);
        prop_assert!(ms <= 86_400_000);
        if after <= MAX_RETRY_AFTER {
            prop_assert!(Duration::from_millis(ms) >= after);
        }
        // What seawall sends, seawall reads back as at least the hint.
        let read = parse_retry_after_at(&sent.to_string(), now());
        prop_assert_eq!(read, Some(Duration::from_secs(sent)));
    }

    #[test]
    fn grpc_message_is_always_a_header_value(message in "\\PC{0,64}|.{0,64}") {
        let encoded = percent_encode_message(&message);
        prop_assert!(encoded.bytes().all(|b| (0x20..=0x7E).contains(&b)));
        prop_assert!(HeaderValue::from_str(&encoded).is_ok());
    }

    #[test]
    fn problem_documents_are_json(detail in ".{0,64}", kind in "[a-z_\"\\\\]{0,16}", status in 100u16..1000) {
        let detail: &'static str = Box::leak(detail.into_boxed_str());
        let kind: &'static str = Box::leak(kind.into_boxed_str());
        let status = StatusCode::from_u16(status).unwrap();
        let doc: serde_json::Value = serde_json::from_str(
            &Problem::new(status, kind).with_detail(detail).to_json(),
        )
        .unwrap();
        prop_assert_eq!(doc["detail"].as_str(), Some(detail));
        prop_assert_eq!(doc["kind"].as_str(), Some(kind));
        prop_assert_eq!(doc["status"].as_u64(), Some(u64::from(status.as_u16())));
    }
}
