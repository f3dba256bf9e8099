//! gRPC handlers of `clm.contacts.v1.ContactsService`: decode and validate, call the store in a
//! transaction, map back. No SQL here.

pub mod convert;
mod import;
mod request_key;

use std::collections::HashSet;
use std::pin::Pin;

use chrono::Datelike;
use clm_platform::events::UnitOfWork;
use clm_platform::pagination::{PageTokens, page_size};
use clm_platform::{Error, FieldViolation, RequestContext, TenantId, Violations};
use clm_proto::contacts::v1 as pb;
use clm_proto::contacts::v1::contacts_service_server::ContactsService;
use sea_orm::DatabaseConnection;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::domain::filter::{self as cfilter, Cond};
use crate::domain::merge::{MERGE_FIELDS, merge};
use crate::domain::model::{Contact, ContactData, ContactState};
use crate::domain::values;
use crate::events::Publisher;
use crate::store::{self, Cursor, ListQuery, Sort, SortKey, now_micros};
use convert::{LEAF_PATHS, etag_version, expand_mask, patch_for, timestamp, to_pb, uuid};
use request_key::RequestKey;

/// Most ids in one BatchGetContacts, most contacts merged at once.
pub const MAX_BATCH_GET: usize = 1000;
pub const MAX_MERGE: usize = 100;
/// Contacts per ExportContacts message.
pub const EXPORT_PAGE: u64 = 500;

#[derive(Clone, Debug)]
pub struct ContactsApi {
    db: DatabaseConnection,
    tokens: PageTokens,
    events: Publisher,
    /// The server's `server.max_message_bytes`, named when an import message exceeds it.
    max_message_bytes: usize,
}

impl ContactsApi {
    pub fn new(db: DatabaseConnection, tokens: PageTokens, events: Publisher) -> Self {
        Self { db, tokens, events, max_message_bytes: 4 * 1024 * 1024 }
    }

    /// The message size limit the server was built with (`server.max_message_bytes`).
    pub fn with_max_message_bytes(mut self, max: usize) -> Self {
        self.max_message_bytes = max;
        self
    }

    /// The contact an earlier CreateContact with this request id made, if there was one.
    async fn created_by(&self, tenant: &TenantId, key: &RequestKey) -> Result<Option<pb::Contact>, Error> {
        let Some(id) = key.find(&self.db, tenant).await? else {
            return Ok(None);
        };
        let id = Uuid::parse_str(&id).map_err(Error::internal)?;
        Ok(Some(to_pb(&store::get_resolved(&self.db, tenant, id).await?)))
    }
}

fn ctx<T>(req: &Request<T>) -> Result<RequestContext, Status> {
    clm_platform::auth::context(req)
}

fn this_year() -> i32 {
    chrono::Utc::now().year()
}

/// Validate the mask's fields of `c` into a data record starting from `base`.
pub(crate) fn apply_fields(
    base: &ContactData,
    c: &pb::Contact,
    paths: &[&'static str],
    prefix: &str,
    v: &mut Violations,
) -> ContactData {
    let mut data = base.clone();
    let year = this_year();
    for path in paths {
        if let Some(p) = patch_for(path, c, prefix, year, v) {
            data.apply(p);
        }
    }
    data
}

fn parse_order_by(raw: &str) -> Result<Sort, FieldViolation> {
    let t = raw.trim();
    if t.is_empty() {
        return Ok(Sort::default());
    }
    let mut parts = t.split_whitespace();
    let key = match parts.next() {
        Some("create_time") => SortKey::CreateTime,
        Some("update_time") => SortKey::UpdateTime,
        Some("family_name") => SortKey::FamilyName,
        Some("lead_score") => SortKey::LeadScore,
        _ => {
            return Err(FieldViolation::new(
                "order_by",
                "must be one of create_time, update_time, family_name, lead_score, optionally followed by desc",
            ));
        }
    };
    let desc = match parts.next() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(FieldViolation::new("order_by", "direction must be asc or desc")),
    };
    if parts.next().is_some() {
        return Err(FieldViolation::new("order_by", "only one sort field is supported"));
    }
    Ok(Sort { key, desc })
}

/// Refuse a referral to a contact that is not in this tenant.
async fn check_referrer(
    db: &impl sea_orm::ConnectionTrait,
    tenant: &TenantId,
    data: &ContactData,
    field: &str,
    self_id: Option<Uuid>,
) -> Result<(), Error> {
    if let Some(r) = data.acquisition.referred_by {
        if Some(r) == self_id {
            return Err(Error::invalid(field, "a contact cannot refer itself"));
        }
        match store::find_contact(db, tenant, r).await? {
            Some(c) if c.state != ContactState::Merged => {}
            _ => return Err(Error::invalid(field, "no such contact")),
        }
    }
    Ok(())
}

/// ALREADY_EXISTS, naming the holder, when another contact has this email. (The unique index
/// still guards against races; this gives the caller the existing id.)
async fn ensure_email_free(
    db: &impl sea_orm::ConnectionTrait,
    tenant: &TenantId,
    data: &ContactData,
    self_id: Option<Uuid>,
) -> Result<(), Error> {
    if let Some(email) = &data.email
        && let Some(holder) = store::find_id_by_email(db, tenant, email.as_str()).await?
        && Some(holder) != self_id
    {
        return Err(Error::AlreadyExists { message: format!("a contact with this email already exists: {holder}") });
    }
    Ok(())
}

async fn not_found_or_erased(db: &DatabaseConnection, tenant: &TenantId, id: Uuid, err: Error) -> Status {
    if matches!(err, Error::NotFound { .. })
        && let Ok(Some(_)) = store::erased_at(db, tenant, id).await
    {
        return Status::not_found(format!("contact {id} was erased"));
    }
    err.into()
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ContactsService for ContactsApi {
    async fn create_contact(
        &self,
        req: Request<pb::CreateContactRequest>,
    ) -> Result<Response<pb::CreateContactResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        let rid = RequestKey::of(&mut v, "CreateContact", &req.request_id, &req);
        let Some(c) = req.contact.as_ref() else {
            return Err(Error::invalid("contact", "is required").into());
        };
        let data = apply_fields(&ContactData::default(), c, LEAF_PATHS, "contact.", &mut v);
        v.finish()?;

        if let Some(rid) = &rid
            && let Some(existing) = self.created_by(&ctx.tenant, rid).await?
        {
            return Ok(Response::new(pb::CreateContactResponse { contact: Some(existing) }));
        }
        check_referrer(&self.db, &ctx.tenant, &data, "contact.acquisition.referred_by_contact_id", None).await?;
        let now = now_micros();
        let mut data = data;
        if data.acquisition.acquired_at.is_none() {
            data.acquisition.acquired_at = Some(now);
        }
        let contact = Contact {
            id: Uuid::now_v7(),
            data,
            state: ContactState::Active,
            merged_into: None,
            create_time: now,
            update_time: now,
            delete_time: None,
            version: 1,
        };
        // The contact, its index rows, the request id and the event: one atomic write (one
        // statement on PostgreSQL) that wakes the relay. A taken email or request id fails it
        // as a whole.
        let mut inserts = store::contact_inserts(&ctx.tenant, &contact);
        if let Some(rid) = &rid {
            inserts.push(rid.insert(&ctx.tenant, &contact.id.to_string()));
        }
        let event = self.events.created_insert(&ctx.tenant, &contact);
        if let Err(e) = UnitOfWork::insert_all(&self.db, inserts, event).await {
            if !store::is_unique_violation(&e) {
                return Err(Error::from(e).into());
            }
            if let Some(rid) = &rid
                && let Some(existing) = self.created_by(&ctx.tenant, rid).await?
            {
                return Ok(Response::new(pb::CreateContactResponse { contact: Some(existing) }));
            }
            if contact.data.email.is_none() {
                return Err(Error::Aborted(
                    "a concurrent request with the same request_id is in progress; retry".into(),
                )
                .into());
            }
            return Err(store::duplicate_email(&self.db, &ctx.tenant, &contact).await.into());
        }
        tracing::info!(contact_id = %contact.id, "contact created");
        Ok(Response::new(pb::CreateContactResponse { contact: Some(to_pb(&contact)) }))
    }

    async fn get_contact(
        &self,
        req: Request<pb::GetContactRequest>,
    ) -> Result<Response<pb::GetContactResponse>, Status> {
        let ctx = ctx(&req)?;
        let id = uuid("id", &req.get_ref().id).map_err(Error::from)?;
        match store::get_resolved(&self.db, &ctx.tenant, id).await {
            Ok(c) => Ok(Response::new(pb::GetContactResponse { contact: Some(to_pb(&c)) })),
            Err(e) => Err(not_found_or_erased(&self.db, &ctx.tenant, id, e).await),
        }
    }

    async fn batch_get_contacts(
        &self,
        req: Request<pb::BatchGetContactsRequest>,
    ) -> Result<Response<pb::BatchGetContactsResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        if req.ids.len() > MAX_BATCH_GET {
            return Err(Error::invalid("ids", format!("at most {MAX_BATCH_GET} ids per call")).into());
        }
        let mut v = Violations::new();
        let ids: Vec<Uuid> =
            req.ids.iter().enumerate().filter_map(|(i, raw)| v.check(uuid(&format!("ids[{i}]"), raw))).collect();
        v.finish()?;
        let found = store::get_many(&self.db, &ctx.tenant, &ids).await?;
        let mut contacts = Vec::new();
        let mut missing_ids = Vec::new();
        for (id, c) in ids.iter().zip(found) {
            match c {
                Some(c) => contacts.push(to_pb(&c)),
                None => missing_ids.push(id.to_string()),
            }
        }
        Ok(Response::new(pb::BatchGetContactsResponse { contacts, missing_ids }))
    }

    async fn update_contact(
        &self,
        req: Request<pb::UpdateContactRequest>,
    ) -> Result<Response<pb::UpdateContactResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let Some(c) = req.contact.as_ref() else {
            return Err(Error::invalid("contact", "is required").into());
        };
        let mut v = Violations::new();
        let id = v.check(uuid("contact.id", &c.id));
        let expected = v.check(etag_version("contact.etag", &c.etag)).flatten();
        let paths = v.check(expand_mask(req.update_mask.as_ref().map_or(&[][..], |m| &m.paths[..]), c, "update_mask"));
        v.finish()?;
        let (id, paths) = (id.expect("checked"), paths.expect("checked"));

        let txn = UnitOfWork::begin(&self.db).await?;
        let current = store::find_contact(&txn, &ctx.tenant, id)
            .await?
            .ok_or_else(|| Error::not_found("contact", id.to_string()))?;
        match current.state {
            ContactState::Active => {}
            ContactState::Deleted => {
                return Err(Error::FailedPrecondition("the contact is deleted; undelete it first".into()).into());
            }
            ContactState::Merged => {
                return Err(Error::FailedPrecondition(format!(
                    "the contact was merged into {}; update that one",
                    current.merged_into.map(|u| u.to_string()).unwrap_or_default()
                ))
                .into());
            }
        }
        if let Some(expected) = expected
            && expected != current.version
        {
            return Err(Error::Aborted(format!(
                "etag mismatch: the contact is at {}, you sent {}; re-read and retry",
                current.etag(),
                c.etag
            ))
            .into());
        }
        let mut v = Violations::new();
        let data = apply_fields(&current.data, c, &paths, "contact.", &mut v);
        v.finish()?;
        check_referrer(&txn, &ctx.tenant, &data, "contact.acquisition.referred_by_contact_id", Some(id)).await?;
        ensure_email_free(&txn, &ctx.tenant, &data, Some(id)).await?;
        let updated = Contact {
            data,
            update_time: now_micros().max(current.update_time),
            version: current.version + 1,
            ..current.clone()
        };
        store::update_contact(&txn, &ctx.tenant, &updated, current.version).await?;
        self.events.updated(&txn, &ctx.tenant, &updated, &paths).await?;
        txn.commit().await?;
        Ok(Response::new(pb::UpdateContactResponse { contact: Some(to_pb(&updated)) }))
    }

    async fn delete_contact(
        &self,
        req: Request<pb::DeleteContactRequest>,
    ) -> Result<Response<pb::DeleteContactResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        let id = v.check(uuid("id", &req.id));
        let expected = v.check(etag_version("etag", &req.etag)).flatten();
        v.finish()?;
        let id = id.expect("checked");
        let txn = UnitOfWork::begin(&self.db).await?;
        let current = store::find_contact(&txn, &ctx.tenant, id)
            .await?
            .ok_or_else(|| Error::not_found("contact", id.to_string()))?;
        if current.state == ContactState::Merged {
            return Err(Error::FailedPrecondition("the contact was merged; delete the survivor instead".into()).into());
        }
        if expected.is_some_and(|e| e != current.version) {
            return Err(Error::Aborted("etag mismatch; re-read and retry".into()).into());
        }
        if current.state == ContactState::Deleted {
            return Ok(Response::new(pb::DeleteContactResponse { contact: Some(to_pb(&current)) }));
        }
        let now = now_micros();
        let deleted = Contact {
            state: ContactState::Deleted,
            delete_time: Some(now),
            update_time: now,
            version: current.version + 1,
            ..current.clone()
        };
        store::update_contact(&txn, &ctx.tenant, &deleted, current.version).await?;
        self.events.deleted(&txn, &ctx.tenant, &deleted, false).await?;
        txn.commit().await?;
        Ok(Response::new(pb::DeleteContactResponse { contact: Some(to_pb(&deleted)) }))
    }

    async fn undelete_contact(
        &self,
        req: Request<pb::UndeleteContactRequest>,
    ) -> Result<Response<pb::UndeleteContactResponse>, Status> {
        let ctx = ctx(&req)?;
        let id = uuid("id", &req.get_ref().id).map_err(Error::from)?;
        let txn = UnitOfWork::begin(&self.db).await?;
        let current = store::find_contact(&txn, &ctx.tenant, id)
            .await?
            .ok_or_else(|| Error::not_found("contact", id.to_string()))?;
        match current.state {
            ContactState::Active => {
                return Ok(Response::new(pb::UndeleteContactResponse { contact: Some(to_pb(&current)) }));
            }
            ContactState::Merged => {
                return Err(Error::FailedPrecondition("a merged contact cannot be undeleted".into()).into());
            }
            ContactState::Deleted => {}
        }
        let restored = Contact {
            state: ContactState::Active,
            delete_time: None,
            update_time: now_micros(),
            version: current.version + 1,
            ..current.clone()
        };
        store::update_contact(&txn, &ctx.tenant, &restored, current.version).await?;
        self.events.deleted(&txn, &ctx.tenant, &restored, true).await?;
        txn.commit().await?;
        Ok(Response::new(pb::UndeleteContactResponse { contact: Some(to_pb(&restored)) }))
    }

    async fn erase_contact(
        &self,
        req: Request<pb::EraseContactRequest>,
    ) -> Result<Response<pb::EraseContactResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        let id = v.check(uuid("id", &req.id));
        let reason = v.check(values::text("reason", &req.reason));
        v.finish()?;
        let (id, reason) = (id.expect("checked"), reason.expect("checked"));
        let txn = UnitOfWork::begin(&self.db).await?;
        if let Some(at) = store::erased_at(&txn, &ctx.tenant, id).await? {
            return Ok(Response::new(pb::EraseContactResponse { id: id.to_string(), erase_time: Some(timestamp(at)) }));
        }
        let now = now_micros();
        if !store::erase_contact(&txn, &ctx.tenant, id, &reason, &ctx.subject, now).await? {
            return Err(Error::not_found("contact", id.to_string()).into());
        }
        self.events.erased(&txn, &ctx.tenant, id, now).await?;
        txn.commit().await?;
        tracing::info!(contact_id = %id, "contact erased");
        Ok(Response::new(pb::EraseContactResponse { id: id.to_string(), erase_time: Some(timestamp(now)) }))
    }

    async fn list_contacts(
        &self,
        req: Request<pb::ListContactsRequest>,
    ) -> Result<Response<pb::ListContactsResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        let limit = v.check(page_size(req.page_size).map_err(first_violation));
        let filter = v.check(cfilter::compile("filter", &req.filter));
        let sort = v.check(parse_order_by(&req.order_by));
        v.finish()?;
        let q = ListQuery {
            filter: filter.flatten(),
            sort: sort.expect("checked"),
            show_deleted: req.show_deleted,
            referred_by: None,
        };
        let fingerprint = format!("contacts|{}|{}|{}", req.filter, req.order_by, req.show_deleted);
        let cursor: Option<Cursor> = self.tokens.decode(&req.page_token, &ctx.tenant, &fingerprint)?;
        let (db, tenant) = (self.db.clone(), ctx.tenant.clone());
        let (contacts, next, total) = clm_platform::shed::off_runtime(async move {
            let (contacts, next) =
                store::list_contacts(&db, &tenant, &q, cursor.as_ref(), limit.expect("checked")).await?;
            let total = store::count_contacts(&db, &tenant, &q).await?;
            Ok::<_, Error>((contacts.iter().map(to_pb).collect(), next, total))
        })
        .await?;
        Ok(Response::new(pb::ListContactsResponse {
            contacts,
            next_page_token: next.map(|c| self.tokens.encode(&ctx.tenant, &fingerprint, &c)).unwrap_or_default(),
            total_size: i32::try_from(total).unwrap_or(i32::MAX),
        }))
    }

    type ImportContactsStream = BoxStream<pb::ImportContactsResponse>;

    async fn import_contacts(
        &self,
        req: Request<Streaming<pb::ImportContactsRequest>>,
    ) -> Result<Response<Self::ImportContactsStream>, Status> {
        let ctx = ctx(&req)?;
        let stream =
            import::run(self.db.clone(), self.events.clone(), ctx.tenant, self.max_message_bytes, req.into_inner());
        Ok(Response::new(Box::pin(stream)))
    }

    type ExportContactsStream = BoxStream<pb::ExportContactsResponse>;

    async fn export_contacts(
        &self,
        req: Request<pb::ExportContactsRequest>,
    ) -> Result<Response<Self::ExportContactsStream>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let filter = cfilter::compile("filter", &req.filter).map_err(Error::from)?;
        let q = ListQuery { filter, sort: Sort::default(), show_deleted: req.show_deleted, referred_by: None };
        // A small bounded channel: the producer waits for the client, so memory stays constant.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let db = self.db.clone();
        let tenant = ctx.tenant;
        tokio::spawn(async move {
            let mut cursor: Option<Cursor> = None;
            loop {
                match store::list_contacts(&db, &tenant, &q, cursor.as_ref(), EXPORT_PAGE).await {
                    Ok((page, next)) => {
                        if !page.is_empty()
                            && tx
                                .send(Ok(pb::ExportContactsResponse { contacts: page.iter().map(to_pb).collect() }))
                                .await
                                .is_err()
                        {
                            return; // client went away
                        }
                        match next {
                            Some(n) => cursor = Some(n),
                            None => return,
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn merge_contacts(
        &self,
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
        let prefer: HashSet<String> =
            req.prefer_merged_fields.map(|m| m.paths).unwrap_or_default().into_iter().collect();
        for p in &prefer {
            if !MERGE_FIELDS.contains(&p.as_str()) {
                v.add("prefer_merged_fields", format!("unknown field {p:?}; one of {}", MERGE_FIELDS.join(", ")));
            }
        }
        v.finish()?;
        let survivor_id = survivor_id.expect("checked");

        let txn = UnitOfWork::begin(&self.db).await?;
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
        self.events.merged(&txn, &ctx.tenant, &updated, &merged_ids).await?;
        txn.commit().await?;
        Ok(Response::new(pb::MergeContactsResponse {
            contact: Some(to_pb(&updated)),
            merged_ids: merged_ids.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn create_segment(
        &self,
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
        let txn = UnitOfWork::begin(&self.db).await?;
        if let Some(rid) = &rid
            && let Some(existing) = rid.find(&txn, &ctx.tenant).await?
        {
            let seg =
                store::get_segment(&txn, &ctx.tenant, Uuid::parse_str(&existing).map_err(Error::internal)?).await?;
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

    async fn get_segment(
        &self,
        req: Request<pb::GetSegmentRequest>,
    ) -> Result<Response<pb::GetSegmentResponse>, Status> {
        let ctx = ctx(&req)?;
        let id = uuid("id", &req.get_ref().id).map_err(Error::from)?;
        let seg = store::get_segment(&self.db, &ctx.tenant, id).await?;
        Ok(Response::new(pb::GetSegmentResponse { segment: Some(segment_pb(&seg)) }))
    }

    async fn list_segments(
        &self,
        req: Request<pb::ListSegmentsRequest>,
    ) -> Result<Response<pb::ListSegmentsResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let limit = page_size(req.page_size)?;
        let after: Option<(i64, String)> = self.tokens.decode(&req.page_token, &ctx.tenant, "segments")?;
        let (segs, next) = store::list_segments(&self.db, &ctx.tenant, after.as_ref(), limit).await?;
        Ok(Response::new(pb::ListSegmentsResponse {
            segments: segs.iter().map(segment_pb).collect(),
            next_page_token: next.map(|c| self.tokens.encode(&ctx.tenant, "segments", &c)).unwrap_or_default(),
        }))
    }

    async fn update_segment(
        &self,
        req: Request<pb::UpdateSegmentRequest>,
    ) -> Result<Response<pb::UpdateSegmentResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let Some(s) = req.segment else {
            return Err(Error::invalid("segment", "is required").into());
        };
        let mut v = Violations::new();
        let id = v.check(uuid("segment.id", &s.id));
        let expected = v.check(etag_version("segment.etag", &s.etag)).flatten();
        let paths: Vec<String> = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let paths: Vec<&str> = if paths.is_empty() {
            let mut p = Vec::new();
            if !s.display_name.is_empty() {
                p.push("display_name");
            }
            if !s.description.is_empty() {
                p.push("description");
            }
            if !s.filter.is_empty() {
                p.push("filter");
            }
            p
        } else {
            paths
                .iter()
                .filter_map(|p| match p.as_str() {
                    "display_name" | "description" | "filter" => Some(p.as_str()),
                    other => {
                        v.add(
                            "update_mask",
                            format!("unknown path {other:?}; one of display_name, description, filter"),
                        );
                        None
                    }
                })
                .collect()
        };
        let (display_name, description, filter) = segment_fields(&s, &paths, &mut v);
        v.finish()?;
        let id = id.expect("checked");
        let txn = UnitOfWork::begin(&self.db).await?;
        let current = store::get_segment(&txn, &ctx.tenant, id).await?;
        if expected.is_some_and(|e| e != current.version) {
            return Err(Error::Aborted("etag mismatch: the segment changed; re-read and retry".into()).into());
        }
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

    async fn delete_segment(
        &self,
        req: Request<pb::DeleteSegmentRequest>,
    ) -> Result<Response<pb::DeleteSegmentResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        let id = v.check(uuid("id", &req.id));
        let expected = v.check(etag_version("etag", &req.etag)).flatten();
        v.finish()?;
        let id = id.expect("checked");
        let txn = UnitOfWork::begin(&self.db).await?;
        let current = store::get_segment(&txn, &ctx.tenant, id).await?;
        if expected.is_some_and(|e| e != current.version) {
            return Err(Error::Aborted("etag mismatch: the segment changed; re-read and retry".into()).into());
        }
        store::delete_segment(&txn, &ctx.tenant, id).await?;
        txn.commit().await?;
        Ok(Response::new(pb::DeleteSegmentResponse {}))
    }

    async fn list_segment_members(
        &self,
        req: Request<pb::ListSegmentMembersRequest>,
    ) -> Result<Response<pb::ListSegmentMembersResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        let id = v.check(uuid("segment_id", &req.segment_id));
        let limit = v.check(page_size(req.page_size).map_err(first_violation));
        let sort = v.check(parse_order_by(&req.order_by));
        v.finish()?;
        let seg = store::get_segment(&self.db, &ctx.tenant, id.expect("checked")).await?;
        let filter = segment_filter(&seg)?;
        let q = ListQuery { filter, sort: sort.expect("checked"), show_deleted: false, referred_by: None };
        // The token is bound to the segment's current filter: if it changes, old tokens expire.
        let fingerprint = format!("segment|{}|{}|{}", seg.id, seg.version, req.order_by);
        let cursor: Option<Cursor> = self.tokens.decode(&req.page_token, &ctx.tenant, &fingerprint)?;
        let (contacts, next) =
            store::list_contacts(&self.db, &ctx.tenant, &q, cursor.as_ref(), limit.expect("checked")).await?;
        Ok(Response::new(pb::ListSegmentMembersResponse {
            contacts: contacts.iter().map(to_pb).collect(),
            next_page_token: next.map(|c| self.tokens.encode(&ctx.tenant, &fingerprint, &c)).unwrap_or_default(),
        }))
    }

    async fn count_segment(
        &self,
        req: Request<pb::CountSegmentRequest>,
    ) -> Result<Response<pb::CountSegmentResponse>, Status> {
        let ctx = ctx(&req)?;
        let id = uuid("segment_id", &req.get_ref().segment_id).map_err(Error::from)?;
        let seg = store::get_segment(&self.db, &ctx.tenant, id).await?;
        let q = ListQuery { filter: segment_filter(&seg)?, ..ListQuery::default() };
        let count = store::count_contacts(&self.db, &ctx.tenant, &q).await?;
        Ok(Response::new(pb::CountSegmentResponse { count: i64::try_from(count).unwrap_or(i64::MAX) }))
    }

    async fn list_referrals(
        &self,
        req: Request<pb::ListReferralsRequest>,
    ) -> Result<Response<pb::ListReferralsResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        let id = v.check(uuid("contact_id", &req.contact_id));
        let limit = v.check(page_size(req.page_size).map_err(first_violation));
        v.finish()?;
        let id = id.expect("checked");
        let referrer = store::get_resolved(&self.db, &ctx.tenant, id).await?;
        let q = ListQuery { referred_by: Some(referrer.id), ..ListQuery::default() };
        let fingerprint = format!("referrals|{}", referrer.id);
        let cursor: Option<Cursor> = self.tokens.decode(&req.page_token, &ctx.tenant, &fingerprint)?;
        let (contacts, next) =
            store::list_contacts(&self.db, &ctx.tenant, &q, cursor.as_ref(), limit.expect("checked")).await?;
        let total = store::count_contacts(&self.db, &ctx.tenant, &q).await?;
        Ok(Response::new(pb::ListReferralsResponse {
            referred_contacts: contacts.iter().map(to_pb).collect(),
            next_page_token: next.map(|c| self.tokens.encode(&ctx.tenant, &fingerprint, &c)).unwrap_or_default(),
            total_count: i64::try_from(total).unwrap_or(i64::MAX),
        }))
    }
}

fn first_violation(e: Error) -> FieldViolation {
    match e {
        Error::InvalidArgument(mut v) if !v.is_empty() => v.remove(0),
        other => FieldViolation::new("", other.to_string()),
    }
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
