//! Outcomes and classifiers: the one way seawall decides whether a call failed.

use std::any::Any;
use std::error::Error;
use std::fmt;
use std::marker::PhantomData;

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
/// When the error is a `BoxError`, prefer the named combinators of
/// [`ClassifyExt`] to a closure: a closure taking `&BoxError` can make the
/// service it is in fail to compile inside `tokio::spawn` ("implementation
/// of `FnOnce` is not general enough").
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

/// The error as a trait object, if it is one of the boxed `dyn Error` types
/// (what every seawall layer and tower middleware returns), `std::io::Error`
/// or [`Rejected`](crate::Rejected). A `TypeId` comparison or three: only failed calls pay it.
fn boxed_error<E: 'static>(err: &E) -> Option<&(dyn Error + 'static)> {
    let any = err as &dyn Any;
    if let Some(b) = any.downcast_ref::<Box<dyn Error + Send + Sync>>() {
        return Some(&**b);
    }
    if let Some(b) = any.downcast_ref::<Box<dyn Error + Send>>() {
        return Some(&**b);
    }
    if let Some(b) = any.downcast_ref::<Box<dyn Error>>() {
        return Some(&**b);
    }
    if let Some(e) = any.downcast_ref::<std::io::Error>() {
        return Some(e);
    }
    if let Some(e) = any.downcast_ref::<crate::Rejected>() {
        return Some(e);
    }
    None
}

/// Seawall's own refusals say nothing about the dependency's health: an
/// `Err` holding a seawall [`Rejection`](crate::Rejection) that is a refusal
/// (a full bulkhead, an inner breaker, a rate limit; see
/// [`Rejected::is_refusal`](crate::Rejected::is_refusal)) is
/// [`Outcome::Ignore`]; everything else, a rejection that reports a failure
/// below the layer included, is classified by the inner classifier.
///
/// The error is searched when it is a boxed `dyn Error` (tower's and
/// seawall's `BoxError`, which every seawall layer returns), through its
/// whole source chain. Any other error type (a `tonic::transport::Error`, a
/// `hyper` error) cannot hold a seawall rejection and goes to the inner
/// classifier, so the combinator works over any error type.
///
/// Made by [`ClassifyExt::ignore_rejections`]. Unlike a closure over
/// `&BoxError`, a named classifier keeps the service `Send` for any
/// lifetime, so `tokio::spawn(svc.oneshot(req))` compiles.
///
/// ```
/// use http::StatusCode;
/// use seawall_core::{classify::ClassifyExt, BoxError, Classify, ErrorsFail, Outcome, Rejected};
///
/// let classifier = ErrorsFail.ignore_rejections();
/// let full: BoxError = Rejected::new("bulkhead_full", StatusCode::SERVICE_UNAVAILABLE, None).into();
/// let broken: BoxError = "connection reset".into();
/// assert_eq!(Classify::<(), _>::classify(&classifier, Err(&full)), Outcome::Ignore);
/// assert_eq!(Classify::<(), _>::classify(&classifier, Err(&broken)), Outcome::Failure);
/// // A rejection that reports a failure below the layer is not ignored.
/// let panicked: BoxError = Rejected::failure("handler_panicked", StatusCode::INTERNAL_SERVER_ERROR, None).into();
/// assert_eq!(Classify::<(), _>::classify(&classifier, Err(&panicked)), Outcome::Failure);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IgnoreRejections<C> {
    inner: C,
}

impl<C> IgnoreRejections<C> {
    /// Wraps `inner`.
    pub const fn new(inner: C) -> Self {
        Self { inner }
    }

    /// The inner classifier.
    pub const fn get_ref(&self) -> &C {
        &self.inner
    }
}

impl<C, Res, Err> Classify<Res, Err> for IgnoreRejections<C>
where
    C: Classify<Res, Err>,
    Err: 'static,
{
    #[inline]
    fn classify(&self, result: Result<&Res, &Err>) -> Outcome {
        if let Err(err) = result {
            // Only a layer's own refusal: a rejection that reports a failure
            // below the layer (`Rejected::failure`) goes to the inner classifier.
            if boxed_error(err).is_some_and(crate::rejection::is_refusal) {
                return Outcome::Ignore;
            }
        }
        self.inner.classify(result)
    }
}

/// An `Err` that is a `T`, or a boxed `dyn Error` with a `T` anywhere in its
/// source chain, is [`Outcome::Ignore`]; everything else is classified by
/// the inner classifier.
///
/// Made by [`ClassifyExt::ignore_errors`].
///
/// ```
/// use seawall_core::{classify::ClassifyExt, BoxError, Classify, ErrorsFail, Outcome};
///
/// #[derive(Debug)]
/// struct Cancelled;
/// impl std::fmt::Display for Cancelled {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("cancelled")
///     }
/// }
/// impl std::error::Error for Cancelled {}
///
/// let classifier = ErrorsFail.ignore_errors::<Cancelled>();
/// let cancelled: BoxError = Box::new(Cancelled);
/// assert_eq!(Classify::<(), _>::classify(&classifier, Err(&cancelled)), Outcome::Ignore);
/// ```
pub struct IgnoreErrors<T, C> {
    inner: C,
    _error: PhantomData<fn() -> T>,
}

impl<T, C> IgnoreErrors<T, C> {
    /// Wraps `inner`.
    pub const fn new(inner: C) -> Self {
        Self {
            inner,
            _error: PhantomData,
        }
    }

    /// The inner classifier.
    pub const fn get_ref(&self) -> &C {
        &self.inner
    }
}

impl<T, C: Clone> Clone for IgnoreErrors<T, C> {
    fn clone(&self) -> Self {
        Self::new(self.inner.clone())
    }
}

impl<T, C: Copy> Copy for IgnoreErrors<T, C> {}

impl<T, C: fmt::Debug> fmt::Debug for IgnoreErrors<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IgnoreErrors")
            .field("error", &std::any::type_name::<T>())
            .field("inner", &self.inner)
            .finish()
    }
}

impl<T, C, Res, Err> Classify<Res, Err> for IgnoreErrors<T, C>
where
    T: Error + 'static,
    C: Classify<Res, Err>,
    Err: 'static,
{
    #[inline]
    fn classify(&self, result: Result<&Res, &Err>) -> Outcome {
        if let Err(err) = result {
            if (err as &dyn Any).is::<T>() {
                return Outcome::Ignore;
            }
            let mut current = boxed_error(err);
            while let Some(e) = current {
                if e.is::<T>() {
                    return Outcome::Ignore;
                }
                current = e.source();
            }
        }
        self.inner.classify(result)
    }
}

/// Either classifier's failure is a failure.
///
/// With outcomes ordered `Success < Ignore < Failure`, the result is the
/// greater of the two: `Failure` if either says `Failure`, else `Ignore` if
/// either says `Ignore`, else `Success`. Made by [`ClassifyExt::or`].
///
/// ```
/// use http::{Response, StatusCode};
/// use seawall_core::{classify::ClassifyExt, Classify, GrpcClassifier, GrpcCode, HttpClassifier, Outcome};
///
/// // Fail on a 5xx, and on a trailers-only NOT_FOUND.
/// let classifier = HttpClassifier::new().or(GrpcClassifier::none_fail().fail_on(GrpcCode::NotFound));
/// let not_found = Response::builder().header("grpc-status", "5").body(()).unwrap();
/// assert_eq!(Classify::<_, std::io::Error>::classify(&classifier, Ok(&not_found)), Outcome::Failure);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Or<A, B> {
    a: A,
    b: B,
}

impl<A, B> Or<A, B> {
    /// Combines `a` and `b`.
    pub const fn new(a: A, b: B) -> Self {
        Self { a, b }
    }
}

const fn rank(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Success => 0,
        Outcome::Ignore => 1,
        Outcome::Failure => 2,
    }
}

impl<A, B, Res, Err> Classify<Res, Err> for Or<A, B>
where
    A: Classify<Res, Err>,
    B: Classify<Res, Err>,
{
    #[inline]
    fn classify(&self, result: Result<&Res, &Err>) -> Outcome {
        let a = self.a.classify(result);
        if a == Outcome::Failure {
            return a;
        }
        let b = self.b.classify(result);
        if rank(b) > rank(a) {
            b
        } else {
            a
        }
    }
}

/// A failure only if both classifiers say so.
///
/// With outcomes ordered `Success < Ignore < Failure`, the result is the
/// lesser of the two: `Success` if either says `Success`, else `Ignore` if
/// either says `Ignore`, else `Failure`. Made by [`ClassifyExt::and`].
///
/// ```
/// use http::Response;
/// use seawall_core::{classify::ClassifyExt, Classify, GrpcClassifier, HttpClassifier, Outcome};
///
/// // A 503 fails only if it also carries a failing grpc-status.
/// let classifier = HttpClassifier::new().and(GrpcClassifier::new());
/// let res = |grpc: &str| Response::builder().status(503).header("grpc-status", grpc).body(()).unwrap();
/// assert_eq!(Classify::<_, std::io::Error>::classify(&classifier, Ok(&res("14"))), Outcome::Failure);
/// assert_eq!(Classify::<_, std::io::Error>::classify(&classifier, Ok(&res("5"))), Outcome::Success);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct And<A, B> {
    a: A,
    b: B,
}

impl<A, B> And<A, B> {
    /// Combines `a` and `b`.
    pub const fn new(a: A, b: B) -> Self {
        Self { a, b }
    }
}

impl<A, B, Res, Err> Classify<Res, Err> for And<A, B>
where
    A: Classify<Res, Err>,
    B: Classify<Res, Err>,
{
    #[inline]
    fn classify(&self, result: Result<&Res, &Err>) -> Outcome {
        let a = self.a.classify(result);
        if a == Outcome::Success {
            return a;
        }
        let b = self.b.classify(result);
        if rank(b) < rank(a) {
            b
        } else {
            a
        }
    }
}

/// Swaps success and failure; `Ignore` stays `Ignore`. Made by
/// [`ClassifyExt::not`].
///
/// ```
/// use seawall_core::{classify::ClassifyExt, Classify, ErrorsFail, Outcome};
///
/// // A probe that is expected to fail.
/// let classifier = ErrorsFail.not();
/// assert_eq!(Classify::<u8, ()>::classify(&classifier, Err(&())), Outcome::Success);
/// assert_eq!(Classify::<u8, ()>::classify(&classifier, Ok(&1)), Outcome::Failure);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Not<C> {
    inner: C,
}

impl<C> Not<C> {
    /// Inverts `inner`.
    pub const fn new(inner: C) -> Self {
        Self { inner }
    }
}

impl<C, Res, Err> Classify<Res, Err> for Not<C>
where
    C: Classify<Res, Err>,
{
    #[inline]
    fn classify(&self, result: Result<&Res, &Err>) -> Outcome {
        match self.inner.classify(result) {
            Outcome::Success => Outcome::Failure,
            Outcome::Failure => Outcome::Success,
            Outcome::Ignore => Outcome::Ignore,
        }
    }
}

/// Chains classifiers into named types, so that no closure over `&BoxError`
/// is needed.
///
/// Implemented for seawall's classifiers ([`ErrorsFail`],
/// [`HttpClassifier`](crate::HttpClassifier),
/// [`GrpcClassifier`](crate::GrpcClassifier)) and the combinators; implement
/// it (with an empty `impl`) for a classifier type of your own.
///
/// A closure annotated `|res: Result<&Res, &BoxError>|` works as a
/// classifier where it is written, but once a layer holding it is inside a
/// future passed to `tokio::spawn`, rustc may reject it with
/// "implementation of `FnOnce` is not general enough". The combinators have
/// no such lifetime to infer.
///
/// ```
/// use seawall_core::{classify::ClassifyExt, GrpcClassifier, GrpcCode, HttpClassifier};
/// use http::StatusCode;
///
/// // Breaker classifier for an HTTP client: 5xx and trailers-only
/// // UNAVAILABLE fail, a 404 does not count, seawall's own refusals below
/// // (a full bulkhead) never count.
/// let classifier = HttpClassifier::new()
///     .ignore(StatusCode::NOT_FOUND)
///     .or(GrpcClassifier::none_fail().fail_on(GrpcCode::Unavailable))
///     .ignore_rejections();
/// # let _ = classifier;
/// ```
pub trait ClassifyExt: Sized {
    /// See [`Or`].
    fn or<B>(self, other: B) -> Or<Self, B> {
        Or::new(self, other)
    }

    /// See [`And`].
    fn and<B>(self, other: B) -> And<Self, B> {
        And::new(self, other)
    }

    /// See [`Not`].
    fn not(self) -> Not<Self> {
        Not::new(self)
    }

    /// See [`IgnoreRejections`].
    fn ignore_rejections(self) -> IgnoreRejections<Self> {
        IgnoreRejections::new(self)
    }

    /// See [`IgnoreErrors`].
    fn ignore_errors<T: Error + 'static>(self) -> IgnoreErrors<T, Self> {
        IgnoreErrors::new(self)
    }
}

impl ClassifyExt for ErrorsFail {}
impl ClassifyExt for crate::HttpClassifier {}
impl ClassifyExt for crate::GrpcClassifier {}
impl<C> ClassifyExt for IgnoreRejections<C> {}
impl<T, C> ClassifyExt for IgnoreErrors<T, C> {}
impl<A, B> ClassifyExt for Or<A, B> {}
impl<A, B> ClassifyExt for And<A, B> {}
impl<C> ClassifyExt for Not<C> {}

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

    use crate::{BoxError, GrpcClassifier, GrpcCode, HttpClassifier, Rejected};
    use http::{Response, StatusCode};

    /// A classifier answering the same outcome for everything.
    #[derive(Clone, Copy)]
    struct Always(Outcome);
    impl<Res, Err> Classify<Res, Err> for Always {
        fn classify(&self, _: Result<&Res, &Err>) -> Outcome {
            self.0
        }
    }
    impl ClassifyExt for Always {}

    const ALL: [Outcome; 3] = [Outcome::Success, Outcome::Ignore, Outcome::Failure];

    fn run<C: Classify<(), ()>>(c: &C) -> Outcome {
        c.classify(Ok(&()))
    }

    #[test]
    fn or_and_truth_tables() {
        use Outcome::{Failure as F, Ignore as I, Success as S};
        let or = [[S, I, F], [I, I, F], [F, F, F]];
        let and = [[S, S, S], [S, I, I], [S, I, F]];
        for (i, a) in ALL.into_iter().enumerate() {
            for (j, b) in ALL.into_iter().enumerate() {
                assert_eq!(run(&Always(a).or(Always(b))), or[i][j], "{a:?} or {b:?}");
                assert_eq!(run(&Always(a).and(Always(b))), and[i][j], "{a:?} and {b:?}");
            }
        }
        assert_eq!(run(&Always(S).not()), F);
        assert_eq!(run(&Always(F).not()), S);
        assert_eq!(run(&Always(I).not()), I);
    }

    #[derive(Debug)]
    struct Wrapped(BoxError);
    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn ignore_rejections_sees_through_wrappers_only_for_rejections() {
        let c = HttpClassifier::new().ignore_rejections();
        assert_eq!(c.get_ref(), &HttpClassifier::new());
        let rejected: BoxError = Box::new(Wrapped(
            Rejected::new("bulkhead_full", StatusCode::SERVICE_UNAVAILABLE, None).into(),
        ));
        let other: BoxError = Box::new(Wrapped("reset".into()));
        let res = Response::builder().status(502).body(()).unwrap();
        let c = |r: Result<&Response<()>, &BoxError>| c.classify(r);
        assert_eq!(c(Err(&rejected)), Outcome::Ignore);
        assert_eq!(c(Err(&other)), Outcome::Failure);
        assert_eq!(c(Ok(&res)), Outcome::Failure);

        let io = std::io::Error::other("disk");
        assert_eq!(
            Classify::<(), _>::classify(&ErrorsFail.ignore_rejections(), Err(&io)),
            Outcome::Failure
        );
        // Any error type works: a concrete one that holds no rejection goes
        // to the inner classifier, a bare `Rejected` is ignored.
        assert_eq!(
            Classify::<(), _>::classify(&ErrorsFail.ignore_rejections(), Err(&fmt::Error)),
            Outcome::Failure
        );
        let bare = Rejected::new("circuit_open", StatusCode::SERVICE_UNAVAILABLE, None);
        assert_eq!(
            Classify::<(), _>::classify(&ErrorsFail.ignore_rejections(), Err(&bare)),
            Outcome::Ignore
        );
    }

    #[test]
    fn ignore_errors_matches_the_type_in_the_chain() {
        let c = ErrorsFail.ignore_errors::<std::io::Error>();
        let io: BoxError = Box::new(Wrapped(Box::new(std::io::Error::other("x"))));
        let other: BoxError = "x".into();
        assert_eq!(Classify::<(), _>::classify(&c, Err(&io)), Outcome::Ignore);
        assert_eq!(
            Classify::<(), _>::classify(&c, Err(&other)),
            Outcome::Failure
        );
        assert_eq!(
            Classify::<(), BoxError>::classify(&c, Ok(&())),
            Outcome::Success
        );
        assert!(format!("{c:?}").contains("io::error::Error"));
        // The error type itself, unboxed.
        let fmt_ignored = ErrorsFail.ignore_errors::<fmt::Error>();
        assert_eq!(
            Classify::<(), _>::classify(&fmt_ignored, Err(&fmt::Error)),
            Outcome::Ignore
        );
        assert_eq!(
            Classify::<(), _>::classify(&fmt_ignored, Err(&std::io::Error::other("x"))),
            Outcome::Failure
        );
    }

    #[test]
    fn status_and_code_sets_combine() {
        let c = HttpClassifier::none_fail()
            .fail_on(StatusCode::BAD_GATEWAY)
            .or(GrpcClassifier::none_fail().fail_on(GrpcCode::Unavailable))
            .ignore_rejections();
        let res = |status: u16, grpc: Option<&str>| {
            let mut b = Response::builder().status(status);
            if let Some(g) = grpc {
                b = b.header("grpc-status", g);
            }
            b.body(()).unwrap()
        };
        let c = |r: Response<()>| Classify::<_, BoxError>::classify(&c, Ok(&r));
        assert_eq!(c(res(502, None)), Outcome::Failure);
        assert_eq!(c(res(200, Some("14"))), Outcome::Failure);
        assert_eq!(c(res(200, Some("13"))), Outcome::Success);
        assert_eq!(
            c(res(503, None)),
            Outcome::Failure,
            "no grpc-status, not 200"
        );
        assert_eq!(c(res(200, None)), Outcome::Success);
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
