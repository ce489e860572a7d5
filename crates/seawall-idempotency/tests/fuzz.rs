//! Fuzzing the layer with what clients control: any `Idempotency-Key`
//! value, in either key syntax, gets an answer (400 for a refused key),
//! never a panic, and the handler runs at most once per accepted key.
//!
//! Bounded for CI; `SEAWALL_FUZZ_CASES=100000 cargo test -p
//! seawall-idempotency --all-features fuzz` runs longer (see the README).

mod suite;

use std::collections::HashMap;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http_body_util::Full;
use proptest::prelude::*;
use seawall_idempotency::{IdempotencyLayer, MemoryStore};

fn cases() -> u32 {
    std::env::var("SEAWALL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn any_key_value_gets_an_answer_and_runs_at_most_once(
        values in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300),
                "[\"\\\\;,= a-zA-Z0-9:-]{0,40}".prop_map(String::into_bytes),
            ],
            1..6,
        ),
        strict in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let h = suite::Handler::new();
            let layer = IdempotencyLayer::builder()
                .store(MemoryStore::new())
                .strict_keys(strict)
                .build()
                .unwrap();
            let svc = suite::service(layer, &h);
            let mut accepted: HashMap<Vec<u8>, Bytes> = HashMap::new();
            // Each value twice: a repeat of an accepted key replays.
            for raw in values.iter().chain(values.iter()) {
                let Ok(value) = HeaderValue::from_bytes(raw) else {
                    continue;
                };
                let req = suite::post(None)
                    .header("idempotency-key", value)
                    .body(Full::new(Bytes::from_static(b"{}")))
                    .unwrap();
                let a = suite::ok(&svc, req).await;
                match a.status {
                    StatusCode::BAD_REQUEST => {
                        prop_assert_eq!(a.kind(), "idempotency_key_invalid");
                        prop_assert!(!accepted.contains_key(raw));
                    }
                    StatusCode::CREATED => {
                        if let Some(first) = accepted.get(raw) {
                            prop_assert!(a.replayed());
                            prop_assert_eq!(&a.body, first);
                        } else {
                            accepted.insert(raw.clone(), a.body.clone());
                        }
                    }
                    other => prop_assert!(false, "unexpected status {}", other),
                }
            }
            // Different raw values may name one key (`k` and `"k"`), so
            // runs are at most the accepted values.
            prop_assert!(h.runs() <= accepted.len());
            Ok(())
        })?;
    }
}
