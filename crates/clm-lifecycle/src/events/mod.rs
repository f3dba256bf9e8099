//! What lifecycle publishes (StageChanged, JourneyEventRecorded, AutomationTriggered) and
//! consumes (contact events, to know which contacts exist and to follow merges and erasures;
//! ResponseSubmitted and ReviewRecorded, journey events of their own). Consumed events change
//! journeys through `journeys::advance` like every other path.

pub mod scheduler;
pub mod watch;

use async_trait::async_trait;
use clm_platform::convert::timestamp;
use clm_platform::events::UnitOfWork;
use clm_platform::events::inbox::EventHandler;
use clm_platform::events::outbox::OutboxWriter;
use clm_platform::{Result, TenantId};
use clm_proto::events::v1 as ev;
use clm_proto::events::v1::event_envelope::Payload;
use clm_proto::lifecycle::v1 as pb;
use sea_orm::{ConnectionTrait as _, DatabaseTransaction};
use uuid::Uuid;

use crate::api::convert::{SURVEY_RESPONSE, kind_key};
use crate::journeys::{Happened, SurveyAnswer, advance};
use crate::store::entities::{journey_event, transition};
use crate::store::{self, ModelRecord, now_micros};

/// Appends lifecycle events to the outbox.
#[derive(Clone, Debug)]
pub struct Publisher {
    outbox: OutboxWriter,
}

impl Publisher {
    pub fn new(outbox: OutboxWriter) -> Self {
        Self { outbox }
    }

    /// StageChanged for each new transition, after a retraction of each dropped one. Retractions
    /// go newest first, so a consumer that keeps "the current stage" and undoes a retracted
    /// transition back to the stage it left (feedback) unwinds the history in order.
    pub async fn stage_changes(
        &self,
        txn: &UnitOfWork,
        tenant: &TenantId,
        model: &ModelRecord,
        all: &[transition::Model],
        new: &[transition::Model],
        dropped: &crate::store::Dropped,
    ) -> Result<()> {
        let cat = |k: &Option<String>| {
            k.as_deref()
                .and_then(|k| crate::domain::model::StageKey::parse("k", k).ok())
                .and_then(|k| model.model.stage(&k).map(|s| s.category))
                .map(|c| match c {
                    crate::domain::model::Category::Prospect => "prospect",
                    crate::domain::model::Category::Customer => "customer",
                    crate::domain::model::Category::Lost => "lost",
                })
                .unwrap_or_default()
                .to_owned()
        };
        let stage_of = |k: &str| {
            crate::domain::model::StageKey::parse("k", k).ok().and_then(|k| {
                let pos = model.model.stages().iter().position(|s| s.key == k)?;
                Some((pos, model.model.stages()[pos].role))
            })
        };
        // Retractions first, so a consumer undoes the old history before it counts the new.
        let mut dropped: Vec<_> = dropped.iter().collect();
        dropped.sort_by_key(|(t, _)| std::cmp::Reverse(t.seq));
        let retractions = dropped.into_iter().map(|(t, enter)| (t, *enter, true));
        let additions =
            new.iter().map(|t| (t, all.iter().filter(|p| p.seq < t.seq).max_by_key(|p| p.seq).map(|p| p.at), false));
        for (t, prev_enter, retracted) in retractions.chain(additions) {
            let (position, role) = stage_of(&t.to_stage).unwrap_or((0, crate::domain::model::Role::Normal));
            let cause = match crate::api::convert::cause_pb(&t.cause) {
                pb::TransitionCause::Manual => ev::TransitionCause::Manual,
                pb::TransitionCause::Automation => ev::TransitionCause::Automation,
                _ => ev::TransitionCause::Rule,
            };
            let p = Payload::StageChanged(ev::StageChanged {
                contact_id: t.contact_id.clone(),
                model_id: t.model_id.clone(),
                from_stage: t.from_stage.clone().unwrap_or_default(),
                to_stage: t.to_stage.clone(),
                to_category: cat(&Some(t.to_stage.clone())),
                from_category: cat(&t.from_stage),
                transition_id: t.id.clone(),
                cause: cause as i32,
                cause_ref: if t.cause_ref.is_empty() { t.cause.clone() } else { t.cause_ref.clone() },
                reactivation: t.reactivation,
                transition_time: Some(timestamp(t.at)),
                from_stage_enter_time: prev_enter.map(timestamp),
                to_role: match role {
                    crate::domain::model::Role::Dormant => "dormant",
                    crate::domain::model::Role::Churned => "churned",
                    crate::domain::model::Role::Reactivated => "reactivated",
                    crate::domain::model::Role::Normal => "",
                }
                .into(),
                to_stage_position: i32::try_from(position).unwrap_or(i32::MAX),
                sequence: i32::try_from(t.seq).unwrap_or(i32::MAX),
                churn_excludes_dormancy: model.churn_excludes_dormancy,
                retracted,
            });
            self.outbox.append(txn, tenant, "journey", &t.contact_id, t.at, p).await?;
        }
        Ok(())
    }

    pub async fn automation(&self, txn: &UnitOfWork, tenant: &TenantId, a: ev::AutomationTriggered) -> Result<()> {
        let contact = a.contact_id.clone();
        self.outbox.append(txn, tenant, "journey", &contact, now_micros(), Payload::AutomationTriggered(a)).await?;
        Ok(())
    }

    pub async fn event_recorded(
        &self,
        txn: &UnitOfWork,
        tenant: &TenantId,
        row: &journey_event::Model,
        e: &pb::JourneyEvent,
    ) -> Result<()> {
        use pb::journey_event::Detail;
        let kind = match kind_key(e) {
            "touchpoint" => ev::JourneyEventKind::Touchpoint,
            "purchase" => ev::JourneyEventKind::Purchase,
            "referral" => ev::JourneyEventKind::Referral,
            "review" => ev::JourneyEventKind::Review,
            _ => ev::JourneyEventKind::Custom,
        };
        let mut out = ev::JourneyEventRecorded {
            contact_id: row.contact_id.clone(),
            journey_event_id: row.id.clone(),
            kind: kind as i32,
            occur_time: Some(timestamp(row.occur_time)),
            ..Default::default()
        };
        match &e.detail {
            Some(Detail::Touchpoint(t)) => {
                out.channel =
                    format!("{:?}", pb::TouchpointChannel::try_from(t.channel).unwrap_or_default()).to_lowercase();
                out.detail = format!("{:?}", pb::TouchpointKind::try_from(t.kind).unwrap_or_default()).to_lowercase();
            }
            Some(Detail::Purchase(p)) => {
                out.order_id.clone_from(&p.order_id);
                out.amount.clone_from(&p.amount);
                out.items = p.items;
            }
            Some(Detail::Referral(r)) => out.referred_contact_id.clone_from(&r.referred_contact_id),
            Some(Detail::Review(r)) => out.rating = r.rating,
            Some(Detail::Custom(c)) => out.detail.clone_from(&c.name),
            None => {}
        }
        self.outbox
            .append(txn, tenant, "journey", &row.contact_id, row.occur_time, Payload::JourneyEventRecorded(out))
            .await?;
        Ok(())
    }
}

/// A journey event learnt from another service's event (idempotent by `key`).
#[allow(clippy::too_many_arguments)]
fn event_row(
    tenant: &str,
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
        tenant_id: tenant.to_owned(),
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

/// Consumes contact and feedback events. The automations a consumed event owes run after the
/// batch commits, from the runner (`journeys::automations::spawn_runner`).
#[derive(Debug)]
pub struct LifecycleHandler {
    pub publisher: Publisher,
}

#[async_trait]
impl EventHandler for LifecycleHandler {
    async fn handle(&self, txn: &UnitOfWork, e: &ev::EventEnvelope) -> Result<()> {
        let tenant_str = e.tenant_id.as_str();
        let Ok(tenant) = TenantId::parse(tenant_str) else { return Ok(()) };
        match &e.payload {
            Some(Payload::ContactCreated(c)) => {
                let f = c.facts.clone().unwrap_or_default();
                store::set_contact_facts(txn, tenant_str, &c.contact_id, &f.tags, &f.acquisition_channel).await?;
            }
            Some(Payload::ContactUpdated(u)) => {
                let f = u.facts.clone().unwrap_or_default();
                store::set_contact_facts(txn, tenant_str, &u.contact_id, &f.tags, &f.acquisition_channel).await?;
            }
            Some(Payload::ContactDeleted(d)) => {
                let state = if d.restored { "active" } else { "deleted" };
                store::set_contact_state(txn, tenant_str, &d.contact_id, state).await?;
            }
            Some(Payload::ContactErased(x)) => {
                store::erase_contact(txn, tenant_str, &x.contact_id).await?;
                store::set_contact_state(txn, tenant_str, &x.contact_id, "erased").await?;
            }
            Some(Payload::ContactMerged(m)) => {
                let Ok(survivor) = Uuid::parse_str(&m.survivor_id) else { return Ok(()) };
                let mut models = Vec::new();
                for merged in &m.merged_ids {
                    store::set_contact_state(txn, tenant_str, merged, "merged").await?;
                    for model in store::reassign_contact(txn, tenant_str, merged, &m.survivor_id).await? {
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
                let kind = match ev::SurveyKind::try_from(r.kind) {
                    Ok(ev::SurveyKind::Nps) => "nps",
                    Ok(ev::SurveyKind::Csat) => "csat",
                    Ok(ev::SurveyKind::Ces) => "ces",
                    _ => "custom",
                };
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
                    tenant_str,
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
                let row = event_row(
                    tenant_str,
                    contact,
                    &model,
                    at,
                    format!("review:{}", r.review_id),
                    "review",
                    None,
                    &body,
                );
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
