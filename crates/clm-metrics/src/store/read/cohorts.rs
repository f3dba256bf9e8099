//! Cohorts by first-purchase period, and active periods (new, returning).

use std::collections::{BTreeMap, HashMap};

use clm_platform::{Result, TenantId};
use sea_orm::ConnectionTrait;

use super::{Slice, push_in};
use crate::domain::{self, Gran};
use crate::store::sql::{rows, v};

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
    let base = vec![v(tenant.as_str()), v(g.key()), v(start), v(end)];
    let sizes = rows(
        db,
        "SELECT cohort, n FROM cohort_sizes WHERE tenant_id = ? AND gran = ? AND cohort >= ? AND cohort < ? AND n > 0 ORDER BY cohort",
        base.clone(),
    )
    .await?
    .into_iter()
    .map(|r| Ok((r.try_get("", "cohort")?, r.try_get("", "n")?)))
    .collect::<Result<Vec<_>>>()?;
    let cells = rows(
        db,
        "SELECT cohort, idx, n FROM cohort_cells WHERE tenant_id = ? AND gran = ? AND cohort >= ? AND cohort < ? AND n <> 0",
        base.clone(),
    )
    .await?
    .into_iter()
    .map(|r| Ok((r.try_get("", "cohort")?, r.try_get("", "idx")?, r.try_get("", "n")?)))
    .collect::<Result<Vec<_>>>()?;
    let revenue = rows(
        db,
        "SELECT cohort, idx, currency, revenue FROM cohort_revenue WHERE tenant_id = ? AND gran = ? AND cohort >= ? AND cohort < ? AND revenue <> 0",
        base.clone(),
    )
    .await?
    .into_iter()
    .map(|r| Ok((r.try_get("", "cohort")?, r.try_get("", "idx")?, r.try_get("", "currency")?, r.try_get("", "revenue")?)))
    .collect::<Result<Vec<_>>>()?;
    let last = rows(
        db,
        "SELECT cohort, last_idx, n FROM cohort_last WHERE tenant_id = ? AND gran = ? AND cohort >= ? AND cohort < ? AND n <> 0",
        base,
    )
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
    let mut sql =
        "SELECT contact_id, period, currency, orders, revenue FROM contact_periods WHERE tenant_id = ? AND gran = ?"
            .to_owned();
    let mut vals = vec![v(tenant.as_str()), v(g.key())];
    push_in(&mut sql, &mut vals, "contact_id", ids);
    let mut out: HashMap<String, Periods> = HashMap::new();
    for r in rows(db, &sql, vals).await? {
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
        let mut sql =
            "SELECT contact_id, first_purchase FROM customer_facts WHERE tenant_id = ? AND first_purchase IS NOT NULL"
                .to_owned();
        let mut vals = vec![v(tenant.as_str())];
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
        return rows(
            db,
            "SELECT period, active, returners, firsts FROM period_counts WHERE tenant_id = ? AND gran = ? AND period >= ? AND period < ? ORDER BY period",
            vec![v(tenant.as_str()), v(g.key()), v(start), v(end)],
        )
        .await?
        .into_iter()
        .map(|r| {
            Ok((r.try_get("", "period")?, r.try_get("", "active")?, r.try_get("", "returners")?, r.try_get("", "firsts")?))
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
