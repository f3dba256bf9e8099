//! The read model, updated incrementally by events (`apply_*`), and the queries the API asks of
//! it. Every KPI query reads pre-aggregated daily rows (`kpi_daily`, `funnel_cells`,
//! `time_hist`, `cohort_*`, `period_counts`), so its cost grows with the number of days and
//! dimensions in range, not with the number of contacts or transitions.
//!
//! Tables (all keyed by tenant):
//! - `kpi_daily` (name, model, day, channel, campaign, currency) → count `n`, sum `s`
//! - `time_hist` (model, name, day, bucket) → durations (stage-to-stage, time to close)
//! - `funnel_cells` (model, cohort day, channel, campaign, stage, delay) → first reaches
//! - `funnel_roll`, `time_hist_roll`: the funnel (all channels) and the durations by block of
//!   1, 16 and 256 days ([`ROLL_SPANS`]), so a year's funnel reads ~20 blocks, not 365 days
//! - `stage_reach`, `contact_now`, `customer_facts`, `contact_periods`: per-contact state the
//!   updates need (first reach per stage, current stage, purchases, active periods)
//! - `cohort_sizes`, `cohort_cells`, `cohort_last`, `period_counts`: cohort matrix and
//!   new/returning counts per period

use clm_platform::Result;
use sea_orm::{ConnectionTrait, DbBackend, QueryResult, Statement, Value};

use super::counters;
use crate::domain::{self, Gran};

/// A statement with `?` placeholders, numbered for PostgreSQL.
pub fn stmt(b: DbBackend, sql: &str, vals: Vec<Value>) -> Statement {
    let sql = if b == DbBackend::Postgres {
        let mut out = String::with_capacity(sql.len() + 16);
        let mut i = 0;
        for c in sql.chars() {
            if c == '?' {
                i += 1;
                out.push('$');
                out.push_str(&i.to_string());
            } else {
                out.push(c);
            }
        }
        out
    } else {
        sql.to_owned()
    };
    Statement::from_sql_and_values(b, sql, vals)
}

pub async fn exec(db: &impl ConnectionTrait, sql: &str, vals: Vec<Value>) -> Result<u64> {
    Ok(db.execute_raw(stmt(db.get_database_backend(), sql, vals)).await?.rows_affected())
}

pub async fn rows(db: &impl ConnectionTrait, sql: &str, vals: Vec<Value>) -> Result<Vec<QueryResult>> {
    Ok(db.query_all_raw(stmt(db.get_database_backend(), sql, vals)).await?)
}

pub async fn one(db: &impl ConnectionTrait, sql: &str, vals: Vec<Value>) -> Result<Option<QueryResult>> {
    Ok(db.query_one_raw(stmt(db.get_database_backend(), sql, vals)).await?)
}

fn v<T: Into<Value>>(x: T) -> Value {
    x.into()
}

/// Where a contact came from, for per-channel aggregates ("unknown" before its event).
#[derive(Debug, Clone, Default)]
pub struct Attribution {
    /// The contact the counts are about (empty: counted in the aggregates only).
    pub contact: String,
    pub channel: String,
    pub campaign: String,
    pub create_time: Option<i64>,
}

pub async fn attribution(db: &impl ConnectionTrait, tenant: &str, contact: &str) -> Result<Attribution> {
    let r = one(
        db,
        "SELECT acquisition_channel, campaign, create_time, acquire_time FROM contact_facts WHERE tenant_id = ? AND contact_id = ?",
        vec![v(tenant), v(contact)],
    )
    .await?;
    Ok(match r {
        Some(r) => Attribution {
            contact: contact.to_owned(),
            channel: r.try_get::<String>("", "acquisition_channel")?,
            campaign: r.try_get::<String>("", "campaign")?,
            create_time: r.try_get::<Option<i64>>("", "acquire_time")?.or(Some(r.try_get::<i64>("", "create_time")?)),
        },
        None => Attribution { contact: contact.to_owned(), channel: "unknown".into(), ..Attribution::default() },
    })
}

/// Add to a daily KPI counter.
#[allow(clippy::too_many_arguments)]
pub async fn bump_kpi(
    db: &impl ConnectionTrait,
    tenant: &str,
    name: &str,
    model: &str,
    at: i64,
    a: &Attribution,
    currency: &str,
    n: i64,
    s: i64,
) -> Result<()> {
    let day = domain::day(at);
    let (channel, campaign) = (a.channel.as_str(), a.campaign.as_str());
    counters::add(
        db,
        &counters::KPI_DAILY,
        vec![tenant.into(), name.into(), model.into(), day.into(), channel.into(), campaign.into(), currency.into()],
        &[n, s],
    )
    .await?;
    if !a.contact.is_empty() {
        let key = vec![
            tenant.into(),
            a.contact.as_str().into(),
            name.into(),
            model.into(),
            day.into(),
            channel.into(),
            campaign.into(),
            currency.into(),
        ];
        counters::add(db, &counters::CONTACT_KPIS, key, &[n, s]).await?;
    }
    Ok(())
}

/// Funnel delays are kept per day up to a month, then at these boundaries (days), so a cohort
/// day holds a few dozen cells per stage; longer delays count as the last.
pub const DELAY_STEPS: [i64; 15] = [35, 42, 49, 56, 60, 70, 80, 90, 105, 120, 150, 180, 270, 365, 3660];

/// The stored delay of a reach `days` after entry: exact to 31 days, else the next boundary.
pub fn delay_bucket(days: i64) -> i64 {
    if days <= 31 { days.max(0) } else { DELAY_STEPS.iter().copied().find(|s| *s >= days).unwrap_or(3660) }
}

/// The delays a window of `days` covers: exact to 31 days, else rounded down to a boundary.
pub fn window_bucket(days: i64) -> i64 {
    if days <= 31 { days.max(0) } else { DELAY_STEPS.iter().copied().filter(|s| *s <= days).max().unwrap_or(31) }
}

/// Add (`sign` 1) or remove (−1) a contact's funnel contribution: its cohort is the day it
/// entered the model (its earliest reach), each reached stage counted with its delay in days.
async fn funnel_contribution(
    db: &impl ConnectionTrait,
    tenant: &str,
    model: &str,
    reaches: &[(String, i64)],
    a: &Attribution,
    sign: i64,
) -> Result<()> {
    let Some(entry) = reaches.iter().map(|r| r.1).min() else { return Ok(()) };
    for (stage, t) in reaches {
        bump_funnel(db, tenant, model, entry, stage, *t, a, sign).await?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn bump_funnel(
    db: &impl ConnectionTrait,
    tenant: &str,
    model: &str,
    entry: i64,
    stage: &str,
    at: i64,
    a: &Attribution,
    n: i64,
) -> Result<()> {
    let delay = delay_bucket((at - entry).max(0) / domain::DAY);
    let key = vec![
        tenant.into(),
        model.into(),
        domain::day(entry).into(),
        a.channel.as_str().into(),
        a.campaign.as_str().into(),
        stage.into(),
        delay.into(),
    ];
    counters::add(db, &counters::FUNNEL_CELLS, key, &[n]).await?;
    for span in ROLL_SPANS {
        let key = vec![tenant.into(), model.into(), span.into(), block(entry, span).into(), stage.into(), delay.into()];
        counters::add(db, &counters::FUNNEL_ROLL, key, &[n]).await?;
    }
    Ok(())
}

/// The blocks of days the funnel and the histograms are also kept by (`funnel_roll`,
/// `time_hist_roll`; a day's histogram is `time_hist` itself): a range reads its whole
/// blocks of 256 days, then of 16, then its single days at the edges ([`cover`]), so a year
/// is about 20 rows per stage and delay instead of 365 × channels × campaigns.
pub const ROLL_SPANS: [i64; 3] = [1, 16, 256];

/// Start of the block of `span` days holding `at` (blocks aligned on the epoch).
pub fn block(at: i64, span: i64) -> i64 {
    at.div_euclid(span * domain::DAY) * span * domain::DAY
}

/// The blocks that cover the days [lo, hi) exactly (both day starts): (span, first block,
/// end), where rows of `span` days starting in [first, end) tile the part they cover; each
/// span at most twice (its left and right edge), the longest once in the middle.
pub fn cover(lo: i64, hi: i64) -> Vec<(i64, i64, i64)> {
    let (mut a, mut b) = (lo, hi);
    let mut out = Vec::new();
    for (i, span) in ROLL_SPANS.iter().copied().enumerate() {
        if a >= b {
            break;
        }
        let Some(next) = ROLL_SPANS.get(i + 1).map(|s| s * domain::DAY) else {
            out.push((span, a, b));
            break;
        };
        let inner_a = a.div_euclid(next) * next + if a.rem_euclid(next) == 0 { 0 } else { next };
        let inner_b = b.div_euclid(next) * next;
        if inner_a >= inner_b {
            out.push((span, a, b));
            break;
        }
        if a < inner_a {
            out.push((span, a, inner_a));
        }
        if inner_b < b {
            out.push((span, inner_b, b));
        }
        (a, b) = (inner_a, inner_b);
    }
    out
}

/// ` AND (<span_col> = ? AND <day_col> >= ? AND <day_col> < ? OR …)` for the parts of a cover
/// (`span_col` `None`: a table of single days, given only the one-day parts).
fn push_cover(
    sql: &mut String,
    vals: &mut Vec<Value>,
    parts: &[(i64, i64, i64)],
    day_col: &str,
    span_col: Option<&str>,
) {
    sql.push_str(" AND (");
    for (i, (span, from, to)) in parts.iter().enumerate() {
        if i > 0 {
            sql.push_str(" OR ");
        }
        sql.push('(');
        if let Some(c) = span_col {
            sql.push_str(c);
            sql.push_str(" = ? AND ");
            vals.push(v(*span));
        }
        sql.push_str(day_col);
        sql.push_str(" >= ? AND ");
        sql.push_str(day_col);
        sql.push_str(" < ?)");
        vals.push(v(*from));
        vals.push(v(*to));
    }
    sql.push(')');
}

/// `col`'s block of `span` days in SQL both backends share (floored, as [`block`]).
fn block_sql(col: &str, span: i64) -> String {
    let p = span * domain::DAY;
    format!("({col} - ((({col} % {p}) + {p}) % {p}))")
}

/// Build the roll-ups from the day cells (`funnel_cells`, `time_hist`), for every tenant or
/// one: what the handlers keep them at. Used by the migration that added them; the roll-ups
/// must be empty for the tenants filled.
pub async fn fill_roll_ups(db: &impl ConnectionTrait, tenant: Option<&str>) -> Result<()> {
    let (only, vals) = match tenant {
        Some(t) => (" WHERE tenant_id = ?", vec![v(t)]),
        None => ("", vec![]),
    };
    for span in ROLL_SPANS {
        let b = block_sql("cohort_day", span);
        exec(
            db,
            &format!(
                "INSERT INTO funnel_roll (tenant_id, model_id, span_days, cohort_day, stage_key, delay_days, n) \
                 SELECT tenant_id, model_id, {span}, {b}, stage_key, delay_days, SUM(n) FROM funnel_cells{only} \
                 GROUP BY tenant_id, model_id, {b}, stage_key, delay_days"
            ),
            vals.clone(),
        )
        .await?;
        if span > 1 {
            let b = block_sql("day", span);
            exec(
                db,
                &format!(
                    "INSERT INTO time_hist_roll (tenant_id, model_id, name, span_days, day, bucket, n) \
                     SELECT tenant_id, model_id, name, {span}, {b}, bucket, SUM(n) FROM time_hist{only} \
                     GROUP BY tenant_id, model_id, name, {b}, bucket"
                ),
                vals.clone(),
            )
            .await?;
        }
    }
    Ok(())
}

/// The end (exclusive) of the days before `end`: a day start `d` is `< end` exactly when it is `< days_before(end)`.
fn days_before(end: i64) -> i64 {
    domain::day(end.saturating_sub(1)).saturating_add(domain::DAY)
}

async fn reaches_of(db: &impl ConnectionTrait, tenant: &str, model: &str, contact: &str) -> Result<Vec<(String, i64)>> {
    rows(
        db,
        "SELECT stage_key, first_time FROM stage_reach WHERE tenant_id = ? AND model_id = ? AND contact_id = ?",
        vec![v(tenant), v(model), v(contact)],
    )
    .await?
    .into_iter()
    .map(|r| Ok((r.try_get("", "stage_key")?, r.try_get("", "first_time")?)))
    .collect()
}

async fn bump_hist(db: &impl ConnectionTrait, tenant: &str, model: &str, name: &str, at: i64, took: i64) -> Result<()> {
    let bucket = domain::bucket(took);
    let key = vec![tenant.into(), model.into(), name.into(), domain::day(at).into(), bucket.into()];
    counters::add(db, &counters::TIME_HIST, key, &[1]).await?;
    for span in ROLL_SPANS.into_iter().filter(|s| *s > 1) {
        let key = vec![tenant.into(), model.into(), name.into(), span.into(), block(at, span).into(), bucket.into()];
        counters::add(db, &counters::TIME_HIST_ROLL, key, &[1]).await?;
    }
    Ok(())
}

/// A contact's stage change (lifecycle's StageChanged), with its attribution.
#[derive(Debug, Clone)]
pub struct StageChange<'a> {
    pub contact: &'a str,
    pub model: &'a str,
    pub from_stage: &'a str,
    pub to_stage: &'a str,
    pub from_category: &'a str,
    pub to_category: &'a str,
    pub to_role: &'a str,
    pub position: i32,
    pub reactivation: bool,
    pub at: i64,
    pub from_enter: Option<i64>,
}

#[allow(clippy::too_many_lines)]
pub async fn apply_stage_change(db: &impl ConnectionTrait, tenant: &str, c: &StageChange<'_>) -> Result<()> {
    let a = attribution(db, tenant, c.contact).await?;
    exec(
        db,
        "INSERT INTO model_stages (tenant_id, model_id, stage_key, position, category, role) VALUES (?, ?, ?, ?, ?, ?) \
         ON CONFLICT (tenant_id, model_id, stage_key) DO UPDATE SET position = excluded.position, \
         category = excluded.category, role = excluded.role",
        vec![v(tenant), v(c.model), v(c.to_stage), v(i64::from(c.position)), v(c.to_category), v(c.to_role)],
    )
    .await?;
    // First reach of the stage (funnel); a backdated earlier reach moves the count, and an
    // earlier entry into the model moves the contact's whole cohort contribution.
    let before = reaches_of(db, tenant, c.model, c.contact).await?;
    let first = before.iter().find(|r| r.0 == c.to_stage).map(|r| r.1);
    if first.is_none_or(|f| c.at < f) {
        let entry = before.iter().map(|r| r.1).min();
        if first.is_none() {
            // The time it took to get here (from entering the previous stage) goes to the
            // stage's histogram, and stays with the reach for segment queries.
            let took = c.from_enter.filter(|_| !c.from_stage.is_empty()).map(|from| c.at - from);
            exec(
                db,
                "INSERT INTO stage_reach (tenant_id, model_id, contact_id, stage_key, first_time, took, took_day) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
                vec![
                    v(tenant),
                    v(c.model),
                    v(c.contact),
                    v(c.to_stage),
                    v(c.at),
                    v(took),
                    v(took.map(|_| domain::day(c.at))),
                ],
            )
            .await?;
            if let Some(took) = took {
                bump_hist(db, tenant, c.model, c.to_stage, c.at, took).await?;
            }
        } else {
            exec(
                db,
                "UPDATE stage_reach SET first_time = ? WHERE tenant_id = ? AND model_id = ? AND contact_id = ? AND stage_key = ?",
                vec![v(c.at), v(tenant), v(c.model), v(c.contact), v(c.to_stage)],
            )
            .await?;
        }
        match (entry, first) {
            // The common case: a new stage reached after entry; one more cell.
            (Some(e), None) if c.at >= e => bump_funnel(db, tenant, c.model, e, c.to_stage, c.at, &a, 1).await?,
            _ => {
                funnel_contribution(db, tenant, c.model, &before, &a, -1).await?;
                let after = reaches_of(db, tenant, c.model, c.contact).await?;
                funnel_contribution(db, tenant, c.model, &after, &a, 1).await?;
            }
        }
    }
    // Current stage, lead and customer times.
    let now = one(
        db,
        "SELECT enter_time, lead_time, customer_time FROM contact_now WHERE tenant_id = ? AND model_id = ? AND contact_id = ?",
        vec![v(tenant), v(c.model), v(c.contact)],
    )
    .await?;
    let (lead, customer) = match &now {
        None => {
            exec(
                db,
                "INSERT INTO contact_now (tenant_id, model_id, contact_id, stage_key, category, enter_time) VALUES (?, ?, ?, ?, ?, ?)",
                vec![v(tenant), v(c.model), v(c.contact), v(c.to_stage), v(c.to_category), v(c.at)],
            )
            .await?;
            (None, None)
        }
        Some(r) => {
            if c.at >= r.try_get::<i64>("", "enter_time")? {
                exec(
                    db,
                    "UPDATE contact_now SET stage_key = ?, category = ?, enter_time = ? WHERE tenant_id = ? AND model_id = ? AND contact_id = ?",
                    vec![v(c.to_stage), v(c.to_category), v(c.at), v(tenant), v(c.model), v(c.contact)],
                )
                .await?;
            }
            (r.try_get::<Option<i64>>("", "lead_time")?, r.try_get::<Option<i64>>("", "customer_time")?)
        }
    };
    let set_time = async |col: &str, at: i64| {
        exec(
            db,
            &format!("UPDATE contact_now SET {col} = ? WHERE tenant_id = ? AND model_id = ? AND contact_id = ?"),
            vec![v(at), v(tenant), v(c.model), v(c.contact)],
        )
        .await
    };
    // A lead: the first move past the model's entry stage.
    if !c.from_stage.is_empty() {
        match lead {
            None => {
                set_time("lead_time", c.at).await?;
                bump_kpi(db, tenant, "leads", c.model, c.at, &a, "", 1, 0).await?;
            }
            Some(old) if c.at < old => {
                set_time("lead_time", c.at).await?;
                bump_kpi(db, tenant, "leads", c.model, old, &a, "", -1, 0).await?;
                bump_kpi(db, tenant, "leads", c.model, c.at, &a, "", 1, 0).await?;
            }
            Some(_) => {}
        }
    }
    // A new customer: the first entry into a customer stage; time to close from lead (or creation).
    if c.to_category == "customer" {
        match customer {
            None => {
                set_time("customer_time", c.at).await?;
                let base = lead.map(|l| l.min(c.at)).or(a.create_time).unwrap_or(c.at);
                let took = (c.at - base).max(0);
                exec(
                    db,
                    "UPDATE contact_now SET close_took = ?, close_day = ? WHERE tenant_id = ? AND model_id = ? AND contact_id = ?",
                    vec![v(took), v(domain::day(c.at)), v(tenant), v(c.model), v(c.contact)],
                )
                .await?;
                bump_kpi(db, tenant, "new_customers", c.model, c.at, &a, "", 1, took).await?;
                bump_hist(db, tenant, c.model, "__time_to_close", c.at, took).await?;
            }
            Some(old) if c.at < old => {
                set_time("customer_time", c.at).await?;
                bump_kpi(db, tenant, "new_customers", c.model, old, &a, "", -1, 0).await?;
                bump_kpi(db, tenant, "new_customers", c.model, c.at, &a, "", 1, 0).await?;
            }
            Some(_) => {}
        }
    }
    if c.from_category != "customer" && c.to_category == "customer" {
        bump_kpi(db, tenant, "customers_in", c.model, c.at, &a, "", 1, 0).await?;
    }
    if c.from_category == "customer" && c.to_category != "customer" {
        bump_kpi(db, tenant, "customers_out", c.model, c.at, &a, "", 1, 0).await?;
    }
    match c.to_role {
        "dormant" => bump_kpi(db, tenant, "dormant", c.model, c.at, &a, "", 1, 0).await?,
        "churned" => bump_kpi(db, tenant, "churned", c.model, c.at, &a, "", 1, 0).await?,
        _ => {}
    }
    if c.reactivation {
        bump_kpi(db, tenant, "reactivated", c.model, c.at, &a, "", 1, 0).await?;
    }
    Ok(())
}

/// Undo a transition lifecycle removed when it rebuilt a history (a late, backdated event):
/// the counts of movements (customers in / out, dormant, churned, reactivated) on its day and
/// the contact's current stage when it was the last one. First reaches, leads and new
/// customers are firsts: the rebuilt history's transitions move them earlier when they are.
pub async fn retract_stage_change(db: &impl ConnectionTrait, tenant: &str, c: &StageChange<'_>) -> Result<()> {
    let a = attribution(db, tenant, c.contact).await?;
    if c.from_category != "customer" && c.to_category == "customer" {
        bump_kpi(db, tenant, "customers_in", c.model, c.at, &a, "", -1, 0).await?;
    }
    if c.from_category == "customer" && c.to_category != "customer" {
        bump_kpi(db, tenant, "customers_out", c.model, c.at, &a, "", -1, 0).await?;
    }
    match c.to_role {
        "dormant" => bump_kpi(db, tenant, "dormant", c.model, c.at, &a, "", -1, 0).await?,
        "churned" => bump_kpi(db, tenant, "churned", c.model, c.at, &a, "", -1, 0).await?,
        _ => {}
    }
    if c.reactivation {
        bump_kpi(db, tenant, "reactivated", c.model, c.at, &a, "", -1, 0).await?;
    }
    if let Some(enter) = c.from_enter.filter(|_| !c.from_stage.is_empty()) {
        exec(
            db,
            "UPDATE contact_now SET stage_key = ?, category = ?, enter_time = ? \
             WHERE tenant_id = ? AND model_id = ? AND contact_id = ? AND stage_key = ? AND enter_time = ?",
            vec![
                v(c.from_stage),
                v(c.from_category),
                v(enter),
                v(tenant),
                v(c.model),
                v(c.contact),
                v(c.to_stage),
                v(c.at),
            ],
        )
        .await?;
    }
    Ok(())
}

/// Per-contact purchase and advocacy facts.
#[derive(Debug, Clone, Default)]
pub struct CustomerFacts {
    pub first_purchase: Option<i64>,
    pub last_purchase: Option<i64>,
    pub orders: i64,
    pub revenue: i64,
    pub currency: String,
    pub referrals: i64,
    pub reviews: i64,
    pub last_nps: Option<i64>,
}

pub async fn customer_facts(db: &impl ConnectionTrait, tenant: &str, contact: &str) -> Result<Option<CustomerFacts>> {
    let r = one(db, "SELECT * FROM customer_facts WHERE tenant_id = ? AND contact_id = ?", vec![v(tenant), v(contact)])
        .await?;
    r.map(|r| {
        Ok(CustomerFacts {
            first_purchase: r.try_get("", "first_purchase")?,
            last_purchase: r.try_get("", "last_purchase")?,
            orders: r.try_get("", "orders")?,
            revenue: r.try_get("", "revenue")?,
            currency: r.try_get("", "currency")?,
            referrals: r.try_get("", "referrals")?,
            reviews: r.try_get("", "reviews")?,
            last_nps: r.try_get("", "last_nps")?,
        })
    })
    .transpose()
}

async fn save_customer_facts(db: &impl ConnectionTrait, tenant: &str, contact: &str, f: &CustomerFacts) -> Result<()> {
    exec(
        db,
        "INSERT INTO customer_facts (tenant_id, contact_id, first_purchase, last_purchase, orders, revenue, currency, referrals, reviews, last_nps) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id, contact_id) DO UPDATE SET \
         first_purchase = excluded.first_purchase, last_purchase = excluded.last_purchase, orders = excluded.orders, \
         revenue = excluded.revenue, currency = excluded.currency, referrals = excluded.referrals, \
         reviews = excluded.reviews, last_nps = excluded.last_nps",
        vec![
            v(tenant),
            v(contact),
            v(f.first_purchase),
            v(f.last_purchase),
            v(f.orders),
            v(f.revenue),
            v(f.currency.as_str()),
            v(f.referrals),
            v(f.reviews),
            v(f.last_nps),
        ],
    )
    .await?;
    Ok(())
}

const COHORT_GRANS: [Gran; 2] = [Gran::Week, Gran::Month];
const ACTIVITY_GRANS: [Gran; 3] = [Gran::Day, Gran::Week, Gran::Month];

async fn bump_cohort(
    db: &impl ConnectionTrait,
    tenant: &str,
    g: Gran,
    cohort: i64,
    idx: i64,
    n: i64,
    revenue: i64,
) -> Result<()> {
    counters::add(
        db,
        &counters::COHORT_CELLS,
        vec![tenant.into(), g.key().into(), cohort.into(), idx.into()],
        &[n, revenue],
    )
    .await?;
    Ok(())
}

async fn bump_size(db: &impl ConnectionTrait, tenant: &str, g: Gran, cohort: i64, n: i64) -> Result<()> {
    counters::add(db, &counters::COHORT_SIZES, vec![tenant.into(), g.key().into(), cohort.into()], &[n]).await
}

async fn bump_last(db: &impl ConnectionTrait, tenant: &str, g: Gran, cohort: i64, last: i64, n: i64) -> Result<()> {
    counters::add(db, &counters::COHORT_LAST, vec![tenant.into(), g.key().into(), cohort.into(), last.into()], &[n])
        .await
}

/// The contact's active periods at granularity `g`: (period start, revenue).
async fn contact_periods(db: &impl ConnectionTrait, tenant: &str, contact: &str, g: Gran) -> Result<Vec<(i64, i64)>> {
    rows(
        db,
        "SELECT period, revenue FROM contact_periods WHERE tenant_id = ? AND contact_id = ? AND gran = ?",
        vec![v(tenant), v(contact), v(g.key())],
    )
    .await?
    .into_iter()
    .map(|r| Ok((r.try_get("", "period")?, r.try_get("", "revenue")?)))
    .collect()
}

#[allow(clippy::too_many_arguments)]
async fn bump_period_counts(
    db: &impl ConnectionTrait,
    tenant: &str,
    g: Gran,
    period: i64,
    active: i64,
    returners: i64,
    firsts: i64,
) -> Result<()> {
    counters::add(
        db,
        &counters::PERIOD_COUNTS,
        vec![tenant.into(), g.key().into(), period.into()],
        &[active, returners, firsts],
    )
    .await?;
    Ok(())
}

/// Add (`sign` = 1) or remove (−1) a contact's whole contribution to the cohort starting at
/// `first_purchase`'s period.
async fn cohort_contribution(
    db: &impl ConnectionTrait,
    tenant: &str,
    contact: &str,
    first_purchase: i64,
    sign: i64,
) -> Result<()> {
    for g in COHORT_GRANS {
        let cohort = domain::period_start(first_purchase, g);
        bump_size(db, tenant, g, cohort, sign).await?;
        let mut last = None;
        for (p, revenue) in contact_periods(db, tenant, contact, g).await? {
            let idx = domain::period_index(cohort, p, g);
            if idx >= 0 {
                bump_cohort(db, tenant, g, cohort, idx, sign, sign * revenue).await?;
                last = last.max(Some(idx));
            }
        }
        if let Some(l) = last {
            bump_last(db, tenant, g, cohort, l, sign).await?;
        }
    }
    Ok(())
}

/// Record activity of a contact at `at` (with `revenue` µ-units, 0 for non-purchases): active
/// periods, new vs returning counts, and the cohort matrix.
async fn activity(
    db: &impl ConnectionTrait,
    tenant: &str,
    contact: &str,
    at: i64,
    revenue: i64,
    first_purchase: Option<i64>,
) -> Result<()> {
    // The contact's periods at every granularity, in one read, and written in one statement
    // at the end (nothing in between reads them).
    let mut all: std::collections::HashMap<String, Vec<(i64, i64)>> = std::collections::HashMap::new();
    for r in rows(
        db,
        "SELECT gran, period, revenue FROM contact_periods WHERE tenant_id = ? AND contact_id = ?",
        vec![v(tenant), v(contact)],
    )
    .await?
    {
        all.entry(r.try_get("", "gran")?).or_default().push((r.try_get("", "period")?, r.try_get("", "revenue")?));
    }
    let mut periods = Vec::new();
    for g in ACTIVITY_GRANS {
        let p = domain::period_start(at, g);
        let existing = all.remove(g.key()).unwrap_or_default();
        let is_new = !existing.iter().any(|(q, _)| *q == p);
        let cohort = first_purchase.filter(|_| g != Gran::Day).map(|f| domain::period_start(f, g));
        if is_new || revenue != 0 {
            periods.push((g, p));
        }
        if is_new {
            // Returning: also active in the previous period; first: never active before. A
            // late event of an earlier period makes the next period returning, and takes
            // "first" from the period that had it.
            let previous = domain::period_start(p - 1, g);
            let returning = i64::from(existing.iter().any(|(q, _)| *q == previous));
            let old_first = existing.iter().map(|(q, _)| *q).min();
            let first = old_first.is_none_or(|f| f > p);
            bump_period_counts(db, tenant, g, p, 1, returning, i64::from(first)).await?;
            let next = domain::next_period(p, g);
            if existing.iter().any(|(q, _)| *q == next) {
                bump_period_counts(db, tenant, g, next, 0, 1, 0).await?;
            }
            if let Some(f) = old_first.filter(|_| first) {
                bump_period_counts(db, tenant, g, f, 0, 0, -1).await?;
            }
        }
        if let Some(cohort) = cohort {
            let idx = domain::period_index(cohort, p, g);
            if idx >= 0 {
                bump_cohort(db, tenant, g, cohort, idx, i64::from(is_new), revenue).await?;
                let old_last =
                    existing.iter().map(|(q, _)| domain::period_index(cohort, *q, g)).filter(|i| *i >= 0).max();
                if old_last.is_none_or(|l| idx > l) {
                    if let Some(l) = old_last {
                        bump_last(db, tenant, g, cohort, l, -1).await?;
                    }
                    bump_last(db, tenant, g, cohort, idx, 1).await?;
                }
            }
        }
    }
    // The active periods, new or with more revenue, in one statement.
    if !periods.is_empty() {
        let mut vals = Vec::with_capacity(periods.len() * 5);
        for (g, p) in &periods {
            vals.extend([v(tenant), v(contact), v(g.key()), v(*p), v(revenue)]);
        }
        exec(
            db,
            &format!(
                "INSERT INTO contact_periods (tenant_id, contact_id, gran, period, revenue) VALUES {} \
                 ON CONFLICT (tenant_id, contact_id, gran, period) DO UPDATE SET revenue = {}",
                vec!["(?, ?, ?, ?, ?)"; periods.len()].join(", "),
                counters::saturating_sum("contact_periods", "revenue")
            ),
            vals,
        )
        .await?;
    }
    Ok(())
}

/// Record that a purchase with this order id was counted; false when it was already (the same
/// sale: count it once).
pub async fn claim_order(db: &impl ConnectionTrait, tenant: &str, order_id: &str) -> Result<bool> {
    let n = exec(
        db,
        "INSERT INTO purchase_orders (tenant_id, order_id) VALUES (?, ?) ON CONFLICT (tenant_id, order_id) DO NOTHING",
        vec![v(tenant), v(order_id)],
    )
    .await?;
    Ok(n == 1)
}

/// A journey event (lifecycle's JourneyEventRecorded).
#[derive(Debug, Clone)]
pub enum Happening {
    Purchase { amount: i64, currency: String },
    Referral,
    Review,
    Other,
}

pub async fn apply_journey_event(
    db: &impl ConnectionTrait,
    tenant: &str,
    contact: &str,
    at: i64,
    h: &Happening,
) -> Result<()> {
    let a = attribution(db, tenant, contact).await?;
    let known = customer_facts(db, tenant, contact).await?;
    let changes_facts = known.is_none() || !matches!(h, Happening::Other);
    let mut f = known.unwrap_or_default();
    let mut revenue = 0;
    match h {
        Happening::Purchase { amount, currency } => {
            revenue = *amount;
            bump_kpi(db, tenant, "revenue", "", at, &a, currency, 1, *amount).await?;
            if f.orders >= 1 {
                bump_kpi(db, tenant, "repeat_orders", "", at, &a, "", 1, 0).await?;
            }
            if f.orders == 1 {
                bump_kpi(db, tenant, "repeat_customers", "", at, &a, "", 1, 0).await?;
            }
            if f.orders == 0 {
                bump_kpi(db, tenant, "first_purchases", "", at, &a, currency, 1, *amount).await?;
            }
            let old_first = f.first_purchase;
            f.orders += 1;
            f.revenue = f.revenue.saturating_add(*amount);
            currency.clone_into(&mut f.currency);
            f.first_purchase = Some(old_first.map_or(at, |o| o.min(at)));
            f.last_purchase = Some(f.last_purchase.map_or(at, |o| o.max(at)));
            if old_first != f.first_purchase {
                if let Some(old) = old_first {
                    cohort_contribution(db, tenant, contact, old, -1).await?;
                }
                cohort_contribution(db, tenant, contact, at, 1).await?;
            }
        }
        Happening::Referral => {
            bump_kpi(db, tenant, "referrals", "", at, &a, "", 1, 0).await?;
            if f.referrals == 0 {
                bump_kpi(db, tenant, "referrers", "", at, &a, "", 1, 0).await?;
            }
            f.referrals += 1;
        }
        Happening::Review => return apply_review(db, tenant, contact, at).await,
        Happening::Other => {}
    }
    if changes_facts {
        save_customer_facts(db, tenant, contact, &f).await?;
    }
    activity(db, tenant, contact, at, revenue, f.first_purchase).await
}

pub async fn apply_review(db: &impl ConnectionTrait, tenant: &str, contact: &str, at: i64) -> Result<()> {
    let a = attribution(db, tenant, contact).await?;
    let mut f = customer_facts(db, tenant, contact).await?.unwrap_or_default();
    bump_kpi(db, tenant, "reviews", "", at, &a, "", 1, 0).await?;
    if f.reviews == 0 {
        bump_kpi(db, tenant, "reviewers", "", at, &a, "", 1, 0).await?;
    }
    f.reviews += 1;
    save_customer_facts(db, tenant, contact, &f).await?;
    activity(db, tenant, contact, at, 0, f.first_purchase).await
}

/// A complete, scored survey response.
pub async fn apply_score(
    db: &impl ConnectionTrait,
    tenant: &str,
    contact: &str,
    kind: &str,
    score: i32,
    at: i64,
) -> Result<()> {
    let a = attribution(db, tenant, contact).await?;
    let s = i64::from(score);
    match kind {
        "nps" => {
            bump_kpi(db, tenant, "nps_total", "", at, &a, "", 1, s).await?;
            if score >= 9 {
                bump_kpi(db, tenant, "nps_promoters", "", at, &a, "", 1, 0).await?;
            } else if score <= 6 {
                bump_kpi(db, tenant, "nps_detractors", "", at, &a, "", 1, 0).await?;
            }
            let mut f = customer_facts(db, tenant, contact).await?.unwrap_or_default();
            f.last_nps = Some(s);
            save_customer_facts(db, tenant, contact, &f).await?;
        }
        "csat" => {
            bump_kpi(db, tenant, "csat_total", "", at, &a, "", 1, s).await?;
            if score >= 4 {
                bump_kpi(db, tenant, "csat_satisfied", "", at, &a, "", 1, 0).await?;
            }
        }
        "ces" => bump_kpi(db, tenant, "ces_total", "", at, &a, "", 1, s).await?,
        _ => {}
    }
    Ok(())
}

/// Empty every read-model table (before a replay from the first event; goals stay).
pub async fn clear(db: &impl ConnectionTrait) -> Result<()> {
    for t in super::migrations::READ_MODEL_TABLES {
        db.execute_unprepared(&format!("DELETE FROM {t}")).await?;
    }
    Ok(())
}

// ---- queries ----
//
// Without a segment, queries read the aggregates. With one (`Slice::contacts`, the members
// contacts answered for the segment filter), they read the per-contact facts of the members,
// a chunk of ids per statement, and add the chunks up: the same numbers the aggregates give
// for those contacts, at a cost that grows with the segment, not with history.

/// Most contact ids one statement binds.
const ID_CHUNK: usize = 5_000;

/// Which slice of the aggregates a query reads.
#[derive(Debug, Clone, Default)]
pub struct Slice {
    pub model: String,
    pub start: i64,
    pub end: i64,
    pub channel: Option<String>,
    pub campaign: Option<String>,
    /// Only these contacts (a segment's members); `None`: every contact.
    pub contacts: Option<std::sync::Arc<Vec<String>>>,
}

impl Slice {
    fn filters(&self, sql: &mut String, vals: &mut Vec<Value>) {
        if let Some(c) = &self.channel {
            sql.push_str(" AND channel = ?");
            vals.push(v(c.as_str()));
        }
        if let Some(c) = &self.campaign {
            sql.push_str(" AND campaign = ?");
            vals.push(v(c.as_str()));
        }
    }

    /// Channel and campaign as conditions on the contact's facts (`f`).
    fn fact_filters(&self, sql: &mut String, vals: &mut Vec<Value>) {
        if let Some(c) = &self.channel {
            sql.push_str(" AND COALESCE(f.acquisition_channel, 'unknown') = ?");
            vals.push(v(c.as_str()));
        }
        if let Some(c) = &self.campaign {
            sql.push_str(" AND COALESCE(f.campaign, '') = ?");
            vals.push(v(c.as_str()));
        }
    }

    /// The statements to run: one over everything (`None`), or one per chunk of the segment.
    fn chunks(&self) -> Vec<Option<&[String]>> {
        match &self.contacts {
            None => vec![None],
            Some(ids) => ids.chunks(ID_CHUNK).map(Some).collect(),
        }
    }
}

/// `AND <col> IN (?, …)` for a chunk of contact ids.
fn push_in(sql: &mut String, vals: &mut Vec<Value>, col: &str, ids: Option<&[String]>) {
    if let Some(ids) = ids {
        sql.push_str(" AND ");
        sql.push_str(col);
        sql.push_str(" IN (");
        sql.push_str(&vec!["?"; ids.len()].join(", "));
        sql.push(')');
        vals.extend(ids.iter().map(|i| v(i.as_str())));
    }
}

/// One aggregated KPI counter: (name, currency, group) → (count, sum).
#[derive(Debug, Clone, PartialEq)]
pub struct KpiRow {
    pub name: String,
    pub currency: String,
    /// The GROUP BY value: a day, a channel, a channel/campaign pair, or empty.
    pub group: String,
    pub day: i64,
    pub n: i64,
    /// The sum, exactly: money sums pass i64 (µ-units) at 9.2 × 10^12 units.
    pub s: i128,
}

/// KPI counters in the slice, grouped by `group` ("", "day", "channel" or "channel,campaign").
pub async fn kpis(
    db: &impl ConnectionTrait,
    tenant: &str,
    slice: &Slice,
    names: &[&str],
    group: &str,
) -> Result<Vec<KpiRow>> {
    let marks = vec!["?"; names.len()].join(", ");
    let (select_group, group_by) = match group {
        "day" => ("'' AS grp, day", ", day"),
        "channel" => ("channel AS grp, CAST(0 AS BIGINT) AS day", ", channel"),
        "channel,campaign" => ("channel || '/' || campaign AS grp, CAST(0 AS BIGINT) AS day", ", channel, campaign"),
        _ => ("'' AS grp, CAST(0 AS BIGINT) AS day", ""),
    };
    let table = if slice.contacts.is_some() { "contact_kpis" } else { "kpi_daily" };
    let mut sum: std::collections::BTreeMap<(String, String, String, i64), (i64, i128)> =
        std::collections::BTreeMap::new();
    for ids in slice.chunks() {
        // SUM(s) of many days' money overflows BIGINT (SQLite: "integer overflow"; PostgreSQL:
        // NUMERIC, then the cast fails): sum the whole millions and the rest apart, each far
        // from the limit, and put them together in i128.
        let mut sql = format!(
            "SELECT name, currency, {select_group}, CAST(SUM(n) AS BIGINT) AS n, \
             CAST(SUM(s / 1000000) AS BIGINT) AS s_hi, CAST(SUM(s % 1000000) AS BIGINT) AS s_lo FROM {table} \
             WHERE tenant_id = ? AND name IN ({marks}) AND model_id IN ('', ?) AND day >= ? AND day < ?"
        );
        let mut vals = vec![v(tenant)];
        vals.extend(names.iter().map(|n| v(*n)));
        vals.extend([v(slice.model.as_str()), v(slice.start), v(slice.end)]);
        slice.filters(&mut sql, &mut vals);
        push_in(&mut sql, &mut vals, "contact_id", ids);
        sql.push_str(" GROUP BY name, currency");
        sql.push_str(group_by);
        for r in rows(db, &sql, vals).await? {
            let e = sum
                .entry((
                    r.try_get("", "name")?,
                    r.try_get("", "currency")?,
                    r.try_get("", "grp")?,
                    r.try_get("", "day")?,
                ))
                .or_default();
            e.0 += r.try_get::<Option<i64>>("", "n")?.unwrap_or(0);
            let hi = r.try_get::<Option<i64>>("", "s_hi")?.unwrap_or(0);
            let lo = r.try_get::<Option<i64>>("", "s_lo")?.unwrap_or(0);
            e.1 += i128::from(hi) * 1_000_000 + i128::from(lo);
        }
    }
    Ok(sum
        .into_iter()
        .map(|((name, currency, group, day), (n, s))| KpiRow { name, currency, group, day, n, s })
        .collect())
}

/// Running total of customers (in − out) of the slice's model and contacts before `at`:
/// customers at that moment.
pub async fn customers_at(db: &impl ConnectionTrait, tenant: &str, slice: &Slice, at: i64) -> Result<i64> {
    let table = if slice.contacts.is_some() { "contact_kpis" } else { "kpi_daily" };
    let mut total = 0;
    for ids in slice.chunks() {
        let mut sql = format!(
            "SELECT CAST(SUM(CASE WHEN name = 'customers_in' THEN n ELSE -n END) AS BIGINT) AS c FROM {table} \
             WHERE tenant_id = ? AND name IN ('customers_in', 'customers_out') AND model_id = ? AND day < ?"
        );
        let mut vals = vec![v(tenant), v(slice.model.as_str()), v(domain::day(at))];
        push_in(&mut sql, &mut vals, "contact_id", ids);
        let r = one(db, &sql, vals).await?;
        total += r.map(|r| r.try_get::<Option<i64>>("", "c")).transpose()?.flatten().unwrap_or(0);
    }
    Ok(total)
}

/// A model's stages as seen in events: (key, position, category, role), in order.
pub async fn model_stages(
    db: &impl ConnectionTrait,
    tenant: &str,
    model: &str,
) -> Result<Vec<(String, i64, String, String)>> {
    rows(
        db,
        "SELECT stage_key, position, category, role FROM model_stages WHERE tenant_id = ? AND model_id = ? ORDER BY position",
        vec![v(tenant), v(model)],
    )
    .await?
    .into_iter()
    .map(|r| Ok((r.try_get("", "stage_key")?, r.try_get("", "position")?, r.try_get("", "category")?, r.try_get("", "role")?)))
    .collect()
}

/// The funnel of the contacts who entered the model in the slice: per stage, how many reached
/// it within `window_days` of entering.
pub async fn funnel(
    db: &impl ConnectionTrait,
    tenant: &str,
    slice: &Slice,
    window_days: i64,
) -> Result<Vec<(String, i64)>> {
    if slice.contacts.is_some() {
        return funnel_of_members(db, tenant, slice, window_days).await;
    }
    let (lo, hi) = (domain::day(slice.start), days_before(slice.end));
    if lo >= hi {
        return Ok(Vec::new());
    }
    let (mut sql, vals) = if slice.channel.is_none() && slice.campaign.is_none() {
        // Every channel and campaign: the roll-up's blocks.
        let mut sql = "SELECT stage_key, CAST(SUM(n) AS BIGINT) AS n FROM funnel_roll \
                       WHERE tenant_id = ? AND model_id = ? AND delay_days <= ?"
            .to_owned();
        let mut vals = vec![v(tenant), v(slice.model.as_str()), v(window_days)];
        push_cover(&mut sql, &mut vals, &cover(lo, hi), "cohort_day", Some("span_days"));
        (sql, vals)
    } else {
        let mut sql = "SELECT stage_key, CAST(SUM(n) AS BIGINT) AS n FROM funnel_cells WHERE tenant_id = ? \
                       AND model_id = ? AND cohort_day >= ? AND cohort_day < ? AND delay_days <= ?"
            .to_owned();
        let mut vals = vec![v(tenant), v(slice.model.as_str()), v(lo), v(hi), v(window_days)];
        slice.filters(&mut sql, &mut vals);
        (sql, vals)
    };
    sql.push_str(" GROUP BY stage_key");
    rows(db, &sql, vals)
        .await?
        .into_iter()
        .map(|r| Ok((r.try_get("", "stage_key")?, r.try_get::<Option<i64>>("", "n")?.unwrap_or(0))))
        .filter(|r: &Result<(String, i64)>| r.as_ref().map_or(true, |(_, n)| *n != 0))
        .collect()
}

/// The funnel from the members' first reaches, cell by cell as `funnel_cells` counts them.
async fn funnel_of_members(
    db: &impl ConnectionTrait,
    tenant: &str,
    slice: &Slice,
    window_days: i64,
) -> Result<Vec<(String, i64)>> {
    let mut counts: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
    for ids in slice.chunks() {
        let mut sql = "SELECT r.contact_id, r.stage_key, r.first_time FROM stage_reach r \
             LEFT JOIN contact_facts f ON f.tenant_id = r.tenant_id AND f.contact_id = r.contact_id \
             WHERE r.tenant_id = ? AND r.model_id = ?"
            .to_owned();
        let mut vals = vec![v(tenant), v(slice.model.as_str())];
        slice.fact_filters(&mut sql, &mut vals);
        push_in(&mut sql, &mut vals, "r.contact_id", ids);
        let mut reaches: std::collections::HashMap<String, Vec<(String, i64)>> = std::collections::HashMap::new();
        for r in rows(db, &sql, vals).await? {
            reaches
                .entry(r.try_get("", "contact_id")?)
                .or_default()
                .push((r.try_get("", "stage_key")?, r.try_get("", "first_time")?));
        }
        for stages in reaches.values() {
            let Some(entry) = stages.iter().map(|r| r.1).min() else { continue };
            let cohort = domain::day(entry);
            if cohort < domain::day(slice.start) || cohort >= slice.end {
                continue;
            }
            for (stage, t) in stages {
                if delay_bucket((t - entry).max(0) / domain::DAY) <= window_days {
                    *counts.entry(stage.clone()).or_default() += 1;
                }
            }
        }
    }
    Ok(counts.into_iter().collect())
}

/// The histogram of durations named `name` (a stage key, or `__time_to_close`) in the range.
pub async fn histogram(db: &impl ConnectionTrait, tenant: &str, slice: &Slice, name: &str) -> Result<Vec<(i64, i64)>> {
    Ok(histograms(db, tenant, slice).await?.remove(name).unwrap_or_default())
}

/// The duration histograms of the slice's model and range: name → (bucket, count).
pub async fn histograms(
    db: &impl ConnectionTrait,
    tenant: &str,
    slice: &Slice,
) -> Result<std::collections::HashMap<String, Vec<(i64, i64)>>> {
    let mut out: std::collections::HashMap<String, Vec<(i64, i64)>> = std::collections::HashMap::new();
    if slice.contacts.is_none() {
        // Days `d` with start <= d < end: single days from `time_hist`, blocks from the roll-up.
        let lo = domain::day(slice.start.saturating_add(domain::DAY - 1));
        let hi = days_before(slice.end);
        if lo >= hi {
            return Ok(out);
        }
        let parts = cover(lo, hi);
        let (days, blocks): (Vec<_>, Vec<_>) = parts.into_iter().partition(|p| p.0 == 1);
        let mut branches = Vec::new();
        let mut vals = Vec::new();
        for (table, parts, span_col) in [("time_hist", days, None), ("time_hist_roll", blocks, Some("span_days"))] {
            if parts.is_empty() {
                continue;
            }
            let mut sql = format!("SELECT name, bucket, n FROM {table} WHERE tenant_id = ? AND model_id = ?");
            vals.extend([v(tenant), v(slice.model.as_str())]);
            push_cover(&mut sql, &mut vals, &parts, "day", span_col);
            branches.push(sql);
        }
        let sql = format!(
            "SELECT name, bucket, CAST(SUM(n) AS BIGINT) AS n FROM ({}) x GROUP BY name, bucket",
            branches.join(" UNION ALL ")
        );
        for r in rows(db, &sql, vals).await? {
            out.entry(r.try_get("", "name")?)
                .or_default()
                .push((r.try_get("", "bucket")?, r.try_get::<Option<i64>>("", "n")?.unwrap_or(0)));
        }
        return Ok(out);
    }
    // The members' own durations, bucketed as the histograms bucket them.
    let mut cells: std::collections::BTreeMap<(String, i64), i64> = std::collections::BTreeMap::new();
    for ids in slice.chunks() {
        for (sql, name_col) in [
            (
                "SELECT stage_key AS name, took FROM stage_reach WHERE tenant_id = ? AND model_id = ? \
                 AND took IS NOT NULL AND took_day >= ? AND took_day < ?",
                true,
            ),
            (
                "SELECT close_took AS took FROM contact_now WHERE tenant_id = ? AND model_id = ? \
                 AND close_took IS NOT NULL AND close_day >= ? AND close_day < ?",
                false,
            ),
        ] {
            let mut sql = sql.to_owned();
            let mut vals = vec![v(tenant), v(slice.model.as_str()), v(slice.start), v(slice.end)];
            push_in(&mut sql, &mut vals, "contact_id", ids);
            for r in rows(db, &sql, vals).await? {
                let name = if name_col { r.try_get("", "name")? } else { "__time_to_close".to_owned() };
                *cells.entry((name, domain::bucket(r.try_get("", "took")?))).or_default() += 1;
            }
        }
    }
    for ((name, bucket), n) in cells {
        out.entry(name).or_default().push((bucket, n));
    }
    Ok(out)
}

/// Cohort sizes, cells (cohort, idx, n, revenue) and last-active counts (cohort, last_idx, n).
pub type Cohorts = (Vec<(i64, i64)>, Vec<(i64, i64, i64, i64)>, Vec<(i64, i64, i64)>);

/// Cohorts starting in [start, end) of the slice's contacts (all, or a segment's).
pub async fn cohorts(
    db: &impl ConnectionTrait,
    tenant: &str,
    slice: &Slice,
    g: Gran,
    start: i64,
    end: i64,
) -> Result<Cohorts> {
    if slice.contacts.is_some() {
        return cohorts_of_members(db, tenant, slice, g, start, end).await;
    }
    let base = vec![v(tenant), v(g.key()), v(start), v(end)];
    let sizes = rows(db, "SELECT cohort, n FROM cohort_sizes WHERE tenant_id = ? AND gran = ? AND cohort >= ? AND cohort < ? AND n > 0 ORDER BY cohort", base.clone())
        .await?
        .into_iter()
        .map(|r| Ok((r.try_get("", "cohort")?, r.try_get("", "n")?)))
        .collect::<Result<Vec<_>>>()?;
    let cells = rows(db, "SELECT cohort, idx, n, revenue FROM cohort_cells WHERE tenant_id = ? AND gran = ? AND cohort >= ? AND cohort < ?", base.clone())
        .await?
        .into_iter()
        .map(|r| Ok((r.try_get("", "cohort")?, r.try_get("", "idx")?, r.try_get("", "n")?, r.try_get("", "revenue")?)))
        .collect::<Result<Vec<_>>>()?;
    let last = rows(
        db,
        "SELECT cohort, last_idx, n FROM cohort_last WHERE tenant_id = ? AND gran = ? AND cohort >= ? AND cohort < ?",
        base,
    )
    .await?
    .into_iter()
    .map(|r| Ok((r.try_get("", "cohort")?, r.try_get("", "last_idx")?, r.try_get("", "n")?)))
    .collect::<Result<Vec<_>>>()?;
    Ok((sizes, cells, last))
}

/// The members' active periods at `g`: contact → [(period, revenue)].
async fn member_periods(
    db: &impl ConnectionTrait,
    tenant: &str,
    g: Gran,
    ids: Option<&[String]>,
) -> Result<std::collections::HashMap<String, Vec<(i64, i64)>>> {
    let mut sql = "SELECT contact_id, period, revenue FROM contact_periods WHERE tenant_id = ? AND gran = ?".to_owned();
    let mut vals = vec![v(tenant), v(g.key())];
    push_in(&mut sql, &mut vals, "contact_id", ids);
    let mut out: std::collections::HashMap<String, Vec<(i64, i64)>> = std::collections::HashMap::new();
    for r in rows(db, &sql, vals).await? {
        out.entry(r.try_get("", "contact_id")?)
            .or_default()
            .push((r.try_get("", "period")?, r.try_get("", "revenue")?));
    }
    Ok(out)
}

/// Cohorts from the members' first purchase and active periods, as `cohort_contribution` counts.
async fn cohorts_of_members(
    db: &impl ConnectionTrait,
    tenant: &str,
    slice: &Slice,
    g: Gran,
    start: i64,
    end: i64,
) -> Result<Cohorts> {
    use std::collections::BTreeMap;
    let mut sizes: BTreeMap<i64, i64> = BTreeMap::new();
    let mut cells: BTreeMap<(i64, i64), (i64, i64)> = BTreeMap::new();
    let mut last: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for ids in slice.chunks() {
        let mut sql =
            "SELECT contact_id, first_purchase FROM customer_facts WHERE tenant_id = ? AND first_purchase IS NOT NULL"
                .to_owned();
        let mut vals = vec![v(tenant)];
        push_in(&mut sql, &mut vals, "contact_id", ids);
        let firsts = rows(db, &sql, vals).await?;
        let periods = member_periods(db, tenant, g, ids).await?;
        for r in firsts {
            let contact: String = r.try_get("", "contact_id")?;
            let cohort = domain::period_start(r.try_get("", "first_purchase")?, g);
            if cohort < start || cohort >= end {
                continue;
            }
            *sizes.entry(cohort).or_default() += 1;
            let mut max_idx = None;
            for (p, revenue) in periods.get(&contact).map_or(&[][..], Vec::as_slice) {
                let idx = domain::period_index(cohort, *p, g);
                if idx >= 0 {
                    let c = cells.entry((cohort, idx)).or_default();
                    c.0 += 1;
                    c.1 = c.1.saturating_add(*revenue);
                    max_idx = max_idx.max(Some(idx));
                }
            }
            if let Some(l) = max_idx {
                *last.entry((cohort, l)).or_default() += 1;
            }
        }
    }
    Ok((
        sizes.into_iter().collect(),
        cells.into_iter().map(|((c, i), (n, r))| (c, i, n, r)).collect(),
        last.into_iter().map(|((c, l), n)| (c, l, n)).collect(),
    ))
}

/// Per period of `g` in [start, end): (period, active, returning, first-time) contacts of the
/// slice (all, or a segment's).
pub async fn period_counts(
    db: &impl ConnectionTrait,
    tenant: &str,
    slice: &Slice,
    g: Gran,
    start: i64,
    end: i64,
) -> Result<Vec<(i64, i64, i64, i64)>> {
    if slice.contacts.is_none() {
        return rows(
            db,
            "SELECT period, active, returners, firsts FROM period_counts WHERE tenant_id = ? AND gran = ? AND period >= ? AND period < ? ORDER BY period",
            vec![v(tenant), v(g.key()), v(start), v(end)],
        )
        .await?
        .into_iter()
        .map(|r| {
            Ok((r.try_get("", "period")?, r.try_get("", "active")?, r.try_get("", "returners")?, r.try_get("", "firsts")?))
        })
        .collect();
    }
    let mut counts: std::collections::BTreeMap<i64, (i64, i64, i64)> = std::collections::BTreeMap::new();
    for ids in slice.chunks() {
        for periods in member_periods(db, tenant, g, ids).await?.values() {
            let first = periods.iter().map(|p| p.0).min();
            for (p, _) in periods.iter().filter(|(p, _)| (start..end).contains(p)) {
                let c = counts.entry(*p).or_default();
                c.0 += 1;
                let previous = domain::period_start(p - 1, g);
                c.1 += i64::from(periods.iter().any(|q| q.0 == previous));
                c.2 += i64::from(first == Some(*p));
            }
        }
    }
    Ok(counts.into_iter().map(|(p, (a, r, f))| (p, a, r, f)).collect())
}

/// Distinct contacts who purchased in the slice (days with revenue).
pub async fn purchasers(db: &impl ConnectionTrait, tenant: &str, slice: &Slice) -> Result<i64> {
    let mut total = 0;
    for ids in slice.chunks() {
        let mut sql = "SELECT COUNT(DISTINCT p.contact_id) AS n FROM contact_periods p \
             LEFT JOIN contact_facts f ON f.tenant_id = p.tenant_id AND f.contact_id = p.contact_id \
             WHERE p.tenant_id = ? AND p.gran = 'day' AND p.period >= ? AND p.period < ? AND p.revenue > 0"
            .to_owned();
        let mut vals = vec![v(tenant), v(domain::day(slice.start)), v(slice.end)];
        if let Some(c) = &slice.channel {
            sql.push_str(" AND f.acquisition_channel = ?");
            vals.push(v(c.as_str()));
        }
        if let Some(c) = &slice.campaign {
            sql.push_str(" AND f.campaign = ?");
            vals.push(v(c.as_str()));
        }
        push_in(&mut sql, &mut vals, "p.contact_id", ids);
        total += one(db, &sql, vals).await?.map(|r| r.try_get::<i64>("", "n")).transpose()?.unwrap_or(0);
    }
    Ok(total)
}

/// Leads in the range, and those of good quality (lead score ≥ `threshold`, or converted).
pub async fn lead_quality(
    db: &impl ConnectionTrait,
    tenant: &str,
    slice: &Slice,
    threshold: i32,
) -> Result<(i64, i64)> {
    let (mut leads, mut good) = (0, 0);
    for ids in slice.chunks() {
        let mut sql = "SELECT COUNT(*) AS leads, CAST(SUM(CASE WHEN f.lead_score >= ? OR n.customer_time IS NOT NULL THEN 1 ELSE 0 END) AS BIGINT) AS good \
             FROM contact_now n LEFT JOIN contact_facts f ON f.tenant_id = n.tenant_id AND f.contact_id = n.contact_id \
             WHERE n.tenant_id = ? AND n.model_id = ? AND n.lead_time >= ? AND n.lead_time < ?"
            .to_owned();
        let mut vals = vec![v(threshold), v(tenant), v(slice.model.as_str()), v(slice.start), v(slice.end)];
        if let Some(c) = &slice.channel {
            sql.push_str(" AND f.acquisition_channel = ?");
            vals.push(v(c.as_str()));
        }
        if let Some(c) = &slice.campaign {
            sql.push_str(" AND f.campaign = ?");
            vals.push(v(c.as_str()));
        }
        push_in(&mut sql, &mut vals, "n.contact_id", ids);
        if let Some(r) = one(db, &sql, vals).await? {
            leads += r.try_get::<i64>("", "leads")?;
            good += r.try_get::<Option<i64>>("", "good")?.unwrap_or(0);
        }
    }
    Ok((leads, good))
}

/// The contact's current stage in `model`, if known.
pub async fn current_stage(
    db: &impl ConnectionTrait,
    tenant: &str,
    model: &str,
    contact: &str,
) -> Result<Option<String>> {
    Ok(one(
        db,
        "SELECT stage_key FROM contact_now WHERE tenant_id = ? AND model_id = ? AND contact_id = ?",
        vec![v(tenant), v(model), v(contact)],
    )
    .await?
    .map(|r| r.try_get("", "stage_key"))
    .transpose()?)
}

/// A contact's acquisition cost (µ-units, currency).
pub async fn acquisition_cost(db: &impl ConnectionTrait, tenant: &str, contact: &str) -> Result<Option<(i64, String)>> {
    let r = one(
        db,
        "SELECT cost_micros, cost_currency FROM contact_facts WHERE tenant_id = ? AND contact_id = ?",
        vec![v(tenant), v(contact)],
    )
    .await?;
    Ok(match r {
        Some(r) => r.try_get::<Option<i64>>("", "cost_micros")?.zip(r.try_get::<Option<String>>("", "cost_currency")?),
        None => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn funnel_delays_and_windows_agree() {
        assert_eq!(delay_bucket(0), 0);
        assert_eq!(delay_bucket(31), 31);
        assert_eq!(delay_bucket(33), 35);
        assert_eq!(delay_bucket(90), 90);
        assert_eq!(delay_bucket(91), 105);
        assert_eq!(delay_bucket(5000), 3660);
        assert_eq!(window_bucket(90), 90);
        assert_eq!(window_bucket(100), 90, "between boundaries: rounded down");
        assert_eq!(window_bucket(34), 31);
        // A reach is inside a window exactly when its bucket is at most the window's bucket,
        // for windows on the boundaries.
        for w in (0..=31).chain(DELAY_STEPS) {
            for d in 0..400 {
                assert_eq!(delay_bucket(d) <= window_bucket(w), d <= w, "delay {d}, window {w}");
            }
        }
    }

    /// Every range of days, long or short, on or off block boundaries, before or after the
    /// epoch, is tiled exactly once by its cover, each part of whole aligned blocks, and the
    /// cover stays small.
    #[test]
    fn a_cover_tiles_its_range() {
        let d = domain::DAY;
        let mut x: u64 = 1;
        let mut next = |n: i64| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) as i64 % n
        };
        let mut cases = vec![(0, 1), (0, 256), (255, 257), (-300, 300), (20_454, 20_819), (0, 20 * 366)];
        for _ in 0..5_000 {
            let lo = 19_000 + next(3_000) - 1_500 * next(2);
            let max = if next(2) == 0 { 40 } else { 8_000 };
            cases.push((lo, lo + 1 + next(max)));
        }
        for (lo, hi) in cases {
            let parts = cover(lo * d, hi * d);
            let mut days: Vec<i64> = Vec::new();
            for (span, from, to) in &parts {
                assert!(ROLL_SPANS.contains(span));
                assert!(from < to && block(*from, *span) == *from && block(*to, *span) == *to, "{parts:?}");
                days.extend((from / d..to / d).collect::<Vec<_>>());
            }
            days.sort_unstable();
            assert_eq!(days, (lo..hi).collect::<Vec<_>>(), "[{lo}, {hi}): {parts:?}");
            // Whole blocks of 16 inside a range are never read day by day, nor of 256 by 16s.
            let rows: i64 = parts.iter().map(|(s, f, t)| (t - f) / (s * d)).sum();
            assert!(rows <= 2 * 15 + 2 * 15 + (hi - lo) / 256 + 1, "[{lo}, {hi}): {rows} rows {parts:?}");
            assert!(parts.len() <= 5, "{parts:?}");
        }
        assert!(cover(5 * d, 5 * d).is_empty());
        // A year from 2026-01-01: 13 single days, 6 blocks of 16 and one of 256.
        assert_eq!(cover(20_454 * d, 20_819 * d).iter().map(|(s, f, t)| (t - f) / (s * d)).sum::<i64>(), 20);
    }
}
