//! The automation engine: runs a tenant's automations when their trigger fires.
//!
//! Triggers: a stage entered or exited, a journey event of a kind, a survey response in a
//! score band, inactivity (from the scheduler). Conditions: the contact is in a stage, has a
//! tag, came from a channel, matches a contacts filter, is in a segment (the last two asked of
//! contacts over gRPC). Actions: move to a stage, add/remove a tag (asked of contacts by event),
//! request a survey (asked of feedback by event), publish a webhook-style event. A move can fire
//! further automations; chains stop at [`MAX_CHAIN`] (the run is logged LOOP_LIMITED).

use clm_platform::{Error, TenantId};
use clm_proto::events::v1 as ev;
use clm_proto::lifecycle::v1 as pb;
use prost::Message;
use sea_orm::ConnectionTrait;
use uuid::Uuid;

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
                            let (_, new, dropped) =
                                store::rebuild_journey(txn, tenant, contact, model, &rules.to_domain(), now_micros())
                                    .await?;
                            let all = store::transitions_of(txn, tenant, contact, model.id).await?;
                            publisher.stage_changes(txn, tenant, model, &all, &new, &dropped).await?;
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
