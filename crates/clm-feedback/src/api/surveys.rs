//! Surveys: CreateSurvey, GetSurvey, ListSurveys, UpdateSurvey, DeleteSurvey. The rules of what
//! a survey's responses freeze (its questions, its way back to draft, its deletion) are in
//! `domain::survey`.

use clm_platform::convert::{duration_micros, uuid};
use clm_platform::{Error, TenantId, Violations, idempotency};
use clm_proto::feedback::v1 as pb;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::{kind_from_pb, load_questions, questions_from_pb, status_from_pb, store_questions, survey_pb};
use super::request::{MAX_NAME, check_etag, extend, filter, limit, mask_paths, set_fields, text};
use super::{FeedbackApi, ctx};
use crate::domain::survey::{self, Kind, Questions, SurveyStatus};
use crate::domain::values::{InvitationTtl, Recurrence, Reminders, StageKey};
use crate::store::entities::survey as survey_row;
use crate::store::{self, now_micros};

/// The survey `id` if it takes invitations (it is active).
pub(super) async fn active_survey(api: &FeedbackApi, tenant: &TenantId, id: Uuid) -> Result<survey_row::Model, Error> {
    let s = store::get_survey(&api.db, tenant, id).await?;
    // A stored status is one of the keys; anything else takes nothing, like a closed survey.
    SurveyStatus::from_key(&s.status).unwrap_or(SurveyStatus::Closed).check_invitable(id)?;
    Ok(s)
}

/// The questions of survey `survey_id`, when it exists and they are readable.
pub(super) async fn survey_questions(api: &FeedbackApi, tenant: &TenantId, survey_id: &str) -> Option<Questions> {
    let id = Uuid::parse_str(survey_id).ok()?;
    let s = store::get_survey(&api.db, tenant, id).await.ok()?;
    load_questions(&s).ok().map(|(q, _)| q)
}

/// A survey's invitation TTL field: unset → 0 (the tenant's default applies).
fn ttl(v: &mut Violations, d: Option<&prost_types::Duration>) -> i64 {
    d.and_then(|d| v.check(InvitationTtl::parse("survey.invitation_ttl", duration_micros(d))))
        .map_or(0, InvitationTtl::micros)
}

/// A survey's message template field (a lifecycle template: feedback cannot see whether it
/// exists; lifecycle falls back to its built-in invitation if not): empty → none.
fn message_template(v: &mut Violations, raw: &str) -> String {
    if raw.is_empty() {
        return String::new();
    }
    v.check(uuid("survey.message_template_id", raw)).map(|u| u.to_string()).unwrap_or_default()
}

/// A survey's reminder fields: unset delay → none.
fn reminders(v: &mut Violations, after: Option<&prost_types::Duration>, max: i32) -> Reminders {
    let after = after.map_or(Some(0), duration_micros);
    match Reminders::parse("survey.reminder_after", after, "survey.max_reminders", max) {
        Ok(r) => r,
        Err(e) => {
            extend(v, e);
            Reminders::default()
        }
    }
}

/// A survey's recurrence field: unset → one-off.
fn recurrence(v: &mut Violations, d: Option<&prost_types::Duration>) -> i64 {
    d.and_then(|d| v.check(Recurrence::parse("survey.recurrence", duration_micros(d)))).map_or(0, Recurrence::micros)
}

/// A survey's target model field: empty → none; stored as the canonical UUID.
fn target_model(v: &mut Violations, raw: &str) -> String {
    if raw.is_empty() {
        return String::new();
    }
    v.check(uuid("survey.target_model_id", raw)).map(|u| u.to_string()).unwrap_or_default()
}

/// A survey's target stage field: empty → none.
fn target_stage(v: &mut Violations, raw: &str) -> String {
    v.check(StageKey::parse_optional("survey.target_stage_key", raw))
        .flatten()
        .map(|k| k.as_str().to_owned())
        .unwrap_or_default()
}

pub async fn create(
    api: &FeedbackApi,
    req: Request<pb::CreateSurveyRequest>,
) -> Result<Response<pb::CreateSurveyResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let mut v = Violations::new();
    let rid = v.check(idempotency::check(&req.request_id)).flatten();
    let fingerprint = idempotency::fingerprint("clm.feedback.v1.CreateSurveyRequest", &req);
    let Some(s) = req.survey else {
        return Err(Error::invalid("survey", "is required").into());
    };
    let name = text(&mut v, "survey.display_name", &s.display_name, MAX_NAME, true);
    let kind = kind_from_pb(s.kind);
    if kind.is_none() {
        v.add("survey.kind", "one of SURVEY_KIND_NPS, _CSAT, _CES, _CUSTOM");
    }
    let raw_qs = questions_from_pb(&s.questions, "survey.").map_err(|e| extend(&mut v, e));
    let qs = match (kind, raw_qs) {
        (Some(k), Ok(q)) => Questions::new(k, q, "survey.").map_err(|e| extend(&mut v, e)).ok(),
        _ => None,
    };
    let status = v.check(SurveyStatus::for_new("survey.status", status_from_pb(s.status)));
    let target_stage_key = target_stage(&mut v, &s.target_stage_key);
    let target_model_id = target_model(&mut v, &s.target_model_id);
    let invitation_ttl = ttl(&mut v, s.invitation_ttl.as_ref());
    let message_template_id = message_template(&mut v, &s.message_template_id);
    let reminders = reminders(&mut v, s.reminder_after.as_ref(), s.max_reminders);
    let recurrence = recurrence(&mut v, s.recurrence.as_ref());
    v.finish()?;
    if let Some(rid) = &rid
        && let Some(id) = idempotency::find(&api.db, &ctx.tenant, "CreateSurvey", rid, &fingerprint).await?
    {
        let row = store::get_survey(&api.db, &ctx.tenant, Uuid::parse_str(&id).map_err(Error::internal)?).await?;
        return Ok(Response::new(pb::CreateSurveyResponse { survey: Some(survey_pb(&row)?) }));
    }
    let (kind, qs, status) = (kind.expect("checked"), qs.expect("checked"), status.expect("checked"));
    let now = now_micros();
    let row = survey_row::Model {
        id: Uuid::now_v7().to_string(),
        tenant_id: ctx.tenant.as_str().to_owned(),
        display_name: name,
        kind: kind.key().into(),
        status: status.key().into(),
        questions: store_questions(&qs, &s.questions),
        target_stage_key,
        target_model_id,
        invitation_ttl,
        version: 1,
        create_time: now,
        update_time: now,
        message_template_id,
        reminder_after: reminders.after(),
        max_reminders: i64::from(reminders.max()),
        recurrence,
    };
    let txn = clm_platform::db::begin_write(&api.db).await?;
    store::insert_survey(&txn, &ctx.tenant, row.clone()).await?;
    if let Some(rid) = &rid {
        idempotency::record(&txn, &ctx.tenant, "CreateSurvey", rid, &fingerprint, &row.id).await?;
    }
    txn.commit().await.map_err(Error::from)?;
    Ok(Response::new(pb::CreateSurveyResponse { survey: Some(survey_pb(&row)?) }))
}

pub async fn get(
    api: &FeedbackApi,
    req: Request<pb::GetSurveyRequest>,
) -> Result<Response<pb::GetSurveyResponse>, Status> {
    let ctx = ctx(&req)?;
    let id = uuid("id", &req.get_ref().id).map_err(|fv| Error::InvalidArgument(vec![fv]))?;
    let row = store::get_survey(&api.db, &ctx.tenant, id).await?;
    Ok(Response::new(pb::GetSurveyResponse { survey: Some(survey_pb(&row)?) }))
}

pub async fn list(
    api: &FeedbackApi,
    req: Request<pb::ListSurveysRequest>,
) -> Result<Response<pb::ListSurveysResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let mut v = Violations::new();
    let n = limit(&mut v, req.page_size);
    let cond = filter(&mut v, &req.filter, store::SURVEY_FILTER);
    v.finish()?;
    let fp = format!("surveys|{}", req.filter);
    let after: Option<store::Cursor> = api.tokens.decode(&req.page_token, &ctx.tenant, &fp)?;
    let (rows, next) = store::list_surveys(&api.db, &ctx.tenant, cond, after.as_ref(), n).await?;
    Ok(Response::new(pb::ListSurveysResponse {
        surveys: rows.iter().map(survey_pb).collect::<Result<_, _>>()?,
        next_page_token: next.map(|c| api.tokens.encode(&ctx.tenant, &fp, &c)).unwrap_or_default(),
    }))
}

pub async fn update(
    api: &FeedbackApi,
    req: Request<pb::UpdateSurveyRequest>,
) -> Result<Response<pb::UpdateSurveyResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let Some(s) = req.survey else {
        return Err(Error::invalid("survey", "is required").into());
    };
    let id = uuid("survey.id", &s.id).map_err(|fv| Error::InvalidArgument(vec![fv]))?;
    let set = set_fields(&[
        ("display_name", !s.display_name.is_empty()),
        ("questions", !s.questions.is_empty()),
        ("status", s.status != 0),
        ("target_stage_key", !s.target_stage_key.is_empty()),
        ("target_model_id", !s.target_model_id.is_empty()),
        ("invitation_ttl", s.invitation_ttl.is_some()),
        ("message_template_id", !s.message_template_id.is_empty()),
        ("reminder_after", s.reminder_after.is_some()),
        ("max_reminders", s.max_reminders != 0),
        ("recurrence", s.recurrence.is_some()),
    ]);
    let paths = mask_paths(
        req.update_mask.as_ref(),
        &[
            "display_name",
            "questions",
            "status",
            "target_stage_key",
            "target_model_id",
            "invitation_ttl",
            "message_template_id",
            "reminder_after",
            "max_reminders",
            "recurrence",
        ],
        &set,
    )?;
    let txn = clm_platform::db::begin_write(&api.db).await?;
    let old = store::get_survey(&txn, &ctx.tenant, id).await?;
    check_etag("survey.etag", &s.etag, old.version)?;
    let mut row = old.clone();
    let mut v = Violations::new();
    let has_responses = store::response_count(&txn, &ctx.tenant, id).await? > 0;
    for p in &paths {
        match p.as_str() {
            "display_name" => {
                row.display_name = text(&mut v, "survey.display_name", &s.display_name, MAX_NAME, true);
            }
            "questions" => {
                let kind = Kind::from_key(&old.kind).unwrap_or(Kind::Custom);
                match questions_from_pb(&s.questions, "survey.").and_then(|q| Questions::new(kind, q, "survey.")) {
                    Ok(qs) => {
                        let new = store_questions(&qs, &s.questions);
                        survey::check_questions_change(id, &old.questions, &new, has_responses)?;
                        row.questions = new;
                    }
                    Err(e) => extend(&mut v, e),
                }
            }
            "status" => match status_from_pb(s.status) {
                Some(new) => {
                    survey::check_status_change(id, SurveyStatus::from_key(&old.status), new, has_responses)?;
                    new.key().clone_into(&mut row.status);
                }
                None => v.add("survey.status", "one of DRAFT, ACTIVE, CLOSED"),
            },
            "target_stage_key" => row.target_stage_key = target_stage(&mut v, &s.target_stage_key),
            "target_model_id" => row.target_model_id = target_model(&mut v, &s.target_model_id),
            "invitation_ttl" => row.invitation_ttl = ttl(&mut v, s.invitation_ttl.as_ref()),
            "message_template_id" => row.message_template_id = message_template(&mut v, &s.message_template_id),
            "recurrence" => row.recurrence = recurrence(&mut v, s.recurrence.as_ref()),
            _ => {}
        }
    }
    // The reminder delay and count are checked together: each as given, or as stored.
    if paths.iter().any(|p| p == "reminder_after" || p == "max_reminders") {
        let old_r = Reminders::from_stored(old.reminder_after, old.max_reminders);
        let after = if paths.iter().any(|p| p == "reminder_after") {
            s.reminder_after
        } else {
            Some(clm_platform::convert::duration(old_r.after()))
        };
        let max = if paths.iter().any(|p| p == "max_reminders") { s.max_reminders } else { old_r.max() };
        let r = reminders(&mut v, after.as_ref(), max);
        row.reminder_after = r.after();
        row.max_reminders = i64::from(r.max());
    }
    v.finish()?;
    row.version += 1;
    row.update_time = now_micros();
    store::update_survey(&txn, &ctx.tenant, row.clone(), old.version).await?;
    if row.recurrence != old.recurrence {
        store::set_recurrence(&txn, &ctx.tenant, &row.id, row.recurrence).await?;
    }
    txn.commit().await.map_err(Error::from)?;
    Ok(Response::new(pb::UpdateSurveyResponse { survey: Some(survey_pb(&row)?) }))
}

pub async fn delete(
    api: &FeedbackApi,
    req: Request<pb::DeleteSurveyRequest>,
) -> Result<Response<pb::DeleteSurveyResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let id = uuid("id", &req.id).map_err(|fv| Error::InvalidArgument(vec![fv]))?;
    let txn = clm_platform::db::begin_write(&api.db).await?;
    let old = store::get_survey(&txn, &ctx.tenant, id).await?;
    check_etag("etag", &req.etag, old.version)?;
    survey::check_delete(id, store::response_count(&txn, &ctx.tenant, id).await? > 0)?;
    store::delete_survey(&txn, &ctx.tenant, id, old.version).await?;
    txn.commit().await.map_err(Error::from)?;
    Ok(Response::new(pb::DeleteSurveyResponse {}))
}
