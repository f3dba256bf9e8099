//! What the store-level tests share: a migrated database, events as the other services publish
//! them, and feeding them through the real handler (in batches, as the consumer does).
#![allow(dead_code)]

use clm_metrics::domain::DAY;
use clm_platform::events::inbox::EventHandler as _;
use clm_proto::events::v1 as ev;
use clm_testkit::{Backend, TestDb};
use ev::event_envelope::Payload;

pub const HOUR: i64 = 3_600_000_000;

pub async fn db(backend: Backend, label: &str) -> Option<(TestDb, sea_orm::DatabaseConnection)> {
    let t = TestDb::create(backend, label).await?;
    let db = clm_platform::db::connect(&t.url, &clm_testkit::settings(&[]).database).await.unwrap();
    clm_platform::db::migrate::<clm_metrics::store::migrations::Migrator>(&db).await.unwrap();
    Some((t, db))
}

pub fn tenant(t: &str) -> clm_platform::TenantId {
    clm_platform::TenantId::parse(t).unwrap()
}

fn envelope(tenant: &str, id: String, p: Payload) -> ev::EventEnvelope {
    ev::EventEnvelope { event_id: id, tenant_id: tenant.into(), payload: Some(p), ..Default::default() }
}

fn ts(at: i64) -> Option<prost_types::Timestamp> {
    Some(clm_platform::convert::timestamp(at))
}

fn money(units: i64, currency: &str) -> Option<clm_proto::common::v1::Money> {
    Some(clm_proto::common::v1::Money { currency_code: currency.into(), units, nanos: 0 })
}

/// ContactCreated: channel, campaign, creation time, acquisition cost in whole units.
pub fn contact(
    tenant: &str,
    id: &str,
    channel: &str,
    campaign: &str,
    at: i64,
    cost: Option<(i64, &str)>,
) -> ev::EventEnvelope {
    envelope(
        tenant,
        format!("cc-{id}"),
        Payload::ContactCreated(ev::ContactCreated {
            contact_id: id.into(),
            create_time: ts(at),
            facts: Some(ev::ContactFacts {
                acquisition_channel: channel.into(),
                campaign: campaign.into(),
                acquisition_cost: cost.and_then(|(u, c)| money(u, c)),
                lead_score: 60,
                ..Default::default()
            }),
        }),
    )
}

/// The default-like model of the tests: (key, category, role), in order.
pub const STAGES: [(&str, &str, &str); 7] = [
    ("awareness", "prospect", ""),
    ("acquisition", "prospect", ""),
    ("conversion", "customer", ""),
    ("retention", "customer", ""),
    ("loyalty", "customer", ""),
    ("dormant", "lost", "dormant"),
    ("churned", "lost", "churned"),
];

/// StageChanged into `to` (a key of [`STAGES`]) at `at`; `seq`: the transition's index.
pub fn stage(
    tenant: &str,
    contact: &str,
    tid: &str,
    seq: i32,
    to: &str,
    at: i64,
    reactivation: bool,
) -> ev::EventEnvelope {
    let pos = STAGES.iter().position(|s| s.0 == to).expect("a stage of STAGES");
    let (_, cat, role) = STAGES[pos];
    envelope(
        tenant,
        format!("sc-{tid}"),
        Payload::StageChanged(ev::StageChanged {
            contact_id: contact.into(),
            model_id: "m".into(),
            to_stage: to.into(),
            to_category: cat.into(),
            to_role: role.into(),
            to_stage_position: i32::try_from(pos).unwrap(),
            transition_id: tid.into(),
            transition_time: ts(at),
            reactivation,
            sequence: seq,
            ..Default::default()
        }),
    )
}

/// `e` (a [`stage`] event) as published by model `revision` with its churn setting.
pub fn of_revision(e: &ev::EventEnvelope, revision: i64, churn_excludes_dormancy: bool) -> ev::EventEnvelope {
    let mut r = e.clone();
    if let Some(Payload::StageChanged(s)) = &mut r.payload {
        s.model_revision = revision;
        s.churn_excludes_dormancy = churn_excludes_dormancy;
    }
    r
}

/// LifecycleModelChanged of model "m" at `revision`.
pub fn model_changed(tenant: &str, revision: i64, churn_excludes_dormancy: bool) -> ev::EventEnvelope {
    envelope(
        tenant,
        format!("mc-m-{revision}"),
        Payload::LifecycleModelChanged(ev::LifecycleModelChanged {
            model_id: "m".into(),
            revision,
            churn_excludes_dormancy,
            update_time: None,
        }),
    )
}

/// The retraction of `e` (a [`stage`] event).
pub fn retract(e: &ev::EventEnvelope) -> ev::EventEnvelope {
    let mut r = e.clone();
    r.event_id = format!("{}-retracted", e.event_id);
    if let Some(Payload::StageChanged(s)) = &mut r.payload {
        s.retracted = true;
    }
    r
}

/// A journey event of `kind` (purchases with an amount in whole units and an order id).
pub fn journey(
    tenant: &str,
    contact: &str,
    id: &str,
    kind: ev::JourneyEventKind,
    at: i64,
    amount: Option<(i64, &str)>,
) -> ev::EventEnvelope {
    envelope(
        tenant,
        format!("je-{id}"),
        Payload::JourneyEventRecorded(ev::JourneyEventRecorded {
            contact_id: contact.into(),
            journey_event_id: id.into(),
            kind: kind as i32,
            order_id: if kind == ev::JourneyEventKind::Purchase { format!("order-{id}") } else { String::new() },
            amount: amount.and_then(|(u, c)| money(u, c)),
            occur_time: ts(at),
            ..Default::default()
        }),
    )
}

pub fn purchase(tenant: &str, contact: &str, id: &str, at: i64, units: i64, currency: &str) -> ev::EventEnvelope {
    journey(tenant, contact, id, ev::JourneyEventKind::Purchase, at, Some((units, currency)))
}

/// A complete survey response with a score.
pub fn score(tenant: &str, contact: &str, id: &str, kind: ev::SurveyKind, score: i32, at: i64) -> ev::EventEnvelope {
    envelope(
        tenant,
        format!("rs-{id}"),
        Payload::ResponseSubmitted(ev::ResponseSubmitted {
            contact_id: contact.into(),
            response_id: id.into(),
            kind: kind as i32,
            score,
            has_score: true,
            complete: true,
            submit_time: ts(at),
            ..Default::default()
        }),
    )
}

/// Feed `events` through the metrics handler, `batch` per transaction (as the consumer does).
pub async fn feed(db: &sea_orm::DatabaseConnection, events: &[ev::EventEnvelope], batch: usize) {
    for chunk in events.chunks(batch.max(1)) {
        let txn = clm_platform::events::UnitOfWork::begin(db).await.unwrap();
        let refs: Vec<&ev::EventEnvelope> = chunk.iter().collect();
        clm_metrics::events::MetricsHandler.handle_batch(&txn, &refs, &|_| tracing::Span::none()).await.unwrap();
        txn.commit().await.unwrap();
    }
}

/// A small deterministic generator (no dependency, same stream on every run).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self, n: i64) -> i64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % u64::try_from(n).unwrap()) as i64
    }

    /// A Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = usize::try_from(self.next(i64::try_from(i).unwrap() + 1)).unwrap();
            v.swap(i, j);
        }
    }
}

/// One contact's final history, in time order: its creation (channel, campaign, a cost in EUR
/// or USD), its stage transitions (as lifecycle derives them: a path through the progression
/// stages, maybe dormant then back or churned), purchases in EUR or USD, a referral or a
/// review, survey answers. `extra` gets events a noisy delivery adds and then takes back
/// (transitions later retracted) — each retraction after its transition.
pub fn history(tenant: &str, id: &str, rng: &mut Lcg, day0: i64) -> (Vec<ev::EventEnvelope>, Vec<ev::EventEnvelope>) {
    let channel = ["web", "paid_search", "referral"][rng.next(3) as usize];
    let campaign = ["", "spring", "brand"][rng.next(3) as usize];
    let currency = ["EUR", "USD"][rng.next(2) as usize];
    let created = day0 + rng.next(120) * DAY + rng.next(DAY);
    let mut out =
        vec![contact(tenant, id, channel, campaign, created, (rng.next(3) > 0).then(|| (1 + rng.next(90), currency)))];
    let mut extra = Vec::new();
    let mut at = created + rng.next(3) * DAY;
    // Start at awareness, or straight at acquisition (a lead without a previous stage).
    let first = rng.next(4).min(1) as usize;
    let reach = first + 1 + rng.next(4) as usize;
    let mut seq = 0;
    let mut tid = 0;
    let mut next_tid = || {
        tid += 1;
        format!("{id}-t{tid}")
    };
    let mut customer_since = None;
    for s in STAGES.iter().take(reach.min(5)).skip(first) {
        out.push(stage(tenant, id, &next_tid(), seq, s.0, at, false));
        if s.1 == "customer" && customer_since.is_none() {
            customer_since = Some(at);
        }
        seq += 1;
        at += rng.next(40) * DAY + rng.next(DAY);
    }
    if customer_since.is_some() && rng.next(2) == 0 {
        let lost = if rng.next(3) == 0 { "churned" } else { "dormant" };
        out.push(stage(tenant, id, &next_tid(), seq, lost, at, false));
        seq += 1;
        at += (1 + rng.next(60)) * DAY;
        if lost == "dormant" && rng.next(2) == 0 {
            out.push(stage(tenant, id, &next_tid(), seq, "retention", at, true));
        }
    }
    // Transitions a late, backdated event takes back.
    for _ in 0..rng.next(3) {
        let spurious = stage(
            tenant,
            id,
            &next_tid(),
            90,
            ["dormant", "acquisition", "loyalty"][rng.next(3) as usize],
            created + rng.next(200) * DAY,
            rng.next(2) == 0,
        );
        extra.push(retract(&spurious));
        extra.insert(0, spurious);
    }
    // Purchases: most in the contact's currency, some in the other.
    for k in 0..rng.next(5) {
        let when = customer_since.unwrap_or(created) + rng.next(200) * DAY + rng.next(DAY);
        let cur = if rng.next(4) == 0 { ["EUR", "USD"][rng.next(2) as usize] } else { currency };
        out.push(purchase(tenant, id, &format!("{id}-p{k}"), when, 1 + rng.next(500), cur));
    }
    match rng.next(4) {
        0 => out.push(journey(
            tenant,
            id,
            &format!("{id}-rv"),
            ev::JourneyEventKind::Review,
            created + rng.next(90) * DAY,
            None,
        )),
        1 => out.push(journey(
            tenant,
            id,
            &format!("{id}-rf"),
            ev::JourneyEventKind::Referral,
            created + rng.next(90) * DAY,
            None,
        )),
        _ => {}
    }
    out.push(journey(
        tenant,
        id,
        &format!("{id}-tp"),
        ev::JourneyEventKind::Touchpoint,
        created + rng.next(300) * DAY,
        None,
    ));
    for (k, kind) in [ev::SurveyKind::Nps, ev::SurveyKind::Csat, ev::SurveyKind::Ces].into_iter().enumerate() {
        if rng.next(2) == 0 {
            let range = match kind {
                ev::SurveyKind::Nps => 11,
                ev::SurveyKind::Csat => 5,
                _ => 7,
            };
            let s = i32::try_from(rng.next(range)).unwrap() + i32::from(kind != ev::SurveyKind::Nps);
            out.push(score(tenant, id, &format!("{id}-s{k}"), kind, s, created + rng.next(250) * DAY));
        }
    }
    (out, extra)
}

/// Sort events by business time (then id), as if they arrived in order.
pub fn in_time_order(events: &mut [ev::EventEnvelope]) {
    let at = |e: &ev::EventEnvelope| -> i64 {
        let t = match &e.payload {
            Some(Payload::ContactCreated(c)) => c.create_time,
            Some(Payload::StageChanged(s)) => s.transition_time,
            Some(Payload::JourneyEventRecorded(j)) => j.occur_time,
            Some(Payload::ResponseSubmitted(r)) => r.submit_time,
            _ => None,
        };
        t.as_ref().and_then(clm_platform::convert::micros).unwrap_or(0)
    };
    events.sort_by(|a, b| (at(a), &a.event_id).cmp(&(at(b), &b.event_id)));
}

pub const DAYS: i64 = DAY;
