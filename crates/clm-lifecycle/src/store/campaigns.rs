//! Campaigns, enrolments (each contact's step and timer) and the step log.
//!
//! An enrolment is the durable state of one contact in one campaign: the runner takes a due one
//! by *leasing* it (a conditional update only one replica wins) and moves it on with a
//! version check, so a timer fires once at any replica count and survives restarts.

use std::collections::HashMap;

use clm_platform::{Error, Result, TenantId};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;

use super::entities::{campaign, enrolment, step_log};

// ---- campaigns ----

pub async fn insert(db: &impl ConnectionTrait, row: campaign::Model) -> Result<()> {
    campaign::Entity::insert(row.into_active_model()).exec_without_returning(db).await?;
    Ok(())
}

pub async fn find(db: &impl ConnectionTrait, tenant: &TenantId, id: Uuid) -> Result<campaign::Model> {
    campaign::Entity::find()
        .filter(campaign::Column::TenantId.eq(tenant.as_str()))
        .filter(campaign::Column::Id.eq(id.to_string()))
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("campaign", id.to_string()))
}

pub async fn count(db: &impl ConnectionTrait, tenant: &TenantId) -> Result<u64> {
    Ok(campaign::Entity::find().filter(campaign::Column::TenantId.eq(tenant.as_str())).count(db).await?)
}

/// Active campaigns of a tenant's model (what a trigger may enrol into, what exit rules watch).
pub async fn active(db: &impl ConnectionTrait, tenant: &TenantId, model: Uuid) -> Result<Vec<campaign::Model>> {
    Ok(campaign::Entity::find()
        .filter(campaign::Column::TenantId.eq(tenant.as_str()))
        .filter(campaign::Column::ModelId.eq(model.to_string()))
        .filter(campaign::Column::Status.eq("active"))
        .all(db)
        .await?)
}

/// Write `row` if the stored version is still `expected_version` (else ABORTED).
pub async fn update(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    row: &campaign::Model,
    expected_version: i64,
) -> Result<()> {
    let res = campaign::Entity::update_many()
        .col_expr(campaign::Column::DisplayName, Expr::val(row.display_name.clone()))
        .col_expr(campaign::Column::Status, Expr::val(row.status.clone()))
        .col_expr(campaign::Column::Body, Expr::val(row.body.clone()))
        .col_expr(campaign::Column::Version, Expr::val(row.version))
        .col_expr(campaign::Column::UpdateTime, Expr::val(row.update_time))
        .filter(campaign::Column::TenantId.eq(tenant.as_str()))
        .filter(campaign::Column::Id.eq(row.id.clone()))
        .filter(campaign::Column::Version.eq(expected_version))
        .exec(db)
        .await?;
    if res.rows_affected == 1 { Ok(()) } else { Err(Error::Aborted("the campaign changed; re-read and retry".into())) }
}

pub async fn delete(db: &impl ConnectionTrait, tenant: &TenantId, id: &str) -> Result<()> {
    step_log::Entity::delete_many()
        .filter(step_log::Column::TenantId.eq(tenant.as_str()))
        .filter(step_log::Column::CampaignId.eq(id))
        .exec(db)
        .await?;
    enrolment::Entity::delete_many()
        .filter(enrolment::Column::TenantId.eq(tenant.as_str()))
        .filter(enrolment::Column::CampaignId.eq(id))
        .exec(db)
        .await?;
    campaign::Entity::delete_many()
        .filter(campaign::Column::TenantId.eq(tenant.as_str()))
        .filter(campaign::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// A page of campaigns, oldest first, after `(create_time, id)`.
pub async fn list(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    after: Option<&(i64, String)>,
    limit: u64,
) -> Result<(Vec<campaign::Model>, Option<(i64, String)>)> {
    let mut q = campaign::Entity::find().filter(campaign::Column::TenantId.eq(tenant.as_str()));
    if let Some((t, id)) = after {
        q =
            q.filter(Expr::col(campaign::Column::CreateTime).gt(*t).or(
                Expr::col(campaign::Column::CreateTime).eq(*t).and(Expr::col(campaign::Column::Id).gt(id.clone())),
            ));
    }
    let rows = q
        .order_by_asc(campaign::Column::CreateTime)
        .order_by_asc(campaign::Column::Id)
        .limit(limit + 1)
        .all(db)
        .await?;
    Ok(clm_platform::pagination::split_page(rows, limit, |m| (m.create_time, m.id.clone())))
}

// ---- enrolments ----

pub async fn enrol(db: &impl ConnectionTrait, row: enrolment::Model) -> Result<()> {
    enrolment::Entity::insert(row.into_active_model()).exec_without_returning(db).await?;
    Ok(())
}

/// The contact's enrolments in `campaign`: (any, an active one).
pub async fn enrolled(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    campaign: &str,
    contact: &str,
) -> Result<(bool, bool)> {
    let rows: Vec<String> = enrolment::Entity::find()
        .select_only()
        .column(enrolment::Column::State)
        .filter(enrolment::Column::TenantId.eq(tenant.as_str()))
        .filter(enrolment::Column::CampaignId.eq(campaign))
        .filter(enrolment::Column::ContactId.eq(contact))
        .into_tuple()
        .all(db)
        .await?;
    Ok((!rows.is_empty(), rows.iter().any(|s| s == "active")))
}

/// The contact's active enrolments (exit rules, waits for an event).
pub async fn active_of(db: &impl ConnectionTrait, tenant: &TenantId, contact: &str) -> Result<Vec<enrolment::Model>> {
    Ok(enrolment::Entity::find()
        .filter(enrolment::Column::TenantId.eq(tenant.as_str()))
        .filter(enrolment::Column::ContactId.eq(contact))
        .filter(enrolment::Column::State.eq("active"))
        .all(db)
        .await?)
}

pub async fn find_enrolment(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    id: &str,
) -> Result<Option<enrolment::Model>> {
    Ok(enrolment::Entity::find()
        .filter(enrolment::Column::TenantId.eq(tenant.as_str()))
        .filter(enrolment::Column::Id.eq(id))
        .one(db)
        .await?)
}

/// Active enrolments of any tenant whose timer is due and that no runner holds, soonest first.
pub async fn due(db: &impl ConnectionTrait, now: i64, limit: u64) -> Result<Vec<enrolment::Model>> {
    Ok(enrolment::Entity::find()
        .filter(enrolment::Column::State.eq("active"))
        .filter(enrolment::Column::WakeTime.lte(now))
        .filter(enrolment::Column::LeaseUntil.lt(now))
        .order_by_asc(enrolment::Column::WakeTime)
        .order_by_asc(enrolment::Column::Id)
        .limit(limit)
        .all(db)
        .await?)
}

/// The earliest timer of an active enrolment.
pub async fn next_due(db: &impl ConnectionTrait) -> Result<Option<i64>> {
    Ok(enrolment::Entity::find()
        .select_only()
        .column_as(Expr::col(enrolment::Column::WakeTime).min(), "t")
        .filter(enrolment::Column::State.eq("active"))
        .into_tuple::<Option<i64>>()
        .one(db)
        .await?
        .flatten())
}

/// Take enrolment `id` until `until` if it is still at `version` and nobody holds it.
pub async fn lease(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    id: &str,
    version: i64,
    now: i64,
    until: i64,
) -> Result<bool> {
    let res = enrolment::Entity::update_many()
        .col_expr(enrolment::Column::LeaseUntil, Expr::val(until))
        .filter(enrolment::Column::TenantId.eq(tenant.as_str()))
        .filter(enrolment::Column::Id.eq(id))
        .filter(enrolment::Column::Version.eq(version))
        .filter(enrolment::Column::State.eq("active"))
        .filter(enrolment::Column::LeaseUntil.lt(now))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// Write the enrolment's new place if it is still at `expected_version` (else `false`: another
/// change — an exit rule, an event — got there first).
pub async fn save(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    e: &enrolment::Model,
    expected_version: i64,
) -> Result<bool> {
    let res = enrolment::Entity::update_many()
        .col_expr(enrolment::Column::State, Expr::val(e.state.clone()))
        .col_expr(enrolment::Column::StepKey, Expr::val(e.step_key.clone()))
        .col_expr(enrolment::Column::Waiting, Expr::val(e.waiting))
        .col_expr(enrolment::Column::WakeTime, Expr::val(e.wake_time))
        .col_expr(enrolment::Column::WaitingEvent, Expr::val(e.waiting_event.clone()))
        .col_expr(enrolment::Column::Converted, Expr::val(e.converted))
        .col_expr(enrolment::Column::ExitReason, Expr::val(e.exit_reason.clone()))
        .col_expr(enrolment::Column::LeaseUntil, Expr::val(e.lease_until))
        .col_expr(enrolment::Column::Version, Expr::val(expected_version + 1))
        .col_expr(enrolment::Column::FinishTime, Expr::val(e.finish_time))
        .filter(enrolment::Column::TenantId.eq(tenant.as_str()))
        .filter(enrolment::Column::Id.eq(e.id.clone()))
        .filter(enrolment::Column::Version.eq(expected_version))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// Let the runner look at an enrolment again at `at` (a paused campaign).
pub async fn snooze(db: &impl ConnectionTrait, tenant: &TenantId, id: &str, at: i64) -> Result<()> {
    enrolment::Entity::update_many()
        .col_expr(enrolment::Column::LeaseUntil, Expr::val(at))
        .filter(enrolment::Column::TenantId.eq(tenant.as_str()))
        .filter(enrolment::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// Whether the campaign has active enrolments.
pub async fn has_active(db: &impl ConnectionTrait, tenant: &TenantId, campaign: &str) -> Result<bool> {
    Ok(enrolment::Entity::find()
        .filter(enrolment::Column::TenantId.eq(tenant.as_str()))
        .filter(enrolment::Column::CampaignId.eq(campaign))
        .filter(enrolment::Column::State.eq("active"))
        .count(db)
        .await?
        > 0)
}

/// A page of enrolments, newest first, after `(enrol_time, id)`.
pub async fn list_enrolments(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    campaign: Option<Uuid>,
    contact: Option<Uuid>,
    after: Option<&(i64, String)>,
    limit: u64,
) -> Result<(Vec<enrolment::Model>, Option<(i64, String)>)> {
    let mut q = enrolment::Entity::find().filter(enrolment::Column::TenantId.eq(tenant.as_str()));
    if let Some(c) = campaign {
        q = q.filter(enrolment::Column::CampaignId.eq(c.to_string()));
    }
    if let Some(c) = contact {
        q = q.filter(enrolment::Column::ContactId.eq(c.to_string()));
    }
    if let Some((t, id)) = after {
        q =
            q.filter(Expr::col(enrolment::Column::EnrolTime).lt(*t).or(
                Expr::col(enrolment::Column::EnrolTime).eq(*t).and(Expr::col(enrolment::Column::Id).lt(id.clone())),
            ));
    }
    let rows = q
        .order_by_desc(enrolment::Column::EnrolTime)
        .order_by_desc(enrolment::Column::Id)
        .limit(limit + 1)
        .all(db)
        .await?;
    Ok(clm_platform::pagination::split_page(rows, limit, |m| (m.enrol_time, m.id.clone())))
}

/// Forget a contact's enrolments (erased).
pub async fn drop_contact(db: &impl ConnectionTrait, tenant: &TenantId, contact: &str) -> Result<()> {
    let ids: Vec<String> = enrolment::Entity::find()
        .select_only()
        .column(enrolment::Column::Id)
        .filter(enrolment::Column::TenantId.eq(tenant.as_str()))
        .filter(enrolment::Column::ContactId.eq(contact))
        .into_tuple()
        .all(db)
        .await?;
    for chunk in ids.chunks(500) {
        step_log::Entity::delete_many()
            .filter(step_log::Column::TenantId.eq(tenant.as_str()))
            .filter(step_log::Column::EnrolmentId.is_in(chunk.iter().cloned()))
            .exec(db)
            .await?;
    }
    enrolment::Entity::delete_many()
        .filter(enrolment::Column::TenantId.eq(tenant.as_str()))
        .filter(enrolment::Column::ContactId.eq(contact))
        .exec(db)
        .await?;
    Ok(())
}

// ---- the step log and statistics ----

#[allow(clippy::too_many_arguments)]
pub async fn log(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    e: &enrolment::Model,
    step: &str,
    what: &str,
    converted: bool,
    detail: &str,
    at: i64,
) -> Result<()> {
    let row = step_log::Model {
        id: Uuid::now_v7().to_string(),
        tenant_id: tenant.as_str().to_owned(),
        campaign_id: e.campaign_id.clone(),
        enrolment_id: e.id.clone(),
        step_key: step.to_owned(),
        what: what.to_owned(),
        converted,
        detail: detail.to_owned(),
        at,
    };
    step_log::Entity::insert(row.into_active_model()).exec_without_returning(db).await?;
    Ok(())
}

/// The detail of this enrolment's last `what` at `step` (a send step's delivery id).
pub async fn logged(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    enrolment: &str,
    step: &str,
    what: &str,
) -> Result<Option<String>> {
    Ok(step_log::Entity::find()
        .filter(step_log::Column::TenantId.eq(tenant.as_str()))
        .filter(step_log::Column::EnrolmentId.eq(enrolment))
        .filter(step_log::Column::StepKey.eq(step))
        .filter(step_log::Column::What.eq(what))
        .order_by_desc(step_log::Column::At)
        .order_by_desc(step_log::Column::Id)
        .one(db)
        .await?
        .map(|r| r.detail))
}

/// Per step: (entered, completed, exited, converted), from the log.
pub async fn step_counts(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    campaign: &str,
) -> Result<HashMap<String, [i64; 4]>> {
    let rows: Vec<(String, String, bool, i64)> = step_log::Entity::find()
        .select_only()
        .column(step_log::Column::StepKey)
        .column(step_log::Column::What)
        .column(step_log::Column::Converted)
        .column_as(Expr::col(step_log::Column::Id).count(), "n")
        .filter(step_log::Column::TenantId.eq(tenant.as_str()))
        .filter(step_log::Column::CampaignId.eq(campaign))
        .group_by(step_log::Column::StepKey)
        .group_by(step_log::Column::What)
        .group_by(step_log::Column::Converted)
        .into_tuple()
        .all(db)
        .await?;
    let mut out: HashMap<String, [i64; 4]> = HashMap::new();
    for (step, what, converted, n) in rows {
        let c = out.entry(step).or_default();
        match what.as_str() {
            "entered" => c[0] += n,
            "completed" => c[1] += n,
            "exited" => {
                c[2] += n;
                if converted {
                    c[3] += n;
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Active enrolments per step (waiting there now).
pub async fn waiting_counts(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    campaign: &str,
) -> Result<HashMap<String, i64>> {
    let rows: Vec<(String, i64)> = enrolment::Entity::find()
        .select_only()
        .column(enrolment::Column::StepKey)
        .column_as(Expr::col(enrolment::Column::Id).count(), "n")
        .filter(enrolment::Column::TenantId.eq(tenant.as_str()))
        .filter(enrolment::Column::CampaignId.eq(campaign))
        .filter(enrolment::Column::State.eq("active"))
        .group_by(enrolment::Column::StepKey)
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows.into_iter().collect())
}

/// Enrolments by (state, converted).
pub async fn enrolment_counts(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    campaign: &str,
) -> Result<Vec<(String, bool, i64)>> {
    Ok(enrolment::Entity::find()
        .select_only()
        .column(enrolment::Column::State)
        .column(enrolment::Column::Converted)
        .column_as(Expr::col(enrolment::Column::Id).count(), "n")
        .filter(enrolment::Column::TenantId.eq(tenant.as_str()))
        .filter(enrolment::Column::CampaignId.eq(campaign))
        .group_by(enrolment::Column::State)
        .group_by(enrolment::Column::Converted)
        .into_tuple()
        .all(db)
        .await?)
}
