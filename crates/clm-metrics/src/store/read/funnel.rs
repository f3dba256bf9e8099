//! The funnel and the durations between stages: day cells, and roll-ups by aligned blocks
//! of days ([`cover`]) so a long range reads few rows.

use clm_platform::{Result, TenantId};
use sea_orm::{ConnectionTrait, Value};

use super::Slice;
use crate::domain::contribution::{ROLL_SPANS, delay_bucket};
use crate::domain::{self};
use crate::store::sql::{Sql, rows, v};

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
fn and_cover(q: Sql, parts: &[(i64, i64, i64)], day_col: &str, span_col: Option<&str>) -> Sql {
    let mut sql = String::from("(");
    let mut vals: Vec<Value> = Vec::new();
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
    q.and(&sql, vals)
}

/// The funnel of the contacts who entered the model in the slice: per stage, how many reached
/// it within `window_days` of entering.
pub async fn funnel(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    slice: &Slice,
    window_days: i64,
) -> Result<Vec<(String, i64)>> {
    if slice.contacts.is_some() {
        return funnel_of_members(db, tenant, slice, window_days).await;
    }
    let (lo, hi) = (domain::day(slice.start), domain::days_before(slice.end));
    if lo >= hi {
        return Ok(Vec::new());
    }
    let cols = "stage_key, CAST(SUM(n) AS BIGINT) AS n";
    let q = if slice.channel.is_none() && slice.campaign.is_none() {
        // Every channel and campaign: the roll-up's blocks.
        let q = Sql::select(tenant, cols, "funnel_roll")
            .and("model_id = ? AND delay_days <= ?", [v(slice.model.as_str()), v(window_days)]);
        and_cover(q, &cover(lo, hi), "cohort_day", Some("span_days"))
    } else {
        slice.filters(Sql::select(tenant, cols, "funnel_cells").and(
            "model_id = ? AND cohort_day >= ? AND cohort_day < ? AND delay_days <= ?",
            [v(slice.model.as_str()), v(lo), v(hi), v(window_days)],
        ))
    };
    rows(db, q.then(" GROUP BY stage_key", []))
        .await?
        .into_iter()
        .map(|r| Ok((r.try_get("", "stage_key")?, r.try_get::<Option<i64>>("", "n")?.unwrap_or(0))))
        .filter(|r: &Result<(String, i64)>| r.as_ref().map_or(true, |(_, n)| *n != 0))
        .collect()
}

/// The funnel from the members' first reaches, cell by cell as `funnel_cells` counts them.
async fn funnel_of_members(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    slice: &Slice,
    window_days: i64,
) -> Result<Vec<(String, i64)>> {
    let mut counts: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
    for ids in slice.chunks() {
        let q = Sql::select(tenant, "r.contact_id, r.stage_key, r.first_time", "stage_reach r")
            .left_join("contact_facts f", "f.contact_id = r.contact_id")
            .and("r.model_id = ?", [v(slice.model.as_str())]);
        let q = slice.fact_filters(q).and_in("r.contact_id", ids);
        let mut reaches: std::collections::HashMap<String, Vec<(String, i64)>> = std::collections::HashMap::new();
        for r in rows(db, q).await? {
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
pub async fn histogram(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    slice: &Slice,
    name: &str,
) -> Result<Vec<(i64, i64)>> {
    Ok(histograms(db, tenant, slice).await?.remove(name).unwrap_or_default())
}

/// The duration histograms of the slice's model and range: name → (bucket, count).
pub async fn histograms(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    slice: &Slice,
) -> Result<std::collections::HashMap<String, Vec<(i64, i64)>>> {
    let mut out: std::collections::HashMap<String, Vec<(i64, i64)>> = std::collections::HashMap::new();
    if slice.contacts.is_none() {
        // Days `d` with start <= d < end: single days from `time_hist`, blocks from the roll-up.
        let lo = domain::day(slice.start.saturating_add(domain::DAY - 1));
        let hi = domain::days_before(slice.end);
        if lo >= hi {
            return Ok(out);
        }
        if slice.channel.is_some() || slice.campaign.is_some() {
            // A channel or campaign: the day cells, which carry them.
            let q = Sql::select(tenant, "name, bucket, CAST(SUM(n) AS BIGINT) AS n", "time_hist")
                .and("model_id = ? AND day >= ? AND day < ?", [v(slice.model.as_str()), v(lo), v(hi)]);
            for r in rows(db, slice.filters(q).then(" GROUP BY name, bucket", [])).await? {
                out.entry(r.try_get("", "name")?)
                    .or_default()
                    .push((r.try_get("", "bucket")?, r.try_get::<Option<i64>>("", "n")?.unwrap_or(0)));
            }
            return Ok(out);
        }
        let parts = cover(lo, hi);
        let (days, blocks): (Vec<_>, Vec<_>) = parts.into_iter().partition(|p| p.0 == 1);
        let mut branches: Option<Sql> = None;
        for (table, parts, span_col) in [("time_hist", days, None), ("time_hist_roll", blocks, Some("span_days"))] {
            if parts.is_empty() {
                continue;
            }
            let q = Sql::select(tenant, "name, bucket, n", table).and("model_id = ?", [v(slice.model.as_str())]);
            let q = and_cover(q, &parts, "day", span_col);
            branches = Some(match branches {
                None => q,
                Some(b) => b.union_all(q),
            });
        }
        let Some(branches) = branches else { return Ok(out) };
        let q = Sql::around("name, bucket, CAST(SUM(n) AS BIGINT) AS n", branches).then(" GROUP BY name, bucket", []);
        for r in rows(db, q).await? {
            out.entry(r.try_get("", "name")?)
                .or_default()
                .push((r.try_get("", "bucket")?, r.try_get::<Option<i64>>("", "n")?.unwrap_or(0)));
        }
        return Ok(out);
    }
    // The members' own durations, bucketed as the histograms bucket them.
    let mut cells: std::collections::BTreeMap<(String, i64), i64> = std::collections::BTreeMap::new();
    for ids in slice.chunks() {
        for (cols, table, cond, name_col) in [
            (
                "stage_key AS name, took",
                "stage_reach",
                "model_id = ? AND took IS NOT NULL AND took_day >= ? AND took_day < ?",
                true,
            ),
            (
                "close_took AS took",
                "contact_now",
                "model_id = ? AND close_took IS NOT NULL AND close_day >= ? AND close_day < ?",
                false,
            ),
        ] {
            let mut q =
                Sql::select(tenant, cols, table).and(cond, [v(slice.model.as_str()), v(slice.start), v(slice.end)]);
            if let Some(matching) = slice.fact_matches(tenant) {
                q = q.and_in_select("contact_id", matching);
            }
            for r in rows(db, q.and_in("contact_id", ids)).await? {
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::domain::contribution::{block, window_bucket};

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
        for w in (0..=31).chain(crate::domain::contribution::DELAY_STEPS) {
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
