//! ListReferrals: the contacts a contact referred.

use clm_platform::Violations;
use clm_platform::pagination::page_size;
use clm_proto::contacts::v1 as pb;
use tonic::{Request, Response, Status};

use super::convert::{to_pb, uuid};
use super::{ContactsApi, ctx, first_violation};
use crate::store::{self, Cursor, ListQuery};

pub(super) async fn list_referrals(
    api: &ContactsApi,
    req: Request<pb::ListReferralsRequest>,
) -> Result<Response<pb::ListReferralsResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let mut v = Violations::new();
    let id = v.check(uuid("contact_id", &req.contact_id));
    let limit = v.check(page_size(req.page_size).map_err(first_violation));
    v.finish()?;
    let id = id.expect("checked");
    let referrer = store::get_resolved(&api.db, &ctx.tenant, id).await?;
    let q = ListQuery { referred_by: Some(referrer.id), ..ListQuery::default() };
    let fingerprint = format!("referrals|{}", referrer.id);
    let cursor: Option<Cursor> = api.tokens.decode(&req.page_token, &ctx.tenant, &fingerprint)?;
    let (contacts, next) =
        store::list_contacts(&api.db, &ctx.tenant, &q, cursor.as_ref(), limit.expect("checked")).await?;
    let total = store::count_contacts(&api.db, &ctx.tenant, &q).await?;
    Ok(Response::new(pb::ListReferralsResponse {
        referred_contacts: contacts.iter().map(to_pb).collect(),
        next_page_token: next.map(|c| api.tokens.encode(&ctx.tenant, &fingerprint, &c)).unwrap_or_default(),
        total_count: i64::try_from(total).unwrap_or(i64::MAX),
    }))
}
