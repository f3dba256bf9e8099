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
    let all = Slice { model: "m".into(), start: 0, end: day0 + 100 * DAY, channel: None, campaign: None };
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
    assert_eq!(model::customers_at(&db, "acme", "m", day0 + 10 * DAY).await.unwrap(), 1);
    let (sizes, cells, _) =
        model::cohorts(&db, "acme", clm_metrics::domain::Gran::Month, 0, day0 + 100 * DAY).await.unwrap();
    assert_eq!(sizes.len(), 1);
    assert_eq!(cells.iter().map(|c| c.3).sum::<i64>(), 15_000_000, "cohort revenue");
    t.cleanup().await;
}

clm_platform::backend_tests!(reaches_and_purchases_add_up);
