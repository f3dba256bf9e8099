//! Tenant automations: CRUD, run log, and the engine that runs them when their trigger fires.
//!
//! Triggers: a stage entered or exited, a journey event of a kind, a survey response in a
//! score band, inactivity (from the scheduler). Conditions: the contact is in a stage, has a
//! tag, came from a channel. Actions: move to a stage, add/remove a tag (asked of contacts by
//! event), request a survey (asked of feedback by event), publish a webhook-style event. A move
//! can fire further automations; chains stop at [`MAX_CHAIN`] (the run is logged LOOP_LIMITED).

use clm_platform::convert::{etag, etag_version, timestamp, uuid};
use clm_platform::pagination::page_size;
use clm_platform::{Error, TenantId, Violations};
use clm_proto::events::v1 as ev;
use clm_proto::lifecycle::v1 as pb;
use prost::Message;
use sea_orm::ConnectionTrait;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::LifecycleApi;
use crate::domain::model::StageKey;
use crate::store::entities::{automation, automation_run, manual_move, transition};
use crate::store::{self, ModelRecord, now_micros};

/// Longest chain of automation-caused moves from one original event.
pub const MAX_CHAIN: usize = 5;
/// Most automations per tenant.
pub const MAX_AUTOMATIONS: u64 = 200;

/// What happened that may fire automations.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    Entered {
        stage: String,
        transition_id: String,
    },
    Exited {
        stage: String,
        transition_id: String,
    },
    JourneyEvent {
        kind: String,
        custom_name: String,
        event_id: String,
    },
    SurveyResponse {
        kind: String,
        score: i32,
        response_id: String,
    },
    /// No journey event for `idle_micros`, the last one at `since`.
    Inactive {
        idle_micros: i64,
        since: i64,
    },
}

impl Trigger {
    fn reference(&self) -> String {
        match self {
            Trigger::Entered { transition_id, .. } | Trigger::Exited { transition_id, .. } => transition_id.clone(),
            Trigger::JourneyEvent { event_id, .. } => event_id.clone(),
            Trigger::SurveyResponse { response_id, .. } => response_id.clone(),
            Trigger::Inactive { .. } => "inactivity".into(),
        }
    }

    fn matches(&self, t: &pb::Trigger) -> bool {
        use pb::trigger::Kind;
        match (&t.kind, self) {
            (Some(Kind::StageEntered(s)), Trigger::Entered { stage, .. })
            | (Some(Kind::StageExited(s)), Trigger::Exited { stage, .. }) => s == stage,
            (Some(Kind::JourneyEvent(k)), Trigger::JourneyEvent { kind, custom_name, .. }) => {
                k == kind || (kind == "custom" && k == custom_name)
            }
            (Some(Kind::SurveyResponse(r)), Trigger::SurveyResponse { kind, score, .. }) => {
                (r.survey_kind.is_empty() || &r.survey_kind == kind) && (r.min_score..=r.max_score).contains(score)
            }
            (Some(Kind::Inactivity(d)), Trigger::Inactive { idle_micros, .. }) => {
                clm_platform::convert::duration_micros(d).is_some_and(|need| *idle_micros >= need)
            }
            _ => false,
        }
    }
}

/// Triggers implied by new transitions.
pub fn stage_triggers(new: &[transition::Model]) -> Vec<Trigger> {
    let mut out = Vec::new();
    for t in new {
        if let Some(from) = &t.from_stage {
            out.push(Trigger::Exited { stage: from.clone(), transition_id: t.id.clone() });
        }
        out.push(Trigger::Entered { stage: t.to_stage.clone(), transition_id: t.id.clone() });
    }
    out
}

fn run_row(
    tenant: &TenantId,
    a: &automation::Model,
    contact: Uuid,
    trigger_ref: &str,
    outcome: pb::RunOutcome,
    message: &str,
) -> automation_run::ActiveModel {
    let outcome = outcome.as_str_name().trim_start_matches("RUN_OUTCOME_").to_lowercase();
    store::automations::run_row(tenant, &a.id, contact, trigger_ref, &outcome, message)
}

/// Run the automations `triggers` fire for `contact` in `model`, inside `txn`. Moves they make
/// are applied (and may fire more, up to [`MAX_CHAIN`]). Returns all new transitions.
pub async fn run(
    txn: &impl ConnectionTrait,
    tenant: &TenantId,
    automator: &crate::contacts_client::Automator,
    model: &ModelRecord,
    contact: Uuid,
    mut triggers: Vec<Trigger>,
) -> Result<Vec<transition::Model>, Error> {
    let autos = store::automations::enabled(txn, tenant, model.id).await?;
    let publisher = &automator.publisher;
    let mut all_new = Vec::new();
    if autos.is_empty() {
        return Ok(all_new);
    }
    for depth in 0..=MAX_CHAIN {
        if triggers.is_empty() {
            break;
        }
        let mut next = Vec::new();
        for trig in &triggers {
            for a in &autos {
                let Ok(body) = pb::Automation::decode(a.body.as_slice()) else { continue };
                if !body.trigger.as_ref().is_some_and(|t| trig.matches(t)) {
                    continue;
                }
                // An inactivity automation fires once per idle period.
                if let Trigger::Inactive { since, .. } = trig
                    && store::automations::ran_since(txn, tenant, &a.id, contact, *since).await?
                {
                    continue;
                }
                if depth == MAX_CHAIN {
                    store::automations::log_run(
                        txn,
                        run_row(
                            tenant,
                            a,
                            contact,
                            &trig.reference(),
                            pb::RunOutcome::LoopLimited,
                            "chain of automation moves too long; stopped",
                        ),
                    )
                    .await?;
                    continue;
                }
                let (tags, channel) = store::contact_facts(txn, tenant, contact).await?;
                let current = store::get_journey(txn, tenant, contact, model.id)
                    .await?
                    .and_then(|j| j.current_stage)
                    .unwrap_or_default();
                let mut holds = true;
                let mut failed_check = None;
                for c in &body.conditions {
                    let ok = match &c.kind {
                        Some(pb::condition::Kind::InStage(s)) => Ok(s == &current),
                        Some(pb::condition::Kind::HasTag(t)) => Ok(tags.contains(&t.to_lowercase())),
                        Some(pb::condition::Kind::AcquisitionChannel(ch)) => Ok(ch == &channel),
                        Some(pb::condition::Kind::ContactFilter(f)) => {
                            automator.contacts.matches(tenant, contact, f).await
                        }
                        Some(pb::condition::Kind::SegmentId(s)) => {
                            automator.contacts.in_segment(tenant, contact, s).await
                        }
                        None => Ok(true),
                    };
                    match ok {
                        Ok(true) => {}
                        Ok(false) => {
                            holds = false;
                            break;
                        }
                        Err(e) => {
                            failed_check = Some(e.to_string());
                            break;
                        }
                    }
                }
                if let Some(why) = failed_check {
                    store::automations::log_run(
                        txn,
                        run_row(
                            tenant,
                            a,
                            contact,
                            &trig.reference(),
                            pb::RunOutcome::Failed,
                            &format!("condition not evaluated: {why}"),
                        ),
                    )
                    .await?;
                    continue;
                }
                if !holds {
                    store::automations::log_run(
                        txn,
                        run_row(
                            tenant,
                            a,
                            contact,
                            &trig.reference(),
                            pb::RunOutcome::Skipped,
                            "conditions did not hold",
                        ),
                    )
                    .await?;
                    continue;
                }
                let mut notes = Vec::new();
                let mut failed = None;
                for action in &body.actions {
                    match &action.kind {
                        Some(pb::action::Kind::MoveToStage(s)) => {
                            let Ok(to) = StageKey::parse("move_to_stage", s) else {
                                failed = Some(format!("bad stage {s:?}"));
                                break;
                            };
                            if model.model.stage(&to).is_none() {
                                failed = Some(format!("the model has no stage {s}"));
                                break;
                            }
                            if current == to.as_str() {
                                notes.push(format!("already in {s}"));
                                continue;
                            }
                            store::insert_move(
                                txn,
                                manual_move::Model {
                                    id: Uuid::now_v7().to_string(),
                                    tenant_id: tenant.as_str().to_owned(),
                                    contact_id: contact.to_string(),
                                    model_id: model.id.to_string(),
                                    to_stage: to.as_str().to_owned(),
                                    at: now_micros(),
                                    reason: format!("automation {}", a.display_name),
                                    actor: format!("automation:{}", a.id),
                                },
                            )
                            .await?;
                            let (rules, _) = store::rules(txn, tenant).await?;
                            let (_, new) =
                                store::rebuild_journey(txn, tenant, contact, model, &rules.to_domain(), now_micros())
                                    .await?;
                            let all = store::transitions_of(txn, tenant, contact, model.id).await?;
                            publisher.stage_changes(txn, tenant, model, &all, &new).await?;
                            next.extend(stage_triggers(&new));
                            all_new.extend(new);
                            notes.push(format!("moved to {s}"));
                        }
                        Some(pb::action::Kind::AddTag(t) | pb::action::Kind::RemoveTag(t)) => {
                            let topic = if matches!(action.kind, Some(pb::action::Kind::AddTag(_))) {
                                "contacts.add_tag"
                            } else {
                                "contacts.remove_tag"
                            };
                            publish(txn, publisher, tenant, a, contact, topic, [("tag".to_string(), t.clone())].into())
                                .await?;
                            notes.push(format!("{topic} {t}"));
                        }
                        Some(pb::action::Kind::RequestSurvey(survey)) => {
                            publish(
                                txn,
                                publisher,
                                tenant,
                                a,
                                contact,
                                "feedback.request_survey",
                                [("survey_id".to_string(), survey.clone())].into(),
                            )
                            .await?;
                            notes.push(format!("survey {survey} requested"));
                        }
                        Some(pb::action::Kind::PublishWebhook(w)) => {
                            publish(txn, publisher, tenant, a, contact, &w.topic, w.payload.clone()).await?;
                            notes.push(format!("published {}", w.topic));
                        }
                        None => {}
                    }
                }
                let (outcome, message) = match failed {
                    Some(f) => (pb::RunOutcome::Failed, f),
                    None => (pb::RunOutcome::Succeeded, notes.join("; ")),
                };
                store::automations::log_run(txn, run_row(tenant, a, contact, &trig.reference(), outcome, &message))
                    .await?;
            }
        }
        triggers = next;
    }
    Ok(all_new)
}

async fn publish(
    txn: &impl ConnectionTrait,
    publisher: &crate::events::Publisher,
    tenant: &TenantId,
    a: &automation::Model,
    contact: Uuid,
    topic: &str,
    payload: std::collections::HashMap<String, String>,
) -> Result<(), Error> {
    publisher
        .automation(
            txn,
            tenant,
            ev::AutomationTriggered {
                automation_id: a.id.clone(),
                contact_id: contact.to_string(),
                topic: topic.to_owned(),
                payload,
            },
        )
        .await
}

// ---- CRUD ----

fn check(a: &pb::Automation, v: &mut Violations) {
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
    let a = req.automation.ok_or_else(|| Error::invalid("automation", "is required"))?;
    let mut v = Violations::new();
    check(&a, &mut v);
    let rid = if req.request_id.is_empty() { None } else { v.check(uuid("request_id", &req.request_id)) };
    v.finish()?;
    let txn = clm_platform::db::begin_write(&api.db).await?;
    let model =
        store::get_model(&txn, &ctx.tenant, if a.model_id.is_empty() { "default" } else { &a.model_id }).await?;
    let id = rid.map_or_else(Uuid::now_v7, |r| {
        Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("{}/automation/{r}", ctx.tenant).as_bytes())
    });
    if rid.is_some()
        && let Ok(existing) = find(&txn, &ctx.tenant, id).await
    {
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
    let expected = v.check(etag_version("automation.etag", &a.etag)).flatten();
    let paths: Vec<String> = req.update_mask.map(|m| m.paths).unwrap_or_default();
    const PATHS: [&str; 5] = ["display_name", "enabled", "trigger", "conditions", "actions"];
    for p in &paths {
        if !PATHS.contains(&p.as_str()) {
            v.add("update_mask", format!("unknown path {p:?}; one of {}", PATHS.join(", ")));
        }
    }
    v.finish()?;
    let txn = clm_platform::db::begin_write(&api.db).await?;
    let current = find(&txn, &ctx.tenant, id.expect("checked")).await?;
    if expected.is_some_and(|e| e != current.version) {
        return Err(Error::Aborted("etag mismatch: the automation changed; re-read and retry".into()).into());
    }
    let mut next = to_pb(&current);
    let has = |p: &str| paths.is_empty() || paths.iter().any(|x| x == p);
    if has("display_name") && (!paths.is_empty() || !a.display_name.is_empty()) {
        next.display_name.clone_from(&a.display_name);
    }
    if has("enabled") && !paths.is_empty() {
        next.enabled = a.enabled;
    }
    if has("trigger") && (!paths.is_empty() || a.trigger.is_some()) {
        next.trigger.clone_from(&a.trigger);
    }
    if has("conditions") && (!paths.is_empty() || !a.conditions.is_empty()) {
        next.conditions.clone_from(&a.conditions);
    }
    if has("actions") && (!paths.is_empty() || !a.actions.is_empty()) {
        next.actions.clone_from(&a.actions);
    }
    let mut v = Violations::new();
    check(&next, &mut v);
    v.finish()?;
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
    let expected = v.check(etag_version("etag", &req.etag)).flatten();
    v.finish()?;
    let txn = clm_platform::db::begin_write(&api.db).await?;
    let current = find(&txn, &ctx.tenant, id.expect("checked")).await?;
    if expected.is_some_and(|e| e != current.version) {
        return Err(Error::Aborted("etag mismatch: the automation changed; re-read and retry".into()).into());
    }
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
