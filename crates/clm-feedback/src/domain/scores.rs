//! The maths of NPS, CSAT and CES, and invitation throttling, on plain numbers.

/// Net Promoter Score: % promoters (9-10) − % detractors (0-6), −100..100; 0 when empty.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Nps {
    pub score: f64,
    pub promoters: u64,
    pub passives: u64,
    pub detractors: u64,
}

pub fn nps(scores: impl IntoIterator<Item = i32>) -> Nps {
    let mut n = Nps::default();
    for s in scores {
        match s {
            9..=10 => n.promoters += 1,
            7..=8 => n.passives += 1,
            _ => n.detractors += 1,
        }
    }
    let total = n.promoters + n.passives + n.detractors;
    if total > 0 {
        n.score = (n.promoters as f64 - n.detractors as f64) * 100.0 / total as f64;
    }
    n
}

/// CSAT: % of responses rating 4-5 (0..100); 0 when empty. Returns (score, satisfied, count).
pub fn csat(scores: impl IntoIterator<Item = i32>) -> (f64, u64, u64) {
    let (mut sat, mut count) = (0_u64, 0_u64);
    for s in scores {
        count += 1;
        if s >= 4 {
            sat += 1;
        }
    }
    let score = if count == 0 { 0.0 } else { sat as f64 * 100.0 / count as f64 };
    (score, sat, count)
}

/// CES: mean score (1 = very difficult … 7 = very easy; higher is better); 0 when empty.
/// Returns (average, count).
pub fn ces(scores: impl IntoIterator<Item = i32>) -> (f64, u64) {
    let (mut sum, mut count) = (0_i64, 0_u64);
    for s in scores {
        sum += i64::from(s);
        count += 1;
    }
    (if count == 0 { 0.0 } else { sum as f64 / count as f64 }, count)
}

/// Throttling: may a contact last asked at `last_invited` (µs) be asked at `now`, with a
/// window of `window` µs? Returns `Err(when)` with the first moment they may be asked.
pub fn may_invite(last_invited: Option<i64>, now: i64, window: i64) -> Result<(), i64> {
    match last_invited {
        Some(last) if now < last + window => Err(last + window),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp)] // the expected values are exact in binary floating point
mod tests {
    use super::*;

    #[test]
    fn nps_hand_checked() {
        // 5 promoters, 3 passives, 2 detractors out of 10: 50% − 20% = 30.
        let n = nps([10, 9, 9, 10, 9, 7, 8, 7, 3, 6]);
        assert_eq!((n.promoters, n.passives, n.detractors), (5, 3, 2));
        assert!((n.score - 30.0).abs() < 1e-9);
        assert_eq!(nps([]).score, 0.0, "empty");
        assert_eq!(nps([7, 8, 8]).score, 0.0, "all passive");
        assert_eq!(nps([0, 1]).score, -100.0);
        assert_eq!(nps([10]).score, 100.0);
    }

    #[test]
    fn csat_and_ces_hand_checked() {
        assert_eq!(csat([5, 4, 3, 1]), (50.0, 2, 4));
        assert_eq!(csat([]), (0.0, 0, 0));
        assert_eq!(ces([1, 2, 6]), (3.0, 3));
        assert_eq!(ces([]), (0.0, 0));
    }

    #[test]
    fn throttling() {
        let day = 86_400_000_000_i64;
        assert_eq!(may_invite(None, 10 * day, 30 * day), Ok(()));
        assert_eq!(may_invite(Some(day), 10 * day, 30 * day), Err(31 * day));
        assert_eq!(may_invite(Some(day), 31 * day, 30 * day), Ok(()));
    }
}
