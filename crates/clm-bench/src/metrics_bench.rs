//! Workload 6: metrics queries at scale (default 1,000,000 contacts and 10,000,000 stage
//! transitions, PostgreSQL): GetFunnel, GetCohortRetention and GetStageMetrics, each against
//! the equivalent raw SQL over the raw rows.
//!
//! Loading 10M transitions through the gRPC write path would take hours on 2 cores, so the data
//! takes a documented bulk path: a generator writes raw contacts, transitions and purchases
//! (`bench_contacts`, `bench_transitions`, `bench_purchases`) with SQL, and the aggregates the
//! event handlers maintain are built from them with set-based SQL (`aggregate`). The bulk path
//! is checked first on a small tenant: the same raw data is also fed event by event through the
//! real handlers (`MetricsHandler` for the contacts, `store::model::apply_*` for transitions
//! and purchases), and the funnel (five windows), the cohort tables and ten tables row for
//! row must come out identical. At scale, GetStageMetrics' counts must equal the raw SQL's.

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
/// Calls not counted before each measured query, then calls counted (GetStageMetrics, which
/// takes about a second, fewer).
const WARM_UP: usize = 3;
const CALLS: usize = 200;
const STAGE_CALLS: usize = 30;
/// Where generated time starts (2026-01-01).
const BASE: i64 = 1_767_225_600_000_000;

async fn sql(db: &DatabaseConnection, s: &str) -> anyhow::Result<()> {
    db.execute_unprepared(s).await?;
    Ok(())
}

/// Channels the generated contacts come from.
const CHANNELS: [&str; 5] = ["organic_search", "paid_search", "social", "email", "referral"];

/// Raw data for `tenant`: `n` contacts (channel, acquisition cost, lead score, created up to a
/// week before their first transition), ten transitions each (a path of 1-5 progression
/// stages, then alternating dormant / back), a purchase at each entry into a customer stage.
/// Deterministic (md5 of the contact), so the check and the big run see the same shapes.
async fn generate(db: &DatabaseConnection, tenant: &str, n: u64) -> anyhow::Result<()> {
    sql(
        db,
        "CREATE TABLE IF NOT EXISTS bench_contacts (tenant_id text, contact_id text, entry bigint, depth int, gap int,
                                                    channel text, cost bigint, lead_score int, created bigint);
         CREATE TABLE IF NOT EXISTS bench_transitions (tenant_id text, contact_id text, seq int, stage_key text, at bigint);
         CREATE TABLE IF NOT EXISTS bench_purchases (tenant_id text, contact_id text, at bigint, amount bigint)",
    )
    .await?;
    let h = |salt: &str, from: usize| {
        format!("(('x' || substr(md5('{tenant}' || g{salt}), {from}, 8))::bit(32)::bigint & 2147483647)")
    };
    let channels = CHANNELS.map(|c| format!("'{c}'")).join(",");
    sql(
        db,
        &format!(
            "INSERT INTO bench_contacts
             SELECT '{tenant}', '{tenant}-' || g, entry, depth, gap,
                    (ARRAY[{channels}])[1 + {c1} % {nch}], (5 + {c2} % 46) * 1000000, ({c3} % 101)::int,
                    entry - ({c4} % 7) * {DAY} - 1000
             FROM (SELECT g, {BASE} + ({h1} % 365) * {DAY} + ({h2} % 86400) * 1000000 AS entry,
                          CASE WHEN {h3} % 100 < 40 THEN 1 WHEN {h3} % 100 < 70 THEN 2 WHEN {h3} % 100 < 85 THEN 3
                               WHEN {h3} % 100 < 93 THEN 4 ELSE 5 END AS depth,
                          1 + {h4} % 20 AS gap
                   FROM generate_series(1, {n}) g) c",
            nch = CHANNELS.len(),
            h1 = h("", 1),
            h2 = h("", 9),
            h3 = h("", 17),
            h4 = h("", 25),
            c1 = h(" || 'c'", 1),
            c2 = h(" || 'c'", 9),
            c3 = h(" || 'c'", 17),
            c4 = h(" || 'c'", 25),
        ),
    )
    .await?;
    sql(
        db,
        &format!(
            "INSERT INTO bench_transitions
             SELECT tenant_id, contact_id, k,
                    CASE WHEN k < depth THEN (ARRAY['awareness','acquisition','conversion','retention','loyalty'])[k + 1]
                         WHEN (k - depth) % 2 = 0 THEN 'dormant'
                         ELSE (ARRAY['awareness','acquisition','conversion','retention','loyalty'])[depth] END,
                    entry + k * gap * {DAY} + k * 1000
             FROM bench_contacts, generate_series(0, 9) k WHERE tenant_id = '{tenant}'"
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

/// The bulk path: the aggregates of `raw`'s data in `tenant`, as the handlers would have kept
/// them: contact facts, new contacts and acquisition cost; first reaches, the funnel and the
/// stage-to-stage durations (by day, and rolled up by block of days); current stages with lead and close times; the daily KPI counters
/// (and, with `per_contact`, per contact: only segment-scoped queries read them, and the
/// large run, which measures none, skips them); customer facts and active periods; month cohorts. (Not built: the
/// activity counts per period and week cohorts, which the measured queries do not read.)
async fn aggregate(
    db: &DatabaseConnection,
    raw: &str,
    tenant: &str,
    model: &str,
    per_contact: bool,
) -> anyhow::Result<()> {
    let day = |x: &str| format!("(({x}) / {DAY}) * {DAY}");
    let mut stages = Vec::new();
    for (pos, (key, cat, role)) in STAGES.iter().enumerate() {
        sql(
            db,
            &format!(
                "INSERT INTO model_stages (tenant_id, model_id, stage_key, position, category, role)
                 VALUES ('{tenant}', '{model}', '{key}', {pos}, '{cat}', '{role}') ON CONFLICT DO NOTHING"
            ),
        )
        .await?;
        stages.push(format!("('{key}', '{cat}', '{role}')"));
    }
    let stages = stages.join(", ");
    sql(
        db,
        &format!(
            "INSERT INTO contact_facts (tenant_id, contact_id, acquisition_channel, campaign, cost_currency, cost_micros,
                                        referred_by, lead_score, country_code, acquire_time, create_time, state, merged_into)
             SELECT '{tenant}', contact_id, channel, '', 'EUR', cost, NULL, lead_score, '', NULL, created, 'active', NULL
             FROM bench_contacts WHERE tenant_id = '{raw}'"
        ),
    )
    .await?;
    // Each transition with the one before it (the handlers see them in this order).
    sql(
        db,
        &format!(
            "CREATE UNLOGGED TABLE bench_tx AS
             SELECT t.contact_id, t.seq, t.stage_key, t.at, c.channel, s.category AS cat, s.role,
                    LAG(t.stage_key) OVER w AS prev_stage, LAG(s.category) OVER w AS prev_cat, LAG(t.at) OVER w AS prev_at,
                    ROW_NUMBER() OVER (PARTITION BY t.contact_id, t.stage_key ORDER BY t.seq) AS rn
             FROM bench_transitions t
             JOIN bench_contacts c ON c.tenant_id = t.tenant_id AND c.contact_id = t.contact_id
             JOIN (VALUES {stages}) s (stage_key, category, role) ON s.stage_key = t.stage_key
             WHERE t.tenant_id = '{raw}'
             WINDOW w AS (PARTITION BY t.contact_id ORDER BY t.seq);
             CREATE UNLOGGED TABLE bench_cx AS
             SELECT x.contact_id, c.channel, c.created, c.cost,
                    MIN(x.at) FILTER (WHERE x.prev_stage IS NOT NULL) AS lead_at,
                    MIN(x.at) FILTER (WHERE x.cat = 'customer') AS cust_at,
                    (ARRAY_AGG(x.stage_key ORDER BY x.seq DESC))[1] AS last_stage,
                    (ARRAY_AGG(x.cat ORDER BY x.seq DESC))[1] AS last_cat, MAX(x.at) AS last_at
             FROM bench_tx x JOIN bench_contacts c ON c.tenant_id = '{raw}' AND c.contact_id = x.contact_id
             GROUP BY x.contact_id, c.channel, c.created, c.cost"
        ),
    )
    .await?;
    // First reaches (with the time it took from the stage before), and the funnel by the day
    // each contact entered the model.
    sql(
        db,
        &format!(
            "INSERT INTO stage_reach (tenant_id, model_id, contact_id, stage_key, first_time, took, took_day)
             SELECT '{tenant}', '{model}', contact_id, stage_key, at, at - prev_at,
                    CASE WHEN prev_at IS NULL THEN NULL ELSE {at_day} END
             FROM bench_tx WHERE rn = 1",
            at_day = day("at"),
        ),
    )
    .await?;
    sql(
        db,
        &format!(
            "INSERT INTO funnel_cells (tenant_id, model_id, cohort_day, channel, campaign, stage_key, delay_days, n)
             SELECT '{tenant}', '{model}', (e.entry / {DAY}) * {DAY}, e.channel, '', x.stage_key, {bucket}, COUNT(*)
             FROM bench_tx x
             JOIN (SELECT contact_id, channel, MIN(at) AS entry FROM bench_tx GROUP BY contact_id, channel) e USING (contact_id)
             WHERE x.rn = 1
             GROUP BY 3, 4, 6, 7",
            bucket = delay_sql(&format!("((x.at - e.entry) / {DAY})")),
        ),
    )
    .await?;
    // Durations: stage to stage at first reaches, and lead (or creation) to first purchase
    // stage. `model::bucket` in SQL.
    let bucket = |took: &str| format!("floor(log(2, (({took}) / 1e6 + 1)::numeric) * 4)::bigint");
    let close_took = "GREATEST(cust_at - CASE WHEN lead_at < cust_at THEN lead_at ELSE created END, 0)";
    sql(
        db,
        &format!(
            "INSERT INTO time_hist (tenant_id, model_id, name, day, bucket, n)
             SELECT '{tenant}', '{model}', stage_key, {at_day}, {b}, COUNT(*)
             FROM bench_tx WHERE rn = 1 AND prev_at IS NOT NULL GROUP BY 3, 4, 5
             UNION ALL
             SELECT '{tenant}', '{model}', '__time_to_close', {cust_day}, {bc}, COUNT(*)
             FROM bench_cx WHERE cust_at IS NOT NULL GROUP BY 3, 4, 5",
            at_day = day("at"),
            b = bucket("at - prev_at"),
            cust_day = day("cust_at"),
            bc = bucket(close_took),
        ),
    )
    .await?;
    // The roll-ups of both by block of days, from the day cells.
    model::fill_roll_ups(db, Some(tenant)).await?;
    sql(
        db,
        &format!(
            "INSERT INTO contact_now (tenant_id, model_id, contact_id, stage_key, category, enter_time, lead_time,
                                      customer_time, close_took, close_day)
             SELECT '{tenant}', '{model}', contact_id, last_stage, last_cat, last_at, lead_at, cust_at,
                    CASE WHEN cust_at IS NULL THEN NULL ELSE {close_took} END,
                    CASE WHEN cust_at IS NULL THEN NULL ELSE {cust_day} END
             FROM bench_cx",
            cust_day = day("cust_at"),
        ),
    )
    .await?;
    // Every KPI count the handlers would bump, then summed per day (and per contact).
    sql(
        db,
        &format!(
            "CREATE UNLOGGED TABLE bench_ke AS
             SELECT contact_id, 'new_contacts' AS name, '' AS model_id, {created_day} AS day, channel, '' AS currency,
                    1::bigint AS n, 0::bigint AS s FROM bench_cx
             UNION ALL SELECT contact_id, 'acquisition_cost', '', {created_day}, channel, 'EUR', 1, cost FROM bench_cx
             UNION ALL SELECT contact_id, 'leads', '{model}', {lead_day}, channel, '', 1, 0 FROM bench_cx WHERE lead_at IS NOT NULL
             UNION ALL SELECT contact_id, 'new_customers', '{model}', {cust_day}, channel, '', 1, {close_took}
                       FROM bench_cx WHERE cust_at IS NOT NULL
             UNION ALL SELECT contact_id, CASE WHEN cat = 'customer' THEN 'customers_in' ELSE 'customers_out' END,
                              '{model}', {at_day}, channel, '', 1, 0
                       FROM bench_tx WHERE (cat = 'customer') <> (COALESCE(prev_cat, '') = 'customer')
             UNION ALL SELECT contact_id, role, '{model}', {at_day}, channel, '', 1, 0 FROM bench_tx WHERE role IN ('dormant', 'churned')
             UNION ALL SELECT contact_id, 'reactivated', '{model}', {at_day}, channel, '', 1, 0 FROM bench_tx WHERE prev_stage = 'dormant'
             UNION ALL SELECT contact_id, k.name, '', {at_day}, channel, k.currency, 1, CASE WHEN k.money THEN amount ELSE 0 END
                       FROM (SELECT p.contact_id, p.at, p.amount, c.channel,
                                    ROW_NUMBER() OVER (PARTITION BY p.contact_id ORDER BY p.at) AS nth
                             FROM bench_purchases p
                             JOIN bench_contacts c ON c.tenant_id = p.tenant_id AND c.contact_id = p.contact_id
                             WHERE p.tenant_id = '{raw}') p
                       JOIN (VALUES ('revenue', 'EUR', true, 1, 1000000), ('first_purchases', 'EUR', true, 1, 1),
                                    ('repeat_orders', '', false, 2, 1000000), ('repeat_customers', '', false, 2, 2))
                            k (name, currency, money, lo, hi) ON p.nth BETWEEN k.lo AND k.hi;
             INSERT INTO kpi_daily (tenant_id, name, model_id, day, channel, campaign, currency, n, s)
             SELECT '{tenant}', name, model_id, day, channel, '', currency, SUM(n), SUM(s)
             FROM bench_ke GROUP BY name, model_id, day, channel, currency;
             {per_contact_kpis}
             DROP TABLE bench_ke",
            per_contact_kpis = if per_contact {
                format!(
                    "INSERT INTO contact_kpis (tenant_id, contact_id, name, model_id, day, channel, campaign, currency, n, s)
                     SELECT '{tenant}', contact_id, name, model_id, day, channel, '', currency, SUM(n), SUM(s)
                     FROM bench_ke GROUP BY contact_id, name, model_id, day, channel, currency;"
                )
            } else {
                String::new()
            },
            created_day = day("created"),
            lead_day = day("lead_at"),
            cust_day = day("cust_at"),
            at_day = day("at"),
        ),
    )
    .await?;
    // What a contact bought, and the days, weeks and months it was active in.
    let period = |g: &str| {
        format!("(EXTRACT(EPOCH FROM date_trunc('{g}', to_timestamp(at / 1e6) AT TIME ZONE 'UTC')) * 1000000)::bigint")
    };
    sql(
        db,
        &format!(
            "INSERT INTO customer_facts (tenant_id, contact_id, first_purchase, last_purchase, orders, revenue, currency,
                                         referrals, reviews, last_nps)
             SELECT '{tenant}', contact_id, MIN(at), MAX(at), COUNT(*), SUM(amount), 'EUR', 0, 0, NULL
             FROM bench_purchases WHERE tenant_id = '{raw}' GROUP BY contact_id;
             INSERT INTO contact_periods (tenant_id, contact_id, gran, period, revenue)
             SELECT '{tenant}', contact_id, g.gran, CASE g.gran WHEN 'day' THEN {at_day} WHEN 'week' THEN {week} ELSE {month} END,
                    SUM(amount)
             FROM bench_purchases, (VALUES ('day'), ('week'), ('month')) g (gran)
             WHERE tenant_id = '{raw}' GROUP BY 2, 3, 4;
             DROP TABLE bench_tx, bench_cx",
            at_day = day("at"),
            week = period("week"),
            month = period("month"),
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
    use clm_platform::events::inbox::EventHandler as _;
    use clm_proto::events::v1 as ev;
    use sea_orm::TransactionTrait as _;
    let contacts = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT contact_id, channel, cost, lead_score, created FROM bench_contacts WHERE tenant_id = '{raw}'"
            ),
        ))
        .await?;
    let txn = db.begin().await?;
    for r in contacts {
        let cost: i64 = r.try_get("", "cost")?;
        let created = ev::ContactCreated {
            contact_id: r.try_get("", "contact_id")?,
            create_time: Some(clm_platform::convert::timestamp(r.try_get("", "created")?)),
            facts: Some(ev::ContactFacts {
                acquisition_channel: r.try_get("", "channel")?,
                acquisition_cost: Some(clm_proto::common::v1::Money {
                    currency_code: "EUR".into(),
                    units: cost / 1_000_000,
                    nanos: 0,
                }),
                lead_score: r.try_get("", "lead_score")?,
                ..Default::default()
            }),
        };
        let e = ev::EventEnvelope {
            tenant_id: tenant.into(),
            payload: Some(ev::event_envelope::Payload::ContactCreated(created)),
            ..Default::default()
        };
        clm_metrics::events::MetricsHandler.handle(&txn, &e).await?;
    }
    txn.commit().await?;
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
    aggregate(db, "check", "check-bulk", "m", true).await?;
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
    // Row for row, every other table the bulk path builds (what GetStageMetrics and the
    // segment-scoped queries read).
    for (table, cols) in [
        (
            "contact_facts",
            "contact_id, acquisition_channel, campaign, cost_currency, cost_micros, lead_score, acquire_time, create_time, state",
        ),
        ("kpi_daily", "name, model_id, day, channel, campaign, currency, n, s"),
        ("contact_kpis", "contact_id, name, model_id, day, channel, campaign, currency, n, s"),
        ("stage_reach", "model_id, contact_id, stage_key, first_time, took, took_day"),
        ("time_hist", "model_id, name, day, bucket, n"),
        ("funnel_roll", "model_id, span_days, cohort_day, stage_key, delay_days, n"),
        ("time_hist_roll", "model_id, name, span_days, day, bucket, n"),
        (
            "contact_now",
            "model_id, contact_id, stage_key, category, enter_time, lead_time, customer_time, close_took, close_day",
        ),
        (
            "customer_facts",
            "contact_id, first_purchase, last_purchase, orders, revenue, currency, referrals, reviews, last_nps",
        ),
        ("contact_periods", "contact_id, gran, period, revenue"),
    ] {
        let q = |a: &str, b: &str| {
            format!(
                "SELECT {cols} FROM {table} WHERE tenant_id = '{a}' EXCEPT ALL SELECT {cols} FROM {table} WHERE tenant_id = '{b}'"
            )
        };
        let r = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                format!(
                    "SELECT (SELECT COUNT(*) FROM ({}) x) AS only_fed, (SELECT COUNT(*) FROM ({}) y) AS only_bulk, \
                     (SELECT COUNT(*) FROM {table} WHERE tenant_id = 'check-fed') AS fed",
                    q("check-fed", "check-bulk"),
                    q("check-bulk", "check-fed")
                ),
            ))
            .await?
            .ok_or_else(|| anyhow::anyhow!("no row"))?;
        let (only_fed, only_bulk, fed): (i64, i64, i64) =
            (r.try_get("", "only_fed")?, r.try_get("", "only_bulk")?, r.try_get("", "fed")?);
        anyhow::ensure!(
            only_fed == 0 && only_bulk == 0 && fed > 0,
            "{table}: the bulk path differs from the handlers ({only_fed} rows only fed, {only_bulk} only bulk, of {fed})"
        );
    }
    eprintln!(
        "metrics bulk path: identical to the event handlers on 300 contacts / 3,000 transitions (funnel, cohorts and ten tables)"
    );
    Ok(())
}

/// GetStageMetrics' main figures for [start, end) straight from the raw rows: new contacts and
/// their cost, leads, new customers and the median time to close, revenue, orders, buyers and
/// first-order size, the repeat-purchase rate, customers lost, customers at the start and end.
fn raw_stage_metrics(start: i64, end: i64) -> String {
    let cust = "stage_key IN ('conversion', 'retention', 'loyalty')";
    let at = |t: i64| {
        format!(
            "(SELECT COUNT(*) FROM (SELECT DISTINCT ON (contact_id) cust FROM tx WHERE at < {t} ORDER BY contact_id, at DESC) x WHERE cust)"
        )
    };
    format!(
        "WITH tx AS (SELECT contact_id, seq, at, {cust} AS cust,
                            LAG({cust}) OVER (PARTITION BY contact_id ORDER BY seq) AS prev_cust
                     FROM bench_transitions WHERE tenant_id = 'bench'),
              c AS (SELECT contact_id, MIN(at) FILTER (WHERE prev_cust IS NOT NULL) AS lead_at,
                           MIN(at) FILTER (WHERE cust) AS cust_at FROM tx GROUP BY 1),
              p AS (SELECT contact_id, at, amount, ROW_NUMBER() OVER (PARTITION BY contact_id ORDER BY at) AS nth
                    FROM bench_purchases WHERE tenant_id = 'bench'),
              a AS (SELECT * FROM bench_contacts WHERE tenant_id = 'bench' AND created >= {start} AND created < {end})
         SELECT (SELECT COUNT(*) FROM a) AS new_contacts, (SELECT SUM(cost) FROM a) AS cost,
                (SELECT COUNT(*) FROM c WHERE lead_at >= {start} AND lead_at < {end}) AS leads,
                (SELECT COUNT(*) FROM c WHERE cust_at >= {start} AND cust_at < {end}) AS new_customers,
                (SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY cust_at - lead_at) FROM c
                 WHERE cust_at >= {start} AND cust_at < {end}) AS median_close,
                (SELECT CAST(SUM(amount) AS BIGINT) FROM p WHERE at >= {start} AND at < {end}) AS revenue,
                (SELECT COUNT(*) FROM p WHERE at >= {start} AND at < {end}) AS orders,
                (SELECT COUNT(DISTINCT contact_id) FROM p WHERE at >= {start} AND at < {end}) AS buyers,
                (SELECT AVG(amount) FROM p WHERE nth = 1 AND at >= {start} AND at < {end}) AS deal_size,
                (SELECT COUNT(*) FILTER (WHERE nth = 2)::float8 / NULLIF(COUNT(*) FILTER (WHERE nth = 1), 0) FROM p
                 WHERE at < {end}) AS repeat_rate,
                (SELECT COUNT(*) FROM tx WHERE at >= {start} AND at < {end} AND prev_cust AND NOT cust) AS customers_out,
                {at_start} AS at_start, {at_end} AS at_end",
        at_start = at(start),
        at_end = at(end),
    )
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
    aggregate(&db, "bench", "bench", &model_id, false).await?;
    sql(
        &db,
        "CREATE INDEX bench_transitions_ix ON bench_transitions (tenant_id, contact_id, stage_key, at);
         CREATE INDEX bench_purchases_ix ON bench_purchases (tenant_id, contact_id, at);
         CREATE INDEX bench_contacts_ix ON bench_contacts (tenant_id, created)",
    )
    .await?;
    // As after a long life of small writes: statistics and visibility maps up to date, so
    // autovacuum does not start on the fresh tables during the measurements.
    sql(&db, "VACUUM ANALYZE").await?;
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
    // Sequential calls; the first few (new pool connections, statements prepared, plans
    // cached) are warm-up, not counted. Enough calls that p99 is not simply the slowest one.
    let mut funnel_us = Vec::new();
    let mut reached = 0;
    for i in 0..(WARM_UP + CALLS) {
        let t = Instant::now();
        let f = m
            .get_funnel(pb::GetFunnelRequest { scope: Some(scope.clone()), conversion_window: Some(window) })
            .await?
            .into_inner();
        if i >= WARM_UP {
            funnel_us.push(t.elapsed().as_micros() as u64);
        }
        reached = f.funnel.and_then(|f| f.stages.first().map(|s| s.reached)).unwrap_or(0);
    }
    anyhow::ensure!(u64::try_from(reached)? == contacts, "the funnel saw {reached} of {contacts} contacts");
    let mut cohort_us = Vec::new();
    for i in 0..(WARM_UP + CALLS) {
        let t = Instant::now();
        m.get_cohort_retention(pb::GetCohortRetentionRequest {
            scope: Some(scope.clone()),
            granularity: pb::Granularity::Month as i32,
            periods: 12,
            measure: pb::CohortMeasure::Retained as i32,
        })
        .await?;
        if i >= WARM_UP {
            cohort_us.push(t.elapsed().as_micros() as u64);
        }
    }
    // GetStageMetrics over a quarter inside the year: every stage's KPIs at once.
    let (q_start, q_end) = (BASE + 180 * DAY, BASE + 270 * DAY);
    let quarter = pb::MetricsScope {
        start_time: Some(clm_platform::convert::timestamp(q_start)),
        end_time: Some(clm_platform::convert::timestamp(q_end)),
        ..Default::default()
    };
    let mut stage_us = Vec::new();
    let mut stage = pb::GetStageMetricsResponse::default();
    for i in 0..(WARM_UP + STAGE_CALLS) {
        let t = Instant::now();
        stage = m
            .get_stage_metrics(pb::GetStageMetricsRequest { scope: Some(quarter.clone()), lead_quality_threshold: 50 })
            .await?
            .into_inner();
        if i >= WARM_UP {
            stage_us.push(t.elapsed().as_micros() as u64);
        }
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
    let raw_stage = raw_stage_metrics(q_start, q_end);
    let raw_stage_us = raw(raw_stage.clone()).await?;
    // The service's figures are the raw data's.
    let r = db
        .query_one_raw(sea_orm::Statement::from_string(db.get_database_backend(), raw_stage))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no row"))?;
    let acq = stage.acquisition.unwrap_or_default();
    let conv = stage.conversion.unwrap_or_default();
    let ret = stage.retention.unwrap_or_default();
    let ours =
        [acq.new_contacts, acq.leads, conv.new_customers, conv.revenue.map_or(0, |m| m.units), ret.customers_at_start];
    let theirs = [
        r.try_get::<i64>("", "new_contacts")?,
        r.try_get::<i64>("", "leads")?,
        r.try_get::<i64>("", "new_customers")?,
        r.try_get::<i64>("", "revenue")? / 1_000_000,
        r.try_get::<i64>("", "at_start")?,
    ];
    anyhow::ensure!(
        ours == theirs && ours.iter().all(|n| *n > 0),
        "GetStageMetrics (new contacts, leads, new customers, revenue, customers at start) {ours:?} \
         differs from the raw SQL's {theirs:?}"
    );

    let label = |what: &str| format!("{what} ({}M contacts)", contacts as f64 / 1e6);
    let ours_f = figure(&label("GetFunnel"), funnel_us);
    let raw_f = figure(&label("raw SQL funnel"), raw_funnel_us);
    let ours_c = figure(&label("GetCohortRetention"), cohort_us);
    let raw_c = figure(&label("raw SQL cohorts"), raw_cohort_us);
    let ours_s = figure(&label("GetStageMetrics, 90 days"), stage_us);
    let raw_s = figure(&label("raw SQL stage metrics"), raw_stage_us);
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
    ratios.push(("GetStageMetrics p99 ms".into(), ours_s.p99_us as f64 / 1000.0));
    ratios.push((
        "raw SQL stage metrics ÷ GetStageMetrics (p50)".into(),
        raw_s.p50_us as f64 / ours_s.p50_us.max(1) as f64,
    ));
    figures.extend([ours_f, raw_f, ours_c, raw_c, ours_s, raw_s]);
    drop(db);
    tdb.cleanup().await;
    Ok(())
}
