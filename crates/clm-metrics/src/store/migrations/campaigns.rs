//! M0009: campaign enrolments (issue 23). `ledger_enrolments` keeps each enrolment lifecycle
//! published (CampaignEnrolmentChanged), one row per enrolment id, its end once seen;
//! `campaign_names` the name of each campaign as its latest event gave it. GetCampaignMetrics
//! reads them (docs/metrics.md § Campaigns). Enrolments published before this version were not
//! kept: `clm replay --consumer metrics` brings them in.

use sea_orm_migration::prelude::*;

pub struct M0009CampaignEnrolments;

/// The tables this migration adds (M0007, which empties the read model, runs before they exist).
pub const TABLES: [&str; 2] = ["ledger_enrolments", "campaign_names"];

impl MigrationName for M0009CampaignEnrolments {
    fn name(&self) -> &'static str {
        "m0009_campaign_enrolments"
    }
}

fn col(name: &str) -> ColumnDef {
    ColumnDef::new(Alias::new(name))
}

#[async_trait::async_trait]
impl MigrationTrait for M0009CampaignEnrolments {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Alias::new("ledger_enrolments"))
                .col(col("tenant_id").string().not_null())
                .col(col("enrolment_id").string().not_null())
                .col(col("contact_id").string().not_null())
                .col(col("campaign_id").string().not_null())
                .col(col("state").string().not_null())
                .col(col("converted").big_integer().not_null())
                .col(col("enrol_time").big_integer().not_null())
                .col(col("finish_time").big_integer().null())
                .primary_key(Index::create().col(Alias::new("tenant_id")).col(Alias::new("enrolment_id")))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_ledger_enrolments_enrol")
                .table(Alias::new("ledger_enrolments"))
                .col(Alias::new("tenant_id"))
                .col(Alias::new("enrol_time"))
                .col(Alias::new("campaign_id"))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(Alias::new("campaign_names"))
                .col(col("tenant_id").string().not_null())
                .col(col("campaign_id").string().not_null())
                .col(col("display_name").string().not_null())
                .col(col("name_time").big_integer().not_null())
                .primary_key(Index::create().col(Alias::new("tenant_id")).col(Alias::new("campaign_id")))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in TABLES {
            m.drop_table(Table::drop().table(Alias::new(t)).to_owned()).await?;
        }
        Ok(())
    }
}
