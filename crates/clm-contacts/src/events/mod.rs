//! What contacts publishes: ContactCreated/Updated/Deleted/Merged/Erased, through the
//! platform outbox in the same transaction as the change; and what it consumes from lifecycle
//! ([`LifecycleEvents`]: tag requests, unsubscribes). Payloads carry the contact's
//! non-personal facts only (channel, campaign, cost, referrer, score, tags, country, bands).

use clm_platform::events::UnitOfWork;
use clm_platform::events::outbox::{OutboxInserts, OutboxWriter};
use clm_platform::{Result, TenantId};
use clm_proto::common::v1::Money as PbMoney;
use clm_proto::events::v1 as ev;
use clm_proto::events::v1::event_envelope::Payload;
use uuid::Uuid;

use crate::domain::consent;
use crate::domain::model::{ConsentChannel, ConsentPurpose, Contact, ContactData, ContactState};
use clm_platform::convert::{TimeBounds, micros, parse_time, timestamp};

pub const AGGREGATE: &str = "contact";

/// The facts other services aggregate on.
pub fn facts(c: &Contact) -> ev::ContactFacts {
    let d = &c.data;
    ev::ContactFacts {
        acquisition_channel: d.acquisition.channel.map(|ch| ch.key().to_owned()).unwrap_or_default(),
        campaign: d.acquisition.campaign.clone(),
        acquisition_cost: d.acquisition.cost.map(|m| PbMoney {
            currency_code: m.currency_code().to_owned(),
            units: m.units,
            nanos: m.nanos,
        }),
        referred_by_contact_id: d.acquisition.referred_by.map(|u| u.to_string()).unwrap_or_default(),
        lead_score: d.lead_score.map_or(0, |s| i32::from(s.value())),
        tags: d.tags.clone(),
        country_code: d.country_code.map(|c| c.as_str().to_owned()).unwrap_or_default(),
        age_band: d.age_band.map(|a| a.key().to_owned()).unwrap_or_default(),
        gender: d.gender.map(|g| g.key().to_owned()).unwrap_or_default(),
        acquire_time: d.acquisition.acquired_at.map(timestamp),
    }
}

fn created_payload(c: &Contact) -> Payload {
    Payload::ContactCreated(ev::ContactCreated {
        contact_id: c.id.to_string(),
        facts: Some(facts(c)),
        create_time: Some(timestamp(c.create_time)),
    })
}

/// Appends contact events to the outbox.
#[derive(Clone, Debug)]
pub struct Publisher {
    outbox: OutboxWriter,
}

impl Publisher {
    pub fn new(outbox: OutboxWriter) -> Self {
        Self { outbox }
    }

    async fn append(&self, txn: &UnitOfWork, tenant: &TenantId, id: Uuid, at: i64, p: Payload) -> Result<()> {
        self.outbox.append(txn, tenant, AGGREGATE, &id.to_string(), at, p).await.map(|_| ())
    }

    /// ContactCreated's outbox row as an insert, to write with the contact in one statement
    /// (`UnitOfWork::insert_all`).
    pub fn created_insert(&self, tenant: &TenantId, c: &Contact) -> OutboxInserts {
        self.outbox.insert(tenant, AGGREGATE, &c.id.to_string(), c.create_time, created_payload(c)).0
    }

    /// ContactCreated for many contacts, as multi-row inserts (`UnitOfWork::insert`).
    pub fn created_inserts(&self, tenant: &TenantId, list: &[Contact]) -> OutboxInserts {
        self.outbox.insert_many(
            tenant,
            AGGREGATE,
            list.iter().map(|c| (c.id.to_string(), c.create_time, created_payload(c))),
        )
    }

    pub async fn updated(&self, txn: &UnitOfWork, tenant: &TenantId, c: &Contact, paths: &[&str]) -> Result<()> {
        let p = Payload::ContactUpdated(ev::ContactUpdated {
            contact_id: c.id.to_string(),
            changed_paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            facts: Some(facts(c)),
        });
        self.append(txn, tenant, c.id, c.update_time, p).await
    }

    pub async fn deleted(&self, txn: &UnitOfWork, tenant: &TenantId, c: &Contact, restored: bool) -> Result<()> {
        let p = Payload::ContactDeleted(ev::ContactDeleted { contact_id: c.id.to_string(), restored });
        self.append(txn, tenant, c.id, c.update_time, p).await
    }

    pub async fn merged(&self, txn: &UnitOfWork, tenant: &TenantId, survivor: &Contact, merged: &[Uuid]) -> Result<()> {
        let p = Payload::ContactMerged(ev::ContactMerged {
            survivor_id: survivor.id.to_string(),
            merged_ids: merged.iter().map(ToString::to_string).collect(),
            facts: Some(facts(survivor)),
        });
        self.append(txn, tenant, survivor.id, survivor.update_time, p).await
    }

    pub async fn erased(&self, txn: &UnitOfWork, tenant: &TenantId, id: Uuid, at: i64) -> Result<()> {
        let p =
            Payload::ContactErased(ev::ContactErased { contact_id: id.to_string(), erase_time: Some(timestamp(at)) });
        self.append(txn, tenant, id, at, p).await
    }
}

/// Consumes what lifecycle asks of contacts: automation requests `contacts.add_tag` and
/// `contacts.remove_tag` (payload `tag`), and unsubscribes (UnsubscribeRecorded), which
/// withdraw a consent. Each change publishes ContactUpdated like any other.
#[derive(Debug)]
pub struct LifecycleEvents {
    pub publisher: Publisher,
}

#[async_trait::async_trait]
impl clm_platform::events::inbox::EventHandler for LifecycleEvents {
    async fn handle(&self, txn: &UnitOfWork, e: &ev::EventEnvelope) -> Result<()> {
        let Ok(tenant) = TenantId::parse(&e.tenant_id) else { return Ok(()) };
        match &e.payload {
            Some(Payload::AutomationTriggered(a)) => self.tag_request(txn, &tenant, a).await,
            Some(Payload::UnsubscribeRecorded(u)) if e.source_service == "lifecycle" => {
                self.unsubscribe(txn, &tenant, u, e.occur_time.as_ref()).await
            }
            _ => Ok(()),
        }
    }

    async fn reset(&self, _txn: &sea_orm::DatabaseTransaction) -> Result<()> {
        // Tag and consent changes are applied to contacts' own data; a replay only re-checks
        // them (an unsubscribe applied again changes nothing).
        Ok(())
    }
}

impl LifecycleEvents {
    async fn tag_request(&self, txn: &UnitOfWork, tenant: &TenantId, a: &ev::AutomationTriggered) -> Result<()> {
        let add = match a.topic.as_str() {
            "contacts.add_tag" => true,
            "contacts.remove_tag" => false,
            _ => return Ok(()),
        };
        let (Ok(id), Some(tag)) = (Uuid::parse_str(&a.contact_id), a.payload.get("tag")) else {
            return Ok(());
        };
        let Some(current) = crate::store::find_contact(txn, tenant, id).await? else { return Ok(()) };
        if current.state != ContactState::Active {
            return Ok(());
        }
        let mut data = current.data.clone();
        let has = data.tags.iter().any(|t| t.eq_ignore_ascii_case(tag));
        match (add, has) {
            (true, false) => {
                if data.tags.len() >= crate::domain::values::MAX_TAGS {
                    tracing::warn!(contact_id = %id, "automation tag not added: tag limit reached");
                    return Ok(());
                }
                let Ok(mut clean) = crate::domain::values::labels("tags", std::slice::from_ref(tag)) else {
                    return Ok(());
                };
                data.tags.append(&mut clean);
            }
            (false, true) => data.tags.retain(|t| !t.eq_ignore_ascii_case(tag)),
            _ => return Ok(()),
        }
        self.save(txn, tenant, &current, data, &["tags"]).await
    }

    /// Withdraw the consent the contact unsubscribed from, unless it was decided after the
    /// unsubscribe ([`consent::unsubscribe`]). A merged contact's unsubscribe applies to its
    /// survivor (the same person); unknown, erased and deleted contacts are left alone.
    async fn unsubscribe(
        &self,
        txn: &UnitOfWork,
        tenant: &TenantId,
        u: &ev::UnsubscribeRecorded,
        occurred: Option<&prost_types::Timestamp>,
    ) -> Result<()> {
        let (Ok(id), Some(channel), Some(purpose)) = (
            Uuid::parse_str(&u.contact_id),
            ConsentChannel::from_key(&u.channel),
            ConsentPurpose::from_key(&u.purpose),
        ) else {
            tracing::warn!(contact_id = %u.contact_id, channel = %u.channel, purpose = %u.purpose,
                "unsubscribe ignored: not a contact id, consent channel or purpose");
            return Ok(());
        };
        // An unsubscribe time that is no valid event time (missing, far in the future) is
        // replaced by when the event occurred: a future one would outrank later grants.
        let at = u
            .unsubscribe_time
            .as_ref()
            .and_then(|t| parse_time("unsubscribe_time", t, TimeBounds::Event).ok())
            .or_else(|| occurred.and_then(micros))
            .unwrap_or_else(crate::store::now_micros);
        let Some(current) = active_survivor(txn, tenant, id).await? else { return Ok(()) };
        let mut data = current.data.clone();
        if !consent::unsubscribe(&mut data.consents, channel, purpose, at) {
            return Ok(());
        }
        self.save(txn, tenant, &current, data, &["consents"]).await
    }

    /// Write `data` over `current` (next version) and publish ContactUpdated naming `paths`.
    async fn save(
        &self,
        txn: &UnitOfWork,
        tenant: &TenantId,
        current: &Contact,
        data: ContactData,
        paths: &[&str],
    ) -> Result<()> {
        let updated = Contact {
            data,
            update_time: crate::store::now_micros().max(current.update_time),
            version: current.version + 1,
            ..current.clone()
        };
        crate::store::update_contact(txn, tenant, &updated, current.version).await?;
        self.publisher.updated(txn, tenant, &updated, paths).await
    }
}

/// The active contact `id` is, following merges to the survivor; `None` when unknown,
/// erased or deleted.
async fn active_survivor(txn: &UnitOfWork, tenant: &TenantId, id: Uuid) -> Result<Option<Contact>> {
    let mut current = id;
    // Merge chains are short; the bound protects against a corrupt cycle.
    for _ in 0..16 {
        let Some(c) = crate::store::find_contact(txn, tenant, current).await? else { return Ok(None) };
        match (c.state, c.merged_into) {
            (ContactState::Merged, Some(next)) => current = next,
            (ContactState::Active, _) => return Ok(Some(c)),
            _ => return Ok(None),
        }
    }
    Ok(None)
}
