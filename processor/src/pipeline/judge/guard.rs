//! What keeps a judge endpoint's cost and failures in bounds: the spend budget per clock hour
//! and per UTC day, and the circuit breaker.

use std::time::{Duration, Instant};

/// Spend in the current hour and day, against their budgets.
#[derive(Debug)]
pub struct Spend {
    per_hour: Option<f64>,
    per_day: Option<f64>,
    hour: u64,
    day: u64,
    spent_hour: f64,
    spent_day: f64,
}

impl Spend {
    /// A ledger with these budgets (USD; `None`: no limit).
    pub fn new(per_hour: Option<f64>, per_day: Option<f64>) -> Spend {
        Spend {
            per_hour,
            per_day,
            hour: 0,
            day: 0,
            spent_hour: 0.0,
            spent_day: 0.0,
        }
    }

    /// Starts new windows when the clock (seconds since the Unix epoch) entered them.
    fn roll(&mut self, now_seconds: u64) {
        let (hour, day) = (now_seconds / 3600, now_seconds / 86_400);
        if hour != self.hour {
            self.hour = hour;
            self.spent_hour = 0.0;
        }
        if day != self.day {
            self.day = day;
            self.spent_day = 0.0;
        }
    }

    /// Whether a call may still be made now.
    pub fn allows(&mut self, now_seconds: u64) -> bool {
        self.roll(now_seconds);
        self.per_hour.is_none_or(|b| self.spent_hour < b)
            && self.per_day.is_none_or(|b| self.spent_day < b)
    }

    /// Records a call's cost.
    pub fn add(&mut self, now_seconds: u64, usd: f64) {
        self.roll(now_seconds);
        self.spent_hour += usd;
        self.spent_day += usd;
    }
}

/// The circuit breaker: after `failures` failed calls in a row it opens, and calls are refused
/// for `cooldown`; then one call is let through, and its result closes or reopens it.
#[derive(Debug)]
pub struct Breaker {
    failures: u32,
    cooldown: Duration,
    in_a_row: u32,
    open_until: Option<Instant>,
    trial: bool,
}

/// What the breaker says about a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Call.
    Call,
    /// Do not call: the circuit is open.
    Refused,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(failures: u32, cooldown: Duration) -> Breaker {
        Breaker {
            failures,
            cooldown,
            in_a_row: 0,
            open_until: None,
            trial: false,
        }
    }

    /// Whether a call may go now.
    pub fn permit(&mut self, now: Instant) -> Permit {
        match self.open_until {
            None => Permit::Call,
            Some(until) if now >= until && !self.trial => {
                self.trial = true;
                Permit::Call
            }
            Some(_) => Permit::Refused,
        }
    }

    /// Whether the circuit is open.
    pub fn is_open(&self) -> bool {
        self.open_until.is_some()
    }

    /// Records a call's result; returns whether this opened the circuit.
    pub fn record(&mut self, ok: bool, now: Instant) -> bool {
        if ok {
            self.in_a_row = 0;
            self.open_until = None;
            self.trial = false;
            return false;
        }
        self.in_a_row += 1;
        let reopen = self.trial;
        self.trial = false;
        if reopen || (self.open_until.is_none() && self.in_a_row >= self.failures) {
            self.open_until = Some(now + self.cooldown);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_stop_calls_until_the_next_window() {
        let mut s = Spend::new(Some(1.0), Some(1.5));
        let hour = 3600 * 1000;
        assert!(s.allows(hour));
        s.add(hour + 10, 0.6);
        assert!(s.allows(hour + 20));
        s.add(hour + 30, 0.6);
        assert!(!s.allows(hour + 40), "the hour's budget is spent");
        assert!(s.allows(hour + 3600), "a new hour");
        s.add(hour + 3601, 0.4);
        assert!(!s.allows(hour + 3602), "the day's budget is spent");
        assert!(s.allows(86_400 * 1000), "a new day");
    }

    #[test]
    fn the_breaker_opens_after_failures_in_a_row_and_tries_once_after_the_cooldown() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(30));
        for _ in 0..2 {
            assert_eq!(b.permit(t0), Permit::Call);
            assert!(!b.record(false, t0));
        }
        // A success in between resets the count.
        assert!(!b.record(true, t0));
        assert!(!b.is_open());
        for _ in 0..2 {
            b.record(false, t0);
        }
        assert!(b.record(false, t0), "the third failure in a row opens it");
        assert_eq!(b.permit(t0 + Duration::from_secs(10)), Permit::Refused);
        let later = t0 + Duration::from_secs(31);
        assert_eq!(
            b.permit(later),
            Permit::Call,
            "one trial after the cooldown"
        );
        assert_eq!(b.permit(later), Permit::Refused, "only one");
        assert!(b.record(false, later), "a failed trial reopens it");
        let again = later + Duration::from_secs(31);
        assert_eq!(b.permit(again), Permit::Call);
        b.record(true, again);
        assert!(!b.is_open());
        assert_eq!(b.permit(again), Permit::Call);
    }
}
