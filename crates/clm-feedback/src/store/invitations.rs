//! Invitations and throttling (`contact_asks`: when each contact was last asked); what the
//! sweep finds due (reminders, recurring surveys' next rounds) and claims.

use clm_platform::{Error, Result, TenantId};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
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

/// The tenant of invitation `id`, if it exists. The one query without a tenant: a survey link
/// (`/s/<token>`, the hosted page) names only the invitation, and ids are unique across
/// tenants; the caller verifies the token under that tenant's secret before using anything.
pub async fn invitation_tenant(db: &impl ConnectionTrait, id: Uuid) -> Result<Option<String>> {
    Ok(invitation::Entity::find_by_id(id.to_string()).one(db).await?.map(|i| i.tenant_id))
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
        .col_expr(invitation::Column::NextReminderTime, Expr::value(Option::<i64>::None))
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

/// Invitations of any tenant whose next reminder is due at `now`, soonest first.
pub async fn due_reminders(db: &impl ConnectionTrait, now: i64, limit: u64) -> Result<Vec<invitation::Model>> {
    Ok(invitation::Entity::find()
        .filter(invitation::Column::NextReminderTime.lte(now))
        .order_by_asc(invitation::Column::NextReminderTime)
        .order_by_asc(invitation::Column::Id)
        .limit(limit)
        .all(db)
        .await?)
}

/// Claim reminder number `sent + 1` of invitation `id`, due at `due`: only while it is still
/// pending with `sent` reminders sent and that reminder due, so of any number of sweeps (and
/// replicas) exactly one claims it. `next`: when the one after is due, if any.
pub async fn claim_reminder(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    id: &str,
    sent: i64,
    due: i64,
    next: Option<i64>,
) -> Result<bool> {
    let n = invitation::Entity::update_many()
        .col_expr(invitation::Column::RemindersSent, Expr::value(sent + 1))
        .col_expr(invitation::Column::NextReminderTime, Expr::value(next))
        .filter(invitation::Column::TenantId.eq(tenant.as_str()))
        .filter(invitation::Column::Id.eq(id))
        .filter(invitation::Column::Status.eq(InvitationStatus::Pending.key()))
        .filter(invitation::Column::RemindersSent.eq(sent))
        .filter(invitation::Column::NextReminderTime.eq(due))
        .exec(db)
        .await?
        .rows_affected;
    Ok(n == 1)
}

/// No more reminders for invitation `id` (answered, expired, its survey closed or its
/// reminders turned off).
pub async fn clear_reminder(db: &impl ConnectionTrait, tenant: &TenantId, id: &str) -> Result<()> {
    invitation::Entity::update_many()
        .col_expr(invitation::Column::NextReminderTime, Expr::value(Option::<i64>::None))
        .filter(invitation::Column::TenantId.eq(tenant.as_str()))
        .filter(invitation::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// Invitations of any tenant whose contact is due for a recurring survey's next round.
pub async fn due_recurrences(db: &impl ConnectionTrait, now: i64, limit: u64) -> Result<Vec<invitation::Model>> {
    Ok(invitation::Entity::find()
        .filter(invitation::Column::NextRecurrenceTime.lte(now))
        .order_by_asc(invitation::Column::NextRecurrenceTime)
        .order_by_asc(invitation::Column::Id)
        .limit(limit)
        .all(db)
        .await?)
}

/// Move invitation `id`'s next round from `from` to `then` (NULL: handled): only while it is
/// still `from`, so only one sweep moves it.
pub async fn claim_recurrence(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    id: &str,
    from: Option<i64>,
    then: Option<i64>,
) -> Result<bool> {
    let current = match from {
        Some(t) => invitation::Column::NextRecurrenceTime.eq(t),
        None => invitation::Column::NextRecurrenceTime.is_null(),
    };
    let n = invitation::Entity::update_many()
        .col_expr(invitation::Column::NextRecurrenceTime, Expr::value(then))
        .filter(invitation::Column::TenantId.eq(tenant.as_str()))
        .filter(invitation::Column::Id.eq(id))
        .filter(current)
        .exec(db)
        .await?
        .rows_affected;
    Ok(n == 1)
}

/// The contact's latest invitation to the survey.
pub async fn latest_invitation(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    survey_id: &str,
    contact: &str,
) -> Result<Option<invitation::Model>> {
    Ok(invitation::Entity::find()
        .filter(invitation::Column::TenantId.eq(tenant.as_str()))
        .filter(invitation::Column::SurveyId.eq(survey_id))
        .filter(invitation::Column::ContactId.eq(contact))
        .order_by_desc(invitation::Column::CreateTime)
        .order_by_desc(invitation::Column::Id)
        .one(db)
        .await?)
}

/// A survey's recurrence changed to `recurrence` µs (0: one-off): every invitation of it not
/// cancelled is due again that long after it was created (the sweep invites only a contact's
/// latest), or never.
pub async fn set_recurrence(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    survey_id: &str,
    recurrence: i64,
) -> Result<()> {
    let value = if recurrence > 0 {
        Expr::col(invitation::Column::CreateTime).add(recurrence)
    } else {
        Expr::value(Option::<i64>::None)
    };
    invitation::Entity::update_many()
        .col_expr(invitation::Column::NextRecurrenceTime, value)
        .filter(invitation::Column::TenantId.eq(tenant.as_str()))
        .filter(invitation::Column::SurveyId.eq(survey_id))
        .filter(invitation::Column::Status.ne(InvitationStatus::Cancelled.key()))
        .exec(db)
        .await?;
    Ok(())
}

/// Cancel invitation `id` if it is still pending (a recurring survey's next round supersedes
/// it): its token stops working and no reminder follows.
pub async fn supersede_invitation(db: &impl ConnectionTrait, tenant: &TenantId, id: &str) -> Result<()> {
    invitation::Entity::update_many()
        .col_expr(invitation::Column::Status, Expr::value(InvitationStatus::Cancelled.key()))
        .col_expr(invitation::Column::NextReminderTime, Expr::value(Option::<i64>::None))
        .filter(invitation::Column::TenantId.eq(tenant.as_str()))
        .filter(invitation::Column::Id.eq(id))
        .filter(invitation::Column::Status.eq(InvitationStatus::Pending.key()))
        .exec(db)
        .await?;
    Ok(())
}
