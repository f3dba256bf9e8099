//! Responses: SubmitResponse (by invitation token or in-app; new or continuing a partial one),
//! GetResponse, ListResponses. What makes a response complete, its score and whether it opens a
//! follow-up are `domain::response`; when an invitation may be answered, `domain::invitation`.

use std::collections::HashMap;

use clm_platform::convert::uuid;
use clm_platform::{Error, TenantId, Violations};
use clm_proto::feedback::v1 as pb;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::{answer_from_pb, follow_up_pb, load_answers, load_questions, response_pb};
use super::request::{filter, limit};
use super::surveys::survey_questions;
use super::{FeedbackApi, ctx};
use crate::domain::follow_up::FollowUpStatus;
use crate::domain::response::{self, Score};
use crate::domain::survey::{self, Questions};
use crate::domain::values::CesThreshold;
use crate::domain::{invitation as invitation_rules, token};
use crate::store::entities::{follow_up, invitation, response as response_row, survey as survey_row};
use crate::store::{self, now_micros};

/// Who answers what: the survey and contact, the invitation answered (if by token) and the
/// response continued (if any).
struct Respondent {
    survey_id: Uuid,
    contact: Uuid,
    invitation: Option<invitation::Model>,
    existing: Option<response_row::Model>,
}

pub async fn submit(
    api: &FeedbackApi,
    req: Request<pb::SubmitResponseRequest>,
) -> Result<Response<pb::SubmitResponseResponse>, Status> {
    let ctx = ctx(&req)?;
    Ok(Response::new(submit_as(api, &ctx.tenant, req.into_inner()).await?))
}

/// SubmitResponse for `tenant`: the one path every response takes, the API's and the hosted
/// survey page's (`crate::pages`, by token) alike.
pub async fn submit_as(
    api: &FeedbackApi,
    tenant: &TenantId,
    req: pb::SubmitResponseRequest,
) -> Result<pb::SubmitResponseResponse, Error> {
    use pb::submit_response_request::Target;
    let tenant = tenant.clone();
    let mut v = Violations::new();
    let mut answers = Vec::new();
    for (i, a) in req.answers.iter().enumerate() {
        match answer_from_pb(a) {
            Some(val) => answers.push((a.question_id.clone(), val)),
            None => v.add(format!("answers[{i}]"), "set one of rating, choices, text"),
        }
    }
    let continue_id = (!req.response_id.is_empty()).then(|| v.check(uuid("response_id", &req.response_id))).flatten();
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
        && api.contacts.existing(&tenant, &[*c]).await?.is_empty()
    {
        // In-app: the respondent must be a contact (asked where contacts live).
        return Err(Error::not_found("contact", c.to_string()));
    }
    let now = now_micros();
    let txn = clm_platform::events::UnitOfWork::begin(&api.db).await?;
    let settings = store::settings(&txn, &tenant).await?;
    let who = match target.expect("checked") {
        (None, Some(inv_id)) => {
            let Some(Target::InvitationToken(raw)) = &req.target else { unreachable!("checked") };
            let inv = store::get_invitation(&txn, &tenant, inv_id).await.ok();
            let genuine = token::verify(&settings.token_secret, tenant.as_str(), raw) == Some(inv_id);
            let Some(inv) = inv.filter(|_| genuine) else {
                return Err(Error::invalid("invitation_token", "unknown or altered invitation token"));
            };
            let existing = store::response_of_invitation(&txn, &tenant, &inv.id).await?;
            let answered_by = existing.as_ref().map(|r| r.id.as_str());
            invitation_rules::check_answerable(&inv.id, &inv.status, inv.expire_time, now, answered_by)?;
            if let (Some(c), Some(e)) = (continue_id, &existing)
                && c.to_string() != e.id
            {
                return Err(Error::invalid("response_id", "is not the response of this invitation"));
            }
            let survey_id = Uuid::parse_str(&inv.survey_id).map_err(Error::internal)?;
            let contact = Uuid::parse_str(&inv.contact_id).map_err(Error::internal)?;
            Respondent { survey_id, contact, invitation: Some(inv), existing }
        }
        (Some((survey_id, contact)), _) => {
            let existing = match continue_id {
                Some(rid) => {
                    let r = store::get_response(&txn, &tenant, rid).await?;
                    if r.survey_id != survey_id.to_string() || r.contact_id != contact.to_string() {
                        return Err(Error::invalid(
                            "response_id",
                            "belongs to another survey or contact than in_app names",
                        ));
                    }
                    Some(r)
                }
                None => None,
            };
            Respondent { survey_id, contact, invitation: None, existing }
        }
        _ => unreachable!("checked"),
    };
    if let Some(e) = &who.existing {
        response::check_open(&e.id, e.complete)?;
    }
    let survey = store::get_survey(&txn, &tenant, who.survey_id).await?;
    survey::check_answerable(who.survey_id, &survey.status)?;
    let (qs, _) = load_questions(&survey)?;
    let previous = who.existing.as_ref().map(load_answers).unwrap_or_default();
    let (all, _) = survey::check_answers(&qs, &previous, &answers, "").map_err(Error::InvalidArgument)?;
    if req.complete {
        response::check_complete(&qs, &all).map_err(Error::InvalidArgument)?;
    }
    let out = save(
        api,
        &txn,
        &tenant,
        &survey,
        &qs,
        who,
        all,
        req.complete,
        CesThreshold::from_stored(settings.ces_threshold),
    )
    .await?;
    txn.commit().await?;
    Ok(out)
}

/// Store a new or continued response; on completion mark the invitation answered, open a
/// follow-up for an unhappy score and publish.
#[allow(clippy::too_many_arguments)]
async fn save(
    api: &FeedbackApi,
    txn: &clm_platform::events::UnitOfWork,
    tenant: &TenantId,
    survey: &survey_row::Model,
    qs: &Questions,
    who: Respondent,
    all: HashMap<String, survey::Value>,
    complete: bool,
    ces_threshold: CesThreshold,
) -> Result<pb::SubmitResponseResponse, Error> {
    let now = now_micros();
    let score = Score::of(qs, &all);
    let band = score.and_then(Score::band).map(|b| b.key().to_owned());
    let answers = serde_json::to_string(&all).map_err(Error::internal)?;
    let inv = who.invitation.as_ref();
    let row = match who.existing {
        Some(old) => {
            let mut row = old.clone();
            row.answers = answers;
            row.score = score.map(Score::value);
            row.band = band;
            row.complete = complete;
            row.complete_time = complete.then_some(now);
            row.update_time = now;
            row.version += 1;
            store::update_response(txn, tenant, row.clone(), old.version).await?;
            row
        }
        None => {
            let stage_key = match inv {
                Some(i) => i.stage_key.clone(),
                None => store::stage_of(txn, tenant, who.contact).await?,
            };
            let row = response_row::Model {
                id: Uuid::now_v7().to_string(),
                tenant_id: tenant.as_str().to_owned(),
                survey_id: survey.id.clone(),
                invitation_id: inv.map(|i| i.id.clone()),
                contact_id: who.contact.to_string(),
                answers,
                complete,
                score: score.map(Score::value),
                band,
                stage_key,
                create_time: now,
                update_time: now,
                complete_time: complete.then_some(now),
                version: 1,
                external_id: None,
            };
            store::insert_response(txn, tenant, row.clone()).await?;
            row
        }
    };
    let mut follow = None;
    if complete {
        if let Some(i) = inv {
            store::mark_responded(txn, tenant, &i.id, now).await?;
        }
        api.events.response_submitted(txn, tenant, &row, &survey.kind).await?;
        if let Some(reason) = score.and_then(|s| s.follow_up(ces_threshold)) {
            let f = follow_up::Model {
                id: Uuid::now_v7().to_string(),
                tenant_id: tenant.as_str().to_owned(),
                response_id: row.id.clone(),
                survey_id: survey.id.clone(),
                contact_id: row.contact_id.clone(),
                reason: reason.key().into(),
                status: FollowUpStatus::Open.key().into(),
                owner: String::new(),
                note: String::new(),
                open_time: now,
                resolve_time: None,
                version: 1,
            };
            store::insert_follow_up(txn, tenant, f.clone()).await?;
            api.events.follow_up_opened(txn, tenant, &f).await?;
            follow = Some(follow_up_pb(&f));
        }
    }
    Ok(pb::SubmitResponseResponse { response: Some(response_pb(&row, Some(qs))), follow_up: follow })
}

pub async fn get(
    api: &FeedbackApi,
    req: Request<pb::GetResponseRequest>,
) -> Result<Response<pb::GetResponseResponse>, Status> {
    let ctx = ctx(&req)?;
    let id = uuid("id", &req.get_ref().id).map_err(|fv| Error::InvalidArgument(vec![fv]))?;
    let row = store::get_response(&api.db, &ctx.tenant, id).await?;
    let qs = survey_questions(api, &ctx.tenant, &row.survey_id).await;
    Ok(Response::new(pb::GetResponseResponse { response: Some(response_pb(&row, qs.as_ref())) }))
}

pub async fn list(
    api: &FeedbackApi,
    req: Request<pb::ListResponsesRequest>,
) -> Result<Response<pb::ListResponsesResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let mut v = Violations::new();
    let n = limit(&mut v, req.page_size);
    let cond = filter(&mut v, &req.filter, store::RESPONSE_FILTER);
    v.finish()?;
    let fp = format!("responses|{}", req.filter);
    let after: Option<store::Cursor> = api.tokens.decode(&req.page_token, &ctx.tenant, &fp)?;
    let (rows, next) = store::list_responses(&api.db, &ctx.tenant, cond, after.as_ref(), n).await?;
    let mut questions: HashMap<String, Option<Questions>> = HashMap::new();
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        if !questions.contains_key(&r.survey_id) {
            let q = survey_questions(api, &ctx.tenant, &r.survey_id).await;
            questions.insert(r.survey_id.clone(), q);
        }
        out.push(response_pb(r, questions[&r.survey_id].as_ref()));
    }
    Ok(Response::new(pb::ListResponsesResponse {
        responses: out,
        next_page_token: next.map(|c| api.tokens.encode(&ctx.tenant, &fp, &c)).unwrap_or_default(),
    }))
}
