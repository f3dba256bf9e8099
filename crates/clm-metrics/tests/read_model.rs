//! The read model on SQLite and PostgreSQL, fed through the real handler: any arrival order
//! of the same events gives the same numbers, a segment counts as a tenant of its members, the
//! roll-ups answer any range, an order counts once and money never wraps.

mod common;

use clm_metrics::domain::kpi::Counter;
use clm_metrics::domain::{DAY, Gran};
use clm_metrics::store::read::{self, Group, KpiRow, Slice, cohorts, funnel};
use clm_platform::TenantId;
use clm_proto::events::v1 as ev;
use clm_testkit::Backend;
use common::*;
use sea_orm::DatabaseConnection;

/// Every KPI counter the handlers keep.
const NAMES: &[Counter] = Counter::ALL;

/// Every query of `sa` in tenant `a` equals the same query of `sb` in `b`.
async fn assert_same(db: &DatabaseConnection, a: &TenantId, sa: &Slice, b: &TenantId, sb: &Slice) {
    for window in [0, 1, 7, 31, 45, 90, 3660] {
        let mut x = funnel::funnel(db, a, sa, window).await.unwrap();
        let mut y = funnel::funnel(db, b, sb, window).await.unwrap();
        x.sort();
        y.sort();
        assert_eq!(x, y, "funnel, window {window}");
    }
    for group in [Group::All, Group::Day, Group::Channel, Group::ChannelCampaign] {
        let x = read::kpis(db, a, sa, NAMES, group).await.unwrap();
        let y = read::kpis(db, b, sb, NAMES, group).await.unwrap();
        assert_eq!(x, y, "kpis by {group:?}");
    }
    for basis in clm_metrics::domain::contribution::SPELL_BASES {
        for k in 0..12 {
            let at = sa.start + k * 20 * DAY;
            assert_eq!(
                read::customers_at(db, a, sa, basis, at).await.unwrap(),
                read::customers_at(db, b, sb, basis, at).await.unwrap(),
                "customers at {k} ({basis})"
            );
            assert_eq!(
                read::referring_customers_at(db, a, sa, basis, at).await.unwrap(),
                read::referring_customers_at(db, b, sb, basis, at).await.unwrap(),
                "referring customers at {k} ({basis})"
            );
            assert_eq!(
                read::customers_lost(db, a, sa, basis, at, at + 30 * DAY).await.unwrap(),
                read::customers_lost(db, b, sb, basis, at, at + 30 * DAY).await.unwrap(),
                "customers lost from {k} ({basis})"
            );
        }
    }
    let sorted = |mut h: std::collections::HashMap<String, Vec<(i64, i64)>>| {
        for v in h.values_mut() {
            v.retain(|b| b.1 != 0);
            v.sort_unstable();
        }
        let mut v: Vec<_> = h.into_iter().filter(|x| !x.1.is_empty()).collect();
        v.sort();
        v
    };
    assert_eq!(
        sorted(funnel::histograms(db, a, sa).await.unwrap()),
        sorted(funnel::histograms(db, b, sb).await.unwrap()),
        "histograms"
    );
    for g in [Gran::Week, Gran::Month] {
        let mut x = cohorts::cohorts(db, a, sa, g, sa.start, sa.end).await.unwrap();
        let mut y = cohorts::cohorts(db, b, sb, g, sb.start, sb.end).await.unwrap();
        for m in [&mut x, &mut y] {
            m.sizes.sort_unstable();
            m.cells.sort_unstable();
            m.revenue.sort_unstable();
            m.last.sort_unstable();
        }
        assert_eq!(x, y, "cohorts by {g:?}");
    }
    for g in [Gran::Day, Gran::Week, Gran::Month] {
        let mut x = cohorts::period_counts(db, a, sa, g, sa.start, sa.end).await.unwrap();
        let mut y = cohorts::period_counts(db, b, sb, g, sb.start, sb.end).await.unwrap();
        x.retain(|r| r.1 != 0);
        y.retain(|r| r.1 != 0);
        assert_eq!(x, y, "period counts by {g:?}");
    }
    assert_eq!(read::purchasers(db, a, sa).await.unwrap(), read::purchasers(db, b, sb).await.unwrap(), "purchasers");
    assert_eq!(read::lead_quality(db, a, sa, 50).await.unwrap(), read::lead_quality(db, b, sb, 50).await.unwrap());
}

/// `n` contacts' histories for `tenant`: (the final facts, what a noisy delivery adds).
fn histories(tenant: &str, n: usize, seed: u64, day0: i64) -> (Vec<ev::EventEnvelope>, Vec<ev::EventEnvelope>) {
    let mut rng = Lcg(seed);
    let (mut facts, mut noise) = (Vec::new(), Vec::new());
    for i in 0..n {
        let (f, x) = history(tenant, &format!("c{i:02}"), &mut Lcg(rng.next(1 << 30) as u64), day0);
        facts.extend(f);
        noise.extend(x);
    }
    (facts, noise)
}

/// The same final facts, delivered in time order one by one to one tenant, and to another
/// shuffled (contact events after the others, backdated purchases first, transitions out of
/// order), with transitions that are later retracted, purchases of the same order delivered
/// twice, in batches of random size: every query gives the same numbers, over the whole
/// history, a month, a channel, a campaign and a segment.
async fn any_order_gives_the_same_numbers(backend: Backend) {
    let Some((t, db)) = db(backend, "morder").await else { return };
    let day0 = 20_000 * DAY;
    for seed in [1_u64, 2, 3] {
        let (ordered, shuffled) = (format!("ordered{seed}"), format!("shuffled{seed}"));
        let (mut a, _) = histories(&ordered, 30, seed, day0);
        in_time_order(&mut a);
        feed(&db, &a, 1).await;
        let (mut b, noise) = histories(&shuffled, 30, seed, day0);
        let mut rng = Lcg(seed * 7919);
        // The same sale delivered twice (another event id, the same order).
        let again: Vec<ev::EventEnvelope> = b
            .iter()
            .filter(|e| e.event_id.starts_with("je-") && e.event_id.contains("-p"))
            .step_by(3)
            .map(|e| {
                let mut d = e.clone();
                d.event_id.push_str("-again");
                if let Some(ev::event_envelope::Payload::JourneyEventRecorded(j)) = &mut d.payload {
                    j.journey_event_id.push_str("-again");
                }
                d
            })
            .collect();
        b.extend(again);
        rng.shuffle(&mut b);
        // Noise: each retraction after its transition, somewhere later in the stream.
        for pair in noise.chunks(1) {
            let e = &pair[0];
            let pos = usize::try_from(rng.next(i64::try_from(b.len()).unwrap() + 1)).unwrap();
            if e.event_id.ends_with("-retracted") {
                let added = b.iter().position(|x| x.event_id == e.event_id.trim_end_matches("-retracted")).unwrap_or(0);
                let pos = pos.max(added + 1).min(b.len());
                b.insert(pos, e.clone());
            } else {
                b.insert(pos.min(b.len()), e.clone());
            }
        }
        let mut fed = 0;
        while fed < b.len() {
            let n = 1 + usize::try_from(rng.next(40)).unwrap();
            let end = (fed + n).min(b.len());
            feed(&db, &b[fed..end], n).await;
            fed = end;
        }
        let (ta, tb) = (tenant(&ordered), tenant(&shuffled));
        let whole = Slice { model: "m".into(), start: day0 - 30 * DAY, end: day0 + 500 * DAY, ..Slice::default() };
        assert_same(&db, &ta, &whole, &tb, &whole).await;
        let month = Slice { start: day0 + 60 * DAY, end: day0 + 91 * DAY, ..whole.clone() };
        assert_same(&db, &ta, &month, &tb, &month).await;
        let web = Slice { channel: Some(clm_metrics::domain::channel::Channel::from_key("web")), ..whole.clone() };
        assert_same(&db, &ta, &web, &tb, &web).await;
        let spring = Slice { campaign: Some("spring".into()), ..month.clone() };
        assert_same(&db, &ta, &spring, &tb, &spring).await;
        let ids: Vec<String> = (0..30).step_by(4).map(|i| format!("c{i:02}")).collect();
        let segment = Slice { contacts: Some(std::sync::Arc::new(ids)), ..whole.clone() };
        assert_same(&db, &ta, &segment, &tb, &segment).await;
        // The data is not trivial: revenue in two currencies, customers lost, funnel reaches.
        let rows = read::kpis(&db, &ta, &whole, &[Counter::Revenue, Counter::CustomersOut, Counter::Leads], Group::All)
            .await
            .unwrap();
        let currencies: std::collections::BTreeSet<&str> =
            rows.iter().filter(|r| r.name == Counter::Revenue).map(|r| r.currency.as_str()).collect();
        assert_eq!(currencies.len(), 2, "{rows:?}");
        assert!(rows.iter().any(|r| r.name == Counter::CustomersOut && r.n > 0), "{rows:?}");
    }
    t.cleanup().await;
}

/// A segment's numbers (read from the per-contact rows of its members) are the numbers of a
/// tenant that only ever had those contacts; the segment of everyone gives the aggregates.
async fn a_segment_counts_as_a_tenant_of_its_members(backend: Backend) {
    let Some((t, db)) = db(backend, "mseg").await else { return };
    let day0 = 20_000 * DAY;
    let mut rng = Lcg(7);
    let ids: Vec<String> = (0..40).map(|i| format!("c{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let seed = rng.next(1 << 30) as u64;
        let (mut all, _) = history("all", id, &mut Lcg(seed), day0);
        in_time_order(&mut all);
        feed(&db, &all, 10).await;
        if i % 3 == 0 {
            let (mut third, _) = history("third", id, &mut Lcg(seed), day0);
            in_time_order(&mut third);
            feed(&db, &third, 10).await;
        }
    }
    let (all, third) = (tenant("all"), tenant("third"));
    let whole = Slice { model: "m".into(), start: day0 - 30 * DAY, end: day0 + 400 * DAY, ..Slice::default() };
    let everyone = Slice { contacts: Some(std::sync::Arc::new(ids.clone())), ..whole.clone() };
    assert_same(&db, &all, &everyone, &all, &whole).await;
    let members: Vec<String> = ids.iter().step_by(3).cloned().collect();
    let segment = Slice { contacts: Some(std::sync::Arc::new(members)), ..whole.clone() };
    assert_same(&db, &all, &segment, &third, &whole).await;
    // Narrower ranges and a channel cut the same way.
    let spring = Slice { start: day0 + 30 * DAY, end: day0 + 90 * DAY, ..segment.clone() };
    assert_same(&db, &all, &spring, &third, &Slice { contacts: None, ..spring.clone() }).await;
    let web = Slice { channel: Some(clm_metrics::domain::channel::Channel::from_key("web")), ..segment.clone() };
    assert_same(&db, &all, &web, &third, &Slice { contacts: None, ..web.clone() }).await;
    // The segment is not everyone: it counts fewer contacts than the tenant.
    let n = |f: Vec<(String, i64)>| f.iter().find(|r| r.0 == "acquisition").map_or(0, |r| r.1);
    let fewer = n(funnel::funnel(&db, &all, &segment, 3660).await.unwrap());
    let everyone_n = n(funnel::funnel(&db, &all, &whole, 3660).await.unwrap());
    assert!(fewer > 0 && fewer < everyone_n, "segment {fewer} of {everyone_n}");
    // An empty segment counts nothing.
    let none = Slice { contacts: Some(std::sync::Arc::new(Vec::new())), ..whole.clone() };
    assert!(funnel::funnel(&db, &all, &none, 3660).await.unwrap().is_empty());
    assert_eq!(read::customers_at(&db, &all, &none, "lost", whole.end).await.unwrap(), 0);
    t.cleanup().await;
}

/// The unfiltered funnel and histograms read the roll-ups by block of days: over any range —
/// an hour, a day, across block boundaries, a year and more, starting mid-day — they give what
/// the per-contact first reaches and durations give.
async fn roll_ups_answer_any_range(backend: Backend) {
    let Some((t, db)) = db(backend, "mroll").await else { return };
    let day0 = 20_000 * DAY;
    let (mut events, _) = histories("acme", 40, 23, day0);
    in_time_order(&mut events);
    feed(&db, &events, 50).await;
    let acme = tenant("acme");
    let ids: Vec<String> = (0..40).map(|i| format!("c{i:02}")).collect();
    let sorted = |h: std::collections::HashMap<String, Vec<(i64, i64)>>| {
        let mut v: Vec<_> = h
            .into_iter()
            .map(|(k, mut b)| {
                b.retain(|x| x.1 != 0);
                b.sort_unstable();
                (k, b)
            })
            .filter(|x| !x.1.is_empty())
            .collect();
        v.sort();
        v
    };
    let mut rng = Lcg(29);
    let mut ranges = vec![
        (day0, day0 + 365 * DAY),
        (day0 - 300 * DAY, day0 + 700 * DAY),
        (day0 + HOUR, day0 + DAY),
        (day0 - 100 * DAY + 5 * HOUR, day0 + 240 * DAY + 3 * HOUR),
    ];
    for k in 0..40 {
        let start = day0 - 300 * DAY + rng.next(400) * DAY + rng.next(2) * rng.next(DAY);
        let end = if k % 4 == 0 {
            start + 1 + rng.next(20 * DAY)
        } else {
            (day0 + 10 * DAY + rng.next(250) * DAY + rng.next(DAY)).max(start + DAY)
        };
        ranges.push((start, end));
    }
    let mut seen = 0;
    for (start, end) in ranges {
        let whole = Slice { model: "m".into(), start, end, ..Slice::default() };
        let everyone = Slice { contacts: Some(std::sync::Arc::new(ids.clone())), ..whole.clone() };
        for window in [0, 7, 45, 3660] {
            let mut x = funnel::funnel(&db, &acme, &whole, window).await.unwrap();
            let mut y = funnel::funnel(&db, &acme, &everyone, window).await.unwrap();
            x.sort();
            y.sort();
            assert_eq!(x, y, "funnel of [{start}, {end}), window {window}");
            seen += x.iter().map(|r| r.1).sum::<i64>();
        }
        let x = sorted(funnel::histograms(&db, &acme, &whole).await.unwrap());
        assert_eq!(
            x,
            sorted(funnel::histograms(&db, &acme, &everyone).await.unwrap()),
            "histograms of [{start}, {end})"
        );
        seen += x.iter().flat_map(|h| h.1.iter().map(|b| b.1)).sum::<i64>();
    }
    assert!(seen > 1_000, "the ranges saw reaches and durations: {seen}");
    t.cleanup().await;
}

/// An order seen twice (two events, as from a purchase recorded twice upstream) counts once;
/// a counter at the top of its range saturates instead of wrapping or failing the batch, and
/// sums past i64 read exactly.
async fn an_order_counts_once_and_money_never_wraps(backend: Backend) {
    let Some((t, db)) = db(backend, "mrorder").await else { return };
    let day0 = 20_000 * DAY;
    let mut twice = purchase("acme", "a", "e2", day0, 7, "EUR");
    if let Some(ev::event_envelope::Payload::JourneyEventRecorded(j)) = &mut twice.payload {
        j.order_id = "order-e1".into();
    }
    feed(&db, &[purchase("acme", "a", "e1", day0, 7, "EUR"), twice, purchase("acme", "a", "e3", day0, 7, "EUR")], 1)
        .await;
    let acme = tenant("acme");
    let all = Slice { model: "m".into(), start: 0, end: day0 + 10 * DAY, ..Slice::default() };
    let revenue = |rows: &[KpiRow]| {
        let r = rows.iter().find(|r| r.name == Counter::Revenue).unwrap();
        (r.n, r.s.to_string())
    };
    let rows = read::kpis(&db, &acme, &all, &[Counter::Revenue], Group::All).await.unwrap();
    assert_eq!(revenue(&rows), (2, "14000000".to_string()), "order-e1 once, order-e3 once");
    let facts = read::customer(&db, &acme, "a").await.unwrap().unwrap();
    assert_eq!((facts.orders, facts.revenue, facts.currency.as_str()), (2, 14_000_000, "EUR"));
    // Two purchases of 10^12 EUR and one near the top of a counter on the next day.
    let next = day0 + DAY;
    feed(
        &db,
        &[
            purchase("acme", "b", "big1", next, 1_000_000_000_000, "EUR"),
            purchase("acme", "c", "big2", next, 1_000_000_000_000, "EUR"),
        ],
        2,
    )
    .await;
    clm_metrics::store::counters::add(
        &db,
        &acme,
        &clm_metrics::store::counters::KPI_DAILY,
        vec!["revenue".into(), "".into(), (next + DAY).into(), "x".into(), "".into(), "EUR".into()],
        &[1, i64::MAX - 5],
    )
    .await
    .unwrap();
    clm_metrics::store::counters::add(
        &db,
        &acme,
        &clm_metrics::store::counters::KPI_DAILY,
        vec!["revenue".into(), "".into(), (next + DAY).into(), "x".into(), "".into(), "EUR".into()],
        &[1, 10],
    )
    .await
    .unwrap();
    let last = Slice { start: next + DAY, ..all.clone() };
    let rows = read::kpis(&db, &acme, &last, &[Counter::Revenue], Group::All).await.unwrap();
    assert_eq!(revenue(&rows), (2, i64::MAX.to_string()), "saturated, not wrapped");
    let rows = read::kpis(&db, &acme, &all, &[Counter::Revenue], Group::All).await.unwrap();
    assert_eq!(
        revenue(&rows),
        (6, (i128::from(i64::MAX) + 2_000_000_000_000_000_000 + 14_000_000).to_string()),
        "exactly, past i64"
    );
    t.cleanup().await;
}

clm_testkit::backend_tests!(
    any_order_gives_the_same_numbers,
    a_segment_counts_as_a_tenant_of_its_members,
    roll_ups_answer_any_range,
    an_order_counts_once_and_money_never_wraps,
);
