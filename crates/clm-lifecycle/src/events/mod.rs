//! What lifecycle consumes (contact events, to know which contacts exist and to follow merges
//! and erasures; ResponseSubmitted and ReviewRecorded, journey events of their own;
//! SurveyRequested, a survey invitation or reminder to deliver as a message), the
//! scheduler's sweep and the watch feed. Consumed events change journeys through
//! `journeys::advance` like every other path; what lifecycle publishes is in `publish`.

pub mod scheduler;
pub mod watch;

use async_trait::async_trait;
use clm_platform::events::UnitOfWork;
use clm_platform::events::inbox::EventHandler;
use clm_platform::{Result, TenantId};
use clm_proto::events::v1 as ev;
use clm_proto::events::v1::event_envelope::Payload;
use clm_proto::lifecycle::v1 as pb;
use sea_orm::{ConnectionTrait as _, DatabaseTransaction};
use uuid::Uuid;

use crate::convert::SURVEY_RESPONSE;
use crate::domain::contact::ContactState;
use crate::domain::message::SurveyInvite;
use crate::journeys::{Happened, SurveyAnswer, advance};
use crate::messaging::{self, Source};
use crate::publish::Publisher;
use crate::store::entities::journey_event;
use crate::store::{self, ModelRecord, now_micros};

/// A journey event learnt from another service's event (idempotent by `key`).
#[allow(clippy::too_many_arguments)]
fn event_row(
    tenant: &TenantId,
    contact: Uuid,
    model: &ModelRecord,
    at: i64,
    key: String,
    kind: &str,
    score: Option<i32>,
    body: &pb::JourneyEvent,
) -> journey_event::Model {
    journey_event::Model {
        id: Uuid::now_v7().to_string(),
        tenant_id: tenant.as_str().to_owned(),
        contact_id: contact.to_string(),
        model_id: model.id.to_string(),
        occur_time: at,
        record_time: now_micros(),
        idempotency_key: Some(key),
        kind: kind.to_owned(),
        lead: false,
        score,
        body: prost::Message::encode_to_vec(body),
        order_id: None,
    }
}

fn kind_key(kind: i32) -> &'static str {
    match ev::SurveyKind::try_from(kind) {
        Ok(ev::SurveyKind::Nps) => "nps",
        Ok(ev::SurveyKind::Csat) => "csat",
        Ok(ev::SurveyKind::Ces) => "ces",
        _ => "custom",
    }
}

/// Queue the message of a survey invitation (or of its reminder) in the consumer's unit of
/// work: the survey's own template if it names a FEEDBACK one, else the built-in invitation.
/// The delivery's id is derived from the invitation and the reminder number, so the same
/// request seen again (a replay, a republished event) queues nothing more. Consent (email,
/// FEEDBACK) is the sender's to check when it sends.
async fn queue_survey(txn: &UnitOfWork, tenant: &TenantId, r: &ev::SurveyRequested) -> Result<()> {
    let Ok(contact) = Uuid::parse_str(&r.contact_id) else { return Ok(()) };
    let name = format!("survey/{}/{}/{}", tenant.as_str(), r.invitation_id, r.reminder);
    let id = Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes());
    if store::messaging::find_delivery(txn, tenant, id).await.is_ok() {
        return Ok(());
    }
    let template = messaging::survey_template(txn, tenant, &r.message_template_id).await?;
    let invite = SurveyInvite {
        invitation_id: r.invitation_id.clone(),
        survey_id: r.survey_id.clone(),
        name: r.survey_name.clone(),
        kind: kind_key(r.kind).to_owned(),
        token: r.token.clone(),
        expire_time: r.expire_time.as_ref().and_then(clm_platform::convert::micros).unwrap_or_default(),
        reminder: r.reminder,
    };
    let d = messaging::enqueue(txn, tenant, id, contact, template, Source::Survey(&invite)).await?;
    tracing::info!(delivery = %d.id, invitation = %r.invitation_id, reminder = r.reminder, "survey invitation queued");
    Ok(())
}

/// Consumes contact and feedback events. The automations a consumed event owes run after the
/// batch commits, from the runner (`journeys::automations::spawn_runner`).
#[derive(Debug)]
pub struct LifecycleHandler {
    pub publisher: Publisher,
}

#[async_trait]
impl EventHandler for LifecycleHandler {
    async fn handle(&self, txn: &UnitOfWork, e: &ev::EventEnvelope) -> Result<()> {
        let Ok(tenant) = TenantId::parse(&e.tenant_id) else { return Ok(()) };
        match &e.payload {
            Some(Payload::ContactCreated(c)) => {
                let f = c.facts.clone().unwrap_or_default();
                store::set_contact_facts(txn, &tenant, &c.contact_id, &f.tags, &f.acquisition_channel).await?;
            }
            Some(Payload::ContactUpdated(u)) => {
                let f = u.facts.clone().unwrap_or_default();
                store::set_contact_facts(txn, &tenant, &u.contact_id, &f.tags, &f.acquisition_channel).await?;
            }
            Some(Payload::ContactDeleted(d)) => {
                let state = if d.restored { ContactState::Active } else { ContactState::Deleted };
                store::set_contact_state(txn, &tenant, &d.contact_id, state).await?;
            }
            Some(Payload::ContactErased(x)) => {
                store::erase_contact(txn, &tenant, &x.contact_id).await?;
                store::set_contact_state(txn, &tenant, &x.contact_id, ContactState::Erased).await?;
            }
            Some(Payload::ContactMerged(m)) => {
                let Ok(survivor) = Uuid::parse_str(&m.survivor_id) else { return Ok(()) };
                let mut models = Vec::new();
                for merged in &m.merged_ids {
                    store::set_contact_state(txn, &tenant, merged, ContactState::Merged).await?;
                    for model in store::reassign_contact(txn, &tenant, merged, &m.survivor_id).await? {
                        if !models.contains(&model) {
                            models.push(model);
                        }
                    }
                }
                for m in &models {
                    let model = store::get_model(txn, &tenant, m).await?;
                    advance(txn, &self.publisher, &tenant, survivor, &model, now_micros(), Happened::Merged).await?;
                }
            }
            // A response is customer activity, with a score or without (a comment alone).
            Some(Payload::ResponseSubmitted(r)) if r.complete => {
                let Ok(contact) = Uuid::parse_str(&r.contact_id) else { return Ok(()) };
                let kind = kind_key(r.kind);
                let model = store::default_model(txn, &tenant).await?;
                let mut properties: std::collections::HashMap<String, String> =
                    [("kind".to_string(), kind.to_string()), ("response_id".to_string(), r.response_id.clone())].into();
                if r.has_score {
                    properties.insert("score".into(), r.score.to_string());
                }
                let body = pb::JourneyEvent {
                    detail: Some(pb::journey_event::Detail::Custom(pb::CustomEvent {
                        name: SURVEY_RESPONSE.into(),
                        properties,
                    })),
                    ..Default::default()
                };
                let at = r.submit_time.as_ref().and_then(clm_platform::convert::micros).unwrap_or_else(now_micros);
                let row = event_row(
                    &tenant,
                    contact,
                    &model,
                    at,
                    format!("response:{}", r.response_id),
                    "custom",
                    (kind == "nps" && r.has_score).then_some(r.score),
                    &body,
                );
                // NPS detractors are flagged at risk (a tag on the contact, through contacts).
                let (rules, _) = store::rules(txn, &tenant).await?;
                if kind == "nps" && r.has_score && r.score <= 6 && rules.detractor_at_risk {
                    self.publisher
                        .automation(
                            txn,
                            &tenant,
                            ev::AutomationTriggered {
                                automation_id: "rule:detractor_at_risk".into(),
                                contact_id: contact.to_string(),
                                topic: "contacts.add_tag".into(),
                                payload: [("tag".to_string(), "at_risk".to_string())].into(),
                            },
                        )
                        .await?;
                }
                if store::insert_event(txn, row.clone()).await? {
                    let survey = r.has_score.then(|| SurveyAnswer {
                        kind: kind.to_owned(),
                        score: r.score,
                        response_id: r.response_id.clone(),
                    });
                    let happened = Happened::Recorded { event: row, custom_name: SURVEY_RESPONSE.into(), survey };
                    advance(txn, &self.publisher, &tenant, contact, &model, now_micros(), happened).await?;
                }
            }
            Some(Payload::SurveyRequested(r)) => queue_survey(txn, &tenant, r).await?,
            Some(Payload::ReviewRecorded(r)) => {
                // A public review is advocacy: recorded on the journey like RecordJourneyEvent would.
                let Ok(contact) = Uuid::parse_str(&r.contact_id) else { return Ok(()) };
                let model = store::default_model(txn, &tenant).await?;
                let body = pb::JourneyEvent {
                    detail: Some(pb::journey_event::Detail::Review(pb::Review {
                        rating: r.rating,
                        platform: r.platform.clone(),
                        url: String::new(),
                    })),
                    ..Default::default()
                };
                let at = r.create_time.as_ref().and_then(clm_platform::convert::micros).unwrap_or_else(now_micros);
                let row =
                    event_row(&tenant, contact, &model, at, format!("review:{}", r.review_id), "review", None, &body);
                if store::insert_event(txn, row.clone()).await? {
                    let happened = Happened::Recorded { event: row, custom_name: String::new(), survey: None };
                    advance(txn, &self.publisher, &tenant, contact, &model, now_micros(), happened).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn reset(&self, txn: &DatabaseTransaction) -> Result<()> {
        // Only the contact directory is rebuilt from events; journeys are lifecycle's own data.
        txn.execute_unprepared("DELETE FROM known_contacts").await?;
        Ok(())
    }
}
