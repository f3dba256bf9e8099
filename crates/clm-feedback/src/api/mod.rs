//! gRPC handlers of `clm.feedback.v1.FeedbackService`: validate, call the store and the domain
//! in a transaction, publish through the outbox, map back. No SQL here.

pub mod convert;
mod results;

use std::collections::{HashMap, HashSet};

use clm_platform::contacts::ContactsClient;
use clm_platform::convert::{duration_micros, etag_version, micros, timestamp, uuid};
use clm_platform::filter_sql::{Field, FieldKind};
use clm_platform::pagination::{PageTokens, page_size};
use clm_platform::{Error, RequestContext, TenantId, Violations, idempotency};
use clm_proto::feedback::v1 as pb;
use clm_proto::feedback::v1::feedback_service_server::FeedbackService;
use sea_orm::DatabaseConnection;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::survey::{self, Band, Kind, Questions};
use crate::domain::token;
use crate::events::{Publisher, Skip, Source, invite};
use crate::store::entities::{follow_up, invitation, response, review, survey as survey_row};
use crate::store::{self, DAY_MICROS, now_micros};
use convert::{
    answer_from_pb, follow_up_pb, follow_up_status_key, invitation_pb, kind_from_pb, load_answers, load_questions,
    questions_from_pb, response_pb, review_pb, settings_pb, status_key, store_questions, survey_pb,
};

/// Longest names, notes and review texts, in characters.
const MAX_NAME: usize = 200;
const MAX_NOTE: usize = 5000;
const MAX_REVIEW_TEXT: usize = 5000;
const MAX_URL: usize = 2000;
/// Most contacts in one batch invitation list.
const MAX_BATCH: usize = 10_000;
/// Most segments one results call groups by.
const MAX_GROUP_SEGMENTS: usize = 20;
const HOUR: i64 = 3_600_000_000;

#[derive(Clone, Debug)]
pub struct FeedbackApi {
    db: DatabaseConnection,
    tokens: PageTokens,
    events: Publisher,
    contacts: ContactsClient,
}

impl FeedbackApi {
    pub fn new(db: DatabaseConnection, tokens: PageTokens, events: Publisher, contacts: ContactsClient) -> Self {
        Self { db, tokens, events, contacts }
    }
}

fn ctx<T>(req: &Request<T>) -> Result<RequestContext, Status> {
    clm_platform::auth::context(req)
}

fn limit(v: &mut Violations, raw: i32) -> u64 {
    page_size(raw).unwrap_or_else(|e| {
        if let Error::InvalidArgument(mut fv) = e {
            v.add("page_size", fv.pop().map(|f| f.description).unwrap_or_default());
        }
        0
    })
}

fn text(v: &mut Violations, field: &str, raw: &str, max: usize, required: bool) -> String {
    let t = raw.trim();
    if required && t.is_empty() {
        v.add(field, "is required");
    }
    if t.chars().count() > max {
        v.add(field, format!("at most {max} characters"));
    }
    if t.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        v.add(field, "must not contain control characters");
    }
    t.to_owned()
}

fn stage_key_ok(k: &str) -> bool {
    let mut b = k.bytes();
    k.len() <= 32
        && b.next().is_some_and(|c| c.is_ascii_lowercase())
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

/// A duration field within [min, max] µs; None when unset.
fn bounded_duration(
    v: &mut Violations,
    field: &str,
    d: Option<&prost_types::Duration>,
    min: i64,
    max: i64,
    what: &str,
) -> Option<i64> {
    let d = d?;
    match duration_micros(d) {
        Some(us) if (min..=max).contains(&us) => Some(us),
        _ => {
            v.add(field, format!("must be {what}"));
            None
        }
    }
}

/// Check an etag field against the stored version.
fn check_etag(field: &str, raw: &str, version: i64) -> Result<(), Error> {
    match etag_version(field, raw) {
        Err(fv) => Err(Error::InvalidArgument(vec![fv])),
        Ok(Some(v)) if v != version => {
            Err(Error::Aborted(format!("{field} does not match: the resource changed; read it again")))
        }
        Ok(_) => Ok(()),
    }
}

/// The update mask's paths; empty mask: the `set` fields (those given non-default values).
fn mask_paths(mask: Option<&prost_types::FieldMask>, allowed: &[&str], set: &[&str]) -> Result<Vec<String>, Error> {
    let paths: Vec<String> = match mask {
        Some(m) if !m.paths.is_empty() => m.paths.clone(),
        _ => set.iter().map(|s| (*s).to_owned()).collect(),
    };
    let mut v = Violations::new();
    for p in &paths {
        if !allowed.contains(&p.as_str()) {
            v.add("update_mask", format!("cannot update {p:?}; updatable: {}", allowed.join(", ")));
        }
    }
    if paths.is_empty() {
        v.add("update_mask", format!("name the fields to change: {}", allowed.join(", ")));
    }
    v.finish()?;
    Ok(paths)
}

const SURVEY_FIELDS: &[Field] = &[
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

const RESPONSE_FIELDS: &[Field] = &[
    Field { name: "survey_id", column: "survey_id", kind: FieldKind::Text },
    Field { name: "contact_id", column: "contact_id", kind: FieldKind::Text },
    Field { name: "create_time", column: "create_time", kind: FieldKind::Time },
    Field { name: "complete_time", column: "complete_time", kind: FieldKind::Time },
    Field { name: "band", column: "band", kind: FieldKind::Enum(BANDS) },
    Field { name: "score", column: "score", kind: FieldKind::Int },
    Field { name: "complete", column: "complete", kind: FieldKind::Bool },
    Field { name: "stage_key", column: "stage_key", kind: FieldKind::Text },
];

const FOLLOW_UP_FIELDS: &[Field] = &[
    Field {
        name: "status",
        column: "status",
        kind: FieldKind::Enum(&[("open", "open"), ("in_progress", "in_progress"), ("resolved", "resolved")]),
    },
    Field { name: "owner", column: "owner", kind: FieldKind::Text },
    Field { name: "survey_id", column: "survey_id", kind: FieldKind::Text },
    Field { name: "contact_id", column: "contact_id", kind: FieldKind::Text },
    Field { name: "reason", column: "reason", kind: FieldKind::Text },
    Field { name: "open_time", column: "open_time", kind: FieldKind::Time },
];

fn filter(v: &mut Violations, raw: &str, fields: &[Field]) -> Option<sea_orm::sea_query::SimpleExpr> {
    clm_platform::filter_sql::parse_and_compile(raw, fields).unwrap_or_else(|e| {
        v.add("filter", e);
        None
    })
}

/// The reason a completed response opens a follow-up, if it does. CES counts from the difficult
/// end (1 = very difficult … 7 = very easy): scores up to the tenant's `ces_threshold` open one.
fn follow_up_reason(kind: Kind, score: Option<i32>, ces_threshold: i32) -> Option<&'static str> {
    let score = score?;
    match kind {
        Kind::Ces if score <= ces_threshold => Some("ces_high_effort"),
        Kind::Ces => None,
        _ => Band::of(kind, score).and_then(Band::follow_up),
    }
}

fn skipped_pb(contact: Uuid, skip: &Skip) -> pb::SkippedInvitation {
    let (reason, retry) = match skip {
        Skip::Throttled(t) => (pb::SkipReason::Throttled, Some(timestamp(*t))),
        Skip::AlreadyInvited => (pb::SkipReason::AlreadyInvited, None),
        Skip::UnknownContact => (pb::SkipReason::UnknownContact, None),
    };
    pb::SkippedInvitation { contact_id: contact.to_string(), reason: reason as i32, retry_after_time: retry }
}

/// What a batch invitation produced, remembered under its request id so a retry answers the
/// same (tokens are re-derived, never stored).
#[derive(serde::Serialize, serde::Deserialize)]
struct BatchOutcome {
    invited: Vec<String>,
    skipped: Vec<(String, i32, Option<i64>)>,
}

impl FeedbackApi {
    async fn active_survey(&self, tenant: &TenantId, id: Uuid) -> Result<survey_row::Model, Error> {
        let s = store::get_survey(&self.db, tenant, id).await?;
        match s.status.as_str() {
            "active" => Ok(s),
            "draft" => Err(Error::FailedPrecondition(format!("survey {id} is a draft; activate it first"))),
            _ => {
                Err(Error::FailedPrecondition(format!("survey {id} is closed; it accepts no invitations or responses")))
            }
        }
    }

    /// Invitations with their re-derived tokens, in the order of `ids`.
    async fn invitations_with_tokens(&self, tenant: &TenantId, ids: &[String]) -> Result<Vec<pb::Invitation>, Error> {
        let settings = store::settings(&self.db, tenant).await?;
        let rows = store::invitations_by_ids(&self.db, tenant, ids).await?;
        let now = now_micros();
        Ok(ids
            .iter()
            .filter_map(|id| rows.iter().find(|r| &r.id == id))
            .map(|r| {
                let t = Uuid::parse_str(&r.id).ok().map(|u| token::issue(&settings.token_secret, tenant.as_str(), u));
                invitation_pb(r, t, now)
            })
            .collect())
    }

    async fn survey_questions(&self, tenant: &TenantId, survey_id: &str) -> Option<Questions> {
        let id = Uuid::parse_str(survey_id).ok()?;
        let s = store::get_survey(&self.db, tenant, id).await.ok()?;
        load_questions(&s).ok().map(|(q, _)| q)
    }
}

#[tonic::async_trait]
impl FeedbackService for FeedbackApi {
    async fn create_survey(
        &self,
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
        let raw_qs = questions_from_pb(&s.questions, "survey.").map_err(|e| {
            for fv in &e {
                v.add(fv.field.clone(), fv.description.clone());
            }
        });
        let qs = match (kind, raw_qs) {
            (Some(k), Ok(q)) => match Questions::new(k, q, "survey.") {
                Ok(q) => Some(q),
                Err(e) => {
                    for fv in e {
                        v.add(fv.field, fv.description);
                    }
                    None
                }
            },
            _ => None,
        };
        let status = match pb::SurveyStatus::try_from(s.status).unwrap_or_default() {
            pb::SurveyStatus::Unspecified | pb::SurveyStatus::Draft => "draft",
            pb::SurveyStatus::Active => "active",
            pb::SurveyStatus::Closed => {
                v.add("survey.status", "a new survey is DRAFT or ACTIVE");
                "draft"
            }
        };
        if !s.target_stage_key.is_empty() && !stage_key_ok(&s.target_stage_key) {
            v.add("survey.target_stage_key", "a stage key: [a-z][a-z0-9_]{0,31}");
        }
        if !s.target_model_id.is_empty() {
            v.check(uuid("survey.target_model_id", &s.target_model_id));
        }
        let ttl = bounded_duration(
            &mut v,
            "survey.invitation_ttl",
            s.invitation_ttl.as_ref(),
            HOUR,
            365 * DAY_MICROS,
            "1 hour to 365 days",
        )
        .unwrap_or(0);
        v.finish()?;
        if let Some(rid) = &rid
            && let Some(id) = idempotency::find(&self.db, &ctx.tenant, "CreateSurvey", rid, &fingerprint).await?
        {
            let row = store::get_survey(&self.db, &ctx.tenant, Uuid::parse_str(&id).map_err(Error::internal)?).await?;
            return Ok(Response::new(pb::CreateSurveyResponse { survey: Some(survey_pb(&row)?) }));
        }
        let (kind, qs) = (kind.expect("checked"), qs.expect("checked"));
        let now = now_micros();
        let row = survey_row::Model {
            id: Uuid::now_v7().to_string(),
            tenant_id: ctx.tenant.as_str().to_owned(),
            display_name: name,
            kind: kind.key().into(),
            status: status.into(),
            questions: store_questions(&qs, &s.questions),
            target_stage_key: s.target_stage_key.clone(),
            target_model_id: s.target_model_id.to_lowercase(),
            invitation_ttl: ttl,
            version: 1,
            create_time: now,
            update_time: now,
        };
        let txn = clm_platform::db::begin_write(&self.db).await?;
        store::insert_survey(&txn, row.clone()).await?;
        if let Some(rid) = &rid {
            idempotency::record(&txn, &ctx.tenant, "CreateSurvey", rid, &fingerprint, &row.id).await?;
        }
        txn.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::CreateSurveyResponse { survey: Some(survey_pb(&row)?) }))
    }

    async fn get_survey(&self, req: Request<pb::GetSurveyRequest>) -> Result<Response<pb::GetSurveyResponse>, Status> {
        let ctx = ctx(&req)?;
        let id = uuid("id", &req.get_ref().id).map_err(|fv| Error::InvalidArgument(vec![fv]))?;
        let row = store::get_survey(&self.db, &ctx.tenant, id).await?;
        Ok(Response::new(pb::GetSurveyResponse { survey: Some(survey_pb(&row)?) }))
    }

    async fn list_surveys(
        &self,
        req: Request<pb::ListSurveysRequest>,
    ) -> Result<Response<pb::ListSurveysResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        let n = limit(&mut v, req.page_size);
        let cond = filter(&mut v, &req.filter, SURVEY_FIELDS);
        v.finish()?;
        let fp = format!("surveys|{}", req.filter);
        let after: Option<store::Cursor> = self.tokens.decode(&req.page_token, &ctx.tenant, &fp)?;
        let (rows, next) = store::list_surveys(&self.db, &ctx.tenant, cond, after.as_ref(), n).await?;
        Ok(Response::new(pb::ListSurveysResponse {
            surveys: rows.iter().map(survey_pb).collect::<Result<_, _>>()?,
            next_page_token: next.map(|c| self.tokens.encode(&ctx.tenant, &fp, &c)).unwrap_or_default(),
        }))
    }

    async fn update_survey(
        &self,
        req: Request<pb::UpdateSurveyRequest>,
    ) -> Result<Response<pb::UpdateSurveyResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let Some(s) = req.survey else {
            return Err(Error::invalid("survey", "is required").into());
        };
        let id = uuid("survey.id", &s.id).map_err(|fv| Error::InvalidArgument(vec![fv]))?;
        let mut set = Vec::new();
        for (name, on) in [
            ("display_name", !s.display_name.is_empty()),
            ("questions", !s.questions.is_empty()),
            ("status", s.status != 0),
            ("target_stage_key", !s.target_stage_key.is_empty()),
            ("target_model_id", !s.target_model_id.is_empty()),
            ("invitation_ttl", s.invitation_ttl.is_some()),
        ] {
            if on {
                set.push(name);
            }
        }
        let paths = mask_paths(
            req.update_mask.as_ref(),
            &["display_name", "questions", "status", "target_stage_key", "target_model_id", "invitation_ttl"],
            &set,
        )?;
        let txn = clm_platform::db::begin_write(&self.db).await?;
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
                            if has_responses && new != old.questions {
                                return Err(Error::FailedPrecondition(format!(
                                    "survey {id} has responses; its questions cannot change (create a new survey)"
                                ))
                                .into());
                            }
                            row.questions = new;
                        }
                        Err(e) => {
                            for fv in e {
                                v.add(fv.field, fv.description);
                            }
                        }
                    }
                }
                "status" => match pb::SurveyStatus::try_from(s.status).ok().and_then(status_key) {
                    Some("draft") if old.status != "draft" && has_responses => {
                        return Err(Error::FailedPrecondition(format!(
                            "survey {id} has responses; it cannot go back to draft"
                        ))
                        .into());
                    }
                    Some(k) => k.clone_into(&mut row.status),
                    None => v.add("survey.status", "one of DRAFT, ACTIVE, CLOSED"),
                },
                "target_stage_key" => {
                    if !s.target_stage_key.is_empty() && !stage_key_ok(&s.target_stage_key) {
                        v.add("survey.target_stage_key", "a stage key: [a-z][a-z0-9_]{0,31}");
                    }
                    row.target_stage_key.clone_from(&s.target_stage_key);
                }
                "target_model_id" => {
                    if !s.target_model_id.is_empty() {
                        v.check(uuid("survey.target_model_id", &s.target_model_id));
                    }
                    row.target_model_id = s.target_model_id.to_lowercase();
                }
                "invitation_ttl" => {
                    row.invitation_ttl = bounded_duration(
                        &mut v,
                        "survey.invitation_ttl",
                        s.invitation_ttl.as_ref(),
                        HOUR,
                        365 * DAY_MICROS,
                        "1 hour to 365 days",
                    )
                    .unwrap_or(0);
                }
                _ => {}
            }
        }
        v.finish()?;
        row.version += 1;
        row.update_time = now_micros();
        store::update_survey(&txn, row.clone(), old.version).await?;
        txn.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::UpdateSurveyResponse { survey: Some(survey_pb(&row)?) }))
    }

    async fn delete_survey(
        &self,
        req: Request<pb::DeleteSurveyRequest>,
    ) -> Result<Response<pb::DeleteSurveyResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let id = uuid("id", &req.id).map_err(|fv| Error::InvalidArgument(vec![fv]))?;
        let txn = clm_platform::db::begin_write(&self.db).await?;
        let old = store::get_survey(&txn, &ctx.tenant, id).await?;
        check_etag("etag", &req.etag, old.version)?;
        if store::response_count(&txn, &ctx.tenant, id).await? > 0 {
            return Err(Error::FailedPrecondition(format!(
                "survey {id} has responses; close it instead (its results stay readable)"
            ))
            .into());
        }
        store::delete_survey(&txn, &ctx.tenant, id, old.version).await?;
        txn.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::DeleteSurveyResponse {}))
    }

    async fn create_invitation(
        &self,
        req: Request<pb::CreateInvitationRequest>,
    ) -> Result<Response<pb::CreateInvitationResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        let survey_id = v.check(uuid("survey_id", &req.survey_id));
        let contact = v.check(uuid("contact_id", &req.contact_id));
        let rid = v.check(idempotency::check(&req.request_id)).flatten();
        let fingerprint = idempotency::fingerprint("clm.feedback.v1.CreateInvitationRequest", &req);
        v.finish()?;
        let (survey_id, contact) = (survey_id.expect("checked"), contact.expect("checked"));
        if let Some(rid) = &rid
            && let Some(id) = idempotency::find(&self.db, &ctx.tenant, "CreateInvitation", rid, &fingerprint).await?
        {
            let inv = self.invitations_with_tokens(&ctx.tenant, &[id]).await?.pop();
            return Ok(Response::new(pb::CreateInvitationResponse { invitation: inv, skipped: None }));
        }
        let survey = self.active_survey(&ctx.tenant, survey_id).await?;
        if self.contacts.existing(&ctx.tenant, &[contact]).await?.is_empty() {
            return Err(Error::not_found("contact", contact.to_string()).into());
        }
        let txn = clm_platform::events::UnitOfWork::begin(&self.db).await?;
        let settings = store::settings(&txn, &ctx.tenant).await?;
        let out = invite(
            &txn,
            &self.events,
            &ctx.tenant,
            &settings,
            &survey,
            contact,
            Source::Manual,
            None,
            None,
            now_micros(),
        )
        .await?;
        let resp = match out {
            Ok((inv, t)) => {
                if let Some(rid) = &rid {
                    idempotency::record(&txn, &ctx.tenant, "CreateInvitation", rid, &fingerprint, &inv.id).await?;
                }
                pb::CreateInvitationResponse {
                    invitation: Some(invitation_pb(&inv, Some(t), now_micros())),
                    skipped: None,
                }
            }
            Err(skip) => pb::CreateInvitationResponse { invitation: None, skipped: Some(skipped_pb(contact, &skip)) },
        };
        txn.commit().await?;
        Ok(Response::new(resp))
    }

    async fn batch_create_invitations(
        &self,
        req: Request<pb::BatchCreateInvitationsRequest>,
    ) -> Result<Response<pb::BatchCreateInvitationsResponse>, Status> {
        use pb::batch_create_invitations_request::Target;
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        let survey_id = v.check(uuid("survey_id", &req.survey_id));
        let rid = v.check(idempotency::check(&req.request_id)).flatten();
        let fingerprint = idempotency::fingerprint("clm.feedback.v1.BatchCreateInvitationsRequest", &req);
        let mut listed = Vec::new();
        match &req.target {
            None => v.add("target", "one of segment_id or contacts"),
            Some(Target::SegmentId(s)) => {
                v.check(uuid("segment_id", s));
            }
            Some(Target::Contacts(list)) => {
                if list.contact_ids.is_empty() || list.contact_ids.len() > MAX_BATCH {
                    v.add("contacts.contact_ids", format!("1 to {MAX_BATCH} contact ids"));
                }
                let mut seen = HashSet::new();
                for (i, raw) in list.contact_ids.iter().enumerate() {
                    if let Some(id) = v.check(uuid(&format!("contacts.contact_ids[{i}]"), raw))
                        && seen.insert(id)
                    {
                        listed.push(id);
                    }
                }
            }
        }
        v.finish()?;
        let survey_id = survey_id.expect("checked");
        if let Some(rid) = &rid
            && let Some(raw) =
                idempotency::find(&self.db, &ctx.tenant, "BatchCreateInvitations", rid, &fingerprint).await?
        {
            let o: BatchOutcome = serde_json::from_str(&raw).map_err(Error::internal)?;
            let invitations = self.invitations_with_tokens(&ctx.tenant, &o.invited).await?;
            let skipped = o
                .skipped
                .into_iter()
                .map(|(c, r, t)| pb::SkippedInvitation { contact_id: c, reason: r, retry_after_time: t.map(timestamp) })
                .collect();
            return Ok(Response::new(pb::BatchCreateInvitationsResponse { invitations, skipped }));
        }
        let survey = self.active_survey(&ctx.tenant, survey_id).await?;
        let mut skipped = Vec::new();
        let targets = match req.target.expect("checked") {
            Target::SegmentId(s) => self.contacts.segment_members(&ctx.tenant, &s, "segment_id").await?,
            Target::Contacts(_) => {
                let existing = self.contacts.existing(&ctx.tenant, &listed).await?;
                let (known, unknown): (Vec<Uuid>, Vec<Uuid>) = listed.into_iter().partition(|c| existing.contains(c));
                skipped.extend(unknown.into_iter().map(|c| skipped_pb(c, &Skip::UnknownContact)));
                known
            }
        };
        let txn = clm_platform::events::UnitOfWork::begin(&self.db).await?;
        let settings = store::settings(&txn, &ctx.tenant).await?;
        let now = now_micros();
        let mut invitations = Vec::new();
        for contact in targets {
            match invite(&txn, &self.events, &ctx.tenant, &settings, &survey, contact, Source::Batch, None, None, now)
                .await?
            {
                Ok((inv, t)) => invitations.push(invitation_pb(&inv, Some(t), now)),
                Err(skip) => skipped.push(skipped_pb(contact, &skip)),
            }
        }
        if let Some(rid) = &rid {
            let o = BatchOutcome {
                invited: invitations.iter().map(|i| i.id.clone()).collect(),
                skipped: skipped
                    .iter()
                    .map(|s| (s.contact_id.clone(), s.reason, s.retry_after_time.as_ref().and_then(micros)))
                    .collect(),
            };
            let raw = serde_json::to_string(&o).map_err(Error::internal)?;
            idempotency::record(&txn, &ctx.tenant, "BatchCreateInvitations", rid, &fingerprint, &raw).await?;
        }
        txn.commit().await?;
        Ok(Response::new(pb::BatchCreateInvitationsResponse { invitations, skipped }))
    }

    async fn get_invitation(
        &self,
        req: Request<pb::GetInvitationRequest>,
    ) -> Result<Response<pb::GetInvitationResponse>, Status> {
        let ctx = ctx(&req)?;
        let id = uuid("id", &req.get_ref().id).map_err(|fv| Error::InvalidArgument(vec![fv]))?;
        let row = store::get_invitation(&self.db, &ctx.tenant, id).await?;
        Ok(Response::new(pb::GetInvitationResponse { invitation: Some(invitation_pb(&row, None, now_micros())) }))
    }

    async fn list_invitations(
        &self,
        req: Request<pb::ListInvitationsRequest>,
    ) -> Result<Response<pb::ListInvitationsResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        let n = limit(&mut v, req.page_size);
        let survey_id = (!req.survey_id.is_empty()).then(|| v.check(uuid("survey_id", &req.survey_id))).flatten();
        let contact = (!req.contact_id.is_empty()).then(|| v.check(uuid("contact_id", &req.contact_id))).flatten();
        v.finish()?;
        let fp = format!("invitations|{}|{}", req.survey_id, req.contact_id);
        let after: Option<store::Cursor> = self.tokens.decode(&req.page_token, &ctx.tenant, &fp)?;
        let (rows, next) =
            store::list_invitations(&self.db, &ctx.tenant, survey_id, contact, after.as_ref(), n).await?;
        let now = now_micros();
        Ok(Response::new(pb::ListInvitationsResponse {
            invitations: rows.iter().map(|r| invitation_pb(r, None, now)).collect(),
            next_page_token: next.map(|c| self.tokens.encode(&ctx.tenant, &fp, &c)).unwrap_or_default(),
        }))
    }

    #[allow(clippy::too_many_lines)]
    async fn submit_response(
        &self,
        req: Request<pb::SubmitResponseRequest>,
    ) -> Result<Response<pb::SubmitResponseResponse>, Status> {
        use pb::submit_response_request::Target;
        let ctx = ctx(&req)?;
        let tenant = ctx.tenant.clone();
        let req = req.into_inner();
        let mut v = Violations::new();
        let mut answers = Vec::new();
        for (i, a) in req.answers.iter().enumerate() {
            match answer_from_pb(a) {
                Some(val) => answers.push((a.question_id.clone(), val)),
                None => v.add(format!("answers[{i}]"), "set one of rating, choices, text"),
            }
        }
        let continue_id =
            (!req.response_id.is_empty()).then(|| v.check(uuid("response_id", &req.response_id))).flatten();
        let target = match &req.target {
            None => {
                v.add("target", "one of invitation_token or in_app");
                None
            }
            Some(Target::InvitationToken(t)) => match token::claimed_id(t) {
                Some(id) => Some((None, Some(id))),
                None => {
                    v.add("invitation_token", "is not an invitation token");
                    None
                }
            },
            Some(Target::InApp(a)) => {
                let s = v.check(uuid("in_app.survey_id", &a.survey_id));
                let c = v.check(uuid("in_app.contact_id", &a.contact_id));
                s.zip(c).map(|sc| (Some(sc), None))
            }
        };
        v.finish()?;
        if let Some((Some((_, c)), _)) = &target
            && continue_id.is_none()
            && self.contacts.existing(&tenant, &[*c]).await?.is_empty()
        {
            // In-app: the respondent must be a contact (asked where contacts live).
            return Err(Error::not_found("contact", c.to_string()).into());
        }
        let now = now_micros();
        let txn = clm_platform::events::UnitOfWork::begin(&self.db).await?;
        let settings = store::settings(&txn, &tenant).await?;
        // Who answers what, and the response being continued, if any.
        let (survey_id, contact, inv, existing) = match target.expect("checked") {
            (None, Some(inv_id)) => {
                let Some(Target::InvitationToken(raw)) = &req.target else { unreachable!("checked") };
                let inv = store::get_invitation(&txn, &tenant, inv_id).await.ok();
                let genuine = token::verify(&settings.token_secret, tenant.as_str(), raw) == Some(inv_id);
                let Some(inv) = inv.filter(|_| genuine) else {
                    return Err(Error::invalid("invitation_token", "unknown or altered invitation token").into());
                };
                let existing = store::response_of_invitation(&txn, &tenant, &inv.id).await?;
                match inv.status.as_str() {
                    "responded" => {
                        return Err(Error::AlreadyExists {
                            message: format!(
                                "invitation {} was already answered (response {}); a token is used once",
                                inv.id,
                                existing.map(|r| r.id).unwrap_or_default()
                            ),
                        }
                        .into());
                    }
                    "cancelled" => {
                        return Err(Error::FailedPrecondition(format!("invitation {} was cancelled", inv.id)).into());
                    }
                    _ if inv.expire_time <= now => {
                        return Err(Error::FailedPrecondition(format!(
                            "invitation {} expired at {}",
                            inv.id,
                            chrono::DateTime::from_timestamp_micros(inv.expire_time)
                                .map(|t| t.to_rfc3339())
                                .unwrap_or_default()
                        ))
                        .into());
                    }
                    _ => {}
                }
                if let (Some(c), Some(e)) = (continue_id, &existing)
                    && c.to_string() != e.id
                {
                    return Err(Error::invalid("response_id", "is not the response of this invitation").into());
                }
                let s = Uuid::parse_str(&inv.survey_id).map_err(Error::internal)?;
                let c = Uuid::parse_str(&inv.contact_id).map_err(Error::internal)?;
                (s, c, Some(inv), existing)
            }
            (Some((s, c)), _) => {
                let existing = match continue_id {
                    Some(rid) => {
                        let r = store::get_response(&txn, &tenant, rid).await?;
                        if r.survey_id != s.to_string() || r.contact_id != c.to_string() {
                            return Err(Error::invalid(
                                "response_id",
                                "belongs to another survey or contact than in_app names",
                            )
                            .into());
                        }
                        Some(r)
                    }
                    None => None,
                };
                (s, c, None, existing)
            }
            _ => unreachable!("checked"),
        };
        if let Some(e) = &existing
            && e.complete
        {
            return Err(Error::FailedPrecondition(format!("response {} is complete; it cannot change", e.id)).into());
        }
        let survey = store::get_survey(&txn, &tenant, survey_id).await?;
        if survey.status != "active" {
            return Err(Error::FailedPrecondition(format!(
                "survey {survey_id} is {}; only active surveys accept responses",
                survey.status
            ))
            .into());
        }
        let (qs, _) = load_questions(&survey)?;
        let previous = existing.as_ref().map(load_answers).unwrap_or_default();
        let (all, _) = survey::check_answers(&qs, &previous, &answers, "").map_err(Error::InvalidArgument)?;
        if req.complete {
            let missing = survey::missing_required(&qs, &all);
            if !missing.is_empty() {
                return Err(Error::InvalidArgument(
                    missing
                        .into_iter()
                        .map(|q| clm_platform::FieldViolation::new("answers", format!("question {q:?} is required")))
                        .collect(),
                )
                .into());
            }
        }
        let out = self
            .save_response(
                &txn,
                &tenant,
                &survey,
                &qs,
                contact,
                inv.as_ref(),
                existing,
                all,
                req.complete,
                settings.ces_threshold,
            )
            .await?;
        txn.commit().await?;
        Ok(Response::new(out))
    }

    async fn get_response(
        &self,
        req: Request<pb::GetResponseRequest>,
    ) -> Result<Response<pb::GetResponseResponse>, Status> {
        let ctx = ctx(&req)?;
        let id = uuid("id", &req.get_ref().id).map_err(|fv| Error::InvalidArgument(vec![fv]))?;
        let row = store::get_response(&self.db, &ctx.tenant, id).await?;
        let qs = self.survey_questions(&ctx.tenant, &row.survey_id).await;
        Ok(Response::new(pb::GetResponseResponse { response: Some(response_pb(&row, qs.as_ref())) }))
    }

    async fn list_responses(
        &self,
        req: Request<pb::ListResponsesRequest>,
    ) -> Result<Response<pb::ListResponsesResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        let n = limit(&mut v, req.page_size);
        let cond = filter(&mut v, &req.filter, RESPONSE_FIELDS);
        v.finish()?;
        let fp = format!("responses|{}", req.filter);
        let after: Option<store::Cursor> = self.tokens.decode(&req.page_token, &ctx.tenant, &fp)?;
        let (rows, next) = store::list_responses(&self.db, &ctx.tenant, cond, after.as_ref(), n).await?;
        let mut questions: HashMap<String, Option<Questions>> = HashMap::new();
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            if !questions.contains_key(&r.survey_id) {
                let q = self.survey_questions(&ctx.tenant, &r.survey_id).await;
                questions.insert(r.survey_id.clone(), q);
            }
            out.push(response_pb(r, questions[&r.survey_id].as_ref()));
        }
        Ok(Response::new(pb::ListResponsesResponse {
            responses: out,
            next_page_token: next.map(|c| self.tokens.encode(&ctx.tenant, &fp, &c)).unwrap_or_default(),
        }))
    }

    async fn get_survey_results(
        &self,
        req: Request<pb::GetSurveyResultsRequest>,
    ) -> Result<Response<pb::GetSurveyResultsResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        results::get(self, &ctx.tenant, req).await.map(Response::new).map_err(Into::into)
    }

    async fn list_follow_ups(
        &self,
        req: Request<pb::ListFollowUpsRequest>,
    ) -> Result<Response<pb::ListFollowUpsResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        let n = limit(&mut v, req.page_size);
        let cond = filter(&mut v, &req.filter, FOLLOW_UP_FIELDS);
        v.finish()?;
        let fp = format!("follow_ups|{}", req.filter);
        let after: Option<store::Cursor> = self.tokens.decode(&req.page_token, &ctx.tenant, &fp)?;
        let (rows, next) = store::list_follow_ups(&self.db, &ctx.tenant, cond, after.as_ref(), n).await?;
        Ok(Response::new(pb::ListFollowUpsResponse {
            follow_ups: rows.iter().map(follow_up_pb).collect(),
            next_page_token: next.map(|c| self.tokens.encode(&ctx.tenant, &fp, &c)).unwrap_or_default(),
        }))
    }

    async fn get_follow_up(
        &self,
        req: Request<pb::GetFollowUpRequest>,
    ) -> Result<Response<pb::GetFollowUpResponse>, Status> {
        let ctx = ctx(&req)?;
        let id = uuid("id", &req.get_ref().id).map_err(|fv| Error::InvalidArgument(vec![fv]))?;
        let row = store::get_follow_up(&self.db, &ctx.tenant, id).await?;
        Ok(Response::new(pb::GetFollowUpResponse { follow_up: Some(follow_up_pb(&row)) }))
    }

    async fn update_follow_up(
        &self,
        req: Request<pb::UpdateFollowUpRequest>,
    ) -> Result<Response<pb::UpdateFollowUpResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let Some(f) = req.follow_up else {
            return Err(Error::invalid("follow_up", "is required").into());
        };
        let id = uuid("follow_up.id", &f.id).map_err(|fv| Error::InvalidArgument(vec![fv]))?;
        let mut set = Vec::new();
        for (name, on) in [("status", f.status != 0), ("owner", !f.owner.is_empty()), ("note", !f.note.is_empty())] {
            if on {
                set.push(name);
            }
        }
        let paths = mask_paths(req.update_mask.as_ref(), &["status", "owner", "note"], &set)?;
        let txn = clm_platform::events::UnitOfWork::begin(&self.db).await?;
        let old = store::get_follow_up(&txn, &ctx.tenant, id).await?;
        check_etag("follow_up.etag", &f.etag, old.version)?;
        let mut row = old.clone();
        let mut v = Violations::new();
        let now = now_micros();
        for p in &paths {
            match p.as_str() {
                "status" => match pb::FollowUpStatus::try_from(f.status).ok().and_then(follow_up_status_key) {
                    Some(k) => {
                        if k == "resolved" && old.status != "resolved" {
                            row.resolve_time = Some(now);
                        } else if k != "resolved" {
                            row.resolve_time = None;
                        }
                        k.clone_into(&mut row.status);
                    }
                    None => v.add("follow_up.status", "one of OPEN, IN_PROGRESS, RESOLVED"),
                },
                "owner" => row.owner = text(&mut v, "follow_up.owner", &f.owner, MAX_NAME, false),
                "note" => row.note = text(&mut v, "follow_up.note", &f.note, MAX_NOTE, false),
                _ => {}
            }
        }
        v.finish()?;
        row.version += 1;
        store::update_follow_up(&txn, row.clone(), old.version).await?;
        if row.status == "resolved" && old.status != "resolved" {
            self.events.follow_up_closed(&txn, &ctx.tenant, &row).await?;
        }
        txn.commit().await?;
        Ok(Response::new(pb::UpdateFollowUpResponse { follow_up: Some(follow_up_pb(&row)) }))
    }

    async fn create_review(
        &self,
        req: Request<pb::CreateReviewRequest>,
    ) -> Result<Response<pb::CreateReviewResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        let rid = v.check(idempotency::check(&req.request_id)).flatten();
        let fingerprint = idempotency::fingerprint("clm.feedback.v1.CreateReviewRequest", &req);
        let Some(r) = req.review else {
            return Err(Error::invalid("review", "is required").into());
        };
        let contact = v.check(uuid("review.contact_id", &r.contact_id));
        if !(1..=5).contains(&r.rating) {
            v.add("review.rating", "must be 1 to 5");
        }
        let body = text(&mut v, "review.text", &r.text, MAX_REVIEW_TEXT, false);
        let platform = text(&mut v, "review.platform", &r.platform, 100, false).to_lowercase();
        let url = text(&mut v, "review.url", &r.url, MAX_URL, false);
        if !(url.is_empty() || url.starts_with("https://") || url.starts_with("http://")) {
            v.add("review.url", "must be an http(s) URL");
        }
        v.finish()?;
        let contact = contact.expect("checked");
        if let Some(rid) = &rid
            && let Some(id) = idempotency::find(&self.db, &ctx.tenant, "CreateReview", rid, &fingerprint).await?
            && let Some(row) = store::get_review(&self.db, &ctx.tenant, &id).await?
        {
            return Ok(Response::new(pb::CreateReviewResponse { review: Some(review_pb(&row)) }));
        }
        if self.contacts.existing(&ctx.tenant, &[contact]).await?.is_empty() {
            return Err(Error::not_found("contact", contact.to_string()).into());
        }
        let row = review::Model {
            id: Uuid::now_v7().to_string(),
            tenant_id: ctx.tenant.as_str().to_owned(),
            contact_id: contact.to_string(),
            rating: r.rating,
            text: body,
            platform,
            url,
            create_time: now_micros(),
        };
        let txn = clm_platform::events::UnitOfWork::begin(&self.db).await?;
        store::insert_review(&txn, row.clone()).await?;
        self.events.review_recorded(&txn, &ctx.tenant, &row).await?;
        if let Some(rid) = &rid {
            idempotency::record(&txn, &ctx.tenant, "CreateReview", rid, &fingerprint, &row.id).await?;
        }
        txn.commit().await?;
        Ok(Response::new(pb::CreateReviewResponse { review: Some(review_pb(&row)) }))
    }

    async fn list_reviews(
        &self,
        req: Request<pb::ListReviewsRequest>,
    ) -> Result<Response<pb::ListReviewsResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        let n = limit(&mut v, req.page_size);
        let contact = (!req.contact_id.is_empty()).then(|| v.check(uuid("contact_id", &req.contact_id))).flatten();
        v.finish()?;
        let fp = format!("reviews|{}", req.contact_id);
        let after: Option<store::Cursor> = self.tokens.decode(&req.page_token, &ctx.tenant, &fp)?;
        let (rows, next) = store::list_reviews(&self.db, &ctx.tenant, contact, after.as_ref(), n).await?;
        Ok(Response::new(pb::ListReviewsResponse {
            reviews: rows.iter().map(review_pb).collect(),
            next_page_token: next.map(|c| self.tokens.encode(&ctx.tenant, &fp, &c)).unwrap_or_default(),
        }))
    }

    async fn get_feedback_settings(
        &self,
        req: Request<pb::GetFeedbackSettingsRequest>,
    ) -> Result<Response<pb::GetFeedbackSettingsResponse>, Status> {
        let ctx = ctx(&req)?;
        let row = store::settings(&self.db, &ctx.tenant).await?;
        Ok(Response::new(pb::GetFeedbackSettingsResponse { feedback_settings: Some(settings_pb(&row)) }))
    }

    async fn update_feedback_settings(
        &self,
        req: Request<pb::UpdateFeedbackSettingsRequest>,
    ) -> Result<Response<pb::UpdateFeedbackSettingsResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let s = req.feedback_settings.unwrap_or_default();
        let mut set = Vec::new();
        for (name, on) in [
            ("throttle_window", s.throttle_window.is_some()),
            ("default_invitation_ttl", s.default_invitation_ttl.is_some()),
            ("ces_follow_up_threshold", s.ces_follow_up_threshold != 0),
        ] {
            if on {
                set.push(name);
            }
        }
        let paths = mask_paths(
            req.update_mask.as_ref(),
            &["throttle_window", "default_invitation_ttl", "ces_follow_up_threshold"],
            &set,
        )?;
        let txn = clm_platform::db::begin_write(&self.db).await?;
        let old = store::settings(&txn, &ctx.tenant).await?;
        check_etag("feedback_settings.etag", &s.etag, old.version)?;
        let mut row = old.clone();
        let mut v = Violations::new();
        for p in &paths {
            match p.as_str() {
                "throttle_window" => {
                    let d = s.throttle_window.unwrap_or_default();
                    if let Some(w) = bounded_duration(
                        &mut v,
                        "feedback_settings.throttle_window",
                        Some(&d),
                        0,
                        365 * DAY_MICROS,
                        "0 (no throttling) to 365 days",
                    ) {
                        row.throttle_window = w;
                    }
                }
                "default_invitation_ttl" => {
                    let d = s.default_invitation_ttl.unwrap_or_default();
                    if let Some(t) = bounded_duration(
                        &mut v,
                        "feedback_settings.default_invitation_ttl",
                        Some(&d),
                        HOUR,
                        365 * DAY_MICROS,
                        "1 hour to 365 days",
                    ) {
                        row.default_ttl = t;
                    }
                }
                "ces_follow_up_threshold" => {
                    // 1 (only "very difficult") to 6 (all but "very easy").
                    if (1..=6).contains(&s.ces_follow_up_threshold) {
                        row.ces_threshold = s.ces_follow_up_threshold;
                    } else {
                        v.add("feedback_settings.ces_follow_up_threshold", "must be 1 to 6");
                    }
                }
                _ => {}
            }
        }
        v.finish()?;
        row.version += 1;
        row.update_time = now_micros();
        store::update_settings(&txn, row.clone(), old.version).await?;
        txn.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::UpdateFeedbackSettingsResponse { feedback_settings: Some(settings_pb(&row)) }))
    }
}

impl FeedbackApi {
    /// Store a new or continued response; on completion mark the invitation answered, open a
    /// follow-up for an unhappy score and publish.
    #[allow(clippy::too_many_arguments)]
    async fn save_response(
        &self,
        txn: &clm_platform::events::UnitOfWork,
        tenant: &TenantId,
        survey: &survey_row::Model,
        qs: &Questions,
        contact: Uuid,
        inv: Option<&invitation::Model>,
        existing: Option<response::Model>,
        all: HashMap<String, survey::Value>,
        complete: bool,
        ces_threshold: i32,
    ) -> Result<pb::SubmitResponseResponse, Error> {
        let now = now_micros();
        let kind = Kind::from_key(&survey.kind).unwrap_or(Kind::Custom);
        let score = qs.primary().and_then(|p| match all.get(&p.id) {
            Some(survey::Value::Rating(r)) => Some(*r),
            _ => None,
        });
        let band = score.and_then(|s| Band::of(kind, s)).map(|b| b.key().to_owned());
        let answers = serde_json::to_string(&all).map_err(Error::internal)?;
        let row = match existing {
            Some(old) => {
                let mut row = old.clone();
                row.answers = answers;
                row.score = score;
                row.band = band;
                row.complete = complete;
                row.complete_time = complete.then_some(now);
                row.update_time = now;
                row.version += 1;
                store::update_response(txn, row.clone(), old.version).await?;
                row
            }
            None => {
                let stage_key = match inv {
                    Some(i) => i.stage_key.clone(),
                    None => store::stage_of(txn, tenant, contact).await?,
                };
                let row = response::Model {
                    id: Uuid::now_v7().to_string(),
                    tenant_id: tenant.as_str().to_owned(),
                    survey_id: survey.id.clone(),
                    invitation_id: inv.map(|i| i.id.clone()),
                    contact_id: contact.to_string(),
                    answers,
                    complete,
                    score,
                    band,
                    stage_key,
                    create_time: now,
                    update_time: now,
                    complete_time: complete.then_some(now),
                    version: 1,
                };
                store::insert_response(txn, row.clone()).await?;
                row
            }
        };
        let mut follow = None;
        if complete {
            if let Some(i) = inv {
                store::mark_responded(txn, tenant, &i.id, now).await?;
            }
            self.events.response_submitted(txn, tenant, &row, &survey.kind).await?;
            if let Some(reason) = follow_up_reason(kind, score, ces_threshold) {
                let f = follow_up::Model {
                    id: Uuid::now_v7().to_string(),
                    tenant_id: tenant.as_str().to_owned(),
                    response_id: row.id.clone(),
                    survey_id: survey.id.clone(),
                    contact_id: row.contact_id.clone(),
                    reason: reason.into(),
                    status: "open".into(),
                    owner: String::new(),
                    note: String::new(),
                    open_time: now,
                    resolve_time: None,
                    version: 1,
                };
                store::insert_follow_up(txn, f.clone()).await?;
                self.events.follow_up_opened(txn, tenant, &f).await?;
                follow = Some(follow_up_pb(&f));
            }
        }
        Ok(pb::SubmitResponseResponse { response: Some(response_pb(&row, Some(qs))), follow_up: follow })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_up_reasons() {
        assert_eq!(follow_up_reason(Kind::Nps, Some(6), 5), Some("nps_detractor"));
        assert_eq!(follow_up_reason(Kind::Nps, Some(7), 5), None);
        assert_eq!(follow_up_reason(Kind::Csat, Some(2), 5), Some("csat_unsatisfied"));
        assert_eq!(follow_up_reason(Kind::Csat, Some(3), 5), None);
        let ces = |score| follow_up_reason(Kind::Ces, Some(score), store::DEFAULT_CES_THRESHOLD);
        assert_eq!(ces(2), Some("ces_high_effort"), "2 is difficult");
        assert_eq!(ces(3), Some("ces_high_effort"));
        assert_eq!(ces(4), None);
        assert_eq!(ces(6), None, "6 is easy");
        assert_eq!(follow_up_reason(Kind::Ces, Some(4), 4), Some("ces_high_effort"), "threshold is a setting");
        assert_eq!(follow_up_reason(Kind::Ces, Some(3), 2), None);
        assert_eq!(follow_up_reason(Kind::Custom, Some(1), 5), None);
        assert_eq!(follow_up_reason(Kind::Nps, None, 5), None);
    }
}
