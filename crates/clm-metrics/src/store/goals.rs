//! Goals as stored: the tenant's own data (not rebuilt by a replay).

use clm_platform::{Result, TenantId};
use sea_orm::{ConnectionTrait, QueryResult};

use super::sql::{Sql, exec, one, rows, v};

/// One goal row; `scope` is the encoded `clm.metrics.v1.MetricsScope`.
#[derive(Debug, Clone, PartialEq)]
pub struct GoalRecord {
    pub id: String,
    pub display_name: String,
    pub kpi: i32,
    pub scope: Vec<u8>,
    pub stage_key: String,
    pub target: f64,
    pub direction: i32,
    pub period: i32,
    pub tolerance: f64,
    pub version: i64,
    pub create_time: i64,
    pub update_time: i64,
}

fn from_row(r: &QueryResult) -> Result<GoalRecord> {
    use base64::Engine;
    let scope: String = r.try_get("", "scope")?;
    let int = |c: &str| -> Result<i32> { Ok(i32::try_from(r.try_get::<i64>("", c)?).unwrap_or_default()) };
    Ok(GoalRecord {
        id: r.try_get("", "id")?,
        display_name: r.try_get("", "display_name")?,
        kpi: int("kpi")?,
        scope: base64::engine::general_purpose::STANDARD.decode(scope).unwrap_or_default(),
        stage_key: r.try_get("", "stage_key")?,
        target: r.try_get("", "target")?,
        direction: int("direction")?,
        period: int("period")?,
        tolerance: r.try_get("", "tolerance")?,
        version: r.try_get("", "version")?,
        create_time: r.try_get("", "create_time")?,
        update_time: r.try_get("", "update_time")?,
    })
}

fn scope_text(g: &GoalRecord) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(&g.scope)
}

pub async fn insert(db: &impl ConnectionTrait, tenant: &TenantId, g: &GoalRecord) -> Result<()> {
    let cols = [
        "id",
        "display_name",
        "kpi",
        "scope",
        "stage_key",
        "target",
        "direction",
        "period",
        "tolerance",
        "version",
        "create_time",
        "update_time",
    ];
    let row = vec![
        v(g.id.as_str()),
        v(g.display_name.as_str()),
        v(i64::from(g.kpi)),
        v(scope_text(g)),
        v(g.stage_key.as_str()),
        v(g.target),
        v(i64::from(g.direction)),
        v(i64::from(g.period)),
        v(g.tolerance),
        v(g.version),
        v(g.create_time),
        v(g.update_time),
    ];
    exec(db, Sql::insert(tenant, "goals", &cols, [row])).await?;
    Ok(())
}

pub async fn get(db: &impl ConnectionTrait, tenant: &TenantId, id: &str) -> Result<Option<GoalRecord>> {
    one(db, Sql::select(tenant, "*", "goals").and("id = ?", [v(id)])).await?.as_ref().map(from_row).transpose()
}

/// A page after `after` (create time, id), oldest first; `limit + 1` rows to detect more.
pub async fn list(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    after: Option<&(i64, String)>,
    limit: u64,
) -> Result<Vec<GoalRecord>> {
    let (t, id) = after.cloned().unwrap_or((i64::MIN, String::new()));
    let q = Sql::select(tenant, "*", "goals")
        .and("(create_time > ? OR (create_time = ? AND id > ?))", [v(t), v(t), v(id)])
        .then(" ORDER BY create_time, id LIMIT ?", [v(i64::try_from(limit + 1).unwrap_or(i64::MAX))]);
    rows(db, q).await?.iter().map(from_row).collect()
}

/// Write `g` (its version already bumped) if the stored version is still `expected`.
pub async fn update(db: &impl ConnectionTrait, tenant: &TenantId, g: &GoalRecord, expected: i64) -> Result<bool> {
    let q = Sql::update(
        tenant,
        "goals",
        "display_name = ?, kpi = ?, scope = ?, stage_key = ?, target = ?, direction = ?, period = ?, \
         tolerance = ?, version = ?, update_time = ?",
        [
            v(g.display_name.as_str()),
            v(i64::from(g.kpi)),
            v(scope_text(g)),
            v(g.stage_key.as_str()),
            v(g.target),
            v(i64::from(g.direction)),
            v(i64::from(g.period)),
            v(g.tolerance),
            v(g.version),
            v(g.update_time),
        ],
    )
    .and("id = ? AND version = ?", [v(g.id.as_str()), v(expected)]);
    let n = exec(db, q).await?;
    Ok(n == 1)
}

pub async fn delete(db: &impl ConnectionTrait, tenant: &TenantId, id: &str, expected: i64) -> Result<bool> {
    let q = Sql::delete(tenant, "goals").and("id = ? AND version = ?", [v(id), v(expected)]);
    Ok(exec(db, q).await? == 1)
}
