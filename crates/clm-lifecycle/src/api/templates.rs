//! Message templates: CRUD and the preview (RenderMessageTemplate). Every text field is checked
//! when saved (`domain::message::check`): syntax, known variables, valid JSON for webhooks.

use base64::Engine as _;
use clm_platform::convert::{etag, timestamp, uuid};
use clm_platform::crud::{CreateOnce, ExpectedVersion, UpdateMask};
use clm_platform::pagination::page_size;
use clm_platform::{Error, Violations};
use clm_proto::lifecycle::v1 as pb;
use prost::Message;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::LifecycleApi;
use crate::domain::message::{Escape, check as check_text};
use crate::messaging::compose::{Composition, Mode, compose};
use crate::store::entities::message_template;
use crate::store::{self, now_micros};

/// Most templates per tenant.
pub const MAX_TEMPLATES: u64 = 1000;
/// Shortest webhook signing secret.
const MIN_SECRET: usize = 16;

fn channel_key(c: i32) -> &'static str {
    if c == pb::MessageChannel::Webhook as i32 { "webhook" } else { "email" }
}

/// Check a template; `prefix` is the field path of the template in the request.
fn text(v: &mut Violations, field: String, source: &str, escape: Escape) {
    if let Err(e) = check_text(&field, source, escape) {
        v.add(e.field, e.description);
    }
}

pub(super) fn check(t: &pb::MessageTemplate, prefix: &str, v: &mut Violations) {
    let name = t.display_name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        v.add(format!("{prefix}.display_name"), "1 to 200 characters");
    }
    if pb::MessagePurpose::try_from(t.purpose).unwrap_or_default() == pb::MessagePurpose::Unspecified {
        v.add(format!("{prefix}.purpose"), "one of MARKETING, FEEDBACK, TRANSACTIONAL (decides the consent needed)");
    }
    match pb::MessageChannel::try_from(t.channel).unwrap_or_default() {
        pb::MessageChannel::Email => {
            let Some(e) = &t.email else {
                v.add(format!("{prefix}.email"), "is required for an EMAIL template");
                return;
            };
            if e.subject.trim().is_empty() || e.subject.chars().count() > 500 {
                v.add(format!("{prefix}.email.subject"), "1 to 500 characters");
            } else {
                text(v, format!("{prefix}.email.subject"), &e.subject, Escape::Text);
            }
            if e.html_body.trim().is_empty() && e.text_body.trim().is_empty() {
                v.add(format!("{prefix}.email.html_body"), "an html_body or a text_body is required");
            }
            text(v, format!("{prefix}.email.html_body"), &e.html_body, Escape::Html);
            text(v, format!("{prefix}.email.text_body"), &e.text_body, Escape::Text);
            if e.from_name.chars().count() > 100 || e.from_name.chars().any(char::is_control) {
                v.add(format!("{prefix}.email.from_name"), "at most 100 characters, no control characters");
            }
            if !e.reply_to.is_empty() && !email_address::EmailAddress::is_valid(&e.reply_to) {
                v.add(format!("{prefix}.email.reply_to"), "must be an email address");
            }
            if t.webhook.is_some() {
                v.add(format!("{prefix}.webhook"), "must be empty for an EMAIL template");
            }
        }
        pb::MessageChannel::Webhook => {
            let Some(w) = &t.webhook else {
                v.add(format!("{prefix}.webhook"), "is required for a WEBHOOK template");
                return;
            };
            match url::Url::parse(&w.url) {
                Ok(u) if matches!(u.scheme(), "https" | "http") && u.host().is_some() => {}
                _ => v.add(format!("{prefix}.webhook.url"), "must be an https:// URL"),
            }
            text(v, format!("{prefix}.webhook.body"), &w.body, Escape::Json);
            if !w.signing_secret.is_empty() && (w.signing_secret.len() < MIN_SECRET || w.signing_secret.len() > 256) {
                v.add(format!("{prefix}.webhook.signing_secret"), format!("{MIN_SECRET} to 256 bytes"));
            }
            if t.email.is_some() {
                v.add(format!("{prefix}.email"), "must be empty for a WEBHOOK template");
            }
        }
        pb::MessageChannel::Unspecified => v.add(format!("{prefix}.channel"), "EMAIL or WEBHOOK"),
    }
}

pub(super) fn to_pb(m: &message_template::Model) -> pb::MessageTemplate {
    let mut t = pb::MessageTemplate::decode(m.body.as_slice()).unwrap_or_default();
    t.id.clone_from(&m.id);
    t.display_name.clone_from(&m.display_name);
    t.create_time = Some(timestamp(m.create_time));
    t.update_time = Some(timestamp(m.update_time));
    t.etag = etag(m.version);
    if let Some(w) = &mut t.webhook {
        w.signing_secret.clear();
    }
    t
}

/// The stored body: the content, without the secret and the output-only fields.
fn body(t: &pb::MessageTemplate) -> Vec<u8> {
    let mut webhook = t.webhook.clone();
    if let Some(w) = &mut webhook {
        w.signing_secret.clear();
    }
    pb::MessageTemplate {
        channel: t.channel,
        purpose: t.purpose,
        email: t.email.clone(),
        webhook,
        ..Default::default()
    }
    .encode_to_vec()
}

fn new_secret() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

pub async fn create(
    api: &LifecycleApi,
    req: Request<pb::CreateMessageTemplateRequest>,
) -> Result<Response<pb::CreateMessageTemplateResponse>, Status> {
    let ctx = clm_platform::auth::context(&req)?;
    let req = req.into_inner();
    let fingerprint = clm_platform::idempotency::fingerprint("clm.lifecycle.v1.CreateMessageTemplateRequest", &req);
    let t = req.message_template.ok_or_else(|| Error::invalid("message_template", "is required"))?;
    let mut v = Violations::new();
    check(&t, "message_template", &mut v);
    let mut once =
        CreateOnce::new(&mut v, &ctx.tenant, "CreateMessageTemplate", "message_template", &req.request_id, fingerprint);
    v.finish()?;
    let id = once.id();
    let txn = clm_platform::db::begin_write(&api.db).await?;
    if let Some(existing) =
        once.replay(&txn, &ctx.tenant, store::messaging::find_template(&txn, &ctx.tenant, id)).await?
    {
        // A retry: the secret was returned by the first call only.
        return Ok(Response::new(pb::CreateMessageTemplateResponse {
            message_template: Some(to_pb(&existing)),
            signing_secret: String::new(),
        }));
    }
    if store::messaging::count_templates(&txn, &ctx.tenant).await? >= MAX_TEMPLATES {
        return Err(Error::ResourceExhausted(format!("at most {MAX_TEMPLATES} message templates per tenant")).into());
    }
    let given = t.webhook.as_ref().map(|w| w.signing_secret.clone()).unwrap_or_default();
    let generated = (t.channel == pb::MessageChannel::Webhook as i32 && given.is_empty()).then(new_secret);
    let now = now_micros();
    let row = message_template::Model {
        id: id.to_string(),
        tenant_id: ctx.tenant.as_str().to_owned(),
        display_name: t.display_name.trim().to_owned(),
        channel: channel_key(t.channel).to_owned(),
        body: body(&t),
        signing_secret: generated.clone().unwrap_or(given),
        version: 1,
        create_time: now,
        update_time: now,
    };
    once.record(&txn, &ctx.tenant, &row.id).await?;
    store::messaging::insert_template(&txn, row.clone()).await?;
    txn.commit().await.map_err(Error::from)?;
    Ok(Response::new(pb::CreateMessageTemplateResponse {
        message_template: Some(to_pb(&row)),
        signing_secret: generated.unwrap_or_default(),
    }))
}

pub async fn get(
    api: &LifecycleApi,
    req: Request<pb::GetMessageTemplateRequest>,
) -> Result<Response<pb::GetMessageTemplateResponse>, Status> {
    let ctx = clm_platform::auth::context(&req)?;
    let id = uuid("id", &req.get_ref().id).map_err(Error::from)?;
    let t = store::messaging::find_template(&api.db, &ctx.tenant, id).await?;
    Ok(Response::new(pb::GetMessageTemplateResponse { message_template: Some(to_pb(&t)) }))
}

pub async fn list(
    api: &LifecycleApi,
    req: Request<pb::ListMessageTemplatesRequest>,
) -> Result<Response<pb::ListMessageTemplatesResponse>, Status> {
    let ctx = clm_platform::auth::context(&req)?;
    let req = req.into_inner();
    let limit = page_size(req.page_size)?;
    let after: Option<(i64, String)> = api.tokens.decode(&req.page_token, &ctx.tenant, "message_templates")?;
    let (rows, next) = store::messaging::list_templates(&api.db, &ctx.tenant, after.as_ref(), limit).await?;
    Ok(Response::new(pb::ListMessageTemplatesResponse {
        message_templates: rows.iter().map(to_pb).collect(),
        next_page_token: next.map(|n| api.tokens.encode(&ctx.tenant, "message_templates", &n)).unwrap_or_default(),
    }))
}

pub async fn update(
    api: &LifecycleApi,
    req: Request<pb::UpdateMessageTemplateRequest>,
) -> Result<Response<pb::UpdateMessageTemplateResponse>, Status> {
    let ctx = clm_platform::auth::context(&req)?;
    let req = req.into_inner();
    let t = req.message_template.ok_or_else(|| Error::invalid("message_template", "is required"))?;
    let mut v = Violations::new();
    let id = v.check(uuid("message_template.id", &t.id));
    let expected = ExpectedVersion::parse(&mut v, "message_template.etag", &t.etag);
    let mask = UpdateMask::parse(&mut v, req.update_mask, &["display_name", "purpose", "email", "webhook"]);
    v.finish()?;
    let txn = clm_platform::db::begin_write(&api.db).await?;
    let current = store::messaging::find_template(&txn, &ctx.tenant, id.expect("checked")).await?;
    expected.check(current.version, "message template")?;
    let mut next = to_pb(&current);
    if mask.sets("display_name", !t.display_name.is_empty()) {
        next.display_name.clone_from(&t.display_name);
    }
    if mask.sets("purpose", t.purpose != 0) {
        next.purpose = t.purpose;
    }
    if mask.sets("email", t.email.is_some()) {
        next.email.clone_from(&t.email);
    }
    let mut secret = current.signing_secret.clone();
    if mask.sets("webhook", t.webhook.is_some()) {
        next.webhook.clone_from(&t.webhook);
        if let Some(given) = t.webhook.as_ref().map(|w| w.signing_secret.clone()).filter(|s| !s.is_empty()) {
            secret = given;
        }
    }
    if t.channel != 0 && t.channel != next.channel {
        return Err(Error::invalid("message_template.channel", "cannot change; create another template").into());
    }
    let mut v = Violations::new();
    check(&next, "message_template", &mut v);
    v.finish()?;
    let saved = message_template::Model {
        display_name: next.display_name.trim().to_owned(),
        body: body(&next),
        signing_secret: secret,
        version: current.version + 1,
        update_time: now_micros(),
        ..current.clone()
    };
    store::messaging::update_template(&txn, &ctx.tenant, &saved, current.version).await?;
    txn.commit().await.map_err(Error::from)?;
    Ok(Response::new(pb::UpdateMessageTemplateResponse { message_template: Some(to_pb(&saved)) }))
}

pub async fn delete(
    api: &LifecycleApi,
    req: Request<pb::DeleteMessageTemplateRequest>,
) -> Result<Response<pb::DeleteMessageTemplateResponse>, Status> {
    let ctx = clm_platform::auth::context(&req)?;
    let req = req.into_inner();
    let mut v = Violations::new();
    let id = v.check(uuid("id", &req.id));
    let expected = ExpectedVersion::parse(&mut v, "etag", &req.etag);
    v.finish()?;
    let txn = clm_platform::db::begin_write(&api.db).await?;
    let current = store::messaging::find_template(&txn, &ctx.tenant, id.expect("checked")).await?;
    expected.check(current.version, "message template")?;
    let pending = store::messaging::pending_of_template(&txn, &ctx.tenant, &current.id).await?;
    if pending > 0 {
        return Err(Error::FailedPrecondition(format!(
            "{pending} deliveries of this template are still waiting to be sent"
        ))
        .into());
    }
    if let Some(a) = automation_using(&txn, &ctx.tenant, &current.id).await? {
        return Err(Error::FailedPrecondition(format!("automation {a} sends this template; change it first")).into());
    }
    store::messaging::delete_template(&txn, &ctx.tenant, &current.id).await?;
    txn.commit().await.map_err(Error::from)?;
    Ok(Response::new(pb::DeleteMessageTemplateResponse {}))
}

/// An automation whose actions send template `id`, if any.
async fn automation_using(
    db: &impl sea_orm::ConnectionTrait,
    tenant: &clm_platform::TenantId,
    id: &str,
) -> Result<Option<String>, Error> {
    let mut after = None;
    loop {
        let (rows, next) = store::automations::list(db, tenant, after.as_ref(), 200).await?;
        for a in &rows {
            let body = pb::Automation::decode(a.body.as_slice()).unwrap_or_default();
            if body.actions.iter().any(|x| matches!(&x.kind, Some(pb::action::Kind::SendMessage(t)) if t == id)) {
                return Ok(Some(a.id.clone()));
            }
        }
        match next {
            Some(n) => after = Some(n),
            None => return Ok(None),
        }
    }
}

pub async fn render(
    api: &LifecycleApi,
    req: Request<pb::RenderMessageTemplateRequest>,
) -> Result<Response<pb::RenderMessageTemplateResponse>, Status> {
    let ctx = clm_platform::auth::context(&req)?;
    let req = req.into_inner();
    let mut v = Violations::new();
    let contact = v.check(uuid("contact_id", &req.contact_id));
    let (template_id, template) = if req.id.is_empty() {
        match &req.message_template {
            Some(t) => {
                check(t, "message_template", &mut v);
                (String::new(), Some(t.clone()))
            }
            None => {
                v.add("id", "give a template id, or a message_template to render");
                (String::new(), None)
            }
        }
    } else {
        (v.check(uuid("id", &req.id)).map(|u| u.to_string()).unwrap_or_default(), None)
    };
    v.finish()?;
    let template = match template {
        Some(t) => t,
        None => to_pb(
            &store::messaging::find_template(
                &api.db,
                &ctx.tenant,
                Uuid::parse_str(&template_id).map_err(Error::internal)?,
            )
            .await?,
        ),
    };
    let contact = contact.expect("checked");
    // Asked of contacts with no transaction open.
    let found = api.automator.contacts.get(&ctx.tenant, contact).await?;
    let Some(found) = found else { return Err(Error::not_found("contact", contact.to_string()).into()) };
    let preview_id = Uuid::nil().to_string();
    let out =
        compose(Mode::Preview, &api.db, &api.links, &ctx.tenant, &template_id, &template, &found, &preview_id).await?;
    let resp = match out {
        Composition::Ready(c) => pb::RenderMessageTemplateResponse {
            subject: c.subject,
            html_body: c.html.unwrap_or_default(),
            text_body: c.text.unwrap_or_default(),
            webhook_body: c.webhook_body.unwrap_or_default(),
            recipient: c.recipient,
            suppressed_reason: c.refused.unwrap_or_default(),
        },
        Composition::Refused(why) => pb::RenderMessageTemplateResponse { suppressed_reason: why, ..Default::default() },
        Composition::Broken(why) => return Err(Error::FailedPrecondition(why).into()),
    };
    Ok(Response::new(resp))
}
