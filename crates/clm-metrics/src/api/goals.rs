//! Goals (a KPI, a scope, a target per period) and the scorecard that grades them.

use clm_platform::convert::{TimeBounds, etag, etag_version, micros, parse_time, timestamp, uuid};
use clm_platform::pagination::page_size;
use clm_platform::{Error, Violations, idempotency};
use clm_proto::metrics::v1 as pb;
use prost::Message;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::kpi::{Snapshot, kpi_kind};
use super::{DEFAULT_LEAD_THRESHOLD, MetricsApi, ctx, gran, now_micros, slice};
use crate::domain::kpi::KpiKind;
use crate::domain::{self, Gran};
use crate::store::goals::{self as store, GoalRecord};

const MAX_NAME: usize = 200;

struct Row {
    goal: pb::Goal,
    version: i64,
}

fn to_pb(r: GoalRecord) -> Result<Row, Error> {
    let scope = pb::MetricsScope::decode(r.scope.as_slice())
        .map_err(|_| Error::internal(anyhow::anyhow!("stored goal scope is unreadable")))?;
    Ok(Row {
        goal: pb::Goal {
            id: r.id,
            display_name: r.display_name,
            kpi: r.kpi,
            scope: Some(scope),
            stage_key: r.stage_key,
            target: r.target,
            direction: r.direction,
            period: r.period,
            at_risk_tolerance: r.tolerance,
            create_time: Some(timestamp(r.create_time)),
            update_time: Some(timestamp(r.update_time)),
            etag: etag(r.version),
        },
        version: r.version,
    })
}

fn record(g: &pb::Goal, version: i64, create_time: i64, update_time: i64) -> GoalRecord {
    GoalRecord {
        id: g.id.clone(),
        display_name: g.display_name.clone(),
        kpi: g.kpi,
        scope: g.scope.clone().unwrap_or_default().encode_to_vec(),
        stage_key: g.stage_key.clone(),
        target: g.target,
        direction: g.direction,
        period: g.period,
        tolerance: g.at_risk_tolerance,
        version,
        create_time,
        update_time,
    }
}

async fn load(api: &MetricsApi, tenant: &clm_platform::TenantId, id: &str) -> Result<Row, Error> {
    let uuid = Uuid::parse_str(id).map_err(|_| Error::invalid("id", "must be a UUID"))?;
    let r =
        store::get(&api.db, tenant, &uuid.to_string()).await?.ok_or_else(|| Error::not_found("goal", id.to_owned()))?;
    to_pb(r)
}

/// Which way a KPI is better (docs/metrics.md; `KpiKind::lower_is_better`).
pub fn natural_direction(k: KpiKind) -> pb::GoalDirection {
    if k.lower_is_better() { pb::GoalDirection::AtMost } else { pb::GoalDirection::AtLeast }
}

/// Check a goal's fields (all of them: the caller merged the mask first).
fn check(tenant: &clm_platform::TenantId, g: &mut pb::Goal, v: &mut Violations) {
    let name = g.display_name.trim().to_owned();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        v.add("goal.display_name", format!("1 to {MAX_NAME} characters"));
    }
    g.display_name = name;
    let kpi = kpi_kind(g.kpi);
    if kpi.is_none() {
        v.add("goal.kpi", "which KPI the goal is about");
    }
    if !g.target.is_finite() {
        v.add("goal.target", "must be a number");
    }
    if pb::GoalDirection::try_from(g.direction).unwrap_or_default() == pb::GoalDirection::Unspecified {
        match kpi.map(natural_direction) {
            Some(d) => g.direction = d as i32,
            None => v.add("goal.direction", "GOAL_DIRECTION_AT_LEAST or GOAL_DIRECTION_AT_MOST"),
        }
    }
    gran(v, "goal.period", g.period, Gran::Month, true);
    if !(0.0..=1.0).contains(&g.at_risk_tolerance) {
        v.add("goal.at_risk_tolerance", "a fraction of the target, 0 to 1 (default 0.1)");
    }
    if !g.stage_key.is_empty()
        && !g.stage_key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        v.add("goal.stage_key", "a stage key: [a-z][a-z0-9_]{0,31}");
    }
    // The scope must be a valid slice (its time range is replaced by the goal's period).
    let mut scope = g.scope.clone().unwrap_or_default();
    scope.start_time = None;
    scope.end_time = None;
    slice(tenant, Some(&scope), "goal.scope.", v);
    g.scope = Some(scope);
}

pub async fn create(
    api: &MetricsApi,
    req: Request<pb::CreateGoalRequest>,
) -> Result<Response<pb::CreateGoalResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let mut v = Violations::new();
    let rid = v.check(idempotency::check(&req.request_id)).flatten();
    let fingerprint = idempotency::fingerprint("clm.metrics.v1.CreateGoalRequest", &req);
    let mut g = req.goal.unwrap_or_default();
    if g.at_risk_tolerance == 0.0 {
        g.at_risk_tolerance = 0.1;
    }
    check(&ctx.tenant, &mut g, &mut v);
    v.finish()?;
    // A segment filter the contacts service refuses is refused here, not at grading time.
    api.members(&ctx.tenant, g.scope.as_ref(), "goal.scope.segment_filter").await?;
    let tenant = &ctx.tenant;
    if let Some(rid) = &rid
        && let Some(id) = idempotency::find(&api.db, &ctx.tenant, "CreateGoal", rid, &fingerprint).await?
    {
        return Ok(Response::new(pb::CreateGoalResponse { goal: Some(load(api, tenant, &id).await?.goal) }));
    }
    let now = now_micros();
    g.id = Uuid::now_v7().to_string();
    let id = g.id.clone();
    let txn = clm_platform::db::begin_write(&api.db).await?;
    store::insert(&txn, tenant, &record(&g, 1, now, now)).await?;
    if let Some(rid) = &rid {
        idempotency::record(&txn, &ctx.tenant, "CreateGoal", rid, &fingerprint, &id).await?;
    }
    txn.commit().await.map_err(Error::from)?;
    Ok(Response::new(pb::CreateGoalResponse { goal: Some(load(api, tenant, &id).await?.goal) }))
}

pub async fn get(api: &MetricsApi, req: Request<pb::GetGoalRequest>) -> Result<Response<pb::GetGoalResponse>, Status> {
    let ctx = ctx(&req)?;
    let id = uuid("id", &req.get_ref().id).map_err(|fv| Error::InvalidArgument(vec![fv]))?;
    Ok(Response::new(pb::GetGoalResponse { goal: Some(load(api, &ctx.tenant, &id.to_string()).await?.goal) }))
}

pub async fn list(
    api: &MetricsApi,
    req: Request<pb::ListGoalsRequest>,
) -> Result<Response<pb::ListGoalsResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let limit = page_size(req.page_size)?;
    let after: Option<(i64, String)> = api.tokens.decode(&req.page_token, &ctx.tenant, "goals")?;
    let found = store::list(&api.db, &ctx.tenant, after.as_ref(), limit)
        .await?
        .into_iter()
        .map(to_pb)
        .collect::<Result<Vec<_>, _>>()?;
    let (page, next) = clm_platform::pagination::split_page(found, limit, |r| {
        (r.goal.create_time.as_ref().and_then(micros).unwrap_or_default(), r.goal.id.clone())
    });
    Ok(Response::new(pb::ListGoalsResponse {
        goals: page.into_iter().map(|r| r.goal).collect(),
        next_page_token: next.map(|n| api.tokens.encode(&ctx.tenant, "goals", &n)).unwrap_or_default(),
    }))
}

fn check_etag(raw: &str, version: i64) -> Result<(), Error> {
    match etag_version("etag", raw) {
        Err(fv) => Err(Error::InvalidArgument(vec![fv])),
        Ok(Some(v)) if v != version => {
            Err(Error::Aborted("etag does not match: the goal changed; read it again".into()))
        }
        Ok(_) => Ok(()),
    }
}

pub async fn update(
    api: &MetricsApi,
    req: Request<pb::UpdateGoalRequest>,
) -> Result<Response<pb::UpdateGoalResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let new = req.goal.ok_or_else(|| Error::invalid("goal", "is required"))?;
    let tenant = &ctx.tenant;
    let old = load(api, tenant, &new.id).await?;
    check_etag(&new.etag, old.version)?;
    const FIELDS: [&str; 8] =
        ["display_name", "kpi", "scope", "stage_key", "target", "direction", "period", "at_risk_tolerance"];
    let paths: Vec<String> = match &req.update_mask {
        Some(m) if !m.paths.is_empty() => m.paths.clone(),
        _ => {
            return Err(
                Error::invalid("update_mask", format!("name the fields to change: {}", FIELDS.join(", "))).into()
            );
        }
    };
    let mut v = Violations::new();
    let mut g = old.goal.clone();
    for p in &paths {
        match p.as_str() {
            "display_name" => g.display_name.clone_from(&new.display_name),
            "kpi" => g.kpi = new.kpi,
            "scope" => g.scope.clone_from(&new.scope),
            "stage_key" => g.stage_key.clone_from(&new.stage_key),
            "target" => g.target = new.target,
            "direction" => g.direction = new.direction,
            "period" => g.period = new.period,
            "at_risk_tolerance" => g.at_risk_tolerance = new.at_risk_tolerance,
            other => v.add("update_mask", format!("cannot update {other:?}; updatable: {}", FIELDS.join(", "))),
        }
    }
    check(&ctx.tenant, &mut g, &mut v);
    v.finish()?;
    api.members(&ctx.tenant, g.scope.as_ref(), "goal.scope.segment_filter").await?;
    let created = g.create_time.as_ref().and_then(micros).unwrap_or_default();
    let n = store::update(&api.db, tenant, &record(&g, old.version + 1, created, now_micros()), old.version).await?;
    if !n {
        return Err(Error::Aborted("the goal changed concurrently; read it again".into()).into());
    }
    Ok(Response::new(pb::UpdateGoalResponse { goal: Some(load(api, tenant, &g.id).await?.goal) }))
}

pub async fn delete(
    api: &MetricsApi,
    req: Request<pb::DeleteGoalRequest>,
) -> Result<Response<pb::DeleteGoalResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let old = load(api, &ctx.tenant, &req.id).await?;
    check_etag(&req.etag, old.version)?;
    if !store::delete(&api.db, &ctx.tenant, &old.goal.id, old.version).await? {
        return Err(Error::Aborted("the goal changed concurrently; read it again".into()).into());
    }
    Ok(Response::new(pb::DeleteGoalResponse {}))
}

/// Grade one goal in the period containing `as_of`.
pub async fn grade(
    api: &MetricsApi,
    tenant: &clm_platform::TenantId,
    g: &pb::Goal,
    as_of: i64,
) -> Result<pb::GoalStatus, Error> {
    let mut v = Violations::new();
    let period = gran(&mut v, "period", g.period, Gran::Month, true);
    let start = domain::period_start(as_of, period);
    let end = domain::next_period(start, period);
    let mut scope = g.scope.clone().unwrap_or_default();
    scope.start_time = Some(timestamp(start));
    scope.end_time = Some(timestamp(as_of.min(end).max(start + 1)));
    let mut s = slice(tenant, Some(&scope), "", &mut v);
    s.contacts = api.members(tenant, Some(&scope), "goal.scope.segment_filter").await?;
    let snap = Snapshot::load(&api.db, tenant, &s, DEFAULT_LEAD_THRESHOLD).await?;
    // Stored goals were checked when written; one of a KPI this version no longer has is
    // graded as zero.
    let kpi = kpi_kind(g.kpi);
    let actual = kpi.map_or(0.0, |k| snap.kpi(k).0);
    let at_least = g.direction != pb::GoalDirection::AtMost as i32;
    // Counts and sums accumulate over the period: judge them against the pace (the share of
    // the target due by now); rates and averages against the target itself.
    let additive = kpi.is_some_and(KpiKind::accumulates);
    let due = if additive && at_least && actual < g.target {
        g.target * (((as_of - start) as f64) / ((end - start) as f64)).clamp(0.0, 1.0)
    } else {
        g.target
    };
    let health = match domain::health(actual, due, at_least, g.at_risk_tolerance) {
        domain::Health::OnTrack => pb::GoalHealth::OnTrack,
        domain::Health::AtRisk => pb::GoalHealth::AtRisk,
        domain::Health::OffTrack => pb::GoalHealth::OffTrack,
    };
    Ok(pb::GoalStatus {
        goal: Some(g.clone()),
        actual,
        target: g.target,
        health: health as i32,
        progress: domain::progress(actual, g.target, at_least),
        period_start_time: Some(timestamp(start)),
        period_end_time: Some(timestamp(end)),
    })
}

pub async fn scorecard(
    api: &MetricsApi,
    req: Request<pb::GetScorecardRequest>,
) -> Result<Response<pb::GetScorecardResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let as_of = match &req.as_of_time {
        None => now_micros(),
        Some(t) => parse_time("as_of_time", t, TimeBounds::Any).map_err(Error::from)?,
    };
    let all =
        store::list(&api.db, &ctx.tenant, None, 10_000).await?.into_iter().map(to_pb).collect::<Result<Vec<_>, _>>()?;
    let mut goals = Vec::with_capacity(all.len());
    for r in all {
        goals.push(grade(api, &ctx.tenant, &r.goal, as_of).await?);
    }
    Ok(Response::new(pb::GetScorecardResponse { goals }))
}
