//! A circuit breaker for the Redis tier: after repeated failures, stop asking for a while.
//!
//! Every Redis operation is already bounded by `cache.redis_timeout`, so a dead Redis cannot
//! hold a request for long; but paying that timeout on every request while Redis is down
//! would add it to every request's latency. After [`THRESHOLD`] failures in a row the breaker
//! opens and operations are skipped outright; once the back-off has passed, one operation is
//! let through as a probe. Its success closes the breaker; its failure opens it again for
//! twice as long, up to [`MAX_BACK_OFF`], so a long outage costs one probe per half minute.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures in a row that open the breaker.
pub(crate) const THRESHOLD: u32 = 5;
/// The first back-off; doubled on each failed probe.
pub(crate) const FIRST_BACK_OFF: Duration = Duration::from_secs(1);
pub(crate) const MAX_BACK_OFF: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub(crate) struct Breaker {
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy)]
struct State {
    failures_in_a_row: u32,
    /// Set while open: until when operations are skipped.
    open_until: Option<Instant>,
    /// The back-off the next opening uses.
    back_off: Duration,
    /// A probe is out; others wait for its result rather than pile onto a dead Redis.
    probing: bool,
}

/// What the breaker said when an operation asked to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Closed: go ahead.
    Yes,
    /// Half open: go ahead; the result decides for everyone.
    Probe,
    /// Open: skip Redis.
    No,
}

/// What a recorded failure did to the breaker, so the caller can log the change once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tripped {
    No,
    /// Opened (or reopened after a failed probe) for this long.
    For(Duration),
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: Mutex::new(State {
                failures_in_a_row: 0,
                open_until: None,
                back_off: FIRST_BACK_OFF,
                probing: false,
            }),
        }
    }
}

impl Breaker {
    pub(crate) fn admit(&self, now: Instant) -> Admit {
        let mut state = self.lock();
        match state.open_until {
            None => Admit::Yes,
            Some(until) if now < until || state.probing => Admit::No,
            Some(_) => {
                state.probing = true;
                Admit::Probe
            }
        }
    }

    /// Whether the breaker is open now (operations skipped or one probe out).
    #[cfg(test)]
    fn is_open(&self) -> bool {
        self.lock().open_until.is_some()
    }

    pub(crate) fn success(&self) {
        let mut state = self.lock();
        state.failures_in_a_row = 0;
        state.open_until = None;
        state.back_off = FIRST_BACK_OFF;
        state.probing = false;
    }

    pub(crate) fn failure(&self, now: Instant) -> Tripped {
        let mut state = self.lock();
        state.failures_in_a_row = state.failures_in_a_row.saturating_add(1);
        let reopening = state.probing;
        if state.failures_in_a_row < THRESHOLD && !reopening {
            return Tripped::No;
        }
        if state.open_until.is_some() && !reopening {
            // Operations admitted before the breaker opened are still failing: already open.
            return Tripped::No;
        }
        let back_off = state.back_off;
        state.open_until = Some(now + back_off);
        state.back_off = (back_off * 2).min(MAX_BACK_OFF);
        state.probing = false;
        Tripped::For(back_off)
    }

    /// The state stays consistent whatever a holder did, so a poisoned lock is still usable.
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(breaker: &Breaker, times: u32, now: Instant) -> Vec<Tripped> {
        (0..times).map(|_| breaker.failure(now)).collect()
    }

    #[test]
    fn opens_after_the_threshold_and_lets_one_probe_through_after_the_back_off() {
        let breaker = Breaker::default();
        let t0 = Instant::now();
        let trips = fail(&breaker, THRESHOLD, t0);
        assert_eq!(trips.last(), Some(&Tripped::For(FIRST_BACK_OFF)));
        assert!(trips[..trips.len() - 1].iter().all(|t| *t == Tripped::No));
        assert_eq!(breaker.admit(t0), Admit::No);
        let later = t0 + FIRST_BACK_OFF;
        assert_eq!(breaker.admit(later), Admit::Probe);
        assert_eq!(breaker.admit(later), Admit::No, "one probe at a time");
        breaker.success();
        assert_eq!(breaker.admit(later), Admit::Yes);
        assert!(!breaker.is_open());
    }

    #[test]
    fn a_failed_probe_doubles_the_back_off_up_to_the_maximum() {
        let breaker = Breaker::default();
        let mut now = Instant::now();
        fail(&breaker, THRESHOLD, now);
        let mut expected = FIRST_BACK_OFF;
        for _ in 0..8 {
            now += expected;
            assert_eq!(breaker.admit(now), Admit::Probe);
            expected = (expected * 2).min(MAX_BACK_OFF);
            assert_eq!(breaker.failure(now), Tripped::For(expected));
        }
        assert_eq!(expected, MAX_BACK_OFF);
    }

    #[test]
    fn a_success_between_failures_keeps_it_closed() {
        let breaker = Breaker::default();
        let now = Instant::now();
        for _ in 0..10 {
            fail(&breaker, THRESHOLD - 1, now);
            breaker.success();
        }
        assert_eq!(breaker.admit(now), Admit::Yes);
    }

    #[test]
    fn late_failures_of_operations_already_running_do_not_extend_the_back_off() {
        let breaker = Breaker::default();
        let now = Instant::now();
        fail(&breaker, THRESHOLD, now);
        assert!(fail(&breaker, 3, now).iter().all(|t| *t == Tripped::No));
        assert_eq!(breaker.admit(now + FIRST_BACK_OFF), Admit::Probe);
    }
}
