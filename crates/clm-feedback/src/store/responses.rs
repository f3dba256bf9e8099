//! Responses: insert (submitted or imported), find imported ones by external id, update under their version, read, list, and the rows results count.

use std::collections::HashMap;

use clm_platform::filter_sql::{Field, FieldKind};
use clm_platform::{Error, Result, TenantId};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use uuid::Uuid;

use super::entities::response;
use super::{Cursor, Filter, after_cond, stale};

const BANDS: &[(&str, &str)] = &[
    ("promoter", "promoter"),
    ("passive", "passive"),
    ("detractor", "detractor"),
    ("satisfied", "satisfied"),
    ("neutral", "neutral"),
    ("unsatisfied", "unsatisfied"),
    ("low_effort", "low_effort"),
    ("medium_effort", "medium_effort"),
    ("high_effort", "high_effort"),
];

/// What ListResponses' `filter` may name, and the columns it compiles to.
pub const RESPONSE_FILTER: &[Field] = &[
    Field { name: "survey_id", column: "survey_id", kind: FieldKind::Text },
    Field { name: "contact_id", column: "contact_id", kind: FieldKind::Text },
    Field { name: "create_time", column: "create_time", kind: FieldKind::Time },
    Field { name: "complete_time", column: "complete_time", kind: FieldKind::Time },
    Field { name: "band", column: "band", kind: FieldKind::Enum(BANDS) },
    Field { name: "score", column: "score", kind: FieldKind::Int },
    Field { name: "complete", column: "complete", kind: FieldKind::Bool },
    Field { name: "stage_key", column: "stage_key", kind: FieldKind::Text },
];

pub async fn insert_response(db: &impl ConnectionTrait, tenant: &TenantId, mut row: response::Model) -> Result<()> {
    tenant.as_str().clone_into(&mut row.tenant_id);
    response::Entity::insert(row.into_active_model()).exec_without_returning(db).await.map_err(|e| {
        if matches!(e.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_))) {
            Error::Aborted(
                "a concurrent response to this invitation (or import of this external_id) is being saved; retry".into(),
            )
        } else {
            e.into()
        }
    })?;
    Ok(())
}

/// Which of `external_ids` were already imported into survey `survey_id`: external id →
/// the id of the response stored for it.
pub async fn imported_responses(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    survey_id: Uuid,
    external_ids: &[String],
) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for chunk in external_ids.chunks(500) {
        let rows = response::Entity::find()
            .filter(response::Column::TenantId.eq(tenant.as_str()))
            .filter(response::Column::SurveyId.eq(survey_id.to_string()))
            .filter(response::Column::ExternalId.is_in(chunk.iter().cloned()))
            .all(db)
            .await?;
        out.extend(rows.into_iter().filter_map(|r| Some((r.external_id?, r.id))));
    }
    Ok(out)
}

pub async fn update_response(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    mut row: response::Model,
    expected: i64,
) -> Result<()> {
    tenant.as_str().clone_into(&mut row.tenant_id);
    let n = response::Entity::update_many()
        .set(row.clone().into_active_model().reset_all())
        .filter(response::Column::TenantId.eq(tenant.as_str()))
        .filter(response::Column::Id.eq(row.id.clone()))
        .filter(response::Column::Version.eq(expected))
        .exec(db)
        .await?
        .rows_affected;
    if n == 1 { Ok(()) } else { Err(stale("response")) }
}

/// How many responses (partial or complete) a survey has.
pub async fn response_count(db: &impl ConnectionTrait, tenant: &TenantId, survey_id: Uuid) -> Result<u64> {
    Ok(response::Entity::find()
        .filter(response::Column::TenantId.eq(tenant.as_str()))
        .filter(response::Column::SurveyId.eq(survey_id.to_string()))
        .count(db)
        .await?)
}

pub async fn get_response(db: &impl ConnectionTrait, tenant: &TenantId, id: Uuid) -> Result<response::Model> {
    response::Entity::find()
        .filter(response::Column::TenantId.eq(tenant.as_str()))
        .filter(response::Column::Id.eq(id.to_string()))
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("response", id.to_string()))
}

pub async fn response_of_invitation(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    invitation_id: &str,
) -> Result<Option<response::Model>> {
    Ok(response::Entity::find()
        .filter(response::Column::TenantId.eq(tenant.as_str()))
        .filter(response::Column::InvitationId.eq(invitation_id))
        .one(db)
        .await?)
}

pub async fn list_responses(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    filter: Filter,
    after: Option<&Cursor>,
    limit: u64,
) -> Result<(Vec<response::Model>, Option<Cursor>)> {
    let mut q = response::Entity::find().filter(response::Column::TenantId.eq(tenant.as_str()));
    if let Some(c) = filter.0 {
        q = q.filter(c);
    }
    if let Some(c) = after_cond(response::Column::CreateTime, response::Column::Id, after, true) {
        q = q.filter(c);
    }
    let rows = q
        .order_by_desc(response::Column::CreateTime)
        .order_by_desc(response::Column::Id)
        .limit(limit + 1)
        .all(db)
        .await?;
    Ok(clm_platform::pagination::split_page(rows, limit, |m| (m.create_time, m.id.clone())))
}

/// One complete, scored or not, response as results need it.
#[derive(Debug, Clone, sea_orm::FromQueryResult)]
pub struct ResultRow {
    pub contact_id: String,
    pub invitation_id: Option<String>,
    pub score: Option<i32>,
    pub stage_key: String,
    pub complete_time: Option<i64>,
}

/// Complete responses of a survey completed in [start, end).
pub async fn result_rows(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    survey_id: Uuid,
    start: i64,
    end: i64,
) -> Result<Vec<ResultRow>> {
    Ok(response::Entity::find()
        .select_only()
        .column(response::Column::ContactId)
        .column(response::Column::InvitationId)
        .column(response::Column::Score)
        .column(response::Column::StageKey)
        .column(response::Column::CompleteTime)
        .filter(response::Column::TenantId.eq(tenant.as_str()))
        .filter(response::Column::SurveyId.eq(survey_id.to_string()))
        .filter(response::Column::Complete.eq(true))
        .filter(response::Column::CompleteTime.gte(start))
        .filter(response::Column::CompleteTime.lt(end))
        .into_model::<ResultRow>()
        .all(db)
        .await?)
}
