//! Abuse limits: keyed GCRA limiters from `governor`, one per guarded (action, dimension).
//!
//! `governor` fits: its keyed limiter is lock-free per key (a `DashMap` of 64-bit cells), answers
//! "how long until allowed" directly (our `retry_after`), and a `count` per `window` quota is
//! `Quota::with_period(window / count).allow_burst(count)`. Stale keys are dropped every
//! [`RETAIN_EVERY`] checks so memory stays bounded by the recently active keys.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::config::RateLimit;

const RETAIN_EVERY: u64 = 4096;

pub(crate) struct Limiter {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    checks: AtomicU64,
}

impl Limiter {
    pub(crate) fn new(limit: RateLimit) -> Option<Self> {
        let count = NonZeroU32::new(limit.count)?;
        let period = limit.window / count.get();
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))?.allow_burst(count);
        Some(Limiter {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        })
    }

    /// Take one attempt for `key`, or say how long to wait.
    pub(crate) fn check(&self, key: String) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % RETAIN_EVERY == RETAIN_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&key).map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}
