//! One message for one contact: consent, address, variables, rendering. The sender sends what
//! this composes; RenderMessageTemplate shows it (and why it would not go) without sending.

use clm_platform::{Error, TenantId};
use clm_proto::contacts::v1 as cpb;
use clm_proto::lifecycle::v1 as pb;
use sea_orm::ConnectionTrait;
use uuid::Uuid;

use super::contact::{channel_key, consent_channel, purpose_key, purpose_of, refusal, variables};
use super::links::{Links, Unsubscribe};
use crate::domain::message::{Context, Escape, SurveyInvite, one_line, render};
use crate::domain::model::StageKey;
use crate::store;

/// A message ready to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Composed {
    /// The email address, or the webhook URL.
    pub recipient: String,
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
    pub webhook_body: Option<String>,
    pub unsubscribe_url: Option<String>,
    /// Why it would not be sent now (a preview renders it anyway).
    pub refused: Option<String>,
}

/// What composing came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Composition {
    Ready(Composed),
    /// It may not go to this contact now (no consent, no address, ...): the reason.
    Refused(String),
    /// It cannot be made (a template error): the reason.
    Broken(String),
}

/// Whether composing stops at a refusal (sending) or renders anyway and says why (a preview).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Send,
    Preview,
}

/// Compose `template` (id `template_id`) for `contact`, delivery `delivery_id`: the contact's
/// current stage in the default model and its unsubscribes are read from `db`.
#[allow(clippy::too_many_arguments)]
pub async fn compose(
    mode: Mode,
    db: &impl ConnectionTrait,
    links: &Links,
    tenant: &TenantId,
    template_id: &str,
    template: &pb::MessageTemplate,
    contact: &cpb::Contact,
    delivery_id: &str,
) -> Result<Composition, Error> {
    compose_with(mode, db, links, tenant, template_id, template, contact, delivery_id, None).await
}

/// [`compose`] a delivery that carries a survey invitation (`survey.*` variables, the survey
/// link built from its token).
#[allow(clippy::too_many_arguments)]
pub async fn compose_with(
    mode: Mode,
    db: &impl ConnectionTrait,
    links: &Links,
    tenant: &TenantId,
    template_id: &str,
    template: &pb::MessageTemplate,
    contact: &cpb::Contact,
    delivery_id: &str,
    survey: Option<&SurveyInvite>,
) -> Result<Composition, Error> {
    let channel = consent_channel(template);
    let purpose = purpose_of(template);
    let unsubscribed = match channel {
        Some(ch) => {
            store::messaging::suppressed_at(db, tenant, &contact.id, channel_key(ch), purpose_key(purpose)).await?
        }
        None => None,
    };
    let mut refused = refusal(contact, channel, purpose, unsubscribed);
    if mode == Mode::Send
        && let Some(why) = refused.take()
    {
        return Ok(Composition::Refused(why));
    }
    let stage = current_stage(db, tenant, &contact.id).await?;
    let mut ctx = Context {
        contact: variables(contact),
        stage,
        delivery_id: delivery_id.to_owned(),
        unsubscribe_url: None,
        survey: survey.map(|s| s.variables(&links.survey_url(&s.token))),
    };
    let email_channel = template.channel == pb::MessageChannel::Email as i32;
    match (&template.email, &template.webhook) {
        (Some(email), _) if email_channel => {
            if contact.email.is_empty() {
                let why = "no address: the contact has no email".to_owned();
                if mode == Mode::Send {
                    return Ok(Composition::Refused(why));
                }
                refused.get_or_insert(why);
            }
            let link = Unsubscribe {
                t: tenant.as_str().to_owned(),
                c: contact.id.clone(),
                ch: "email".into(),
                p: purpose_key(purpose).into(),
                d: delivery_id.to_owned(),
            };
            let url =
                if mode == Mode::Preview { links.unsubscribe_preview_url() } else { links.unsubscribe_url(&link) };
            ctx.unsubscribe_url = Some(url.clone());
            let value = ctx.to_value();
            let part = |source: &str, escape| {
                if source.is_empty() { Ok(None) } else { render(source, escape, &value).map(Some) }
            };
            let rendered = render(&email.subject, Escape::Text, &value).and_then(|subject| {
                Ok((one_line(&subject), part(&email.html_body, Escape::Html)?, part(&email.text_body, Escape::Text)?))
            });
            Ok(match rendered {
                Ok((subject, html, text)) => Composition::Ready(Composed {
                    recipient: contact.email.clone(),
                    subject,
                    html,
                    text,
                    webhook_body: None,
                    unsubscribe_url: Some(url),
                    refused,
                }),
                Err(e) => Composition::Broken(e),
            })
        }
        (_, Some(hook)) if !email_channel => {
            let body = if hook.body.trim().is_empty() {
                Ok(ctx.default_webhook_body(template_id))
            } else {
                render(&hook.body, Escape::Json, &ctx.to_value())
            };
            Ok(match body {
                Ok(b) => Composition::Ready(Composed {
                    recipient: hook.url.clone(),
                    webhook_body: Some(b),
                    refused,
                    ..Composed::default()
                }),
                Err(e) => Composition::Broken(e),
            })
        }
        _ => Ok(Composition::Broken("the template has no content for its channel".into())),
    }
}

/// The contact's current stage in the tenant's default model: key and display name.
async fn current_stage(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    contact: &str,
) -> Result<Option<(String, String)>, Error> {
    let Ok(contact) = Uuid::parse_str(contact) else { return Ok(None) };
    let model = match store::default_model(db, tenant).await {
        Ok(m) => m,
        Err(Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(key) = store::get_journey(db, tenant, contact, model.id).await?.and_then(|j| j.current_stage) else {
        return Ok(None);
    };
    let name = StageKey::parse("stage", &key)
        .ok()
        .and_then(|k| model.model.stage(&k).map(|s| s.display_name.clone()))
        .unwrap_or_else(|| key.clone());
    Ok(Some((key, name)))
}
