//! Surveys: insert, read, list, update under their version, delete, and the active surveys
//! that target a stage.

use clm_platform::filter_sql::{Field, FieldKind};
use clm_platform::{Error, Result, TenantId};
use sea_orm::sea_query::ExprTrait;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;

use crate::domain::survey::SurveyStatus;

use super::entities::{invitation, survey};
use super::{Cursor, Filter, after_cond, stale};

/// What ListSurveys' `filter` may name, and the columns it compiles to.
pub const SURVEY_FILTER: &[Field] = &[
    Field {
        name: "status",
        column: "status",
        kind: FieldKind::Enum(&[("draft", "draft"), ("active", "active"), ("closed", "closed")]),
    },
    Field {
        name: "kind",
        column: "kind",
        kind: FieldKind::Enum(&[("nps", "nps"), ("csat", "csat"), ("ces", "ces"), ("custom", "custom")]),
    },
    Field { name: "target_stage_key", column: "target_stage_key", kind: FieldKind::Text },
    Field { name: "display_name", column: "display_name", kind: FieldKind::Text },
    Field { name: "create_time", column: "create_time", kind: FieldKind::Time },
];

pub async fn insert_survey(db: &impl ConnectionTrait, tenant: &TenantId, mut row: survey::Model) -> Result<()> {
    tenant.as_str().clone_into(&mut row.tenant_id);
    survey::Entity::insert(row.into_active_model()).exec_without_returning(db).await?;
    Ok(())
}

pub async fn get_survey(db: &impl ConnectionTrait, tenant: &TenantId, id: Uuid) -> Result<survey::Model> {
    survey::Entity::find()
        .filter(survey::Column::TenantId.eq(tenant.as_str()))
        .filter(survey::Column::Id.eq(id.to_string()))
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("survey", id.to_string()))
}

pub async fn list_surveys(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    filter: Filter,
    after: Option<&Cursor>,
    limit: u64,
) -> Result<(Vec<survey::Model>, Option<Cursor>)> {
    let mut q = survey::Entity::find().filter(survey::Column::TenantId.eq(tenant.as_str()));
    if let Some(c) = filter.0 {
        q = q.filter(c);
    }
    if let Some(c) = after_cond(survey::Column::CreateTime, survey::Column::Id, after, false) {
        q = q.filter(c);
    }
    let rows =
        q.order_by_asc(survey::Column::CreateTime).order_by_asc(survey::Column::Id).limit(limit + 1).all(db).await?;
    Ok(clm_platform::pagination::split_page(rows, limit, |m| (m.create_time, m.id.clone())))
}

/// Write `row` if the stored version is still `expected` (optimistic concurrency).
pub async fn update_survey(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    mut row: survey::Model,
    expected: i64,
) -> Result<()> {
    tenant.as_str().clone_into(&mut row.tenant_id);
    let n = survey::Entity::update_many()
        .set(row.clone().into_active_model().reset_all())
        .filter(survey::Column::TenantId.eq(tenant.as_str()))
        .filter(survey::Column::Id.eq(row.id.clone()))
        .filter(survey::Column::Version.eq(expected))
        .exec(db)
        .await?
        .rows_affected;
    if n == 1 { Ok(()) } else { Err(stale("survey")) }
}

pub async fn delete_survey(db: &impl ConnectionTrait, tenant: &TenantId, id: Uuid, expected: i64) -> Result<()> {
    let n = survey::Entity::delete_many()
        .filter(survey::Column::TenantId.eq(tenant.as_str()))
        .filter(survey::Column::Id.eq(id.to_string()))
        .filter(survey::Column::Version.eq(expected))
        .exec(db)
        .await?
        .rows_affected;
    if n != 1 {
        return Err(stale("survey"));
    }
    invitation::Entity::delete_many()
        .filter(invitation::Column::TenantId.eq(tenant.as_str()))
        .filter(invitation::Column::SurveyId.eq(id.to_string()))
        .exec(db)
        .await?;
    Ok(())
}

/// Active surveys that a contact entering `stage` of `model` should receive (a survey with no
/// target model targets the stage key in any model).
pub async fn surveys_for_stage(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    stage: &str,
    model: &str,
) -> Result<Vec<survey::Model>> {
    Ok(survey::Entity::find()
        .filter(survey::Column::TenantId.eq(tenant.as_str()))
        .filter(survey::Column::TargetStageKey.eq(stage))
        .filter(survey::Column::Status.eq(SurveyStatus::Active.key()))
        .filter(survey::Column::TargetModelId.eq("").or(survey::Column::TargetModelId.eq(model)))
        .order_by_asc(survey::Column::CreateTime)
        .all(db)
        .await?)
}
