//! Schema migrations of the metrics database: the read model built from events, and the inbox.

use sea_orm_migration::prelude::*;

#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(clm_platform::events::inbox::InboxMigration), Box::new(M0001ContactFacts)]
    }
}

#[derive(DeriveIden)]
enum ContactFacts {
    Table,
    TenantId,
    ContactId,
    AcquisitionChannel,
    Campaign,
    CostCurrency,
    CostMicros,
    ReferredBy,
    LeadScore,
    CountryCode,
    AcquireTime,
    CreateTime,
    State,
    MergedInto,
}

struct M0001ContactFacts;

impl MigrationName for M0001ContactFacts {
    fn name(&self) -> &'static str {
        "m0001_contact_facts"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0001ContactFacts {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(ContactFacts::Table)
                .col(ColumnDef::new(ContactFacts::TenantId).string().not_null())
                .col(ColumnDef::new(ContactFacts::ContactId).string().not_null())
                .col(ColumnDef::new(ContactFacts::AcquisitionChannel).string().not_null())
                .col(ColumnDef::new(ContactFacts::Campaign).string().not_null())
                .col(ColumnDef::new(ContactFacts::CostCurrency).string().null())
                .col(ColumnDef::new(ContactFacts::CostMicros).big_integer().null())
                .col(ColumnDef::new(ContactFacts::ReferredBy).string().null())
                .col(ColumnDef::new(ContactFacts::LeadScore).integer().not_null())
                .col(ColumnDef::new(ContactFacts::CountryCode).string().not_null())
                .col(ColumnDef::new(ContactFacts::AcquireTime).big_integer().null())
                .col(ColumnDef::new(ContactFacts::CreateTime).big_integer().not_null())
                .col(ColumnDef::new(ContactFacts::State).string().not_null())
                .col(ColumnDef::new(ContactFacts::MergedInto).string().null())
                .primary_key(Index::create().col(ContactFacts::TenantId).col(ContactFacts::ContactId))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_contact_facts_channel")
                .table(ContactFacts::Table)
                .col(ContactFacts::TenantId)
                .col(ContactFacts::AcquisitionChannel)
                .col(ContactFacts::CreateTime)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(ContactFacts::Table).to_owned()).await
    }
}
