//! Campaigns: CRUD with the checks a campaign passes when saved, statistics, enrolments (the
//! engine is `journeys::campaigns`).

use std::collections::{HashMap, HashSet};

use clm_platform::convert::{etag, timestamp, uuid};
use clm_platform::crud::{CreateOnce, ExpectedVersion, UpdateMask};
use clm_platform::pagination::page_size;
use clm_platform::{Error, TenantId, Violations};
use clm_proto::lifecycle::v1 as pb;
use prost::Message;
use sea_orm::ConnectionTrait;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::LifecycleApi;
use crate::domain::model::StageKey;
use crate::journeys::campaigns::body;
use crate::store::entities::{campaign, enrolment};
use crate::store::{self, ModelRecord, now_micros};

/// Most campaigns per tenant.
pub const MAX_CAMPAIGNS: u64 = 200;
/// Most steps per campaign.
const MAX_STEPS: usize = 50;
/// Shortest and longest wait.
const MIN_WAIT_MICROS: i64 = 1_000_000;
const MAX_WAIT_MICROS: i64 = 365 * 24 * 3600 * 1_000_000;

fn status_key(s: i32) -> &'static str {
    match pb::CampaignStatus::try_from(s).unwrap_or_default() {
        pb::CampaignStatus::Active => "active",
        pb::CampaignStatus::Paused => "paused",
        _ => "draft",
    }
}

fn status_pb(s: &str) -> pb::CampaignStatus {
    match s {
        "active" => pb::CampaignStatus::Active,
        "paused" => pb::CampaignStatus::Paused,
        _ => pb::CampaignStatus::Draft,
    }
}

/// The steps each step can lead to.
fn successors(s: &pb::CampaignStep) -> Vec<&str> {
    use pb::campaign_step::Kind;
    let out: Vec<&str> = match &s.kind {
        Some(Kind::Branch(b)) => vec![&b.then_next, &b.else_next],
        Some(Kind::Exit(_)) => vec![],
        Some(Kind::Wait(w)) if !w.until_event.is_empty() => vec![&s.next, &w.timeout_next],
        _ => vec![&s.next],
    };
    out.into_iter().filter(|n| !n.is_empty()).collect()
}

fn is_wait(s: &pb::CampaignStep) -> bool {
    matches!(s.kind, Some(pb::campaign_step::Kind::Wait(_)))
}

/// A cycle of steps none of which waits (it would run forever at once), if there is one.
fn cycle_without_wait(steps: &[pb::CampaignStep]) -> Option<Vec<String>> {
    let by_key: HashMap<&str, &pb::CampaignStep> = steps.iter().map(|s| (s.key.as_str(), s)).collect();
    // Depth-first search over the steps that do not wait.
    fn visit<'a>(
        k: &'a str,
        by_key: &HashMap<&'a str, &'a pb::CampaignStep>,
        path: &mut Vec<&'a str>,
        done: &mut HashSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| *p == k) {
            let mut cycle: Vec<String> = path[i..].iter().map(|s| (*s).to_owned()).collect();
            cycle.push(k.to_owned());
            return Some(cycle);
        }
        if done.contains(k) {
            return None;
        }
        let step = by_key.get(k)?;
        if is_wait(step) {
            done.insert(k);
            return None;
        }
        path.push(k);
        for n in successors(step) {
            if let Some(c) = visit(n, by_key, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(k);
        None
    }
    let mut done = HashSet::new();
    for s in steps {
        if let Some(c) = visit(&s.key, &by_key, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

/// The checks that need nothing but the campaign.
fn check(c: &pb::Campaign, v: &mut Violations) {
    let name = c.display_name.trim();
    if name.is_empty() || name.chars().count() > 128 {
        v.add("campaign.display_name", "1 to 128 characters");
    }
    // The trigger and entry conditions are the automations' (same checks, same field names).
    let as_automation = pb::Automation {
        display_name: "campaign".into(),
        trigger: c.trigger.clone(),
        conditions: c.entry_conditions.clone(),
        actions: vec![pb::Action { kind: Some(pb::action::Kind::AddTag("x".into())) }],
        ..Default::default()
    };
    let mut inner = Violations::new();
    super::automations::check(&as_automation, &mut inner);
    for f in inner.into_violations() {
        let field = f.field.replacen("automation.conditions", "campaign.entry_conditions", 1).replacen(
            "automation.",
            "campaign.",
            1,
        );
        v.add(field, f.description);
    }
    if c.steps.is_empty() || c.steps.len() > MAX_STEPS {
        v.add("campaign.steps", format!("1 to {MAX_STEPS} steps"));
        return;
    }
    let mut keys = HashSet::new();
    for (i, s) in c.steps.iter().enumerate() {
        if let Err(e) = StageKey::parse(&format!("campaign.steps[{i}].key"), &s.key) {
            v.add(e.field, "step keys match [a-z][a-z0-9_]{0,31}");
        } else if !keys.insert(s.key.as_str()) {
            v.add(format!("campaign.steps[{i}].key"), format!("{:?} is used by another step", s.key));
        }
    }
    let send_steps: HashSet<&str> = c
        .steps
        .iter()
        .filter(|s| matches!(s.kind, Some(pb::campaign_step::Kind::SendMessage(_))))
        .map(|s| s.key.as_str())
        .collect();
    for (i, s) in c.steps.iter().enumerate() {
        let f = |x: &str| format!("campaign.steps[{i}].{x}");
        check_step(s, &f, &send_steps, v);
        for (field, target) in [
            ("next", s.next.as_str()),
            (
                "branch.then_next",
                match &s.kind {
                    Some(pb::campaign_step::Kind::Branch(b)) => b.then_next.as_str(),
                    _ => "",
                },
            ),
            (
                "branch.else_next",
                match &s.kind {
                    Some(pb::campaign_step::Kind::Branch(b)) => b.else_next.as_str(),
                    _ => "",
                },
            ),
            (
                "wait.timeout_next",
                match &s.kind {
                    Some(pb::campaign_step::Kind::Wait(w)) => w.timeout_next.as_str(),
                    _ => "",
                },
            ),
        ] {
            if !target.is_empty() && !keys.contains(target) {
                v.add(f(field), format!("no step {target:?}"));
            }
        }
    }
    if !v.is_empty() {
        return;
    }
    // Every step reachable from the first.
    let by_key: HashMap<&str, &pb::CampaignStep> = c.steps.iter().map(|s| (s.key.as_str(), s)).collect();
    let mut seen = HashSet::new();
    let mut todo = vec![c.steps[0].key.as_str()];
    while let Some(k) = todo.pop() {
        if seen.insert(k)
            && let Some(s) = by_key.get(k)
        {
            todo.extend(successors(s));
        }
    }
    for (i, s) in c.steps.iter().enumerate() {
        if !seen.contains(s.key.as_str()) {
            v.add(format!("campaign.steps[{i}]"), format!("step {:?} cannot be reached from the first step", s.key));
        }
    }
    if let Some(cycle) = cycle_without_wait(&c.steps) {
        v.add("campaign.steps", format!("the steps {} loop without a wait", cycle.join(" → ")));
    }
    for (i, r) in c.exit_rules.iter().enumerate() {
        match &r.kind {
            None => v.add(format!("campaign.exit_rules[{i}]"), "one of entered_stage, left_stage, journey_event"),
            Some(pb::exit_rule::Kind::EnteredStage(s) | pb::exit_rule::Kind::LeftStage(s)) => {
                v.check(StageKey::parse(&format!("campaign.exit_rules[{i}]"), s));
            }
            Some(pb::exit_rule::Kind::JourneyEvent(k)) if k.trim().is_empty() || k.len() > 64 => {
                v.add(format!("campaign.exit_rules[{i}].journey_event"), "1 to 64 characters");
            }
            Some(_) => {}
        }
    }
}

fn check_step(s: &pb::CampaignStep, f: &dyn Fn(&str) -> String, send_steps: &HashSet<&str>, v: &mut Violations) {
    use pb::campaign_step::Kind;
    match &s.kind {
        None => v.add(
            f("kind"),
            "one of send_message, wait, branch, move_to_stage, add_tag, remove_tag, request_survey, exit",
        ),
        Some(Kind::SendMessage(t)) => {
            v.check(uuid(&f("send_message"), t));
        }
        Some(Kind::Wait(w)) => {
            let d = w.duration.as_ref().and_then(clm_platform::convert::duration_micros);
            if !d.is_some_and(|d| (MIN_WAIT_MICROS..=MAX_WAIT_MICROS).contains(&d)) {
                v.add(f("wait.duration"), "1 second to 365 days");
            }
            if w.until_event.len() > 64 {
                v.add(f("wait.until_event"), "at most 64 characters");
            }
            if w.until_event.is_empty() && !w.timeout_next.is_empty() {
                v.add(f("wait.timeout_next"), "only with until_event");
            }
        }
        Some(Kind::Branch(b)) => {
            if !s.next.is_empty() {
                v.add(f("next"), "a branch goes on by then_next and else_next");
            }
            match b.condition.as_ref().and_then(|c| c.kind.as_ref()) {
                None => v.add(f("branch.condition"), "one of contact, survey_score, message_sent"),
                Some(pb::campaign_condition::Kind::Contact(c)) => {
                    let a = pb::Automation {
                        display_name: "b".into(),
                        trigger: Some(pb::Trigger { kind: Some(pb::trigger::Kind::JourneyEvent("x".into())) }),
                        conditions: vec![c.clone()],
                        actions: vec![pb::Action { kind: Some(pb::action::Kind::AddTag("x".into())) }],
                        ..Default::default()
                    };
                    let mut inner = Violations::new();
                    super::automations::check(&a, &mut inner);
                    for x in inner.into_violations() {
                        v.add(f("branch.condition.contact"), x.description);
                    }
                }
                Some(pb::campaign_condition::Kind::SurveyScore(r)) if r.min_score > r.max_score => {
                    v.add(f("branch.condition.survey_score"), "min_score must not exceed max_score");
                }
                Some(pb::campaign_condition::Kind::MessageSent(k)) if !send_steps.contains(k.as_str()) => {
                    v.add(f("branch.condition.message_sent"), format!("no send_message step {k:?}"));
                }
                Some(_) => {}
            }
        }
        Some(Kind::MoveToStage(st)) => {
            v.check(StageKey::parse(&f("move_to_stage"), st));
        }
        Some(Kind::AddTag(t) | Kind::RemoveTag(t)) if t.trim().is_empty() || t.chars().count() > 64 => {
            v.add(f("tag"), "tags are 1 to 64 characters");
        }
        Some(Kind::RequestSurvey(sv)) => {
            v.check(uuid(&f("request_survey"), sv));
        }
        Some(Kind::Exit(_)) => {
            if !s.next.is_empty() {
                v.add(f("next"), "an exit step ends the enrolment");
            }
        }
        Some(_) => {}
    }
}

/// The checks that need the tenant's data: templates and stages exist.
async fn check_refs(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    model: &ModelRecord,
    c: &pb::Campaign,
) -> Result<(), Error> {
    let mut v = Violations::new();
    for (i, s) in c.steps.iter().enumerate() {
        match &s.kind {
            Some(pb::campaign_step::Kind::SendMessage(t)) => {
                if let Ok(id) = Uuid::parse_str(t) {
                    match store::messaging::find_template(db, tenant, id).await {
                        Ok(_) => {}
                        Err(Error::NotFound { .. }) => {
                            v.add(format!("campaign.steps[{i}].send_message"), format!("no message template {t}"));
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Some(pb::campaign_step::Kind::MoveToStage(st)) => {
                if StageKey::parse("s", st).ok().and_then(|k| model.model.stage(&k).cloned()).is_none() {
                    v.add(format!("campaign.steps[{i}].move_to_stage"), format!("the model has no stage {st}"));
                }
            }
            _ => {}
        }
    }
    v.finish()
}

fn to_pb(m: &campaign::Model) -> pb::Campaign {
    let mut c = body(m);
    c.id.clone_from(&m.id);
    c.display_name.clone_from(&m.display_name);
    c.status = status_pb(&m.status) as i32;
    c.model_id.clone_from(&m.model_id);
    c.create_time = Some(timestamp(m.create_time));
    c.update_time = Some(timestamp(m.update_time));
    c.etag = etag(m.version);
    c
}

fn stored_body(c: &pb::Campaign) -> Vec<u8> {
    pb::Campaign {
        trigger: c.trigger.clone(),
        entry_conditions: c.entry_conditions.clone(),
        steps: c.steps.clone(),
        exit_rules: c.exit_rules.clone(),
        allow_reentry: c.allow_reentry,
        ..Default::default()
    }
    .encode_to_vec()
}

pub async fn create(
    api: &LifecycleApi,
    req: Request<pb::CreateCampaignRequest>,
) -> Result<Response<pb::CreateCampaignResponse>, Status> {
    let ctx = clm_platform::auth::context(&req)?;
    let req = req.into_inner();
    let fingerprint = clm_platform::idempotency::fingerprint("clm.lifecycle.v1.CreateCampaignRequest", &req);
    let c = req.campaign.ok_or_else(|| Error::invalid("campaign", "is required"))?;
    let mut v = Violations::new();
    check(&c, &mut v);
    let mut once = CreateOnce::new(&mut v, &ctx.tenant, "CreateCampaign", "campaign", &req.request_id, fingerprint);
    v.finish()?;
    let id = once.id();
    let txn = clm_platform::db::begin_write(&api.db).await?;
    let model =
        store::get_model(&txn, &ctx.tenant, if c.model_id.is_empty() { "default" } else { &c.model_id }).await?;
    if let Some(existing) = once.replay(&txn, &ctx.tenant, store::campaigns::find(&txn, &ctx.tenant, id)).await? {
        return Ok(Response::new(pb::CreateCampaignResponse { campaign: Some(to_pb(&existing)) }));
    }
    if store::campaigns::count(&txn, &ctx.tenant).await? >= MAX_CAMPAIGNS {
        return Err(Error::ResourceExhausted(format!("at most {MAX_CAMPAIGNS} campaigns per tenant")).into());
    }
    check_refs(&txn, &ctx.tenant, &model, &c).await?;
    let now = now_micros();
    let row = campaign::Model {
        id: id.to_string(),
        tenant_id: ctx.tenant.as_str().to_owned(),
        display_name: c.display_name.trim().to_owned(),
        status: status_key(c.status).to_owned(),
        model_id: model.id.to_string(),
        body: stored_body(&c),
        version: 1,
        create_time: now,
        update_time: now,
    };
    once.record(&txn, &ctx.tenant, &row.id).await?;
    store::campaigns::insert(&txn, row.clone()).await?;
    txn.commit().await.map_err(Error::from)?;
    Ok(Response::new(pb::CreateCampaignResponse { campaign: Some(to_pb(&row)) }))
}

pub async fn get(
    api: &LifecycleApi,
    req: Request<pb::GetCampaignRequest>,
) -> Result<Response<pb::GetCampaignResponse>, Status> {
    let ctx = clm_platform::auth::context(&req)?;
    let id = uuid("id", &req.get_ref().id).map_err(Error::from)?;
    let c = store::campaigns::find(&api.db, &ctx.tenant, id).await?;
    Ok(Response::new(pb::GetCampaignResponse { campaign: Some(to_pb(&c)) }))
}

pub async fn list(
    api: &LifecycleApi,
    req: Request<pb::ListCampaignsRequest>,
) -> Result<Response<pb::ListCampaignsResponse>, Status> {
    let ctx = clm_platform::auth::context(&req)?;
    let req = req.into_inner();
    let limit = page_size(req.page_size)?;
    let after: Option<(i64, String)> = api.tokens.decode(&req.page_token, &ctx.tenant, "campaigns")?;
    let (rows, next) = store::campaigns::list(&api.db, &ctx.tenant, after.as_ref(), limit).await?;
    Ok(Response::new(pb::ListCampaignsResponse {
        campaigns: rows.iter().map(to_pb).collect(),
        next_page_token: next.map(|n| api.tokens.encode(&ctx.tenant, "campaigns", &n)).unwrap_or_default(),
    }))
}

pub async fn update(
    api: &LifecycleApi,
    req: Request<pb::UpdateCampaignRequest>,
) -> Result<Response<pb::UpdateCampaignResponse>, Status> {
    let ctx = clm_platform::auth::context(&req)?;
    let req = req.into_inner();
    let c = req.campaign.ok_or_else(|| Error::invalid("campaign", "is required"))?;
    let mut v = Violations::new();
    let id = v.check(uuid("campaign.id", &c.id));
    let expected = ExpectedVersion::parse(&mut v, "campaign.etag", &c.etag);
    const PATHS: [&str; 7] =
        ["display_name", "status", "trigger", "entry_conditions", "steps", "exit_rules", "allow_reentry"];
    let mask = UpdateMask::parse(&mut v, req.update_mask, &PATHS);
    v.finish()?;
    let txn = clm_platform::db::begin_write(&api.db).await?;
    let current = store::campaigns::find(&txn, &ctx.tenant, id.expect("checked")).await?;
    expected.check(current.version, "campaign")?;
    let mut next = to_pb(&current);
    if mask.sets("display_name", !c.display_name.is_empty()) {
        next.display_name.clone_from(&c.display_name);
    }
    if mask.sets("status", c.status != 0) {
        next.status = c.status;
    }
    if mask.sets("trigger", c.trigger.is_some()) {
        next.trigger.clone_from(&c.trigger);
    }
    if mask.sets("entry_conditions", !c.entry_conditions.is_empty()) {
        next.entry_conditions.clone_from(&c.entry_conditions);
    }
    if mask.sets("steps", !c.steps.is_empty()) {
        next.steps.clone_from(&c.steps);
    }
    if mask.sets("exit_rules", !c.exit_rules.is_empty()) {
        next.exit_rules.clone_from(&c.exit_rules);
    }
    // A bool has no "not given": only a mask naming it changes it.
    if mask.sets("allow_reentry", false) {
        next.allow_reentry = c.allow_reentry;
    }
    let mut v = Violations::new();
    check(&next, &mut v);
    v.finish()?;
    let model = store::get_model(&txn, &ctx.tenant, &current.model_id).await?;
    check_refs(&txn, &ctx.tenant, &model, &next).await?;
    let saved = campaign::Model {
        display_name: next.display_name.trim().to_owned(),
        status: status_key(next.status).to_owned(),
        body: stored_body(&next),
        version: current.version + 1,
        update_time: now_micros(),
        ..current.clone()
    };
    store::campaigns::update(&txn, &ctx.tenant, &saved, current.version).await?;
    txn.commit().await.map_err(Error::from)?;
    crate::journeys::campaigns::wake();
    Ok(Response::new(pb::UpdateCampaignResponse { campaign: Some(to_pb(&saved)) }))
}

pub async fn delete(
    api: &LifecycleApi,
    req: Request<pb::DeleteCampaignRequest>,
) -> Result<Response<pb::DeleteCampaignResponse>, Status> {
    let ctx = clm_platform::auth::context(&req)?;
    let req = req.into_inner();
    let mut v = Violations::new();
    let id = v.check(uuid("id", &req.id));
    let expected = ExpectedVersion::parse(&mut v, "etag", &req.etag);
    v.finish()?;
    let txn = clm_platform::db::begin_write(&api.db).await?;
    let current = store::campaigns::find(&txn, &ctx.tenant, id.expect("checked")).await?;
    expected.check(current.version, "campaign")?;
    if store::campaigns::has_active(&txn, &ctx.tenant, &current.id).await? {
        return Err(Error::FailedPrecondition(
            "the campaign has contacts in it; pause it and wait for them to finish, or remove its steps".into(),
        )
        .into());
    }
    store::campaigns::delete(&txn, &ctx.tenant, &current.id).await?;
    txn.commit().await.map_err(Error::from)?;
    Ok(Response::new(pb::DeleteCampaignResponse {}))
}

pub async fn stats(
    api: &LifecycleApi,
    req: Request<pb::GetCampaignStatsRequest>,
) -> Result<Response<pb::GetCampaignStatsResponse>, Status> {
    let ctx = clm_platform::auth::context(&req)?;
    let id = uuid("id", &req.get_ref().id).map_err(Error::from)?;
    let row = store::campaigns::find(&api.db, &ctx.tenant, id).await?;
    let c = body(&row);
    let steps = store::campaigns::step_counts(&api.db, &ctx.tenant, &row.id).await?;
    let waiting = store::campaigns::waiting_counts(&api.db, &ctx.tenant, &row.id).await?;
    let mut stats = pb::CampaignStats { campaign_id: row.id.clone(), ..Default::default() };
    for (state, converted, n) in store::campaigns::enrolment_counts(&api.db, &ctx.tenant, &row.id).await? {
        stats.enrolled += n;
        match state.as_str() {
            "active" => stats.active += n,
            "completed" => stats.completed += n,
            _ => stats.exited += n,
        }
        if converted {
            stats.converted += n;
        }
    }
    stats.steps = c
        .steps
        .iter()
        .map(|s| {
            let [entered, completed, exited, converted] = steps.get(&s.key).copied().unwrap_or_default();
            pb::CampaignStepStats {
                step_key: s.key.clone(),
                entered,
                waiting: waiting.get(&s.key).copied().unwrap_or(0),
                completed,
                exited,
                converted,
            }
        })
        .collect();
    Ok(Response::new(pb::GetCampaignStatsResponse { stats: Some(stats) }))
}

fn enrolment_pb(e: &enrolment::Model) -> pb::Enrolment {
    pb::Enrolment {
        id: e.id.clone(),
        campaign_id: e.campaign_id.clone(),
        contact_id: e.contact_id.clone(),
        state: match e.state.as_str() {
            "active" => pb::EnrolmentState::Active,
            "completed" => pb::EnrolmentState::Completed,
            _ => pb::EnrolmentState::Exited,
        } as i32,
        step_key: e.step_key.clone(),
        wake_time: (e.state == "active" && e.waiting).then(|| timestamp(e.wake_time)),
        converted: e.converted,
        exit_reason: e.exit_reason.clone(),
        enrol_time: Some(timestamp(e.enrol_time)),
        finish_time: e.finish_time.map(timestamp),
    }
}

pub async fn list_enrolments(
    api: &LifecycleApi,
    req: Request<pb::ListEnrolmentsRequest>,
) -> Result<Response<pb::ListEnrolmentsResponse>, Status> {
    let ctx = clm_platform::auth::context(&req)?;
    let req = req.into_inner();
    let mut v = Violations::new();
    let campaign = if req.campaign_id.is_empty() { None } else { v.check(uuid("campaign_id", &req.campaign_id)) };
    let contact = if req.contact_id.is_empty() { None } else { v.check(uuid("contact_id", &req.contact_id)) };
    let limit = page_size(req.page_size).ok();
    if limit.is_none() {
        v.add("page_size", "must be 0 to 1000");
    }
    v.finish()?;
    let fp = format!("enrolments|{}|{}", req.campaign_id, req.contact_id);
    let after: Option<(i64, String)> = api.tokens.decode(&req.page_token, &ctx.tenant, &fp)?;
    let (rows, next) = store::campaigns::list_enrolments(
        &api.db,
        &ctx.tenant,
        campaign,
        contact,
        after.as_ref(),
        limit.expect("checked"),
    )
    .await?;
    Ok(Response::new(pb::ListEnrolmentsResponse {
        enrolments: rows.iter().map(enrolment_pb).collect(),
        next_page_token: next.map(|n| api.tokens.encode(&ctx.tenant, &fp, &n)).unwrap_or_default(),
    }))
}
