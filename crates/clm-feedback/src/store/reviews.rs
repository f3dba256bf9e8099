//! Reviews: insert, read, list.

use clm_platform::{Result, TenantId};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use super::entities::review;
use super::{Cursor, after_cond};

pub async fn insert_review(db: &impl ConnectionTrait, tenant: &TenantId, mut row: review::Model) -> Result<()> {
    tenant.as_str().clone_into(&mut row.tenant_id);
    review::Entity::insert(row.into_active_model()).exec_without_returning(db).await?;
    Ok(())
}

pub async fn get_review(db: &impl ConnectionTrait, tenant: &TenantId, id: &str) -> Result<Option<review::Model>> {
    Ok(review::Entity::find()
        .filter(review::Column::TenantId.eq(tenant.as_str()))
        .filter(review::Column::Id.eq(id))
        .one(db)
        .await?)
}

pub async fn list_reviews(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    contact: Option<Uuid>,
    after: Option<&Cursor>,
    limit: u64,
) -> Result<(Vec<review::Model>, Option<Cursor>)> {
    let mut q = review::Entity::find().filter(review::Column::TenantId.eq(tenant.as_str()));
    if let Some(c) = contact {
        q = q.filter(review::Column::ContactId.eq(c.to_string()));
    }
    if let Some(c) = after_cond(review::Column::CreateTime, review::Column::Id, after, true) {
        q = q.filter(c);
    }
    let rows =
        q.order_by_desc(review::Column::CreateTime).order_by_desc(review::Column::Id).limit(limit + 1).all(db).await?;
    Ok(clm_platform::pagination::split_page(rows, limit, |m| (m.create_time, m.id.clone())))
}
