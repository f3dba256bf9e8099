//! The read side of the read model: the queries the API asks. Every KPI query reads
//! pre-aggregated rows (`kpi_daily`, `funnel_*`, `time_hist*`, `cohort_*`, `period_counts`,
//! `customer_spells`), so its cost grows with the days and dimensions in range, not with
//! contacts or transitions.
//!
//! Without a segment, queries read the aggregates. With one (`Slice::contacts`, the members
//! contacts answered for the segment filter), they read the per-contact rows of the members
//! (`contact_kpis`, `stage_reach`, `contact_now`, `customer_facts`, `contact_periods`,
//! `contact_spells`), a chunk of ids per statement, and add the chunks up: the same numbers
//! the aggregates give for those contacts.

pub mod cohorts;
pub mod funnel;

use std::fmt::Write as _;

use clm_platform::{Result, TenantId};
use sea_orm::{ConnectionTrait, Value};

use super::sql::{one, rows, v};
use crate::domain::contribution::{Customer, SPELL_BASES};
use crate::domain::{self};

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
    /// ` AND channel = ? AND campaign = ?` for the filters set, on columns prefixed `p`.
    fn filters(&self, p: &str, sql: &mut String, vals: &mut Vec<Value>) {
        if let Some(c) = &self.channel {
            let _ = write!(sql, " AND {p}channel = ?");
            vals.push(v(c.as_str()));
        }
        if let Some(c) = &self.campaign {
            let _ = write!(sql, " AND {p}campaign = ?");
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
    tenant: &TenantId,
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
        let mut vals = vec![v(tenant.as_str())];
        vals.extend(names.iter().map(|n| v(*n)));
        vals.extend([v(slice.model.as_str()), v(slice.start), v(slice.end)]);
        slice.filters("", &mut sql, &mut vals);
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
        .filter(|(_, (n, s))| *n != 0 || *s != 0)
        .map(|((name, currency, group, day), (n, s))| KpiRow { name, currency, group, day, n, s })
        .collect())
}

/// Customer spells of the slice's model, channel, campaign and contacts under `basis`
/// (`contribution::SPELL_BASES`) that began on a day that began before `at` (`days_before`)
/// and end (`end_day`, days) at or after `lo` and, given `hi`, before it; with `referred`, of
/// contacts whose first referral was on such a day.
#[allow(clippy::too_many_arguments)]
async fn spells(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    slice: &Slice,
    basis: &str,
    at: i64,
    lo: i64,
    hi: Option<i64>,
    referred: bool,
) -> Result<i64> {
    let mut total = 0;
    for ids in slice.chunks() {
        let table = if ids.is_some() { "contact_spells" } else { "customer_spells" };
        let mut sql = format!(
            "SELECT CAST(SUM(n) AS BIGINT) AS n FROM {table} WHERE tenant_id = ? AND model_id = ? AND basis = ? \
             AND start_day < ? AND end_day >= ?"
        );
        let mut vals = vec![v(tenant.as_str()), v(slice.model.as_str()), v(basis), v(domain::days_before(at)), v(lo)];
        if let Some(hi) = hi {
            sql.push_str(" AND end_day < ?");
            vals.push(v(hi));
        }
        if referred {
            sql.push_str(" AND referred_day < ?");
            vals.push(v(domain::days_before(at)));
        }
        if ids.is_some() {
            // Per-contact spells carry no channel: filter on the contact's facts.
            if slice.channel.is_some() || slice.campaign.is_some() {
                sql.push_str(" AND contact_id IN (SELECT f.contact_id FROM contact_facts f WHERE f.tenant_id = ?");
                vals.push(v(tenant.as_str()));
                slice.fact_filters(&mut sql, &mut vals);
                sql.push(')');
            }
            push_in(&mut sql, &mut vals, "contact_id", ids);
        } else {
            slice.filters("", &mut sql, &mut vals);
        }
        total +=
            one(db, &sql, vals).await?.map(|r| r.try_get::<Option<i64>>("", "n")).transpose()?.flatten().unwrap_or(0);
    }
    Ok(total)
}

/// Customers at `at` under `basis`: in a customer spell that began on a day that began before
/// `at` and had not ended on such a day (day granularity; a range ending now sees today).
pub async fn customers_at(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    slice: &Slice,
    basis: &str,
    at: i64,
) -> Result<i64> {
    spells(db, tenant, slice, basis, at, domain::days_before(at), None, false).await
}

/// Of the customers at `at`, those who had referred a contact (on a day that began before `at`).
pub async fn referring_customers_at(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    slice: &Slice,
    basis: &str,
    at: i64,
) -> Result<i64> {
    spells(db, tenant, slice, basis, at, domain::days_before(at), None, true).await
}

/// Of the customers at `start`, those whose spell ended in `[start, end)`: the churned.
pub async fn customers_lost(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    slice: &Slice,
    basis: &str,
    start: i64,
    end: i64,
) -> Result<i64> {
    spells(db, tenant, slice, basis, start, domain::days_before(start), Some(end), false).await
}

/// The customer-spell basis a model's churn reads (`contribution::SPELL_BASES`): "churned"
/// when its lifecycle model leaves dormancy out of churn, else "lost".
pub async fn spell_basis(db: &impl ConnectionTrait, tenant: &TenantId, model: &str) -> Result<&'static str> {
    let r = one(
        db,
        "SELECT spell_basis FROM model_settings WHERE tenant_id = ? AND model_id = ?",
        vec![v(tenant.as_str()), v(model)],
    )
    .await?;
    let basis = r.map(|r| r.try_get::<String>("", "spell_basis")).transpose()?;
    Ok(SPELL_BASES.into_iter().find(|b| Some(*b) == basis.as_deref()).unwrap_or(SPELL_BASES[0]))
}

/// A model's stages as seen in events: (key, position, category, role), in order.
pub async fn model_stages(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    model: &str,
) -> Result<Vec<(String, i64, String, String)>> {
    rows(
        db,
        "SELECT stage_key, position, category, role FROM model_stages WHERE tenant_id = ? AND model_id = ? ORDER BY position",
        vec![v(tenant.as_str()), v(model)],
    )
    .await?
    .into_iter()
    .map(|r| Ok((r.try_get("", "stage_key")?, r.try_get("", "position")?, r.try_get("", "category")?, r.try_get("", "role")?)))
    .collect()
}

/// Distinct contacts who purchased in the slice (days with an order, any currency).
pub async fn purchasers(db: &impl ConnectionTrait, tenant: &TenantId, slice: &Slice) -> Result<i64> {
    let mut total = 0;
    for ids in slice.chunks() {
        let mut sql = "SELECT COUNT(DISTINCT p.contact_id) AS n FROM contact_periods p \
             LEFT JOIN contact_facts f ON f.tenant_id = p.tenant_id AND f.contact_id = p.contact_id \
             WHERE p.tenant_id = ? AND p.gran = 'day' AND p.period >= ? AND p.period < ? AND p.orders > 0"
            .to_owned();
        let mut vals = vec![v(tenant.as_str()), v(domain::day(slice.start)), v(slice.end)];
        slice.fact_filters(&mut sql, &mut vals);
        push_in(&mut sql, &mut vals, "p.contact_id", ids);
        total += one(db, &sql, vals).await?.map(|r| r.try_get::<i64>("", "n")).transpose()?.unwrap_or(0);
    }
    Ok(total)
}

/// Leads in the range, and those of good quality (lead score ≥ `threshold`, or converted).
pub async fn lead_quality(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    slice: &Slice,
    threshold: i32,
) -> Result<(i64, i64)> {
    let (mut leads, mut good) = (0, 0);
    for ids in slice.chunks() {
        let mut sql = "SELECT COUNT(*) AS leads, CAST(SUM(CASE WHEN f.lead_score >= ? OR n.customer_time IS NOT NULL THEN 1 ELSE 0 END) AS BIGINT) AS good \
             FROM contact_now n LEFT JOIN contact_facts f ON f.tenant_id = n.tenant_id AND f.contact_id = n.contact_id \
             WHERE n.tenant_id = ? AND n.model_id = ? AND n.lead_time >= ? AND n.lead_time < ?"
            .to_owned();
        let mut vals = vec![v(threshold), v(tenant.as_str()), v(slice.model.as_str()), v(slice.start), v(slice.end)];
        slice.fact_filters(&mut sql, &mut vals);
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
    tenant: &TenantId,
    model: &str,
    contact: &str,
) -> Result<Option<String>> {
    Ok(one(
        db,
        "SELECT stage_key FROM contact_now WHERE tenant_id = ? AND model_id = ? AND contact_id = ?",
        vec![v(tenant.as_str()), v(model), v(contact)],
    )
    .await?
    .map(|r| r.try_get("", "stage_key"))
    .transpose()?)
}

/// Whether metrics has heard of the contact (its create event or any fact about it).
pub async fn contact_known(db: &impl ConnectionTrait, tenant: &TenantId, contact: &str) -> Result<bool> {
    Ok(one(
        db,
        "SELECT 1 AS x FROM contact_facts WHERE tenant_id = ? AND contact_id = ? \
         UNION ALL SELECT 1 AS x FROM customer_facts WHERE tenant_id = ? AND contact_id = ?",
        vec![v(tenant.as_str()), v(contact), v(tenant.as_str()), v(contact)],
    )
    .await?
    .is_some())
}

/// A contact's acquisition cost (µ-units, currency).
pub async fn acquisition_cost(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    contact: &str,
) -> Result<Option<(i64, String)>> {
    let r = one(
        db,
        "SELECT cost_micros, cost_currency FROM contact_facts WHERE tenant_id = ? AND contact_id = ?",
        vec![v(tenant.as_str()), v(contact)],
    )
    .await?;
    Ok(match r {
        Some(r) => r.try_get::<Option<i64>>("", "cost_micros")?.zip(r.try_get::<Option<String>>("", "cost_currency")?),
        None => None,
    })
}

/// A contact's purchase and advocacy facts.
pub async fn customer(db: &impl ConnectionTrait, tenant: &TenantId, contact: &str) -> Result<Option<Customer>> {
    let r = one(
        db,
        "SELECT * FROM customer_facts WHERE tenant_id = ? AND contact_id = ?",
        vec![v(tenant.as_str()), v(contact)],
    )
    .await?;
    r.map(|r| {
        Ok(Customer {
            first_purchase: r.try_get("", "first_purchase")?,
            last_purchase: r.try_get("", "last_purchase")?,
            orders: r.try_get("", "orders")?,
            currency: r.try_get("", "currency")?,
            revenue: r.try_get("", "revenue")?,
            currency_orders: r.try_get("", "currency_orders")?,
            referrals: r.try_get("", "referrals")?,
            reviews: r.try_get("", "reviews")?,
            last_nps: r.try_get("", "last_nps")?,
        })
    })
    .transpose()
}
