//! seawall-fallback (in progress).
