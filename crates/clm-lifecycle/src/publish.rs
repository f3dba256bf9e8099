//! What lifecycle publishes, appended to the outbox in the caller's transaction: StageChanged
//! (and its retractions), JourneyEventRecorded, AutomationTriggered, LifecycleModelChanged and
//! UnsubscribeRecorded.
//! Below the use cases that publish (`journeys`, the consumers in `events`, the handlers in
//! `api`), so each of them can.

use clm_platform::convert::timestamp;
use clm_platform::events::UnitOfWork;
use clm_platform::events::outbox::OutboxWriter;
use clm_platform::{Result, TenantId};
use clm_proto::events::v1 as ev;
use clm_proto::events::v1::event_envelope::Payload;
use clm_proto::lifecycle::v1 as pb;

use crate::convert::kind_key;
use crate::store::entities::{journey_event, transition};
use crate::store::{ModelRecord, now_micros};

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
            let cause = match crate::convert::cause_pb(&t.cause) {
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
                model_revision: model.version,
                retracted,
            });
            self.outbox.append(txn, tenant, "journey", &t.contact_id, t.at, p).await?;
        }
        Ok(())
    }

    /// LifecycleModelChanged: a model's settings as of its revision, in the transaction that
    /// created or updated it, so consumers (metrics' churn basis) learn a change without
    /// waiting for the model's next StageChanged.
    pub async fn model_changed(&self, txn: &UnitOfWork, tenant: &TenantId, model: &ModelRecord) -> Result<()> {
        let p = Payload::LifecycleModelChanged(ev::LifecycleModelChanged {
            model_id: model.id.to_string(),
            revision: model.version,
            churn_excludes_dormancy: model.churn_excludes_dormancy,
            update_time: Some(timestamp(model.update_time)),
        });
        let id = model.id.to_string();
        self.outbox.append(txn, tenant, "lifecycle_model", &id, model.update_time, p).await?;
        Ok(())
    }

    /// CampaignEnrolmentChanged: an enrolment began or ended (metrics: conversion by campaign).
    pub async fn enrolment(
        &self,
        txn: &UnitOfWork,
        tenant: &TenantId,
        campaign_name: &str,
        e: &crate::store::entities::enrolment::Model,
    ) -> Result<()> {
        let at = e.finish_time.unwrap_or(e.enrol_time);
        let p = Payload::CampaignEnrolmentChanged(ev::CampaignEnrolmentChanged {
            campaign_id: e.campaign_id.clone(),
            campaign_name: campaign_name.to_owned(),
            enrolment_id: e.id.clone(),
            contact_id: e.contact_id.clone(),
            state: e.state.clone(),
            converted: e.converted,
            step_key: e.step_key.clone(),
            exit_reason: e.exit_reason.clone(),
            enrol_time: Some(timestamp(e.enrol_time)),
            finish_time: e.finish_time.map(timestamp),
        });
        self.outbox.append(txn, tenant, "journey", &e.contact_id, at, p).await?;
        Ok(())
    }

    /// UnsubscribeRecorded: a contact used a message's unsubscribe link, in the transaction
    /// that recorded the suppression (`messaging::unsubscribe`); contacts withdraws the consent.
    /// Keyed by the delivery; ordered among the contact's events by its `contact_id`.
    pub async fn unsubscribed(
        &self,
        txn: &UnitOfWork,
        tenant: &TenantId,
        u: ev::UnsubscribeRecorded,
        at: i64,
    ) -> Result<()> {
        let delivery = u.delivery_id.clone();
        self.outbox.append(txn, tenant, "delivery", &delivery, at, Payload::UnsubscribeRecorded(u)).await?;
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
