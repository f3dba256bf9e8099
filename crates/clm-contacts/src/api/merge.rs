//! MergeContacts: several records of one person folded into a survivor (domain::merge rules),
//! referrals repointed, the merged ones kept as merged, all in one unit of work.

use std::collections::HashSet;

use clm_platform::events::UnitOfWork;
use clm_platform::{Error, Violations};
use clm_proto::contacts::v1 as pb;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::{to_pb, uuid};
use super::request_key::RequestKey;
use super::{ContactsApi, MAX_MERGE, ctx};
use crate::domain::merge::{MERGE_FIELDS, merge};
use crate::domain::model::{Contact, ContactData, ContactState};
use crate::store::{self, now_micros};

pub(super) async fn merge_contacts(
    api: &ContactsApi,
    req: Request<pb::MergeContactsRequest>,
) -> Result<Response<pb::MergeContactsResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let mut v = Violations::new();
    let survivor_id = v.check(uuid("survivor_id", &req.survivor_id));
    let rid = RequestKey::of(&mut v, "MergeContacts", &req.request_id, &req);
    if req.merged_ids.is_empty() || req.merged_ids.len() > MAX_MERGE {
        v.add("merged_ids", format!("1 to {MAX_MERGE} ids"));
    }
    let mut merged_ids: Vec<Uuid> = Vec::new();
    for (i, raw) in req.merged_ids.iter().enumerate() {
        if let Some(id) = v.check(uuid(&format!("merged_ids[{i}]"), raw)) {
            if Some(id) == survivor_id {
                v.add(format!("merged_ids[{i}]"), "is the survivor");
            } else if merged_ids.contains(&id) {
                v.add(format!("merged_ids[{i}]"), "appears twice");
            } else {
                merged_ids.push(id);
            }
        }
    }
    let prefer: HashSet<String> = req.prefer_merged_fields.map(|m| m.paths).unwrap_or_default().into_iter().collect();
    for p in &prefer {
        if !MERGE_FIELDS.contains(&p.as_str()) {
            v.add("prefer_merged_fields", format!("unknown field {p:?}; one of {}", MERGE_FIELDS.join(", ")));
        }
    }
    v.finish()?;
    let survivor_id = survivor_id.expect("checked");

    let txn = UnitOfWork::begin(&api.db).await?;
    if let Some(rid) = &rid
        && rid.find(&txn, &ctx.tenant).await?.is_some()
    {
        let c = store::get_resolved(&txn, &ctx.tenant, survivor_id).await?;
        return Ok(Response::new(pb::MergeContactsResponse {
            contact: Some(to_pb(&c)),
            merged_ids: merged_ids.iter().map(ToString::to_string).collect(),
        }));
    }
    let survivor = store::find_contact(&txn, &ctx.tenant, survivor_id)
        .await?
        .filter(|c| c.state == ContactState::Active)
        .ok_or_else(|| Error::not_found("contact", survivor_id.to_string()))?;
    let mut merged = Vec::new();
    for (i, id) in merged_ids.iter().enumerate() {
        match store::find_contact(&txn, &ctx.tenant, *id).await? {
            Some(c) if c.state != ContactState::Merged => merged.push(c),
            Some(_) => {
                return Err(Error::FailedPrecondition(format!("merged_ids[{i}] {id} is already merged")).into());
            }
            None => return Err(Error::not_found("contact", id.to_string()).into()),
        }
    }
    let data = merge(&survivor, &merged, &prefer);
    let now = now_micros();
    // Tombstone the duplicates first (freeing their emails), then write the survivor.
    for m in &merged {
        let tomb = Contact {
            data: ContactData::default(),
            state: ContactState::Merged,
            merged_into: Some(survivor_id),
            update_time: now,
            version: m.version + 1,
            ..m.clone()
        };
        store::update_contact(&txn, &ctx.tenant, &tomb, m.version).await?;
    }
    let updated = Contact { data, update_time: now, version: survivor.version + 1, ..survivor.clone() };
    store::update_contact(&txn, &ctx.tenant, &updated, survivor.version).await?;
    store::repoint_referrals(&txn, &ctx.tenant, &merged_ids, survivor_id).await?;
    if let Some(rid) = &rid {
        rid.record(&txn, &ctx.tenant, &survivor_id.to_string()).await?;
    }
    api.events.merged(&txn, &ctx.tenant, &updated, &merged_ids).await?;
    txn.commit().await?;
    Ok(Response::new(pb::MergeContactsResponse {
        contact: Some(to_pb(&updated)),
        merged_ids: merged_ids.iter().map(ToString::to_string).collect(),
    }))
}
