//! Workload 6: metrics queries at scale (default 1,000,000 contacts and 10,000,000 stage
//! transitions, PostgreSQL), against the equivalent raw SQL over the raw transitions.
//!
//! Loading 10M transitions through the gRPC write path would take hours on 2 cores, so the data
//! takes a documented bulk path: a generator writes raw transitions and purchases
//! (`bench_transitions`, `bench_purchases`) with SQL, and the aggregates the event handlers
//! maintain (`stage_reach`, `funnel_cells`, `model_stages`, month cohorts) are built from them
//! with set-based SQL. The bulk path is checked first on a small tenant: the same raw data is
//! also fed event by event through the real handlers (`store::model::apply_*`), and the funnel
//! (five windows) and the cohort tables must come out identical.

use std::fmt::Write as _;
use std::time::Instant;

use clm_metrics::store::model::{self, Happening, Slice, StageChange};
use clm_platform::TenantId;
use clm_platform::testing::{self, Backend, TestDb};
use clm_proto::metrics::v1 as pb;
use clm_proto::metrics::v1::metrics_service_client::MetricsServiceClient;
use sea_orm::{ConnectionTrait, DatabaseConnection};

use crate::Figure;

const DAY: i64 = 86_400_000_000;
const STAGES: [(&str, &str, &str); 7] = [
    ("awareness", "prospect", ""),
    ("acquisition", "prospect", ""),
    ("conversion", "customer", ""),
    ("retention", "customer", ""),
    ("loyalty", "customer", ""),
    ("dormant", "lost", "dormant"),
    ("churned", "lost", "churned"),
];
/// Where generated time starts (2026-01-01).
const BASE: i64 = 1_767_225_600_000_000;

async fn sql(db: &DatabaseConnection, s: &str) -> anyhow::Result<()> {
    db.execute_unprepared(s).await?;
    Ok(())
}

/// Raw data for `tenant`: `n` contacts, ten transitions each (a path of 1-5 progression
/// stages, then alternating dormant / back), a purchase at each entry into a customer stage.
/// Deterministic (md5 of the contact), so the check and the big run see the same shapes.
async fn generate(db: &DatabaseConnection, tenant: &str, n: u64) -> anyhow::Result<()> {
    sql(
        db,
        "CREATE TABLE IF NOT EXISTS bench_transitions (tenant_id text, contact_id text, seq int, stage_key text, at bigint);
         CREATE TABLE IF NOT EXISTS bench_purchases (tenant_id text, contact_id text, at bigint, amount bigint)",
    )
    .await?;
    let h = |from: usize| format!("(('x' || substr(md5('{tenant}' || g), {from}, 8))::bit(32)::bigint & 2147483647)");
    sql(
        db,
        &format!(
            "INSERT INTO bench_transitions
             WITH c AS (
               SELECT '{tenant}-' || g AS contact_id,
                      {BASE} + ({h1} % 365) * {DAY} + ({h2} % 86400) * 1000000 AS entry,
                      CASE WHEN {h3} % 100 < 40 THEN 1 WHEN {h3} % 100 < 70 THEN 2 WHEN {h3} % 100 < 85 THEN 3
                           WHEN {h3} % 100 < 93 THEN 4 ELSE 5 END AS depth,
                      1 + {h4} % 20 AS gap
               FROM generate_series(1, {n}) g)
             SELECT '{tenant}', contact_id, k,
                    CASE WHEN k < depth THEN (ARRAY['awareness','acquisition','conversion','retention','loyalty'])[k + 1]
                         WHEN (k - depth) % 2 = 0 THEN 'dormant'
                         ELSE (ARRAY['awareness','acquisition','conversion','retention','loyalty'])[depth] END,
                    entry + k * gap * {DAY} + k * 1000
             FROM c, generate_series(0, 9) k",
            h1 = h(1),
            h2 = h(9),
            h3 = h(17),
            h4 = h(25),
        ),
    )
    .await?;
    sql(
        db,
        &format!(
            "INSERT INTO bench_purchases
             SELECT tenant_id, contact_id, at, (10 + (seq * 37 + length(contact_id) * 11) % 200) * 1000000
             FROM bench_transitions WHERE tenant_id = '{tenant}' AND stage_key IN ('conversion', 'retention', 'loyalty')"
        ),
    )
    .await
}

/// `model::delay_bucket` in SQL.
fn delay_sql(days: &str) -> String {
    let mut s = format!("CASE WHEN {days} <= 31 THEN GREATEST({days}, 0)");
    for step in model::DELAY_STEPS {
        let _ = write!(s, " WHEN {days} <= {step} THEN {step}");
    }
    s.push_str(" ELSE 3660 END");
    s
}

/// The bulk path: the aggregates of `tenant`'s raw data, as the handlers would have kept them.
async fn aggregate(db: &DatabaseConnection, raw: &str, tenant: &str, model: &str) -> anyhow::Result<()> {
    for (pos, (key, cat, role)) in STAGES.iter().enumerate() {
        sql(
            db,
            &format!(
                "INSERT INTO model_stages (tenant_id, model_id, stage_key, position, category, role)
                 VALUES ('{tenant}', '{model}', '{key}', {pos}, '{cat}', '{role}') ON CONFLICT DO NOTHING"
            ),
        )
        .await?;
    }
    sql(
        db,
        &format!(
            "INSERT INTO stage_reach (tenant_id, model_id, contact_id, stage_key, first_time)
             SELECT '{tenant}', '{model}', contact_id, stage_key, MIN(at) FROM bench_transitions
             WHERE tenant_id = '{raw}' GROUP BY contact_id, stage_key"
        ),
    )
    .await?;
    sql(
        db,
        &format!(
            "INSERT INTO funnel_cells (tenant_id, model_id, cohort_day, channel, campaign, stage_key, delay_days, n)
             SELECT '{tenant}', '{model}', (e.entry / {DAY}) * {DAY}, 'unknown', '', r.stage_key,
                    {bucket}, COUNT(*)
             FROM stage_reach r
             JOIN (SELECT contact_id, MIN(first_time) AS entry FROM stage_reach
                   WHERE tenant_id = '{tenant}' AND model_id = '{model}' GROUP BY contact_id) e USING (contact_id)
             WHERE r.tenant_id = '{tenant}' AND r.model_id = '{model}'
             GROUP BY 3, 6, 7",
            bucket = delay_sql("((r.first_time - e.entry) / {DAY})".replace("{DAY}", &DAY.to_string()).as_str()),
        ),
    )
    .await?;
    // Stage-to-stage durations at first reaches (not compared in the check: PostgreSQL's log
    // and Rust's may round a duration on a bucket edge differently).
    sql(
        db,
        &format!(
            "INSERT INTO time_hist (tenant_id, model_id, name, day, bucket, n)
             SELECT '{tenant}', '{model}', stage_key, (at / {DAY}) * {DAY},
                    floor(log(2, ((at - prev) / 1e6 + 1)::numeric) * 4)::bigint, COUNT(*)
             FROM (SELECT stage_key, at, LAG(at) OVER (PARTITION BY contact_id ORDER BY seq) AS prev,
                          ROW_NUMBER() OVER (PARTITION BY contact_id, stage_key ORDER BY seq) AS rn
                   FROM bench_transitions WHERE tenant_id = '{raw}') t
             WHERE rn = 1 AND prev IS NOT NULL
             GROUP BY 3, 4, 5
             ON CONFLICT (tenant_id, model_id, name, day, bucket) DO UPDATE SET n = time_hist.n + excluded.n"
        ),
    )
    .await?;
    // Month cohorts: by month of first purchase; activity = purchases (journey events).
    let month = |x: &str| {
        format!(
            "(EXTRACT(EPOCH FROM date_trunc('month', to_timestamp({x} / 1e6) AT TIME ZONE 'UTC')) * 1000000)::bigint"
        )
    };
    let months = |a: &str, b: &str| {
        let (ta, tb) = (
            format!("(to_timestamp({a} / 1e6) AT TIME ZONE 'UTC')"),
            format!("(to_timestamp({b} / 1e6) AT TIME ZONE 'UTC')"),
        );
        format!(
            "((EXTRACT(YEAR FROM {tb}) - EXTRACT(YEAR FROM {ta})) * 12 + EXTRACT(MONTH FROM {tb}) - EXTRACT(MONTH FROM {ta}))::bigint"
        )
    };
    sql(
        db,
        &format!(
            "CREATE TEMP TABLE bench_cp AS
             SELECT p.contact_id, {pm} AS period, SUM(p.amount) AS revenue, f.first, {idx} AS idx
             FROM bench_purchases p
             JOIN (SELECT contact_id, MIN(at) AS first FROM bench_purchases WHERE tenant_id = '{raw}' GROUP BY contact_id) f USING (contact_id)
             WHERE p.tenant_id = '{raw}'
             GROUP BY p.contact_id, {pm}, f.first, {idx};
             INSERT INTO cohort_sizes (tenant_id, gran, cohort, n)
               SELECT '{tenant}', 'month', c, COUNT(*) FROM (SELECT DISTINCT contact_id, {fm} AS c FROM bench_cp) x GROUP BY c;
             INSERT INTO cohort_cells (tenant_id, gran, cohort, idx, n, revenue)
               SELECT '{tenant}', 'month', {fm}, idx, COUNT(*), SUM(revenue) FROM bench_cp WHERE idx >= 0 GROUP BY {fm}, idx;
             INSERT INTO cohort_last (tenant_id, gran, cohort, last_idx, n)
               SELECT '{tenant}', 'month', c, l, COUNT(*) FROM
                 (SELECT contact_id, {fm} AS c, MAX(idx) AS l FROM bench_cp WHERE idx >= 0 GROUP BY contact_id, {fm}) x GROUP BY c, l;
             DROP TABLE bench_cp",
            pm = month("p.at"),
            fm = month("first"),
            idx = months("f.first", "p.at"),
        ),
    )
    .await
}

/// Feed `raw`'s data through the real handlers into `tenant` (the reference for the check).
async fn feed(db: &DatabaseConnection, raw: &str, tenant: &str, model: &str) -> anyhow::Result<()> {
    let rows = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!("SELECT contact_id, stage_key, at FROM bench_transitions WHERE tenant_id = '{raw}' ORDER BY contact_id, seq"),
        ))
        .await?;
    let mut prev: Option<(String, String, i64)> = None;
    for r in rows {
        let (contact, stage, at): (String, String, i64) =
            (r.try_get("", "contact_id")?, r.try_get("", "stage_key")?, r.try_get("", "at")?);
        let before = prev.as_ref().filter(|p| p.0 == contact);
        let info =
            |k: &str| STAGES.iter().enumerate().find(|(_, s)| s.0 == k).map_or((0, "", ""), |(i, s)| (i, s.1, s.2));
        let (pos, cat, role) = info(&stage);
        let from = before.map(|p| p.1.clone()).unwrap_or_default();
        let change = StageChange {
            contact: &contact,
            model,
            from_stage: &from,
            to_stage: &stage,
            from_category: if from.is_empty() { "" } else { info(&from).1 },
            to_category: cat,
            to_role: role,
            position: i32::try_from(pos)?,
            reactivation: from == "dormant",
            at,
            from_enter: before.map(|p| p.2),
        };
        model::apply_stage_change(db, tenant, &change).await?;
        prev = Some((contact.clone(), stage, at));
    }
    let purchases = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT contact_id, at, amount FROM bench_purchases WHERE tenant_id = '{raw}' ORDER BY contact_id, at"
            ),
        ))
        .await?;
    for p in purchases {
        let contact: String = p.try_get("", "contact_id")?;
        let h = Happening::Purchase { amount: p.try_get("", "amount")?, currency: "EUR".into() };
        model::apply_journey_event(db, tenant, &contact, p.try_get("", "at")?, &h).await?;
    }
    Ok(())
}

/// The bulk path gives the handlers' numbers, on a small tenant.
async fn check_bulk_path(db: &DatabaseConnection) -> anyhow::Result<()> {
    generate(db, "check", 300).await?;
    feed(db, "check", "check-fed", "m").await?;
    aggregate(db, "check", "check-bulk", "m").await?;
    for window in [0, 7, 30, 90, 10_000] {
        let all = Slice { model: "m".into(), start: 0, end: i64::MAX / 4, ..Slice::default() };
        let mut fed = model::funnel(db, "check-fed", &all, window).await?;
        let mut bulk = model::funnel(db, "check-bulk", &all, window).await?;
        fed.sort();
        bulk.sort();
        anyhow::ensure!(fed == bulk, "bulk path differs from the handlers (window {window}): {fed:?} vs {bulk:?}");
    }
    let g = clm_metrics::domain::Gran::Month;
    let fed = model::cohorts(db, "check-fed", &model::Slice::default(), g, 0, i64::MAX / 4).await?;
    let bulk = model::cohorts(db, "check-bulk", &model::Slice::default(), g, 0, i64::MAX / 4).await?;
    type Cohorts = (Vec<(i64, i64)>, Vec<(i64, i64, i64, i64)>, Vec<(i64, i64, i64)>);
    let norm = |mut c: Cohorts| {
        c.0.sort_unstable();
        c.1.retain(|x| x.2 != 0 || x.3 != 0);
        c.1.sort_unstable();
        c.2.retain(|x| x.2 != 0);
        c.2.sort_unstable();
        c
    };
    anyhow::ensure!(norm(fed) == norm(bulk), "bulk cohorts differ from the handlers'");
    eprintln!("metrics bulk path: identical to the event handlers on 300 contacts / 3,000 transitions");
    Ok(())
}

fn figure(name: &str, mut us: Vec<u64>) -> Figure {
    us.sort_unstable();
    let q = |p: f64| us[((us.len() as f64 * p).ceil() as usize).clamp(1, us.len()) - 1];
    let f = Figure {
        workload: name.into(),
        backend: "postgres".into(),
        calls: us.len() as u64,
        errors: 0,
        throughput_per_s: 1e6 / q(0.5).max(1) as f64,
        p50_us: q(0.5),
        p90_us: q(0.9),
        p99_us: q(0.99),
        max_us: *us.last().unwrap_or(&0),
    };
    eprintln!("{:<22} p50 {:>9}µs  p99 {:>9}µs  ({} runs)", f.workload, f.p50_us, f.p99_us, f.calls);
    f
}

/// Run the workload; figures and ratios are appended.
pub async fn run(contacts: u64, figures: &mut Vec<Figure>, ratios: &mut Vec<(String, f64)>) -> anyhow::Result<()> {
    let Some(tdb) = TestDb::create(Backend::Postgres, "benchmetrics").await else { return Ok(()) };
    let db = clm_platform::db::connect(&tdb.url, &testing::settings(&[]).database).await?;
    clm_platform::db::migrate::<clm_metrics::store::migrations::Migrator>(&db).await?;
    check_bulk_path(&db).await?;

    let tenant = TenantId::parse("bench").map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let model_id = clm_metrics::api::default_model_id(&tenant);
    let t = Instant::now();
    generate(&db, "bench", contacts).await?;
    aggregate(&db, "bench", "bench", &model_id).await?;
    sql(&db, "CREATE INDEX bench_transitions_ix ON bench_transitions (tenant_id, contact_id, stage_key, at); ANALYZE")
        .await?;
    eprintln!(
        "metrics data: {contacts} contacts, {} transitions loaded and aggregated in {:.0} s",
        contacts * 10,
        t.elapsed().as_secs_f64()
    );

    let server = testing::spawn::<clm_metrics::MetricsService>(testing::settings(&[
        ("CLM_METRICS__DATABASE_URL", &tdb.url),
        ("CLM_TELEMETRY__LOG_FILTER", "warn"),
    ]))
    .await;
    let mut m = MetricsServiceClient::new(server.authed(&testing::token("bench", "clm.read")).await);
    let scope = pb::MetricsScope {
        start_time: Some(clm_platform::convert::timestamp(BASE)),
        end_time: Some(clm_platform::convert::timestamp(BASE + 365 * DAY)),
        ..Default::default()
    };
    let window = prost_types::Duration { seconds: 90 * 86_400, nanos: 0 };
    let mut funnel_us = Vec::new();
    let mut reached = 0;
    for _ in 0..30 {
        let t = Instant::now();
        let f = m
            .get_funnel(pb::GetFunnelRequest { scope: Some(scope.clone()), conversion_window: Some(window) })
            .await?
            .into_inner();
        funnel_us.push(t.elapsed().as_micros() as u64);
        reached = f.funnel.and_then(|f| f.stages.first().map(|s| s.reached)).unwrap_or(0);
    }
    anyhow::ensure!(u64::try_from(reached)? == contacts, "the funnel saw {reached} of {contacts} contacts");
    let mut cohort_us = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        m.get_cohort_retention(pb::GetCohortRetentionRequest {
            scope: Some(scope.clone()),
            granularity: pb::Granularity::Month as i32,
            periods: 12,
            measure: pb::CohortMeasure::Retained as i32,
        })
        .await?;
        cohort_us.push(t.elapsed().as_micros() as u64);
    }
    server.stop().await?;

    // The same questions in raw SQL over the raw tables (indexed), a few runs each.
    let raw_funnel = format!(
        "WITH first AS (SELECT contact_id, stage_key, MIN(at) AS t FROM bench_transitions WHERE tenant_id = 'bench' GROUP BY 1, 2),
              entry AS (SELECT contact_id, MIN(t) AS e FROM first GROUP BY 1)
         SELECT f.stage_key, COUNT(*) FROM first f JOIN entry e USING (contact_id)
         WHERE e.e >= {BASE} AND e.e < {end} AND f.t - e.e <= {w} GROUP BY 1",
        end = BASE + 365 * DAY,
        w = 90 * DAY
    );
    let raw_cohort =
        "WITH f AS (SELECT contact_id, MIN(at) AS first FROM bench_purchases WHERE tenant_id = 'bench' GROUP BY 1),
              a AS (SELECT DISTINCT contact_id, date_trunc('month', to_timestamp(at / 1e6) AT TIME ZONE 'UTC') AS p
                    FROM bench_purchases WHERE tenant_id = 'bench')
         SELECT date_trunc('month', to_timestamp(f.first / 1e6) AT TIME ZONE 'UTC') AS c, a.p, COUNT(*)
         FROM f JOIN a USING (contact_id) GROUP BY 1, 2";
    let raw = |q: String| {
        let db = db.clone();
        async move {
            let mut us = Vec::new();
            for _ in 0..3 {
                let t = Instant::now();
                db.execute_unprepared(&q).await?;
                us.push(t.elapsed().as_micros() as u64);
            }
            anyhow::Ok(us)
        }
    };
    let raw_funnel_us = raw(raw_funnel).await?;
    let raw_cohort_us = raw(raw_cohort.to_owned()).await?;

    let label = |what: &str| format!("{what} ({}M contacts)", contacts as f64 / 1e6);
    let ours_f = figure(&label("GetFunnel"), funnel_us);
    let raw_f = figure(&label("raw SQL funnel"), raw_funnel_us);
    let ours_c = figure(&label("GetCohortRetention"), cohort_us);
    let raw_c = figure(&label("raw SQL cohorts"), raw_cohort_us);
    ratios.push(("GetFunnel p99 ms; target ≤ 50".into(), ours_f.p99_us as f64 / 1000.0));
    ratios.push(("GetCohortRetention p99 ms; target ≤ 50".into(), ours_c.p99_us as f64 / 1000.0));
    ratios.push((
        "raw SQL funnel ÷ GetFunnel (p50); target ≥ 20".into(),
        raw_f.p50_us as f64 / ours_f.p50_us.max(1) as f64,
    ));
    ratios.push((
        "raw SQL cohorts ÷ GetCohortRetention (p50); target ≥ 20".into(),
        raw_c.p50_us as f64 / ours_c.p50_us.max(1) as f64,
    ));
    figures.extend([ours_f, raw_f, ours_c, raw_c]);
    drop(db);
    tdb.cleanup().await;
    Ok(())
}
