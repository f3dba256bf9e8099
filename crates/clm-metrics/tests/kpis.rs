//! Every KPI against a hand computation on a small fixture of five contacts (docs/metrics.md
//! has each definition), on SQLite and PostgreSQL: purchases in two currencies, leads with no
//! previous stage (one before the range, one in it), a customer lost during the range, a lead
//! who did not convert. Each rate stays in [0, 1].

mod common;

use std::collections::BTreeMap;

use clm_metrics::api::kpi::Snapshot;
use clm_metrics::domain::channel::Channel;
use clm_metrics::domain::kpi::{Counter, KpiKind as Kpi};
use clm_metrics::domain::{self, DAY, Gran};
use clm_metrics::store::read::{Slice, cohorts, funnel};
use clm_proto::events::v1 as ev;
use clm_testkit::Backend;
use common::*;

/// The fixture, fed in the order given (the order does not matter: `read_model.rs`).
fn fixture(s: i64) -> Vec<ev::EventEnvelope> {
    let t = "acme";
    let d = |n: i64| s + n * DAY;
    let mut low = contact(t, "d", "web", "spring", d(3), None);
    if let Some(ev::event_envelope::Payload::ContactCreated(c)) = &mut low.payload {
        c.facts.as_mut().unwrap().lead_score = 10;
    }
    vec![
        // A: new in the range, a lead, a customer after 3 days, buys twice in EUR, refers, a promoter.
        contact(t, "a", "web", "spring", d(1), Some((100, "EUR"))),
        stage(t, "a", "a1", 0, "awareness", d(1), false),
        stage(t, "a", "a2", 1, "acquisition", d(2), false),
        stage(t, "a", "a3", 2, "conversion", d(5), false),
        purchase(t, "a", "a-p1", d(5), 100, "EUR"),
        purchase(t, "a", "a-p2", d(10), 50, "EUR"),
        journey(t, "a", "a-rf", ev::JourneyEventKind::Referral, d(12), None),
        score(t, "a", "a-nps", ev::SurveyKind::Nps, 10, d(6)),
        // B: a lead from its first stage (no previous one) before the range, a customer before
        // the range who goes dormant in it; bought in USD; a detractor who found it easy (CES 6).
        contact(t, "b", "paid_search", "", d(-40), Some((80, "USD"))),
        stage(t, "b", "b1", 0, "acquisition", d(-40), false),
        stage(t, "b", "b2", 1, "conversion", d(-30), false),
        stage(t, "b", "b3", 2, "dormant", d(3), false),
        purchase(t, "b", "b-p1", d(-30), 200, "USD"),
        score(t, "b", "b-nps", ev::SurveyKind::Nps, 3, d(1)),
        score(t, "b", "b-ces", ev::SurveyKind::Ces, 6, d(2)),
        // C: a customer throughout; buys in EUR before and in the range, and in USD; reviews;
        // satisfied (CSAT 5); found it hard (CES 2).
        contact(t, "c", "web", "", d(-60), None),
        stage(t, "c", "c1", 0, "awareness", d(-60), false),
        stage(t, "c", "c2", 1, "acquisition", d(-50), false),
        stage(t, "c", "c3", 2, "conversion", d(-45), false),
        stage(t, "c", "c4", 3, "retention", d(-20), false),
        purchase(t, "c", "c-p1", d(-45), 30, "EUR"),
        purchase(t, "c", "c-p2", d(4), 70, "EUR"),
        purchase(t, "c", "c-p3", d(8), 20, "USD"),
        journey(t, "c", "c-rv", ev::JourneyEventKind::Review, d(9), None),
        score(t, "c", "c-csat", ev::SurveyKind::Csat, 5, d(3)),
        score(t, "c", "c-ces", ev::SurveyKind::Ces, 2, d(4)),
        // D: new, a lead of low score from its first stage (no previous one) in the range, who
        // does not convert.
        low,
        stage(t, "d", "d1", 0, "acquisition", d(4), false),
        // E: new, nothing else.
        contact(t, "e", "referral", "", d(20), None),
    ]
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

async fn every_kpi_equals_its_hand_computation(backend: Backend) {
    let Some((t, db)) = db(backend, "mkpis").await else { return };
    let s = 20_000 * DAY;
    feed(&db, &fixture(s), 7).await;
    let acme = tenant("acme");
    let slice = Slice { model: "m".into(), start: s, end: s + 30 * DAY, ..Slice::default() };
    let snap = Snapshot::load(&db, &acme, &slice, 50).await.unwrap();
    assert_eq!(snap.currency, "EUR", "the reporting currency: the most money in the range");
    let expected: Vec<(Kpi, f64, &str)> = vec![
        (Kpi::NewContacts, 3.0, "A, D, E created in the range"),
        (Kpi::Leads, 2.0, "A (day 2), D (day 4, its first stage); B (its first stage) and C became leads before"),
        (Kpi::CostPerLead, 50.0, "100 EUR ÷ 2 leads"),
        (Kpi::LeadQualityRate, 0.5, "A converted; D scores 10 < 50"),
        (Kpi::NewCustomers, 1.0, "A"),
        (Kpi::CloseRate, 0.5, "of the 2 leads of the range, A became a customer"),
        (Kpi::Revenue, 220.0, "EUR: A 100 + 50, C 70 (C's 20 USD is not added)"),
        (Kpi::AverageDealSize, 100.0, "A's first purchase; C's first was before the range"),
        (Kpi::AverageOrderValue, 220.0 / 3.0, "220 EUR over the 3 EUR orders"),
        (Kpi::TimeToCloseDays, 3.0, "A: lead day 2, customer day 5 (bucket value, ±9%)"),
        (Kpi::Cac, 100.0, "100 EUR ÷ 1 new customer"),
        (Kpi::ConversionRate, 1.0 / 3.0, "of A, D, E created in the range, A became a customer"),
        (Kpi::ChurnRate, 0.5, "customers at the start: B, C; B left (dormant, day 3)"),
        (Kpi::RetentionRate, 0.5, "C stayed"),
        (Kpi::RepeatPurchaseRate, 2.0 / 3.0, "to the end: A, B, C bought; A and C twice or more"),
        (Kpi::PurchaseFrequency, 2.0, "4 orders (3 EUR, 1 USD) by 2 purchasers (A, C)"),
        (Kpi::Nps, 0.0, "A 10 (promoter), B 3 (detractor): 50% − 50%"),
        (Kpi::Csat, 100.0, "C 5"),
        (Kpi::Ces, 4.0, "B 6, C 2 (1 very difficult … 7 very easy)"),
        (Kpi::ReferralRate, 0.5, "customers at the end: A, C; A had referred"),
    ];
    for (k, want, why) in &expected {
        let (got, _) = snap.kpi(*k);
        let ok = if *k == Kpi::TimeToCloseDays { (got - want).abs() / want < 0.1 } else { close(got, *want) };
        assert!(ok, "{k:?}: {got}, expected {want} ({why})");
    }
    assert_eq!((snap.customers_at_start, snap.customers_at_end, snap.customers_lost), (2.0, 2.0, 1.0));
    assert_eq!(snap.c.other_currencies, vec!["USD".to_string()]);
    // Historical CLV: EUR revenue to the end (A 150, C 100) per contact who bought in EUR (A, C).
    assert_eq!(snap.historical_clv_micros, 125_000_000);
    // Predicted CLV: EUR order value over the year (250 ÷ 4 EUR orders) × orders per customer
    // per year (6 orders ÷ 2 customers at the end) × lifespan (no customer a year before the
    // end, so no churn measured: the 10-year cap).
    assert!(close(snap.predicted_clv / 1e6, 62.5 * 3.0 * 10.0), "{}", snap.predicted_clv);
    // CLV:CAC: that predicted CLV ÷ CAC (100 EUR ÷ 1 new customer).
    let ratio = snap.kpi(Kpi::ClvToCacRatio).0;
    assert!(close(ratio, 62.5 * 3.0 * 10.0 / 100.0), "CLV:CAC {ratio}");
    // Every rate stays in [0, 1].
    for k in [
        Kpi::LeadQualityRate,
        Kpi::CloseRate,
        Kpi::ConversionRate,
        Kpi::ChurnRate,
        Kpi::RetentionRate,
        Kpi::RepeatPurchaseRate,
        Kpi::ReferralRate,
    ] {
        let (v, _) = snap.kpi(k);
        assert!((0.0..=1.0).contains(&v), "{k:?} = {v}");
    }
    // A channel filter applies to every base: web has A, C, D; at the start only C, who stayed.
    let web = Slice { channel: Some(Channel::from_key("web")), ..slice.clone() };
    let w = Snapshot::load(&db, &acme, &web, 50).await.unwrap();
    assert_eq!((w.customers_at_start, w.customers_lost, w.churn_rate), (1.0, 0.0, 0.0));
    assert!(close(w.kpi(Kpi::ReferralRate).0, 0.5), "web customers at the end A, C; A had referred");
    assert!(close(w.kpi(Kpi::Leads).0, 2.0) && close(w.kpi(Kpi::CloseRate).0, 0.5));
    // And a campaign: spring has A and D.
    let spring = Slice { campaign: Some("spring".into()), ..slice.clone() };
    let sp = Snapshot::load(&db, &acme, &spring, 50).await.unwrap();
    assert_eq!((sp.customers_at_start, sp.kpi(Kpi::NewContacts).0, sp.kpi(Kpi::Revenue).0), (0.0, 2.0, 150.0));
    // The model leaves dormancy out of churn (lifecycle's setting, on its StageChanged): B,
    // dormant, is still a customer; nobody left.
    let flagged = of_revision(&stage("acme", "e", "e1", 0, "awareness", s + 21 * DAY, false), 2, true);
    feed(&db, &[flagged], 1).await;
    let snap = Snapshot::load(&db, &acme, &slice, 50).await.unwrap();
    assert_eq!((snap.customers_at_start, snap.customers_lost, snap.customers_at_end), (2.0, 0.0, 3.0));
    assert!(close(snap.kpi(Kpi::ChurnRate).0, 0.0) && close(snap.kpi(Kpi::RetentionRate).0, 1.0));
    assert!(close(snap.kpi(Kpi::ReferralRate).0, 1.0 / 3.0), "customers A, B, C; A had referred");
    t.cleanup().await;
}

/// The churn basis is the model's setting of its newest revision, whichever event brings it
/// and in whatever order they come: a StageChanged of an older revision consumed late does not
/// restore the older setting, and a change of the setting alone (LifecycleModelChanged, no
/// StageChanged) takes effect.
async fn the_newest_model_revision_sets_the_churn_basis(backend: Backend) {
    let Some((t, db)) = db(backend, "mrev").await else { return };
    let s = 20_000 * DAY;
    feed(&db, &fixture(s), 7).await;
    let acme = tenant("acme");
    let slice = Slice { model: "m".into(), start: s, end: s + 30 * DAY, ..Slice::default() };
    let churn = async || {
        let snap = Snapshot::load(&db, &acme, &slice, 50).await.unwrap();
        (snap.customers_lost, snap.kpi(Kpi::ChurnRate).0)
    };
    assert_eq!(churn().await, (1.0, 0.5), "dormancy is churn (the fixture's events: no revision, the default)");
    // Revision 2 leaves dormancy out: B, dormant, did not leave.
    let e1 = stage("acme", "e", "e1", 0, "awareness", s + 21 * DAY, false);
    feed(&db, &[of_revision(&e1, 2, true)], 1).await;
    assert_eq!(churn().await, (0.0, 0.0), "revision 2");
    // A StageChanged published under revision 1 (dormancy is churn), consumed after: ignored.
    let d2 = stage("acme", "d", "d2", 1, "conversion", s + 25 * DAY, false);
    feed(&db, &[of_revision(&d2, 1, false)], 1).await;
    assert_eq!(churn().await, (0.0, 0.0), "an older revision consumed late changes nothing");
    // So is the model's own event of an older revision, and one without a revision.
    feed(&db, &[model_changed("acme", 1, false), of_revision(&e1, 0, false)], 1).await;
    assert_eq!(churn().await, (0.0, 0.0), "older revisions again");
    // Revision 3 turns the setting back, with no StageChanged: dormancy is churn again.
    feed(&db, &[model_changed("acme", 3, false)], 1).await;
    assert_eq!(churn().await, (1.0, 0.5), "the setting alone, revision 3");
    // The same revision again (a redelivery under another event id) changes nothing.
    feed(&db, &[of_revision(&d2, 3, false)], 1).await;
    assert_eq!(churn().await, (1.0, 0.5), "revision 3 again");
    t.cleanup().await;
}

/// A slice's duration histograms, each sorted: name → [(bucket, n)].
async fn durations(db: &sea_orm::DatabaseConnection, slice: &Slice) -> BTreeMap<String, Vec<(i64, i64)>> {
    let mut out: BTreeMap<String, Vec<(i64, i64)>> =
        funnel::histograms(db, &tenant("acme"), slice).await.unwrap().into_iter().collect();
    for h in out.values_mut() {
        h.sort_unstable();
    }
    out
}

/// Histograms of durations given in days: name → the buckets of its durations, counted.
fn by_hand(durations: &[(&str, &[i64])]) -> BTreeMap<String, Vec<(i64, i64)>> {
    let mut out = BTreeMap::new();
    for (name, days) in durations {
        let mut cells: BTreeMap<i64, i64> = BTreeMap::new();
        for d in *days {
            *cells.entry(domain::bucket(d * DAY)).or_default() += 1;
        }
        out.insert((*name).to_owned(), cells.into_iter().collect());
    }
    out
}

/// Stage-to-stage times and time to close under a channel and a campaign filter: each counts
/// only the filter's contacts (docs/metrics.md § Funnel, Time to close), so the filtered
/// answers differ from the unfiltered one; every histogram computed by hand.
async fn durations_under_a_filter_count_only_its_contacts(backend: Backend) {
    let Some((t, db)) = db(backend, "mdur").await else { return };
    let s = 20_000 * DAY;
    let d = |n: i64| s + n * DAY;
    let a = "acme";
    let events = vec![
        // P (web): awareness → acquisition in 2 days → conversion in 5; closes in 5 (lead day 3).
        contact(a, "p", "web", "", d(0), None),
        stage(a, "p", "p1", 0, "awareness", d(1), false),
        stage(a, "p", "p2", 1, "acquisition", d(3), false),
        stage(a, "p", "p3", 2, "conversion", d(8), false),
        // Q (paid_search): acquisition in 1 day, conversion in 20; closes in 20.
        contact(a, "q", "paid_search", "", d(0), None),
        stage(a, "q", "q1", 0, "awareness", d(1), false),
        stage(a, "q", "q2", 1, "acquisition", d(2), false),
        stage(a, "q", "q3", 2, "conversion", d(22), false),
        // R (paid_search): enters at acquisition (no stage-to-stage time for it), conversion in
        // 10; closes in 10.
        contact(a, "r", "paid_search", "", d(0), None),
        stage(a, "r", "r1", 0, "acquisition", d(4), false),
        stage(a, "r", "r2", 1, "conversion", d(14), false),
        // S (web, spring): acquisition in 8 days; does not close.
        contact(a, "s", "web", "spring", d(0), None),
        stage(a, "s", "s1", 0, "awareness", d(2), false),
        stage(a, "s", "s2", 1, "acquisition", d(10), false),
        // Before the range: not counted in it.
        contact(a, "o", "web", "", d(-20), None),
        stage(a, "o", "o1", 0, "awareness", d(-20), false),
        stage(a, "o", "o2", 1, "acquisition", d(-19), false),
    ];
    feed(&db, &events, 5).await;
    let all = Slice { model: "m".into(), start: s, end: s + 30 * DAY, ..Slice::default() };
    let web = Slice { channel: Some(Channel::from_key("web")), ..all.clone() };
    let paid = Slice { channel: Some(Channel::from_key("paid_search")), ..all.clone() };
    let spring = Slice { campaign: Some("spring".into()), ..all.clone() };
    let ttc = "__time_to_close";
    assert_eq!(
        durations(&db, &all).await,
        by_hand(&[("acquisition", &[2, 1, 8]), ("conversion", &[5, 20, 10]), (ttc, &[5, 20, 10])])
    );
    assert_eq!(
        durations(&db, &web).await,
        by_hand(&[("acquisition", &[2, 8]), ("conversion", &[5]), (ttc, &[5])]),
        "web: P and S"
    );
    assert_eq!(
        durations(&db, &paid).await,
        by_hand(&[("acquisition", &[1]), ("conversion", &[20, 10]), (ttc, &[20, 10])]),
        "paid_search: Q and R"
    );
    assert_eq!(durations(&db, &spring).await, by_hand(&[("acquisition", &[8])]), "spring: S");
    // The KPI: the median time to close of all is R's 10 days; of web, P's 5.
    let acme = tenant("acme");
    let median = |snap: &Snapshot| snap.kpi(Kpi::TimeToCloseDays).0;
    let near = |got: f64, want: f64| (got - want).abs() / want < 0.1;
    let (everyone, of_web) =
        (Snapshot::load(&db, &acme, &all, 50).await.unwrap(), Snapshot::load(&db, &acme, &web, 50).await.unwrap());
    assert!(near(median(&everyone), 10.0), "all: {}", median(&everyone));
    assert!(near(median(&of_web), 5.0), "web: {}", median(&of_web));
    assert!(close(everyone.c.n(Counter::NewCustomers), 3.0) && close(of_web.c.n(Counter::NewCustomers), 1.0));
    t.cleanup().await;
}

/// Cohort revenue is kept per currency and never summed across currencies; a member who
/// bought in two currencies in one period counts once; a segment of every contact reads the
/// same matrix from the members' own rows.
async fn cohort_revenue_is_per_currency_and_members_count_once(backend: Backend) {
    let Some((t, db)) = db(backend, "mcoh").await else { return };
    let a = "acme";
    let m0 = domain::period_start(20_000 * DAY, Gran::Month);
    let m1 = domain::period_start(m0 + 40 * DAY, Gran::Month);
    let m2 = domain::period_start(m1 + 40 * DAY, Gran::Month);
    let events = vec![
        // X: first buys in month 0 in EUR and USD, then in EUR in month 1.
        contact(a, "x", "web", "", m0, None),
        purchase(a, "x", "x1", m0 + 2 * DAY, 100, "EUR"),
        purchase(a, "x", "x2", m0 + 3 * DAY, 40, "USD"),
        purchase(a, "x", "x3", m1 + 2 * DAY, 30, "EUR"),
        // Y: first buys in month 0 in USD, again in month 1.
        contact(a, "y", "web", "", m0, None),
        purchase(a, "y", "y1", m0 + 5 * DAY, 60, "USD"),
        purchase(a, "y", "y2", m1 + 5 * DAY, 10, "USD"),
        // Z: first buys in month 1, in EUR.
        contact(a, "z", "web", "", m0, None),
        purchase(a, "z", "z1", m1 + 7 * DAY, 25, "EUR"),
    ];
    feed(&db, &events, 4).await;
    let acme = tenant("acme");
    let m = 1_000_000;
    let want = cohorts::Cohorts {
        sizes: vec![(m0, 2), (m1, 1)],
        cells: vec![(m0, 0, 2), (m0, 1, 2), (m1, 0, 1)],
        revenue: vec![
            (m0, 0, "EUR".into(), 100 * m),
            (m0, 0, "USD".into(), 100 * m),
            (m0, 1, "EUR".into(), 30 * m),
            (m0, 1, "USD".into(), 10 * m),
            (m1, 0, "EUR".into(), 25 * m),
        ],
        last: vec![(m0, 1, 2), (m1, 0, 1)],
    };
    let sorted = |mut c: cohorts::Cohorts| {
        c.sizes.sort_unstable();
        c.cells.sort_unstable();
        c.revenue.sort_unstable();
        c.last.sort_unstable();
        c
    };
    let all = Slice { start: m0, end: m2, ..Slice::default() };
    let got = sorted(cohorts::cohorts(&db, &acme, &all, Gran::Month, m0, m2).await.unwrap());
    assert_eq!(got, want, "month 0: X and Y active once each; EUR 100 (X) and USD 100 (X 40 + Y 60) apart");
    let members = Slice { contacts: Some(std::sync::Arc::new(vec!["x".into(), "y".into(), "z".into()])), ..all };
    let seg = sorted(cohorts::cohorts(&db, &acme, &members, Gran::Month, m0, m2).await.unwrap());
    assert_eq!(seg, want, "a segment of every contact");
    t.cleanup().await;
}

clm_testkit::backend_tests!(
    every_kpi_equals_its_hand_computation,
    the_newest_model_revision_sets_the_churn_basis,
    durations_under_a_filter_count_only_its_contacts,
    cohort_revenue_is_per_currency_and_members_count_once,
);
