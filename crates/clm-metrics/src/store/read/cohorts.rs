//! Cohorts by first-purchase period, and active periods (new, returning).

use std::collections::{BTreeMap, HashMap};

use clm_platform::{Result, TenantId};
use sea_orm::ConnectionTrait;

use super::Slice;
use crate::domain::{self, Gran};
use crate::store::sql::{Sql, rows, v};

/// A cohort matrix: sizes (cohort, n); active members (cohort, idx, n); revenue (cohort, idx,
/// currency, µ-units); members by their last active period (cohort, last idx, n).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cohorts {
    pub sizes: Vec<(i64, i64)>,
    pub cells: Vec<(i64, i64, i64)>,
    pub revenue: Vec<(i64, i64, String, i64)>,
    pub last: Vec<(i64, i64, i64)>,
}

/// Cohorts starting in [start, end) of the slice's contacts (all, or a segment's).
pub async fn cohorts(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    slice: &Slice,
    g: Gran,
    start: i64,
    end: i64,
) -> Result<Cohorts> {
    if slice.contacts.is_some() {
        return cohorts_of_members(db, tenant, slice, g, start, end).await;
    }
    let q = |cols: &str, table: &str, nonzero: &str| {
        Sql::select(tenant, cols, table)
            .and("gran = ? AND cohort >= ? AND cohort < ?", [v(g.key()), v(start), v(end)])
            .and(nonzero, [])
    };
    let sizes = rows(db, q("cohort, n", "cohort_sizes", "n > 0").then(" ORDER BY cohort", []))
        .await?
        .into_iter()
        .map(|r| Ok((r.try_get("", "cohort")?, r.try_get("", "n")?)))
        .collect::<Result<Vec<_>>>()?;
    let cells = rows(db, q("cohort, idx, n", "cohort_cells", "n <> 0"))
        .await?
        .into_iter()
        .map(|r| Ok((r.try_get("", "cohort")?, r.try_get("", "idx")?, r.try_get("", "n")?)))
        .collect::<Result<Vec<_>>>()?;
    let revenue = rows(db, q("cohort, idx, currency, revenue", "cohort_revenue", "revenue <> 0"))
        .await?
        .into_iter()
        .map(|r| {
            Ok((r.try_get("", "cohort")?, r.try_get("", "idx")?, r.try_get("", "currency")?, r.try_get("", "revenue")?))
        })
        .collect::<Result<Vec<_>>>()?;
    let last = rows(db, q("cohort, last_idx, n", "cohort_last", "n <> 0"))
        .await?
        .into_iter()
        .map(|r| Ok((r.try_get("", "cohort")?, r.try_get("", "last_idx")?, r.try_get("", "n")?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Cohorts { sizes, cells, revenue, last })
}

/// A contact's active periods: period → [(currency, orders, revenue)].
type Periods = BTreeMap<i64, Vec<(String, i64, i64)>>;

/// The members' active periods at `g`, per contact.
async fn member_periods(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    g: Gran,
    ids: Option<&[String]>,
) -> Result<HashMap<String, Periods>> {
    let q = Sql::select(tenant, "contact_id, period, currency, orders, revenue", "contact_periods")
        .and("gran = ?", [v(g.key())])
        .and_in("contact_id", ids);
    let mut out: HashMap<String, Periods> = HashMap::new();
    for r in rows(db, q).await? {
        out.entry(r.try_get("", "contact_id")?).or_default().entry(r.try_get("", "period")?).or_default().push((
            r.try_get("", "currency")?,
            r.try_get("", "orders")?,
            r.try_get("", "revenue")?,
        ));
    }
    Ok(out)
}

/// Cohorts from the members' first purchase and active periods, as the contributions count.
async fn cohorts_of_members(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    slice: &Slice,
    g: Gran,
    start: i64,
    end: i64,
) -> Result<Cohorts> {
    let mut sizes: BTreeMap<i64, i64> = BTreeMap::new();
    let mut cells: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    let mut revenue: BTreeMap<(i64, i64, String), i64> = BTreeMap::new();
    let mut last: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for ids in slice.chunks() {
        let q = Sql::select(tenant, "contact_id, first_purchase", "customer_facts")
            .and("first_purchase IS NOT NULL", [])
            .and_in("contact_id", ids);
        let firsts = rows(db, q).await?;
        let periods = member_periods(db, tenant, g, ids).await?;
        for r in firsts {
            let contact: String = r.try_get("", "contact_id")?;
            let cohort = domain::period_start(r.try_get("", "first_purchase")?, g);
            if cohort < start || cohort >= end {
                continue;
            }
            *sizes.entry(cohort).or_default() += 1;
            let mut max_idx = None;
            for (p, money) in periods.get(&contact).into_iter().flatten() {
                let idx = domain::period_index(cohort, *p, g);
                if idx >= 0 {
                    *cells.entry((cohort, idx)).or_default() += 1;
                    for (currency, _, rev) in money.iter().filter(|m| !m.0.is_empty()) {
                        let e = revenue.entry((cohort, idx, currency.clone())).or_default();
                        *e = e.saturating_add(*rev);
                    }
                    max_idx = max_idx.max(Some(idx));
                }
            }
            if let Some(l) = max_idx {
                *last.entry((cohort, l)).or_default() += 1;
            }
        }
    }
    Ok(Cohorts {
        sizes: sizes.into_iter().collect(),
        cells: cells.into_iter().map(|((c, i), n)| (c, i, n)).collect(),
        revenue: revenue.into_iter().map(|((c, i, cur), r)| (c, i, cur, r)).collect(),
        last: last.into_iter().map(|((c, l), n)| (c, l, n)).collect(),
    })
}

/// Per period of `g` in [start, end): (period, active, returning, first-time) contacts of the
/// slice (all, or a segment's).
pub async fn period_counts(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    slice: &Slice,
    g: Gran,
    start: i64,
    end: i64,
) -> Result<Vec<(i64, i64, i64, i64)>> {
    if slice.contacts.is_none() {
        let q = Sql::select(tenant, "period, active, returners, firsts", "period_counts")
            .and("gran = ? AND period >= ? AND period < ?", [v(g.key()), v(start), v(end)])
            .then(" ORDER BY period", []);
        return rows(db, q)
            .await?
            .into_iter()
            .map(|r| {
                Ok((
                    r.try_get("", "period")?,
                    r.try_get("", "active")?,
                    r.try_get("", "returners")?,
                    r.try_get("", "firsts")?,
                ))
            })
            .collect();
    }
    let mut counts: BTreeMap<i64, (i64, i64, i64)> = BTreeMap::new();
    for ids in slice.chunks() {
        for periods in member_periods(db, tenant, g, ids).await?.values() {
            let first = periods.keys().next().copied();
            for p in periods.keys().filter(|p| (start..end).contains(*p)) {
                let c = counts.entry(*p).or_default();
                c.0 += 1;
                c.1 += i64::from(periods.contains_key(&domain::period_start(p - 1, g)));
                c.2 += i64::from(first == Some(*p));
            }
        }
    }
    Ok(counts.into_iter().map(|(p, (a, r, f))| (p, a, r, f)).collect())
}
