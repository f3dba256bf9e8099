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

pub mod campaigns;
pub mod cohorts;
pub mod funnel;

use clm_platform::{Result, TenantId};
use sea_orm::ConnectionTrait;

use super::sql::{Sql, one, rows, v};
use crate::domain::channel::Channel;
use crate::domain::contribution::{Customer, SPELL_BASES};
use crate::domain::kpi::Counter;
use crate::domain::{self};

/// Most contact ids one statement binds.
const ID_CHUNK: usize = 5_000;

/// Which slice of the aggregates a query reads.
#[derive(Debug, Clone, Default)]
pub struct Slice {
    pub model: String,
    pub start: i64,
    pub end: i64,
    pub channel: Option<Channel>,
    pub campaign: Option<String>,
    /// Only these contacts (a segment's members); `None`: every contact.
    pub contacts: Option<std::sync::Arc<Vec<String>>>,
}

impl Slice {
    /// ` AND channel = ? AND campaign = ?` for the filters set.
    fn filters(&self, mut q: Sql) -> Sql {
        if let Some(c) = &self.channel {
            q = q.and("channel = ?", [v(c.as_str())]);
        }
        if let Some(c) = &self.campaign {
            q = q.and("campaign = ?", [v(c.as_str())]);
        }
        q
    }

    /// Channel and campaign as conditions on the contact's facts (`f`).
    fn fact_filters(&self, mut q: Sql) -> Sql {
        if let Some(c) = &self.channel {
            q = q.and("COALESCE(f.acquisition_channel, 'unknown') = ?", [v(c.as_str())]);
        }
        if let Some(c) = &self.campaign {
            q = q.and("COALESCE(f.campaign, '') = ?", [v(c.as_str())]);
        }
        q
    }

    /// Of the contacts whose facts match the channel and campaign set (`None`: neither is).
    fn fact_matches(&self, tenant: &TenantId) -> Option<Sql> {
        (self.channel.is_some() || self.campaign.is_some())
            .then(|| self.fact_filters(Sql::select(tenant, "f.contact_id", "contact_facts f")))
    }

    /// The statements to run: one over everything (`None`), or one per chunk of the segment.
    fn chunks(&self) -> Vec<Option<&[String]>> {
        match &self.contacts {
            None => vec![None],
            Some(ids) => ids.chunks(ID_CHUNK).map(Some).collect(),
        }
    }
}

/// One aggregated KPI counter: (counter, currency, group) → (count, sum).
#[derive(Debug, Clone, PartialEq)]
pub struct KpiRow {
    pub name: Counter,
    pub currency: String,
    /// The GROUP BY value: a day, a channel, a channel/campaign pair, or empty.
    pub group: String,
    pub day: i64,
    pub n: i64,
    /// The sum, exactly: money sums pass i64 (µ-units) at 9.2 × 10^12 units.
    pub s: i128,
}

/// How [`kpis`] groups its rows (`KpiRow::group`, `KpiRow::day`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// One row per counter and currency.
    All,
    /// Per day (`KpiRow::day`).
    Day,
    /// Per channel (`KpiRow::group`).
    Channel,
    /// Per channel and campaign (`KpiRow::group` = "channel/campaign").
    ChannelCampaign,
}

/// KPI counters in the slice, grouped by `group`.
pub async fn kpis(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    slice: &Slice,
    names: &[Counter],
    group: Group,
) -> Result<Vec<KpiRow>> {
    let in_names = format!("name IN ({})", vec!["?"; names.len()].join(", "));
    let (select_group, group_by) = match group {
        Group::Day => ("'' AS grp, day", ", day"),
        Group::Channel => ("channel AS grp, CAST(0 AS BIGINT) AS day", ", channel"),
        Group::ChannelCampaign => {
            ("channel || '/' || campaign AS grp, CAST(0 AS BIGINT) AS day", ", channel, campaign")
        }
        Group::All => ("'' AS grp, CAST(0 AS BIGINT) AS day", ""),
    };
    let table = if slice.contacts.is_some() { "contact_kpis" } else { "kpi_daily" };
    let mut sum: std::collections::BTreeMap<(Counter, String, String, i64), (i64, i128)> =
        std::collections::BTreeMap::new();
    for ids in slice.chunks() {
        // SUM(s) of many days' money overflows BIGINT (SQLite: "integer overflow"; PostgreSQL:
        // NUMERIC, then the cast fails): sum the whole millions and the rest apart, each far
        // from the limit, and put them together in i128.
        let cols = format!(
            "name, currency, {select_group}, CAST(SUM(n) AS BIGINT) AS n, \
             CAST(SUM(s / 1000000) AS BIGINT) AS s_hi, CAST(SUM(s % 1000000) AS BIGINT) AS s_lo"
        );
        let range = [v(slice.model.as_str()), v(slice.start), v(slice.end)];
        let q = Sql::select(tenant, &cols, table)
            .and(&in_names, names.iter().map(|n| v(n.key())))
            .and("model_id IN ('', ?) AND day >= ? AND day < ?", range);
        let q = slice.filters(q).and_in("contact_id", ids).then(&format!(" GROUP BY name, currency{group_by}"), []);
        for r in rows(db, q).await? {
            let e = sum
                .entry((
                    r.try_get::<String>("", "name")?.parse().map_err(clm_platform::Error::internal)?,
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
        let mut q = Sql::select(tenant, "CAST(SUM(n) AS BIGINT) AS n", table).and(
            "model_id = ? AND basis = ? AND start_day < ? AND end_day >= ?",
            [v(slice.model.as_str()), v(basis), v(domain::days_before(at)), v(lo)],
        );
        if let Some(hi) = hi {
            q = q.and("end_day < ?", [v(hi)]);
        }
        if referred {
            q = q.and("referred_day < ?", [v(domain::days_before(at))]);
        }
        if ids.is_some() {
            // Per-contact spells carry no channel: filter on the contact's facts.
            if let Some(matching) = slice.fact_matches(tenant) {
                q = q.and_in_select("contact_id", matching);
            }
            q = q.and_in("contact_id", ids);
        } else {
            q = slice.filters(q);
        }
        total += one(db, q).await?.map(|r| r.try_get::<Option<i64>>("", "n")).transpose()?.flatten().unwrap_or(0);
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
    let r = one(db, Sql::select(tenant, "spell_basis", "model_settings").and("model_id = ?", [v(model)])).await?;
    let basis = r.map(|r| r.try_get::<String>("", "spell_basis")).transpose()?;
    Ok(SPELL_BASES.into_iter().find(|b| Some(*b) == basis.as_deref()).unwrap_or(SPELL_BASES[0]))
}

/// A model's stages as seen in events: (key, position, category, role), in order.
pub async fn model_stages(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    model: &str,
) -> Result<Vec<(String, i64, String, String)>> {
    let q = Sql::select(tenant, "stage_key, position, category, role", "model_stages")
        .and("model_id = ?", [v(model)])
        .then(" ORDER BY position", []);
    rows(db, q)
        .await?
        .into_iter()
        .map(|r| {
            Ok((
                r.try_get("", "stage_key")?,
                r.try_get("", "position")?,
                r.try_get("", "category")?,
                r.try_get("", "role")?,
            ))
        })
        .collect()
}

/// Distinct contacts who purchased in the slice (days with an order, any currency).
pub async fn purchasers(db: &impl ConnectionTrait, tenant: &TenantId, slice: &Slice) -> Result<i64> {
    let mut total = 0;
    for ids in slice.chunks() {
        let q = Sql::select(tenant, "COUNT(DISTINCT p.contact_id) AS n", "contact_periods p")
            .left_join("contact_facts f", "f.contact_id = p.contact_id")
            .and(
                "p.gran = 'day' AND p.period >= ? AND p.period < ? AND p.orders > 0",
                [v(domain::day(slice.start)), v(slice.end)],
            );
        let q = slice.fact_filters(q).and_in("p.contact_id", ids);
        total += one(db, q).await?.map(|r| r.try_get::<i64>("", "n")).transpose()?.unwrap_or(0);
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
        // The threshold is an integer of 0 to 100 (api/), written into the select list.
        let cols = format!(
            "COUNT(*) AS leads, CAST(SUM(CASE WHEN f.lead_score >= {threshold} OR n.customer_time IS NOT NULL \
             THEN 1 ELSE 0 END) AS BIGINT) AS good"
        );
        let q = Sql::select(tenant, &cols, "contact_now n")
            .left_join("contact_facts f", "f.contact_id = n.contact_id")
            .and(
                "n.model_id = ? AND n.lead_time >= ? AND n.lead_time < ?",
                [v(slice.model.as_str()), v(slice.start), v(slice.end)],
            );
        let q = slice.fact_filters(q).and_in("n.contact_id", ids);
        if let Some(r) = one(db, q).await? {
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
    let q =
        Sql::select(tenant, "stage_key", "contact_now").and("model_id = ? AND contact_id = ?", [v(model), v(contact)]);
    Ok(one(db, q).await?.map(|r| r.try_get("", "stage_key")).transpose()?)
}

/// Whether metrics has heard of the contact (its create event or any fact about it).
pub async fn contact_known(db: &impl ConnectionTrait, tenant: &TenantId, contact: &str) -> Result<bool> {
    let q = Sql::select(tenant, "1 AS x", "contact_facts")
        .and("contact_id = ?", [v(contact)])
        .union_all(Sql::select(tenant, "1 AS x", "customer_facts").and("contact_id = ?", [v(contact)]));
    Ok(one(db, q).await?.is_some())
}

/// A contact's acquisition cost (µ-units, currency).
pub async fn acquisition_cost(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    contact: &str,
) -> Result<Option<(i64, String)>> {
    let q = Sql::select(tenant, "cost_micros, cost_currency", "contact_facts").and("contact_id = ?", [v(contact)]);
    let r = one(db, q).await?;
    Ok(match r {
        Some(r) => r.try_get::<Option<i64>>("", "cost_micros")?.zip(r.try_get::<Option<String>>("", "cost_currency")?),
        None => None,
    })
}

/// A contact's purchase and advocacy facts.
pub async fn customer(db: &impl ConnectionTrait, tenant: &TenantId, contact: &str) -> Result<Option<Customer>> {
    let r = one(db, Sql::select(tenant, "*", "customer_facts").and("contact_id = ?", [v(contact)])).await?;
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
