//! What metrics consumes: contact events (`contact_facts`, new contacts and acquisition cost),
//! lifecycle's StageChanged and JourneyEventRecorded (funnel, leads, customers, revenue,
//! cohorts, activity), feedback's ResponseSubmitted and ReviewRecorded (NPS/CSAT/CES,
//! advocacy). Applied through the platform inbox, so a redelivered event changes nothing;
//! replaying from the first event rebuilds the same rows (see `store::model`).

use async_trait::async_trait;
use clm_platform::events::inbox::EventHandler;
use clm_proto::events::v1 as ev;
use clm_proto::events::v1::event_envelope::Payload;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue, ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter};
use tracing::Instrument as _;

use crate::store::{contact_facts, model};

/// Durable consumer name on the bus and in the inbox.
pub const CONSUMER: &str = "metrics";

/// An event's time in µs (`None` when absent or not a valid protobuf timestamp).
fn micros(ts: Option<&prost_types::Timestamp>) -> Option<i64> {
    ts.and_then(clm_platform::convert::micros)
}

/// An event's amount in µ-units. Producers bound amounts to 10^12 units (10^18 µ-units); an
/// event from before that bound saturates at the ends of i64 rather than wrapping.
fn money(m: Option<&clm_proto::common::v1::Money>) -> (Option<String>, Option<i64>) {
    match m {
        Some(m) => {
            let micros = i128::from(m.units) * 1_000_000 + i128::from(m.nanos / 1000);
            let micros = i64::try_from(micros).unwrap_or(if micros < 0 { i64::MIN } else { i64::MAX });
            (Some(m.currency_code.clone()), Some(micros))
        }
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
    // A changed channel, campaign or cost moves the contact's acquisition counts with it.
    if let Some(old) = contact_facts::Entity::find_by_id((tenant.to_owned(), id.to_owned())).one(txn).await? {
        let at = old.acquire_time.unwrap_or(old.create_time);
        let new_at = micros(f.acquire_time.as_ref()).unwrap_or(old.create_time);
        if old.acquisition_channel != f.acquisition_channel
            || old.campaign != f.campaign
            || old.cost_micros != cost
            || old.cost_currency != cur
            || at != new_at
        {
            acquisition_counts(
                txn,
                tenant,
                id,
                &old.acquisition_channel,
                &old.campaign,
                at,
                old.cost_currency.as_deref(),
                old.cost_micros,
                -1,
            )
            .await?;
            acquisition_counts(txn, tenant, id, &f.acquisition_channel, &f.campaign, new_at, cur.as_deref(), cost, 1)
                .await?;
        }
    }
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

/// Count (sign 1) or uncount (−1) a new contact and its acquisition cost.
#[allow(clippy::too_many_arguments)]
async fn acquisition_counts(
    txn: &DatabaseTransaction,
    tenant: &str,
    contact: &str,
    channel: &str,
    campaign: &str,
    at: i64,
    currency: Option<&str>,
    cost: Option<i64>,
    sign: i64,
) -> clm_platform::Result<()> {
    let a = model::Attribution {
        contact: contact.to_owned(),
        channel: channel.to_owned(),
        campaign: campaign.to_owned(),
        create_time: None,
    };
    model::bump_kpi(txn, tenant, "new_contacts", "", at, &a, "", sign, 0).await?;
    if let (Some(cur), Some(cost)) = (currency, cost) {
        model::bump_kpi(txn, tenant, "acquisition_cost", "", at, &a, cur, sign, sign * cost).await?;
    }
    Ok(())
}

/// Applies contact, lifecycle and feedback events to the read model.
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
                let inserted = contact_facts::Entity::insert(facts_model(tenant, &c.contact_id, &f, created, "active"))
                    .on_conflict(
                        OnConflict::columns([contact_facts::Column::TenantId, contact_facts::Column::ContactId])
                            .do_nothing()
                            .to_owned(),
                    )
                    .exec_without_returning(txn)
                    .await?;
                if inserted == 1 {
                    let (cur, cost) = money(f.acquisition_cost.as_ref());
                    let at = micros(f.acquire_time.as_ref()).unwrap_or(created);
                    acquisition_counts(
                        txn,
                        tenant,
                        &c.contact_id,
                        &f.acquisition_channel,
                        &f.campaign,
                        at,
                        cur.as_deref(),
                        cost,
                        1,
                    )
                    .await?;
                }
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
            Some(Payload::StageChanged(s)) => {
                let Some(at) = micros(s.transition_time.as_ref()) else { return Ok(()) };
                let change = model::StageChange {
                    contact: &s.contact_id,
                    model: &s.model_id,
                    from_stage: &s.from_stage,
                    to_stage: &s.to_stage,
                    from_category: &s.from_category,
                    to_category: &s.to_category,
                    to_role: &s.to_role,
                    position: s.to_stage_position,
                    reactivation: s.reactivation,
                    at,
                    from_enter: micros(s.from_stage_enter_time.as_ref()),
                };
                if s.retracted {
                    model::retract_stage_change(txn, tenant, &change).await?;
                } else {
                    model::apply_stage_change(txn, tenant, &change).await?;
                }
                crate::watch::touched(tenant);
            }
            Some(Payload::JourneyEventRecorded(j)) => {
                let Some(at) = micros(j.occur_time.as_ref()) else { return Ok(()) };
                let h = match ev::JourneyEventKind::try_from(j.kind).unwrap_or_default() {
                    // A purchase whose order was counted already (the same sale recorded
                    // twice upstream, or in two models) counts once.
                    ev::JourneyEventKind::Purchase
                        if !j.order_id.is_empty() && !model::claim_order(txn, tenant, &j.order_id).await? =>
                    {
                        return Ok(());
                    }
                    ev::JourneyEventKind::Purchase => {
                        let (cur, amount) = money(j.amount.as_ref());
                        model::Happening::Purchase { amount: amount.unwrap_or(0), currency: cur.unwrap_or_default() }
                    }
                    ev::JourneyEventKind::Referral => model::Happening::Referral,
                    ev::JourneyEventKind::Review => model::Happening::Review,
                    _ => model::Happening::Other,
                };
                model::apply_journey_event(txn, tenant, &j.contact_id, at, &h).await?;
                crate::watch::touched(tenant);
            }
            Some(Payload::ResponseSubmitted(r)) if r.complete && r.has_score => {
                let at = micros(r.submit_time.as_ref()).unwrap_or_else(|| chrono::Utc::now().timestamp_micros());
                let kind = match ev::SurveyKind::try_from(r.kind).unwrap_or_default() {
                    ev::SurveyKind::Nps => "nps",
                    ev::SurveyKind::Csat => "csat",
                    ev::SurveyKind::Ces => "ces",
                    _ => "custom",
                };
                model::apply_score(txn, tenant, &r.contact_id, kind, r.score, at).await?;
                crate::watch::touched(tenant);
            }
            Some(Payload::ReviewRecorded(r)) => {
                let at = micros(r.create_time.as_ref()).unwrap_or_else(|| chrono::Utc::now().timestamp_micros());
                model::apply_review(txn, tenant, &r.contact_id, at).await?;
                crate::watch::touched(tenant);
            }
            _ => {}
        }
        Ok(())
    }

    /// The batch's counters are summed in memory and written once at its end
    /// (`store::counters`).
    async fn handle_batch(
        &self,
        txn: &DatabaseTransaction,
        events: &[&ev::EventEnvelope],
        span: &(dyn for<'e> Fn(&'e ev::EventEnvelope) -> tracing::Span + Send + Sync),
    ) -> clm_platform::Result<()> {
        crate::store::counters::deferred(txn, async {
            for e in events {
                self.handle(txn, e).instrument(span(e)).await?;
            }
            Ok(())
        })
        .await
    }

    async fn reset(&self, txn: &DatabaseTransaction) -> clm_platform::Result<()> {
        contact_facts::Entity::delete_many().exec(txn).await?;
        model::clear(txn).await
    }
}

/// The consumer spec of metrics (`events.consumer_prefix` + "metrics").
pub fn consumer_spec(events: &clm_platform::config::EventSettings) -> clm_platform::events::consumer::ConsumerSpec {
    clm_platform::events::consumer::ConsumerSpec::new(events, CONSUMER, &["contacts", "lifecycle", "feedback"])
}
