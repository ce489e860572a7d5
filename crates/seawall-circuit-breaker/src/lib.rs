//! seawall-circuit-breaker (in progress).
