//! seawall-idempotency (in progress).
