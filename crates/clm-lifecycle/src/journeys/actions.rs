//! What automations and campaign steps do to a contact, written once for both: move it to a
//! stage (through [`advance`], so the move's own automations and campaigns are owed one level
//! deeper), add or remove a tag and request a survey (published for contacts and feedback),
//! publish a webhook-style event, queue a message (`messaging::enqueue`). Runs inside the
//! caller's transaction and holds no client.

use std::collections::HashMap;

use clm_platform::events::UnitOfWork;
use clm_platform::{Error, TenantId};
use clm_proto::events::v1 as ev;
use uuid::Uuid;

use super::{Happened, advance};
use crate::domain::model::StageKey;
use crate::messaging::{self, Source};
use crate::publish::Publisher;
use crate::store::entities::manual_move;
use crate::store::{self, ModelRecord, now_micros};

/// One action.
#[derive(Debug, Clone, Copy)]
pub enum Act<'a> {
    MoveToStage(&'a str),
    AddTag(&'a str),
    RemoveTag(&'a str),
    RequestSurvey(&'a str),
    Publish { topic: &'a str, payload: &'a HashMap<String, String> },
    SendMessage(&'a str),
}

/// Who acts: an automation or a campaign.
#[derive(Debug, Clone, Copy)]
pub enum Actor<'a> {
    Automation { id: &'a str, name: &'a str },
    Campaign { id: &'a str, name: &'a str },
}

impl Actor<'_> {
    /// As it is named in events and moves: `automation:<id>`, `campaign:<id>`.
    fn reference(&self) -> String {
        match self {
            Actor::Automation { id, .. } => format!("automation:{id}"),
            Actor::Campaign { id, .. } => format!("campaign:{id}"),
        }
    }

    fn reason(&self) -> String {
        match self {
            Actor::Automation { name, .. } => format!("automation {name}"),
            Actor::Campaign { name, .. } => format!("campaign {name}"),
        }
    }
}

/// What an action did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// For the run log.
    pub note: String,
    /// Transitions a move made.
    pub moved: usize,
    /// A queued message's delivery id.
    pub delivery: Option<String>,
}

/// Carry out `act` for `contact` in `txn`. `Ok(Err(why))`: the action could not be done (a
/// stage the model lacks, a deleted template) — the caller logs it; `Err`: the store failed.
#[allow(clippy::too_many_arguments)]
pub async fn perform(
    txn: &UnitOfWork,
    publisher: &Publisher,
    tenant: &TenantId,
    model: &ModelRecord,
    contact: Uuid,
    depth: usize,
    actor: Actor<'_>,
    act: Act<'_>,
) -> Result<Result<Done, String>, Error> {
    let done = |note: String| Ok(Ok(Done { note, moved: 0, delivery: None }));
    match act {
        Act::MoveToStage(s) => {
            let Ok(to) = StageKey::parse("move_to_stage", s) else { return Ok(Err(format!("bad stage {s:?}"))) };
            if model.model.stage(&to).is_none() {
                return Ok(Err(format!("the model has no stage {s}")));
            }
            let current = store::get_journey(txn, tenant, contact, model.id).await?.and_then(|j| j.current_stage);
            if current.as_deref() == Some(to.as_str()) {
                return done(format!("already in {s}"));
            }
            let now = now_micros();
            let row = manual_move::Model {
                id: Uuid::now_v7().to_string(),
                tenant_id: tenant.as_str().to_owned(),
                contact_id: contact.to_string(),
                model_id: model.id.to_string(),
                to_stage: to.as_str().to_owned(),
                at: now,
                reason: actor.reason(),
                actor: actor.reference(),
            };
            let advanced =
                advance(txn, publisher, tenant, contact, model, now, Happened::Automated { row, depth }).await?;
            Ok(Ok(Done { note: format!("moved to {s}"), moved: advanced.new.len(), delivery: None }))
        }
        Act::AddTag(t) | Act::RemoveTag(t) => {
            let topic = if matches!(act, Act::AddTag(_)) { "contacts.add_tag" } else { "contacts.remove_tag" };
            publish(txn, publisher, tenant, contact, actor, topic, [("tag".to_string(), t.to_owned())].into()).await?;
            done(format!("{topic} {t}"))
        }
        Act::RequestSurvey(survey) => {
            let payload = [("survey_id".to_string(), survey.to_owned())].into();
            publish(txn, publisher, tenant, contact, actor, "feedback.request_survey", payload).await?;
            done(format!("survey {survey} requested"))
        }
        Act::Publish { topic, payload } => {
            publish(txn, publisher, tenant, contact, actor, topic, payload.clone()).await?;
            done(format!("published {topic}"))
        }
        Act::SendMessage(t) => {
            let Ok(template) = Uuid::parse_str(t) else { return Ok(Err(format!("bad message template id {t:?}"))) };
            let source = match actor {
                Actor::Automation { id, .. } => Source::Automation(id),
                Actor::Campaign { id, .. } => Source::Campaign(id),
            };
            match messaging::enqueue(txn, tenant, Uuid::now_v7(), contact, template, source).await {
                Ok(d) => Ok(Ok(Done { note: format!("message {} queued", d.id), moved: 0, delivery: Some(d.id) })),
                Err(Error::NotFound { .. }) => Ok(Err(format!("no message template {t}"))),
                Err(e) => Err(e),
            }
        }
    }
}

async fn publish(
    txn: &UnitOfWork,
    publisher: &Publisher,
    tenant: &TenantId,
    contact: Uuid,
    actor: Actor<'_>,
    topic: &str,
    payload: HashMap<String, String>,
) -> Result<(), Error> {
    // Automations publish under their own id; campaigns as `campaign:<id>`.
    let automation_id = match actor {
        Actor::Automation { id, .. } => id.to_owned(),
        Actor::Campaign { .. } => actor.reference(),
    };
    let event =
        ev::AutomationTriggered { automation_id, contact_id: contact.to_string(), topic: topic.to_owned(), payload };
    publisher.automation(txn, tenant, event).await
}
