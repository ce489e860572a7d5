//! The retry layer's own error.

use std::error::Error;
use std::fmt;

use tower::timeout::error::Elapsed;

/// One attempt took longer than the layer's `attempt_timeout`.
///
/// It is a failure like any other error (retried if attempts, deadline and
/// budget allow) and, when it is the last one, what the caller receives. Its
/// source is tower's [`Elapsed`], so adapters that map timeouts to
/// `504 Gateway Timeout` recognise it.
#[derive(Debug)]
pub struct AttemptTimeout {
    source: Elapsed,
}

impl AttemptTimeout {
    pub(crate) const fn new() -> Self {
        Self {
            source: Elapsed::new(),
        }
    }
}

impl fmt::Display for AttemptTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("retry attempt timed out")
    }
}

impl Error for AttemptTimeout {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.source)
    }
}
