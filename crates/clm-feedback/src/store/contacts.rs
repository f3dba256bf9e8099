//! What feedback keeps about contacts from other services' events: the stage each contact
//! is in (per lifecycle model), and what an erasure or a merge does to feedback's rows.

use std::collections::HashMap;

use clm_platform::{Result, TenantId};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder};
use uuid::Uuid;

use crate::domain::invitation::InvitationStatus;
use crate::domain::survey::Value;

use super::entities::{contact_ask, contact_stage, follow_up, invitation, response, review};

/// Remember the stage a contact entered in a model (later events win).
pub async fn set_stage(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    contact: &str,
    model: &str,
    stage: &str,
    at: i64,
) -> Result<()> {
    let row = contact_stage::Model {
        tenant_id: tenant.as_str().to_owned(),
        contact_id: contact.to_owned(),
        model_id: model.to_owned(),
        stage_key: stage.to_owned(),
        enter_time: at,
    };
    if let Some(existing) =
        contact_stage::Entity::find_by_id((tenant.as_str().to_owned(), contact.to_owned(), model.to_owned()))
            .one(db)
            .await?
    {
        if existing.enter_time <= at {
            contact_stage::Entity::update(row.into_active_model().reset_all()).exec(db).await?;
        }
    } else {
        contact_stage::Entity::insert(row.into_active_model()).exec_without_returning(db).await?;
    }
    Ok(())
}

/// A retracted transition: if it is the one last recorded, the contact is back in the stage it
/// had left (entered at `from_enter`); a replacement transition, if any, follows as its own event.
#[allow(clippy::too_many_arguments)]
pub async fn unset_stage(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    contact: &str,
    model: &str,
    stage: &str,
    at: i64,
    from_stage: &str,
    from_enter: Option<i64>,
) -> Result<()> {
    let Some(existing) =
        contact_stage::Entity::find_by_id((tenant.as_str().to_owned(), contact.to_owned(), model.to_owned()))
            .one(db)
            .await?
    else {
        return Ok(());
    };
    if existing.stage_key != stage || existing.enter_time != at {
        return Ok(());
    }
    match (from_stage.is_empty(), from_enter) {
        (false, Some(enter)) => {
            let row = contact_stage::Model { stage_key: from_stage.to_owned(), enter_time: enter, ..existing };
            contact_stage::Entity::update(row.into_active_model().reset_all()).exec(db).await?;
        }
        _ => {
            contact_stage::Entity::delete_by_id((tenant.as_str().to_owned(), contact.to_owned(), model.to_owned()))
                .exec(db)
                .await?;
        }
    }
    Ok(())
}

/// The stage the contact most recently entered (any model); empty when unknown.
pub async fn stage_of(db: &impl ConnectionTrait, tenant: &TenantId, contact: Uuid) -> Result<String> {
    Ok(contact_stage::Entity::find()
        .filter(contact_stage::Column::TenantId.eq(tenant.as_str()))
        .filter(contact_stage::Column::ContactId.eq(contact.to_string()))
        .order_by_desc(contact_stage::Column::EnterTime)
        .one(db)
        .await?
        .map(|s| s.stage_key)
        .unwrap_or_default())
}

/// A deleted contact is asked nothing more: no reminder and no next round of a recurring survey
/// (an open invitation's link still takes an answer). Restoring the contact does not bring the
/// schedule back: the next invitation comes from the next trigger (a stage entry, an automation,
/// an invitation by hand).
pub async fn stop_asking(db: &impl ConnectionTrait, tenant: &TenantId, contact: &str) -> Result<()> {
    invitation::Entity::update_many()
        .col_expr(invitation::Column::NextReminderTime, Expr::value(Option::<i64>::None))
        .col_expr(invitation::Column::NextRecurrenceTime, Expr::value(Option::<i64>::None))
        .filter(invitation::Column::TenantId.eq(tenant.as_str()))
        .filter(invitation::Column::ContactId.eq(contact))
        .exec(db)
        .await?;
    Ok(())
}

/// Erasure: keep what the numbers need (scores, counts), drop what a person wrote or could be
/// identified by: free-text and choice answers, follow-up notes, review texts and links;
/// pending invitations are cancelled.
pub async fn erase_contact(db: &impl ConnectionTrait, tenant: &TenantId, contact: &str) -> Result<()> {
    invitation::Entity::update_many()
        .col_expr(invitation::Column::Status, Expr::value(InvitationStatus::Cancelled.key()))
        .filter(invitation::Column::TenantId.eq(tenant.as_str()))
        .filter(invitation::Column::ContactId.eq(contact))
        .filter(invitation::Column::Status.eq(InvitationStatus::Pending.key()))
        .exec(db)
        .await?;
    // Nothing more goes to an erased contact: no reminder, no next round of a recurring survey.
    stop_asking(db, tenant, contact).await?;
    let rows = response::Entity::find()
        .filter(response::Column::TenantId.eq(tenant.as_str()))
        .filter(response::Column::ContactId.eq(contact))
        .all(db)
        .await?;
    for r in rows {
        let answers: HashMap<String, Value> = serde_json::from_str(&r.answers).unwrap_or_default();
        let kept: HashMap<_, _> = answers.into_iter().filter(|(_, v)| matches!(v, Value::Rating(_))).collect();
        let mut row = r.clone();
        row.answers = serde_json::to_string(&kept).expect("answers serialize");
        row.version += 1;
        response::Entity::update(row.into_active_model().reset_all()).exec(db).await?;
    }
    follow_up::Entity::update_many()
        .col_expr(follow_up::Column::Note, Expr::value(""))
        .filter(follow_up::Column::TenantId.eq(tenant.as_str()))
        .filter(follow_up::Column::ContactId.eq(contact))
        .exec(db)
        .await?;
    review::Entity::update_many()
        .col_expr(review::Column::Text, Expr::value(""))
        .col_expr(review::Column::Url, Expr::value(""))
        .filter(review::Column::TenantId.eq(tenant.as_str()))
        .filter(review::Column::ContactId.eq(contact))
        .exec(db)
        .await?;
    Ok(())
}

/// Merge: what belonged to `merged` now belongs to `survivor`.
pub async fn reassign_contact(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    merged: &str,
    survivor: &str,
) -> Result<()> {
    macro_rules! repoint {
        ($m:ident) => {
            $m::Entity::update_many()
                .col_expr($m::Column::ContactId, Expr::value(survivor))
                .filter($m::Column::TenantId.eq(tenant.as_str()))
                .filter($m::Column::ContactId.eq(merged))
                .exec(db)
                .await?;
        };
    }
    repoint!(invitation);
    repoint!(response);
    repoint!(follow_up);
    repoint!(review);
    contact_ask::Entity::delete_many()
        .filter(contact_ask::Column::TenantId.eq(tenant.as_str()))
        .filter(contact_ask::Column::ContactId.eq(merged))
        .exec(db)
        .await?;
    contact_stage::Entity::delete_many()
        .filter(contact_stage::Column::TenantId.eq(tenant.as_str()))
        .filter(contact_stage::Column::ContactId.eq(merged))
        .exec(db)
        .await?;
    Ok(())
}
