//! Workload 6: metrics queries at scale (default 1,000,000 contacts and 10,000,000 stage
//! transitions, PostgreSQL): GetFunnel, GetCohortRetention and GetStageMetrics, each against
//! the equivalent raw SQL over the raw rows.
//!
//! Loading 10M transitions through the gRPC write path would take hours on 2 cores, so the data
//! takes a documented bulk path: a generator writes raw contacts, transitions and purchases
//! (`bench_contacts`, `bench_transitions`, `bench_purchases`) with SQL, copies them into the
//! metrics ledger and contact facts with SQL (`load`), and metrics' public bulk entry point
//! (`store::write::rebuild`) computes every contact's contribution, as the event handler does.
//! The bulk path is checked first on a small tenant: the same raw data is also fed event by
//! event through the real handler (`MetricsHandler`), and every read-model table must come out
//! identical, row for row. At scale, GetStageMetrics' counts must equal the raw SQL's.

use std::fmt::Write as _;
use std::time::Instant;

use clm_platform::TenantId;
use clm_proto::metrics::v1 as pb;
use clm_proto::metrics::v1::metrics_service_client::MetricsServiceClient;
use clm_testkit::{self as testing, Backend, TestDb};
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

/// The bulk path: `raw`'s data as `tenant`'s ledger and contact facts (what the handler would
/// have recorded from the events), then every contribution computed by metrics' bulk entry point.
async fn load(db: &DatabaseConnection, raw: &str, tenant: &str, model: &str) -> anyhow::Result<()> {
    let mut cases = (String::new(), String::new(), String::new());
    for (pos, (key, cat, role)) in STAGES.iter().enumerate() {
        let _ = write!(cases.0, " WHEN '{key}' THEN '{cat}'");
        let _ = write!(cases.1, " WHEN '{key}' THEN '{role}'");
        let _ = write!(cases.2, " WHEN '{key}' THEN {pos}");
    }
    sql(
        db,
        &format!(
            "INSERT INTO contact_facts (tenant_id, contact_id, acquisition_channel, campaign, cost_currency, cost_micros,
                                        referred_by, lead_score, country_code, acquire_time, create_time, state, merged_into)
             SELECT '{tenant}', contact_id, channel, '', 'EUR', cost, NULL, lead_score, '', NULL, created, 'active', NULL
             FROM bench_contacts WHERE tenant_id = '{raw}';
             INSERT INTO ledger_transitions (tenant_id, contact_id, transition_id, model_id, seq, at, from_stage, to_stage,
                                             to_category, to_role, position, reactivation)
             SELECT '{tenant}', contact_id, contact_id || '-t' || seq, '{model}', seq, at,
                    COALESCE(LAG(stage_key) OVER (PARTITION BY contact_id ORDER BY seq), ''), stage_key,
                    CASE stage_key{c} END, CASE stage_key{r} END, CASE stage_key{p} END,
                    CASE WHEN LAG(stage_key) OVER (PARTITION BY contact_id ORDER BY seq) = 'dormant' THEN 1 ELSE 0 END
             FROM bench_transitions WHERE tenant_id = '{raw}';
             INSERT INTO ledger_events (tenant_id, contact_id, event_id, kind, at, amount, currency, score)
             SELECT '{tenant}', contact_id, contact_id || '-p' || at, 'purchase', at, amount, 'EUR', NULL
             FROM bench_purchases WHERE tenant_id = '{raw}';
             INSERT INTO model_stages (tenant_id, model_id, stage_key, position, category, role)
             SELECT DISTINCT tenant_id, model_id, to_stage, position, to_category, to_role
             FROM ledger_transitions WHERE tenant_id = '{tenant}'",
            c = cases.0,
            r = cases.1,
            p = cases.2,
        ),
    )
    .await?;
    let tenant = TenantId::parse(tenant).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    clm_metrics::store::write::rebuild(db, &tenant, 2_000).await?;
    Ok(())
}

/// Feed `raw`'s data through the real handler into `tenant` (the reference for the check):
/// contacts, then transitions and purchases as lifecycle publishes them, in batches.
async fn feed(db: &DatabaseConnection, raw: &str, tenant: &str, model: &str) -> anyhow::Result<()> {
    use clm_platform::events::inbox::EventHandler as _;
    use clm_proto::events::v1 as ev;
    use ev::event_envelope::Payload;
    let q = |s: String| sea_orm::Statement::from_string(db.get_database_backend(), s);
    let envelope = |p: Payload| ev::EventEnvelope { tenant_id: tenant.into(), payload: Some(p), ..Default::default() };
    let mut events = Vec::new();
    for r in db
        .query_all_raw(q(format!(
            "SELECT contact_id, channel, cost, lead_score, created FROM bench_contacts WHERE tenant_id = '{raw}'"
        )))
        .await?
    {
        let cost: i64 = r.try_get("", "cost")?;
        events.push(envelope(Payload::ContactCreated(ev::ContactCreated {
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
        })));
    }
    let mut prev: Option<(String, String)> = None;
    for r in db
        .query_all_raw(q(format!(
            "SELECT contact_id, seq, stage_key, at FROM bench_transitions WHERE tenant_id = '{raw}' ORDER BY contact_id, seq"
        )))
        .await?
    {
        let (contact, seq, stage, at): (String, i32, String, i64) =
            (r.try_get("", "contact_id")?, r.try_get("", "seq")?, r.try_get("", "stage_key")?, r.try_get("", "at")?);
        let from = prev.as_ref().filter(|p| p.0 == contact).map(|p| p.1.clone()).unwrap_or_default();
        let (pos, (_, cat, role)) = STAGES.iter().enumerate().find(|(_, s)| s.0 == stage).expect("a known stage");
        events.push(envelope(Payload::StageChanged(ev::StageChanged {
            contact_id: contact.clone(),
            model_id: model.into(),
            to_stage: stage.clone(),
            to_category: (*cat).into(),
            to_role: (*role).into(),
            to_stage_position: i32::try_from(pos)?,
            transition_id: format!("{contact}-t{seq}"),
            from_stage: from.clone(),
            transition_time: Some(clm_platform::convert::timestamp(at)),
            reactivation: from == "dormant",
            sequence: seq,
            ..Default::default()
        })));
        prev = Some((contact, stage));
    }
    for p in db
        .query_all_raw(q(format!("SELECT contact_id, at, amount FROM bench_purchases WHERE tenant_id = '{raw}'")))
        .await?
    {
        let (contact, at, amount): (String, i64, i64) =
            (p.try_get("", "contact_id")?, p.try_get("", "at")?, p.try_get("", "amount")?);
        events.push(envelope(Payload::JourneyEventRecorded(ev::JourneyEventRecorded {
            contact_id: contact.clone(),
            journey_event_id: format!("{contact}-p{at}"),
            kind: ev::JourneyEventKind::Purchase as i32,
            amount: Some(clm_proto::common::v1::Money {
                currency_code: "EUR".into(),
                units: amount / 1_000_000,
                nanos: i32::try_from((amount % 1_000_000) * 1000)?,
            }),
            occur_time: Some(clm_platform::convert::timestamp(at)),
            ..Default::default()
        })));
    }
    for chunk in events.chunks(100) {
        let txn = clm_platform::events::UnitOfWork::begin(db).await?;
        let refs: Vec<&ev::EventEnvelope> = chunk.iter().collect();
        clm_metrics::events::MetricsHandler.handle_batch(&txn, &refs, &|_| tracing::Span::none()).await?;
        txn.commit().await?;
    }
    Ok(())
}

/// The bulk path gives the handler's numbers, on a small tenant: every read-model table, row
/// for row (counters that add up to zero aside).
async fn check_bulk_path(db: &DatabaseConnection) -> anyhow::Result<()> {
    generate(db, "check", 300).await?;
    feed(db, "check", "check-fed", "m").await?;
    load(db, "check", "check-bulk", "m").await?;
    let mut tables = 0;
    for t in clm_metrics::store::migrations::READ_MODEL_TABLES.iter().chain(&["contact_facts"]) {
        if ["purchase_orders"].contains(t) {
            continue;
        }
        let cols: Vec<String> = db
            .query_all_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                format!(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = '{t}' \
                     AND table_schema = current_schema() AND column_name <> 'tenant_id' ORDER BY ordinal_position"
                ),
            ))
            .await?
            .iter()
            .map(|r| r.try_get::<String>("", "column_name"))
            .collect::<Result<_, _>>()?;
        let counters = clm_metrics::store::counters::by_name_checked(t).map(|c| c.sums.to_vec()).unwrap_or_default();
        let nonzero = if counters.is_empty() {
            String::new()
        } else {
            format!(" AND NOT ({})", counters.iter().map(|c| format!("{c} = 0")).collect::<Vec<_>>().join(" AND "))
        };
        let cols = cols.join(", ");
        let q = |a: &str, b: &str| {
            format!(
                "SELECT {cols} FROM {t} WHERE tenant_id = '{a}'{nonzero} EXCEPT ALL SELECT {cols} FROM {t} WHERE tenant_id = '{b}'{nonzero}"
            )
        };
        let r = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                format!(
                    "SELECT (SELECT COUNT(*) FROM ({}) x) AS only_fed, (SELECT COUNT(*) FROM ({}) y) AS only_bulk, \
                     (SELECT COUNT(*) FROM {t} WHERE tenant_id = 'check-fed') AS fed",
                    q("check-fed", "check-bulk"),
                    q("check-bulk", "check-fed")
                ),
            ))
            .await?
            .ok_or_else(|| anyhow::anyhow!("no row"))?;
        let (only_fed, only_bulk, fed): (i64, i64, i64) =
            (r.try_get("", "only_fed")?, r.try_get("", "only_bulk")?, r.try_get("", "fed")?);
        anyhow::ensure!(
            only_fed == 0 && only_bulk == 0,
            "{t}: the bulk path differs from the handler ({only_fed} rows only fed, {only_bulk} only bulk, of {fed})"
        );
        tables += usize::from(fed > 0);
    }
    anyhow::ensure!(tables >= 15, "only {tables} tables had rows");
    eprintln!(
        "metrics bulk path: identical to the event handler on 300 contacts / 3,000 transitions ({tables} tables)"
    );
    Ok(())
}

/// GetStageMetrics' main figures for [start, end) straight from the raw rows: new contacts and
/// their cost, leads (first reach of a stage past the entry, lost stages aside), new customers and the median time to close, revenue, orders, buyers and
/// first-order size, the repeat-purchase rate, customers lost, customers at the start and end.
fn raw_stage_metrics(start: i64, end: i64) -> String {
    let cust = "stage_key IN ('conversion', 'retention', 'loyalty')";
    let at = |t: i64| {
        format!(
            "(SELECT COUNT(*) FROM (SELECT DISTINCT ON (contact_id) cust FROM tx WHERE at < {t} ORDER BY contact_id, at DESC) x WHERE cust)"
        )
    };
    format!(
        "WITH tx AS (SELECT contact_id, seq, at, {cust} AS cust, stage_key IN ('acquisition', 'conversion', 'retention', 'loyalty') AS lead,
                            LAG({cust}) OVER (PARTITION BY contact_id ORDER BY seq) AS prev_cust
                     FROM bench_transitions WHERE tenant_id = 'bench'),
              c AS (SELECT contact_id, MIN(at) FILTER (WHERE lead) AS lead_at,
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
    load(&db, "bench", "bench", &model_id).await?;
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
