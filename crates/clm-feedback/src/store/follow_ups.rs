//! Follow-ups: insert, read, update under their version, list.

use clm_platform::filter_sql::{Field, FieldKind};
use clm_platform::{Error, Result, TenantId};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;

use super::entities::follow_up;
use super::{Cursor, Filter, after_cond, stale};

/// What ListFollowUps' `filter` may name, and the columns it compiles to.
pub const FOLLOW_UP_FILTER: &[Field] = &[
    Field {
        name: "status",
        column: "status",
        kind: FieldKind::Enum(&[("open", "open"), ("in_progress", "in_progress"), ("resolved", "resolved")]),
    },
    Field { name: "owner", column: "owner", kind: FieldKind::Text },
    Field { name: "survey_id", column: "survey_id", kind: FieldKind::Text },
    Field { name: "contact_id", column: "contact_id", kind: FieldKind::Text },
    Field { name: "reason", column: "reason", kind: FieldKind::Text },
    Field { name: "open_time", column: "open_time", kind: FieldKind::Time },
];

pub async fn insert_follow_up(db: &impl ConnectionTrait, tenant: &TenantId, mut row: follow_up::Model) -> Result<()> {
    tenant.as_str().clone_into(&mut row.tenant_id);
    follow_up::Entity::insert(row.into_active_model()).exec_without_returning(db).await?;
    Ok(())
}

pub async fn get_follow_up(db: &impl ConnectionTrait, tenant: &TenantId, id: Uuid) -> Result<follow_up::Model> {
    follow_up::Entity::find()
        .filter(follow_up::Column::TenantId.eq(tenant.as_str()))
        .filter(follow_up::Column::Id.eq(id.to_string()))
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("follow-up", id.to_string()))
}

pub async fn update_follow_up(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    mut row: follow_up::Model,
    expected: i64,
) -> Result<()> {
    tenant.as_str().clone_into(&mut row.tenant_id);
    let n = follow_up::Entity::update_many()
        .set(row.clone().into_active_model().reset_all())
        .filter(follow_up::Column::TenantId.eq(tenant.as_str()))
        .filter(follow_up::Column::Id.eq(row.id.clone()))
        .filter(follow_up::Column::Version.eq(expected))
        .exec(db)
        .await?
        .rows_affected;
    if n == 1 { Ok(()) } else { Err(stale("follow-up")) }
}

pub async fn list_follow_ups(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    filter: Filter,
    after: Option<&Cursor>,
    limit: u64,
) -> Result<(Vec<follow_up::Model>, Option<Cursor>)> {
    let mut q = follow_up::Entity::find().filter(follow_up::Column::TenantId.eq(tenant.as_str()));
    if let Some(c) = filter.0 {
        q = q.filter(c);
    }
    if let Some(c) = after_cond(follow_up::Column::OpenTime, follow_up::Column::Id, after, false) {
        q = q.filter(c);
    }
    let rows = q
        .order_by_asc(follow_up::Column::OpenTime)
        .order_by_asc(follow_up::Column::Id)
        .limit(limit + 1)
        .all(db)
        .await?;
    Ok(clm_platform::pagination::split_page(rows, limit, |m| (m.open_time, m.id.clone())))
}
