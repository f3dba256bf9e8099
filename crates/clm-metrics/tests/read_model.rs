//! The read model's incremental updates on hand-computed data, on SQLite and PostgreSQL:
//! backdated events land in the right day, moves are not double counted.

use clm_metrics::domain::DAY;
use clm_metrics::store::model::{self, Happening, Slice, StageChange};
use clm_platform::testing::{Backend, TestDb};

async fn db(backend: Backend, label: &str) -> Option<(TestDb, sea_orm::DatabaseConnection)> {
    let t = TestDb::create(backend, label).await?;
    let db = clm_platform::db::connect(&t.url, &clm_platform::testing::settings(&[]).database).await.unwrap();
    clm_platform::db::migrate::<clm_metrics::store::migrations::Migrator>(&db).await.unwrap();
    Some((t, db))
}

fn change<'a>(contact: &'a str, from: &'a str, to: &'a str, cat: &'a str, pos: i32, at: i64) -> StageChange<'a> {
    StageChange {
        contact,
        model: "m",
        from_stage: from,
        to_stage: to,
        from_category: if from.is_empty() { "" } else { "prospect" },
        to_category: cat,
        to_role: "",
        position: pos,
        reactivation: false,
        at,
        from_enter: (!from.is_empty()).then_some(at - DAY),
    }
}

async fn reaches_and_purchases_add_up(backend: Backend) {
    let Some((t, db)) = db(backend, "mrm").await else { return };
    let day0 = 20_000 * DAY;
    model::apply_stage_change(&db, "acme", &change("a", "", "awareness", "prospect", 0, day0)).await.unwrap();
    model::apply_stage_change(&db, "acme", &change("a", "awareness", "acquisition", "prospect", 1, day0 + DAY))
        .await
        .unwrap();
    model::apply_stage_change(&db, "acme", &change("a", "acquisition", "conversion", "customer", 2, day0 + 3 * DAY))
        .await
        .unwrap();
    // A backdated earlier reach of acquisition moves the count to its day, not a second count.
    model::apply_stage_change(
        &db,
        "acme",
        &change("a", "awareness", "acquisition", "prospect", 1, day0 + 12 * 3_600_000_000),
    )
    .await
    .unwrap();
    model::apply_journey_event(
        &db,
        "acme",
        "a",
        day0 + 3 * DAY,
        &Happening::Purchase { amount: 10_000_000, currency: "EUR".into() },
    )
    .await
    .unwrap();
    model::apply_journey_event(
        &db,
        "acme",
        "a",
        day0 + 40 * DAY,
        &Happening::Purchase { amount: 5_000_000, currency: "EUR".into() },
    )
    .await
    .unwrap();
    model::apply_review(&db, "acme", "a", day0 + 41 * DAY).await.unwrap();
    let all = Slice { model: "m".into(), start: 0, end: day0 + 100 * DAY, ..Slice::default() };
    let mut reach = model::funnel(&db, "acme", &all, 90).await.unwrap();
    reach.sort();
    assert_eq!(reach, vec![("acquisition".into(), 1), ("awareness".into(), 1), ("conversion".into(), 1)]);
    // Within a window of 0 days only what happened on the entry day counts: awareness and the
    // backdated acquisition (moved, not counted twice).
    let mut same_day = model::funnel(&db, "acme", &all, 0).await.unwrap();
    same_day.sort();
    assert_eq!(same_day, vec![("acquisition".into(), 1), ("awareness".into(), 1)]);
    // A backdated earlier entry moves the whole contribution to the earlier cohort day.
    model::apply_stage_change(&db, "acme", &change("a", "", "awareness", "prospect", 0, day0 - 5 * DAY)).await.unwrap();
    let old_cohort = Slice { start: day0, ..all.clone() };
    assert!(model::funnel(&db, "acme", &old_cohort, 90).await.unwrap().is_empty());
    let mut moved = model::funnel(&db, "acme", &all, 90).await.unwrap();
    moved.sort();
    assert_eq!(moved, vec![("acquisition".into(), 1), ("awareness".into(), 1), ("conversion".into(), 1)]);
    let kpis =
        model::kpis(&db, "acme", &all, &["leads", "new_customers", "revenue", "repeat_customers", "reviews"], "")
            .await
            .unwrap();
    let get =
        |n: &str| kpis.iter().filter(|r| r.name == n).map(|r| (r.n, r.s)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert_eq!(get("leads").0, 1);
    assert_eq!(get("new_customers").0, 1);
    assert_eq!(get("revenue"), (2, 15_000_000));
    assert_eq!(get("repeat_customers").0, 1);
    assert_eq!(get("reviews").0, 1);
    assert_eq!(model::customers_at(&db, "acme", &all, day0 + 10 * DAY).await.unwrap(), 1);
    let (sizes, cells, _) =
        model::cohorts(&db, "acme", &all, clm_metrics::domain::Gran::Month, 0, day0 + 100 * DAY).await.unwrap();
    assert_eq!(sizes.len(), 1);
    assert_eq!(cells.iter().map(|c| c.3).sum::<i64>(), 15_000_000, "cohort revenue");
    t.cleanup().await;
}

/// A small deterministic generator (no dependency, same stream on every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: i64) -> i64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % u64::try_from(n).unwrap()) as i64
    }
}

/// One contact's history: stage changes in order, with a late backdated reach now and then,
/// purchases (some late), a review, a score.
async fn feed_contact(db: &impl sea_orm::ConnectionTrait, tenant: &str, id: &str, rng: &mut Lcg, day0: i64) {
    let channel = ["web", "paid_search", "referral"][rng.next(3) as usize];
    model::exec(
        db,
        "INSERT INTO contact_facts (tenant_id, contact_id, acquisition_channel, campaign, lead_score, country_code, create_time, state) \
         VALUES (?, ?, ?, '', ?, '', ?, 'active')",
        vec![tenant.into(), id.into(), channel.into(), rng.next(100).into(), day0.into()],
    )
    .await
    .unwrap();
    let t0 = day0 + rng.next(120) * DAY + rng.next(DAY);
    let stages =
        [("awareness", "prospect"), ("acquisition", "prospect"), ("conversion", "customer"), ("retention", "customer")];
    let reach = 1 + rng.next(4) as usize;
    let mut at = t0;
    let mut enter = t0;
    for i in 0..reach {
        let (from, from_cat) = if i == 0 { ("", "") } else { stages[i - 1] };
        let (to, cat) = stages[i];
        let c = StageChange {
            contact: id,
            model: "m",
            from_stage: from,
            to_stage: to,
            from_category: from_cat,
            to_category: cat,
            to_role: "",
            position: i32::try_from(i).unwrap(),
            reactivation: false,
            at,
            from_enter: (i > 0).then_some(enter),
        };
        model::apply_stage_change(db, tenant, &c).await.unwrap();
        enter = at;
        at += rng.next(40) * DAY + rng.next(DAY);
    }
    if reach >= 3 && rng.next(3) == 0 {
        // Dormant, then back (reactivated) or churned.
        let (to, cat, role) =
            if rng.next(2) == 0 { ("dormant", "inactive", "dormant") } else { ("churned", "inactive", "churned") };
        let c = StageChange {
            contact: id,
            model: "m",
            from_stage: stages[reach - 1].0,
            to_stage: to,
            from_category: "customer",
            to_category: cat,
            to_role: role,
            position: 9,
            reactivation: false,
            at,
            from_enter: Some(enter),
        };
        model::apply_stage_change(db, tenant, &c).await.unwrap();
        at += rng.next(30) * DAY;
        if role == "dormant" && rng.next(2) == 0 {
            let back = StageChange {
                from_stage: to,
                to_stage: "retention",
                from_category: cat,
                to_category: "customer",
                to_role: "",
                position: 3,
                reactivation: true,
                at,
                from_enter: Some(at),
                ..c
            };
            model::apply_stage_change(db, tenant, &back).await.unwrap();
        }
    }
    if reach >= 2 && rng.next(2) == 0 {
        // A late, backdated reach of acquisition (lifecycle re-derives history).
        let c = StageChange {
            contact: id,
            model: "m",
            from_stage: "awareness",
            to_stage: "acquisition",
            from_category: "prospect",
            to_category: "prospect",
            to_role: "",
            position: 1,
            reactivation: false,
            at: t0 + rng.next(DAY),
            from_enter: Some(t0),
        };
        model::apply_stage_change(db, tenant, &c).await.unwrap();
    }
    for _ in 0..rng.next(5) {
        // Purchases in any order: later ones first, late ones in earlier periods.
        let when = t0 + rng.next(200) * DAY;
        let h = Happening::Purchase { amount: 1_000_000 * (1 + rng.next(50)), currency: "EUR".into() };
        model::apply_journey_event(db, tenant, id, when, &h).await.unwrap();
    }
    match rng.next(4) {
        0 => model::apply_review(db, tenant, id, t0 + rng.next(90) * DAY).await.unwrap(),
        1 => model::apply_journey_event(db, tenant, id, t0 + rng.next(90) * DAY, &Happening::Referral).await.unwrap(),
        _ => {}
    }
    model::apply_score(db, tenant, id, "nps", i32::try_from(rng.next(11)).unwrap(), t0 + rng.next(60) * DAY)
        .await
        .unwrap();
}

/// Every query of `slice` in tenant `a` equals the same query of `b`'s aggregates.
async fn assert_same(db: &sea_orm::DatabaseConnection, a: &str, sa: &Slice, b: &str, sb: &Slice) {
    use clm_metrics::domain::Gran;
    for window in [0, 1, 7, 31, 45, 90, 3660] {
        let mut x = model::funnel(db, a, sa, window).await.unwrap();
        let mut y = model::funnel(db, b, sb, window).await.unwrap();
        x.sort();
        y.sort();
        assert_eq!(x, y, "funnel, window {window}");
    }
    for group in ["", "day", "channel"] {
        let names = [
            "leads",
            "new_customers",
            "customers_in",
            "customers_out",
            "dormant",
            "churned",
            "reactivated",
            "revenue",
            "repeat_orders",
            "repeat_customers",
            "first_purchases",
            "referrals",
            "referrers",
            "reviews",
            "reviewers",
            "nps_total",
            "nps_promoters",
            "nps_detractors",
        ];
        let x = model::kpis(db, a, sa, &names, group).await.unwrap();
        let y = model::kpis(db, b, sb, &names, group).await.unwrap();
        assert_eq!(x, y, "kpis by {group:?}");
    }
    for k in 0..12 {
        let at = sa.start + k * 20 * DAY;
        assert_eq!(
            model::customers_at(db, a, sa, at).await.unwrap(),
            model::customers_at(db, b, sb, at).await.unwrap(),
            "customers at {k}"
        );
    }
    let sorted = |mut h: std::collections::HashMap<String, Vec<(i64, i64)>>| {
        for v in h.values_mut() {
            v.sort_unstable();
        }
        let mut v: Vec<_> = h.into_iter().collect();
        v.sort();
        v
    };
    assert_eq!(
        sorted(model::histograms(db, a, sa).await.unwrap()),
        sorted(model::histograms(db, b, sb).await.unwrap()),
        "histograms"
    );
    for g in [Gran::Week, Gran::Month] {
        let (mut s1, mut c1, mut l1) = model::cohorts(db, a, sa, g, sa.start, sa.end).await.unwrap();
        let (mut s2, mut c2, mut l2) = model::cohorts(db, b, sb, g, sb.start, sb.end).await.unwrap();
        for v in [&mut s1, &mut s2] {
            v.sort_unstable();
        }
        for v in [&mut c1, &mut c2] {
            v.retain(|c| c.2 != 0 || c.3 != 0);
            v.sort_unstable();
        }
        for v in [&mut l1, &mut l2] {
            v.retain(|c| c.2 != 0);
            v.sort_unstable();
        }
        assert_eq!((s1, c1, l1), (s2, c2, l2), "cohorts by {g:?}");
    }
    for g in [Gran::Day, Gran::Week, Gran::Month] {
        let mut x = model::period_counts(db, a, sa, g, sa.start, sa.end).await.unwrap();
        let mut y = model::period_counts(db, b, sb, g, sb.start, sb.end).await.unwrap();
        x.retain(|r| r.1 != 0);
        y.retain(|r| r.1 != 0);
        assert_eq!(x, y, "period counts by {g:?}");
    }
    assert_eq!(model::purchasers(db, a, sa).await.unwrap(), model::purchasers(db, b, sb).await.unwrap());
    assert_eq!(model::lead_quality(db, a, sa, 50).await.unwrap(), model::lead_quality(db, b, sb, 50).await.unwrap());
}

/// A segment's numbers (read from the per-contact facts of its members) are the numbers of a
/// tenant that only ever had those contacts; the segment of everyone gives the aggregates.
async fn a_segment_counts_as_a_tenant_of_its_members(backend: Backend) {
    let Some((t, db)) = db(backend, "mseg").await else { return };
    let day0 = 20_000 * DAY;
    let mut rng = Lcg(7);
    let ids: Vec<String> = (0..40).map(|i| format!("c{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let seed = rng.next(1 << 30) as u64;
        feed_contact(&db, "all", id, &mut Lcg(seed), day0).await;
        if i % 3 == 0 {
            feed_contact(&db, "third", id, &mut Lcg(seed), day0).await;
        }
    }
    let whole = Slice { model: "m".into(), start: day0 - 30 * DAY, end: day0 + 400 * DAY, ..Slice::default() };
    let everyone = Slice { contacts: Some(std::sync::Arc::new(ids.clone())), ..whole.clone() };
    assert_same(&db, "all", &everyone, "all", &whole).await;
    let members: Vec<String> = ids.iter().step_by(3).cloned().collect();
    let segment = Slice { contacts: Some(std::sync::Arc::new(members)), ..whole.clone() };
    assert_same(&db, "all", &segment, "third", &whole).await;
    // Narrower ranges and a channel cut the same way.
    let spring = Slice { start: day0 + 30 * DAY, end: day0 + 90 * DAY, ..segment.clone() };
    assert_same(&db, "all", &spring, "third", &Slice { contacts: None, ..spring.clone() }).await;
    let web = Slice { channel: Some("web".into()), ..segment.clone() };
    let funnel_web = model::funnel(&db, "all", &web, 90).await.unwrap();
    assert_eq!(funnel_web, {
        let mut f = model::funnel(&db, "third", &Slice { contacts: None, ..web.clone() }, 90).await.unwrap();
        f.sort();
        f
    });
    // The segment is not everyone: it counts fewer contacts than the tenant.
    let n = |f: Vec<(String, i64)>| f.iter().find(|r| r.0 == "awareness").map_or(0, |r| r.1);
    let fewer = n(model::funnel(&db, "all", &segment, 3660).await.unwrap());
    let all = n(model::funnel(&db, "all", &whole, 3660).await.unwrap());
    assert!(fewer > 0 && fewer < all, "segment {fewer} of {all}");
    // An empty segment counts nothing.
    let none = Slice { contacts: Some(std::sync::Arc::new(Vec::new())), ..whole.clone() };
    assert!(model::funnel(&db, "all", &none, 3660).await.unwrap().is_empty());
    assert_eq!(model::customers_at(&db, "all", &none, whole.end).await.unwrap(), 0);
    t.cleanup().await;
}

/// A late event of an earlier period: that period becomes the first, the next one returning.
async fn late_activity_moves_first_and_returning(backend: Backend) {
    use clm_metrics::domain::{Gran, period_start};
    let Some((t, db)) = db(backend, "mlate").await else { return };
    let march = 20_148 * DAY; // 2025-03-01
    let feb = period_start(march - DAY, Gran::Month);
    let buy = Happening::Purchase { amount: 1_000_000, currency: "EUR".into() };
    model::apply_journey_event(&db, "acme", "a", march + DAY, &buy).await.unwrap();
    model::apply_journey_event(&db, "acme", "a", feb + DAY, &buy).await.unwrap();
    let all = Slice::default();
    let counts = model::period_counts(&db, "acme", &all, Gran::Month, feb, march + 40 * DAY).await.unwrap();
    // (period, active, returning, first)
    assert_eq!(counts, vec![(feb, 1, 0, 1), (march, 1, 1, 0)]);
    t.cleanup().await;
}

/// A consumer batch sums its counters in memory and writes them at its end
/// (`store::counters::deferred`): the same events give the same numbers as written one by one,
/// for the whole tenant and for a segment (the per-contact counters).
async fn batched_counters_equal_immediate(backend: Backend) {
    use clm_metrics::store::counters;
    use sea_orm::TransactionTrait as _;
    let Some((t, db)) = db(backend, "mbatch").await else { return };
    let day0 = 20_000 * DAY;
    let mut rng = Lcg(11);
    let contacts: Vec<(String, u64)> = (0..45).map(|i| (format!("c{i:02}"), rng.next(1 << 30) as u64)).collect();
    for (id, seed) in &contacts {
        feed_contact(&db, "each", id, &mut Lcg(*seed), day0).await;
    }
    let sum = async |db: &sea_orm::DatabaseTransaction| {
        let r = model::one(
            db,
            "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) AS n FROM kpi_daily WHERE tenant_id = 'batched'",
            vec![],
        )
        .await
        .unwrap()
        .expect("a row");
        r.try_get::<i64>("", "n").unwrap()
    };
    for batch in contacts.chunks(15) {
        let txn = db.begin().await.unwrap();
        let before = sum(&txn).await;
        counters::deferred(&txn, async {
            for (id, seed) in batch {
                feed_contact(&txn, "batched", id, &mut Lcg(*seed), day0).await;
            }
            assert_eq!(sum(&txn).await, before, "counters are held back until the batch ends");
            Ok(())
        })
        .await
        .unwrap();
        assert!(sum(&txn).await > before, "and written when it ends");
        txn.commit().await.unwrap();
    }
    let whole = Slice { model: "m".into(), start: day0 - 30 * DAY, end: day0 + 400 * DAY, ..Slice::default() };
    assert_same(&db, "each", &whole, "batched", &whole).await;
    let ids: Vec<String> = contacts.iter().map(|c| c.0.clone()).collect();
    let everyone = Slice { contacts: Some(std::sync::Arc::new(ids)), ..whole.clone() };
    assert_same(&db, "each", &everyone, "batched", &everyone).await;
    let reached = model::funnel(&db, "batched", &whole, 3660).await.unwrap();
    assert!(reached.iter().any(|(s, n)| s == "awareness" && *n == 45), "{reached:?}");
    t.cleanup().await;
}

/// The unfiltered funnel and histograms read the roll-ups by block of days: over any range —
/// an hour, a day, across block boundaries, a year and more, starting mid-day — they give what
/// the per-contact first reaches and durations give; and the migration's fill of the
/// roll-ups from the day cells gives the rows the handlers kept.
async fn roll_ups_answer_any_range(backend: Backend) {
    let Some((t, db)) = db(backend, "mroll").await else { return };
    let day0 = 20_000 * DAY;
    let mut rng = Lcg(23);
    let ids: Vec<String> = (0..40).map(|i| format!("c{i:02}")).collect();
    for id in &ids {
        let seed = rng.next(1 << 30) as u64;
        feed_contact(&db, "acme", id, &mut Lcg(seed), day0).await;
    }
    let sorted = |h: std::collections::HashMap<String, Vec<(i64, i64)>>| {
        let mut v: Vec<_> = h
            .into_iter()
            .map(|(k, mut b)| {
                (k, {
                    b.sort_unstable();
                    b
                })
            })
            .collect();
        v.sort();
        v
    };
    // Ranges ending inside the data (entries in the first 120 days, reaches and durations up to
    // ~250 days on), so each edge of a cover is read: across the 256-day blocks starting at
    // days 19,968 and 20,224, and the 16-day ones between them.
    let mut ranges = vec![
        (day0, day0 + 365 * DAY),
        (day0 - 300 * DAY, day0 + 700 * DAY),
        (day0 + 3_600_000_000, day0 + DAY),
        (day0 - 100 * DAY + 5 * 3_600_000_000, day0 + 240 * DAY + 3 * 3_600_000_000),
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
            let mut x = model::funnel(&db, "acme", &whole, window).await.unwrap();
            let mut y = model::funnel(&db, "acme", &everyone, window).await.unwrap();
            x.sort();
            y.sort();
            assert_eq!(x, y, "funnel of [{start}, {end}), window {window}");
            seen += x.iter().map(|r| r.1).sum::<i64>();
        }
        let x = sorted(model::histograms(&db, "acme", &whole).await.unwrap());
        assert_eq!(
            x,
            sorted(model::histograms(&db, "acme", &everyone).await.unwrap()),
            "histograms of [{start}, {end})"
        );
        seen += x.iter().flat_map(|h| h.1.iter().map(|b| b.1)).sum::<i64>();
    }
    assert!(seen > 1_000, "the ranges saw reaches and durations: {seen}");
    // Keep the handlers' roll-up rows as tenant "kept", clear them, fill them from the cells.
    let count = async |sql: String| {
        let r = model::one(&db, &sql, vec![]).await.unwrap().expect("a row");
        r.try_get::<i64>("", "c").unwrap()
    };
    let tables = [
        ("funnel_roll", "model_id, span_days, cohort_day, stage_key, delay_days, n"),
        ("time_hist_roll", "model_id, name, span_days, day, bucket, n"),
    ];
    for (table, cols) in tables {
        model::exec(&db, &format!("INSERT INTO {table} (tenant_id, {cols}) SELECT 'kept', {cols} FROM {table} WHERE tenant_id = 'acme' AND n <> 0"), vec![])
            .await
            .unwrap();
        model::exec(&db, &format!("DELETE FROM {table} WHERE tenant_id = 'acme'"), vec![]).await.unwrap();
    }
    model::fill_roll_ups(&db, Some("acme")).await.unwrap();
    for (table, cols) in tables {
        let side = |a: &str, b: &str| {
            format!(
                "SELECT {cols} FROM {table} WHERE tenant_id = '{a}' AND n <> 0 EXCEPT SELECT {cols} FROM {table} WHERE tenant_id = '{b}'"
            )
        };
        let kept = count(format!("SELECT COUNT(*) AS c FROM {table} WHERE tenant_id = 'kept'")).await;
        let only_kept = count(format!("SELECT COUNT(*) AS c FROM ({}) x", side("kept", "acme"))).await;
        let only_filled = count(format!("SELECT COUNT(*) AS c FROM ({}) x", side("acme", "kept"))).await;
        assert!(
            kept > 50 && only_kept == 0 && only_filled == 0,
            "{table}: {kept} kept, {only_kept} only kept, {only_filled} only filled"
        );
    }
    t.cleanup().await;
}

/// An order seen twice (two events, as from a purchase recorded twice upstream) counts once;
/// a counter at the top of its range saturates instead of wrapping or failing the batch, and
/// sums past i64 read exactly.
async fn an_order_counts_once_and_money_never_wraps(backend: Backend) {
    use clm_platform::events::inbox::EventHandler as _;
    use clm_proto::events::v1 as ev;
    use sea_orm::TransactionTrait as _;
    let Some((t, db)) = db(backend, "mrorder").await else { return };
    let day0 = 20_000 * DAY;
    let purchase = |event_id: &str, order: &str| ev::EventEnvelope {
        event_id: event_id.into(),
        tenant_id: "acme".into(),
        payload: Some(ev::event_envelope::Payload::JourneyEventRecorded(ev::JourneyEventRecorded {
            contact_id: "a".into(),
            journey_event_id: event_id.into(),
            kind: ev::JourneyEventKind::Purchase as i32,
            order_id: order.into(),
            amount: Some(clm_proto::common::v1::Money { currency_code: "EUR".into(), units: 7, nanos: 0 }),
            items: 1,
            occur_time: Some(clm_platform::convert::timestamp(day0)),
            ..Default::default()
        })),
        ..Default::default()
    };
    for e in [purchase("e1", "o-1"), purchase("e2", "o-1"), purchase("e3", "o-2")] {
        let txn = db.begin().await.unwrap();
        clm_metrics::events::MetricsHandler.handle(&txn, &e).await.unwrap();
        txn.commit().await.unwrap();
    }
    let all = Slice { model: "m".into(), start: 0, end: day0 + 10 * DAY, ..Slice::default() };
    let revenue = |rows: &[model::KpiRow]| {
        let r = rows.iter().find(|r| r.name == "revenue").unwrap();
        (r.n, r.s.to_string())
    };
    let rows = model::kpis(&db, "acme", &all, &["revenue"], "").await.unwrap();
    assert_eq!(revenue(&rows), (2, "14000000".to_string()), "o-1 once, o-2 once");
    let facts = model::customer_facts(&db, "acme", "a").await.unwrap().unwrap();
    assert_eq!((facts.orders, facts.revenue), (2, 14_000_000));

    let next = Slice { start: day0 + DAY, ..all.clone() };
    let a = model::Attribution::default();
    for s in [i64::MAX - 5, 10] {
        model::bump_kpi(&db, "acme", "revenue", "", day0 + DAY, &a, "EUR", 1, s).await.unwrap();
    }
    let rows = model::kpis(&db, "acme", &next, &["revenue"], "").await.unwrap();
    assert_eq!(revenue(&rows), (2, i64::MAX.to_string()), "saturated, not wrapped");
    let rows = model::kpis(&db, "acme", &all, &["revenue"], "").await.unwrap();
    assert_eq!(revenue(&rows), (4, "9223372036868775807".to_string()), "i64::MAX + 14 EUR, exactly");
    t.cleanup().await;
}

clm_platform::backend_tests!(
    roll_ups_answer_any_range,
    reaches_and_purchases_add_up,
    a_segment_counts_as_a_tenant_of_its_members,
    late_activity_moves_first_and_returning,
    batched_counters_equal_immediate,
    an_order_counts_once_and_money_never_wraps,
);
