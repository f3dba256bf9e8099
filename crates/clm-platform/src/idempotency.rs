//! Request ids (AIP-155): a create retried with the same `request_id` returns what the first
//! call produced instead of creating twice. Services add [`IdempotencyMigration`] to their
//! migrator and call [`find`] before and [`record`] inside the transaction of the change.

use sea_orm::{ActiveValue, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use sea_orm_migration::prelude::*;
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

/// Check a request's `request_id` field: empty (none) or a UUID.
pub fn check(raw: &str) -> std::result::Result<Option<String>, FieldViolation> {
    if raw.is_empty() {
        return Ok(None);
    }
    Uuid::parse_str(raw)
        .map(|u| Some(u.to_string()))
        .map_err(|_| FieldViolation::new("request_id", "must be a UUID (or empty)"))
}

/// What an earlier call of `method` with this request id produced.
pub async fn find(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    method: &str,
    request_id: &str,
) -> Result<Option<String>> {
    Ok(entity::Entity::find()
        .filter(entity::Column::TenantId.eq(tenant.as_str()))
        .filter(entity::Column::Method.eq(method))
        .filter(entity::Column::RequestId.eq(request_id))
        .one(db)
        .await?
        .map(|r| r.resource_id))
}

/// Remember what a request id produced, in the transaction of the change. A concurrent call
/// with the same id fails the unique key: ABORTED, retry (and then find the first result).
pub async fn record(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    method: &str,
    request_id: &str,
    resource_id: &str,
) -> Result<()> {
    entity::Entity::insert(entity::ActiveModel {
        tenant_id: ActiveValue::Set(tenant.as_str().to_owned()),
        method: ActiveValue::Set(method.to_owned()),
        request_id: ActiveValue::Set(request_id.to_owned()),
        resource_id: ActiveValue::Set(resource_id.to_owned()),
        create_time: ActiveValue::Set(chrono::Utc::now().timestamp_micros()),
    })
    .exec_without_returning(db)
    .await
    .map_err(|e| {
        if matches!(e.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_))) {
            Error::Aborted("a concurrent request with the same request_id is in progress; retry".into())
        } else {
            e.into()
        }
    })?;
    Ok(())
}
