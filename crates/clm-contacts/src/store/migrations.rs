//! Schema migrations of the contacts database (sea-orm-migration). Times are BIGINT
//! microseconds since the Unix epoch (portable, ordered, exact); ids are UUID text.

use sea_orm_migration::prelude::*;

#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(M0001Contacts),
            Box::new(clm_platform::events::outbox::OutboxMigration),
            Box::new(clm_platform::events::inbox::InboxMigration),
            Box::new(M0002RequestHash),
            Box::new(clm_platform::events::ordering::OutboxKeysMigration),
            Box::new(clm_platform::events::ordering::InboxPositionsMigration),
            Box::new(clm_platform::events::prune::InboxAgeIndexMigration),
            Box::new(clm_platform::idempotency::IdempotencyMigration),
            Box::new(clm_platform::idempotency::IdempotencyHashMigration),
            Box::new(M0003RequestIdsToPlatform),
            Box::new(M0004ConsentLabels),
        ]
    }
}

#[derive(DeriveIden)]
enum Contacts {
    Table,
    TenantId,
    Id,
    Email,
    Phone,
    GivenName,
    FamilyName,
    Company,
    JobTitle,
    BirthYear,
    AgeBand,
    Gender,
    Locale,
    CountryCode,
    Region,
    City,
    Labels,
    Attributes,
    Consents,
    AcqChannel,
    AcqCampaign,
    AcqSourceDetail,
    AcqCostCurrency,
    AcqCostMicros,
    ReferredBy,
    AcquiredAt,
    LeadScore,
    State,
    MergedInto,
    CreateTime,
    UpdateTime,
    DeleteTime,
    Version,
}

#[derive(DeriveIden)]
enum ContactLabels {
    Table,
    TenantId,
    ContactId,
    Kind,
    Value,
}

#[derive(DeriveIden)]
enum ContactAttributes {
    Table,
    TenantId,
    ContactId,
    Key,
    TextValue,
    NumberValue,
    BoolValue,
    TimeValue,
}

#[derive(DeriveIden)]
enum Segments {
    Table,
    TenantId,
    Id,
    DisplayName,
    Description,
    Filter,
    CreateTime,
    UpdateTime,
    Version,
}

#[derive(DeriveIden)]
enum RequestIds {
    Table,
    TenantId,
    Method,
    RequestId,
    ResourceId,
    CreateTime,
    RequestHash,
}

/// The platform's table (`clm_platform::idempotency`), as [`M0003RequestIdsToPlatform`] fills it.
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

#[derive(DeriveIden)]
enum Erasures {
    Table,
    TenantId,
    ContactId,
    EraseTime,
    Reason,
    Actor,
}

struct M0001Contacts;

impl MigrationName for M0001Contacts {
    fn name(&self) -> &'static str {
        "m0001_contacts"
    }
}

fn text(c: impl IntoIden) -> ColumnDef {
    ColumnDef::new(c).string().not_null().default("").to_owned()
}

fn text_null(c: impl IntoIden) -> ColumnDef {
    ColumnDef::new(c).string().null().to_owned()
}

fn bigint(c: impl IntoIden) -> ColumnDef {
    ColumnDef::new(c).big_integer().not_null().to_owned()
}

fn bigint_null(c: impl IntoIden) -> ColumnDef {
    ColumnDef::new(c).big_integer().null().to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for M0001Contacts {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Contacts::Table)
                .col(ColumnDef::new(Contacts::Id).string().not_null().primary_key())
                .col(ColumnDef::new(Contacts::TenantId).string().not_null())
                .col(text_null(Contacts::Email))
                .col(text_null(Contacts::Phone))
                .col(text(Contacts::GivenName))
                .col(text(Contacts::FamilyName))
                .col(text(Contacts::Company))
                .col(text(Contacts::JobTitle))
                .col(ColumnDef::new(Contacts::BirthYear).integer().null())
                .col(text_null(Contacts::AgeBand))
                .col(text_null(Contacts::Gender))
                .col(text(Contacts::Locale))
                .col(text_null(Contacts::CountryCode))
                .col(text(Contacts::Region))
                .col(text(Contacts::City))
                .col(ColumnDef::new(Contacts::Labels).text().not_null())
                .col(ColumnDef::new(Contacts::Attributes).text().not_null())
                .col(ColumnDef::new(Contacts::Consents).text().not_null())
                .col(text_null(Contacts::AcqChannel))
                .col(text(Contacts::AcqCampaign))
                .col(text(Contacts::AcqSourceDetail))
                .col(text_null(Contacts::AcqCostCurrency))
                .col(bigint_null(Contacts::AcqCostMicros))
                .col(text_null(Contacts::ReferredBy))
                .col(bigint_null(Contacts::AcquiredAt))
                .col(ColumnDef::new(Contacts::LeadScore).integer().null())
                .col(ColumnDef::new(Contacts::State).string().not_null())
                .col(text_null(Contacts::MergedInto))
                .col(bigint(Contacts::CreateTime))
                .col(bigint(Contacts::UpdateTime))
                .col(bigint_null(Contacts::DeleteTime))
                .col(bigint(Contacts::Version))
                .to_owned(),
        )
        .await?;
        // Unique email per tenant (NULLs never collide); the usual sort keys per tenant.
        m.create_index(
            Index::create()
                .name("ux_contacts_tenant_email")
                .table(Contacts::Table)
                .col(Contacts::TenantId)
                .col(Contacts::Email)
                .unique()
                .to_owned(),
        )
        .await?;
        for (name, col) in [
            ("ix_contacts_tenant_create", Contacts::CreateTime),
            ("ix_contacts_tenant_update", Contacts::UpdateTime),
            ("ix_contacts_tenant_family", Contacts::FamilyName),
            ("ix_contacts_tenant_score", Contacts::LeadScore),
            ("ix_contacts_tenant_referred", Contacts::ReferredBy),
        ] {
            m.create_index(
                Index::create()
                    .name(name)
                    .table(Contacts::Table)
                    .col(Contacts::TenantId)
                    .col(col)
                    .col(Contacts::Id)
                    .to_owned(),
            )
            .await?;
        }

        m.create_table(
            Table::create()
                .table(ContactLabels::Table)
                .col(ColumnDef::new(ContactLabels::TenantId).string().not_null())
                .col(ColumnDef::new(ContactLabels::ContactId).string().not_null())
                .col(ColumnDef::new(ContactLabels::Kind).string().not_null())
                .col(ColumnDef::new(ContactLabels::Value).string().not_null())
                .primary_key(
                    Index::create().col(ContactLabels::ContactId).col(ContactLabels::Kind).col(ContactLabels::Value),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_labels_lookup")
                .table(ContactLabels::Table)
                .col(ContactLabels::TenantId)
                .col(ContactLabels::Kind)
                .col(ContactLabels::Value)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(ContactAttributes::Table)
                .col(ColumnDef::new(ContactAttributes::TenantId).string().not_null())
                .col(ColumnDef::new(ContactAttributes::ContactId).string().not_null())
                .col(ColumnDef::new(ContactAttributes::Key).string().not_null())
                .col(ColumnDef::new(ContactAttributes::TextValue).string().null())
                .col(ColumnDef::new(ContactAttributes::NumberValue).double().null())
                .col(ColumnDef::new(ContactAttributes::BoolValue).boolean().null())
                .col(ColumnDef::new(ContactAttributes::TimeValue).big_integer().null())
                .primary_key(Index::create().col(ContactAttributes::ContactId).col(ContactAttributes::Key))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_attributes_text")
                .table(ContactAttributes::Table)
                .col(ContactAttributes::TenantId)
                .col(ContactAttributes::Key)
                .col(ContactAttributes::TextValue)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_attributes_number")
                .table(ContactAttributes::Table)
                .col(ContactAttributes::TenantId)
                .col(ContactAttributes::Key)
                .col(ContactAttributes::NumberValue)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Segments::Table)
                .col(ColumnDef::new(Segments::Id).string().not_null().primary_key())
                .col(ColumnDef::new(Segments::TenantId).string().not_null())
                .col(ColumnDef::new(Segments::DisplayName).string().not_null())
                .col(ColumnDef::new(Segments::Description).text().not_null())
                .col(ColumnDef::new(Segments::Filter).text().not_null())
                .col(bigint(Segments::CreateTime))
                .col(bigint(Segments::UpdateTime))
                .col(bigint(Segments::Version))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_segments_tenant")
                .table(Segments::Table)
                .col(Segments::TenantId)
                .col(Segments::CreateTime)
                .col(Segments::Id)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(RequestIds::Table)
                .col(ColumnDef::new(RequestIds::TenantId).string().not_null())
                .col(ColumnDef::new(RequestIds::Method).string().not_null())
                .col(ColumnDef::new(RequestIds::RequestId).string().not_null())
                .col(ColumnDef::new(RequestIds::ResourceId).string().not_null())
                .col(bigint(RequestIds::CreateTime))
                .primary_key(
                    Index::create().col(RequestIds::TenantId).col(RequestIds::Method).col(RequestIds::RequestId),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Erasures::Table)
                .col(ColumnDef::new(Erasures::ContactId).string().not_null().primary_key())
                .col(ColumnDef::new(Erasures::TenantId).string().not_null())
                .col(bigint(Erasures::EraseTime))
                .col(ColumnDef::new(Erasures::Reason).string().not_null())
                .col(ColumnDef::new(Erasures::Actor).string().not_null())
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            Erasures::Table.into_iden(),
            RequestIds::Table.into_iden(),
            Segments::Table.into_iden(),
            ContactAttributes::Table.into_iden(),
            ContactLabels::Table.into_iden(),
            Contacts::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(t).to_owned()).await?;
        }
        Ok(())
    }
}

/// `request_ids.request_hash`: the fingerprint of the request that used the id
/// (`clm_platform::idempotency::fingerprint`), so the id reused for another request is refused.
/// Rows from before have none and keep the old behaviour (the first result).
struct M0002RequestHash;

impl MigrationName for M0002RequestHash {
    fn name(&self) -> &'static str {
        "m0002_request_hash"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0002RequestHash {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(RequestIds::Table)
                .add_column(ColumnDef::new(RequestIds::RequestHash).string().null())
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(Table::alter().table(RequestIds::Table).drop_column(RequestIds::RequestHash).to_owned()).await
    }
}

/// Request ids move to the platform's `idempotency_keys` (made by the platform's migrations
/// just before), so contacts keeps them as every other service does (`clm_platform::idempotency`):
/// the rows are copied as they are, fingerprints included, and `request_ids` is dropped. The
/// two tables have the same key (tenant, method, request id).
struct M0003RequestIdsToPlatform;

impl MigrationName for M0003RequestIdsToPlatform {
    fn name(&self) -> &'static str {
        "m0003_request_ids_to_idempotency_keys"
    }
}

/// `INSERT INTO to (columns) SELECT columns FROM from`: the rows of one request id table copied
/// into the other.
fn copy_request_ids(from: impl IntoIden, to: impl IntoIden) -> Result<InsertStatement, DbErr> {
    let select = Query::select()
        .columns([
            RequestIds::TenantId,
            RequestIds::Method,
            RequestIds::RequestId,
            RequestIds::ResourceId,
            RequestIds::CreateTime,
            RequestIds::RequestHash,
        ])
        .from(from)
        .to_owned();
    Ok(Query::insert()
        .into_table(to)
        .columns([
            IdempotencyKeys::TenantId,
            IdempotencyKeys::Method,
            IdempotencyKeys::RequestId,
            IdempotencyKeys::ResourceId,
            IdempotencyKeys::CreateTime,
            IdempotencyKeys::RequestHash,
        ])
        .select_from(select)
        .map_err(|e| DbErr::Migration(e.to_string()))?
        .to_owned())
}

#[async_trait::async_trait]
impl MigrationTrait for M0003RequestIdsToPlatform {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.get_connection().execute(&copy_request_ids(RequestIds::Table, IdempotencyKeys::Table)?).await?;
        m.drop_table(Table::drop().table(RequestIds::Table).to_owned()).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(RequestIds::Table)
                .col(ColumnDef::new(RequestIds::TenantId).string().not_null())
                .col(ColumnDef::new(RequestIds::Method).string().not_null())
                .col(ColumnDef::new(RequestIds::RequestId).string().not_null())
                .col(ColumnDef::new(RequestIds::ResourceId).string().not_null())
                .col(bigint(RequestIds::CreateTime))
                .col(ColumnDef::new(RequestIds::RequestHash).string().null())
                .primary_key(
                    Index::create().col(RequestIds::TenantId).col(RequestIds::Method).col(RequestIds::RequestId),
                )
                .to_owned(),
        )
        .await?;
        m.get_connection().execute(&copy_request_ids(IdempotencyKeys::Table, RequestIds::Table)?).await?;
        m.get_connection().execute(&Query::delete().from_table(IdempotencyKeys::Table).to_owned()).await.map(|_| ())
    }
}

/// Consents become filterable (`consents.<channel>[.<purpose>]`) through label rows of kind
/// `consent` (`<channel>.<purpose>.<status>`), which every write now keeps; this writes them for
/// the contacts stored before (their consents, without a purpose, are marketing ones). Merged
/// contacts have no label rows.
struct M0004ConsentLabels;

impl MigrationName for M0004ConsentLabels {
    fn name(&self) -> &'static str {
        "m0004_consent_labels"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0004ConsentLabels {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        // Keyset pages of (tenant, id), so memory stays flat on a large table.
        let mut after: Option<(String, String)> = None;
        loop {
            let mut page = Query::select()
                .columns([Contacts::TenantId, Contacts::Id, Contacts::Consents])
                .from(Contacts::Table)
                .and_where(Expr::col(Contacts::State).ne("merged"))
                .and_where(Expr::col(Contacts::Consents).ne("[]"))
                .order_by(Contacts::TenantId, Order::Asc)
                .order_by(Contacts::Id, Order::Asc)
                .limit(500)
                .to_owned();
            if let Some((tenant, id)) = &after {
                page.cond_where(
                    Cond::any().add(Expr::col(Contacts::TenantId).gt(tenant.as_str())).add(
                        Cond::all()
                            .add(Expr::col(Contacts::TenantId).eq(tenant.as_str()))
                            .add(Expr::col(Contacts::Id).gt(id.as_str())),
                    ),
                );
            }
            let rows = db.query_all(&page).await?;
            let Some(last) = rows.last() else { return Ok(()) };
            after = Some((last.try_get("", "tenant_id")?, last.try_get("", "id")?));
            let mut insert = Query::insert()
                .into_table(ContactLabels::Table)
                .columns([ContactLabels::TenantId, ContactLabels::ContactId, ContactLabels::Kind, ContactLabels::Value])
                .on_conflict(
                    OnConflict::columns([ContactLabels::ContactId, ContactLabels::Kind, ContactLabels::Value])
                        .do_nothing()
                        .to_owned(),
                )
                .to_owned();
            let mut any = false;
            for row in &rows {
                let (tenant, id, json): (String, String, String) =
                    (row.try_get("", "tenant_id")?, row.try_get("", "id")?, row.try_get("", "consents")?);
                let labels = super::convert::consent_labels(&json)
                    .map_err(|e| DbErr::Migration(format!("contact {id}: unreadable consents: {e}")))?;
                for value in labels {
                    insert.values_panic([tenant.clone().into(), id.clone().into(), "consent".into(), value.into()]);
                    any = true;
                }
            }
            if any {
                db.execute(&insert).await?;
            }
        }
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let delete = Query::delete()
            .from_table(ContactLabels::Table)
            .and_where(Expr::col(ContactLabels::Kind).eq("consent"))
            .to_owned();
        m.get_connection().execute(&delete).await.map(|_| ())
    }
}
