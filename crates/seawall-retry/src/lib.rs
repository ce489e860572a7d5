//! seawall-retry (in progress).
