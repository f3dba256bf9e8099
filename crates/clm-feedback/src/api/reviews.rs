//! Reviews a contact left on a public platform: CreateReview (publishes ReviewRecorded, which
//! lifecycle and metrics count as advocacy), ListReviews. Their values are `domain::review`.

use clm_platform::convert::uuid;
use clm_platform::{Error, Violations, idempotency};
use clm_proto::feedback::v1 as pb;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::review_pb;
use super::request::{extend, limit, text};
use super::{FeedbackApi, ctx};
use crate::domain::review::{MAX_TEXT, Platform, Rating, ReviewUrl};
use crate::store::entities::review;
use crate::store::{self, now_micros};

pub async fn create(
    api: &FeedbackApi,
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
    let rating = v.check(Rating::parse("review.rating", r.rating));
    let body = text(&mut v, "review.text", &r.text, MAX_TEXT, false);
    let platform = Platform::parse("review.platform", &r.platform).map_err(|e| extend(&mut v, e)).ok();
    let url = ReviewUrl::parse("review.url", &r.url).map_err(|e| extend(&mut v, e)).ok();
    v.finish()?;
    let (contact, rating) = (contact.expect("checked"), rating.expect("checked"));
    let (platform, url) = (platform.expect("checked"), url.expect("checked"));
    if let Some(rid) = &rid
        && let Some(id) = idempotency::find(&api.db, &ctx.tenant, "CreateReview", rid, &fingerprint).await?
        && let Some(row) = store::get_review(&api.db, &ctx.tenant, &id).await?
    {
        return Ok(Response::new(pb::CreateReviewResponse { review: Some(review_pb(&row)) }));
    }
    if api.contacts.existing(&ctx.tenant, &[contact]).await?.is_empty() {
        return Err(Error::not_found("contact", contact.to_string()).into());
    }
    let row = review::Model {
        id: Uuid::now_v7().to_string(),
        tenant_id: ctx.tenant.as_str().to_owned(),
        contact_id: contact.to_string(),
        rating: rating.value(),
        text: body,
        platform: platform.as_str().to_owned(),
        url: url.as_str().to_owned(),
        create_time: now_micros(),
    };
    let txn = clm_platform::events::UnitOfWork::begin(&api.db).await?;
    store::insert_review(&txn, &ctx.tenant, row.clone()).await?;
    api.events.review_recorded(&txn, &ctx.tenant, &row).await?;
    if let Some(rid) = &rid {
        idempotency::record(&txn, &ctx.tenant, "CreateReview", rid, &fingerprint, &row.id).await?;
    }
    txn.commit().await?;
    Ok(Response::new(pb::CreateReviewResponse { review: Some(review_pb(&row)) }))
}

pub async fn list(
    api: &FeedbackApi,
    req: Request<pb::ListReviewsRequest>,
) -> Result<Response<pb::ListReviewsResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let mut v = Violations::new();
    let n = limit(&mut v, req.page_size);
    let contact = (!req.contact_id.is_empty()).then(|| v.check(uuid("contact_id", &req.contact_id))).flatten();
    v.finish()?;
    let fp = format!("reviews|{}", req.contact_id);
    let after: Option<store::Cursor> = api.tokens.decode(&req.page_token, &ctx.tenant, &fp)?;
    let (rows, next) = store::list_reviews(&api.db, &ctx.tenant, contact, after.as_ref(), n).await?;
    Ok(Response::new(pb::ListReviewsResponse {
        reviews: rows.iter().map(review_pb).collect(),
        next_page_token: next.map(|c| api.tokens.encode(&ctx.tenant, &fp, &c)).unwrap_or_default(),
    }))
}
