//! Deliveries: SendMessage queues one (sent after commit by `messaging::sender`); GetDelivery
//! and ListDeliveries show what became of each, attempt by attempt.

use std::collections::HashMap;

use clm_platform::convert::{timestamp, uuid};
use clm_platform::crud::CreateOnce;
use clm_platform::pagination::page_size;
use clm_platform::{Error, Violations};
use clm_proto::lifecycle::v1 as pb;
use tonic::{Request, Response, Status};

use super::LifecycleApi;
use crate::messaging::{self, Source};
use crate::store::entities::{delivery, delivery_attempt};
use crate::store::messaging::DeliveryFilter;
use crate::store::{self};

fn state_pb(s: &str) -> pb::DeliveryState {
    match s {
        "queued" => pb::DeliveryState::Queued,
        "retrying" => pb::DeliveryState::Retrying,
        "sent" => pb::DeliveryState::Sent,
        "skipped" => pb::DeliveryState::Skipped,
        "dead" => pb::DeliveryState::Dead,
        _ => pb::DeliveryState::Unspecified,
    }
}

fn state_key(s: pb::DeliveryState) -> Option<&'static str> {
    match s {
        pb::DeliveryState::Queued => Some("queued"),
        pb::DeliveryState::Retrying => Some("retrying"),
        pb::DeliveryState::Sent => Some("sent"),
        pb::DeliveryState::Skipped => Some("skipped"),
        pb::DeliveryState::Dead => Some("dead"),
        pb::DeliveryState::Unspecified => None,
    }
}

pub(super) fn to_pb(d: &delivery::Model, attempts: &[delivery_attempt::Model]) -> pb::Delivery {
    let pending = matches!(d.state.as_str(), "queued" | "retrying");
    pb::Delivery {
        id: d.id.clone(),
        template_id: d.template_id.clone(),
        contact_id: d.contact_id.clone(),
        channel: if d.channel == "webhook" { pb::MessageChannel::Webhook } else { pb::MessageChannel::Email } as i32,
        state: state_pb(&d.state) as i32,
        reason: d.reason.clone(),
        source: d.source.clone(),
        automation_id: d.automation_id.clone(),
        campaign_id: d.campaign_id.clone(),
        recipient: d.recipient.clone(),
        subject: d.subject.clone(),
        attempt_count: i32::try_from(d.attempt_count).unwrap_or(i32::MAX),
        attempts: attempts
            .iter()
            .map(|a| pb::DeliveryAttempt {
                attempt_time: Some(timestamp(a.attempt_time)),
                accepted: a.accepted,
                detail: a.detail.clone(),
            })
            .collect(),
        create_time: Some(timestamp(d.create_time)),
        next_attempt_time: pending.then(|| timestamp(d.next_attempt_time)),
        finish_time: d.finish_time.map(timestamp),
        invitation_id: d.invitation_id.clone(),
        reminder: i32::try_from(d.reminder).unwrap_or_default(),
    }
}

pub async fn send(
    api: &LifecycleApi,
    req: Request<pb::SendMessageRequest>,
) -> Result<Response<pb::SendMessageResponse>, Status> {
    let ctx = clm_platform::auth::context(&req)?;
    let req = req.into_inner();
    let fingerprint = clm_platform::idempotency::fingerprint("clm.lifecycle.v1.SendMessageRequest", &req);
    let mut v = Violations::new();
    let template = v.check(uuid("template_id", &req.template_id));
    let contact = v.check(uuid("contact_id", &req.contact_id));
    let mut once = CreateOnce::new(&mut v, &ctx.tenant, "SendMessage", "delivery", &req.request_id, fingerprint);
    v.finish()?;
    let (template, contact) = (template.expect("checked"), contact.expect("checked"));
    // The contact must exist now (asked before the transaction); consent is checked at send time.
    if api.automator.contacts.get(&ctx.tenant, contact).await?.is_none() {
        return Err(Error::not_found("contact", contact.to_string()).into());
    }
    let id = once.id();
    let work = clm_platform::events::UnitOfWork::begin(&api.db).await?;
    if let Some(existing) =
        once.replay(&work, &ctx.tenant, store::messaging::find_delivery(&work, &ctx.tenant, id)).await?
    {
        let attempts = store::messaging::attempts_of(&work, &ctx.tenant, std::slice::from_ref(&existing.id)).await?;
        let a = attempts.get(&existing.id).map_or(&[][..], Vec::as_slice);
        return Ok(Response::new(pb::SendMessageResponse { delivery: Some(to_pb(&existing, a)) }));
    }
    once.record(&work, &ctx.tenant, &id.to_string()).await?;
    let row = match messaging::enqueue(&work, &ctx.tenant, id, contact, template, Source::Api).await {
        Err(Error::NotFound { .. }) => {
            return Err(Error::invalid("template_id", format!("no message template {template}")).into());
        }
        other => other?,
    };
    work.commit().await?;
    messaging::wake();
    Ok(Response::new(pb::SendMessageResponse { delivery: Some(to_pb(&row, &[])) }))
}

pub async fn get(
    api: &LifecycleApi,
    req: Request<pb::GetDeliveryRequest>,
) -> Result<Response<pb::GetDeliveryResponse>, Status> {
    let ctx = clm_platform::auth::context(&req)?;
    let id = uuid("id", &req.get_ref().id).map_err(Error::from)?;
    let d = store::messaging::find_delivery(&api.db, &ctx.tenant, id).await?;
    let attempts = store::messaging::attempts_of(&api.db, &ctx.tenant, std::slice::from_ref(&d.id)).await?;
    let a = attempts.get(&d.id).map_or(&[][..], Vec::as_slice);
    Ok(Response::new(pb::GetDeliveryResponse { delivery: Some(to_pb(&d, a)) }))
}

pub async fn list(
    api: &LifecycleApi,
    req: Request<pb::ListDeliveriesRequest>,
) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
    let ctx = clm_platform::auth::context(&req)?;
    let req = req.into_inner();
    let mut v = Violations::new();
    let opt =
        |v: &mut Violations, field: &str, raw: &str| if raw.is_empty() { None } else { v.check(uuid(field, raw)) };
    let filter = DeliveryFilter {
        contact: opt(&mut v, "contact_id", &req.contact_id),
        automation: opt(&mut v, "automation_id", &req.automation_id),
        template: opt(&mut v, "template_id", &req.template_id),
        campaign: opt(&mut v, "campaign_id", &req.campaign_id),
        state: match pb::DeliveryState::try_from(req.state) {
            Ok(s) => state_key(s),
            Err(_) => {
                v.add("state", "unknown delivery state");
                None
            }
        },
    };
    let limit = page_size(req.page_size).ok();
    if limit.is_none() {
        v.add("page_size", "must be 0 to 1000");
    }
    v.finish()?;
    let fp = format!(
        "deliveries|{}|{}|{}|{}|{}",
        req.contact_id, req.automation_id, req.template_id, req.state, req.campaign_id
    );
    let after: Option<(i64, String)> = api.tokens.decode(&req.page_token, &ctx.tenant, &fp)?;
    let (rows, next) =
        store::messaging::list_deliveries(&api.db, &ctx.tenant, &filter, after.as_ref(), limit.expect("checked"))
            .await?;
    let ids: Vec<String> = rows.iter().map(|d| d.id.clone()).collect();
    let attempts: HashMap<String, Vec<delivery_attempt::Model>> =
        store::messaging::attempts_of(&api.db, &ctx.tenant, &ids).await?;
    Ok(Response::new(pb::ListDeliveriesResponse {
        deliveries: rows.iter().map(|d| to_pb(d, attempts.get(&d.id).map_or(&[][..], Vec::as_slice))).collect(),
        next_page_token: next.map(|n| api.tokens.encode(&ctx.tenant, &fp, &n)).unwrap_or_default(),
    }))
}
