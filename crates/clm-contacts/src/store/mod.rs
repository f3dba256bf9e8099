//! The contacts service's own schema and queries. Every function takes the tenant and every
//! query is scoped to it. Writes take a transaction so a change and the events it causes are
//! committed together.

pub mod convert;
pub mod entities;
pub mod filter_sql;
pub mod migrations;

use clm_platform::{Error, Result, TenantId};
use sea_orm::sea_query::{Expr, ExprTrait, InsertStatement, OnConflict, SimpleExpr};
use sea_orm::{
    ActiveModelTrait, ActiveValue, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, Order, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, QueryTrait,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::filter::{Cond, LabelKind, consent_label};
use crate::domain::model::{AttrValue, Contact, ContactState};
use entities::{attribute, contact, erasure, label, segment};

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Sort orders of contact lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    CreateTime,
    UpdateTime,
    FamilyName,
    LeadScore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sort {
    pub key: SortKey,
    pub desc: bool,
}

impl Default for Sort {
    fn default() -> Self {
        Self { key: SortKey::CreateTime, desc: false }
    }
}

/// Where the previous page ended: the sort value and id of its last row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Cursor {
    Int(i64, String),
    Text(String, String),
}

fn sort_expr(key: SortKey) -> SimpleExpr {
    match key {
        SortKey::CreateTime => Expr::col(contact::Column::CreateTime),
        SortKey::UpdateTime => Expr::col(contact::Column::UpdateTime),
        SortKey::FamilyName => Expr::col(contact::Column::FamilyName),
        // Unscored contacts sort as -1 so the key is never NULL (keyset pages stay exact).
        SortKey::LeadScore => Expr::col(contact::Column::LeadScore).if_null(-1),
    }
}

fn cursor_of(sort: Sort, m: &contact::Model) -> Cursor {
    match sort.key {
        SortKey::CreateTime => Cursor::Int(m.create_time, m.id.clone()),
        SortKey::UpdateTime => Cursor::Int(m.update_time, m.id.clone()),
        SortKey::FamilyName => Cursor::Text(m.family_name.clone(), m.id.clone()),
        SortKey::LeadScore => Cursor::Int(i64::from(m.lead_score.unwrap_or(-1)), m.id.clone()),
    }
}

fn after(sort: Sort, cursor: &Cursor) -> SimpleExpr {
    let key = sort_expr(sort.key);
    let id = Expr::col(contact::Column::Id);
    let (v, last_id): (sea_orm::Value, &str) = match cursor {
        Cursor::Int(v, id) => ((*v).into(), id),
        Cursor::Text(v, id) => (v.clone().into(), id),
    };
    if sort.desc {
        key.clone().lt(v.clone()).or(key.eq(v).and(id.lt(last_id)))
    } else {
        key.clone().gt(v.clone()).or(key.eq(v).and(id.gt(last_id)))
    }
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub filter: Option<Cond>,
    pub sort: Sort,
    pub show_deleted: bool,
    /// Extra condition (e.g. referrals of one contact).
    pub referred_by: Option<Uuid>,
}

fn base_condition(tenant: &TenantId, q: &ListQuery) -> sea_orm::Condition {
    let mut cond = sea_orm::Condition::all()
        .add(contact::Column::TenantId.eq(tenant.as_str()))
        .add(filter_sql::condition(tenant.as_str(), q.filter.as_ref()));
    cond = if q.show_deleted {
        cond.add(contact::Column::State.ne(ContactState::Merged.key()))
    } else {
        cond.add(contact::Column::State.eq(ContactState::Active.key()))
    };
    if let Some(r) = q.referred_by {
        cond = cond.add(contact::Column::ReferredBy.eq(r.to_string()));
    }
    cond
}

/// One page of contacts after `cursor`, and the cursor of the page after it (if any).
pub async fn list_contacts(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    q: &ListQuery,
    cursor: Option<&Cursor>,
    limit: u64,
) -> Result<(Vec<Contact>, Option<Cursor>)> {
    let mut cond = base_condition(tenant, q);
    if let Some(c) = cursor {
        cond = cond.add(after(q.sort, c));
    }
    let order = if q.sort.desc { Order::Desc } else { Order::Asc };
    let rows = contact::Entity::find()
        .filter(cond)
        .order_by(sort_expr(q.sort.key), order.clone())
        .order_by(contact::Column::Id, order)
        .limit(limit + 1)
        .all(db)
        .await?;
    let (rows, next) = clm_platform::pagination::split_page(rows, limit, |m| cursor_of(q.sort, m));
    let contacts = rows.into_iter().map(convert::to_domain).collect::<Result<Vec<_>>>()?;
    Ok((contacts, next))
}

/// How many contacts match.
pub async fn count_contacts(db: &impl ConnectionTrait, tenant: &TenantId, q: &ListQuery) -> Result<u64> {
    Ok(contact::Entity::find().filter(base_condition(tenant, q)).count(db).await?)
}

/// The stored row of a contact (any state).
pub async fn find_contact(db: &impl ConnectionTrait, tenant: &TenantId, id: Uuid) -> Result<Option<Contact>> {
    // `all`, not `one`: the id is unique, and `one` binds its `LIMIT 1` as a parameter, which
    // SQLite lets steer the plan, so each new binding recompiles the statement (a fresh parse
    // and plan on every read of a contact).
    contact::Entity::find()
        .filter(contact::Column::TenantId.eq(tenant.as_str()))
        .filter(contact::Column::Id.eq(id.to_string()))
        .all(db)
        .await?
        .into_iter()
        .next()
        .map(convert::to_domain)
        .transpose()
}

/// A contact by id, following merges to the survivor. NOT_FOUND when missing or erased.
pub async fn get_resolved(db: &impl ConnectionTrait, tenant: &TenantId, id: Uuid) -> Result<Contact> {
    let mut current = id;
    // Merge chains are short; the bound protects against a corrupt cycle.
    for _ in 0..16 {
        let c = find_contact(db, tenant, current).await?.ok_or_else(|| Error::not_found("contact", id.to_string()))?;
        match (c.state, c.merged_into) {
            (ContactState::Merged, Some(next)) => current = next,
            _ => return Ok(c),
        }
    }
    Err(Error::internal(anyhow::anyhow!("merge chain too long from {id}")))
}

/// Many contacts by id (merged ids resolve), in the order asked.
pub async fn get_many(db: &impl ConnectionTrait, tenant: &TenantId, ids: &[Uuid]) -> Result<Vec<Option<Contact>>> {
    let rows = contact::Entity::find()
        .filter(contact::Column::TenantId.eq(tenant.as_str()))
        .filter(contact::Column::Id.is_in(ids.iter().map(ToString::to_string)))
        .all(db)
        .await?;
    let mut by_id = std::collections::HashMap::new();
    for r in rows {
        let c = convert::to_domain(r)?;
        by_id.insert(c.id, c);
    }
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(match by_id.get(id) {
            Some(c) if c.state == ContactState::Merged => Some(get_resolved(db, tenant, *id).await?),
            Some(c) => Some(c.clone()),
            None => None,
        });
    }
    Ok(out)
}

/// The id of the live contact holding `email`, if any.
pub async fn find_id_by_email(db: &impl ConnectionTrait, tenant: &TenantId, email: &str) -> Result<Option<Uuid>> {
    let row = contact::Entity::find()
        .select_only()
        .column(contact::Column::Id)
        .filter(contact::Column::TenantId.eq(tenant.as_str()))
        .filter(contact::Column::Email.eq(email))
        .into_tuple::<String>()
        .one(db)
        .await?;
    Ok(row.and_then(|s| Uuid::parse_str(&s).ok()))
}

/// Contacts with any of these emails (for import batches): email → contact.
pub async fn find_by_emails(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    emails: &[String],
) -> Result<std::collections::HashMap<String, Contact>> {
    if emails.is_empty() {
        return Ok(std::collections::HashMap::new());
    }
    let rows = contact::Entity::find()
        .filter(contact::Column::TenantId.eq(tenant.as_str()))
        .filter(contact::Column::Email.is_in(emails.iter().cloned()))
        .all(db)
        .await?;
    let mut out = std::collections::HashMap::new();
    for r in rows {
        let c = convert::to_domain(r)?;
        if let Some(e) = &c.data.email {
            out.insert(e.as_str().to_owned(), c);
        }
    }
    Ok(out)
}

pub fn is_unique_violation(err: &sea_orm::DbErr) -> bool {
    matches!(err.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_)))
}

pub async fn duplicate_email(db: &impl ConnectionTrait, tenant: &TenantId, c: &Contact) -> Error {
    let email = c.data.email.as_ref().map(|e| e.as_str().to_owned()).unwrap_or_default();
    match find_id_by_email(db, tenant, &email).await {
        Ok(Some(existing)) => {
            Error::AlreadyExists { message: format!("a contact with this email already exists: {existing}") }
        }
        _ => Error::AlreadyExists { message: "a contact with this email already exists".into() },
    }
}

/// Write `c` over the stored row if its version is still `expected_version` (optimistic
/// concurrency): otherwise ABORTED and nothing changes. `c.version` must be the new version.
pub async fn update_contact(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    c: &Contact,
    expected_version: i64,
) -> Result<()> {
    let mut am = convert::to_model(tenant.as_str(), c).into_active_model().reset_all();
    // Every column is written; the key columns only select the row.
    am.id = ActiveValue::Unchanged(c.id.to_string());
    am.tenant_id = ActiveValue::Unchanged(tenant.as_str().to_owned());
    let res = contact::Entity::update_many()
        .set(am)
        .filter(contact::Column::TenantId.eq(tenant.as_str()))
        .filter(contact::Column::Id.eq(c.id.to_string()))
        .filter(contact::Column::Version.eq(expected_version))
        .exec(db)
        .await;
    match res {
        Ok(r) if r.rows_affected == 1 => {}
        Ok(_) => {
            return Err(Error::Aborted(
                "the contact changed since it was read (etag mismatch); re-read and retry".into(),
            ));
        }
        Err(e) if is_unique_violation(&e) => return Err(duplicate_email(db, tenant, c).await),
        Err(e) => return Err(e.into()),
    }
    write_index_rows(db, tenant, c).await
}

async fn delete_index_rows(db: &impl ConnectionTrait, tenant: &TenantId, id: &str) -> Result<()> {
    label::Entity::delete_many()
        .filter(label::Column::TenantId.eq(tenant.as_str()))
        .filter(label::Column::ContactId.eq(id))
        .exec(db)
        .await?;
    attribute::Entity::delete_many()
        .filter(attribute::Column::TenantId.eq(tenant.as_str()))
        .filter(attribute::Column::ContactId.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// Replace the label and attribute rows that filters use.
async fn write_index_rows(db: &impl ConnectionTrait, tenant: &TenantId, c: &Contact) -> Result<()> {
    delete_index_rows(db, tenant, &c.id.to_string()).await?;
    for insert in index_inserts(tenant, c) {
        db.execute(&insert).await?;
    }
    Ok(())
}

/// The label and attribute rows of `c` (none for a merged contact), as inserts.
fn index_inserts(tenant: &TenantId, c: &Contact) -> Vec<InsertStatement> {
    let (labels, attrs) = index_models(tenant, c);
    let mut inserts = Vec::new();
    if !labels.is_empty() {
        inserts.push(label::Entity::insert_many(labels).into_query());
    }
    if !attrs.is_empty() {
        inserts.push(attribute::Entity::insert_many(attrs).into_query());
    }
    inserts
}

/// New contacts in bulk (an import batch): multi-row inserts of the contacts and of their
/// label and attribute rows, in chunks that stay under the databases' bound-parameter caps.
pub async fn insert_contacts(db: &impl ConnectionTrait, tenant: &TenantId, list: &[Contact]) -> Result<()> {
    if db.get_database_backend() == sea_orm::DbBackend::Postgres {
        // One JSON parameter for all the rows: a multi-row VALUES list of 500 contacts binds
        // 16,000 parameters, which PostgreSQL parses, binds and plans slowly.
        let models: Vec<contact::Model> = list.iter().map(|c| convert::to_model(tenant.as_str(), c)).collect();
        let rows = serde_json::to_string(&models).map_err(Error::internal)?;
        let cols = <contact::Column as sea_orm::Iterable>::iter()
            .map(|c| format!("\"{}\"", sea_orm::IdenStatic::as_str(&c)))
            .collect::<Vec<_>>()
            .join(", ");
        db.execute_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            format!(
                "INSERT INTO contacts ({cols}) SELECT {cols} FROM json_populate_recordset(NULL::contacts, $1::json)"
            ),
            [rows.into()],
        ))
        .await?;
    } else {
        for chunk in list.chunks(500) {
            let models = chunk.iter().map(|c| convert::to_model(tenant.as_str(), c).into_active_model());
            contact::Entity::insert_many(models).exec_without_returning(db).await?;
        }
    }
    let (mut labels, mut attrs) = (Vec::new(), Vec::new());
    for c in list {
        let (l, a) = index_models(tenant, c);
        labels.extend(l);
        attrs.extend(a);
    }
    while !labels.is_empty() {
        let rest = labels.split_off(labels.len().min(2000));
        label::Entity::insert_many(std::mem::replace(&mut labels, rest)).exec_without_returning(db).await?;
    }
    while !attrs.is_empty() {
        let rest = attrs.split_off(attrs.len().min(1000));
        attribute::Entity::insert_many(std::mem::replace(&mut attrs, rest)).exec_without_returning(db).await?;
    }
    Ok(())
}

/// The label (tags, interests, values, consents) and attribute rows of `c` (none for a merged
/// contact).
fn index_models(tenant: &TenantId, c: &Contact) -> (Vec<label::ActiveModel>, Vec<attribute::ActiveModel>) {
    if c.state == ContactState::Merged {
        return (Vec::new(), Vec::new());
    }
    let id = c.id.to_string();
    let mut labels = Vec::new();
    for (kind, list) in [("tag", &c.data.tags), ("interest", &c.data.interests), ("value", &c.data.values)] {
        let mut seen = std::collections::HashSet::new();
        for v in list {
            let lower = v.to_lowercase();
            if seen.insert(lower.clone()) {
                labels.push(label::ActiveModel {
                    contact_id: ActiveValue::Set(id.clone()),
                    kind: ActiveValue::Set(kind.to_owned()),
                    value: ActiveValue::Set(lower),
                    tenant_id: ActiveValue::Set(tenant.as_str().to_owned()),
                });
            }
        }
    }
    for consent in &c.data.consents {
        labels.push(label::ActiveModel {
            contact_id: ActiveValue::Set(id.clone()),
            kind: ActiveValue::Set(LabelKind::Consent.key().to_owned()),
            value: ActiveValue::Set(consent_label(consent.channel, consent.purpose, consent.status)),
            tenant_id: ActiveValue::Set(tenant.as_str().to_owned()),
        });
    }
    let attrs: Vec<_> = c
        .data
        .attributes
        .iter()
        .map(|(k, v)| {
            let (t, n, b, ts) = match v {
                AttrValue::Text(s) => (Some(s.clone()), None, None, None),
                AttrValue::Number(x) => (None, Some(*x), None, None),
                AttrValue::Bool(x) => (None, None, Some(*x), None),
                AttrValue::Time(x) => (None, None, None, Some(*x)),
            };
            attribute::ActiveModel {
                contact_id: ActiveValue::Set(id.clone()),
                key: ActiveValue::Set(k.as_str().to_owned()),
                tenant_id: ActiveValue::Set(tenant.as_str().to_owned()),
                text_value: ActiveValue::Set(t),
                number_value: ActiveValue::Set(n),
                bool_value: ActiveValue::Set(b),
                time_value: ActiveValue::Set(ts),
            }
        })
        .collect();
    (labels, attrs)
}

/// The rows of a new contact (the contact, its label and attribute rows) as inserts, to be
/// written together with its outbox event by [`clm_platform::db::insert_all`].
pub fn contact_inserts(tenant: &TenantId, c: &Contact) -> Vec<InsertStatement> {
    let mut inserts =
        vec![contact::Entity::insert(convert::to_model(tenant.as_str(), c).into_active_model()).into_query()];
    inserts.extend(index_inserts(tenant, c));
    inserts
}

/// Remove a contact's personal data for good and record the erasure (no personal data).
/// Returns false when there was nothing to erase.
pub async fn erase_contact(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    id: Uuid,
    reason: &str,
    actor: &str,
    at: i64,
) -> Result<bool> {
    let sid = id.to_string();
    delete_index_rows(db, tenant, &sid).await?;
    let deleted = contact::Entity::delete_many()
        .filter(contact::Column::TenantId.eq(tenant.as_str()))
        .filter(contact::Column::Id.eq(&sid))
        .exec(db)
        .await?
        .rows_affected;
    if deleted == 0 {
        return Ok(false);
    }
    erasure::Entity::insert(erasure::ActiveModel {
        contact_id: ActiveValue::Set(sid),
        tenant_id: ActiveValue::Set(tenant.as_str().to_owned()),
        erase_time: ActiveValue::Set(at),
        reason: ActiveValue::Set(reason.to_owned()),
        actor: ActiveValue::Set(actor.to_owned()),
    })
    .on_conflict(OnConflict::column(erasure::Column::ContactId).do_nothing().to_owned())
    .exec_without_returning(db)
    .await?;
    Ok(true)
}

/// When a contact was erased, if it was.
pub async fn erased_at(db: &impl ConnectionTrait, tenant: &TenantId, id: Uuid) -> Result<Option<i64>> {
    Ok(erasure::Entity::find()
        .filter(erasure::Column::TenantId.eq(tenant.as_str()))
        .filter(erasure::Column::ContactId.eq(id.to_string()))
        .one(db)
        .await?
        .map(|e| e.erase_time))
}

// ---- segments ----

/// A stored segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub id: Uuid,
    pub display_name: String,
    pub description: String,
    pub filter: String,
    pub create_time: i64,
    pub update_time: i64,
    pub version: i64,
}

fn segment_from(m: segment::Model) -> Result<Segment> {
    Ok(Segment {
        id: Uuid::parse_str(&m.id).map_err(|_| Error::internal(anyhow::anyhow!("bad segment id {}", m.id)))?,
        display_name: m.display_name,
        description: m.description,
        filter: m.filter,
        create_time: m.create_time,
        update_time: m.update_time,
        version: m.version,
    })
}

fn segment_model(tenant: &TenantId, s: &Segment) -> segment::Model {
    segment::Model {
        id: s.id.to_string(),
        tenant_id: tenant.as_str().to_owned(),
        display_name: s.display_name.clone(),
        description: s.description.clone(),
        filter: s.filter.clone(),
        create_time: s.create_time,
        update_time: s.update_time,
        version: s.version,
    }
}

pub async fn insert_segment(db: &impl ConnectionTrait, tenant: &TenantId, s: &Segment) -> Result<()> {
    segment::Entity::insert(segment_model(tenant, s).into_active_model()).exec_without_returning(db).await?;
    Ok(())
}

pub async fn get_segment(db: &impl ConnectionTrait, tenant: &TenantId, id: Uuid) -> Result<Segment> {
    segment::Entity::find()
        .filter(segment::Column::TenantId.eq(tenant.as_str()))
        .filter(segment::Column::Id.eq(id.to_string()))
        .one(db)
        .await?
        .map(segment_from)
        .transpose()?
        .ok_or_else(|| Error::not_found("segment", id.to_string()))
}

pub async fn update_segment(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    s: &Segment,
    expected_version: i64,
) -> Result<()> {
    let mut am = segment_model(tenant, s).into_active_model().reset_all();
    am.id = ActiveValue::Unchanged(s.id.to_string());
    am.tenant_id = ActiveValue::Unchanged(tenant.as_str().to_owned());
    let r = segment::Entity::update_many()
        .set(am)
        .filter(segment::Column::TenantId.eq(tenant.as_str()))
        .filter(segment::Column::Id.eq(s.id.to_string()))
        .filter(segment::Column::Version.eq(expected_version))
        .exec(db)
        .await?;
    if r.rows_affected == 1 {
        Ok(())
    } else {
        Err(Error::Aborted("the segment changed since it was read (etag mismatch); re-read and retry".into()))
    }
}

pub async fn delete_segment(db: &impl ConnectionTrait, tenant: &TenantId, id: Uuid) -> Result<bool> {
    let r = segment::Entity::delete_many()
        .filter(segment::Column::TenantId.eq(tenant.as_str()))
        .filter(segment::Column::Id.eq(id.to_string()))
        .exec(db)
        .await?;
    Ok(r.rows_affected > 0)
}

/// A page of segments after `(create_time, id)`.
pub async fn list_segments(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    after: Option<&(i64, String)>,
    limit: u64,
) -> Result<(Vec<Segment>, Option<(i64, String)>)> {
    let mut q = segment::Entity::find().filter(segment::Column::TenantId.eq(tenant.as_str()));
    if let Some((t, id)) = after {
        q = q.filter(
            Expr::col(segment::Column::CreateTime)
                .gt(*t)
                .or(Expr::col(segment::Column::CreateTime).eq(*t).and(Expr::col(segment::Column::Id).gt(id.clone()))),
        );
    }
    let rows =
        q.order_by_asc(segment::Column::CreateTime).order_by_asc(segment::Column::Id).limit(limit + 1).all(db).await?;
    let (rows, next) = clm_platform::pagination::split_page(rows, limit, |m| (m.create_time, m.id.clone()));
    Ok((rows.into_iter().map(segment_from).collect::<Result<Vec<_>>>()?, next))
}

/// After a merge, contacts referred by a merged contact count as referred by the survivor.
pub async fn repoint_referrals(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    merged: &[Uuid],
    survivor: Uuid,
) -> Result<()> {
    if merged.is_empty() {
        return Ok(());
    }
    contact::Entity::update_many()
        .col_expr(contact::Column::ReferredBy, Expr::val(survivor.to_string()))
        .filter(contact::Column::TenantId.eq(tenant.as_str()))
        .filter(contact::Column::ReferredBy.is_in(merged.iter().map(ToString::to_string)))
        .exec(db)
        .await?;
    Ok(())
}
