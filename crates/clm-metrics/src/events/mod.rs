//! What metrics consumes. So far: contact events, kept as `contact_facts` (the acquisition
//! side of the read model). Applied through the platform inbox, so a redelivered event changes
//! nothing; replaying from the first event rebuilds the same rows.

use async_trait::async_trait;
use clm_platform::events::inbox::EventHandler;
use clm_proto::events::v1 as ev;
use clm_proto::events::v1::event_envelope::Payload;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue, ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter};

use crate::store::contact_facts;

/// Durable consumer name on the bus and in the inbox.
pub const CONSUMER: &str = "metrics";

fn micros(ts: Option<&prost_types::Timestamp>) -> Option<i64> {
    ts.map(|t| t.seconds * 1_000_000 + i64::from(t.nanos / 1000))
}

fn money(m: Option<&clm_proto::common::v1::Money>) -> (Option<String>, Option<i64>) {
    match m {
        Some(m) => (Some(m.currency_code.clone()), Some(m.units * 1_000_000 + i64::from(m.nanos / 1000))),
        None => (None, None),
    }
}

fn facts_model(
    tenant: &str,
    id: &str,
    f: &ev::ContactFacts,
    create_time: i64,
    state: &str,
) -> contact_facts::ActiveModel {
    let (cur, micros_cost) = money(f.acquisition_cost.as_ref());
    contact_facts::ActiveModel {
        tenant_id: ActiveValue::Set(tenant.to_owned()),
        contact_id: ActiveValue::Set(id.to_owned()),
        acquisition_channel: ActiveValue::Set(f.acquisition_channel.clone()),
        campaign: ActiveValue::Set(f.campaign.clone()),
        cost_currency: ActiveValue::Set(cur),
        cost_micros: ActiveValue::Set(micros_cost),
        referred_by: ActiveValue::Set((!f.referred_by_contact_id.is_empty()).then(|| f.referred_by_contact_id.clone())),
        lead_score: ActiveValue::Set(f.lead_score),
        country_code: ActiveValue::Set(f.country_code.clone()),
        acquire_time: ActiveValue::Set(micros(f.acquire_time.as_ref())),
        create_time: ActiveValue::Set(create_time),
        state: ActiveValue::Set(state.to_owned()),
        merged_into: ActiveValue::Set(None),
    }
}

/// Updates the facts of a contact already known; unknown contacts are ignored (their create
/// event comes first per aggregate).
async fn update_facts(
    txn: &DatabaseTransaction,
    tenant: &str,
    id: &str,
    f: &ev::ContactFacts,
) -> clm_platform::Result<()> {
    let (cur, cost) = money(f.acquisition_cost.as_ref());
    contact_facts::Entity::update_many()
        .set(contact_facts::ActiveModel {
            acquisition_channel: ActiveValue::Set(f.acquisition_channel.clone()),
            campaign: ActiveValue::Set(f.campaign.clone()),
            cost_currency: ActiveValue::Set(cur),
            cost_micros: ActiveValue::Set(cost),
            referred_by: ActiveValue::Set(
                (!f.referred_by_contact_id.is_empty()).then(|| f.referred_by_contact_id.clone()),
            ),
            lead_score: ActiveValue::Set(f.lead_score),
            country_code: ActiveValue::Set(f.country_code.clone()),
            acquire_time: ActiveValue::Set(micros(f.acquire_time.as_ref())),
            ..Default::default()
        })
        .filter(contact_facts::Column::TenantId.eq(tenant))
        .filter(contact_facts::Column::ContactId.eq(id))
        .exec(txn)
        .await?;
    Ok(())
}

async fn set_state(
    txn: &DatabaseTransaction,
    tenant: &str,
    ids: &[String],
    state: &str,
    merged_into: Option<&str>,
) -> clm_platform::Result<()> {
    contact_facts::Entity::update_many()
        .set(contact_facts::ActiveModel {
            state: ActiveValue::Set(state.to_owned()),
            merged_into: ActiveValue::Set(merged_into.map(str::to_owned)),
            ..Default::default()
        })
        .filter(contact_facts::Column::TenantId.eq(tenant))
        .filter(contact_facts::Column::ContactId.is_in(ids.iter().cloned()))
        .exec(txn)
        .await?;
    Ok(())
}

/// Applies contact events to `contact_facts`.
#[derive(Debug, Default)]
pub struct MetricsHandler;

#[async_trait]
impl EventHandler for MetricsHandler {
    async fn handle(&self, txn: &DatabaseTransaction, e: &ev::EventEnvelope) -> clm_platform::Result<()> {
        let tenant = e.tenant_id.as_str();
        match &e.payload {
            Some(Payload::ContactCreated(c)) => {
                let f = c.facts.clone().unwrap_or_default();
                let created = micros(c.create_time.as_ref()).unwrap_or_default();
                contact_facts::Entity::insert(facts_model(tenant, &c.contact_id, &f, created, "active"))
                    .on_conflict(
                        OnConflict::columns([contact_facts::Column::TenantId, contact_facts::Column::ContactId])
                            .do_nothing()
                            .to_owned(),
                    )
                    .exec_without_returning(txn)
                    .await?;
            }
            Some(Payload::ContactUpdated(u)) => {
                update_facts(txn, tenant, &u.contact_id, &u.facts.clone().unwrap_or_default()).await?;
            }
            Some(Payload::ContactDeleted(d)) => {
                let state = if d.restored { "active" } else { "deleted" };
                set_state(txn, tenant, std::slice::from_ref(&d.contact_id), state, None).await?;
            }
            Some(Payload::ContactMerged(m)) => {
                update_facts(txn, tenant, &m.survivor_id, &m.facts.clone().unwrap_or_default()).await?;
                set_state(txn, tenant, &m.merged_ids, "merged", Some(&m.survivor_id)).await?;
            }
            Some(Payload::ContactErased(x)) => {
                // The facts hold no personal data; the contact still counts in past periods.
                set_state(txn, tenant, std::slice::from_ref(&x.contact_id), "erased", None).await?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn reset(&self, txn: &DatabaseTransaction) -> clm_platform::Result<()> {
        contact_facts::Entity::delete_many().exec(txn).await?;
        Ok(())
    }
}

/// The consumer spec of metrics (`events.consumer_prefix` + "metrics").
pub fn consumer_spec(events: &clm_platform::config::EventSettings) -> clm_platform::events::consumer::ConsumerSpec {
    clm_platform::events::consumer::ConsumerSpec::new(events, CONSUMER, &["contacts"])
}
