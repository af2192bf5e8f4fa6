//! Retry delays shared by every retrying delivery (event triggers, async callbacks, push, mail).

use std::time::Duration;

/// Exponential backoff with jitter: attempt `n` (1-based) waits between half and all of
/// `base * 2^(n-1)`, capped at `max`. The jitter spreads the retries of a fan-out (many
/// deliveries that failed together) instead of sending them back in one burst.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(max);
    let half = exp / 2;
    half + exp.mul_f64(rand::random::<f64>() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(60));
        for attempt in 1..30 {
            let d = backoff(base, max, attempt);
            let exp = base.saturating_mul(1 << (attempt - 1).min(20)).min(max);
            assert!(
                d >= exp / 2 && d <= exp,
                "attempt {attempt}: {d:?} outside [{:?}, {exp:?}]",
                exp / 2
            );
        }
        let samples: std::collections::HashSet<_> =
            (0..20).map(|_| backoff(base, max, 5).as_micros()).collect();
        assert!(samples.len() > 1, "no jitter");
    }
}
