//! Follow-ups (opened by unhappy responses, `responses`): ListFollowUps, GetFollowUp,
//! UpdateFollowUp (status, owner, note; resolving one publishes FollowUpClosed). What a status
//! change does is `domain::follow_up`.

use clm_platform::convert::uuid;
use clm_platform::{Error, Violations};
use clm_proto::feedback::v1 as pb;
use tonic::{Request, Response, Status};

use super::convert::{follow_up_pb, follow_up_status_from_pb};
use super::request::{MAX_NAME, MAX_NOTE, check_etag, filter, limit, mask_paths, set_fields, text};
use super::{FeedbackApi, ctx};
use crate::domain::follow_up::{self, FollowUpStatus};
use crate::store::{self, now_micros};

pub async fn list(
    api: &FeedbackApi,
    req: Request<pb::ListFollowUpsRequest>,
) -> Result<Response<pb::ListFollowUpsResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let mut v = Violations::new();
    let n = limit(&mut v, req.page_size);
    let cond = filter(&mut v, &req.filter, store::FOLLOW_UP_FILTER);
    v.finish()?;
    let fp = format!("follow_ups|{}", req.filter);
    let after: Option<store::Cursor> = api.tokens.decode(&req.page_token, &ctx.tenant, &fp)?;
    let (rows, next) = store::list_follow_ups(&api.db, &ctx.tenant, cond, after.as_ref(), n).await?;
    Ok(Response::new(pb::ListFollowUpsResponse {
        follow_ups: rows.iter().map(follow_up_pb).collect(),
        next_page_token: next.map(|c| api.tokens.encode(&ctx.tenant, &fp, &c)).unwrap_or_default(),
    }))
}

pub async fn get(
    api: &FeedbackApi,
    req: Request<pb::GetFollowUpRequest>,
) -> Result<Response<pb::GetFollowUpResponse>, Status> {
    let ctx = ctx(&req)?;
    let id = uuid("id", &req.get_ref().id).map_err(|fv| Error::InvalidArgument(vec![fv]))?;
    let row = store::get_follow_up(&api.db, &ctx.tenant, id).await?;
    Ok(Response::new(pb::GetFollowUpResponse { follow_up: Some(follow_up_pb(&row)) }))
}

pub async fn update(
    api: &FeedbackApi,
    req: Request<pb::UpdateFollowUpRequest>,
) -> Result<Response<pb::UpdateFollowUpResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let Some(f) = req.follow_up else {
        return Err(Error::invalid("follow_up", "is required").into());
    };
    let id = uuid("follow_up.id", &f.id).map_err(|fv| Error::InvalidArgument(vec![fv]))?;
    let set = set_fields(&[("status", f.status != 0), ("owner", !f.owner.is_empty()), ("note", !f.note.is_empty())]);
    let paths = mask_paths(req.update_mask.as_ref(), &["status", "owner", "note"], &set)?;
    let txn = clm_platform::events::UnitOfWork::begin(&api.db).await?;
    let old = store::get_follow_up(&txn, &ctx.tenant, id).await?;
    check_etag("follow_up.etag", &f.etag, old.version)?;
    let mut row = old.clone();
    let mut v = Violations::new();
    let now = now_micros();
    let mut closes = false;
    for p in &paths {
        match p.as_str() {
            "status" => match follow_up_status_from_pb(f.status) {
                Some(new) => {
                    let change =
                        follow_up::change_status(FollowUpStatus::from_key(&old.status), old.resolve_time, new, now);
                    change.status.key().clone_into(&mut row.status);
                    row.resolve_time = change.resolve_time;
                    closes = change.closes;
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
    store::update_follow_up(&txn, &ctx.tenant, row.clone(), old.version).await?;
    if closes {
        api.events.follow_up_closed(&txn, &ctx.tenant, &row).await?;
    }
    txn.commit().await?;
    Ok(Response::new(pb::UpdateFollowUpResponse { follow_up: Some(follow_up_pb(&row)) }))
}
