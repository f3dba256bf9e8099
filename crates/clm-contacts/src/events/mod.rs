//! What contacts publishes: ContactCreated/Updated/Deleted/Merged/Erased, through the
//! platform outbox in the same transaction as the change. Payloads carry the contact's
//! non-personal facts only (channel, campaign, cost, referrer, score, tags, country, bands).

use clm_platform::events::UnitOfWork;
use clm_platform::events::outbox::{OutboxInserts, OutboxWriter};
use clm_platform::{Result, TenantId};
use clm_proto::common::v1::Money as PbMoney;
use clm_proto::events::v1 as ev;
use clm_proto::events::v1::event_envelope::Payload;
use uuid::Uuid;

use crate::api::convert::timestamp;
use crate::domain::model::Contact;

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

/// Consumes lifecycle automation requests addressed to contacts: `contacts.add_tag` and
/// `contacts.remove_tag` (payload `tag`). The change publishes ContactUpdated like any other.
#[derive(Debug)]
pub struct AutomationRequests {
    pub publisher: Publisher,
}

#[async_trait::async_trait]
impl clm_platform::events::inbox::EventHandler for AutomationRequests {
    async fn handle(&self, txn: &UnitOfWork, e: &ev::EventEnvelope) -> Result<()> {
        let Some(Payload::AutomationTriggered(a)) = &e.payload else { return Ok(()) };
        let add = match a.topic.as_str() {
            "contacts.add_tag" => true,
            "contacts.remove_tag" => false,
            _ => return Ok(()),
        };
        let (Ok(tenant), Ok(id), Some(tag)) =
            (TenantId::parse(&e.tenant_id), Uuid::parse_str(&a.contact_id), a.payload.get("tag"))
        else {
            return Ok(());
        };
        let Some(current) = crate::store::find_contact(txn, &tenant, id).await? else { return Ok(()) };
        if current.state != crate::domain::model::ContactState::Active {
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
        let updated = Contact {
            data,
            update_time: crate::store::now_micros().max(current.update_time),
            version: current.version + 1,
            ..current.clone()
        };
        crate::store::update_contact(txn, &tenant, &updated, current.version).await?;
        self.publisher.updated(txn, &tenant, &updated, &["tags"]).await?;
        Ok(())
    }

    async fn reset(&self, _txn: &sea_orm::DatabaseTransaction) -> Result<()> {
        // Tag changes are applied to contacts' own data; a replay only re-checks them.
        Ok(())
    }
}
