//! seawall-bulkhead (in progress).
