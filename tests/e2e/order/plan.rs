//! The seeded history generator: from a seed, contacts on three channels and three campaigns
//! with acquisition costs in EUR and USD, and what happens to them (touchpoints, purchases,
//! referrals, reviews, custom events, manual moves, survey responses, long gaps); the time and
//! money helpers it is written in; and the two orders it is fed in — A's in occurred-at order
//! (`ordered`), B's shuffled with duplicates and an import batch (`shuffled`).

use std::collections::HashMap;

use chrono::{Datelike, TimeZone, Utc};
use clm_proto::common::v1::Money;
use clm_proto::contacts::v1 as cpb;
use clm_proto::feedback::v1 as fpb;
use clm_proto::lifecycle::v1 as lpb;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

pub(super) const DAY: i64 = 86_400_000_000;
const HOUR: i64 = 3_600_000_000;

pub(super) const CHANNELS: [(cpb::AcquisitionChannel, &str); 3] = [
    (cpb::AcquisitionChannel::PaidSearch, "paid_search"),
    (cpb::AcquisitionChannel::Social, "social"),
    (cpb::AcquisitionChannel::Email, "email"),
];
pub(super) const CAMPAIGNS: [&str; 3] = ["spring", "summer", "brand"];
pub(super) const CURRENCIES: [&str; 2] = ["EUR", "USD"];

#[derive(Debug, Clone)]
pub(super) struct ContactSpec {
    pub(super) channel: usize,
    pub(super) campaign: usize,
    /// (currency index, µ-units).
    pub(super) cost: Option<(usize, i64)>,
    pub(super) acquire: i64,
}

#[derive(Debug, Clone)]
pub(super) enum What {
    Journey(lpb::journey_event::Detail),
    Move {
        to: &'static str,
        reason: &'static str,
    },
    /// A survey response (at submission: responses cannot be backdated); NPS by invitation
    /// token when `invite`, else in-app.
    Survey {
        kind: fpb::SurveyKind,
        score: i32,
        invite: bool,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Act {
    pub(super) contact: usize,
    /// When it happened (µs); `i64::MAX` for survey responses (they happen when submitted).
    pub(super) at: i64,
    pub(super) what: What,
    /// Idempotency key of a journey event / request id of a move.
    pub(super) key: String,
}

#[derive(Debug, Clone)]
pub(super) struct Purchase {
    pub(super) contact: usize,
    pub(super) at: i64,
    pub(super) order: String,
    pub(super) currency: usize,
    pub(super) micros: i64,
}

#[derive(Debug)]
pub(super) struct Plan {
    pub(super) seed: u64,
    /// First day of the history (a UTC day start) and the end of the whole range (tomorrow).
    pub(super) start: i64,
    pub(super) end: i64,
    pub(super) contacts: Vec<ContactSpec>,
    pub(super) acts: Vec<Act>,
}

pub(super) fn money(currency: usize, micros: i64) -> Money {
    Money {
        currency_code: CURRENCIES[currency].into(),
        units: micros / 1_000_000,
        nanos: ((micros % 1_000_000) * 1000) as i32,
    }
}

pub(super) fn micros_of(m: &Money) -> i128 {
    i128::from(m.units) * 1_000_000 + i128::from(m.nanos / 1000)
}

fn day_start(t: i64) -> i64 {
    t.div_euclid(DAY) * DAY
}

pub(super) fn month_start(t: i64) -> i64 {
    let d = Utc.timestamp_micros(t).unwrap();
    Utc.with_ymd_and_hms(d.year(), d.month(), 1, 0, 0, 0).unwrap().timestamp_micros()
}

pub(super) fn next_month(t: i64) -> i64 {
    month_start(month_start(t) + 32 * DAY)
}

pub(super) fn show_time(t: i64) -> String {
    Utc.timestamp_micros(t).single().map_or_else(|| t.to_string(), |d| d.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
}

impl Plan {
    pub(super) fn generate(seed: u64, now: i64) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed);
        let start = day_start(now) - 245 * DAY;
        let limit = now - DAY;
        let n = rng.random_range(12..=20);
        let mut contacts = Vec::new();
        let mut acts = Vec::new();
        let key = |rng: &mut StdRng| uuid::Uuid::from_u128(rng.random()).to_string();
        for i in 0..n {
            let acquire = match i {
                0 => start + 2 * DAY,
                1 => start + 10 * DAY,
                _ => start + rng.random_range(0..150) * DAY + rng.random_range(0..DAY),
            } + rng.random_range(0..DAY / 2);
            let cost = rng.random_bool(0.75).then(|| {
                let cur = usize::from(!rng.random_bool(0.6));
                (cur, rng.random_range(5..150) * 1_000_000 + if rng.random_bool(0.5) { 500_000 } else { 0 })
            });
            contacts.push(ContactSpec {
                channel: i % 3,
                campaign: rng.random_range(0..3),
                cost: if i < 3 { Some((i % 2, 40_000_000)) } else { cost },
                acquire,
            });
            let mut events: Vec<(i64, What)> = Vec::new();
            let mut t = acquire + rng.random_range(HOUR..3 * DAY);
            let step = |rng: &mut StdRng, t: &mut i64, lo: i64, hi: i64| {
                *t += rng.random_range(lo * DAY..hi * DAY) + rng.random_range(1..HOUR);
            };
            let touch = |kind: lpb::TouchpointKind| {
                What::Journey(lpb::journey_event::Detail::Touchpoint(lpb::Touchpoint {
                    channel: lpb::TouchpointChannel::Web as i32,
                    kind: kind as i32,
                    detail: String::new(),
                }))
            };
            let mut order = 0;
            let mut buy = |rng: &mut StdRng, currency: usize| {
                order += 1;
                let micros = rng.random_range(10..400) * 1_000_000 + [0, 990_000, 500_000][rng.random_range(0..3)];
                What::Journey(lpb::journey_event::Detail::Purchase(lpb::Purchase {
                    order_id: format!("o-{i}-{order}"),
                    amount: Some(money(currency, micros)),
                    items: rng.random_range(1..4),
                }))
            };
            let referral = || {
                What::Journey(lpb::journey_event::Detail::Referral(lpb::Referral {
                    referred_contact_id: String::new(),
                    note: "a friend".into(),
                }))
            };
            match i {
                // A customer who goes quiet for 100+ days (dormant after 90), won back by
                // hand, and buys again.
                0 => {
                    events.push((t, touch(lpb::TouchpointKind::Visit)));
                    step(&mut rng, &mut t, 1, 3);
                    events.push((t, touch(lpb::TouchpointKind::FormSubmitted)));
                    step(&mut rng, &mut t, 2, 5);
                    events.push((t, buy(&mut rng, 0)));
                    step(&mut rng, &mut t, 10, 20);
                    events.push((t, buy(&mut rng, 0)));
                    step(&mut rng, &mut t, 100, 110);
                    events.push((t, What::Move { to: "retention", reason: "win-back call" }));
                    step(&mut rng, &mut t, 5, 10);
                    events.push((t, buy(&mut rng, 0)));
                }
                // A lead from the first touch (its first stage is a lead stage), a USD
                // customer, churned by hand.
                1 => {
                    events.push((t, touch(lpb::TouchpointKind::LeadCaptured)));
                    step(&mut rng, &mut t, 5, 10);
                    events.push((t, buy(&mut rng, 1)));
                    step(&mut rng, &mut t, 15, 30);
                    events.push((t, buy(&mut rng, 1)));
                    step(&mut rng, &mut t, 20, 40);
                    events.push((t, What::Move { to: "churned", reason: "cancelled the contract" }));
                }
                // Qualified by sales by hand, then buys in EUR and in USD.
                2 => {
                    events.push((t, touch(lpb::TouchpointKind::Visit)));
                    step(&mut rng, &mut t, 1, 4);
                    events.push((t, What::Move { to: "acquisition", reason: "qualified by sales" }));
                    step(&mut rng, &mut t, 3, 10);
                    events.push((t, touch(lpb::TouchpointKind::LeadCaptured)));
                    step(&mut rng, &mut t, 5, 15);
                    events.push((t, buy(&mut rng, 0)));
                    step(&mut rng, &mut t, 10, 40);
                    events.push((t, buy(&mut rng, 1)));
                    step(&mut rng, &mut t, 1, 5);
                    events.push((t, referral()));
                }
                _ => {
                    let lead_first = rng.random_bool(0.3);
                    events.push((
                        t,
                        touch(if lead_first { lpb::TouchpointKind::LeadCaptured } else { lpb::TouchpointKind::Visit }),
                    ));
                    if !lead_first && rng.random_bool(0.6) {
                        step(&mut rng, &mut t, 1, 20);
                        events.push((t, touch(lpb::TouchpointKind::FormSubmitted)));
                    }
                    if rng.random_bool(0.2) {
                        step(&mut rng, &mut t, 1, 10);
                        events.push((t, referral()));
                    }
                    if rng.random_bool(0.65) {
                        let mixed = rng.random_bool(0.15);
                        let cur = usize::from(rng.random_bool(0.35));
                        for k in 0..rng.random_range(1..=4) {
                            step(&mut rng, &mut t, 3, 50);
                            if rng.random_bool(0.3) {
                                // A long gap: dormant after 90 days, back with this purchase.
                                step(&mut rng, &mut t, 95, 120);
                            }
                            events.push((t, buy(&mut rng, if mixed { k % 2 } else { cur })));
                            if rng.random_bool(0.3) {
                                step(&mut rng, &mut t, 1, 10);
                                events.push((
                                    t,
                                    What::Journey(lpb::journey_event::Detail::Custom(lpb::CustomEvent {
                                        name: "webinar_attended".into(),
                                        properties: HashMap::new(),
                                    })),
                                ));
                            }
                        }
                        if rng.random_bool(0.3) {
                            step(&mut rng, &mut t, 1, 20);
                            events.push((t, referral()));
                        }
                        if rng.random_bool(0.25) {
                            step(&mut rng, &mut t, 1, 20);
                            events.push((
                                t,
                                What::Journey(lpb::journey_event::Detail::Review(lpb::Review {
                                    rating: rng.random_range(1..=5),
                                    platform: "g2".into(),
                                    url: String::new(),
                                })),
                            ));
                        }
                    }
                    if rng.random_bool(0.3) {
                        step(&mut rng, &mut t, 20, 130);
                        events.push((t, touch(lpb::TouchpointKind::EmailClicked)));
                    }
                }
            }
            for (at, what) in events {
                if at < limit {
                    let key = key(&mut rng);
                    acts.push(Act { contact: i, at, what, key });
                }
            }
            if rng.random_bool(0.55) {
                let score = rng.random_range(0..=10);
                let invite = rng.random_bool(0.5);
                acts.push(Act {
                    contact: i,
                    at: i64::MAX,
                    what: What::Survey { kind: fpb::SurveyKind::Nps, score, invite },
                    key: key(&mut rng),
                });
            }
            for (kind, max) in [(fpb::SurveyKind::Csat, 5), (fpb::SurveyKind::Ces, 7)] {
                if rng.random_bool(0.35) {
                    let score = rng.random_range(1..=max);
                    let what = What::Survey { kind, score, invite: false };
                    acts.push(Act { contact: i, at: i64::MAX, what, key: key(&mut rng) });
                }
            }
        }
        Plan { seed, start, end: day_start(now) + DAY, contacts, acts }
    }

    pub(super) fn purchases(&self) -> Vec<Purchase> {
        self.acts
            .iter()
            .filter_map(|a| match &a.what {
                What::Journey(lpb::journey_event::Detail::Purchase(p)) => {
                    let m = p.amount.as_ref()?;
                    Some(Purchase {
                        contact: a.contact,
                        at: a.at,
                        order: p.order_id.clone(),
                        currency: CURRENCIES.iter().position(|c| *c == m.currency_code)?,
                        micros: i64::try_from(micros_of(m)).ok()?,
                    })
                }
                _ => None,
            })
            .collect()
    }

    pub(super) fn describe(&self, i: usize) -> String {
        let a = &self.acts[i];
        let what = match &a.what {
            What::Journey(d) => match d {
                lpb::journey_event::Detail::Touchpoint(t) => {
                    format!("touchpoint {:?}", lpb::TouchpointKind::try_from(t.kind).unwrap_or_default())
                }
                lpb::journey_event::Detail::Purchase(p) => format!(
                    "purchase {} {}",
                    p.order_id,
                    p.amount.as_ref().map_or(String::new(), |m| format!("{} {}", m.units, m.currency_code))
                ),
                lpb::journey_event::Detail::Referral(_) => "referral".into(),
                lpb::journey_event::Detail::Review(_) => "review".into(),
                lpb::journey_event::Detail::Custom(c) => format!("custom {}", c.name),
            },
            What::Move { to, .. } => format!("TransitionStage → {to}"),
            What::Survey { kind, score, .. } => format!("{kind:?} response {score}"),
        };
        let at = if a.at == i64::MAX { "now".into() } else { show_time(a.at) };
        format!("c{} {what} at {at}", a.contact)
    }
}

/// One call B (or A) makes.
#[derive(Debug, Clone)]
pub(super) enum Step {
    Create(usize),
    /// The same CreateContact again (same request id).
    CreateAgain(usize),
    Act(usize),
    /// A journey event again with its idempotency key, or a move with its request id.
    Again(usize),
    /// A purchase again without a key: the same order id.
    SameOrder(usize),
    Import(Vec<usize>),
}

/// A: every contact created at its acquisition time, every act in time order (survey
/// responses, which happen when submitted, last).
pub(super) fn ordered(plan: &Plan) -> Vec<Step> {
    let mut keyed: Vec<(i64, usize, Step)> = Vec::new();
    for (i, c) in plan.contacts.iter().enumerate() {
        keyed.push((c.acquire, 0, Step::Create(i)));
    }
    for (i, a) in plan.acts.iter().enumerate() {
        keyed.push((a.at, 1, Step::Act(i)));
    }
    keyed.sort_by_key(|(at, kind, _)| (*at, *kind));
    keyed.into_iter().map(|(_, _, s)| s).collect()
}

/// B: a shuffle with duplicates and an import batch; a contact is created just before the
/// first call that needs it.
pub(super) fn shuffled(plan: &Plan) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(plan.seed ^ 0x005e_edb0);
    let mut units = Vec::new();
    let mut batch = Vec::new();
    for (i, a) in plan.acts.iter().enumerate() {
        match &a.what {
            What::Journey(d) => {
                if rng.random_bool(0.2) {
                    batch.push(i);
                } else {
                    units.push(Step::Act(i));
                }
                if rng.random_bool(0.15) {
                    units.push(Step::Again(i));
                }
                if matches!(d, lpb::journey_event::Detail::Purchase(_)) && rng.random_bool(0.3) {
                    units.push(Step::SameOrder(i));
                }
            }
            What::Move { .. } => {
                units.push(Step::Act(i));
                if rng.random_bool(0.5) {
                    units.push(Step::Again(i));
                }
            }
            What::Survey { .. } => units.push(Step::Act(i)),
        }
    }
    batch.shuffle(&mut rng);
    if !batch.is_empty() {
        units.push(Step::Import(batch));
    }
    units.shuffle(&mut rng);
    let mut created = vec![false; plan.contacts.len()];
    let mut out = Vec::new();
    for u in units {
        let needs: Vec<usize> = match &u {
            Step::Act(i) | Step::Again(i) | Step::SameOrder(i) => vec![plan.acts[*i].contact],
            Step::Import(b) => b.iter().map(|i| plan.acts[*i].contact).collect(),
            Step::Create(_) | Step::CreateAgain(_) => vec![],
        };
        for c in needs {
            if !created[c] {
                created[c] = true;
                out.push(Step::Create(c));
                if rng.random_bool(0.2) {
                    out.push(Step::CreateAgain(c));
                }
            }
        }
        out.push(u);
    }
    for (c, done) in created.iter().enumerate() {
        if !done {
            out.push(Step::Create(c));
        }
    }
    out
}
