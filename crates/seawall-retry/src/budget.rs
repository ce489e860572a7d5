//! The retry budget: a token bucket that caps retries at a share of the
//! traffic.

use seawall_core::ConfigError;
// Under `cfg(loom)` (the crate's unit tests only) the model checker's atomics
// replace std's, so `loom_tests` can explore every interleaving.
#[cfg(loom)]
use loom::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::atomic::Ordering;
#[cfg(not(loom))]
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Arc;
use tokio::time::Instant;

/// Fixed-point scale of the bucket: one retry costs `SCALE` units, so a ratio
/// of 0.1 deposits 100 000 units per request without floating-point atomics.
/// Fine enough that a small ratio (0.0004, 0.0015) is kept, not rounded to
/// nothing or up to more retries than configured.
const SCALE: i64 = 1_000_000;

/// Past this balance a deposit clamps the bucket to its cap. Deposits do not
/// clamp (one `fetch_add`), so without it a bucket that is never drawn on
/// would keep growing until `i64` overflowed to a negative balance: at a ratio
/// of 1000 that is a few billion requests. Far above any cap, so the clamp
/// costs nothing in practice.
const CLAMP_ABOVE: i64 = i64::MAX / 4;

/// A budget of retries shared by every clone of a layer, and by several
/// layers when the same handle is given to each.
///
/// Max-attempts alone lets a retry layer multiply the load on a dependency
/// that is already failing: three attempts triple it exactly when it can least
/// afford it. A budget keeps retries to a fixed share of the traffic instead,
/// in the spirit of gRPC retry throttling and Finagle's / tower's `TpsBudget`:
///
/// - every first attempt deposits `ratio` of a token (default 0.1, so at most
///   10% extra load);
/// - every retry withdraws one token, and is refused when the bucket holds
///   less than one;
/// - the bucket holds at most `max_tokens`, so a long healthy period cannot
///   save up a burst of retries for the next outage;
/// - besides the tokens, `min_per_sec` retries per second are always allowed,
///   so a quiet client (too few requests to earn tokens) can still retry.
///
/// The handle is an `Arc`: cloning it shares the bucket. Deposits are one
/// relaxed atomic add; withdrawals a compare-and-swap loop, paid only on
/// failures. Time is read from [`tokio::time::Instant`], only when the
/// per-second floor is needed.
///
/// ```
/// use seawall_retry::RetryBudget;
///
/// let budget = RetryBudget::builder().ratio(0.5).min_per_sec(0).build().unwrap();
/// budget.deposit();
/// assert!(!budget.withdraw(), "half a token is not a retry");
/// budget.deposit();
/// assert!(budget.withdraw());
/// assert!(!budget.withdraw());
/// ```
#[derive(Debug, Clone)]
pub struct RetryBudget {
    inner: Arc<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Tokens in units of `1 / SCALE`; may exceed `cap` between withdrawals
    /// (deposits do not clamp, to stay a single `fetch_add`), and is clamped
    /// when read.
    balance: AtomicI64,
    deposit: i64,
    cap: i64,
    min_per_sec: u32,
    /// The current second since `epoch` in the high 32 bits, the retries the
    /// floor granted in it in the low 32 bits: one word, so one CAS both
    /// rolls the second over and counts.
    floor: AtomicU64,
    epoch: Instant,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryBudget {
    /// The default budget: ratio 0.1, 10 retries per second floor, at most
    /// 100 saved tokens.
    pub fn new() -> Self {
        Self::from_parts(0.1, 10, 100)
    }

    /// A builder to set the ratio, floor and cap.
    pub fn builder() -> RetryBudgetBuilder {
        RetryBudgetBuilder {
            ratio: 0.1,
            min_per_sec: 10,
            max_tokens: 100,
        }
    }

    fn from_parts(ratio: f64, min_per_sec: u32, max_tokens: u32) -> Self {
        Self {
            inner: Arc::new(Bucket {
                balance: AtomicI64::new(0),
                // Rounded down: never more retries than the ratio allows.
                deposit: (ratio * SCALE as f64).floor() as i64,
                cap: i64::from(max_tokens) * SCALE,
                min_per_sec,
                floor: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        }
    }

    /// Records a first attempt: adds `ratio` of a token.
    #[inline]
    pub fn deposit(&self) {
        self.add(self.inner.deposit);
    }

    /// Records `n` first attempts at once.
    #[inline]
    pub(crate) fn deposit_many(&self, n: u32) {
        self.add(self.inner.deposit * i64::from(n));
    }

    // Out of line: the layer pays in once per batch, and this keeps the
    // clamp out of the `call` that pays.
    #[inline(never)]
    fn add(&self, units: i64) {
        let bucket = &self.inner;
        // Relaxed: the balance is a counter; no other memory is published
        // through it.
        let before = bucket.balance.fetch_add(units, Ordering::Relaxed);
        if before > CLAMP_ABOVE {
            // Anything at or above the cap reads as the cap, and `fetch_min`
            // never raises the balance, so a concurrent withdrawal is kept.
            bucket.balance.fetch_min(bucket.cap, Ordering::Relaxed);
        }
    }

    /// Takes one retry from the bucket or, failing that, from the per-second
    /// floor. `false` means the retry must not happen.
    pub fn withdraw(&self) -> bool {
        self.withdraw_token() || self.withdraw_floor()
    }

    /// Whole tokens available now (not counting the per-second floor).
    pub fn tokens(&self) -> u32 {
        let b = self
            .inner
            .balance
            .load(Ordering::Relaxed)
            .min(self.inner.cap);
        u32::try_from(b.max(0) / SCALE).unwrap_or(u32::MAX)
    }

    /// `true` when both handles share one bucket.
    pub fn same_as(&self, other: &RetryBudget) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    fn withdraw_token(&self) -> bool {
        let bucket = &self.inner;
        let mut current = bucket.balance.load(Ordering::Relaxed);
        loop {
            let available = current.min(bucket.cap);
            if available < SCALE {
                return false;
            }
            match bucket.balance.compare_exchange_weak(
                current,
                available - SCALE,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }

    fn withdraw_floor(&self) -> bool {
        let bucket = &self.inner;
        if bucket.min_per_sec == 0 {
            return false;
        }
        let second = u32::try_from(bucket.epoch.elapsed().as_secs()).unwrap_or(u32::MAX);
        self.withdraw_floor_at(second)
    }

    /// The floor in second `second` (since `epoch`), as read by the caller.
    fn withdraw_floor_at(&self, second: u32) -> bool {
        let bucket = &self.inner;
        let mut current = bucket.floor.load(Ordering::Relaxed);
        loop {
            let (seen_second, used) = ((current >> 32) as u32, current as u32);
            // A caller that read the clock just before another rolled the
            // window over holds an older second: it counts in the newer one.
            // Taking its stale second would start that second afresh, and
            // whoever comes next would start the newer one afresh again,
            // granting the floor twice over.
            let (second, used) = if seen_second >= second {
                (seen_second, used)
            } else {
                (second, 0)
            };
            if used >= bucket.min_per_sec {
                return false;
            }
            let next = (u64::from(second) << 32) | u64::from(used + 1);
            match bucket.floor.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }
}

/// Builds a [`RetryBudget`]; see [`RetryBudget::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RetryBudgetBuilder {
    ratio: f64,
    min_per_sec: u32,
    max_tokens: u32,
}

impl RetryBudgetBuilder {
    /// Retries allowed per first attempt, in `[0, 1000]` (default 0.1).
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = ratio;
        self
    }

    /// Retries always allowed per second, whatever the bucket holds
    /// (default 10; 0 disables the floor).
    pub fn min_per_sec(mut self, n: u32) -> Self {
        self.min_per_sec = n;
        self
    }

    /// The most tokens the bucket saves (default 100, at least 1).
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = n;
        self
    }

    /// Validates and builds the budget.
    pub fn build(self) -> Result<RetryBudget, ConfigError> {
        if !(self.ratio.is_finite() && (0.0..=1000.0).contains(&self.ratio)) {
            return Err(ConfigError::new(
                "retry budget",
                "ratio",
                format!("must be in [0, 1000], got {}", self.ratio),
            ));
        }
        if self.max_tokens == 0 {
            return Err(ConfigError::new(
                "retry budget",
                "max_tokens",
                "must be at least 1",
            ));
        }
        Ok(RetryBudget::from_parts(
            self.ratio,
            self.min_per_sec,
            self.max_tokens,
        ))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn deposits_fund_retries_at_the_ratio() {
        let budget = RetryBudget::builder().min_per_sec(0).build().unwrap();
        for _ in 0..100 {
            budget.deposit();
        }
        let granted = (0..100).filter(|_| budget.withdraw()).count();
        assert_eq!(granted, 10);
        assert_eq!(budget.tokens(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn small_ratios_are_neither_lost_nor_rounded_up() {
        for (ratio, deposits, expected) in [(0.0004, 10_000, 4), (0.0015, 2_000, 3)] {
            let budget = RetryBudget::builder()
                .ratio(ratio)
                .min_per_sec(0)
                .build()
                .unwrap();
            for _ in 0..deposits {
                budget.deposit();
            }
            let granted = (0..100).filter(|_| budget.withdraw()).count();
            assert_eq!(granted, expected, "ratio {ratio} over {deposits} requests");
        }
    }

    #[test]
    fn a_bucket_never_drawn_on_does_not_overflow() {
        let budget = RetryBudget::builder()
            .ratio(1000.0)
            .min_per_sec(0)
            .max_tokens(2)
            .build()
            .unwrap();
        // As if a billion requests had paid in with no failure: the next
        // deposit brings the balance back to the cap, far from overflowing.
        budget
            .inner
            .balance
            .store(CLAMP_ABOVE + 1, Ordering::Relaxed);
        budget.deposit_many(16);
        assert_eq!(budget.inner.balance.load(Ordering::Relaxed), 2 * SCALE);
        assert_eq!(budget.tokens(), 2);
        assert!(budget.withdraw() && budget.withdraw() && !budget.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_limits_saved_tokens() {
        let budget = RetryBudget::builder()
            .ratio(1.0)
            .min_per_sec(0)
            .max_tokens(5)
            .build()
            .unwrap();
        for _ in 0..1000 {
            budget.deposit();
        }
        assert_eq!(budget.tokens(), 5);
        assert_eq!((0..100).filter(|_| budget.withdraw()).count(), 5);
        // The excess was dropped, not kept for later.
        assert!(!budget.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_refills_every_second() {
        let budget = RetryBudget::builder()
            .ratio(0.0)
            .min_per_sec(3)
            .build()
            .unwrap();
        assert_eq!((0..10).filter(|_| budget.withdraw()).count(), 3);
        tokio::time::advance(SECOND / 2).await;
        assert!(!budget.withdraw());
        tokio::time::advance(SECOND / 2).await;
        assert_eq!((0..10).filter(|_| budget.withdraw()).count(), 3);
    }

    #[test]
    fn a_stale_second_does_not_reopen_the_floor() {
        // Two callers race over a second boundary: one read second 5 from the
        // clock, then the other read 6 and used up the floor of second 6
        // before the first one got to the counter.
        let budget = RetryBudget::builder()
            .ratio(0.0)
            .min_per_sec(3)
            .build()
            .unwrap();
        assert_eq!((0..3).filter(|_| budget.withdraw_floor_at(6)).count(), 3);
        assert!(!budget.withdraw_floor_at(5), "second 6 is spent");
        assert!(
            !budget.withdraw_floor_at(6),
            "and stays spent for the callers of second 6"
        );
        assert!(budget.withdraw_floor_at(7));
    }

    #[tokio::test(start_paused = true)]
    async fn clones_share_one_bucket() {
        let a = RetryBudget::builder()
            .ratio(1.0)
            .min_per_sec(0)
            .build()
            .unwrap();
        let b = a.clone();
        assert!(a.same_as(&b));
        assert!(!a.same_as(&RetryBudget::new()));
        a.deposit();
        assert!(b.withdraw());
        assert!(!a.withdraw());
    }

    #[test]
    fn invalid_settings_are_config_errors() {
        for ratio in [-0.1, f64::NAN, f64::INFINITY, 1000.5] {
            let err = RetryBudget::builder().ratio(ratio).build().unwrap_err();
            assert_eq!(err.field(), "ratio");
        }
        let err = RetryBudget::builder().max_tokens(0).build().unwrap_err();
        assert_eq!(err.field(), "max_tokens");
    }

    #[test]
    fn concurrent_withdrawals_never_overdraw() {
        let budget = RetryBudget::builder()
            .ratio(1.0)
            .min_per_sec(0)
            .max_tokens(1000)
            .build()
            .unwrap();
        for _ in 0..500 {
            budget.deposit();
        }
        let granted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let b = budget.clone();
                    s.spawn(move || (0..400).filter(|_| b.withdraw()).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(granted, 500);
    }

    proptest::proptest! {
        /// The bucket clamps lazily (at withdrawal) so a deposit stays one
        /// `fetch_add`; it must grant exactly what an eagerly clamped bucket
        /// grants, and never more than `ratio` per deposit.
        #[test]
        fn lazy_cap_matches_an_eagerly_capped_model(
            ratio_milli in 0u32..=2000,
            cap in 1u32..20,
            ops in proptest::collection::vec(proptest::bool::ANY, 0..300),
        ) {
            let ratio = f64::from(ratio_milli) / 1000.0;
            let units = (ratio * SCALE as f64).floor() as i64;
            let budget = RetryBudget::builder()
                .ratio(ratio)
                .min_per_sec(0)
                .max_tokens(cap)
                .build()
                .unwrap();
            let cap = i64::from(cap) * SCALE;
            let (mut model, mut deposits, mut granted) = (0i64, 0u32, 0u32);
            for deposit in ops {
                if deposit {
                    budget.deposit();
                    model = (model + units).min(cap);
                    deposits += 1;
                } else {
                    let expected = model >= SCALE;
                    if expected {
                        model -= SCALE;
                        granted += 1;
                    }
                    proptest::prop_assert_eq!(budget.withdraw(), expected);
                }
                proptest::prop_assert_eq!(i64::from(budget.tokens()), model / SCALE);
            }
            proptest::prop_assert!(f64::from(granted) <= f64::from(deposits) * ratio + 1e-9);
        }
    }
}

/// Run with `RUSTFLAGS="--cfg loom" cargo test -p seawall-retry --lib --release loom`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;

    fn budget(ratio: f64, min_per_sec: u32) -> RetryBudget {
        RetryBudget::builder()
            .ratio(ratio)
            .min_per_sec(min_per_sec)
            .build()
            .unwrap()
    }

    #[test]
    fn one_token_is_granted_once() {
        loom::model(|| {
            let a = budget(1.0, 0);
            a.deposit();
            let b = a.clone();
            let other = loom::thread::spawn(move || b.withdraw());
            let mine = a.withdraw();
            let theirs = other.join().unwrap();
            assert!(mine ^ theirs, "exactly one retry: {mine} {theirs}");
            assert_eq!(a.tokens(), 0);
        });
    }

    #[test]
    fn the_floor_is_granted_once_per_second() {
        loom::model(|| {
            let a = budget(0.0, 1);
            let b = a.clone();
            let other = loom::thread::spawn(move || b.withdraw());
            let mine = a.withdraw();
            let theirs = other.join().unwrap();
            assert!(mine ^ theirs, "exactly one retry: {mine} {theirs}");
        });
    }

    #[test]
    fn a_concurrent_deposit_is_never_lost() {
        loom::model(|| {
            let a = budget(1.0, 0);
            let b = a.clone();
            let depositor = loom::thread::spawn(move || b.deposit());
            let granted = a.withdraw();
            depositor.join().unwrap();
            // The token was either taken or is still there.
            assert_eq!(u32::from(granted) + a.tokens(), 1);
        });
    }
}
