//! Messages to contacts: templates rendered per contact, queued as deliveries in the caller's
//! transaction ([`enqueue`]), and sent after commit by the [`sender`] (in [`lanes`]) through a
//! [`transport`] (SMTP, signed webhooks), only while the contact's consent allows.
//!
//! Modules, top to bottom: `lanes` (what is sent when: one lane per channel) ▸ `sender` (one
//! delivery: lease, consent, render, send, record) ▸ `compose` (consent, address,
//! variables, rendering for one contact) ▸ `contact` (the contact as messages see it) ▸
//! `unsubscribe` (recording a link's use: suppression + event) ▸ `links` (signed unsubscribe
//! links) ▸ `transport` (SMTP, webhooks, backoff).

pub mod compose;
pub mod contact;
pub mod lanes;
pub mod links;
pub mod sender;
pub mod transport;
pub mod unsubscribe;

use std::sync::Arc;

use clm_platform::events::UnitOfWork;
use clm_platform::{Error, TenantId};
use clm_proto::lifecycle::v1 as pb;
use prost::Message as _;
use sea_orm::ConnectionTrait;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::domain::message::{SurveyInvite, survey_invitation};
use crate::store::entities::delivery;
use crate::store::{self, now_micros};

/// What asks for a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    Api,
    Automation(&'a str),
    Campaign(&'a str),
    /// A feedback survey invitation or one of its reminders (SurveyRequested).
    Survey(&'a SurveyInvite),
}

/// The template id of lifecycle's built-in survey invitation (an email, purpose FEEDBACK:
/// [`survey_invitation`]), used when a survey names no template of its own. It is no stored
/// template: deliveries show this id.
pub const SURVEY_INVITATION_TEMPLATE: Uuid = Uuid::from_u128(0xfeed);

/// What a delivery carries beyond the contact, stored with it (`deliveries.context`, JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extra {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub survey: Option<SurveyInvite>,
}

impl Extra {
    /// The context stored with `d` (none when empty or unreadable).
    pub fn of(d: &delivery::Model) -> Extra {
        if d.context.is_empty() { Extra::default() } else { serde_json::from_str(&d.context).unwrap_or_default() }
    }
}

/// A built-in template by id (`SURVEY_INVITATION_TEMPLATE`), if `id` is one.
pub fn builtin_template(id: &str) -> Option<pb::MessageTemplate> {
    (Uuid::parse_str(id).ok()? == SURVEY_INVITATION_TEMPLATE).then(|| pb::MessageTemplate {
        id: SURVEY_INVITATION_TEMPLATE.to_string(),
        display_name: "Survey invitation (built-in)".into(),
        channel: pb::MessageChannel::Email as i32,
        purpose: pb::MessagePurpose::Feedback as i32,
        email: Some(pb::EmailContent {
            subject: survey_invitation::SUBJECT.into(),
            html_body: survey_invitation::HTML.into(),
            text_body: survey_invitation::TEXT.into(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The template a survey's invitations go with: the survey's own (`raw`, a UUID) when it
/// exists and its purpose is FEEDBACK (consent for feedback is what the contact gave), else
/// the built-in invitation, saying why in the log.
pub async fn survey_template(db: &impl ConnectionTrait, tenant: &TenantId, raw: &str) -> Result<Uuid, Error> {
    if raw.is_empty() {
        return Ok(SURVEY_INVITATION_TEMPLATE);
    }
    let Ok(id) = Uuid::parse_str(raw) else {
        tracing::warn!(template = raw, "survey names no valid template id; the built-in invitation is sent");
        return Ok(SURVEY_INVITATION_TEMPLATE);
    };
    let row = match store::messaging::find_template(db, tenant, id).await {
        Ok(row) => row,
        Err(Error::NotFound { .. }) => {
            tracing::warn!(template = raw, "survey's template does not exist; the built-in invitation is sent");
            return Ok(SURVEY_INVITATION_TEMPLATE);
        }
        Err(e) => return Err(e),
    };
    let t = pb::MessageTemplate::decode(row.body.as_slice()).map_err(Error::internal)?;
    if t.purpose == pb::MessagePurpose::Feedback as i32 {
        Ok(id)
    } else {
        tracing::warn!(template = raw, "survey's template is not for FEEDBACK; the built-in invitation is sent");
        Ok(SURVEY_INVITATION_TEMPLATE)
    }
}

/// Queue template `template` for `contact` in `work` (the change that asks for it): the
/// delivery exists exactly when that change commits. `id` makes a retried request queue the
/// same delivery. NOT_FOUND when the template does not exist (`SURVEY_INVITATION_TEMPLATE`
/// always does).
pub async fn enqueue(
    work: &UnitOfWork,
    tenant: &TenantId,
    id: Uuid,
    contact: Uuid,
    template: Uuid,
    source: Source<'_>,
) -> Result<delivery::Model, Error> {
    let (template_id, channel) = if template == SURVEY_INVITATION_TEMPLATE {
        (template.to_string(), "email".to_owned())
    } else {
        let t = store::messaging::find_template(work, tenant, template).await?;
        (t.id, t.channel)
    };
    let now = now_micros();
    let (source, automation, campaign, extra) = match source {
        Source::Api => ("api", String::new(), String::new(), Extra::default()),
        Source::Automation(a) => ("automation", a.to_owned(), String::new(), Extra::default()),
        Source::Campaign(c) => ("campaign", String::new(), c.to_owned(), Extra::default()),
        Source::Survey(s) => ("survey", String::new(), String::new(), Extra { survey: Some(s.clone()) }),
    };
    let (invitation_id, reminder) =
        extra.survey.as_ref().map_or((String::new(), 0), |s| (s.invitation_id.clone(), i64::from(s.reminder)));
    let context = if extra == Extra::default() {
        String::new()
    } else {
        serde_json::to_string(&extra).map_err(Error::internal)?
    };
    let row = delivery::Model {
        id: id.to_string(),
        tenant_id: tenant.as_str().to_owned(),
        contact_id: contact.to_string(),
        template_id,
        channel,
        source: source.to_owned(),
        automation_id: automation,
        campaign_id: campaign,
        state: "queued".into(),
        reason: String::new(),
        recipient: String::new(),
        subject: String::new(),
        attempt_count: 0,
        next_attempt_time: now,
        lease_until: 0,
        create_time: now,
        finish_time: None,
        invitation_id,
        reminder,
        context,
    };
    store::messaging::insert_delivery(work, row.clone()).await?;
    Ok(row)
}

/// Wakes this process's senders (call after the commit that queued a delivery); without it a
/// sender finds the delivery at its next poll.
pub fn wake() {
    wake_handle().notify_waiters();
}

/// The notifier [`wake`] uses, for the sender to wait on.
pub fn wake_handle() -> Arc<Notify> {
    static WAKE: std::sync::OnceLock<Arc<Notify>> = std::sync::OnceLock::new();
    WAKE.get_or_init(|| Arc::new(Notify::new())).clone()
}
