//! Request ids (AIP-155): a create retried with the same `request_id` returns what the first
//! call produced instead of creating twice. Services add [`IdempotencyMigration`] and
//! [`IdempotencyHashMigration`] to their migrator and call [`find`] before and [`record`]
//! inside the transaction of the change (or write [`insert`] in the change's one statement).
//! Every service keeps its request ids here, in its own database's `idempotency_keys`.
//!
//! A request id names one request: with it we keep the [`fingerprint`] of the request (SHA-256
//! of its canonical encoding, `request_id` left out). The same id with another payload is a
//! client bug, not a retry, and is refused with INVALID_ARGUMENT on `request_id` ([`reused`])
//! rather than answered with the first call's result as if it were this one's. Ids recorded
//! before fingerprints were kept (no hash) keep the old behaviour: the first result.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use prost_types::{DescriptorProto, FileDescriptorSet, field_descriptor_proto::Type};
use sea_orm::{ActiveValue, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use sea_orm_migration::prelude::*;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{Error, FieldViolation, Result, TenantId};

mod entity {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "idempotency_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub method: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub request_id: String,
        /// What the first call produced (a resource id, or several joined by commas).
        pub resource_id: String,
        pub create_time: i64,
        /// The request's [`super::fingerprint`] (none for ids recorded before it was kept).
        pub request_hash: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

#[derive(DeriveIden)]
enum IdempotencyKeys {
    Table,
    TenantId,
    Method,
    RequestId,
    ResourceId,
    CreateTime,
    RequestHash,
}

/// Migration creating `idempotency_keys`.
pub struct IdempotencyMigration;

impl MigrationName for IdempotencyMigration {
    fn name(&self) -> &'static str {
        "platform_0003_idempotency_keys"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for IdempotencyMigration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(IdempotencyKeys::Table)
                .col(ColumnDef::new(IdempotencyKeys::TenantId).string().not_null())
                .col(ColumnDef::new(IdempotencyKeys::Method).string().not_null())
                .col(ColumnDef::new(IdempotencyKeys::RequestId).string().not_null())
                .col(ColumnDef::new(IdempotencyKeys::ResourceId).text().not_null())
                .col(ColumnDef::new(IdempotencyKeys::CreateTime).big_integer().not_null())
                .primary_key(
                    Index::create()
                        .col(IdempotencyKeys::TenantId)
                        .col(IdempotencyKeys::Method)
                        .col(IdempotencyKeys::RequestId),
                )
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(IdempotencyKeys::Table).to_owned()).await
    }
}

/// Migration adding `idempotency_keys.request_hash` (the fingerprint of the first request).
pub struct IdempotencyHashMigration;

impl MigrationName for IdempotencyHashMigration {
    fn name(&self) -> &'static str {
        "platform_0004_idempotency_request_hash"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for IdempotencyHashMigration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(IdempotencyKeys::Table)
                .add_column(ColumnDef::new(IdempotencyKeys::RequestHash).string().null())
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(Table::alter().table(IdempotencyKeys::Table).drop_column(IdempotencyKeys::RequestHash).to_owned())
            .await
    }
}

/// Check a request's `request_id` field: empty (none) or a UUID.
pub fn check(raw: &str) -> std::result::Result<Option<String>, FieldViolation> {
    if raw.is_empty() {
        return Ok(None);
    }
    Uuid::parse_str(raw)
        .map(|u| Some(u.to_string()))
        .map_err(|_| FieldViolation::new("request_id", "must be a UUID (or empty)"))
}

/// What an earlier call of `method` with this request id produced; INVALID_ARGUMENT
/// ([`reused`]) when that call's request had another `fingerprint`.
pub async fn find(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    method: &str,
    request_id: &str,
    fingerprint: &str,
) -> Result<Option<String>> {
    let Some(row) = entity::Entity::find()
        .filter(entity::Column::TenantId.eq(tenant.as_str()))
        .filter(entity::Column::Method.eq(method))
        .filter(entity::Column::RequestId.eq(request_id))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    same_request(row.request_hash.as_deref(), fingerprint)?;
    Ok(Some(row.resource_id))
}

/// Remember what a request id produced, and the request's fingerprint, in the transaction of
/// the change. A concurrent call with the same id fails the unique key: ABORTED, retry (and
/// then find the first result).
pub async fn record(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    method: &str,
    request_id: &str,
    fingerprint: &str,
    resource_id: &str,
) -> Result<()> {
    db.execute(&insert(tenant, method, request_id, fingerprint, resource_id)).await.map_err(|e| {
        if matches!(e.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_))) {
            Error::Aborted("a concurrent request with the same request_id is in progress; retry".into())
        } else {
            e.into()
        }
    })?;
    Ok(())
}

/// [`record`] as an insert statement, for a write that lands in one statement with the change
/// (`UnitOfWork::insert_all`, contacts' CreateContact). A request id recorded before fails the
/// statement with a unique violation; the caller then [`find`]s the first result.
pub fn insert(
    tenant: &TenantId,
    method: &str,
    request_id: &str,
    fingerprint: &str,
    resource_id: &str,
) -> sea_orm::sea_query::InsertStatement {
    sea_orm::QueryTrait::into_query(entity::Entity::insert(entity::ActiveModel {
        tenant_id: ActiveValue::Set(tenant.as_str().to_owned()),
        method: ActiveValue::Set(method.to_owned()),
        request_id: ActiveValue::Set(request_id.to_owned()),
        resource_id: ActiveValue::Set(resource_id.to_owned()),
        create_time: ActiveValue::Set(chrono::Utc::now().timestamp_micros()),
        request_hash: ActiveValue::Set(Some(fingerprint.to_owned())),
    }))
}

/// The error of a request id used again for another request.
pub fn reused(field: &str) -> Error {
    Error::invalid(
        field,
        "was already used for a different request; a retry must repeat the request exactly, a new request needs a new id",
    )
}

/// `Ok` when the first request's fingerprint (`None`: recorded before fingerprints were kept)
/// is this one's.
pub fn same_request(stored: Option<&str>, fingerprint: &str) -> Result<()> {
    match stored {
        Some(h) if h != fingerprint => Err(reused("request_id")),
        _ => Ok(()),
    }
}

/// The fingerprint of a request: hex SHA-256 of its canonical protobuf encoding, without its
/// top-level `request_id` field. `type_name` is the message's full name
/// (`clm.contacts.v1.CreateContactRequest`). Canonical: map entries sorted (prost encodes a
/// map in its `HashMap`'s order, which differs from one value to another), everything else as
/// encoded — so two requests have the same fingerprint exactly when they are equal.
pub fn fingerprint(type_name: &str, msg: &impl prost::Message) -> String {
    fingerprint_bytes(type_name, &msg.encode_to_vec(), Some("request_id"))
}

/// [`fingerprint`] of an encoded message, leaving out its top-level field `skip`.
pub fn fingerprint_bytes(type_name: &str, encoded: &[u8], skip: Option<&str>) -> String {
    let desc = MESSAGES.get(&format!(".{}", type_name.trim_start_matches('.')));
    debug_assert!(desc.is_some(), "{type_name} is not a CLM message");
    let canonical = match desc {
        Some(d) => canonical(encoded, d, skip).unwrap_or_else(|| encoded.to_vec()),
        None => encoded.to_vec(),
    };
    Sha256::digest(&canonical).iter().fold(String::with_capacity(64), |mut out, b| {
        use std::fmt::Write as _;
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Every message type of the CLM contracts by full name (".clm.contacts.v1.Contact").
static MESSAGES: LazyLock<HashMap<String, DescriptorProto>> = LazyLock::new(|| {
    fn add(out: &mut HashMap<String, DescriptorProto>, scope: &str, m: &DescriptorProto) {
        let name = format!("{scope}.{}", m.name());
        for n in &m.nested_type {
            add(out, &name, n);
        }
        out.insert(name, m.clone());
    }
    let mut out = HashMap::new();
    let set = <FileDescriptorSet as prost::Message>::decode(clm_proto::FILE_DESCRIPTOR_SET).unwrap_or_default();
    for f in &set.file {
        let scope = if f.package().is_empty() { String::new() } else { format!(".{}", f.package()) };
        for m in &f.message_type {
            add(&mut out, &scope, m);
        }
    }
    out
});

fn varint(buf: &mut &[u8]) -> Option<u64> {
    prost::encoding::decode_varint(buf).ok()
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if buf.len() < n {
        return None;
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Some(head)
}

/// `bytes` (a `desc` message) with every map's entries sorted, recursively; `None` when they
/// do not parse (the caller then hashes them as they are).
fn canonical(bytes: &[u8], desc: &DescriptorProto, skip: Option<&str>) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut maps: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    let mut buf = bytes;
    while !buf.is_empty() {
        let start = buf;
        let key = varint(&mut buf)?;
        let number = key >> 3;
        let field = desc.field.iter().find(|f| i64::from(f.number()) == number as i64);
        let skipped = skip.is_some_and(|s| field.is_some_and(|f| f.name() == s));
        match key & 7 {
            0 => {
                varint(&mut buf)?;
            }
            1 => {
                take(&mut buf, 8)?;
            }
            5 => {
                take(&mut buf, 4)?;
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let value = take(&mut buf, len)?;
                let nested = field.filter(|f| f.r#type() == Type::Message).and_then(|f| MESSAGES.get(f.type_name()));
                if let (Some(nested), false) = (nested, skipped) {
                    let inner = canonical(value, nested, None)?;
                    let mut encoded = Vec::with_capacity(inner.len() + 12);
                    prost::encoding::encode_varint(key, &mut encoded);
                    prost::encoding::encode_varint(inner.len() as u64, &mut encoded);
                    encoded.extend_from_slice(&inner);
                    if nested.options.as_ref().is_some_and(prost_types::MessageOptions::map_entry) {
                        maps.entry(number).or_default().push(encoded);
                    } else {
                        out.extend_from_slice(&encoded);
                    }
                    continue;
                }
            }
            _ => return None,
        }
        if !skipped {
            out.extend_from_slice(&start[..start.len() - buf.len()]);
        }
    }
    for (_, mut entries) in maps {
        entries.sort();
        for e in entries {
            out.extend_from_slice(&e);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use clm_proto::contacts::v1 as pb;
    use prost::Message as _;

    use super::*;

    fn attrs(keys: impl Iterator<Item = u32>) -> std::collections::HashMap<String, pb::AttributeValue> {
        keys.map(|i| {
            (format!("k{i}"), pb::AttributeValue { kind: Some(pb::attribute_value::Kind::NumberValue(f64::from(i))) })
        })
        .collect()
    }

    fn request(rid: &str, email: &str, keys: impl Iterator<Item = u32>) -> pb::CreateContactRequest {
        pb::CreateContactRequest {
            contact: Some(pb::Contact { email: email.into(), attributes: attrs(keys), ..Default::default() }),
            request_id: rid.into(),
        }
    }

    #[test]
    fn fingerprints_equal_requests_alike_and_others_not() {
        const T: &str = "clm.contacts.v1.CreateContactRequest";
        let a = fingerprint(T, &request("r1", "a@x.co", 0..40));
        // Built in another order, into another map (another hasher): still the same request.
        let b = fingerprint(T, &request("r2", "a@x.co", (0..40).rev()));
        assert_ne!(
            request("r", "a@x.co", 0..40).encode_to_vec(),
            request("r", "a@x.co", (0..40).rev()).encode_to_vec(),
            "prost encodes maps in hash order (else this test proves nothing)"
        );
        assert_eq!(a, b, "the request id is left out, map order does not count");
        assert_eq!(a.len(), 64);
        assert_ne!(a, fingerprint(T, &request("r1", "b@x.co", 0..40)));
        assert_ne!(a, fingerprint(T, &request("r1", "a@x.co", 0..39)));
        // Repeated fields keep their order: a list in another order is another request.
        let tags = |t: &[&str]| pb::CreateContactRequest {
            contact: Some(pb::Contact { tags: t.iter().map(|s| (*s).to_owned()).collect(), ..Default::default() }),
            request_id: String::new(),
        };
        assert_ne!(fingerprint(T, &tags(&["a", "b"])), fingerprint(T, &tags(&["b", "a"])));
        assert!(MESSAGES.contains_key(".clm.lifecycle.v1.JourneyEvent"));
        assert!(MESSAGES.contains_key(".clm.contacts.v1.Contact.AttributesEntry"));
    }

    #[test]
    fn a_hash_recorded_before_is_compared_none_is_not() {
        assert!(same_request(None, "abc").is_ok());
        assert!(same_request(Some("abc"), "abc").is_ok());
        let err = same_request(Some("abc"), "abd").unwrap_err();
        assert!(matches!(&err, Error::InvalidArgument(v) if v[0].field == "request_id"), "{err:?}");
    }
}
