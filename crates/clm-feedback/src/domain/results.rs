//! A survey's results over some complete responses: the kind's headline score (NPS, CSAT %,
//! CES mean), the response rate, the distribution of the primary score, a trend by UTC day,
//! week or month, and the headline score of groups of responses.

use std::collections::BTreeMap;

use chrono::{Datelike, TimeZone, Utc};

use super::scores::{self, Nps};
use super::survey::Kind;

/// One complete response as results count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Answered through an invitation (counts toward the response rate).
    pub invited: bool,
    pub score: Option<i32>,
    /// When it was completed (µs).
    pub complete_time: Option<i64>,
}

/// The length of a trend's periods (UTC; weeks start on Monday).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Granularity {
    #[default]
    Day,
    Week,
    Month,
}

/// The kind's own score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Headline {
    Nps(Nps),
    Csat {
        score: f64,
        satisfied: u64,
        count: u64,
    },
    Ces {
        average: f64,
        count: u64,
    },
    /// A custom survey has no standard score.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrendPoint {
    pub period_start: i64,
    pub count: u64,
    pub score: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Results {
    pub response_count: u64,
    pub invitation_count: u64,
    /// Responses through an invitation per invitation, 0..1; 0 without invitations.
    pub response_rate: f64,
    pub headline: Headline,
    /// (score, responses with it) for every value of the primary scale, in order.
    pub distribution: Vec<(i32, u64)>,
    pub trend: Vec<TrendPoint>,
}

/// The kind's headline score of some scores as one number: NPS, CSAT %, CES mean, or the mean
/// rating of a custom survey.
pub fn headline(kind: Kind, scores: &[i32]) -> f64 {
    match kind {
        Kind::Nps => scores::nps(scores.iter().copied()).score,
        Kind::Csat => scores::csat(scores.iter().copied()).0,
        Kind::Ces | Kind::Custom => scores::ces(scores.iter().copied()).0,
    }
}

/// Start (µs) of the UTC period containing `at`.
pub fn period_start(at: i64, granularity: Granularity) -> i64 {
    let Some(t) = chrono::DateTime::from_timestamp_micros(at) else { return at };
    let d = t.date_naive();
    let start = match granularity {
        Granularity::Week => d - chrono::Days::new(u64::from(d.weekday().num_days_from_monday())),
        Granularity::Month => d.with_day(1).unwrap_or(d),
        Granularity::Day => d,
    };
    Utc.from_utc_datetime(&start.and_hms_opt(0, 0, 0).unwrap_or_default()).timestamp_micros()
}

/// The results of `samples` (complete responses) of a survey of `kind` with primary `scale`,
/// of which `invitations` were asked for.
pub fn compute(
    kind: Kind,
    scale: Option<(i32, i32)>,
    samples: &[Sample],
    invitations: u64,
    granularity: Granularity,
) -> Results {
    let scored: Vec<i32> = samples.iter().filter_map(|r| r.score).collect();
    let invited_responses = samples.iter().filter(|r| r.invited).count() as u64;
    let headline_of = match kind {
        Kind::Nps => Headline::Nps(scores::nps(scored.iter().copied())),
        Kind::Csat => {
            let (score, satisfied, count) = scores::csat(scored.iter().copied());
            Headline::Csat { score, satisfied, count }
        }
        Kind::Ces => {
            let (average, count) = scores::ces(scored.iter().copied());
            Headline::Ces { average, count }
        }
        Kind::Custom => Headline::None,
    };
    let distribution = scale
        .map(|(min, max)| {
            (min..=max).map(|value| (value, scored.iter().filter(|s| **s == value).count() as u64)).collect()
        })
        .unwrap_or_default();
    let mut periods: BTreeMap<i64, (u64, Vec<i32>)> = BTreeMap::new();
    for r in samples {
        let Some(at) = r.complete_time else { continue };
        let e = periods.entry(period_start(at, granularity)).or_default();
        e.0 += 1;
        e.1.extend(r.score);
    }
    Results {
        response_count: samples.len() as u64,
        invitation_count: invitations,
        response_rate: if invitations == 0 { 0.0 } else { invited_responses as f64 / invitations as f64 },
        headline: headline_of,
        distribution,
        trend: periods
            .into_iter()
            .map(|(start, (count, s))| TrendPoint { period_start: start, count, score: headline(kind, &s) })
            .collect(),
    }
}

/// (count, headline score) of a group of responses' scores.
pub fn group(kind: Kind, scores: impl IntoIterator<Item = Option<i32>>) -> (u64, f64) {
    let mut count = 0;
    let mut s = Vec::new();
    for score in scores {
        count += 1;
        s.extend(score);
    }
    (count, headline(kind, &s))
}

#[cfg(test)]
#[allow(clippy::float_cmp)] // the expected values are exact in binary floating point
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000_000;

    fn sample(score: Option<i32>, at: i64, invited: bool) -> Sample {
        Sample { invited, score, complete_time: Some(at) }
    }

    #[test]
    fn nps_results_hand_checked() {
        // 2026-03-02 is a Monday.
        let mon = Utc.with_ymd_and_hms(2026, 3, 2, 10, 0, 0).unwrap().timestamp_micros();
        let rows = vec![
            sample(Some(10), mon, true),
            sample(Some(9), mon, true),
            sample(Some(8), mon + DAY, true),
            sample(Some(3), mon + 7 * DAY, false),
        ];
        let r = compute(Kind::Nps, Some((0, 10)), &rows, 6, Granularity::Week);
        let Headline::Nps(nps) = r.headline else { panic!("{:?}", r.headline) };
        // 2 promoters, 1 passive, 1 detractor of 4: 50% − 25% = 25.
        assert_eq!((nps.promoters, nps.passives, nps.detractors), (2, 1, 1));
        assert_eq!(nps.score, 25.0);
        assert_eq!(r.response_count, 4);
        // 3 of 6 invitations answered (the in-app response does not count).
        assert_eq!(r.response_rate, 0.5);
        assert_eq!(r.distribution.len(), 11);
        assert_eq!(r.distribution[10], (10, 1));
        assert_eq!(r.distribution[3], (3, 1));
        assert_eq!(r.trend.len(), 2);
        assert_eq!(r.trend[0].count, 3);
        assert!((r.trend[0].score - 66.666_666).abs() < 1e-3, "2 promoters, 1 passive");
        assert_eq!(r.trend[1].score, -100.0);
        assert_eq!(r.trend[1].period_start, period_start(mon, Granularity::Week) + 7 * DAY);
        assert_eq!(period_start(mon, Granularity::Week), mon - 10 * 3_600_000_000, "Monday, midnight");
    }

    #[test]
    fn empty_and_other_kinds() {
        let r = compute(Kind::Nps, Some((0, 10)), &[], 0, Granularity::Day);
        assert_eq!(r.headline, Headline::Nps(Nps::default()));
        assert_eq!(r.response_rate, 0.0);
        assert!(r.trend.is_empty());
        let at = Utc.with_ymd_and_hms(2026, 5, 17, 23, 59, 0).unwrap().timestamp_micros();
        let c = compute(
            Kind::Csat,
            Some((1, 5)),
            &[sample(Some(5), at, false), sample(Some(2), at, false)],
            0,
            Granularity::Month,
        );
        assert_eq!(c.headline, Headline::Csat { score: 50.0, satisfied: 1, count: 2 });
        assert_eq!(c.trend[0].period_start, Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap().timestamp_micros());
        let e = compute(
            Kind::Ces,
            Some((1, 7)),
            &[sample(Some(2), at, false), sample(Some(7), at, false)],
            0,
            Granularity::Day,
        );
        assert_eq!(e.headline, Headline::Ces { average: 4.5, count: 2 });
        let custom = compute(Kind::Custom, None, &[sample(None, at, true)], 1, Granularity::Day);
        assert_eq!(custom.headline, Headline::None);
        assert!(custom.distribution.is_empty());
        assert_eq!(custom.response_rate, 1.0);
    }

    #[test]
    fn groups() {
        assert_eq!(group(Kind::Nps, [Some(10), None, Some(0)]), (3, 0.0));
        assert_eq!(group(Kind::Csat, []), (0, 0.0));
    }
}
