//! `clm seed`: a realistic demo tenant through the real write path (gRPC to a running CLM):
//! contacts acquired across channels over the last year with their acquisition costs, their
//! journeys dated when they happened (visits, leads, purchases, repeat purchases, referrals,
//! reviews; the stage transitions follow from them at those times), NPS and CSAT surveys with
//! answers imported at the times customers gave them (after their purchases, ImportResponses),
//! a few goals, and the demo campaigns ([`campaigns`]), created first so the seeded year enrols
//! its contacts (most of whom agreed to marketing email). Deterministic for a given
//! `--seed-value`.

mod campaigns;

use clm_platform::convert::timestamp;
use clm_proto::common::v1::Money;
use clm_proto::contacts::v1 as cpb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_proto::feedback::v1 as fpb;
use clm_proto::feedback::v1::feedback_service_client::FeedbackServiceClient;
use clm_proto::lifecycle::v1 as lpb;
use clm_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use clm_proto::metrics::v1 as mpb;
use clm_proto::metrics::v1::metrics_service_client::MetricsServiceClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::client::Authed;

const DAY: i64 = 86_400_000_000;
/// Survey answers per ImportResponses call (the server takes at most 1000).
const ANSWER_BATCH: usize = 500;

/// Channel, share of contacts, cost per contact (EUR), chance a lead converts.
const CHANNELS: &[(cpb::AcquisitionChannel, f64, i64, f64)] = &[
    (cpb::AcquisitionChannel::OrganicSearch, 0.28, 0, 0.32),
    (cpb::AcquisitionChannel::PaidSearch, 0.25, 45, 0.18),
    (cpb::AcquisitionChannel::Social, 0.15, 25, 0.12),
    (cpb::AcquisitionChannel::Email, 0.10, 5, 0.30),
    (cpb::AcquisitionChannel::Referral, 0.10, 0, 0.50),
    (cpb::AcquisitionChannel::Event, 0.07, 80, 0.40),
    (cpb::AcquisitionChannel::Partner, 0.05, 30, 0.35),
];

const GIVEN: &[&str] = &["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret", "Linus"];
const FAMILY: &[&str] =
    &["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Hamilton"];

fn eur(units: i64) -> Money {
    Money { currency_code: "EUR".into(), units, nanos: 0 }
}

fn pick_channel(rng: &mut StdRng) -> (cpb::AcquisitionChannel, i64, f64) {
    let mut x: f64 = rng.random();
    for (c, share, cost, conv) in CHANNELS {
        if x < *share {
            return (*c, *cost, *conv);
        }
        x -= share;
    }
    let (c, _, cost, conv) = CHANNELS[0];
    (c, cost, conv)
}

fn campaign(at: i64) -> &'static str {
    let month = chrono::DateTime::from_timestamp_micros(at).map_or(1, |t| chrono::Datelike::month(&t));
    [
        "winter", "winter", "spring", "spring", "spring", "summer", "summer", "summer", "autumn", "autumn", "autumn",
        "winter",
    ][(month as usize + 11) % 12]
}

fn touch(contact: &str, kind: lpb::TouchpointKind, at: i64) -> lpb::JourneyEvent {
    lpb::JourneyEvent {
        contact_id: contact.into(),
        occur_time: Some(timestamp(at)),
        detail: Some(lpb::journey_event::Detail::Touchpoint(lpb::Touchpoint {
            channel: lpb::TouchpointChannel::Web as i32,
            kind: kind as i32,
            detail: String::new(),
        })),
        ..Default::default()
    }
}

/// What was created.
#[derive(Debug, Default)]
pub struct Summary {
    pub contacts: usize,
    pub events: usize,
    pub customers: usize,
    pub responses: usize,
    /// Demo campaigns created (the tenant may have had some).
    pub campaigns: usize,
}

#[allow(clippy::too_many_lines)]
pub async fn seed(ch: Authed, contacts: usize, seed_value: u64) -> anyhow::Result<Summary> {
    let mut rng = StdRng::seed_from_u64(seed_value);
    let now = chrono::Utc::now().timestamp_micros();
    let mut c = ContactsServiceClient::new(ch.clone());
    let mut l = LifecycleServiceClient::new(ch.clone());
    let mut f = FeedbackServiceClient::new(ch.clone());
    let mut m = MetricsServiceClient::new(ch);
    let mut summary = Summary { campaigns: campaigns::create(&mut l).await?, ..Summary::default() };

    // Contacts, imported in batches; each remembers its channel's conversion odds.
    struct Plan {
        acquired: i64,
        conversion: f64,
    }
    let mut plans = Vec::with_capacity(contacts);
    let mut batches = Vec::new();
    let run = rng.random::<u32>();
    for i in 0..contacts {
        let (channel, cost, conversion) = pick_channel(&mut rng);
        let acquired = now - rng.random_range(0..365) * DAY - rng.random_range(0..DAY);
        plans.push(Plan { acquired, conversion });
        let mut tags = Vec::new();
        if rng.random_bool(0.1) {
            tags.push("vip".to_owned());
        }
        if rng.random_bool(0.4) {
            tags.push("newsletter".to_owned());
        }
        // Most signed up for the newsletter and agreed to surveys; some only to surveys.
        let email_consent = |purpose: cpb::ConsentPurpose| cpb::Consent {
            channel: cpb::ConsentChannel::Email as i32,
            status: cpb::ConsentStatus::Granted as i32,
            purpose: purpose as i32,
            source: "demo-signup-form".into(),
            update_time: Some(timestamp(acquired)),
        };
        let mut consents = Vec::new();
        if rng.random_bool(0.8) {
            consents.push(email_consent(cpb::ConsentPurpose::Marketing));
        }
        if rng.random_bool(0.9) {
            consents.push(email_consent(cpb::ConsentPurpose::Feedback));
        }
        let contact = cpb::Contact {
            email: format!("demo-{run:08x}-{i}@example.com"),
            consents,
            given_name: GIVEN[rng.random_range(0..GIVEN.len())].into(),
            family_name: FAMILY[rng.random_range(0..FAMILY.len())].into(),
            tags,
            lead_score: rng.random_range(0..=100),
            acquisition: Some(cpb::Acquisition {
                channel: channel as i32,
                campaign: campaign(acquired).into(),
                cost: (cost > 0).then(|| eur(cost + rng.random_range(0..=cost / 2))),
                acquire_time: Some(timestamp(acquired)),
                ..Default::default()
            }),
            ..Default::default()
        };
        if batches.last().is_none_or(|b: &Vec<cpb::Contact>| b.len() >= 500) {
            batches.push(Vec::new());
        }
        batches.last_mut().expect("a batch").push(contact);
    }
    // One import call per batch (rows are numbered from 0 in each call), so no call runs into
    // the server's request timeout on a slow machine or a debug build.
    let mut ids = vec![String::new(); contacts];
    let mut first_row = 0;
    for contacts in batches {
        let n = contacts.len();
        let req = cpb::ImportContactsRequest { contacts };
        let mut results = c.import_contacts(tokio_stream::iter([req])).await?.into_inner();
        while let Some(msg) = results.message().await? {
            if let Some(cpb::import_contacts_response::Result::Rows(rows)) = msg.result {
                for r in rows.results {
                    let slot = usize::try_from(r.row).ok().and_then(|i| ids.get_mut(first_row + i));
                    if let Some(slot) = slot {
                        slot.clone_from(&r.contact_id);
                    }
                }
            }
        }
        first_row += n;
    }
    summary.contacts = ids.iter().filter(|i| !i.is_empty()).count();

    // Journeys: a visit; maybe a lead; maybe a first purchase and repeats; referrals, reviews.
    let mut events = Vec::new();
    let mut customers = Vec::new();
    let mut purchases = Vec::new();
    for (id, plan) in ids.iter().zip(&plans) {
        if id.is_empty() {
            continue;
        }
        let mut t = plan.acquired;
        events.push(touch(id, lpb::TouchpointKind::Visit, t));
        if !rng.random_bool(0.6) {
            continue;
        }
        t += rng.random_range(0..7 * DAY);
        if t >= now {
            continue;
        }
        events.push(touch(id, lpb::TouchpointKind::FormSubmitted, t));
        if !rng.random_bool(plan.conversion) {
            continue;
        }
        t += rng.random_range(DAY..30 * DAY);
        let mut order = 0;
        while t < now {
            order += 1;
            events.push(lpb::JourneyEvent {
                contact_id: id.clone(),
                occur_time: Some(timestamp(t)),
                detail: Some(lpb::journey_event::Detail::Purchase(lpb::Purchase {
                    order_id: format!("{id}-{order}"),
                    amount: Some(eur(rng.random_range(20..300))),
                    items: rng.random_range(1..5),
                })),
                ..Default::default()
            });
            if order == 1 {
                customers.push(id.clone());
            }
            purchases.push((id.clone(), t));
            if rng.random_bool(0.08) {
                events.push(lpb::JourneyEvent {
                    contact_id: id.clone(),
                    occur_time: Some(timestamp(t + DAY)),
                    detail: Some(lpb::journey_event::Detail::Referral(lpb::Referral::default())),
                    ..Default::default()
                });
            }
            if rng.random_bool(0.05) {
                events.push(lpb::JourneyEvent {
                    contact_id: id.clone(),
                    occur_time: Some(timestamp(t + 2 * DAY)),
                    detail: Some(lpb::journey_event::Detail::Review(lpb::Review {
                        rating: rng.random_range(3..=5),
                        platform: "g2".into(),
                        url: String::new(),
                    })),
                    ..Default::default()
                });
            }
            if !rng.random_bool(0.55) {
                break;
            }
            t += rng.random_range(15 * DAY..75 * DAY);
        }
    }
    events.retain(|e| e.occur_time.as_ref().is_some_and(|o| o.seconds * 1_000_000 < now));
    summary.events = events.len();
    summary.customers = customers.len();
    // One import call per 200 events, so no call runs into the server's request timeout (30 s),
    // even in a debug build on a busy machine.
    let mut refused = 0;
    for chunk in events.chunks(200) {
        let req = lpb::ImportJourneyEventsRequest { model_id: String::new(), events: chunk.to_vec() };
        let imported = l.import_journey_events(tokio_stream::iter([req])).await?.into_inner();
        refused += imported.errors.len();
        if let Some(first) = imported.errors.first() {
            tracing::warn!(?first, "journey events refused");
        }
    }
    anyhow::ensure!(refused * 100 <= events.len(), "{refused} of {} journey events were refused", events.len());

    // Surveys: relationship NPS and post-purchase CSAT, answered by a share of the customers a
    // few days after a purchase, so every month of the year has its answers. Imported with
    // those dates (ImportResponses), each with an external id, as answers from another survey
    // tool would be.
    let mut survey = async |name: &str, kind: fpb::SurveyKind| -> anyhow::Result<String> {
        Ok(f.create_survey(fpb::CreateSurveyRequest {
            survey: Some(fpb::Survey {
                display_name: name.into(),
                kind: kind as i32,
                status: fpb::SurveyStatus::Active as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await?
        .into_inner()
        .survey
        .map(|s| s.id)
        .unwrap_or_default())
    };
    let nps = survey("Relationship NPS", fpb::SurveyKind::Nps).await?;
    let csat = survey("Post-purchase CSAT", fpb::SurveyKind::Csat).await?;
    let mut answers: [(String, Vec<fpb::ImportedResponse>); 2] = [(nps, Vec::new()), (csat, Vec::new())];
    for (n, (id, bought)) in purchases.iter().enumerate() {
        for (k, (lo, hi, chance)) in [(0, 10, 0.35), (1, 5, 0.25)].into_iter().enumerate() {
            let at = bought + rng.random_range(DAY..7 * DAY);
            if at >= now || !rng.random_bool(chance) {
                continue;
            }
            // Skewed towards happy customers, with a tail of unhappy ones.
            let score = if rng.random_bool(0.75) {
                rng.random_range(hi - (hi - lo) / 3..=hi)
            } else {
                rng.random_range(lo..=hi)
            };
            answers[k].1.push(fpb::ImportedResponse {
                contact_id: id.clone(),
                answers: vec![fpb::Answer {
                    question_id: "score".into(),
                    value: Some(fpb::answer::Value::Rating(score)),
                }],
                submit_time: Some(timestamp(at)),
                external_id: format!("demo-{run:08x}-{k}-{n}"),
            });
        }
    }
    for (survey_id, responses) in answers {
        for chunk in responses.chunks(ANSWER_BATCH) {
            let out = f
                .import_responses(fpb::ImportResponsesRequest {
                    survey_id: survey_id.clone(),
                    responses: chunk.to_vec(),
                })
                .await?
                .into_inner();
            summary.responses += usize::try_from(out.imported).unwrap_or(0);
        }
    }

    // Goals worth a scorecard.
    let per_month = i64::try_from(contacts / 12).unwrap_or(0).max(1) as f64;
    // A close rate needs time for the period's leads to buy, so it is a quarterly goal.
    let (month, quarter) = (mpb::Granularity::Month, mpb::Granularity::Quarter);
    for (name, kpi, target, direction, period) in [
        ("New contacts per month", mpb::Kpi::NewContacts, per_month, mpb::GoalDirection::AtLeast, month),
        ("Close rate per quarter", mpb::Kpi::CloseRate, 0.25, mpb::GoalDirection::AtLeast, quarter),
        ("CAC per month", mpb::Kpi::Cac, 150.0, mpb::GoalDirection::AtMost, month),
        ("NPS per month", mpb::Kpi::Nps, 20.0, mpb::GoalDirection::AtLeast, month),
    ] {
        m.create_goal(mpb::CreateGoalRequest {
            goal: Some(mpb::Goal {
                display_name: name.into(),
                kpi: kpi as i32,
                target,
                direction: direction as i32,
                period: period as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await?;
    }
    Ok(summary)
}
