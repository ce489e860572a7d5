use std::ops::RangeInclusive;

use http::{Response, StatusCode};

use crate::{Classify, Outcome};

/// One bit per status code 0..1024 (`StatusCode` allows 100..=999), so a
/// lookup is a shift and a mask.
const WORDS: usize = 16;

/// Classifies HTTP responses by status code.
///
/// By default 5xx, 408 (Request Timeout) and 429 (Too Many Requests) are
/// failures, every other status is a success, and a transport error (an
/// `Err`) is a failure. Which statuses fail is configurable; a status can
/// also be ignored (neither success nor failure).
///
/// ```
/// use http::{Response, StatusCode};
/// use seawall_core::{Classify, HttpClassifier, Outcome};
///
/// // 503 fails by default; make 501 Not Implemented a success and ignore 404.
/// let classifier = HttpClassifier::new()
///     .succeed_on(StatusCode::NOT_IMPLEMENTED)
///     .ignore(StatusCode::NOT_FOUND);
/// let res = |s: u16| Response::builder().status(s).body(()).unwrap();
///
/// let c = |s| Classify::<_, std::io::Error>::classify(&classifier, Ok(&res(s)));
/// assert_eq!(c(503), Outcome::Failure);
/// assert_eq!(c(501), Outcome::Success);
/// assert_eq!(c(404), Outcome::Ignore);
/// assert_eq!(c(200), Outcome::Success);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpClassifier {
    failures: [u64; WORDS],
    ignored: [u64; WORDS],
}

impl Default for HttpClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClassifier {
    /// The default classifier: 5xx, 408 and 429 fail.
    pub const fn new() -> Self {
        let mut failures = [0; WORDS];
        let mut code = 500;
        while code < 600 {
            failures[code / 64] |= 1 << (code % 64);
            code += 1;
        }
        failures[408 / 64] |= 1 << (408 % 64);
        failures[429 / 64] |= 1 << (429 % 64);
        Self {
            failures,
            ignored: [0; WORDS],
        }
    }

    /// A classifier under which no status fails (only transport errors do).
    pub const fn none_fail() -> Self {
        Self {
            failures: [0; WORDS],
            ignored: [0; WORDS],
        }
    }

    /// Makes `status` a failure.
    #[must_use]
    pub fn fail_on(mut self, status: StatusCode) -> Self {
        let code = usize::from(status.as_u16());
        set(&mut self.failures, code, true);
        set(&mut self.ignored, code, false);
        self
    }

    /// Makes every status in `range` (e.g. `400..=499`) a failure. Codes
    /// outside 100..=999 are skipped.
    #[must_use]
    pub fn fail_on_range(mut self, range: RangeInclusive<u16>) -> Self {
        for code in range {
            if let Ok(status) = StatusCode::from_u16(code) {
                self = self.fail_on(status);
            }
        }
        self
    }

    /// Makes `status` a success.
    #[must_use]
    pub fn succeed_on(mut self, status: StatusCode) -> Self {
        let code = usize::from(status.as_u16());
        set(&mut self.failures, code, false);
        set(&mut self.ignored, code, false);
        self
    }

    /// Makes `status` neither a success nor a failure: it is not recorded.
    #[must_use]
    pub fn ignore(mut self, status: StatusCode) -> Self {
        let code = usize::from(status.as_u16());
        set(&mut self.failures, code, false);
        set(&mut self.ignored, code, true);
        self
    }

    /// The outcome of a response with this status.
    #[inline]
    pub fn classify_status(&self, status: StatusCode) -> Outcome {
        let code = usize::from(status.as_u16());
        if get(&self.failures, code) {
            Outcome::Failure
        } else if get(&self.ignored, code) {
            Outcome::Ignore
        } else {
            Outcome::Success
        }
    }
}

#[inline]
fn get(bits: &[u64; WORDS], code: usize) -> bool {
    bits.get(code / 64)
        .is_some_and(|word| word & (1 << (code % 64)) != 0)
}

fn set(bits: &mut [u64; WORDS], code: usize, on: bool) {
    if let Some(word) = bits.get_mut(code / 64) {
        if on {
            *word |= 1 << (code % 64);
        } else {
            *word &= !(1 << (code % 64));
        }
    }
}

impl<B, E> Classify<Response<B>, E> for HttpClassifier {
    #[inline]
    fn classify(&self, result: Result<&Response<B>, &E>) -> Outcome {
        match result {
            Ok(res) => self.classify_status(res.status()),
            Err(_) => Outcome::Failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(c: &HttpClassifier, code: u16) -> Outcome {
        let res = Response::builder().status(code).body(()).unwrap();
        Classify::<_, ()>::classify(c, Ok(&res))
    }

    #[test]
    fn default_table_100_to_599() {
        let c = HttpClassifier::new();
        for code in 100..=599u16 {
            let expected = if code >= 500 || code == 408 || code == 429 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            assert_eq!(classify(&c, code), expected, "status {code}");
        }
    }

    #[test]
    fn transport_error_fails() {
        let c = HttpClassifier::new();
        assert_eq!(
            Classify::<Response<()>, &str>::classify(&c, Err(&"reset")),
            Outcome::Failure
        );
    }

    #[test]
    fn configuration_changes_the_table() {
        let c = HttpClassifier::none_fail()
            .fail_on_range(400..=499)
            .succeed_on(StatusCode::NOT_FOUND)
            .ignore(StatusCode::CONFLICT)
            .fail_on_range(900..=1000);
        assert_eq!(classify(&c, 400), Outcome::Failure);
        assert_eq!(classify(&c, 404), Outcome::Success);
        assert_eq!(classify(&c, 409), Outcome::Ignore);
        assert_eq!(classify(&c, 500), Outcome::Success);
        assert_eq!(classify(&c, 999), Outcome::Failure);
        let c = c.fail_on(StatusCode::CONFLICT);
        assert_eq!(classify(&c, 409), Outcome::Failure);
    }
}
