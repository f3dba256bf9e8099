//! The feedback service's own schema and queries. Every function takes the tenant.

pub mod entities;
pub mod migrations;

use clm_platform::{Error, Result, TenantId};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, SimpleExpr};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use uuid::Uuid;

use entities::{contact_ask, contact_stage, follow_up, invitation, response, review, settings, survey};

pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

pub const DAY_MICROS: i64 = 86_400_000_000;
/// Defaults of a tenant's settings.
pub const DEFAULT_THROTTLE: i64 = 30 * DAY_MICROS;
pub const DEFAULT_TTL: i64 = 14 * DAY_MICROS;
/// CES scores up to this open a follow-up: 1-3, the difficult end (1 = very difficult … 7 = very
/// easy).
pub const DEFAULT_CES_THRESHOLD: i32 = 3;

/// A page cursor: (time, id).
pub type Cursor = (i64, String);

/// Keyset condition for rows after `after` in (time, id) order.
fn after_cond<C: ColumnTrait>(time: C, id: C, after: Option<&Cursor>, desc: bool) -> Option<SimpleExpr> {
    let (t, i) = after?;
    Some(if desc {
        Expr::col(time).lt(*t).or(Expr::col(time).eq(*t).and(Expr::col(id).lt(i.clone())))
    } else {
        Expr::col(time).gt(*t).or(Expr::col(time).eq(*t).and(Expr::col(id).gt(i.clone())))
    })
}

fn stale(what: &str) -> Error {
    Error::Aborted(format!("the {what} changed concurrently; read it again and retry with its new etag"))
}

// ---- surveys ----

pub async fn insert_survey(db: &impl ConnectionTrait, row: survey::Model) -> Result<()> {
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
    cond: Option<SimpleExpr>,
    after: Option<&Cursor>,
    limit: u64,
) -> Result<(Vec<survey::Model>, Option<Cursor>)> {
    let mut q = survey::Entity::find().filter(survey::Column::TenantId.eq(tenant.as_str()));
    if let Some(c) = cond {
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
pub async fn update_survey(db: &impl ConnectionTrait, row: survey::Model, expected: i64) -> Result<()> {
    let n = survey::Entity::update_many()
        .set(row.clone().into_active_model().reset_all())
        .filter(survey::Column::TenantId.eq(row.tenant_id.clone()))
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

pub async fn response_count(db: &impl ConnectionTrait, tenant: &TenantId, survey_id: Uuid) -> Result<u64> {
    Ok(response::Entity::find()
        .filter(response::Column::TenantId.eq(tenant.as_str()))
        .filter(response::Column::SurveyId.eq(survey_id.to_string()))
        .count(db)
        .await?)
}

/// Active surveys that a contact entering `stage` of `model` should receive (a survey with no
/// target model targets the stage key in any model).
pub async fn surveys_for_stage(
    db: &impl ConnectionTrait,
    tenant: &str,
    stage: &str,
    model: &str,
) -> Result<Vec<survey::Model>> {
    Ok(survey::Entity::find()
        .filter(survey::Column::TenantId.eq(tenant))
        .filter(survey::Column::TargetStageKey.eq(stage))
        .filter(survey::Column::Status.eq("active"))
        .filter(survey::Column::TargetModelId.eq("").or(survey::Column::TargetModelId.eq(model)))
        .order_by_asc(survey::Column::CreateTime)
        .all(db)
        .await?)
}

// ---- settings ----

/// The tenant's settings, created with defaults (and a fresh token secret) on first use.
pub async fn settings(db: &impl ConnectionTrait, tenant: &TenantId) -> Result<settings::Model> {
    if let Some(s) = settings::Entity::find_by_id(tenant.as_str().to_owned()).one(db).await? {
        return Ok(s);
    }
    let secret: [u8; 32] = rand::random();
    let row = settings::Model {
        tenant_id: tenant.as_str().to_owned(),
        throttle_window: DEFAULT_THROTTLE,
        default_ttl: DEFAULT_TTL,
        ces_threshold: DEFAULT_CES_THRESHOLD,
        token_secret: base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, secret),
        version: 1,
        update_time: now_micros(),
    };
    settings::Entity::insert(row.into_active_model())
        .on_conflict(OnConflict::column(settings::Column::TenantId).do_nothing().to_owned())
        .exec_without_returning(db)
        .await?;
    settings::Entity::find_by_id(tenant.as_str().to_owned())
        .one(db)
        .await?
        .ok_or_else(|| Error::internal(anyhow::anyhow!("feedback settings vanished")))
}

pub async fn update_settings(db: &impl ConnectionTrait, row: settings::Model, expected: i64) -> Result<()> {
    let n = settings::Entity::update_many()
        .set(row.clone().into_active_model().reset_all())
        .filter(settings::Column::TenantId.eq(row.tenant_id.clone()))
        .filter(settings::Column::Version.eq(expected))
        .exec(db)
        .await?
        .rows_affected;
    if n == 1 { Ok(()) } else { Err(stale("settings")) }
}

// ---- throttling ----

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

// ---- invitations ----

pub async fn insert_invitation(db: &impl ConnectionTrait, row: invitation::Model) -> Result<()> {
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
        .filter(invitation::Column::Status.eq("pending"))
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
        .col_expr(invitation::Column::Status, Expr::value("responded"))
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
        .filter(invitation::Column::Status.ne("cancelled"))
        .count(db)
        .await?)
}

// ---- responses ----

pub async fn insert_response(db: &impl ConnectionTrait, row: response::Model) -> Result<()> {
    response::Entity::insert(row.into_active_model()).exec_without_returning(db).await.map_err(|e| {
        if matches!(e.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_))) {
            Error::Aborted("a concurrent response to this invitation is being saved; retry".into())
        } else {
            e.into()
        }
    })?;
    Ok(())
}

pub async fn update_response(db: &impl ConnectionTrait, row: response::Model, expected: i64) -> Result<()> {
    let n = response::Entity::update_many()
        .set(row.clone().into_active_model().reset_all())
        .filter(response::Column::TenantId.eq(row.tenant_id.clone()))
        .filter(response::Column::Id.eq(row.id.clone()))
        .filter(response::Column::Version.eq(expected))
        .exec(db)
        .await?
        .rows_affected;
    if n == 1 { Ok(()) } else { Err(stale("response")) }
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
    cond: Option<SimpleExpr>,
    after: Option<&Cursor>,
    limit: u64,
) -> Result<(Vec<response::Model>, Option<Cursor>)> {
    let mut q = response::Entity::find().filter(response::Column::TenantId.eq(tenant.as_str()));
    if let Some(c) = cond {
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

// ---- follow-ups ----

pub async fn insert_follow_up(db: &impl ConnectionTrait, row: follow_up::Model) -> Result<()> {
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

pub async fn update_follow_up(db: &impl ConnectionTrait, row: follow_up::Model, expected: i64) -> Result<()> {
    let n = follow_up::Entity::update_many()
        .set(row.clone().into_active_model().reset_all())
        .filter(follow_up::Column::TenantId.eq(row.tenant_id.clone()))
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
    cond: Option<SimpleExpr>,
    after: Option<&Cursor>,
    limit: u64,
) -> Result<(Vec<follow_up::Model>, Option<Cursor>)> {
    let mut q = follow_up::Entity::find().filter(follow_up::Column::TenantId.eq(tenant.as_str()));
    if let Some(c) = cond {
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

// ---- reviews ----

pub async fn insert_review(db: &impl ConnectionTrait, row: review::Model) -> Result<()> {
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

// ---- what feedback learns from other services' events ----

/// Remember the stage a contact entered in a model (later events win).
pub async fn set_stage(
    db: &impl ConnectionTrait,
    tenant: &str,
    contact: &str,
    model: &str,
    stage: &str,
    at: i64,
) -> Result<()> {
    let row = contact_stage::Model {
        tenant_id: tenant.to_owned(),
        contact_id: contact.to_owned(),
        model_id: model.to_owned(),
        stage_key: stage.to_owned(),
        enter_time: at,
    };
    if let Some(existing) =
        contact_stage::Entity::find_by_id((tenant.to_owned(), contact.to_owned(), model.to_owned())).one(db).await?
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
    tenant: &str,
    contact: &str,
    model: &str,
    stage: &str,
    at: i64,
    from_stage: &str,
    from_enter: Option<i64>,
) -> Result<()> {
    let Some(existing) =
        contact_stage::Entity::find_by_id((tenant.to_owned(), contact.to_owned(), model.to_owned())).one(db).await?
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
            contact_stage::Entity::delete_by_id((tenant.to_owned(), contact.to_owned(), model.to_owned()))
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

/// Erasure: keep what the numbers need (scores, counts), drop what a person wrote or could be
/// identified by: free-text and choice answers, follow-up notes, review texts and links;
/// pending invitations are cancelled.
pub async fn erase_contact(db: &impl ConnectionTrait, tenant: &str, contact: &str) -> Result<()> {
    invitation::Entity::update_many()
        .col_expr(invitation::Column::Status, Expr::value("cancelled"))
        .filter(invitation::Column::TenantId.eq(tenant))
        .filter(invitation::Column::ContactId.eq(contact))
        .filter(invitation::Column::Status.eq("pending"))
        .exec(db)
        .await?;
    let rows = response::Entity::find()
        .filter(response::Column::TenantId.eq(tenant))
        .filter(response::Column::ContactId.eq(contact))
        .all(db)
        .await?;
    for r in rows {
        let answers: std::collections::HashMap<String, crate::domain::survey::Value> =
            serde_json::from_str(&r.answers).unwrap_or_default();
        let kept: std::collections::HashMap<_, _> =
            answers.into_iter().filter(|(_, v)| matches!(v, crate::domain::survey::Value::Rating(_))).collect();
        let mut row = r.clone();
        row.answers = serde_json::to_string(&kept).expect("answers serialize");
        row.version += 1;
        response::Entity::update(row.into_active_model().reset_all()).exec(db).await?;
    }
    follow_up::Entity::update_many()
        .col_expr(follow_up::Column::Note, Expr::value(""))
        .filter(follow_up::Column::TenantId.eq(tenant))
        .filter(follow_up::Column::ContactId.eq(contact))
        .exec(db)
        .await?;
    review::Entity::update_many()
        .col_expr(review::Column::Text, Expr::value(""))
        .col_expr(review::Column::Url, Expr::value(""))
        .filter(review::Column::TenantId.eq(tenant))
        .filter(review::Column::ContactId.eq(contact))
        .exec(db)
        .await?;
    Ok(())
}

/// Merge: what belonged to `merged` now belongs to `survivor`.
pub async fn reassign_contact(db: &impl ConnectionTrait, tenant: &str, merged: &str, survivor: &str) -> Result<()> {
    macro_rules! repoint {
        ($m:ident) => {
            $m::Entity::update_many()
                .col_expr($m::Column::ContactId, Expr::value(survivor))
                .filter($m::Column::TenantId.eq(tenant))
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
        .filter(contact_ask::Column::TenantId.eq(tenant))
        .filter(contact_ask::Column::ContactId.eq(merged))
        .exec(db)
        .await?;
    contact_stage::Entity::delete_many()
        .filter(contact_stage::Column::TenantId.eq(tenant))
        .filter(contact_stage::Column::ContactId.eq(merged))
        .exec(db)
        .await?;
    Ok(())
}
