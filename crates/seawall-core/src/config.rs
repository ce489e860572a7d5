use std::borrow::Cow;
use std::fmt;

/// An invalid setting given to a seawall builder.
///
/// Builders validate in `build()` and return this error instead of panicking,
/// naming the layer, the setting and what is wrong with it.
///
/// ```
/// use seawall_core::ConfigError;
///
/// let err = ConfigError::new("circuit breaker", "failure_rate_threshold", "must be in (0, 1], got 1.5");
/// assert_eq!(err.field(), "failure_rate_threshold");
/// assert_eq!(
///     err.to_string(),
///     "invalid circuit breaker config: `failure_rate_threshold` must be in (0, 1], got 1.5"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    layer: &'static str,
    field: &'static str,
    reason: Cow<'static, str>,
}

impl ConfigError {
    /// A new error for `field` of `layer`, with a lowercase `reason`.
    pub fn new(
        layer: &'static str,
        field: &'static str,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            layer,
            field,
            reason: reason.into(),
        }
    }

    /// The layer whose configuration is invalid.
    pub fn layer(&self) -> &'static str {
        self.layer
    }

    /// The setting that is invalid.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// What is wrong with it.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} config: `{}` {}",
            self.layer, self.field, self.reason
        )
    }
}

impl std::error::Error for ConfigError {}
