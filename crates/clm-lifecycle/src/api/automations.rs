//! Automation CRUD and the run log (the engine is `journeys::automations`).

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
use crate::journeys::automations::MAX_AUTOMATIONS;
use crate::store::entities::automation;
use crate::store::{self, now_micros};

// ---- CRUD ----

pub(super) fn check(a: &pb::Automation, v: &mut Violations) {
    let name = a.display_name.trim();
    if name.is_empty() || name.chars().count() > 128 {
        v.add("automation.display_name", "1 to 128 characters");
    }
    match a.trigger.as_ref().and_then(|t| t.kind.as_ref()) {
        None => v.add(
            "automation.trigger",
            "one of stage_entered, stage_exited, journey_event, survey_response, inactivity",
        ),
        Some(pb::trigger::Kind::StageEntered(s) | pb::trigger::Kind::StageExited(s)) => {
            v.check(StageKey::parse("automation.trigger", s));
        }
        Some(pb::trigger::Kind::JourneyEvent(k)) if k.is_empty() => {
            v.add("automation.trigger.journey_event", "is required");
        }
        Some(pb::trigger::Kind::SurveyResponse(r)) if r.min_score > r.max_score => {
            v.add("automation.trigger.survey_response", "min_score must not exceed max_score");
        }
        Some(pb::trigger::Kind::Inactivity(d)) if clm_platform::convert::duration_micros(d).is_none_or(|m| m <= 0) => {
            v.add("automation.trigger.inactivity", "must be a positive duration");
        }
        Some(_) => {}
    }
    if a.actions.is_empty() || a.actions.len() > 10 {
        v.add("automation.actions", "1 to 10 actions");
    }
    for (i, act) in a.actions.iter().enumerate() {
        match &act.kind {
            None => v.add(format!("automation.actions[{i}]"), "has no action"),
            Some(pb::action::Kind::MoveToStage(s)) => {
                v.check(StageKey::parse(&format!("automation.actions[{i}].move_to_stage"), s));
            }
            Some(pb::action::Kind::AddTag(t) | pb::action::Kind::RemoveTag(t))
                if t.trim().is_empty() || t.chars().count() > 64 =>
            {
                v.add(format!("automation.actions[{i}]"), "tags are 1 to 64 characters");
            }
            Some(pb::action::Kind::RequestSurvey(s)) => {
                v.check(uuid(&format!("automation.actions[{i}].request_survey"), s));
            }
            Some(pb::action::Kind::SendMessage(t)) => {
                v.check(uuid(&format!("automation.actions[{i}].send_message"), t));
            }
            Some(pb::action::Kind::PublishWebhook(w)) if w.topic.trim().is_empty() || w.topic.len() > 128 => {
                v.add(format!("automation.actions[{i}].publish_webhook.topic"), "1 to 128 characters");
            }
            Some(_) => {}
        }
    }
    if a.conditions.len() > 10 {
        v.add("automation.conditions", "at most 10 conditions");
    }
    for (i, c) in a.conditions.iter().enumerate() {
        match &c.kind {
            None => v.add(format!("automation.conditions[{i}]"), "has no condition"),
            Some(pb::condition::Kind::ContactFilter(f)) => {
                if let Err(e) = clm_platform::filter::parse(f) {
                    v.add(format!("automation.conditions[{i}].contact_filter"), e.to_string());
                }
            }
            Some(pb::condition::Kind::SegmentId(s)) => {
                v.check(uuid(&format!("automation.conditions[{i}].segment_id"), s));
            }
            Some(pb::condition::Kind::InStage(s)) => {
                v.check(StageKey::parse(&format!("automation.conditions[{i}].in_stage"), s));
            }
            Some(_) => {}
        }
    }
}

/// Every template a send_message action names exists (else INVALID_ARGUMENT naming the action).
async fn templates_exist(db: &impl ConnectionTrait, tenant: &TenantId, a: &pb::Automation) -> Result<(), Error> {
    let mut v = Violations::new();
    for (i, act) in a.actions.iter().enumerate() {
        if let Some(pb::action::Kind::SendMessage(t)) = &act.kind
            && let Ok(id) = Uuid::parse_str(t)
        {
            match store::messaging::find_template(db, tenant, id).await {
                Ok(_) => {}
                Err(Error::NotFound { .. }) => {
                    v.add(format!("automation.actions[{i}].send_message"), format!("no message template {t}"));
                }
                Err(e) => return Err(e),
            }
        }
    }
    v.finish()
}

fn to_pb(m: &automation::Model) -> pb::Automation {
    let mut a = pb::Automation::decode(m.body.as_slice()).unwrap_or_default();
    a.id.clone_from(&m.id);
    a.display_name.clone_from(&m.display_name);
    a.enabled = m.enabled;
    a.model_id.clone_from(&m.model_id);
    a.create_time = Some(timestamp(m.create_time));
    a.update_time = Some(timestamp(m.update_time));
    a.etag = etag(m.version);
    a
}

fn body(a: &pb::Automation) -> Vec<u8> {
    pb::Automation {
        trigger: a.trigger.clone(),
        conditions: a.conditions.clone(),
        actions: a.actions.clone(),
        ..Default::default()
    }
    .encode_to_vec()
}

async fn find(db: &impl ConnectionTrait, tenant: &TenantId, id: Uuid) -> Result<automation::Model, Error> {
    store::automations::find(db, tenant, id).await
}

pub async fn create(
    api: &LifecycleApi,
    req: Request<pb::CreateAutomationRequest>,
) -> Result<Response<pb::CreateAutomationResponse>, Status> {
    let ctx = clm_platform::auth::context(&req)?;
    let req = req.into_inner();
    let fingerprint = clm_platform::idempotency::fingerprint("clm.lifecycle.v1.CreateAutomationRequest", &req);
    let a = req.automation.ok_or_else(|| Error::invalid("automation", "is required"))?;
    let mut v = Violations::new();
    check(&a, &mut v);
    let mut once = CreateOnce::new(&mut v, &ctx.tenant, "CreateAutomation", "automation", &req.request_id, fingerprint);
    v.finish()?;
    let id = once.id();
    let txn = clm_platform::db::begin_write(&api.db).await?;
    let model =
        store::get_model(&txn, &ctx.tenant, if a.model_id.is_empty() { "default" } else { &a.model_id }).await?;
    if let Some(existing) = once.replay(&txn, &ctx.tenant, find(&txn, &ctx.tenant, id)).await? {
        return Ok(Response::new(pb::CreateAutomationResponse { automation: Some(to_pb(&existing)) }));
    }
    let count = store::automations::count(&txn, &ctx.tenant).await?;
    if count >= MAX_AUTOMATIONS {
        return Err(Error::ResourceExhausted(format!("at most {MAX_AUTOMATIONS} automations per tenant")).into());
    }
    for act in &a.actions {
        if let Some(pb::action::Kind::MoveToStage(s)) = &act.kind
            && StageKey::parse("s", s).ok().and_then(|k| model.model.stage(&k).cloned()).is_none()
        {
            return Err(Error::invalid("automation.actions", format!("the model has no stage {s}")).into());
        }
    }
    templates_exist(&txn, &ctx.tenant, &a).await?;
    let now = now_micros();
    let row = automation::Model {
        id: id.to_string(),
        tenant_id: ctx.tenant.as_str().to_owned(),
        display_name: a.display_name.trim().to_owned(),
        enabled: a.enabled,
        model_id: model.id.to_string(),
        body: body(&a),
        version: 1,
        create_time: now,
        update_time: now,
    };
    once.record(&txn, &ctx.tenant, &row.id).await?;
    store::automations::insert(&txn, row.clone()).await?;
    txn.commit().await.map_err(Error::from)?;
    Ok(Response::new(pb::CreateAutomationResponse { automation: Some(to_pb(&row)) }))
}

pub async fn get(
    api: &LifecycleApi,
    req: Request<pb::GetAutomationRequest>,
) -> Result<Response<pb::GetAutomationResponse>, Status> {
    let ctx = clm_platform::auth::context(&req)?;
    let id = uuid("id", &req.get_ref().id).map_err(Error::from)?;
    let a = find(&api.db, &ctx.tenant, id).await?;
    Ok(Response::new(pb::GetAutomationResponse { automation: Some(to_pb(&a)) }))
}

pub async fn list(
    api: &LifecycleApi,
    req: Request<pb::ListAutomationsRequest>,
) -> Result<Response<pb::ListAutomationsResponse>, Status> {
    let ctx = clm_platform::auth::context(&req)?;
    let req = req.into_inner();
    let limit = page_size(req.page_size)?;
    let after: Option<(i64, String)> = api.tokens.decode(&req.page_token, &ctx.tenant, "automations")?;
    let (rows, next) = store::automations::list(&api.db, &ctx.tenant, after.as_ref(), limit).await?;
    Ok(Response::new(pb::ListAutomationsResponse {
        automations: rows.iter().map(to_pb).collect(),
        next_page_token: next.map(|n| api.tokens.encode(&ctx.tenant, "automations", &n)).unwrap_or_default(),
    }))
}

pub async fn update(
    api: &LifecycleApi,
    req: Request<pb::UpdateAutomationRequest>,
) -> Result<Response<pb::UpdateAutomationResponse>, Status> {
    let ctx = clm_platform::auth::context(&req)?;
    let req = req.into_inner();
    let a = req.automation.ok_or_else(|| Error::invalid("automation", "is required"))?;
    let mut v = Violations::new();
    let id = v.check(uuid("automation.id", &a.id));
    let expected = ExpectedVersion::parse(&mut v, "automation.etag", &a.etag);
    let mask =
        UpdateMask::parse(&mut v, req.update_mask, &["display_name", "enabled", "trigger", "conditions", "actions"]);
    v.finish()?;
    let txn = clm_platform::db::begin_write(&api.db).await?;
    let current = find(&txn, &ctx.tenant, id.expect("checked")).await?;
    expected.check(current.version, "automation")?;
    let mut next = to_pb(&current);
    if mask.sets("display_name", !a.display_name.is_empty()) {
        next.display_name.clone_from(&a.display_name);
    }
    // A bool has no "not given": only a mask naming it changes it.
    if mask.sets("enabled", false) {
        next.enabled = a.enabled;
    }
    if mask.sets("trigger", a.trigger.is_some()) {
        next.trigger.clone_from(&a.trigger);
    }
    if mask.sets("conditions", !a.conditions.is_empty()) {
        next.conditions.clone_from(&a.conditions);
    }
    if mask.sets("actions", !a.actions.is_empty()) {
        next.actions.clone_from(&a.actions);
    }
    let mut v = Violations::new();
    check(&next, &mut v);
    v.finish()?;
    templates_exist(&txn, &ctx.tenant, &next).await?;
    let saved = automation::Model {
        display_name: next.display_name.trim().to_owned(),
        enabled: next.enabled,
        body: body(&next),
        version: current.version + 1,
        update_time: now_micros(),
        ..current.clone()
    };
    store::automations::update(&txn, &ctx.tenant, &saved, current.version).await?;
    txn.commit().await.map_err(Error::from)?;
    Ok(Response::new(pb::UpdateAutomationResponse { automation: Some(to_pb(&saved)) }))
}

pub async fn delete(
    api: &LifecycleApi,
    req: Request<pb::DeleteAutomationRequest>,
) -> Result<Response<pb::DeleteAutomationResponse>, Status> {
    let ctx = clm_platform::auth::context(&req)?;
    let req = req.into_inner();
    let mut v = Violations::new();
    let id = v.check(uuid("id", &req.id));
    let expected = ExpectedVersion::parse(&mut v, "etag", &req.etag);
    v.finish()?;
    let txn = clm_platform::db::begin_write(&api.db).await?;
    let current = find(&txn, &ctx.tenant, id.expect("checked")).await?;
    expected.check(current.version, "automation")?;
    store::automations::delete(&txn, &ctx.tenant, &current.id).await?;
    txn.commit().await.map_err(Error::from)?;
    Ok(Response::new(pb::DeleteAutomationResponse {}))
}

pub async fn list_runs(
    api: &LifecycleApi,
    req: Request<pb::ListAutomationRunsRequest>,
) -> Result<Response<pb::ListAutomationRunsResponse>, Status> {
    let ctx = clm_platform::auth::context(&req)?;
    let req = req.into_inner();
    let mut v = Violations::new();
    let auto = if req.automation_id.is_empty() { None } else { v.check(uuid("automation_id", &req.automation_id)) };
    let contact = if req.contact_id.is_empty() { None } else { v.check(uuid("contact_id", &req.contact_id)) };
    let limit = page_size(req.page_size).ok();
    if limit.is_none() {
        v.add("page_size", "must be 0 to 1000");
    }
    v.finish()?;
    let fp = format!("runs|{}|{}", req.automation_id, req.contact_id);
    let after: Option<(i64, String)> = api.tokens.decode(&req.page_token, &ctx.tenant, &fp)?;
    let (rows, next) =
        store::automations::list_runs(&api.db, &ctx.tenant, auto, contact, after.as_ref(), limit.expect("checked"))
            .await?;
    Ok(Response::new(pb::ListAutomationRunsResponse {
        runs: rows
            .iter()
            .map(|r| pb::AutomationRun {
                id: r.id.clone(),
                automation_id: r.automation_id.clone(),
                contact_id: r.contact_id.clone(),
                trigger_ref: r.trigger_ref.clone(),
                run_time: Some(timestamp(r.run_time)),
                outcome: pb::RunOutcome::from_str_name(&format!("RUN_OUTCOME_{}", r.outcome.to_uppercase()))
                    .unwrap_or_default() as i32,
                message: r.message.clone(),
            })
            .collect(),
        next_page_token: next.map(|n| api.tokens.encode(&ctx.tenant, &fp, &n)).unwrap_or_default(),
    }))
}
