//! Messages to contacts: templates rendered per contact, queued as deliveries in the caller's
//! transaction ([`enqueue`]), and sent after commit by the [`sender`] through a
//! [`transport`] (SMTP, signed webhooks), only while the contact's consent allows.
//!
//! Modules, top to bottom: `sender` (the queue worker) ▸ `compose` (consent, address,
//! variables, rendering for one contact) ▸ `contact` (the contact as messages see it) ▸
//! `unsubscribe` (recording a link's use: suppression + event) ▸ `links` (signed unsubscribe
//! links) ▸ `transport` (SMTP, webhooks, backoff).

pub mod compose;
pub mod contact;
pub mod links;
pub mod sender;
pub mod transport;
pub mod unsubscribe;

use std::sync::Arc;

use clm_platform::events::UnitOfWork;
use clm_platform::{Error, TenantId};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::store::entities::delivery;
use crate::store::{self, now_micros};

/// What asks for a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    Api,
    Automation(&'a str),
    Campaign(&'a str),
}

/// Queue template `template` for `contact` in `work` (the change that asks for it): the
/// delivery exists exactly when that change commits. `id` makes a retried request queue the
/// same delivery. NOT_FOUND when the template does not exist.
pub async fn enqueue(
    work: &UnitOfWork,
    tenant: &TenantId,
    id: Uuid,
    contact: Uuid,
    template: Uuid,
    source: Source<'_>,
) -> Result<delivery::Model, Error> {
    let t = store::messaging::find_template(work, tenant, template).await?;
    let now = now_micros();
    let (source, automation, campaign) = match source {
        Source::Api => ("api", String::new(), String::new()),
        Source::Automation(a) => ("automation", a.to_owned(), String::new()),
        Source::Campaign(c) => ("campaign", String::new(), c.to_owned()),
    };
    let row = delivery::Model {
        id: id.to_string(),
        tenant_id: tenant.as_str().to_owned(),
        contact_id: contact.to_string(),
        template_id: t.id.clone(),
        channel: t.channel.clone(),
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
