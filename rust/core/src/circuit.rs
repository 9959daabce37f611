//! The circuit breaker: a small state machine deciding whether a call may go ahead.
//!
//! - **Closed**: calls flow. Consecutive failures are counted; reaching
//!   `failure_threshold` trips the breaker to Open. A success resets the count.
//! - **Open** until a deadline: every call is rejected. The first look at the breaker at or
//!   after the deadline (`try_acquire` or `state`) flips it to HalfOpen — lazily, there is
//!   no background task.
//! - **HalfOpen**: at most `half_open_max_calls` probes in flight. Each successful probe
//!   counts; `half_open_max_calls` successes close the breaker. Any failed probe reopens it
//!   with a fresh deadline.
//!
//! Every transition bumps an *epoch*. A [`Permit`] remembers the epoch it was issued in and
//! its outcome is ignored once the epoch moved on, so a slow call that straddles a
//! transition cannot corrupt the next session (a late failure from the Closed session
//! cannot reopen a breaker that already recovered).
//!
//! Time is injected through [`Clock`] so tests are deterministic; an `Instant` is a clock
//! frozen at that instant. The clock is only read when a decision needs it.
//!
//! The common case — closed, no failure counted — takes no lock: an atomic summary of the
//! state lets `try_acquire` issue a permit and `record` drop a success with one load each.
//! Everything else goes through the mutex, which republishes the summary.

use parking_lot::Mutex;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where the breaker reads the time. Only consulted when a decision depends on it.
pub trait Clock {
    fn now(&self) -> Instant;
}

/// A fixed instant: what tests pass to step through time.
impl Clock for Instant {
    #[inline]
    fn now(&self) -> Instant {
        *self
    }
}

/// The monotonic system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Largest accepted `half_open_max_calls`: beyond it the success counter could saturate
/// before reaching the threshold and the breaker would never close.
pub const HALF_OPEN_MAX_CALLS_LIMIT: u32 = u32::MAX / 2;

/// Why a circuit policy is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("CircuitPolicy failure_threshold must be >= 1, got 0")]
    ZeroFailureThreshold,
    #[error(
        "CircuitPolicy half_open_max_calls must be between 1 and {HALF_OPEN_MAX_CALLS_LIMIT}, \
         got {0}"
    )]
    HalfOpenMaxCalls(u64),
}

/// When a breaker trips and how it recovers. Validated at construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitPolicy {
    failure_threshold: u32,
    reset_timeout: Duration,
    half_open_max_calls: u32,
}

impl Default for CircuitPolicy {
    /// 5 consecutive failures trip it, 30 s open, one probe closes it.
    fn default() -> Self {
        CircuitPolicy {
            failure_threshold: 5,
            reset_timeout: Duration::from_secs(30),
            half_open_max_calls: 1,
        }
    }
}

impl CircuitPolicy {
    /// A policy; `failure_threshold` must be >= 1 and `half_open_max_calls` within
    /// `1..=HALF_OPEN_MAX_CALLS_LIMIT`. Counts arrive as `u64` so that callers never have to
    /// truncate what a user typed before it is checked.
    pub fn new(
        failure_threshold: u64,
        reset_timeout: Duration,
        half_open_max_calls: u64,
    ) -> Result<Self, PolicyError> {
        if failure_threshold == 0 {
            return Err(PolicyError::ZeroFailureThreshold);
        }
        let half_open = u32::try_from(half_open_max_calls)
            .ok()
            .filter(|n| (1..=HALF_OPEN_MAX_CALLS_LIMIT).contains(n))
            .ok_or(PolicyError::HalfOpenMaxCalls(half_open_max_calls))?;
        Ok(CircuitPolicy {
            // A threshold above u32::MAX can never be reached by a u32 counter anyway.
            failure_threshold: u32::try_from(failure_threshold).unwrap_or(u32::MAX),
            reset_timeout,
            half_open_max_calls: half_open,
        })
    }

    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold
    }

    pub fn reset_timeout(&self) -> Duration {
        self.reset_timeout
    }

    pub fn half_open_max_calls(&self) -> u32 {
        self.half_open_max_calls
    }
}

/// The reported state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

/// Why a call was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The breaker is open; it will admit a probe after `retry_in` (`None`: the reset
    /// timeout is too large to represent, so effectively never).
    Open { retry_in: Option<Duration> },
    /// The breaker is half-open and all `max_calls` probe slots are taken.
    HalfOpenBusy { max_calls: u32 },
}

impl Rejection {
    /// The rejection as a sentence; `call` names what was rejected (a function name).
    pub fn message(&self, call: Option<&str>) -> String {
        let what = match call {
            Some(name) => format!("rejecting call to {name}"),
            None => "rejecting call".to_owned(),
        };
        match self {
            Rejection::Open { retry_in: Some(d) } => format!(
                "circuit breaker open: {what} (a probe is allowed in {:.3} s)",
                d.as_secs_f64()
            ),
            Rejection::Open { retry_in: None } => format!("circuit breaker open: {what}"),
            Rejection::HalfOpenBusy { max_calls } => format!(
                "circuit breaker half-open: all {max_calls} trial slot(s) are in use, {what}"
            ),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message(None))
    }
}

/// Permission for one call. Hand it back to [`CircuitBreaker::record`] with the outcome.
///
/// This is plain data: whoever holds it must record it. The Python permit records a
/// failure when it is dropped unrecorded.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "record the call's outcome with CircuitBreaker::record"]
pub struct Permit {
    epoch: u64,
    probe: bool,
}

impl Permit {
    /// The epoch (state-machine session) the permit was issued in.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// True when the permit is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    /// Open until the deadline; `None` when the deadline cannot be represented.
    Open {
        until: Option<Instant>,
    },
    HalfOpen,
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    epoch: u64,
    consecutive_failures: u32,
    probes_in_flight: u32,
    probe_successes: u32,
}

impl Inner {
    fn transition(&mut self, phase: Phase) {
        self.phase = phase;
        self.epoch = self.epoch.wrapping_add(1);
        self.consecutive_failures = 0;
        self.probes_in_flight = 0;
        self.probe_successes = 0;
    }

    /// The lazy Open → HalfOpen flip; reads the clock only when open.
    fn settle(&mut self, clock: &impl Clock) {
        if let Phase::Open { until: Some(until) } = self.phase {
            if clock.now() >= until {
                self.transition(Phase::HalfOpen);
            }
        }
    }
}

/// A thread-safe circuit breaker. Share one (behind an `Arc`) among every caller of the
/// same dependency so that a trip protects all of them.
#[derive(Debug)]
pub struct CircuitBreaker {
    policy: CircuitPolicy,
    /// `epoch << 1 | 1` while closed with no failure counted (a success changes nothing
    /// then), else 0. Written only under the `inner` lock.
    quiet: AtomicU64,
    inner: Mutex<Inner>,
}

fn quiet_value(inner: &Inner) -> u64 {
    match inner.phase {
        Phase::Closed if inner.consecutive_failures == 0 => (inner.epoch << 1) | 1,
        _ => 0,
    }
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(policy: CircuitPolicy) -> Self {
        CircuitBreaker {
            policy,
            quiet: AtomicU64::new(1),
            inner: Mutex::new(Inner {
                phase: Phase::Closed,
                epoch: 0,
                consecutive_failures: 0,
                probes_in_flight: 0,
                probe_successes: 0,
            }),
        }
    }

    pub fn policy(&self) -> &CircuitPolicy {
        &self.policy
    }

    /// May a call go ahead? Closed: yes. Open: no, unless the reset timeout has elapsed,
    /// which turns the breaker half-open. HalfOpen: yes while a probe slot is free.
    pub fn try_acquire(&self, clock: impl Clock) -> Result<Permit, Rejection> {
        let quiet = self.quiet.load(Ordering::Acquire);
        if quiet & 1 == 1 {
            return Ok(Permit { epoch: quiet >> 1, probe: false });
        }
        let mut inner = self.inner.lock();
        inner.settle(&clock);
        self.publish(&inner);
        match inner.phase {
            Phase::Closed => Ok(Permit { epoch: inner.epoch, probe: false }),
            Phase::Open { until } => {
                let retry_in = until.map(|u| u.saturating_duration_since(clock.now()));
                Err(Rejection::Open { retry_in })
            }
            Phase::HalfOpen => {
                let max_calls = self.policy.half_open_max_calls;
                if inner.probes_in_flight >= max_calls {
                    return Err(Rejection::HalfOpenBusy { max_calls });
                }
                inner.probes_in_flight += 1;
                Ok(Permit { epoch: inner.epoch, probe: true })
            }
        }
    }

    /// Records the outcome of the call `permit` allowed. Outcomes from an earlier epoch
    /// are ignored.
    pub fn record(&self, permit: Permit, success: bool, clock: impl Clock) {
        // Closed with nothing counted: a success of this epoch changes nothing.
        if success && self.quiet.load(Ordering::Acquire) == (permit.epoch << 1) | 1 {
            return;
        }
        let mut inner = self.inner.lock();
        if permit.epoch != inner.epoch {
            return;
        }
        if permit.probe {
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
        }
        match (inner.phase, success) {
            (Phase::Closed, true) => inner.consecutive_failures = 0,
            (Phase::Closed, false) => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                if inner.consecutive_failures >= self.policy.failure_threshold {
                    self.trip(&mut inner, &clock);
                }
            }
            (Phase::HalfOpen, true) => {
                inner.probe_successes = inner.probe_successes.saturating_add(1);
                if inner.probe_successes >= self.policy.half_open_max_calls {
                    inner.transition(Phase::Closed);
                }
            }
            (Phase::HalfOpen, false) => self.trip(&mut inner, &clock),
            // Entering Open bumps the epoch, so no current permit can exist while open.
            (Phase::Open { .. }, _) => {}
        }
        self.publish(&inner);
    }

    /// Shorthand for `record(permit, true, clock)`.
    pub fn record_success(&self, permit: Permit, clock: impl Clock) {
        self.record(permit, true, clock);
    }

    /// Shorthand for `record(permit, false, clock)`.
    pub fn record_failure(&self, permit: Permit, clock: impl Clock) {
        self.record(permit, false, clock);
    }

    /// The state as callers would see it now: an open breaker whose reset timeout has
    /// elapsed is flipped to half-open first.
    pub fn state(&self, clock: impl Clock) -> CircuitState {
        let mut inner = self.inner.lock();
        inner.settle(&clock);
        self.publish(&inner);
        match inner.phase {
            Phase::Closed => CircuitState::Closed,
            Phase::Open { .. } => CircuitState::Open,
            Phase::HalfOpen => CircuitState::HalfOpen,
        }
    }

    /// Consecutive failures counted in the closed state.
    pub fn consecutive_failures(&self) -> u32 {
        self.inner.lock().consecutive_failures
    }

    /// The current epoch (bumped by every transition).
    pub fn epoch(&self) -> u64 {
        self.inner.lock().epoch
    }

    /// Republishes the lock-free summary; call with the lock held, after any change.
    fn publish(&self, inner: &Inner) {
        self.quiet.store(quiet_value(inner), Ordering::Release);
    }

    fn trip(&self, inner: &mut Inner, clock: &impl Clock) {
        let until = clock.now().checked_add(self.policy.reset_timeout);
        inner.transition(Phase::Open { until });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::sync::Arc;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn policy(threshold: u64, reset_ms: u64, half_open: u64) -> CircuitPolicy {
        CircuitPolicy::new(threshold, ms(reset_ms), half_open).unwrap()
    }

    fn trip(cb: &CircuitBreaker, at: Instant) {
        for _ in 0..cb.policy().failure_threshold() {
            let p = cb.try_acquire(at).unwrap();
            cb.record(p, false, at);
        }
        assert_eq!(cb.state(at), CircuitState::Open);
    }

    /// A clock that counts how often it was read.
    struct CountingClock<'a>(Instant, &'a Cell<u32>);

    impl Clock for CountingClock<'_> {
        fn now(&self) -> Instant {
            self.1.set(self.1.get() + 1);
            self.0
        }
    }

    #[test]
    fn default_policy_matches_upstream() {
        let p = CircuitPolicy::default();
        assert_eq!(p.failure_threshold(), 5);
        assert_eq!(p.reset_timeout(), Duration::from_secs(30));
        assert_eq!(p.half_open_max_calls(), 1);
    }

    #[test]
    fn invalid_policies_are_refused() {
        assert_eq!(CircuitPolicy::new(0, ms(1), 1), Err(PolicyError::ZeroFailureThreshold));
        assert_eq!(CircuitPolicy::new(1, ms(1), 0), Err(PolicyError::HalfOpenMaxCalls(0)));
        let too_many = u64::from(HALF_OPEN_MAX_CALLS_LIMIT) + 1;
        assert_eq!(
            CircuitPolicy::new(1, ms(1), too_many),
            Err(PolicyError::HalfOpenMaxCalls(too_many))
        );
        assert!(CircuitPolicy::new(1, ms(1), u64::from(HALF_OPEN_MAX_CALLS_LIMIT)).is_ok());
        assert!(CircuitPolicy::new(1, Duration::ZERO, 1).is_ok());
        assert!(PolicyError::HalfOpenMaxCalls(0).to_string().contains("half_open_max_calls"));
    }

    #[test]
    fn huge_threshold_saturates() {
        let p = CircuitPolicy::new(u64::MAX, ms(1), 1).unwrap();
        assert_eq!(p.failure_threshold(), u32::MAX);
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let t0 = Instant::now();
        let cb = CircuitBreaker::new(policy(3, 100, 1));
        for i in 0..2 {
            let p = cb.try_acquire(t0).unwrap();
            cb.record(p, false, t0);
            assert_eq!(cb.state(t0), CircuitState::Closed, "after {} failures", i + 1);
        }
        assert_eq!(cb.consecutive_failures(), 2);
        let p = cb.try_acquire(t0).unwrap();
        cb.record_failure(p, t0);
        assert_eq!(cb.state(t0), CircuitState::Open);
        assert_eq!(cb.try_acquire(t0 + ms(40)), Err(Rejection::Open { retry_in: Some(ms(60)) }));
    }

    #[test]
    fn success_resets_the_failure_count() {
        let t0 = Instant::now();
        let cb = CircuitBreaker::new(policy(2, 100, 1));
        let p = cb.try_acquire(t0).unwrap();
        cb.record(p, false, t0);
        let p = cb.try_acquire(t0).unwrap();
        cb.record_success(p, t0);
        assert_eq!(cb.consecutive_failures(), 0);
        let p = cb.try_acquire(t0).unwrap();
        cb.record(p, false, t0);
        assert_eq!(cb.state(t0), CircuitState::Closed);
    }

    #[test]
    fn half_open_after_reset_timeout_and_probe_success_closes() {
        let t0 = Instant::now();
        let cb = CircuitBreaker::new(policy(1, 100, 1));
        trip(&cb, t0);
        assert!(cb.try_acquire(t0 + ms(99)).is_err());
        let probe = cb.try_acquire(t0 + ms(100)).unwrap();
        assert!(probe.is_probe());
        assert_eq!(cb.state(t0 + ms(100)), CircuitState::HalfOpen);
        // One slot only: a second caller is turned away while the probe runs.
        assert_eq!(cb.try_acquire(t0 + ms(101)), Err(Rejection::HalfOpenBusy { max_calls: 1 }));
        cb.record(probe, true, t0 + ms(110));
        assert_eq!(cb.state(t0 + ms(110)), CircuitState::Closed);
        assert!(!cb.try_acquire(t0 + ms(110)).unwrap().is_probe());
    }

    #[test]
    fn probe_failure_reopens_with_a_fresh_deadline() {
        let t0 = Instant::now();
        let cb = CircuitBreaker::new(policy(1, 100, 1));
        trip(&cb, t0);
        let probe = cb.try_acquire(t0 + ms(150)).unwrap();
        cb.record(probe, false, t0 + ms(160));
        assert_eq!(cb.state(t0 + ms(160)), CircuitState::Open);
        // The deadline counts from the failed probe, not from the first trip.
        assert!(cb.try_acquire(t0 + ms(259)).is_err());
        assert!(cb.try_acquire(t0 + ms(260)).is_ok());
    }

    #[test]
    fn state_performs_the_lazy_flip() {
        let t0 = Instant::now();
        let cb = CircuitBreaker::new(policy(1, 50, 1));
        trip(&cb, t0);
        let epoch = cb.epoch();
        assert_eq!(cb.state(t0 + ms(49)), CircuitState::Open);
        assert_eq!(cb.state(t0 + ms(50)), CircuitState::HalfOpen);
        assert_eq!(cb.epoch(), epoch + 1);
    }

    #[test]
    fn several_probes_must_all_succeed() {
        let t0 = Instant::now();
        let cb = CircuitBreaker::new(policy(1, 10, 2));
        trip(&cb, t0);
        let t = t0 + ms(10);
        let a = cb.try_acquire(t).unwrap();
        let b = cb.try_acquire(t).unwrap();
        assert_eq!(cb.try_acquire(t), Err(Rejection::HalfOpenBusy { max_calls: 2 }));
        cb.record(a, true, t);
        assert_eq!(cb.state(t), CircuitState::HalfOpen);
        // The finished probe freed its slot.
        let c = cb.try_acquire(t).unwrap();
        cb.record(b, true, t);
        assert_eq!(cb.state(t), CircuitState::Closed);
        // `c` belongs to the half-open session that just ended: ignored.
        cb.record(c, false, t);
        assert_eq!(cb.state(t), CircuitState::Closed);
        assert_eq!(cb.consecutive_failures(), 0);
    }

    #[test]
    fn stale_failure_cannot_reopen_a_recovered_breaker() {
        let t0 = Instant::now();
        let cb = CircuitBreaker::new(policy(1, 10, 1));
        let slow = cb.try_acquire(t0).unwrap();
        trip(&cb, t0);
        let probe = cb.try_acquire(t0 + ms(10)).unwrap();
        cb.record(probe, true, t0 + ms(10));
        assert_eq!(cb.state(t0 + ms(10)), CircuitState::Closed);
        // The slow call from the first closed session fails late: ignored.
        cb.record(slow, false, t0 + ms(11));
        assert_eq!(cb.state(t0 + ms(11)), CircuitState::Closed);
    }

    #[test]
    fn stale_success_cannot_close_an_open_breaker() {
        let t0 = Instant::now();
        let cb = CircuitBreaker::new(policy(2, 10, 1));
        let slow = cb.try_acquire(t0).unwrap();
        trip(&cb, t0);
        cb.record(slow, true, t0);
        assert_eq!(cb.state(t0), CircuitState::Open);
    }

    #[test]
    fn stale_probe_outcome_neither_frees_a_slot_nor_counts() {
        let t0 = Instant::now();
        let cb = CircuitBreaker::new(policy(1, 10, 2));
        trip(&cb, t0);
        let t = t0 + ms(10);
        let slow_probe = cb.try_acquire(t).unwrap();
        let failing_probe = cb.try_acquire(t).unwrap();
        cb.record(failing_probe, false, t);
        // A new half-open session with both slots taken.
        let t = t + ms(10);
        let c = cb.try_acquire(t).unwrap();
        let _d = cb.try_acquire(t).unwrap();
        // The probe from the previous session succeeds late: ignored entirely.
        cb.record(slow_probe, true, t);
        assert_eq!(cb.try_acquire(t), Err(Rejection::HalfOpenBusy { max_calls: 2 }));
        cb.record(c, true, t);
        assert_eq!(cb.state(t), CircuitState::HalfOpen);
    }

    #[test]
    fn closed_path_never_reads_the_clock() {
        let reads = Cell::new(0);
        let t0 = Instant::now();
        let cb = CircuitBreaker::new(policy(3, 10, 1));
        for _ in 0..10 {
            let p = cb.try_acquire(CountingClock(t0, &reads)).unwrap();
            cb.record(p, true, CountingClock(t0, &reads));
        }
        assert_eq!(cb.state(CountingClock(t0, &reads)), CircuitState::Closed);
        assert_eq!(reads.get(), 0);
        // A failure below the threshold does not need the time either.
        let p = cb.try_acquire(CountingClock(t0, &reads)).unwrap();
        cb.record(p, false, CountingClock(t0, &reads));
        assert_eq!(reads.get(), 0);
    }

    #[test]
    fn unrepresentable_deadline_stays_open() {
        let t0 = Instant::now();
        let cb = CircuitBreaker::new(CircuitPolicy::new(1, Duration::MAX, 1).unwrap());
        trip(&cb, t0);
        assert_eq!(cb.try_acquire(t0 + ms(1)), Err(Rejection::Open { retry_in: None }));
        assert_eq!(cb.state(t0 + Duration::from_secs(1_000_000)), CircuitState::Open);
    }

    #[test]
    fn zero_reset_timeout_half_opens_at_once() {
        let t0 = Instant::now();
        let cb = CircuitBreaker::new(policy(1, 0, 1));
        let p = cb.try_acquire(t0).unwrap();
        cb.record(p, false, t0);
        assert!(cb.try_acquire(t0).unwrap().is_probe());
    }

    #[test]
    fn rejection_messages_say_why() {
        let open = Rejection::Open { retry_in: Some(ms(1500)) }.to_string();
        assert!(open.contains("open") && open.contains("1.500 s"), "{open}");
        let busy = Rejection::HalfOpenBusy { max_calls: 2 }.to_string();
        assert!(busy.contains("half-open") && busy.contains('2'), "{busy}");
        let named = Rejection::Open { retry_in: None }.message(Some("fetch"));
        assert_eq!(named, "circuit breaker open: rejecting call to fetch");
    }

    #[test]
    fn shared_across_threads_counts_every_failure() {
        let cb = Arc::new(CircuitBreaker::new(policy(u64::from(u32::MAX), 10, 1)));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let cb = Arc::clone(&cb);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        let p = cb.try_acquire(SystemClock).unwrap();
                        cb.record(p, false, SystemClock);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(cb.consecutive_failures(), 8000);
    }

    #[test]
    fn concurrent_trip_happens_exactly_once() {
        let cb = Arc::new(CircuitBreaker::new(policy(100, 60_000, 1)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let cb = Arc::clone(&cb);
                std::thread::spawn(move || {
                    let mut admitted = 0u32;
                    for _ in 0..1000 {
                        if let Ok(p) = cb.try_acquire(SystemClock) {
                            admitted += 1;
                            cb.record(p, false, SystemClock);
                        }
                    }
                    admitted
                })
            })
            .collect();
        let admitted: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(cb.state(SystemClock), CircuitState::Open);
        // Exactly one transition: Closed -> Open.
        assert_eq!(cb.epoch(), 1);
        // Permits issued before the trip but recorded after it are stale; at least the
        // threshold was admitted, and never more than threshold + one in flight per thread.
        assert!((100..=104).contains(&admitted), "{admitted}");
    }
}
