//! The maths of metrics on plain numbers, no I/O: calendar periods (UTC), time histograms and
//! their quantiles, rates, the lifetime-value model and goal health. Definitions are in
//! `docs/metrics.md` and the proto comments.

use chrono::{Datelike, Months, NaiveDate, TimeZone, Utc};

pub mod campaign;
pub mod channel;
pub mod contribution;
pub mod facts;
pub mod kpi;

pub const DAY: i64 = 86_400_000_000;

/// Calendar granularity of periods (UTC; weeks start on Monday).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gran {
    Day,
    Week,
    Month,
    Quarter,
}

impl Gran {
    pub fn key(self) -> &'static str {
        match self {
            Gran::Day => "day",
            Gran::Week => "week",
            Gran::Month => "month",
            Gran::Quarter => "quarter",
        }
    }
}

fn date(at: i64) -> NaiveDate {
    chrono::DateTime::from_timestamp_micros(at).unwrap_or_default().date_naive()
}

fn micros_of(d: NaiveDate) -> i64 {
    Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default()).timestamp_micros()
}

/// Start (µs) of the UTC day containing `at`.
pub fn day(at: i64) -> i64 {
    at.div_euclid(DAY) * DAY
}

/// The end (exclusive) of the days that began before `end`: a day start `d` is `< end` exactly
/// when it is `< days_before(end)` (`end` itself for a day start, the next midnight otherwise).
pub fn days_before(end: i64) -> i64 {
    day(end.saturating_sub(1)).saturating_add(DAY)
}

/// Start (µs) of the period containing `at`.
pub fn period_start(at: i64, g: Gran) -> i64 {
    let d = date(at);
    let start = match g {
        Gran::Day => d,
        Gran::Week => d - chrono::Days::new(u64::from(d.weekday().num_days_from_monday())),
        Gran::Month => d.with_day(1).unwrap_or(d),
        Gran::Quarter => NaiveDate::from_ymd_opt(d.year(), (d.month0() / 3) * 3 + 1, 1).unwrap_or(d),
    };
    micros_of(start)
}

/// Start of the period after the one starting at `start`.
pub fn next_period(start: i64, g: Gran) -> i64 {
    let d = date(start);
    match g {
        Gran::Day => start + DAY,
        Gran::Week => start + 7 * DAY,
        Gran::Month => micros_of(d.checked_add_months(Months::new(1)).unwrap_or(d)),
        Gran::Quarter => micros_of(d.checked_add_months(Months::new(3)).unwrap_or(d)),
    }
}

/// How many periods after the cohort's period `at` falls (negative: before it).
pub fn period_index(cohort_start: i64, at: i64, g: Gran) -> i64 {
    let (c, p) = (date(cohort_start), date(period_start(at, g)));
    let months =
        |a: NaiveDate, b: NaiveDate| i64::from(b.year() - a.year()) * 12 + i64::from(b.month()) - i64::from(a.month());
    match g {
        Gran::Day => (micros_of(p) - micros_of(c)) / DAY,
        Gran::Week => (micros_of(p) - micros_of(c)) / (7 * DAY),
        Gran::Month => months(c, p),
        Gran::Quarter => months(c, p) / 3,
    }
}

/// The periods covering [start, end).
pub fn periods(start: i64, end: i64, g: Gran) -> Vec<i64> {
    let mut out = Vec::new();
    let mut p = period_start(start, g);
    while p < end && out.len() < 10_000 {
        out.push(p);
        p = next_period(p, g);
    }
    out
}

/// Histogram bucket of a duration: quarter-octaves of seconds (≈ ±9% of the value), so time
/// distributions aggregate into a few dozen counters and quantiles come from them.
pub fn bucket(duration_micros: i64) -> i64 {
    let secs = (duration_micros.max(0) as f64) / 1e6;
    ((secs + 1.0).log2() * 4.0).floor() as i64
}

/// A representative duration (µs) of a bucket: the geometric middle of its bounds.
pub fn bucket_value(b: i64) -> i64 {
    let lo = 2f64.powf(b as f64 / 4.0) - 1.0;
    let hi = 2f64.powf((b + 1) as f64 / 4.0) - 1.0;
    ((lo.max(0.0) * hi).sqrt().max(lo) * 1e6) as i64
}

/// The `q` quantile (0..1) of a histogram of (bucket, count), as a duration in µs.
pub fn quantile(hist: &[(i64, i64)], q: f64) -> Option<i64> {
    let mut h: Vec<(i64, i64)> = hist.iter().copied().filter(|(_, n)| *n > 0).collect();
    h.sort_unstable();
    let total: i64 = h.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as i64).clamp(1, total);
    let mut seen = 0;
    for (b, n) in h {
        seen += n;
        if seen >= rank {
            return Some(bucket_value(b));
        }
    }
    None
}

/// `a ÷ b`, 0 when `b` is 0.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}

/// Expected customer lifespan in years from an annual churn rate: 1 ÷ churn, capped at
/// `MAX_LIFESPAN_YEARS` (no churn observed yet means "long", not infinite).
pub const MAX_LIFESPAN_YEARS: f64 = 10.0;

pub fn expected_lifespan_years(annual_churn_rate: f64) -> f64 {
    if annual_churn_rate <= 1.0 / MAX_LIFESPAN_YEARS { MAX_LIFESPAN_YEARS } else { 1.0 / annual_churn_rate }
}

/// Predicted CLV = average order value × purchases per year × expected lifespan (years).
pub fn predicted_clv(average_order_value: f64, purchases_per_year: f64, lifespan_years: f64) -> f64 {
    average_order_value * purchases_per_year * lifespan_years
}

/// Goal health: on track when the target is met; at risk when missed by at most `tolerance`
/// (a fraction of the target); off track beyond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    OnTrack,
    AtRisk,
    OffTrack,
}

pub fn health(actual: f64, target: f64, at_least: bool, tolerance: f64) -> Health {
    let slack = target.abs() * tolerance.max(0.0);
    let (met, close) = if at_least {
        (actual >= target, actual >= target - slack)
    } else {
        (actual <= target, actual <= target + slack)
    };
    if met {
        Health::OnTrack
    } else if close {
        Health::AtRisk
    } else {
        Health::OffTrack
    }
}

/// Progress toward a goal (1.0 = met); for "at most" goals, target ÷ actual.
pub fn progress(actual: f64, target: f64, at_least: bool) -> f64 {
    if at_least {
        ratio(actual, target)
    } else if actual <= 0.0 {
        1.0
    } else {
        ratio(target, actual).min(1.0)
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp)]
mod tests {
    use super::*;

    fn at(y: i32, m: u32, d: u32) -> i64 {
        micros_of(NaiveDate::from_ymd_opt(y, m, d).unwrap())
    }

    #[test]
    fn periods_are_calendar_periods() {
        let wed = at(2026, 3, 4) + 5 * 3_600_000_000;
        assert_eq!(period_start(wed, Gran::Day), at(2026, 3, 4));
        assert_eq!(period_start(wed, Gran::Week), at(2026, 3, 2), "Monday");
        assert_eq!(period_start(wed, Gran::Month), at(2026, 3, 1));
        assert_eq!(period_start(wed, Gran::Quarter), at(2026, 1, 1));
        assert_eq!(next_period(at(2026, 1, 31), Gran::Day), at(2026, 2, 1));
        assert_eq!(next_period(at(2026, 1, 1), Gran::Month), at(2026, 2, 1));
        assert_eq!(next_period(at(2026, 10, 1), Gran::Quarter), at(2027, 1, 1));
        assert_eq!(period_index(at(2026, 1, 1), at(2026, 3, 15), Gran::Month), 2);
        assert_eq!(period_index(at(2025, 11, 1), at(2026, 2, 1), Gran::Month), 3);
        assert_eq!(period_index(at(2026, 3, 2), at(2026, 3, 17), Gran::Week), 2);
        assert_eq!(period_index(at(2026, 3, 1), at(2026, 2, 1), Gran::Month), -1);
        assert_eq!(
            periods(at(2026, 1, 15), at(2026, 4, 1), Gran::Month),
            vec![at(2026, 1, 1), at(2026, 2, 1), at(2026, 3, 1)]
        );
        assert_eq!(day(-1), -DAY, "before the epoch rounds down");
    }

    #[test]
    fn histogram_quantiles_are_close() {
        // 100 durations of 1..=100 hours: median 50 h, p90 90 h, within the bucket error.
        let mut h = std::collections::BTreeMap::new();
        for hours in 1..=100_i64 {
            *h.entry(bucket(hours * 3_600_000_000)).or_insert(0) += 1;
        }
        let h: Vec<(i64, i64)> = h.into_iter().collect();
        let med = quantile(&h, 0.5).unwrap() as f64 / 3.6e9;
        let p90 = quantile(&h, 0.9).unwrap() as f64 / 3.6e9;
        assert!((med - 50.0).abs() / 50.0 < 0.1, "median {med}");
        assert!((p90 - 90.0).abs() / 90.0 < 0.1, "p90 {p90}");
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(bucket(0), 0);
    }

    #[test]
    fn lifetime_value_model() {
        assert_eq!(expected_lifespan_years(0.25), 4.0);
        assert_eq!(expected_lifespan_years(0.0), MAX_LIFESPAN_YEARS);
        // AOV 50 × 4 purchases a year × 4 years = 800.
        assert_eq!(predicted_clv(50.0, 4.0, expected_lifespan_years(0.25)), 800.0);
    }

    #[test]
    fn goal_health() {
        assert_eq!(health(100.0, 100.0, true, 0.1), Health::OnTrack);
        assert_eq!(health(95.0, 100.0, true, 0.1), Health::AtRisk);
        assert_eq!(health(80.0, 100.0, true, 0.1), Health::OffTrack);
        assert_eq!(health(40.0, 50.0, false, 0.1), Health::OnTrack, "CAC at most 50");
        assert_eq!(health(54.0, 50.0, false, 0.1), Health::AtRisk);
        assert_eq!(health(60.0, 50.0, false, 0.1), Health::OffTrack);
        assert_eq!(progress(50.0, 100.0, true), 0.5);
        assert_eq!(progress(100.0, 50.0, false), 0.5);
    }
}
