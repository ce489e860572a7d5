//! The error an injected fault fails a call with.

use std::error::Error;
use std::fmt;
use std::io;
use std::sync::Arc;

/// What an injected fault does to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FaultKind {
    /// Added latency before the call proceeds.
    Latency,
    /// The call fails with an error.
    Error,
    /// The call fails as if the connection had been reset before a response.
    ConnectionReset,
    /// The call is answered with an HTTP error status.
    Http,
    /// The call is answered with a trailers-only gRPC status.
    Grpc,
    /// The call never completes.
    Hang,
}

impl FaultKind {
    /// A snake-case name, e.g. `"connection_reset"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            FaultKind::Latency => "latency",
            FaultKind::Error => "error",
            FaultKind::ConnectionReset => "connection_reset",
            FaultKind::Http => "http",
            FaultKind::Grpc => "grpc",
            FaultKind::Hang => "hang",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A call failed because a [`ChaosLayer`](crate::ChaosLayer) injected a
/// fault.
///
/// An injected fault stands for a failure of the dependency, so it is
/// deliberately *not* a seawall [`Rejection`](seawall_core::Rejection):
/// [`seawall_core::rejection::find`] does not recognise it, circuit breakers
/// count it as a failure and retries may retry it, exactly as they would a
/// real outage.
///
/// ```
/// use seawall_chaos::{FaultKind, InjectedFault};
/// use seawall_core::{rejection, BoxError};
///
/// # fn check(err: BoxError) {
/// if let Some(fault) = err.downcast_ref::<InjectedFault>() {
///     println!("fault {} ({})", fault.fault(), fault.kind());
/// }
/// assert!(rejection::find(&*err).is_none());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct InjectedFault {
    fault: Arc<str>,
    kind: FaultKind,
    reset: Option<Arc<io::Error>>,
}

impl InjectedFault {
    pub(crate) fn new(fault: Arc<str>, kind: FaultKind) -> Self {
        let reset = (kind == FaultKind::ConnectionReset).then(|| {
            Arc::new(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "connection reset (injected)",
            ))
        });
        Self { fault, kind, reset }
    }

    /// The name of the fault that fired.
    pub fn fault(&self) -> &str {
        &self.fault
    }

    /// What the fault does: [`FaultKind::Error`],
    /// [`FaultKind::ConnectionReset`], or the kind of an HTTP or gRPC fault
    /// whose service cannot build responses.
    pub const fn kind(&self) -> FaultKind {
        self.kind
    }
}

impl fmt::Display for InjectedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("injected fault")
    }
}

impl Error for InjectedFault {
    /// For a connection reset, an [`io::Error`] of kind
    /// [`ConnectionReset`](io::ErrorKind::ConnectionReset), which is what
    /// classifiers looking for transport errors search the chain for.
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.reset.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seawall_core::{rejection, BoxError};

    #[test]
    fn is_an_error_but_not_a_rejection() {
        let err: BoxError = Box::new(InjectedFault::new("outage".into(), FaultKind::Error));
        assert_eq!(err.to_string(), "injected fault");
        assert!(err.is::<InjectedFault>());
        assert!(rejection::find(&*err).is_none());
        assert!(err.source().is_none());
        let fault = err.downcast_ref::<InjectedFault>().unwrap();
        assert_eq!(fault.fault(), "outage");
        assert_eq!(fault.kind(), FaultKind::Error);
    }

    #[test]
    fn connection_reset_carries_an_io_error() {
        let err: BoxError = Box::new(InjectedFault::new(
            "reset".into(),
            FaultKind::ConnectionReset,
        ));
        let io = err
            .source()
            .and_then(|s| s.downcast_ref::<io::Error>())
            .expect("io source");
        assert_eq!(io.kind(), io::ErrorKind::ConnectionReset);
        assert!(rejection::find(&*err).is_none());
        assert_eq!(FaultKind::ConnectionReset.to_string(), "connection_reset");
    }
}
