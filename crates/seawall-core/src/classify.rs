//! Outcomes and classifiers: the one way seawall decides whether a call failed.

/// What a finished call means to a resilience layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call succeeded.
    Success,
    /// The call failed: breakers count it, retries retry it, fallbacks replace it.
    Failure,
    /// The call says nothing about the health of the dependency (a 404, a
    /// cancelled request): it is passed through and not recorded.
    Ignore,
}

impl Outcome {
    /// `true` for [`Outcome::Failure`].
    #[inline]
    pub const fn is_failure(self) -> bool {
        matches!(self, Outcome::Failure)
    }

    /// `true` for [`Outcome::Success`].
    #[inline]
    pub const fn is_success(self) -> bool {
        matches!(self, Outcome::Success)
    }
}

/// Decides the [`Outcome`] of a call from its result.
///
/// Implemented by [`ErrorsFail`] (the default of every layer),
/// [`HttpClassifier`](crate::HttpClassifier),
/// [`GrpcClassifier`](crate::GrpcClassifier) and by every closure
/// `Fn(Result<&Res, &Err>) -> Outcome`.
///
/// ```
/// use seawall_core::{Classify, Outcome};
///
/// // Treat a `None` answer as a failure, an error as something to ignore.
/// let classify = |res: Result<&Option<u32>, &&str>| match res {
///     Ok(Some(_)) => Outcome::Success,
///     Ok(None) => Outcome::Failure,
///     Err(_) => Outcome::Ignore,
/// };
/// assert_eq!(classify.classify(Ok(&None)), Outcome::Failure);
/// assert_eq!(classify.classify(Err(&"cancelled")), Outcome::Ignore);
/// ```
pub trait Classify<Res, Err> {
    /// Classifies one finished call.
    fn classify(&self, result: Result<&Res, &Err>) -> Outcome;
}

impl<F, Res, Err> Classify<Res, Err> for F
where
    F: Fn(Result<&Res, &Err>) -> Outcome,
{
    #[inline]
    fn classify(&self, result: Result<&Res, &Err>) -> Outcome {
        self(result)
    }
}

/// The default classifier: every `Err` is a failure, every `Ok` a success.
///
/// ```
/// use seawall_core::{Classify, ErrorsFail, Outcome};
///
/// assert_eq!(Classify::<u8, ()>::classify(&ErrorsFail, Ok(&1)), Outcome::Success);
/// assert_eq!(Classify::<u8, ()>::classify(&ErrorsFail, Err(&())), Outcome::Failure);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorsFail;

impl<Res, Err> Classify<Res, Err> for ErrorsFail {
    #[inline]
    fn classify(&self, result: Result<&Res, &Err>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_fail_classifies_by_result() {
        assert_eq!(
            Classify::<(), ()>::classify(&ErrorsFail, Ok(&())),
            Outcome::Success
        );
        assert_eq!(
            Classify::<(), ()>::classify(&ErrorsFail, Err(&())),
            Outcome::Failure
        );
    }

    #[test]
    fn closures_are_classifiers() {
        let c = |r: Result<&i32, &()>| match r {
            Ok(n) if *n < 0 => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(()) => Outcome::Ignore,
        };
        assert_eq!(c.classify(Ok(&-1)), Outcome::Failure);
        assert_eq!(c.classify(Ok(&1)), Outcome::Success);
        assert_eq!(c.classify(Err(&())), Outcome::Ignore);
        assert!(Outcome::Failure.is_failure());
        assert!(!Outcome::Ignore.is_failure());
        assert!(Outcome::Success.is_success());
        assert!(!Outcome::Ignore.is_success());
    }
}
