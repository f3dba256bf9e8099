//! Delays between delivery attempts: exponential, capped, with "full jitter" (a uniformly
//! random delay between zero and the exponential one), so that many deliveries failing at
//! once against the same receiver do not come back at once.

use std::time::Duration;

/// The delay before attempt `attempt + 1` after attempt `attempt` (1-based) failed:
/// `min(max, base · 2^(attempt-1)) · jitter`, where `jitter` ∈ [0, 1) is the random draw
/// (values outside are clamped). `attempt` 0 counts as 1.
pub fn delay(attempt: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let ceiling = ceiling(attempt, base, max);
    let jitter = if jitter.is_nan() { 0.0 } else { jitter.clamp(0.0, 1.0) };
    ceiling.mul_f64(jitter).min(max)
}

/// [`delay`] with a fresh random draw.
pub fn jittered(attempt: u32, base: Duration, max: Duration) -> Duration {
    delay(attempt, base, max, rand::random::<f64>())
}

/// `min(max, base · 2^(attempt-1))`, without overflow.
fn ceiling(attempt: u32, base: Duration, max: Duration) -> Duration {
    let doublings = attempt.saturating_sub(1).min(63);
    base.checked_mul(1u32.checked_shl(doublings).unwrap_or(u32::MAX)).map_or(max, |d| d.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(10);
    const MAX: Duration = Duration::from_hours(1);

    #[test]
    fn the_ceiling_doubles_per_attempt_up_to_max() {
        let almost_one = 1.0 - f64::EPSILON;
        let secs = |a| delay(a, BASE, MAX, almost_one).as_secs_f64().round() as u64;
        assert_eq!([secs(0), secs(1), secs(2), secs(3), secs(4)], [10, 10, 20, 40, 80]);
        assert_eq!(secs(9), 2560);
        assert_eq!(secs(10), 3600);
        assert_eq!(secs(40), 3600);
        assert_eq!(secs(u32::MAX), 3600);
    }

    #[test]
    fn jitter_scales_the_delay_between_zero_and_the_ceiling() {
        assert_eq!(delay(3, BASE, MAX, 0.0), Duration::ZERO);
        assert_eq!(delay(3, BASE, MAX, 0.5), Duration::from_secs(20));
        assert_eq!(delay(3, BASE, MAX, 0.25), Duration::from_secs(10));
        // Out-of-range draws are clamped, never beyond the cap.
        assert_eq!(delay(3, BASE, MAX, -1.0), Duration::ZERO);
        assert_eq!(delay(3, BASE, MAX, 7.0), Duration::from_secs(40));
        assert_eq!(delay(30, BASE, MAX, 7.0), MAX);
        assert_eq!(delay(3, BASE, MAX, f64::NAN), Duration::ZERO);
    }

    #[test]
    fn jittered_stays_within_the_ceiling() {
        for attempt in 1..20 {
            let d = jittered(attempt, BASE, MAX);
            assert!(d <= ceiling(attempt, BASE, MAX), "attempt {attempt}: {d:?}");
        }
        let spread: std::collections::BTreeSet<Duration> = (0..50).map(|_| jittered(5, BASE, MAX)).collect();
        assert!(spread.len() > 10, "full jitter spreads the delays: {spread:?}");
    }
}
