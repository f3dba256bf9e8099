//! Automations, the jobs they are owed (`automation_jobs`) and their run log.

use clm_platform::{Error, Result, TenantId};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use uuid::Uuid;

use super::entities::{automation, automation_job, automation_run};

/// Enabled automations of a tenant's model.
pub async fn enabled(db: &impl ConnectionTrait, tenant: &TenantId, model: Uuid) -> Result<Vec<automation::Model>> {
    Ok(automation::Entity::find()
        .filter(automation::Column::TenantId.eq(tenant.as_str()))
        .filter(automation::Column::Enabled.eq(true))
        .filter(automation::Column::ModelId.eq(model.to_string()))
        .all(db)
        .await?)
}

/// Whether `automation` ran for `contact` after `since`.
pub async fn ran_since(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    automation: &str,
    contact: Uuid,
    since: i64,
) -> Result<bool> {
    Ok(automation_run::Entity::find()
        .filter(automation_run::Column::TenantId.eq(tenant.as_str()))
        .filter(automation_run::Column::AutomationId.eq(automation))
        .filter(automation_run::Column::ContactId.eq(contact.to_string()))
        .filter(automation_run::Column::RunTime.gt(since))
        .count(db)
        .await?
        > 0)
}

pub async fn log_run(db: &impl ConnectionTrait, run: automation_run::ActiveModel) -> Result<()> {
    automation_run::Entity::insert(run).exec_without_returning(db).await?;
    Ok(())
}

pub async fn find(db: &impl ConnectionTrait, tenant: &TenantId, id: Uuid) -> Result<automation::Model> {
    automation::Entity::find()
        .filter(automation::Column::TenantId.eq(tenant.as_str()))
        .filter(automation::Column::Id.eq(id.to_string()))
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("automation", id.to_string()))
}

pub async fn count(db: &impl ConnectionTrait, tenant: &TenantId) -> Result<u64> {
    Ok(automation::Entity::find().filter(automation::Column::TenantId.eq(tenant.as_str())).count(db).await?)
}

pub async fn insert(db: &impl ConnectionTrait, row: automation::Model) -> Result<()> {
    automation::Entity::insert(row.into_active_model()).exec_without_returning(db).await?;
    Ok(())
}

/// Write `row` if the stored version is still `expected_version` (else ABORTED).
pub async fn update(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    row: &automation::Model,
    expected_version: i64,
) -> Result<()> {
    let res = automation::Entity::update_many()
        .col_expr(automation::Column::DisplayName, Expr::val(row.display_name.clone()))
        .col_expr(automation::Column::Enabled, Expr::val(row.enabled))
        .col_expr(automation::Column::Body, Expr::val(row.body.clone()))
        .col_expr(automation::Column::Version, Expr::val(row.version))
        .col_expr(automation::Column::UpdateTime, Expr::val(row.update_time))
        .filter(automation::Column::TenantId.eq(tenant.as_str()))
        .filter(automation::Column::Id.eq(row.id.clone()))
        .filter(automation::Column::Version.eq(expected_version))
        .exec(db)
        .await?;
    if res.rows_affected == 1 {
        Ok(())
    } else {
        Err(Error::Aborted("the automation changed; re-read and retry".into()))
    }
}

pub async fn delete(db: &impl ConnectionTrait, tenant: &TenantId, id: &str) -> Result<()> {
    automation::Entity::delete_many()
        .filter(automation::Column::TenantId.eq(tenant.as_str()))
        .filter(automation::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// A page of automations, oldest first, after `(create_time, id)`.
pub async fn list(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    after: Option<&(i64, String)>,
    limit: u64,
) -> Result<(Vec<automation::Model>, Option<(i64, String)>)> {
    let mut q = automation::Entity::find().filter(automation::Column::TenantId.eq(tenant.as_str()));
    if let Some((t, id)) = after {
        q = q.filter(Expr::col(automation::Column::CreateTime).gt(*t).or(
            Expr::col(automation::Column::CreateTime).eq(*t).and(Expr::col(automation::Column::Id).gt(id.clone())),
        ));
    }
    let rows = q
        .order_by_asc(automation::Column::CreateTime)
        .order_by_asc(automation::Column::Id)
        .limit(limit + 1)
        .all(db)
        .await?;
    Ok(clm_platform::pagination::split_page(rows, limit, |m| (m.create_time, m.id.clone())))
}

/// A page of runs, newest first, after `(run_time, id)`.
pub async fn list_runs(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    automation: Option<Uuid>,
    contact: Option<Uuid>,
    after: Option<&(i64, String)>,
    limit: u64,
) -> Result<(Vec<automation_run::Model>, Option<(i64, String)>)> {
    let mut q = automation_run::Entity::find().filter(automation_run::Column::TenantId.eq(tenant.as_str()));
    if let Some(a) = automation {
        q = q.filter(automation_run::Column::AutomationId.eq(a.to_string()));
    }
    if let Some(c) = contact {
        q = q.filter(automation_run::Column::ContactId.eq(c.to_string()));
    }
    if let Some((t, id)) = after {
        q = q.filter(Expr::col(automation_run::Column::RunTime).lt(*t).or(
            Expr::col(automation_run::Column::RunTime).eq(*t).and(Expr::col(automation_run::Column::Id).lt(id.clone())),
        ));
    }
    let rows = q
        .order_by_desc(automation_run::Column::RunTime)
        .order_by_desc(automation_run::Column::Id)
        .limit(limit + 1)
        .all(db)
        .await?;
    Ok(clm_platform::pagination::split_page(rows, limit, |m| (m.run_time, m.id.clone())))
}

/// A run-log row.
pub fn run_row(
    tenant: &TenantId,
    automation: &str,
    contact: Uuid,
    trigger_ref: &str,
    outcome: &str,
    message: &str,
) -> automation_run::ActiveModel {
    automation_run::ActiveModel {
        id: ActiveValue::Set(Uuid::now_v7().to_string()),
        tenant_id: ActiveValue::Set(tenant.as_str().to_owned()),
        automation_id: ActiveValue::Set(automation.to_owned()),
        contact_id: ActiveValue::Set(contact.to_string()),
        trigger_ref: ActiveValue::Set(trigger_ref.to_owned()),
        run_time: ActiveValue::Set(super::now_micros()),
        outcome: ActiveValue::Set(outcome.to_owned()),
        message: ActiveValue::Set(message.to_owned()),
    }
}

// ---- jobs: automations owed, run after the change that fired them commits ----

pub async fn enqueue(db: &impl ConnectionTrait, job: automation_job::Model) -> Result<()> {
    automation_job::Entity::insert(job.into_active_model()).exec_without_returning(db).await?;
    Ok(())
}

/// The jobs owed to one contact, oldest first.
pub async fn jobs_of(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    contact: Uuid,
) -> Result<Vec<automation_job::Model>> {
    Ok(automation_job::Entity::find()
        .filter(automation_job::Column::TenantId.eq(tenant.as_str()))
        .filter(automation_job::Column::ContactId.eq(contact.to_string()))
        .order_by_asc(automation_job::Column::Id)
        .all(db)
        .await?)
}

/// The oldest jobs of any tenant (for the background runner).
pub async fn oldest_jobs(db: &impl ConnectionTrait, limit: u64) -> Result<Vec<automation_job::Model>> {
    Ok(automation_job::Entity::find().order_by_asc(automation_job::Column::Id).limit(limit).all(db).await?)
}

/// Take a job: whoever deletes it runs it (a second runner of the same job finds nothing).
pub async fn claim(db: &impl ConnectionTrait, tenant: &TenantId, id: &str) -> Result<bool> {
    let res = automation_job::Entity::delete_many()
        .filter(automation_job::Column::TenantId.eq(tenant.as_str()))
        .filter(automation_job::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// Forget the jobs of a contact (erased or merged away).
pub async fn drop_jobs(db: &impl ConnectionTrait, tenant: &TenantId, contact: &str) -> Result<()> {
    automation_job::Entity::delete_many()
        .filter(automation_job::Column::TenantId.eq(tenant.as_str()))
        .filter(automation_job::Column::ContactId.eq(contact))
        .exec(db)
        .await?;
    Ok(())
}
