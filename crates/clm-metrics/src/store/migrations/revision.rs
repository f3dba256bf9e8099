//! M0008: `model_settings.basis_revision`, the lifecycle model revision the stored churn basis
//! is of. StageChanged and LifecycleModelChanged about one model arrive in no set order (they
//! are keyed by different contacts, or by the model), so the basis is replaced only by one of
//! the same or a newer revision (0: events from before revisions were sent, older than any).

use sea_orm_migration::prelude::*;

pub struct M0008BasisRevision;

impl MigrationName for M0008BasisRevision {
    fn name(&self) -> &'static str {
        "m0008_basis_revision"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0008BasisRevision {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Alias::new("model_settings"))
                .add_column(ColumnDef::new(Alias::new("basis_revision")).big_integer().not_null().default(0))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter().table(Alias::new("model_settings")).drop_column(Alias::new("basis_revision")).to_owned(),
        )
        .await
    }
}
