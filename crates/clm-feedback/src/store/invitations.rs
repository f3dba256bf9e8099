//! Invitations and throttling (`contact_asks`: when each contact was last asked).

use clm_platform::{Error, Result, TenantId};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;

use crate::domain::invitation::InvitationStatus;

use super::entities::{contact_ask, invitation};
use super::{Cursor, after_cond};

/// Claim the right to ask `contact` at `now`: succeeds when they were last asked at least
/// `window` µs ago (or never), and records `now` as their last ask. Atomic under concurrency
/// (a conditional update), so two racing invitations cannot both pass. `Err(t)`: throttled
/// until `t`.
pub async fn claim_ask(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    contact: Uuid,
    now: i64,
    window: i64,
) -> Result<std::result::Result<(), i64>> {
    let inserted = contact_ask::Entity::insert(
        contact_ask::Model {
            tenant_id: tenant.as_str().to_owned(),
            contact_id: contact.to_string(),
            last_invite_time: now,
        }
        .into_active_model(),
    )
    .on_conflict(
        OnConflict::columns([contact_ask::Column::TenantId, contact_ask::Column::ContactId]).do_nothing().to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    if inserted == 1 {
        return Ok(Ok(()));
    }
    let updated = contact_ask::Entity::update_many()
        .col_expr(contact_ask::Column::LastInviteTime, Expr::value(now))
        .filter(contact_ask::Column::TenantId.eq(tenant.as_str()))
        .filter(contact_ask::Column::ContactId.eq(contact.to_string()))
        .filter(contact_ask::Column::LastInviteTime.lte(now.saturating_sub(window)))
        .exec(db)
        .await?
        .rows_affected;
    if updated == 1 {
        return Ok(Ok(()));
    }
    let last = contact_ask::Entity::find()
        .filter(contact_ask::Column::TenantId.eq(tenant.as_str()))
        .filter(contact_ask::Column::ContactId.eq(contact.to_string()))
        .one(db)
        .await?
        .map_or(now, |a| a.last_invite_time);
    Ok(Err(last.saturating_add(window)))
}

pub async fn insert_invitation(db: &impl ConnectionTrait, tenant: &TenantId, mut row: invitation::Model) -> Result<()> {
    tenant.as_str().clone_into(&mut row.tenant_id);
    invitation::Entity::insert(row.into_active_model()).exec_without_returning(db).await?;
    Ok(())
}

pub async fn get_invitation(db: &impl ConnectionTrait, tenant: &TenantId, id: Uuid) -> Result<invitation::Model> {
    invitation::Entity::find()
        .filter(invitation::Column::TenantId.eq(tenant.as_str()))
        .filter(invitation::Column::Id.eq(id.to_string()))
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("invitation", id.to_string()))
}

/// Invitations by id (those of the tenant that exist), in no particular order.
pub async fn invitations_by_ids(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    ids: &[String],
) -> Result<Vec<invitation::Model>> {
    Ok(invitation::Entity::find()
        .filter(invitation::Column::TenantId.eq(tenant.as_str()))
        .filter(invitation::Column::Id.is_in(ids.iter().cloned()))
        .all(db)
        .await?)
}

/// A pending, unexpired invitation of `contact` to `survey`.
pub async fn pending_invitation(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    survey_id: Uuid,
    contact: Uuid,
    now: i64,
) -> Result<Option<invitation::Model>> {
    Ok(invitation::Entity::find()
        .filter(invitation::Column::TenantId.eq(tenant.as_str()))
        .filter(invitation::Column::SurveyId.eq(survey_id.to_string()))
        .filter(invitation::Column::ContactId.eq(contact.to_string()))
        .filter(invitation::Column::Status.eq(InvitationStatus::Pending.key()))
        .filter(invitation::Column::ExpireTime.gt(now))
        .one(db)
        .await?)
}

pub async fn list_invitations(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    survey_id: Option<Uuid>,
    contact: Option<Uuid>,
    after: Option<&Cursor>,
    limit: u64,
) -> Result<(Vec<invitation::Model>, Option<Cursor>)> {
    let mut q = invitation::Entity::find().filter(invitation::Column::TenantId.eq(tenant.as_str()));
    if let Some(s) = survey_id {
        q = q.filter(invitation::Column::SurveyId.eq(s.to_string()));
    }
    if let Some(c) = contact {
        q = q.filter(invitation::Column::ContactId.eq(c.to_string()));
    }
    if let Some(c) = after_cond(invitation::Column::CreateTime, invitation::Column::Id, after, true) {
        q = q.filter(c);
    }
    let rows = q
        .order_by_desc(invitation::Column::CreateTime)
        .order_by_desc(invitation::Column::Id)
        .limit(limit + 1)
        .all(db)
        .await?;
    Ok(clm_platform::pagination::split_page(rows, limit, |m| (m.create_time, m.id.clone())))
}

pub async fn mark_responded(db: &impl ConnectionTrait, tenant: &TenantId, id: &str, at: i64) -> Result<()> {
    invitation::Entity::update_many()
        .col_expr(invitation::Column::Status, Expr::value(InvitationStatus::Responded.key()))
        .col_expr(invitation::Column::RespondTime, Expr::value(at))
        .filter(invitation::Column::TenantId.eq(tenant.as_str()))
        .filter(invitation::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// Invitations of a survey created in [start, end).
pub async fn count_invitations(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    survey_id: Uuid,
    start: i64,
    end: i64,
) -> Result<u64> {
    Ok(invitation::Entity::find()
        .filter(invitation::Column::TenantId.eq(tenant.as_str()))
        .filter(invitation::Column::SurveyId.eq(survey_id.to_string()))
        .filter(invitation::Column::CreateTime.gte(start))
        .filter(invitation::Column::CreateTime.lt(end))
        .filter(invitation::Column::Status.ne(InvitationStatus::Cancelled.key()))
        .count(db)
        .await?)
}
