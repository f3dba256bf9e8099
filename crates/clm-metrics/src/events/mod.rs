//! What metrics consumes: contact events (`contact_facts`: channel, campaign, acquisition time
//! and cost), lifecycle's StageChanged and JourneyEventRecorded (transitions, purchases,
//! referrals, reviews, activity) and LifecycleModelChanged (a model's churn basis: the newest
//! revision is kept, whichever event brings it), feedback's ResponseSubmitted and
//! ReviewRecorded (survey answers, reviews), and lifecycle's CampaignEnrolmentChanged (one row
//! per enrolment, its end kept once seen; read as it is, no counter). Each event records what
//! it says about its contacts in the ledger (`store::write::ledger`); a batch then adds to the
//! aggregates the change of each touched contact's contribution (`store::write`). Applied
//! through the platform inbox, so a redelivered event changes nothing; any order of the same
//! events, and a replay from the first one, gives the same numbers.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use clm_platform::TenantId;
use clm_platform::events::inbox::EventHandler;
use clm_proto::events::v1 as ev;
use clm_proto::events::v1::event_envelope::Payload;
use sea_orm::DatabaseTransaction;
use tracing::Instrument as _;

use crate::domain::campaign::{Enrolment, EnrolmentState};
use crate::domain::channel::Channel;
use crate::domain::contribution::{Activity, Category, Event, Money, Role, SPELL_BASES, Survey, Transition};
use crate::store::write::facts::{self, ContactFacts, ContactState};
use crate::store::write::{self, ledger};

/// Durable consumer name on the bus and in the inbox.
pub const CONSUMER: &str = "metrics";

/// An event's time in µs (`None` when absent or not a valid protobuf timestamp).
fn micros(ts: Option<&prost_types::Timestamp>) -> Option<i64> {
    ts.and_then(clm_platform::convert::micros)
}

/// An event's amount (`Money::from_units`).
fn money(m: Option<&clm_proto::common::v1::Money>) -> Option<Money> {
    m.map(|m| Money::from_units(&m.currency_code, m.units, m.nanos))
}

/// A contact event's facts, as `contact_facts` keeps them.
fn contact_facts(f: Option<&ev::ContactFacts>) -> ContactFacts {
    let f = f.cloned().unwrap_or_default();
    ContactFacts {
        cost: money(f.acquisition_cost.as_ref()),
        referred_by: (!f.referred_by_contact_id.is_empty()).then_some(f.referred_by_contact_id),
        lead_score: f.lead_score,
        acquire_time: micros(f.acquire_time.as_ref()),
        acquisition_channel: Channel::from_key(&f.acquisition_channel),
        campaign: f.campaign,
        country_code: f.country_code,
    }
}

/// An enrolment as a CampaignEnrolmentChanged states it; `None` for one without an id, a
/// campaign, a contact, an enrolment time or a known state (nothing to count it by). An end
/// without a finish time ends at its enrolment time.
fn enrolment(c: &ev::CampaignEnrolmentChanged) -> Option<Enrolment> {
    let state = EnrolmentState::parse(&c.state)?;
    let enrol_time = micros(c.enrol_time.as_ref())?;
    if c.enrolment_id.is_empty() || c.campaign_id.is_empty() || c.contact_id.is_empty() {
        return None;
    }
    let finish_time = match state {
        EnrolmentState::Active => None,
        _ => Some(micros(c.finish_time.as_ref()).unwrap_or(enrol_time)),
    };
    Some(Enrolment {
        id: c.enrolment_id.clone(),
        contact: c.contact_id.clone(),
        campaign: c.campaign_id.clone(),
        campaign_name: c.campaign_name.clone(),
        state,
        converted: c.converted && state != EnrolmentState::Active,
        enrol_time,
        finish_time,
    })
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
        let now = || chrono::Utc::now().timestamp_micros();
        match &e.payload {
            Some(Payload::ContactCreated(c)) => {
                let created = micros(c.create_time.as_ref()).unwrap_or_default();
                facts::insert(txn, &tenant, &c.contact_id, &contact_facts(c.facts.as_ref()), created).await?;
            }
            Some(Payload::ContactUpdated(u)) => {
                // The batch moves the contact's counts with its facts.
                facts::update(txn, &tenant, &u.contact_id, &contact_facts(u.facts.as_ref())).await?;
            }
            Some(Payload::ContactDeleted(d)) => {
                let state = if d.restored { ContactState::Active } else { ContactState::Deleted };
                facts::set_state(txn, &tenant, std::slice::from_ref(&d.contact_id), state, None).await?;
            }
            Some(Payload::ContactMerged(m)) => {
                facts::update(txn, &tenant, &m.survivor_id, &contact_facts(m.facts.as_ref())).await?;
                facts::set_state(txn, &tenant, &m.merged_ids, ContactState::Merged, Some(&m.survivor_id)).await?;
            }
            Some(Payload::ContactErased(x)) => {
                // The facts hold no personal data; the contact still counts in past periods.
                let erased = ContactState::Erased;
                facts::set_state(txn, &tenant, std::slice::from_ref(&x.contact_id), erased, None).await?;
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
                    ledger::put_basis(txn, &tenant, &s.model_id, basis, s.model_revision).await?;
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
                crate::watch::touched(&tenant);
            }
            Some(Payload::LifecycleModelChanged(m)) => {
                // Both bases are kept, so a changed setting re-reads all history at once.
                let basis = SPELL_BASES[usize::from(m.churn_excludes_dormancy)];
                ledger::put_basis(txn, &tenant, &m.model_id, basis, m.revision).await?;
                crate::watch::touched(&tenant);
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
                    ev::JourneyEventKind::Purchase => Activity::Purchase(money(j.amount.as_ref()).unwrap_or_default()),
                    ev::JourneyEventKind::Referral => Activity::Referral,
                    ev::JourneyEventKind::Review => Activity::Review,
                    _ => Activity::Other,
                };
                let event = Event { id: j.journey_event_id.clone(), at, what };
                ledger::put_event(txn, &tenant, &j.contact_id, &event).await?;
                crate::watch::touched(&tenant);
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
                crate::watch::touched(&tenant);
            }
            Some(Payload::CampaignEnrolmentChanged(c)) => {
                // A fact of its own (no contribution to the counters): the enrolment's row,
                // its end kept once seen, whatever order its two events come in.
                let Some(e) = enrolment(c) else { return Ok(()) };
                ledger::put_enrolment(txn, &tenant, &e).await?;
                crate::watch::touched(&tenant);
            }
            Some(Payload::ReviewRecorded(r)) => {
                let at = micros(r.create_time.as_ref()).unwrap_or_else(now);
                let event = Event { id: format!("review:{}", r.review_id), at, what: Activity::Review };
                ledger::put_event(txn, &tenant, &r.contact_id, &event).await?;
                crate::watch::touched(&tenant);
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
        write::clear(txn).await
    }
}

/// The consumer spec of metrics (`events.consumer_prefix` + "metrics").
pub fn consumer_spec(events: &clm_platform::config::EventSettings) -> clm_platform::events::consumer::ConsumerSpec {
    clm_platform::events::consumer::ConsumerSpec::new(events, CONSUMER, &["contacts", "lifecycle", "feedback"])
}
