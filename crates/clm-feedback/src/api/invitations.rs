//! Invitations: CreateInvitation, BatchCreateInvitations (a segment or a list of contacts),
//! GetInvitation, ListInvitations. Inviting itself (throttling, one pending invitation per
//! survey, the token, SurveyRequested) is `events::invite`, shared with the invitations sent on
//! events.

use std::collections::HashSet;

use clm_platform::convert::{micros, timestamp, uuid};
use clm_platform::{Error, TenantId, Violations, idempotency};
use clm_proto::feedback::v1 as pb;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::invitation_pb;
use super::request::limit;
use super::surveys::active_survey;
use super::{FeedbackApi, ctx};
use crate::domain::token;
use crate::events::{Skip, Source, invite};
use crate::store::{self, now_micros};

/// Most contacts in one batch invitation list.
const MAX_BATCH: usize = 10_000;

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

/// Invitations with their re-derived tokens, in the order of `ids`.
async fn invitations_with_tokens(
    api: &FeedbackApi,
    tenant: &TenantId,
    ids: &[String],
) -> Result<Vec<pb::Invitation>, Error> {
    let settings = store::settings(&api.db, tenant).await?;
    let rows = store::invitations_by_ids(&api.db, tenant, ids).await?;
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

pub async fn create(
    api: &FeedbackApi,
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
        && let Some(id) = idempotency::find(&api.db, &ctx.tenant, "CreateInvitation", rid, &fingerprint).await?
    {
        let inv = invitations_with_tokens(api, &ctx.tenant, &[id]).await?.pop();
        return Ok(Response::new(pb::CreateInvitationResponse { invitation: inv, skipped: None }));
    }
    let survey = active_survey(api, &ctx.tenant, survey_id).await?;
    if api.contacts.existing(&ctx.tenant, &[contact]).await?.is_empty() {
        return Err(Error::not_found("contact", contact.to_string()).into());
    }
    let txn = clm_platform::events::UnitOfWork::begin(&api.db).await?;
    let settings = store::settings(&txn, &ctx.tenant).await?;
    let out =
        invite(&txn, &api.events, &ctx.tenant, &settings, &survey, contact, Source::Manual, None, None, now_micros())
            .await?;
    let resp = match out {
        Ok((inv, t)) => {
            if let Some(rid) = &rid {
                idempotency::record(&txn, &ctx.tenant, "CreateInvitation", rid, &fingerprint, &inv.id).await?;
            }
            pb::CreateInvitationResponse { invitation: Some(invitation_pb(&inv, Some(t), now_micros())), skipped: None }
        }
        Err(skip) => pb::CreateInvitationResponse { invitation: None, skipped: Some(skipped_pb(contact, &skip)) },
    };
    txn.commit().await?;
    Ok(Response::new(resp))
}

pub async fn batch_create(
    api: &FeedbackApi,
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
        && let Some(raw) = idempotency::find(&api.db, &ctx.tenant, "BatchCreateInvitations", rid, &fingerprint).await?
    {
        let o: BatchOutcome = serde_json::from_str(&raw).map_err(Error::internal)?;
        let invitations = invitations_with_tokens(api, &ctx.tenant, &o.invited).await?;
        let skipped = o
            .skipped
            .into_iter()
            .map(|(c, r, t)| pb::SkippedInvitation { contact_id: c, reason: r, retry_after_time: t.map(timestamp) })
            .collect();
        return Ok(Response::new(pb::BatchCreateInvitationsResponse { invitations, skipped }));
    }
    let survey = active_survey(api, &ctx.tenant, survey_id).await?;
    let mut skipped = Vec::new();
    let targets = match req.target.expect("checked") {
        Target::SegmentId(s) => api.contacts.segment_members(&ctx.tenant, &s, "segment_id").await?,
        Target::Contacts(_) => {
            let existing = api.contacts.existing(&ctx.tenant, &listed).await?;
            let (known, unknown): (Vec<Uuid>, Vec<Uuid>) = listed.into_iter().partition(|c| existing.contains(c));
            skipped.extend(unknown.into_iter().map(|c| skipped_pb(c, &Skip::UnknownContact)));
            known
        }
    };
    let txn = clm_platform::events::UnitOfWork::begin(&api.db).await?;
    let settings = store::settings(&txn, &ctx.tenant).await?;
    let now = now_micros();
    let mut invitations = Vec::new();
    for contact in targets {
        match invite(&txn, &api.events, &ctx.tenant, &settings, &survey, contact, Source::Batch, None, None, now)
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

pub async fn get(
    api: &FeedbackApi,
    req: Request<pb::GetInvitationRequest>,
) -> Result<Response<pb::GetInvitationResponse>, Status> {
    let ctx = ctx(&req)?;
    let id = uuid("id", &req.get_ref().id).map_err(|fv| Error::InvalidArgument(vec![fv]))?;
    let row = store::get_invitation(&api.db, &ctx.tenant, id).await?;
    Ok(Response::new(pb::GetInvitationResponse { invitation: Some(invitation_pb(&row, None, now_micros())) }))
}

pub async fn list(
    api: &FeedbackApi,
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
    let after: Option<store::Cursor> = api.tokens.decode(&req.page_token, &ctx.tenant, &fp)?;
    let (rows, next) = store::list_invitations(&api.db, &ctx.tenant, survey_id, contact, after.as_ref(), n).await?;
    let now = now_micros();
    Ok(Response::new(pb::ListInvitationsResponse {
        invitations: rows.iter().map(|r| invitation_pb(r, None, now)).collect(),
        next_page_token: next.map(|c| api.tokens.encode(&ctx.tenant, &fp, &c)).unwrap_or_default(),
    }))
}
