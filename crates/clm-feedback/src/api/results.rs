//! GetSurveyResults: a survey's complete responses over a time range, as scores (NPS, CSAT,
//! CES), distribution, per-period trend and per-stage or per-segment groups. Computed from the
//! survey's responses (an indexed range of one survey); cross-service KPIs over time live in
//! the metrics service.

use std::collections::{BTreeMap, HashSet};

use chrono::{Datelike, TimeZone, Utc};
use clm_platform::convert::{TimeBounds, parse_time, timestamp, uuid};
use clm_platform::{Error, TenantId, Violations};
use clm_proto::feedback::v1 as pb;
use uuid::Uuid;

use super::{FeedbackApi, MAX_GROUP_SEGMENTS};
use crate::domain::scores;
use crate::domain::survey::Kind;
use crate::store::{self, ResultRow, now_micros};

/// The kind's headline score of some scores: NPS, CSAT %, CES mean, or the mean rating.
fn headline(kind: Kind, scores: &[i32]) -> f64 {
    match kind {
        Kind::Nps => scores::nps(scores.iter().copied()).score,
        Kind::Csat => scores::csat(scores.iter().copied()).0,
        Kind::Ces | Kind::Custom => scores::ces(scores.iter().copied()).0,
    }
}

/// Start (µs) of the UTC period containing `at`.
pub fn period_start(at: i64, granularity: pb::Granularity) -> i64 {
    let Some(t) = chrono::DateTime::from_timestamp_micros(at) else { return at };
    let d = t.date_naive();
    let start = match granularity {
        pb::Granularity::Week => d - chrono::Days::new(u64::from(d.weekday().num_days_from_monday())),
        pb::Granularity::Month => d.with_day(1).unwrap_or(d),
        pb::Granularity::Day | pb::Granularity::Unspecified => d,
    };
    Utc.from_utc_datetime(&start.and_hms_opt(0, 0, 0).unwrap_or_default()).timestamp_micros()
}

/// The results of `rows` (complete responses) of a survey of `kind` with primary `scale`.
pub fn compute(
    kind: Kind,
    scale: Option<(i32, i32)>,
    rows: &[ResultRow],
    invitations: u64,
    granularity: pb::Granularity,
) -> pb::SurveyResults {
    let scored: Vec<i32> = rows.iter().filter_map(|r| r.score).collect();
    let invited_responses = rows.iter().filter(|r| r.invitation_id.is_some()).count() as u64;
    let mut out = pb::SurveyResults {
        response_count: rows.len() as i64,
        invitation_count: i64::try_from(invitations).unwrap_or(i64::MAX),
        response_rate: if invitations == 0 { 0.0 } else { invited_responses as f64 / invitations as f64 },
        ..Default::default()
    };
    match kind {
        Kind::Nps => {
            let n = scores::nps(scored.iter().copied());
            out.nps = Some(pb::NpsResult {
                score: n.score,
                promoters: n.promoters as i64,
                passives: n.passives as i64,
                detractors: n.detractors as i64,
            });
        }
        Kind::Csat => {
            let (score, satisfied, count) = scores::csat(scored.iter().copied());
            out.csat = Some(pb::CsatResult { score, satisfied: satisfied as i64, count: count as i64 });
        }
        Kind::Ces => {
            let (average, count) = scores::ces(scored.iter().copied());
            out.ces = Some(pb::CesResult { average, count: count as i64 });
        }
        Kind::Custom => {}
    }
    if let Some((min, max)) = scale {
        out.distribution = (min..=max)
            .map(|value| pb::ScoreBucket { value, count: scored.iter().filter(|s| **s == value).count() as i64 })
            .collect();
    }
    let mut periods: BTreeMap<i64, (i64, Vec<i32>)> = BTreeMap::new();
    for r in rows {
        let Some(at) = r.complete_time else { continue };
        let e = periods.entry(period_start(at, granularity)).or_default();
        e.0 += 1;
        e.1.extend(r.score);
    }
    out.trend = periods
        .into_iter()
        .map(|(start, (count, s))| pb::TrendPoint {
            period_start_time: Some(timestamp(start)),
            count,
            score: headline(kind, &s),
        })
        .collect();
    out
}

/// Per-group results: `key` → the rows in it.
fn group(kind: Kind, groups: Vec<(String, Vec<&ResultRow>)>) -> Vec<pb::GroupResult> {
    groups
        .into_iter()
        .map(|(key, rows)| {
            let s: Vec<i32> = rows.iter().filter_map(|r| r.score).collect();
            pb::GroupResult { key, count: rows.len() as i64, score: headline(kind, &s) }
        })
        .collect()
}

pub async fn get(
    api: &FeedbackApi,
    tenant: &TenantId,
    req: pb::GetSurveyResultsRequest,
) -> Result<pb::GetSurveyResultsResponse, Error> {
    let mut v = Violations::new();
    let survey_id = v.check(uuid("survey_id", &req.survey_id));
    let start = match &req.start_time {
        None => 0,
        Some(t) => v.check(parse_time("start_time", t, TimeBounds::Any)).unwrap_or(0),
    };
    let end = match &req.end_time {
        None => now_micros() + 1,
        Some(t) => v.check(parse_time("end_time", t, TimeBounds::Any)).unwrap_or(i64::MAX),
    };
    if req.end_time.is_some() && end <= start {
        v.add("end_time", "must be after start_time");
    }
    let granularity = pb::Granularity::try_from(req.granularity).unwrap_or_else(|_| {
        v.add("granularity", "unknown value");
        pb::Granularity::Day
    });
    let group_by = pb::GroupBy::try_from(req.group_by).unwrap_or_else(|_| {
        v.add("group_by", "unknown value");
        pb::GroupBy::Unspecified
    });
    let mut segments = Vec::new();
    if group_by == pb::GroupBy::Segment {
        if req.segment_ids.is_empty() || req.segment_ids.len() > MAX_GROUP_SEGMENTS {
            v.add("segment_ids", format!("1 to {MAX_GROUP_SEGMENTS} segments to group by"));
        }
        for (i, s) in req.segment_ids.iter().enumerate() {
            if let Some(id) = v.check(uuid(&format!("segment_ids[{i}]"), s)) {
                segments.push(id);
            }
        }
    } else if !req.segment_ids.is_empty() {
        v.add("segment_ids", "only with group_by = GROUP_BY_SEGMENT");
    }
    v.finish()?;
    let survey_id = survey_id.expect("checked");
    let survey = store::get_survey(&api.db, tenant, survey_id).await?;
    let (qs, _) = super::load_questions(&survey)?;
    let kind = qs.kind();
    let scale = qs.primary().and_then(|p| match p.kind {
        crate::domain::survey::QuestionKind::Rating { min, max } => Some((min, max)),
        _ => None,
    });
    let rows = store::result_rows(&api.db, tenant, survey_id, start, end).await?;
    let invitations = store::count_invitations(&api.db, tenant, survey_id, start, end).await?;
    let mut results = compute(kind, scale, &rows, invitations, granularity);
    results.groups = match group_by {
        pb::GroupBy::Stage => {
            let mut by: BTreeMap<String, Vec<&ResultRow>> = BTreeMap::new();
            for r in &rows {
                let key = if r.stage_key.is_empty() { "unknown".to_owned() } else { r.stage_key.clone() };
                by.entry(key).or_default().push(r);
            }
            group(kind, by.into_iter().collect())
        }
        pb::GroupBy::Segment => {
            let mut groups = Vec::new();
            for s in segments {
                let members: HashSet<Uuid> =
                    api.contacts.segment_members(tenant, &s.to_string(), "segment_ids").await?.into_iter().collect();
                let inside: Vec<&ResultRow> = rows
                    .iter()
                    .filter(|r| Uuid::parse_str(&r.contact_id).is_ok_and(|c| members.contains(&c)))
                    .collect();
                groups.push((s.to_string(), inside));
            }
            group(kind, groups)
        }
        pb::GroupBy::Unspecified => Vec::new(),
    };
    Ok(pb::GetSurveyResultsResponse { results: Some(results) })
}

#[cfg(test)]
#[allow(clippy::float_cmp)]
mod tests {
    use clm_platform::convert::micros;

    use super::*;

    const DAY: i64 = 86_400_000_000;

    fn row(score: Option<i32>, at: i64, invited: bool) -> ResultRow {
        ResultRow {
            contact_id: Uuid::now_v7().to_string(),
            invitation_id: invited.then(|| "i".to_owned()),
            score,
            stage_key: String::new(),
            complete_time: Some(at),
        }
    }

    #[test]
    fn nps_results_hand_checked() {
        // 2026-03-02 is a Monday.
        let mon = Utc.with_ymd_and_hms(2026, 3, 2, 10, 0, 0).unwrap().timestamp_micros();
        let rows = vec![
            row(Some(10), mon, true),
            row(Some(9), mon, true),
            row(Some(8), mon + DAY, true),
            row(Some(3), mon + 7 * DAY, false),
        ];
        let r = compute(Kind::Nps, Some((0, 10)), &rows, 6, pb::Granularity::Week);
        let nps = r.nps.unwrap();
        // 2 promoters, 1 passive, 1 detractor of 4: 50% − 25% = 25.
        assert_eq!((nps.promoters, nps.passives, nps.detractors), (2, 1, 1));
        assert_eq!(nps.score, 25.0);
        assert_eq!(r.response_count, 4);
        // 3 of 6 invitations answered (the in-app response does not count).
        assert_eq!(r.response_rate, 0.5);
        assert_eq!(r.distribution.len(), 11);
        assert_eq!(r.distribution[10].count, 1);
        assert_eq!(r.distribution[3].count, 1);
        assert_eq!(r.trend.len(), 2);
        assert_eq!(r.trend[0].count, 3);
        assert!((r.trend[0].score - 66.666_666).abs() < 1e-3, "2 promoters, 1 passive");
        assert_eq!(r.trend[1].score, -100.0);
        assert_eq!(
            micros(r.trend[1].period_start_time.as_ref().unwrap()),
            Some(period_start(mon, pb::Granularity::Week) + 7 * DAY)
        );
    }

    #[test]
    fn empty_and_other_kinds() {
        let r = compute(Kind::Nps, Some((0, 10)), &[], 0, pb::Granularity::Day);
        assert_eq!(r.nps.unwrap().score, 0.0);
        assert_eq!(r.response_rate, 0.0);
        assert!(r.trend.is_empty());
        let at = Utc.with_ymd_and_hms(2026, 5, 17, 23, 59, 0).unwrap().timestamp_micros();
        let c = compute(
            Kind::Csat,
            Some((1, 5)),
            &[row(Some(5), at, false), row(Some(2), at, false)],
            0,
            pb::Granularity::Month,
        );
        assert_eq!(c.csat.unwrap().score, 50.0);
        assert_eq!(
            c.trend[0].period_start_time.as_ref().and_then(micros),
            Some(Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap().timestamp_micros())
        );
        let e = compute(
            Kind::Ces,
            Some((1, 7)),
            &[row(Some(2), at, false), row(Some(7), at, false)],
            0,
            pb::Granularity::Day,
        );
        assert_eq!(e.ces.unwrap().average, 4.5);
    }
}
