//! What metrics consumes: contact events (`contact_facts`: channel, campaign, acquisition time
//! and cost), lifecycle's StageChanged and JourneyEventRecorded (transitions, purchases,
//! referrals, reviews, activity), feedback's ResponseSubmitted and ReviewRecorded (survey
//! answers, reviews). Each event records what it says about its contacts in the ledger
//! (`store::write::ledger`); a batch then adds to the aggregates the change of each touched
//! contact's contribution (`store::write`). Applied through the platform inbox, so a
//! redelivered event changes nothing; any order of the same events, and a replay from the first
//! one, gives the same numbers.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use clm_platform::TenantId;
use clm_platform::events::inbox::EventHandler;
use clm_proto::events::v1 as ev;
use clm_proto::events::v1::event_envelope::Payload;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue, ColumnTrait, ConnectionTrait as _, DatabaseTransaction, EntityTrait, QueryFilter};
use tracing::Instrument as _;

use crate::domain::contribution::{Activity, Category, Event, Role, SPELL_BASES, Survey, Transition};
use crate::store::contact_facts;
use crate::store::write::{self, ledger};

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
/// event comes first per aggregate). The batch moves the contact's counts with its facts.
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

/// The contacts an event says something about (whose contribution it may change).
fn touched(e: &ev::EventEnvelope) -> Vec<&str> {
    match &e.payload {
        Some(Payload::ContactCreated(c)) => vec![&c.contact_id],
        Some(Payload::ContactUpdated(u)) => vec![&u.contact_id],
        Some(Payload::ContactMerged(m)) => vec![&m.survivor_id],
        Some(Payload::StageChanged(s)) => vec![&s.contact_id],
        Some(Payload::JourneyEventRecorded(j)) => vec![&j.contact_id],
        Some(Payload::ResponseSubmitted(r)) if r.complete => vec![&r.contact_id],
        Some(Payload::ReviewRecorded(r)) => vec![&r.contact_id],
        _ => vec![],
    }
}

/// Applies contact, lifecycle and feedback events to the read model.
#[derive(Debug, Default)]
pub struct MetricsHandler;

impl MetricsHandler {
    /// Record what `e` says in the ledger and the contact facts.
    async fn record(&self, txn: &DatabaseTransaction, e: &ev::EventEnvelope) -> clm_platform::Result<()> {
        let Ok(tenant) = TenantId::parse(&e.tenant_id) else { return Ok(()) };
        let t = tenant.as_str();
        let now = || chrono::Utc::now().timestamp_micros();
        match &e.payload {
            Some(Payload::ContactCreated(c)) => {
                let f = c.facts.clone().unwrap_or_default();
                let created = micros(c.create_time.as_ref()).unwrap_or_default();
                contact_facts::Entity::insert(facts_model(t, &c.contact_id, &f, created, "active"))
                    .on_conflict(
                        OnConflict::columns([contact_facts::Column::TenantId, contact_facts::Column::ContactId])
                            .do_nothing()
                            .to_owned(),
                    )
                    .exec_without_returning(txn)
                    .await?;
            }
            Some(Payload::ContactUpdated(u)) => {
                update_facts(txn, t, &u.contact_id, &u.facts.clone().unwrap_or_default()).await?;
            }
            Some(Payload::ContactDeleted(d)) => {
                let state = if d.restored { "active" } else { "deleted" };
                set_state(txn, t, std::slice::from_ref(&d.contact_id), state, None).await?;
            }
            Some(Payload::ContactMerged(m)) => {
                update_facts(txn, t, &m.survivor_id, &m.facts.clone().unwrap_or_default()).await?;
                set_state(txn, t, &m.merged_ids, "merged", Some(&m.survivor_id)).await?;
            }
            Some(Payload::ContactErased(x)) => {
                // The facts hold no personal data; the contact still counts in past periods.
                set_state(txn, t, std::slice::from_ref(&x.contact_id), "erased", None).await?;
            }
            Some(Payload::StageChanged(s)) => {
                let Some(at) = micros(s.transition_time.as_ref()) else { return Ok(()) };
                if s.retracted {
                    ledger::retract_transition(txn, &tenant, &s.contact_id, &s.transition_id).await?;
                } else {
                    let position = i64::from(s.to_stage_position);
                    ledger::put_stage(txn, &tenant, &s.model_id, &s.to_stage, position, &s.to_category, &s.to_role)
                        .await?;
                    let basis = SPELL_BASES[usize::from(s.churn_excludes_dormancy)];
                    ledger::put_basis(txn, &tenant, &s.model_id, basis).await?;
                    let tr = Transition {
                        id: s.transition_id.clone(),
                        model: s.model_id.clone(),
                        seq: i64::from(s.sequence),
                        from_stage: s.from_stage.clone(),
                        at,
                        to_stage: s.to_stage.clone(),
                        to_category: Category::parse(&s.to_category),
                        to_role: Role::parse(&s.to_role),
                        position,
                        reactivation: s.reactivation,
                    };
                    ledger::put_transition(txn, &tenant, &s.contact_id, &tr).await?;
                }
                crate::watch::touched(t);
            }
            Some(Payload::JourneyEventRecorded(j)) => {
                let Some(at) = micros(j.occur_time.as_ref()) else { return Ok(()) };
                let what = match ev::JourneyEventKind::try_from(j.kind).unwrap_or_default() {
                    // A purchase whose order was counted already (the same sale recorded
                    // twice upstream, or in two models) counts once.
                    ev::JourneyEventKind::Purchase
                        if !j.order_id.is_empty() && !ledger::claim_order(txn, &tenant, &j.order_id).await? =>
                    {
                        return Ok(());
                    }
                    ev::JourneyEventKind::Purchase => {
                        let (cur, amount) = money(j.amount.as_ref());
                        Activity::Purchase { amount: amount.unwrap_or(0), currency: cur.unwrap_or_default() }
                    }
                    ev::JourneyEventKind::Referral => Activity::Referral,
                    ev::JourneyEventKind::Review => Activity::Review,
                    _ => Activity::Other,
                };
                let event = Event { id: j.journey_event_id.clone(), at, what };
                ledger::put_event(txn, &tenant, &j.contact_id, &event).await?;
                crate::watch::touched(t);
            }
            Some(Payload::ResponseSubmitted(r)) if r.complete => {
                // A complete answer is activity; a scored NPS, CSAT or CES one is also a score.
                let at = micros(r.submit_time.as_ref()).unwrap_or_else(now);
                let survey = match ev::SurveyKind::try_from(r.kind).unwrap_or_default() {
                    ev::SurveyKind::Nps => Survey::Nps,
                    ev::SurveyKind::Csat => Survey::Csat,
                    ev::SurveyKind::Ces => Survey::Ces,
                    _ => Survey::Custom,
                };
                let what = if r.has_score && survey != Survey::Custom {
                    Activity::Score { survey, score: r.score }
                } else {
                    Activity::Other
                };
                let event = Event { id: format!("response:{}", r.response_id), at, what };
                ledger::put_event(txn, &tenant, &r.contact_id, &event).await?;
                crate::watch::touched(t);
            }
            Some(Payload::ReviewRecorded(r)) => {
                let at = micros(r.create_time.as_ref()).unwrap_or_else(now);
                let event = Event { id: format!("review:{}", r.review_id), at, what: Activity::Review };
                ledger::put_event(txn, &tenant, &r.contact_id, &event).await?;
                crate::watch::touched(t);
            }
            _ => {}
        }
        Ok(())
    }

    /// Apply `events` in one go: the touched contacts' contributions before, the events'
    /// facts, the contributions after, their difference added to the aggregates.
    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        events: &[&ev::EventEnvelope],
        span: &(dyn for<'e> Fn(&'e ev::EventEnvelope) -> tracing::Span + Send + Sync),
    ) -> clm_platform::Result<()> {
        let mut contacts: BTreeMap<TenantId, BTreeSet<String>> = BTreeMap::new();
        for e in events {
            let Ok(tenant) = TenantId::parse(&e.tenant_id) else { continue };
            let ids = touched(e);
            if !ids.is_empty() {
                contacts.entry(tenant).or_default().extend(ids.into_iter().map(str::to_owned));
            }
        }
        crate::store::counters::deferred(txn, async {
            let pending = write::Pending::before(txn, &contacts).await?;
            for e in events {
                self.record(txn, e).instrument(span(e)).await?;
            }
            pending.finish(txn).await
        })
        .await
    }
}

#[async_trait]
impl EventHandler for MetricsHandler {
    async fn handle(&self, txn: &clm_platform::events::UnitOfWork, e: &ev::EventEnvelope) -> clm_platform::Result<()> {
        self.apply(txn, &[e], &|_| tracing::Span::current()).await
    }

    /// The batch's counters are summed in memory and written once at its end
    /// (`store::counters`).
    async fn handle_batch(
        &self,
        txn: &clm_platform::events::UnitOfWork,
        events: &[&ev::EventEnvelope],
        span: &(dyn for<'e> Fn(&'e ev::EventEnvelope) -> tracing::Span + Send + Sync),
    ) -> clm_platform::Result<()> {
        self.apply(txn, events, span).await
    }

    async fn reset(&self, txn: &DatabaseTransaction) -> clm_platform::Result<()> {
        contact_facts::Entity::delete_many().exec(txn).await?;
        for t in crate::store::migrations::READ_MODEL_TABLES {
            txn.execute_unprepared(&format!("DELETE FROM {t}")).await?;
        }
        Ok(())
    }
}

/// The consumer spec of metrics (`events.consumer_prefix` + "metrics").
pub fn consumer_spec(events: &clm_platform::config::EventSettings) -> clm_platform::events::consumer::ConsumerSpec {
    clm_platform::events::consumer::ConsumerSpec::new(events, CONSUMER, &["contacts", "lifecycle", "feedback"])
}
