//! Segments: saved filters over contacts (create, read, list, update, delete), their members
//! and counts. A segment's filter is validated when saved and compiled when read.

use clm_platform::crud::{ExpectedVersion, UpdateMask};
use clm_platform::events::UnitOfWork;
use clm_platform::pagination::page_size;
use clm_platform::{Error, Violations};
use clm_proto::contacts::v1 as pb;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::{timestamp, to_pb, uuid};
use super::request_key::RequestKey;
use super::{ContactsApi, ctx, first_violation, parse_order_by};
use crate::domain::filter::{self as cfilter, Cond};
use crate::domain::values;
use crate::store::{self, Cursor, ListQuery, now_micros};

pub(super) async fn create_segment(
    api: &ContactsApi,
    req: Request<pb::CreateSegmentRequest>,
) -> Result<Response<pb::CreateSegmentResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let mut v = Violations::new();
    let rid = RequestKey::of(&mut v, "CreateSegment", &req.request_id, &req);
    let Some(s) = req.segment else {
        return Err(Error::invalid("segment", "is required").into());
    };
    let fields = segment_fields(&s, &["display_name", "description", "filter"], &mut v);
    v.finish()?;
    let (display_name, description, filter) = fields;
    let txn = UnitOfWork::begin(&api.db).await?;
    if let Some(rid) = &rid
        && let Some(existing) = rid.find(&txn, &ctx.tenant).await?
    {
        let seg = store::get_segment(&txn, &ctx.tenant, Uuid::parse_str(&existing).map_err(Error::internal)?).await?;
        return Ok(Response::new(pb::CreateSegmentResponse { segment: Some(segment_pb(&seg)) }));
    }
    let now = now_micros();
    let seg = store::Segment {
        id: Uuid::now_v7(),
        display_name: display_name.unwrap_or_default(),
        description: description.unwrap_or_default(),
        filter: filter.unwrap_or_default(),
        create_time: now,
        update_time: now,
        version: 1,
    };
    store::insert_segment(&txn, &ctx.tenant, &seg).await?;
    if let Some(rid) = &rid {
        rid.record(&txn, &ctx.tenant, &seg.id.to_string()).await?;
    }
    txn.commit().await?;
    Ok(Response::new(pb::CreateSegmentResponse { segment: Some(segment_pb(&seg)) }))
}

pub(super) async fn get_segment(
    api: &ContactsApi,
    req: Request<pb::GetSegmentRequest>,
) -> Result<Response<pb::GetSegmentResponse>, Status> {
    let ctx = ctx(&req)?;
    let id = uuid("id", &req.get_ref().id).map_err(Error::from)?;
    let seg = store::get_segment(&api.db, &ctx.tenant, id).await?;
    Ok(Response::new(pb::GetSegmentResponse { segment: Some(segment_pb(&seg)) }))
}

pub(super) async fn list_segments(
    api: &ContactsApi,
    req: Request<pb::ListSegmentsRequest>,
) -> Result<Response<pb::ListSegmentsResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let limit = page_size(req.page_size)?;
    let after: Option<(i64, String)> = api.tokens.decode(&req.page_token, &ctx.tenant, "segments")?;
    let (segs, next) = store::list_segments(&api.db, &ctx.tenant, after.as_ref(), limit).await?;
    Ok(Response::new(pb::ListSegmentsResponse {
        segments: segs.iter().map(segment_pb).collect(),
        next_page_token: next.map(|c| api.tokens.encode(&ctx.tenant, "segments", &c)).unwrap_or_default(),
    }))
}

pub(super) async fn update_segment(
    api: &ContactsApi,
    req: Request<pb::UpdateSegmentRequest>,
) -> Result<Response<pb::UpdateSegmentResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let Some(s) = req.segment else {
        return Err(Error::invalid("segment", "is required").into());
    };
    let mut v = Violations::new();
    let id = v.check(uuid("segment.id", &s.id));
    let expected = ExpectedVersion::parse(&mut v, "segment.etag", &s.etag);
    let mask = UpdateMask::parse(&mut v, req.update_mask, &["display_name", "description", "filter"]);
    let given = [
        ("display_name", !s.display_name.is_empty()),
        ("description", !s.description.is_empty()),
        ("filter", !s.filter.is_empty()),
    ];
    let paths: Vec<&str> = given.into_iter().filter(|(p, given)| mask.sets(p, *given)).map(|(p, _)| p).collect();
    let (display_name, description, filter) = segment_fields(&s, &paths, &mut v);
    v.finish()?;
    let id = id.expect("checked");
    let txn = UnitOfWork::begin(&api.db).await?;
    let current = store::get_segment(&txn, &ctx.tenant, id).await?;
    expected.check(current.version, "segment")?;
    let updated = store::Segment {
        display_name: display_name.unwrap_or_else(|| current.display_name.clone()),
        description: description.unwrap_or_else(|| current.description.clone()),
        filter: filter.unwrap_or_else(|| current.filter.clone()),
        update_time: now_micros(),
        version: current.version + 1,
        ..current.clone()
    };
    store::update_segment(&txn, &ctx.tenant, &updated, current.version).await?;
    txn.commit().await?;
    Ok(Response::new(pb::UpdateSegmentResponse { segment: Some(segment_pb(&updated)) }))
}

pub(super) async fn delete_segment(
    api: &ContactsApi,
    req: Request<pb::DeleteSegmentRequest>,
) -> Result<Response<pb::DeleteSegmentResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let mut v = Violations::new();
    let id = v.check(uuid("id", &req.id));
    let expected = ExpectedVersion::parse(&mut v, "etag", &req.etag);
    v.finish()?;
    let id = id.expect("checked");
    let txn = UnitOfWork::begin(&api.db).await?;
    let current = store::get_segment(&txn, &ctx.tenant, id).await?;
    expected.check(current.version, "segment")?;
    store::delete_segment(&txn, &ctx.tenant, id).await?;
    txn.commit().await?;
    Ok(Response::new(pb::DeleteSegmentResponse {}))
}

pub(super) async fn list_segment_members(
    api: &ContactsApi,
    req: Request<pb::ListSegmentMembersRequest>,
) -> Result<Response<pb::ListSegmentMembersResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let mut v = Violations::new();
    let id = v.check(uuid("segment_id", &req.segment_id));
    let limit = v.check(page_size(req.page_size).map_err(first_violation));
    let sort = v.check(parse_order_by(&req.order_by));
    v.finish()?;
    let seg = store::get_segment(&api.db, &ctx.tenant, id.expect("checked")).await?;
    let filter = segment_filter(&seg)?;
    let q = ListQuery { filter, sort: sort.expect("checked"), show_deleted: false, referred_by: None };
    // The token is bound to the segment's current filter: if it changes, old tokens expire.
    let fingerprint = format!("segment|{}|{}|{}", seg.id, seg.version, req.order_by);
    let cursor: Option<Cursor> = api.tokens.decode(&req.page_token, &ctx.tenant, &fingerprint)?;
    let (contacts, next) =
        store::list_contacts(&api.db, &ctx.tenant, &q, cursor.as_ref(), limit.expect("checked")).await?;
    Ok(Response::new(pb::ListSegmentMembersResponse {
        contacts: contacts.iter().map(to_pb).collect(),
        next_page_token: next.map(|c| api.tokens.encode(&ctx.tenant, &fingerprint, &c)).unwrap_or_default(),
    }))
}

pub(super) async fn count_segment(
    api: &ContactsApi,
    req: Request<pb::CountSegmentRequest>,
) -> Result<Response<pb::CountSegmentResponse>, Status> {
    let ctx = ctx(&req)?;
    let id = uuid("segment_id", &req.get_ref().segment_id).map_err(Error::from)?;
    let seg = store::get_segment(&api.db, &ctx.tenant, id).await?;
    let q = ListQuery { filter: segment_filter(&seg)?, ..ListQuery::default() };
    let count = store::count_contacts(&api.db, &ctx.tenant, &q).await?;
    Ok(Response::new(pb::CountSegmentResponse { count: i64::try_from(count).unwrap_or(i64::MAX) }))
}

/// Validate the named segment fields: (display_name, description, filter), `None` = not named.
fn segment_fields(
    s: &pb::Segment,
    paths: &[&str],
    v: &mut Violations,
) -> (Option<String>, Option<String>, Option<String>) {
    let mut out = (None, None, None);
    for p in paths {
        match *p {
            "display_name" => {
                let name = v.check(values::text("segment.display_name", &s.display_name));
                if name.as_deref() == Some("") {
                    v.add("segment.display_name", "is required");
                }
                out.0 = name;
            }
            "description" => {
                if s.description.chars().count() > 2048 {
                    v.add("segment.description", "must be at most 2048 characters");
                } else {
                    out.1 = Some(s.description.trim().to_owned());
                }
            }
            "filter" => {
                if v.check(cfilter::compile("segment.filter", &s.filter)).is_some() {
                    out.2 = Some(s.filter.trim().to_owned());
                }
            }
            _ => {}
        }
    }
    out
}

fn segment_filter(seg: &store::Segment) -> Result<Option<Cond>, Error> {
    // Stored filters were valid when saved; the language only grows, so this cannot fail
    // unless the row was edited by hand.
    cfilter::compile("segment.filter", &seg.filter).map_err(|e| {
        Error::FailedPrecondition(format!("the segment's stored filter no longer parses: {}", e.description))
    })
}

fn segment_pb(s: &store::Segment) -> pb::Segment {
    pb::Segment {
        id: s.id.to_string(),
        display_name: s.display_name.clone(),
        description: s.description.clone(),
        filter: s.filter.clone(),
        create_time: Some(timestamp(s.create_time)),
        update_time: Some(timestamp(s.update_time)),
        etag: crate::domain::model::etag(s.version),
    }
}
