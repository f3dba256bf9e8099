//! GetSurveyResults: a survey's complete responses over a time range, as scores (NPS, CSAT,
//! CES), distribution, per-period trend and per-stage or per-segment groups. Computed from the
//! survey's responses (an indexed range of one survey) by `domain::results`; cross-service KPIs
//! over time live in the metrics service.

use std::collections::{BTreeMap, HashSet};

use clm_platform::Violations;
use clm_platform::convert::{TimeBounds, parse_time, timestamp, uuid};
use clm_proto::feedback::v1 as pb;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::load_questions;
use super::{FeedbackApi, ctx};
use crate::domain::results::{self, Granularity, Headline, Results, Sample};
use crate::domain::survey::{Kind, QuestionKind};
use crate::store::{self, ResultRow, now_micros};

/// Most segments one results call groups by.
const MAX_GROUP_SEGMENTS: usize = 20;

fn granularity_from_pb(g: pb::Granularity) -> Granularity {
    match g {
        pb::Granularity::Week => Granularity::Week,
        pb::Granularity::Month => Granularity::Month,
        pb::Granularity::Day | pb::Granularity::Unspecified => Granularity::Day,
    }
}

fn sample(r: &ResultRow) -> Sample {
    Sample { invited: r.invitation_id.is_some(), score: r.score, complete_time: r.complete_time }
}

fn results_pb(r: Results) -> pb::SurveyResults {
    let mut out = pb::SurveyResults {
        response_count: i64::try_from(r.response_count).unwrap_or(i64::MAX),
        invitation_count: i64::try_from(r.invitation_count).unwrap_or(i64::MAX),
        response_rate: r.response_rate,
        distribution: r
            .distribution
            .into_iter()
            .map(|(value, count)| pb::ScoreBucket { value, count: count as i64 })
            .collect(),
        trend: r
            .trend
            .into_iter()
            .map(|t| pb::TrendPoint {
                period_start_time: Some(timestamp(t.period_start)),
                count: t.count as i64,
                score: t.score,
            })
            .collect(),
        ..Default::default()
    };
    match r.headline {
        Headline::Nps(n) => {
            out.nps = Some(pb::NpsResult {
                score: n.score,
                promoters: n.promoters as i64,
                passives: n.passives as i64,
                detractors: n.detractors as i64,
            });
        }
        Headline::Csat { score, satisfied, count } => {
            out.csat = Some(pb::CsatResult { score, satisfied: satisfied as i64, count: count as i64 });
        }
        Headline::Ces { average, count } => out.ces = Some(pb::CesResult { average, count: count as i64 }),
        Headline::None => {}
    }
    out
}

/// Per-group results: `key` → the rows in it.
fn group(kind: Kind, groups: Vec<(String, Vec<&ResultRow>)>) -> Vec<pb::GroupResult> {
    groups
        .into_iter()
        .map(|(key, rows)| {
            let (count, score) = results::group(kind, rows.iter().map(|r| r.score));
            pb::GroupResult { key, count: count as i64, score }
        })
        .collect()
}

pub async fn get(
    api: &FeedbackApi,
    req: Request<pb::GetSurveyResultsRequest>,
) -> Result<Response<pb::GetSurveyResultsResponse>, Status> {
    let ctx = ctx(&req)?;
    let tenant = &ctx.tenant;
    let req = req.into_inner();
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
    let granularity = pb::Granularity::try_from(req.granularity).map_or_else(
        |_| {
            v.add("granularity", "unknown value");
            Granularity::Day
        },
        granularity_from_pb,
    );
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
    let (qs, _) = load_questions(&survey)?;
    let kind = qs.kind();
    let scale = qs.primary().and_then(|p| match p.kind {
        QuestionKind::Rating { min, max } => Some((min, max)),
        _ => None,
    });
    let rows = store::result_rows(&api.db, tenant, survey_id, start, end).await?;
    let invitations = store::count_invitations(&api.db, tenant, survey_id, start, end).await?;
    let samples: Vec<Sample> = rows.iter().map(sample).collect();
    let mut results = results_pb(results::compute(kind, scale, &samples, invitations, granularity));
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
    Ok(Response::new(pb::GetSurveyResultsResponse { results: Some(results) }))
}
