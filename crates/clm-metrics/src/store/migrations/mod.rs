//! Schema migrations of the metrics database: the read model built from events, and the inbox.

mod campaigns;
mod ledger;
mod revision;

use sea_orm_migration::prelude::*;

#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(clm_platform::events::inbox::InboxMigration),
            Box::new(M0001ContactFacts),
            Box::new(clm_platform::idempotency::IdempotencyMigration),
            Box::new(M0002ReadModel),
            Box::new(M0003PerContact),
            Box::new(M0004PeriodIndex),
            Box::new(M0005RollUps),
            Box::new(clm_platform::idempotency::IdempotencyHashMigration),
            Box::new(M0006PurchaseOrders),
            Box::new(clm_platform::events::ordering::InboxPositionsMigration),
            Box::new(clm_platform::events::prune::InboxAgeIndexMigration),
            Box::new(ledger::M0007Ledger),
            Box::new(revision::M0008BasisRevision),
            Box::new(campaigns::M0009CampaignEnrolments),
        ]
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

/// The read model's aggregates (see `store` for what each table holds).
struct M0002ReadModel;

impl MigrationName for M0002ReadModel {
    fn name(&self) -> &'static str {
        "m0002_read_model"
    }
}

/// Table name, columns as (name, SQL type), primary key columns.
type TableDef = (&'static str, &'static [(&'static str, &'static str)], &'static [&'static str]);

const TABLES: &[TableDef] = &[
    (
        "kpi_daily",
        &[
            ("tenant_id", "s"),
            ("name", "s"),
            ("model_id", "s"),
            ("day", "i"),
            ("channel", "s"),
            ("campaign", "s"),
            ("currency", "s"),
            ("n", "i"),
            ("s", "i"),
        ],
        &["tenant_id", "name", "model_id", "day", "channel", "campaign", "currency"],
    ),
    (
        "funnel_cells",
        &[
            ("tenant_id", "s"),
            ("model_id", "s"),
            ("cohort_day", "i"),
            ("channel", "s"),
            ("campaign", "s"),
            ("stage_key", "s"),
            ("delay_days", "i"),
            ("n", "i"),
        ],
        &["tenant_id", "model_id", "cohort_day", "channel", "campaign", "stage_key", "delay_days"],
    ),
    (
        "model_stages",
        &[
            ("tenant_id", "s"),
            ("model_id", "s"),
            ("stage_key", "s"),
            ("position", "i"),
            ("category", "s"),
            ("role", "s"),
        ],
        &["tenant_id", "model_id", "stage_key"],
    ),
    (
        "time_hist",
        &[("tenant_id", "s"), ("model_id", "s"), ("name", "s"), ("day", "i"), ("bucket", "i"), ("n", "i")],
        &["tenant_id", "model_id", "name", "day", "bucket"],
    ),
    (
        "stage_reach",
        &[("tenant_id", "s"), ("model_id", "s"), ("contact_id", "s"), ("stage_key", "s"), ("first_time", "i")],
        &["tenant_id", "model_id", "contact_id", "stage_key"],
    ),
    (
        "contact_now",
        &[
            ("tenant_id", "s"),
            ("model_id", "s"),
            ("contact_id", "s"),
            ("stage_key", "s"),
            ("category", "s"),
            ("enter_time", "i"),
            ("lead_time", "i?"),
            ("customer_time", "i?"),
        ],
        &["tenant_id", "model_id", "contact_id"],
    ),
    (
        "customer_facts",
        &[
            ("tenant_id", "s"),
            ("contact_id", "s"),
            ("first_purchase", "i?"),
            ("last_purchase", "i?"),
            ("orders", "i"),
            ("revenue", "i"),
            ("currency", "s"),
            ("referrals", "i"),
            ("reviews", "i"),
            ("last_nps", "i?"),
        ],
        &["tenant_id", "contact_id"],
    ),
    (
        "contact_periods",
        &[("tenant_id", "s"), ("contact_id", "s"), ("gran", "s"), ("period", "i"), ("revenue", "i")],
        &["tenant_id", "contact_id", "gran", "period"],
    ),
    (
        "period_counts",
        &[("tenant_id", "s"), ("gran", "s"), ("period", "i"), ("active", "i"), ("returners", "i"), ("firsts", "i")],
        &["tenant_id", "gran", "period"],
    ),
    (
        "cohort_cells",
        &[("tenant_id", "s"), ("gran", "s"), ("cohort", "i"), ("idx", "i"), ("n", "i"), ("revenue", "i")],
        &["tenant_id", "gran", "cohort", "idx"],
    ),
    (
        "cohort_sizes",
        &[("tenant_id", "s"), ("gran", "s"), ("cohort", "i"), ("n", "i")],
        &["tenant_id", "gran", "cohort"],
    ),
    (
        "cohort_last",
        &[("tenant_id", "s"), ("gran", "s"), ("cohort", "i"), ("last_idx", "i"), ("n", "i")],
        &["tenant_id", "gran", "cohort", "last_idx"],
    ),
    (
        "goals",
        &[
            ("id", "s"),
            ("tenant_id", "s"),
            ("display_name", "s"),
            ("kpi", "i"),
            ("scope", "t"),
            ("stage_key", "s"),
            ("target", "f"),
            ("direction", "i"),
            ("period", "i"),
            ("tolerance", "f"),
            ("version", "i"),
            ("create_time", "i"),
            ("update_time", "i"),
        ],
        &["id"],
    ),
];

/// Names of the read-model tables a replay clears (goals are the tenant's own data).
pub const READ_MODEL_TABLES: &[&str] = &[
    "kpi_daily",
    "funnel_cells",
    "model_stages",
    "time_hist",
    "stage_reach",
    "contact_now",
    "customer_facts",
    "contact_periods",
    "period_counts",
    "cohort_cells",
    "cohort_sizes",
    "cohort_last",
    "contact_kpis",
    "funnel_roll",
    "time_hist_roll",
    "purchase_orders",
    "cohort_revenue",
    "customer_spells",
    "contact_spells",
    "ledger_transitions",
    "ledger_events",
    "model_settings",
    "ledger_enrolments",
    "campaign_names",
];

#[async_trait::async_trait]
impl MigrationTrait for M0002ReadModel {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (name, cols, pk) in TABLES {
            let mut t = Table::create();
            t.table(Alias::new(*name));
            for (c, ty) in *cols {
                let mut col = ColumnDef::new(Alias::new(*c));
                match *ty {
                    "s" => col.string().not_null(),
                    "t" => col.text().not_null(),
                    "i" => col.big_integer().not_null(),
                    "i?" => col.big_integer().null(),
                    _ => col.double().not_null(),
                };
                t.col(col);
            }
            let mut p = Index::create();
            for c in *pk {
                p.col(Alias::new(*c));
            }
            t.primary_key(&mut p);
            m.create_table(t).await?;
        }
        m.create_index(
            Index::create()
                .name("ix_goals_tenant")
                .table(Alias::new("goals"))
                .col(Alias::new("tenant_id"))
                .col(Alias::new("create_time"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_contact_now_lead")
                .table(Alias::new("contact_now"))
                .col(Alias::new("tenant_id"))
                .col(Alias::new("model_id"))
                .col(Alias::new("lead_time"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (name, _, _) in TABLES {
            m.drop_table(Table::drop().table(Alias::new(*name)).to_owned()).await?;
        }
        Ok(())
    }
}

/// What a query restricted to a segment of contacts reads: the KPI counters per contact
/// (`contact_kpis`, the same rows as `kpi_daily` with the contact in the key), and the
/// durations the histograms counted, kept with the contact's reach and close.
struct M0003PerContact;

impl MigrationName for M0003PerContact {
    fn name(&self) -> &'static str {
        "m0003_per_contact"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0003PerContact {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let mut t = Table::create();
        t.table(Alias::new("contact_kpis"));
        for c in ["tenant_id", "contact_id", "name", "model_id", "channel", "campaign", "currency"] {
            t.col(ColumnDef::new(Alias::new(c)).string().not_null());
        }
        for c in ["day", "n", "s"] {
            t.col(ColumnDef::new(Alias::new(c)).big_integer().not_null());
        }
        let mut p = Index::create();
        for c in ["tenant_id", "contact_id", "name", "model_id", "day", "channel", "campaign", "currency"] {
            p.col(Alias::new(c));
        }
        t.primary_key(&mut p);
        m.create_table(t).await?;
        for (table, col) in [
            ("stage_reach", "took"),
            ("stage_reach", "took_day"),
            ("contact_now", "close_took"),
            ("contact_now", "close_day"),
        ] {
            m.alter_table(
                Table::alter()
                    .table(Alias::new(table))
                    .add_column(ColumnDef::new(Alias::new(col)).big_integer().null())
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(Alias::new("contact_kpis")).to_owned()).await
    }
}

/// Active periods by period (distinct purchasers in a range read a range of it, not the
/// whole table).
struct M0004PeriodIndex;

impl MigrationName for M0004PeriodIndex {
    fn name(&self) -> &'static str {
        "m0004_period_index"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0004PeriodIndex {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let mut ix = Index::create();
        ix.name("ix_contact_periods_period").table(Alias::new("contact_periods"));
        for c in ["tenant_id", "gran", "period", "contact_id", "revenue"] {
            ix.col(Alias::new(c));
        }
        m.create_index(ix).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(Index::drop().name("ix_contact_periods_period").table(Alias::new("contact_periods")).to_owned())
            .await
    }
}

/// Roll-ups of the funnel and the duration histograms over aligned blocks of days
/// (`contribution::ROLL_SPANS`): a range's unfiltered funnel and histograms read a few dozen
/// blocks instead of every day × channel × campaign cell. Filled from the existing cells.
struct M0005RollUps;

impl MigrationName for M0005RollUps {
    fn name(&self) -> &'static str {
        "m0005_roll_ups"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0005RollUps {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        use super::counters::{FUNNEL_ROLL, TIME_HIST_ROLL};
        for t in [&FUNNEL_ROLL, &TIME_HIST_ROLL] {
            let mut c = Table::create();
            c.table(Alias::new(t.name));
            for k in t.keys {
                let mut col = ColumnDef::new(Alias::new(*k));
                if matches!(*k, "tenant_id" | "model_id" | "stage_key" | "name") {
                    col.string().not_null();
                } else {
                    col.big_integer().not_null();
                }
                c.col(col);
            }
            for s in t.sums {
                c.col(ColumnDef::new(Alias::new(*s)).big_integer().not_null());
            }
            let mut p = Index::create();
            for k in t.keys {
                p.col(Alias::new(*k));
            }
            c.primary_key(&mut p);
            m.create_table(c).await?;
        }
        fill_roll_ups(m.get_connection()).await.map_err(|e| DbErr::Migration(e.to_string()))
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in ["funnel_roll", "time_hist_roll"] {
            m.drop_table(Table::drop().table(Alias::new(t)).to_owned()).await?;
        }
        Ok(())
    }
}

/// `purchase_orders`: the order ids of the purchases counted, so a sale seen twice (recorded
/// twice upstream, or in two lifecycle models) counts once. Part of the read model (a replay
/// clears and refills it). Purchases counted before it existed are not in it; a replay adds
/// them.
struct M0006PurchaseOrders;

impl MigrationName for M0006PurchaseOrders {
    fn name(&self) -> &'static str {
        "m0006_purchase_orders"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0006PurchaseOrders {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Alias::new("purchase_orders"))
                .col(ColumnDef::new(Alias::new("tenant_id")).string().not_null())
                .col(ColumnDef::new(Alias::new("order_id")).string().not_null())
                .primary_key(Index::create().col(Alias::new("tenant_id")).col(Alias::new("order_id")))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(Alias::new("purchase_orders")).to_owned()).await
    }
}

/// Build the roll-ups from the day cells (`funnel_cells`, `time_hist`) as they were when
/// M0005 added them (the handlers keep them since).
async fn fill_roll_ups(db: &impl sea_orm::ConnectionTrait) -> clm_platform::Result<()> {
    use crate::domain::contribution::ROLL_SPANS;
    let block_sql = |col: &str, span: i64| {
        let p = span * crate::domain::DAY;
        format!("({col} - ((({col} % {p}) + {p}) % {p}))")
    };
    for span in ROLL_SPANS {
        let b = block_sql("cohort_day", span);
        db.execute_unprepared(&format!(
            "INSERT INTO funnel_roll (tenant_id, model_id, span_days, cohort_day, stage_key, delay_days, n) \
             SELECT tenant_id, model_id, {span}, {b}, stage_key, delay_days, SUM(n) FROM funnel_cells \
             GROUP BY tenant_id, model_id, {b}, stage_key, delay_days"
        ))
        .await?;
        if span > 1 {
            let b = block_sql("day", span);
            db.execute_unprepared(&format!(
                "INSERT INTO time_hist_roll (tenant_id, model_id, name, span_days, day, bucket, n) \
                 SELECT tenant_id, model_id, name, {span}, {b}, bucket, SUM(n) FROM time_hist \
                 GROUP BY tenant_id, model_id, name, {b}, bucket"
            ))
            .await?;
        }
    }
    Ok(())
}
