//! The sender: works the delivery queue after commit. Every replica runs one, in two lanes
//! (email, webhooks: `super::lanes::spawn` runs it and picks what to send when); a delivery is
//! sent by whichever leases it (`store::messaging::lease`). For each due delivery: the tenant's
//! rate limit, the template, the contact *as the contacts service knows it now* (asked with no
//! transaction open), consent at send time, render, send, then the outcome and the attempt in
//! one write. A transient failure is retried with exponential backoff and jitter up to
//! `messaging.max_attempts`, then the delivery is dead (dead letter, visible in ListDeliveries).

use std::sync::Arc;
use std::time::Duration;

use clm_platform::events::UnitOfWork;
use clm_platform::{Error, TenantId};
use clm_proto::lifecycle::v1 as pb;
use prost::Message as _;
use sea_orm::DatabaseConnection;
use tokio::sync::Notify;
use uuid::Uuid;

use super::compose::{Composition, Mode, compose_with};
use super::links::Links;
use super::transport::mailbox::MailboxDir;
use super::transport::smtp::{Email, Mailer};
use super::transport::webhook::{Webhook, Webhooks};
use super::transport::{SendError, backoff};
use crate::contacts_client::ContactsProbe;
use crate::store::entities::delivery;
use crate::store::messaging::{self as q, Outcome};
use crate::store::now_micros;

/// What an attempt leaves of its lease unused: time to record the outcome before another
/// sender may take the delivery.
const LEASE_MARGIN: Duration = Duration::from_secs(3);

/// How the sender behaves (from `[messaging]`).
#[derive(Debug, Clone)]
pub struct SenderConfig {
    pub from_address: String,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Attempts per tenant per minute (0: no limit).
    pub tenant_per_minute: u64,
    pub poll: Duration,
    pub lease: Duration,
    /// Deliveries sent at once by this replica.
    pub concurrency: usize,
    /// How long the contacts service may take to answer.
    pub contacts_timeout: Duration,
}

/// Everything the sender needs.
#[derive(Clone)]
pub struct Sender {
    pub db: DatabaseConnection,
    pub contacts: ContactsProbe,
    /// `None`: no SMTP relay configured; email goes to `mailbox`.
    pub mailer: Option<Arc<Mailer>>,
    /// With no relay: the directory email is written to (development); `None` too: email
    /// deliveries fail (and are retried) saying so.
    pub mailbox: Option<MailboxDir>,
    pub webhooks: Arc<Webhooks>,
    pub links: Links,
    pub config: SenderConfig,
    /// Woken when a delivery is queued, so it goes out at once rather than at the next poll.
    pub wake: Arc<Notify>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Sender {
    /// The sender `[messaging]` describes; an SMTP URL lettre cannot read is an error naming it.
    pub fn from_settings(
        db: DatabaseConnection,
        contacts: ContactsProbe,
        links: Links,
        m: &clm_platform::config::MessagingSettings,
    ) -> anyhow::Result<Self> {
        let ms = Duration::from_millis;
        let mailer = if m.smtp_url.is_empty() {
            None
        } else {
            let config = super::transport::smtp::SmtpConfig {
                url: m.smtp_url.clone(),
                timeout: ms(m.smtp_timeout_ms),
                ca_file: (!m.smtp_ca_file.is_empty()).then(|| m.smtp_ca_file.clone().into()),
            };
            let mailer = Mailer::new(&config).map_err(|e| {
                let key = if e.to_string().starts_with("CA file") { "smtp_ca_file" } else { "smtp_url" };
                anyhow::anyhow!("key `messaging.{key}`: {e}")
            })?;
            Some(Arc::new(mailer))
        };
        let webhooks = Webhooks::new(super::transport::webhook::WebhookConfig {
            timeout: ms(m.webhook_timeout_ms),
            allow_private_hosts: m.allow_private_webhooks,
            max_response_bytes: 64 * 1024,
        });
        let mailbox = (m.smtp_url.is_empty() && !m.mailbox_dir.is_empty()).then(|| MailboxDir::new(&m.mailbox_dir));
        Ok(Self {
            db,
            contacts,
            mailer,
            mailbox,
            webhooks: Arc::new(webhooks),
            links,
            config: SenderConfig {
                from_address: m.from_address.clone(),
                max_attempts: m.max_attempts,
                retry_base: ms(m.retry_base_ms),
                retry_max: ms(m.retry_max_ms),
                tenant_per_minute: m.tenant_messages_per_minute,
                poll: ms(m.poll_interval_ms),
                lease: ms(m.lease_ms),
                concurrency: m.concurrency,
                contacts_timeout: Duration::from_secs(10),
            },
            wake: super::wake_handle(),
        })
    }
}

impl Sender {
    /// Lease `d` and process it (or, over its tenant's rate, put it back for a second later);
    /// nothing when another sender holds it.
    pub(super) async fn take(&self, d: delivery::Model, allowed: bool) -> Result<(), Error> {
        let Ok(tenant) = TenantId::parse(&d.tenant_id) else { return Ok(()) };
        let now = now_micros();
        let until = now + i64::try_from(self.config.lease.as_micros()).unwrap_or(i64::MAX / 2);
        if !q::lease(&self.db, &tenant, &d.id, now, until).await? {
            return Ok(());
        }
        if !allowed {
            let at = now + 1_000_000 + i64::from(rand::random::<u16>() % 1000) * 1000;
            let why = format!("rate limited: {} messages per minute for the tenant", self.config.tenant_per_minute);
            return q::defer(&self.db, &tenant, &d.id, at, &why).await;
        }
        // The whole attempt (contacts, render, send) ends well inside the lease, so no other
        // sender can take the delivery while this one may still be sending it: past that, the
        // attempt is abandoned (a send cut off before the relay's final answer is not accepted)
        // and the delivery given back.
        let budget = self.config.lease.saturating_sub(LEASE_MARGIN);
        let Ok(outcome) = tokio::time::timeout(budget, self.process(&tenant, &d)).await else {
            let why = format!("the attempt took longer than messaging.lease_ms allows ({budget:?}); tried again");
            tracing::warn!(delivery = %d.id, "{why}");
            return q::defer(&self.db, &tenant, &d.id, now_micros(), &why).await;
        };
        let outcome = outcome?;
        let txn = UnitOfWork::begin(&self.db).await?;
        let held = q::finish(&txn, &tenant, &d, until, &outcome).await?;
        txn.commit().await?;
        if held {
            tracing::info!(delivery = %d.id, state = outcome.state, reason = %outcome.reason, "delivery processed");
        } else {
            tracing::warn!(delivery = %d.id, state = outcome.state, "delivery lease lost before its outcome was recorded");
        }
        Ok(())
    }

    /// What to record for `d` (sending it if it may go). `Err` only when it must simply be
    /// looked at again (the database failed); a contacts outage defers it.
    async fn process(&self, tenant: &TenantId, d: &delivery::Model) -> Result<Outcome, Error> {
        let now = now_micros();
        let skip = |reason: String| Outcome {
            state: "skipped",
            reason,
            recipient: String::new(),
            subject: String::new(),
            attempt: None,
            next_attempt_time: now,
            at: now,
        };
        let dead = |reason: String| Outcome { state: "dead", ..skip(reason) };
        let Ok(template_id) = Uuid::parse_str(&d.template_id) else { return Ok(dead("bad template id".into())) };
        let (template, signing_secret) = if let Some(builtin) = super::builtin_template(&d.template_id) {
            (builtin, String::new())
        } else {
            let row = match q::find_template(&self.db, tenant, template_id).await {
                Ok(t) => t,
                Err(Error::NotFound { .. }) => return Ok(dead("the template was deleted".into())),
                Err(e) => return Err(e),
            };
            (pb::MessageTemplate::decode(row.body.as_slice()).map_err(Error::internal)?, row.signing_secret)
        };
        let extra = super::Extra::of(d);
        let Ok(contact_id) = Uuid::parse_str(&d.contact_id) else { return Ok(dead("bad contact id".into())) };
        // The contact now, from where it lives; no transaction is open.
        let contact =
            match tokio::time::timeout(self.config.contacts_timeout, self.contacts.get(tenant, contact_id)).await {
                Ok(Ok(Some(c))) => c,
                Ok(Ok(None)) => return Ok(skip("the contact was deleted or erased".into())),
                Ok(Err(e)) => return self.deferred(tenant, d, &format!("contacts service: {e}")).await,
                Err(_) => return self.deferred(tenant, d, "contacts service: no answer in time").await,
            };
        let composed = match compose_with(
            Mode::Send,
            &self.db,
            &self.links,
            tenant,
            &d.template_id,
            &template,
            &contact,
            &d.id,
            extra.survey.as_ref(),
        )
        .await?
        {
            Composition::Ready(c) => c,
            Composition::Refused(why) => return Ok(skip(why)),
            Composition::Broken(why) => return Ok(dead(why)),
        };
        let attempt = u32::try_from(d.attempt_count).unwrap_or(u32::MAX).saturating_add(1);
        let sent = if let Some(body) = composed.webhook_body.clone() {
            let request = Webhook {
                url: composed.recipient.clone(),
                body,
                secret: signing_secret.clone(),
                delivery_id: d.id.clone(),
                attempt,
                timestamp: now / 1_000_000,
            };
            self.webhooks.post(&request).await.map(|status| format!("HTTP {status}"))
        } else {
            let email = template.email.clone().unwrap_or_default();
            let from = if email.from_name.is_empty() {
                self.config.from_address.clone()
            } else {
                format!("\"{}\" <{}>", email.from_name.replace(['"', '\\', '\r', '\n'], ""), self.config.from_address)
            };
            let message = Email {
                message_id: format!("{}@clm", d.id),
                from,
                to: composed.recipient.clone(),
                reply_to: (!email.reply_to.is_empty()).then(|| email.reply_to.clone()),
                subject: composed.subject.clone(),
                html: composed.html.clone(),
                text: composed.text.clone(),
                list_unsubscribe: composed.unsubscribe_url.clone(),
                extra_headers: vec![("X-CLM-Delivery-Id".into(), d.id.clone())],
            };
            match (&self.mailer, &self.mailbox) {
                (Some(m), _) => m.send(&message).await.map(|reply| format!("accepted: {reply}")),
                (None, Some(dir)) => dir.write(&d.id, &message).await,
                (None, None) => Err(SendError::relay("no SMTP relay configured (messaging.smtp_url)")),
            }
        };
        let (recipient, subject) = (composed.recipient, composed.subject);
        let at = now_micros();
        Ok(match sent {
            Ok(detail) => Outcome {
                state: "sent",
                reason: String::new(),
                recipient,
                subject,
                attempt: Some((true, detail)),
                next_attempt_time: at,
                at,
            },
            Err(e) => {
                let last = attempt >= self.config.max_attempts;
                let (state, reason) = if e.permanent {
                    ("dead", format!("permanent failure: {}", e.detail))
                } else if last && !e.relay {
                    ("dead", format!("gave up after {attempt} attempts: {}", e.detail))
                } else {
                    ("retrying", e.detail.clone())
                };
                let delay = backoff::jittered(attempt, self.config.retry_base, self.config.retry_max);
                Outcome {
                    state,
                    reason,
                    recipient,
                    subject,
                    attempt: Some((false, e.detail)),
                    next_attempt_time: at + i64::try_from(delay.as_micros()).unwrap_or(i64::MAX / 2),
                    at,
                }
            }
        })
    }

    /// The contacts service could not say who the contact is: look again later, without
    /// counting an attempt (nothing was sent).
    async fn deferred(&self, tenant: &TenantId, d: &delivery::Model, why: &str) -> Result<Outcome, Error> {
        let delay = backoff::jittered(2, self.config.retry_base, self.config.retry_max);
        let at = now_micros() + i64::try_from(delay.as_micros()).unwrap_or(i64::MAX / 2);
        q::defer(&self.db, tenant, &d.id, at, why).await?;
        Err(Error::Unavailable(why.to_owned()))
    }
}
