//! Rate limiters: a token bucket, a fixed window, and an all-or-nothing combination.
//!
//! - [`RateLimiter`]: a bucket of fractional tokens refilled at `tokens / period`, holding
//!   at most `tokens + burst`. It starts full, so a fresh limiter admits a burst at once.
//! - [`WindowedRateLimiter`]: at most `limit` units per `window`. The first window starts
//!   at construction; once a window has fully elapsed the next access opens a new one at
//!   that moment (windows are not aligned to clock boundaries).
//! - [`MultiRateLimiter`]: several [`Meter`]s (tiers), each charged its own cost. A call is
//!   admitted only if every tier admits it; on the first refusal the tiers already charged
//!   are refunded and the refusing tier is named.
//!
//! All refill is lazy (computed from the time passed in), there is no background task, and
//! every limiter is thread-safe behind a `parking_lot` mutex that is never held across
//! anything but arithmetic. Time is a parameter, so tests step through it exactly.

use parking_lot::Mutex;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Token amounts within this of a whole cost count as enough: `time_until` rounds to the
/// nanosecond, so waiting exactly that long may leave the bucket a hair short.
const TOKEN_EPSILON: f64 = 1e-9;

/// The shortest `retry_after` a [`MultiRateLimiter`] reports.
pub const MIN_RETRY_AFTER: Duration = Duration::from_millis(1);

/// Why a limiter cannot be built, or a cost can never be granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimiterError {
    #[error("RateLimiter tokens must be >= 1, got 0")]
    ZeroTokens,
    #[error("RateLimiter period must be > 0 seconds, got 0")]
    ZeroPeriod,
    #[error("RateLimiter capacity tokens + burst overflows ({tokens} + {burst})")]
    CapacityOverflow { tokens: u64, burst: u64 },
    #[error("WindowedRateLimiter limit must be >= 1, got 0")]
    ZeroLimit,
    #[error("WindowedRateLimiter window must be > 0 seconds, got 0")]
    ZeroWindow,
    #[error("cost {cost} exceeds the limiter's capacity of {capacity}: it can never be granted")]
    CostExceedsCapacity { cost: u64, capacity: u64 },
    #[error(
        "tier '{tier}' can never grant its share: cost {cost} exceeds its capacity of {capacity}"
    )]
    TierNeverGrants { tier: String, cost: u128, capacity: u64 },
}

/// Proof of a debit, needed to refund it. Refunds to a window only apply while the window
/// that was charged is still the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "keep the debit to refund it, or drop it to keep the charge"]
pub struct Debit {
    generation: u64,
}

/// Something that meters units: the two limiters, and the tiers of a [`MultiRateLimiter`].
pub trait Meter: Send + Sync + fmt::Debug {
    /// The largest cost that can ever be granted at once.
    fn capacity(&self) -> u64;

    /// Charges `cost` if available now. A cost of 0 always succeeds and charges nothing.
    fn try_debit(&self, cost: u64, now: Instant) -> Option<Debit>;

    /// Refunds a debit of `cost` (best effort: a bucket never exceeds its capacity, a
    /// window ignores refunds for a window that has already been replaced).
    fn credit(&self, cost: u64, debit: Debit);

    /// How long until `cost` could be granted: zero if now, `None` if never (cost above
    /// capacity).
    fn time_until(&self, cost: u64, now: Instant) -> Option<Duration>;

    /// Takes `cost` units if available now.
    fn try_acquire(&self, cost: u64, now: Instant) -> bool {
        self.try_debit(cost, now).is_some()
    }

    /// Refuses a cost that can never be granted (what an acquire loop checks before it
    /// starts waiting).
    fn check_cost(&self, cost: u64) -> Result<(), LimiterError> {
        let capacity = self.capacity();
        if cost > capacity {
            return Err(LimiterError::CostExceedsCapacity { cost, capacity });
        }
        Ok(())
    }
}

fn secs_to_duration(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX)
}

// ---------------------------------------------------------------------------------------------
// Token bucket
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last_refill: Instant,
}

/// A token bucket: `tokens` per `period`, capacity `tokens + burst`, starting full.
#[derive(Debug)]
pub struct RateLimiter {
    tokens: u64,
    period: Duration,
    burst: u64,
    capacity: u64,
    per_sec: f64,
    bucket: Mutex<Bucket>,
}

impl RateLimiter {
    /// A full bucket refilling `tokens` every `period`, holding up to `tokens + burst`.
    pub fn new(
        tokens: u64,
        period: Duration,
        burst: u64,
        now: Instant,
    ) -> Result<Self, LimiterError> {
        if tokens == 0 {
            return Err(LimiterError::ZeroTokens);
        }
        if period.is_zero() {
            return Err(LimiterError::ZeroPeriod);
        }
        let capacity =
            tokens.checked_add(burst).ok_or(LimiterError::CapacityOverflow { tokens, burst })?;
        Ok(RateLimiter {
            tokens,
            period,
            burst,
            capacity,
            per_sec: tokens as f64 / period.as_secs_f64(),
            bucket: Mutex::new(Bucket { tokens: capacity as f64, last_refill: now }),
        })
    }

    /// `n` tokens per second, no burst.
    pub fn per_second(n: u64, now: Instant) -> Result<Self, LimiterError> {
        Self::new(n, Duration::from_secs(1), 0, now)
    }

    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Tokens refilled per second.
    pub fn refill_rate(&self) -> f64 {
        self.per_sec
    }

    /// Tokens in the bucket now (fractional).
    pub fn available(&self, now: Instant) -> f64 {
        let mut b = self.bucket.lock();
        self.refill(&mut b, now);
        b.tokens
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        // Callers on other threads may pass a slightly older `now`: never refill backwards.
        let elapsed = now.saturating_duration_since(b.last_refill);
        if elapsed.is_zero() {
            return;
        }
        b.tokens = (b.tokens + elapsed.as_secs_f64() * self.per_sec).min(self.capacity as f64);
        b.last_refill = now;
    }

    fn missing(b: &Bucket, cost: u64) -> f64 {
        let deficit = cost as f64 - b.tokens;
        if deficit <= TOKEN_EPSILON {
            0.0
        } else {
            deficit
        }
    }
}

impl Meter for RateLimiter {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn try_debit(&self, cost: u64, now: Instant) -> Option<Debit> {
        if cost == 0 {
            return Some(Debit { generation: 0 });
        }
        if cost > self.capacity {
            return None;
        }
        let mut b = self.bucket.lock();
        self.refill(&mut b, now);
        if Self::missing(&b, cost) > 0.0 {
            return None;
        }
        b.tokens = (b.tokens - cost as f64).max(0.0);
        Some(Debit { generation: 0 })
    }

    fn credit(&self, cost: u64, _debit: Debit) {
        let mut b = self.bucket.lock();
        b.tokens = (b.tokens + cost as f64).min(self.capacity as f64);
    }

    fn time_until(&self, cost: u64, now: Instant) -> Option<Duration> {
        if cost > self.capacity {
            return None;
        }
        if cost == 0 {
            return Some(Duration::ZERO);
        }
        let mut b = self.bucket.lock();
        self.refill(&mut b, now);
        Some(secs_to_duration(Self::missing(&b, cost) / self.per_sec))
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed window
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Window {
    used: u64,
    start: Instant,
    generation: u64,
}

/// At most `limit` units per `window`, the first window opening at construction.
#[derive(Debug)]
pub struct WindowedRateLimiter {
    limit: u64,
    window: Duration,
    state: Mutex<Window>,
}

impl WindowedRateLimiter {
    pub fn new(limit: u64, window: Duration, now: Instant) -> Result<Self, LimiterError> {
        if limit == 0 {
            return Err(LimiterError::ZeroLimit);
        }
        if window.is_zero() {
            return Err(LimiterError::ZeroWindow);
        }
        Ok(WindowedRateLimiter {
            limit,
            window,
            state: Mutex::new(Window { used: 0, start: now, generation: 0 }),
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Units used in the current window.
    pub fn used(&self, now: Instant) -> u64 {
        let mut w = self.state.lock();
        self.roll(&mut w, now);
        w.used
    }

    /// Units left in the current window.
    pub fn remaining(&self, now: Instant) -> u64 {
        self.limit - self.used(now)
    }

    /// When the current window ends (`None` if too far away to represent).
    pub fn resets_at(&self, now: Instant) -> Option<Instant> {
        let mut w = self.state.lock();
        self.roll(&mut w, now);
        w.start.checked_add(self.window)
    }

    fn roll(&self, w: &mut Window, now: Instant) {
        if now.saturating_duration_since(w.start) >= self.window {
            w.used = 0;
            w.start = now;
            w.generation = w.generation.wrapping_add(1);
        }
    }

    fn fits(&self, w: &Window, cost: u64) -> bool {
        w.used.checked_add(cost).is_some_and(|total| total <= self.limit)
    }
}

impl Meter for WindowedRateLimiter {
    fn capacity(&self) -> u64 {
        self.limit
    }

    fn try_debit(&self, cost: u64, now: Instant) -> Option<Debit> {
        let mut w = self.state.lock();
        self.roll(&mut w, now);
        if !self.fits(&w, cost) {
            return None;
        }
        w.used += cost;
        Some(Debit { generation: w.generation })
    }

    fn credit(&self, cost: u64, debit: Debit) {
        let mut w = self.state.lock();
        if w.generation == debit.generation {
            w.used = w.used.saturating_sub(cost);
        }
    }

    fn time_until(&self, cost: u64, now: Instant) -> Option<Duration> {
        if cost > self.limit {
            return None;
        }
        let mut w = self.state.lock();
        self.roll(&mut w, now);
        if self.fits(&w, cost) {
            return Some(Duration::ZERO);
        }
        let elapsed = now.saturating_duration_since(w.start);
        Some(self.window.saturating_sub(elapsed))
    }
}

// ---------------------------------------------------------------------------------------------
// All-or-nothing tiers
// ---------------------------------------------------------------------------------------------

/// One tier of a [`MultiRateLimiter`]: a named meter and what one call costs on it.
#[derive(Debug, Clone)]
pub struct Tier {
    pub name: String,
    pub meter: Arc<dyn Meter>,
    pub cost: u64,
}

/// A [`MultiRateLimiter`] refusal: the first tier that could not grant its cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    pub tier: String,
    /// How long until that tier could grant it (at least [`MIN_RETRY_AFTER`]); `None` if
    /// never (the cost exceeds the tier's capacity).
    pub retry_after: Option<Duration>,
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.retry_after {
            Some(d) => write!(
                f,
                "rate limited by tier '{}': retry after {:.3} s",
                self.tier,
                d.as_secs_f64()
            ),
            None => write!(
                f,
                "rate limited by tier '{}': the cost exceeds the tier's capacity and can never \
                 be granted",
                self.tier
            ),
        }
    }
}

/// Several tiers charged together: all of them or none. Tiers are checked in insertion
/// order, a tier of cost 0 is inert, names are not deduplicated (the same meter in two
/// tiers is charged twice). No tiers: everything is admitted.
#[derive(Debug, Clone, Default)]
pub struct MultiRateLimiter {
    tiers: Vec<Tier>,
}

impl MultiRateLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tier charging `cost` per acquired unit.
    pub fn with_tier(mut self, name: impl Into<String>, meter: Arc<dyn Meter>, cost: u64) -> Self {
        self.tiers.push(Tier { name: name.into(), meter, cost });
        self
    }

    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// Charges every tier `tier.cost * units`, or none of them. On refusal the tiers already
    /// charged are refunded (in reverse order) and the refusing tier is reported.
    pub fn try_acquire(&self, units: u64, now: Instant) -> Result<(), RateLimited> {
        let mut charged: Vec<(&Tier, u64, Debit)> = Vec::with_capacity(self.tiers.len());
        for tier in &self.tiers {
            let cost = tier.cost.checked_mul(units);
            match cost.and_then(|c| tier.meter.try_debit(c, now).map(|d| (c, d))) {
                Some((c, debit)) => charged.push((tier, c, debit)),
                None => {
                    for (t, c, debit) in charged.into_iter().rev() {
                        t.meter.credit(c, debit);
                    }
                    let wait = cost.and_then(|c| tier.meter.time_until(c, now));
                    return Err(RateLimited {
                        tier: tier.name.clone(),
                        retry_after: wait.map(|w| w.max(MIN_RETRY_AFTER)),
                    });
                }
            }
        }
        Ok(())
    }

    /// How long until every tier could grant its share of `units` (the longest wait);
    /// `None` if some tier never can.
    pub fn time_until(&self, units: u64, now: Instant) -> Option<Duration> {
        let mut longest = Duration::ZERO;
        for tier in &self.tiers {
            let cost = tier.cost.checked_mul(units)?;
            longest = longest.max(tier.meter.time_until(cost, now)?);
        }
        Some(longest)
    }

    /// Refuses `units` if some tier can never grant its share, naming the first such tier.
    pub fn check_cost(&self, units: u64) -> Result<(), LimiterError> {
        for tier in &self.tiers {
            let cost = u128::from(tier.cost) * u128::from(units);
            let capacity = tier.meter.capacity();
            if cost > u128::from(capacity) {
                return Err(LimiterError::TierNeverGrants {
                    tier: tier.name.clone(),
                    cost,
                    capacity,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    // --- token bucket ---

    #[test]
    fn bucket_validates_its_policy() {
        let t0 = Instant::now();
        assert_eq!(RateLimiter::new(0, secs(1), 0, t0).unwrap_err(), LimiterError::ZeroTokens);
        assert_eq!(
            RateLimiter::new(1, Duration::ZERO, 0, t0).unwrap_err(),
            LimiterError::ZeroPeriod
        );
        assert!(matches!(
            RateLimiter::new(u64::MAX, secs(1), 1, t0),
            Err(LimiterError::CapacityOverflow { .. })
        ));
    }

    #[test]
    fn bucket_starts_full_and_admits_tokens_plus_burst() {
        let t0 = Instant::now();
        let rl = RateLimiter::new(2, secs(1), 3, t0).unwrap();
        assert_eq!(rl.capacity(), 5);
        let admitted = (0..10).filter(|_| rl.try_acquire(1, t0)).count();
        assert_eq!(admitted, 5);
        assert!(!rl.try_acquire(1, t0));
    }

    #[test]
    fn bucket_refills_fractionally() {
        let t0 = Instant::now();
        let rl = RateLimiter::per_second(10, t0).unwrap();
        assert!(rl.try_acquire(10, t0));
        assert!(!rl.try_acquire(1, t0 + ms(50)));
        assert!((rl.available(t0 + ms(50)) - 0.5).abs() < 1e-6);
        assert!(rl.try_acquire(1, t0 + ms(100)));
        assert!(!rl.try_acquire(1, t0 + ms(100)));
        // Refill never exceeds the capacity.
        assert!((rl.available(t0 + secs(60)) - 10.0).abs() < 1e-9);
    }

    #[test]
    fn bucket_time_until_is_the_exact_refill_wait() {
        let t0 = Instant::now();
        let rl = RateLimiter::new(4, secs(2), 0, t0).unwrap(); // 2 tokens/s
        assert_eq!(rl.time_until(1, t0), Some(Duration::ZERO));
        assert!(rl.try_acquire(4, t0));
        let wait = rl.time_until(3, t0).unwrap();
        assert!((wait.as_secs_f64() - 1.5).abs() < 1e-9, "{wait:?}");
        // Waiting exactly that long is enough despite rounding.
        assert!(rl.try_acquire(3, t0 + wait));
        assert_eq!(rl.time_until(5, t0), None);
        assert_eq!(rl.time_until(0, t0), Some(Duration::ZERO));
    }

    #[test]
    fn bucket_cost_zero_and_above_capacity() {
        let t0 = Instant::now();
        let rl = RateLimiter::per_second(1, t0).unwrap();
        assert!(rl.try_acquire(0, t0));
        assert!(!rl.try_acquire(2, t0 + secs(100)));
        assert_eq!(
            rl.check_cost(2),
            Err(LimiterError::CostExceedsCapacity { cost: 2, capacity: 1 })
        );
        assert!(rl.check_cost(1).is_ok());
        assert!((rl.available(t0) - 1.0).abs() < 1e-9, "nothing was taken");
    }

    #[test]
    fn bucket_ignores_an_older_now() {
        let t0 = Instant::now();
        let rl = RateLimiter::per_second(1, t0 + secs(1)).unwrap();
        assert!(rl.try_acquire(1, t0 + secs(1)));
        assert!(!rl.try_acquire(1, t0));
        assert!((rl.available(t0) - 0.0).abs() < 1e-9);
    }

    #[test]
    fn bucket_refund_is_capped_at_capacity() {
        let t0 = Instant::now();
        let rl = RateLimiter::per_second(2, t0).unwrap();
        let d = rl.try_debit(1, t0).unwrap();
        rl.credit(1, d);
        rl.credit(5, d);
        assert!((rl.available(t0) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn very_long_period_gives_a_saturated_wait() {
        let t0 = Instant::now();
        let rl = RateLimiter::new(1, Duration::MAX, 0, t0).unwrap();
        assert!(rl.try_acquire(1, t0));
        assert!(rl.time_until(1, t0).unwrap() > secs(1_000_000_000));
    }

    // --- fixed window ---

    #[test]
    fn window_validates_its_policy() {
        let t0 = Instant::now();
        assert_eq!(WindowedRateLimiter::new(0, secs(1), t0).unwrap_err(), LimiterError::ZeroLimit);
        assert_eq!(
            WindowedRateLimiter::new(1, Duration::ZERO, t0).unwrap_err(),
            LimiterError::ZeroWindow
        );
    }

    #[test]
    fn window_admits_limit_then_resets_after_the_window() {
        let t0 = Instant::now();
        let w = WindowedRateLimiter::new(3, ms(100), t0).unwrap();
        assert!(w.try_acquire(2, t0));
        assert!(w.try_acquire(1, t0 + ms(10)));
        assert!(!w.try_acquire(1, t0 + ms(99)));
        assert_eq!(w.remaining(t0 + ms(99)), 0);
        assert_eq!(w.time_until(1, t0 + ms(40)), Some(ms(60)));
        // Anchored at construction: the window ends at t0 + 100 ms.
        assert!(w.try_acquire(3, t0 + ms(100)));
        assert_eq!(w.used(t0 + ms(100)), 3);
    }

    #[test]
    fn new_window_starts_at_the_access_not_on_a_boundary() {
        let t0 = Instant::now();
        let w = WindowedRateLimiter::new(1, ms(100), t0).unwrap();
        assert!(w.try_acquire(1, t0));
        assert!(w.try_acquire(1, t0 + ms(250)));
        // The new window opened at 250 ms, so it runs until 350 ms.
        assert!(!w.try_acquire(1, t0 + ms(320)));
        assert_eq!(w.resets_at(t0 + ms(320)), Some(t0 + ms(350)));
        assert!(w.try_acquire(1, t0 + ms(350)));
    }

    #[test]
    fn window_cost_above_limit_never_fits() {
        let t0 = Instant::now();
        let w = WindowedRateLimiter::new(2, ms(10), t0).unwrap();
        assert!(!w.try_acquire(3, t0));
        assert_eq!(w.time_until(3, t0), None);
        assert!(w.check_cost(3).is_err());
        assert!(w.try_acquire(0, t0));
        assert!(!w.try_acquire(u64::MAX, t0));
    }

    #[test]
    fn window_refund_only_applies_to_the_same_window() {
        let t0 = Instant::now();
        let w = WindowedRateLimiter::new(2, ms(100), t0).unwrap();
        let d = w.try_debit(2, t0).unwrap();
        w.credit(1, d);
        assert_eq!(w.used(t0), 1);
        let old = w.try_debit(1, t0).unwrap();
        assert!(w.try_acquire(1, t0 + ms(100)));
        w.credit(1, old);
        assert_eq!(w.used(t0 + ms(100)), 1, "refund to a replaced window is ignored");
    }

    // --- multi-tier ---

    fn bucket(n: u64, t0: Instant) -> Arc<dyn Meter> {
        Arc::new(RateLimiter::per_second(n, t0).unwrap())
    }

    #[test]
    fn no_tiers_admit_everything() {
        let t0 = Instant::now();
        let m = MultiRateLimiter::new();
        assert!(m.try_acquire(1_000, t0).is_ok());
        assert_eq!(m.time_until(1_000, t0), Some(Duration::ZERO));
    }

    #[test]
    fn all_tiers_are_charged_together() {
        let t0 = Instant::now();
        let a = Arc::new(RateLimiter::per_second(10, t0).unwrap());
        let b = Arc::new(WindowedRateLimiter::new(4, secs(60), t0).unwrap());
        let m = MultiRateLimiter::new().with_tier("a", a.clone(), 1).with_tier("b", b.clone(), 2);
        assert!(m.try_acquire(1, t0).is_ok());
        assert!((a.available(t0) - 9.0).abs() < 1e-9);
        assert_eq!(b.used(t0), 2);
    }

    #[test]
    fn refusal_refunds_earlier_tiers_and_names_the_tier() {
        let t0 = Instant::now();
        let a = Arc::new(RateLimiter::per_second(10, t0).unwrap());
        let b = Arc::new(WindowedRateLimiter::new(1, ms(500), t0).unwrap());
        let m = MultiRateLimiter::new().with_tier("fast", a.clone(), 3).with_tier("daily", b, 1);
        assert!(m.try_acquire(1, t0).is_ok());
        let err = m.try_acquire(1, t0 + ms(100)).unwrap_err();
        assert_eq!(err.tier, "daily");
        assert_eq!(err.retry_after, Some(ms(400)));
        // The 3 tokens taken from "fast" before "daily" refused were given back.
        assert!((a.available(t0 + ms(100)) - 8.0).abs() < 1e-9);
        assert!(err.to_string().contains("'daily'"), "{err}");
    }

    #[test]
    fn retry_after_is_at_least_one_millisecond() {
        let t0 = Instant::now();
        let m = MultiRateLimiter::new().with_tier("t", bucket(1_000_000, t0), 1_000_000);
        assert!(m.try_acquire(1, t0).is_ok());
        let err = m.try_acquire(1, t0 + Duration::from_nanos(999_999_999)).unwrap_err();
        assert_eq!(err.retry_after, Some(MIN_RETRY_AFTER));
    }

    #[test]
    fn a_cost_above_a_tier_capacity_can_never_be_granted() {
        let t0 = Instant::now();
        let m = MultiRateLimiter::new().with_tier("small", bucket(2, t0), 3);
        let err = m.try_acquire(1, t0).unwrap_err();
        assert_eq!(err.retry_after, None);
        assert!(err.to_string().contains("never"), "{err}");
        assert_eq!(m.time_until(1, t0), None);
        assert_eq!(
            m.check_cost(1),
            Err(LimiterError::TierNeverGrants { tier: "small".into(), cost: 3, capacity: 2 })
        );
        assert!(m.check_cost(0).is_ok());
        let huge = MultiRateLimiter::new().with_tier("x", bucket(2, t0), u64::MAX);
        assert!(huge.check_cost(2).is_err());
        assert_eq!(huge.try_acquire(2, t0).unwrap_err().retry_after, None);
    }

    #[test]
    fn zero_cost_tiers_are_inert_and_units_scale_costs() {
        let t0 = Instant::now();
        let a = Arc::new(RateLimiter::per_second(10, t0).unwrap());
        let m = MultiRateLimiter::new().with_tier("inert", bucket(1, t0), 0).with_tier(
            "a",
            a.clone(),
            2,
        );
        assert!(m.try_acquire(3, t0).is_ok());
        assert!((a.available(t0) - 4.0).abs() < 1e-9);
        assert_eq!(m.time_until(3, t0), Some(ms(200)));
    }

    #[test]
    fn the_same_meter_in_two_tiers_is_charged_twice() {
        let t0 = Instant::now();
        let shared = Arc::new(RateLimiter::per_second(3, t0).unwrap());
        let m = MultiRateLimiter::new().with_tier("x", shared.clone(), 1).with_tier(
            "y",
            shared.clone(),
            1,
        );
        assert!(m.try_acquire(1, t0).is_ok());
        assert!((shared.available(t0) - 1.0).abs() < 1e-9);
        assert!(m.try_acquire(1, t0).is_err());
        assert!((shared.available(t0) - 1.0).abs() < 1e-9, "refunded");
    }

    #[test]
    fn limiters_are_shared_across_threads_without_overspending() {
        let t0 = Instant::now();
        let rl = Arc::new(RateLimiter::new(1000, secs(3600), 0, t0).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let rl = Arc::clone(&rl);
                std::thread::spawn(move || (0..500).filter(|_| rl.try_acquire(1, t0)).count())
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(admitted, 1000);
    }
}
