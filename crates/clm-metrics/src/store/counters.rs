//! The read model's additive counters (the `n`, `s`, … columns of the aggregate tables).
//!
//! [`add`] adds deltas to one row of a tenant (an upsert). Inside [`deferred`] — a consumer's batch — the
//! deltas are summed in memory per row instead and written when the batch ends, as one
//! multi-row upsert per table in the batch's transaction: a batch of 100 events touching the
//! same day's KPIs writes each counter row once, not once per event. Nothing the handlers
//! read is a counter, so deferring them changes no decision taken within the batch.

use std::cell::RefCell;
use std::collections::BTreeMap;

use clm_platform::{Result, TenantId};
use sea_orm::{ConnectionTrait, Value};

use super::sql::{Sql, exec};

/// An aggregate table: its key columns (`tenant_id` first) and the columns deltas are added to.
#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    pub keys: &'static [&'static str],
    pub sums: &'static [&'static str],
}

pub const KPI_DAILY: Table = Table {
    name: "kpi_daily",
    keys: &["tenant_id", "name", "model_id", "day", "channel", "campaign", "currency"],
    sums: &["n", "s"],
};
pub const CONTACT_KPIS: Table = Table {
    name: "contact_kpis",
    keys: &["tenant_id", "contact_id", "name", "model_id", "day", "channel", "campaign", "currency"],
    sums: &["n", "s"],
};
pub const FUNNEL_CELLS: Table = Table {
    name: "funnel_cells",
    keys: &["tenant_id", "model_id", "cohort_day", "channel", "campaign", "stage_key", "delay_days"],
    sums: &["n"],
};
/// The funnel of all channels and campaigns by block of `span_days` (`contribution::ROLL_SPANS`).
pub const FUNNEL_ROLL: Table = Table {
    name: "funnel_roll",
    keys: &["tenant_id", "model_id", "span_days", "cohort_day", "stage_key", "delay_days"],
    sums: &["n"],
};
/// `time_hist` by block of `span_days` (the spans above a day: `time_hist` is the day).
pub const TIME_HIST_ROLL: Table = Table {
    name: "time_hist_roll",
    keys: &["tenant_id", "model_id", "name", "span_days", "day", "bucket"],
    sums: &["n"],
};
pub const TIME_HIST: Table = Table {
    name: "time_hist",
    keys: &["tenant_id", "model_id", "name", "day", "channel", "campaign", "bucket"],
    sums: &["n"],
};
pub const COHORT_CELLS: Table =
    Table { name: "cohort_cells", keys: &["tenant_id", "gran", "cohort", "idx"], sums: &["n"] };
/// Revenue of a cohort's members per period index, per currency.
pub const COHORT_REVENUE: Table =
    Table { name: "cohort_revenue", keys: &["tenant_id", "gran", "cohort", "idx", "currency"], sums: &["revenue"] };
/// Spells of being a customer, by the days they started and ended (`contribution::OPEN`
/// while open) and the day of the contact's first referral, per basis
/// (`contribution::SPELL_BASES`): churn, customers at a moment, and those who had referred.
pub const CUSTOMER_SPELLS: Table = Table {
    name: "customer_spells",
    keys: &["tenant_id", "model_id", "basis", "channel", "campaign", "start_day", "end_day", "referred_day"],
    sums: &["n"],
};
/// The same spells per contact (segment queries).
pub const CONTACT_SPELLS: Table = Table {
    name: "contact_spells",
    keys: &["tenant_id", "contact_id", "model_id", "basis", "start_day", "end_day", "referred_day"],
    sums: &["n"],
};
pub const COHORT_SIZES: Table = Table { name: "cohort_sizes", keys: &["tenant_id", "gran", "cohort"], sums: &["n"] };
pub const COHORT_LAST: Table =
    Table { name: "cohort_last", keys: &["tenant_id", "gran", "cohort", "last_idx"], sums: &["n"] };
pub const PERIOD_COUNTS: Table =
    Table { name: "period_counts", keys: &["tenant_id", "gran", "period"], sums: &["active", "returners", "firsts"] };

pub use crate::domain::contribution::Key;

fn value(k: &Key) -> Value {
    match k {
        Key::S(s) => s.as_str().into(),
        Key::I(i) => (*i).into(),
    }
}

/// Rows waiting for the end of the batch: (table, tenant, key) → deltas.
type Pending = BTreeMap<(&'static str, TenantId, Vec<Key>), Vec<i64>>;

tokio::task_local! {
    static PENDING: RefCell<Pending>;
}

/// Most bound parameters one statement carries (SQLite allows 32,766, PostgreSQL 65,535).
const MAX_PARAMS: usize = 30_000;

/// Add `deltas` (one per `t.sums` column) to the row of `tenant` at `key` (one value per
/// `t.keys` column after `tenant_id`).
pub async fn add(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    t: &'static Table,
    key: Vec<Key>,
    deltas: &[i64],
) -> Result<()> {
    debug_assert_eq!(key.len() + 1, t.keys.len(), "{}: key", t.name);
    debug_assert_eq!(deltas.len(), t.sums.len(), "{}: deltas", t.name);
    if PENDING.try_with(|_| ()).is_ok() {
        PENDING.with(|p| {
            let mut p = p.borrow_mut();
            let sums = p.entry((t.name, tenant.clone(), key)).or_insert_with(|| vec![0; deltas.len()]);
            for (sum, d) in sums.iter_mut().zip(deltas) {
                *sum = sum.saturating_add(*d);
            }
        });
        return Ok(());
    }
    upsert(db, tenant, t, &[(key, deltas.to_vec())]).await
}

/// Run `work` with the counters it adds held back, then write them (one multi-row upsert per
/// table, tenant and chunk), all on `db` — the batch's transaction.
pub async fn deferred<T>(db: &impl ConnectionTrait, work: impl Future<Output = Result<T>>) -> Result<T> {
    PENDING
        .scope(RefCell::new(Pending::new()), async {
            let out = work.await?;
            let pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
            let mut rows: Vec<(Vec<Key>, Vec<i64>)> = Vec::new();
            let mut at: Option<(&'static Table, TenantId)> = None;
            for ((name, tenant, key), sums) in pending {
                if let Some((t, was)) = &at
                    && (t.name != name || *was != tenant)
                {
                    upsert(db, was, t, &std::mem::take(&mut rows)).await?;
                }
                at = Some((by_name(name), tenant));
                rows.push((key, sums));
            }
            if let Some((t, tenant)) = at {
                upsert(db, &tenant, t, &rows).await?;
            }
            Ok(out)
        })
        .await
}

/// The table named `name` (one of the aggregates above).
pub fn by_name(name: &str) -> &'static Table {
    by_name_checked(name).expect("every pending row's table is one of these")
}

/// The aggregate table named `name`, if it is one.
pub fn by_name_checked(name: &str) -> Option<&'static Table> {
    [
        &KPI_DAILY,
        &CONTACT_KPIS,
        &FUNNEL_CELLS,
        &FUNNEL_ROLL,
        &TIME_HIST,
        &TIME_HIST_ROLL,
        &COHORT_CELLS,
        &COHORT_REVENUE,
        &COHORT_SIZES,
        &COHORT_LAST,
        &PERIOD_COUNTS,
        &CUSTOMER_SPELLS,
        &CONTACT_SPELLS,
    ]
    .into_iter()
    .find(|t| t.name == name)
}

/// `{table}.{col} + excluded.{col}` in SQL, saturating at the ends of BIGINT: a sum never
/// wraps, never fails the batch (PostgreSQL's "bigint out of range" would stop the consumer
/// on that event for good) and never turns into a float (SQLite's way out of an overflow).
/// A money counter holds up to 9.2 × 10^12 units of one currency (docs/metrics.md § Money).
pub fn saturating_sum(table: &str, col: &str) -> String {
    const MAX: &str = "9223372036854775807";
    const MIN: &str = "(-9223372036854775807 - 1)";
    format!(
        "CASE WHEN excluded.{col} > 0 THEN \
           CASE WHEN {table}.{col} > {MAX} - excluded.{col} THEN {MAX} ELSE {table}.{col} + excluded.{col} END \
         WHEN excluded.{col} < 0 THEN \
           CASE WHEN {table}.{col} < {MIN} - excluded.{col} THEN {MIN} ELSE {table}.{col} + excluded.{col} END \
         ELSE {table}.{col} END"
    )
}

/// `INSERT … VALUES (…), (…) ON CONFLICT (keys) DO UPDATE SET sum = table.sum + excluded.sum`
/// (saturating: [`saturating_sum`]) for rows of `tenant`, in chunks under the parameter limit
/// (each key appears once: rows are summed per key).
async fn upsert(db: &impl ConnectionTrait, tenant: &TenantId, t: &Table, rows: &[(Vec<Key>, Vec<i64>)]) -> Result<()> {
    debug_assert_eq!(t.keys.first(), Some(&"tenant_id"), "{}: tenant first", t.name);
    let width = t.keys.len() + t.sums.len();
    let cols: Vec<&str> = t.keys.iter().skip(1).chain(t.sums).copied().collect();
    let set = t.sums.iter().map(|c| format!("{c} = {}", saturating_sum(t.name, c))).collect::<Vec<_>>().join(", ");
    let conflict = format!(" ON CONFLICT ({}) DO UPDATE SET {set}", t.keys.join(", "));
    for chunk in rows.chunks((MAX_PARAMS / width).max(1)) {
        let values =
            chunk.iter().map(|(key, sums)| key.iter().map(value).chain(sums.iter().map(|s| Value::from(*s))).collect());
        exec(db, Sql::insert(tenant, t.name, &cols, values).then(&conflict, [])).await?;
    }
    Ok(())
}
