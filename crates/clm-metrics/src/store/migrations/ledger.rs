//! M0007: the ledger and the order-independent read model (issue 21).
//!
//! Adds the ledger (`ledger_transitions`, `ledger_events`) each contact's contribution is
//! computed from, the customer spells (churn), revenue per currency in cohorts and active
//! periods, and durations by channel and campaign; reshapes the tables whose meaning changed.
//! The read model built by earlier versions cannot be turned into a ledger, so this migration
//! empties it: after upgrading, run `clm replay --consumer metrics` (docs/operations.md §
//! Upgrading) and the consumer rebuilds every number from the first event.

use sea_orm_migration::prelude::*;

pub struct M0007Ledger;

impl MigrationName for M0007Ledger {
    fn name(&self) -> &'static str {
        "m0007_ledger"
    }
}

/// A column: name and type ("s" text, "i" bigint, "i?" nullable bigint).
type Col = (&'static str, &'static str);

async fn create(m: &SchemaManager<'_>, name: &str, cols: &[Col], pk: &[&str]) -> Result<(), DbErr> {
    let mut t = Table::create();
    t.table(Alias::new(name));
    for (c, ty) in cols {
        let mut col = ColumnDef::new(Alias::new(*c));
        match *ty {
            "s" => col.string().not_null(),
            "i?" => col.big_integer().null(),
            _ => col.big_integer().not_null(),
        };
        t.col(col);
    }
    let mut p = Index::create();
    for c in pk {
        p.col(Alias::new(*c));
    }
    t.primary_key(&mut p);
    m.create_table(t).await
}

async fn index(m: &SchemaManager<'_>, name: &str, table: &str, cols: &[&str]) -> Result<(), DbErr> {
    let mut ix = Index::create();
    ix.name(name).table(Alias::new(table));
    for c in cols {
        ix.col(Alias::new(*c));
    }
    m.create_index(ix).await
}

#[async_trait::async_trait]
impl MigrationTrait for M0007Ledger {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in ["time_hist", "cohort_cells", "contact_periods", "customer_facts"] {
            m.drop_table(Table::drop().table(Alias::new(t)).to_owned()).await?;
        }
        create(
            m,
            "time_hist",
            &[
                ("tenant_id", "s"),
                ("model_id", "s"),
                ("name", "s"),
                ("day", "i"),
                ("channel", "s"),
                ("campaign", "s"),
                ("bucket", "i"),
                ("n", "i"),
            ],
            &["tenant_id", "model_id", "name", "day", "channel", "campaign", "bucket"],
        )
        .await?;
        create(
            m,
            "cohort_cells",
            &[("tenant_id", "s"), ("gran", "s"), ("cohort", "i"), ("idx", "i"), ("n", "i")],
            &["tenant_id", "gran", "cohort", "idx"],
        )
        .await?;
        create(
            m,
            "cohort_revenue",
            &[("tenant_id", "s"), ("gran", "s"), ("cohort", "i"), ("idx", "i"), ("currency", "s"), ("revenue", "i")],
            &["tenant_id", "gran", "cohort", "idx", "currency"],
        )
        .await?;
        create(
            m,
            "contact_periods",
            &[
                ("tenant_id", "s"),
                ("contact_id", "s"),
                ("gran", "s"),
                ("period", "i"),
                ("currency", "s"),
                ("orders", "i"),
                ("revenue", "i"),
            ],
            &["tenant_id", "contact_id", "gran", "period", "currency"],
        )
        .await?;
        index(
            m,
            "ix_contact_periods_period",
            "contact_periods",
            &["tenant_id", "gran", "period", "contact_id", "orders"],
        )
        .await?;
        create(
            m,
            "customer_facts",
            &[
                ("tenant_id", "s"),
                ("contact_id", "s"),
                ("first_purchase", "i?"),
                ("last_purchase", "i?"),
                ("orders", "i"),
                ("revenue", "i"),
                ("currency", "s"),
                ("currency_orders", "i"),
                ("referrals", "i"),
                ("reviews", "i"),
                ("last_nps", "i?"),
            ],
            &["tenant_id", "contact_id"],
        )
        .await?;
        create(
            m,
            "customer_spells",
            &[
                ("tenant_id", "s"),
                ("model_id", "s"),
                ("basis", "s"),
                ("channel", "s"),
                ("campaign", "s"),
                ("start_day", "i"),
                ("end_day", "i"),
                ("referred_day", "i"),
                ("n", "i"),
            ],
            &["tenant_id", "model_id", "basis", "channel", "campaign", "start_day", "end_day", "referred_day"],
        )
        .await?;
        index(
            m,
            "ix_customer_spells_end",
            "customer_spells",
            &["tenant_id", "model_id", "basis", "end_day", "start_day"],
        )
        .await?;
        create(
            m,
            "contact_spells",
            &[
                ("tenant_id", "s"),
                ("contact_id", "s"),
                ("model_id", "s"),
                ("basis", "s"),
                ("start_day", "i"),
                ("end_day", "i"),
                ("referred_day", "i"),
                ("n", "i"),
            ],
            &["tenant_id", "contact_id", "model_id", "basis", "start_day", "end_day", "referred_day"],
        )
        .await?;
        // Per model, the spell basis its churn reads (lifecycle's `churn_excludes_dormancy`).
        create(
            m,
            "model_settings",
            &[("tenant_id", "s"), ("model_id", "s"), ("spell_basis", "s")],
            &["tenant_id", "model_id"],
        )
        .await?;
        create(
            m,
            "ledger_transitions",
            &[
                ("tenant_id", "s"),
                ("contact_id", "s"),
                ("transition_id", "s"),
                ("model_id", "s"),
                ("seq", "i"),
                ("at", "i"),
                ("from_stage", "s"),
                ("to_stage", "s"),
                ("to_category", "s"),
                ("to_role", "s"),
                ("position", "i"),
                ("reactivation", "i"),
            ],
            &["tenant_id", "contact_id", "transition_id"],
        )
        .await?;
        create(
            m,
            "ledger_events",
            &[
                ("tenant_id", "s"),
                ("contact_id", "s"),
                ("event_id", "s"),
                ("kind", "s"),
                ("at", "i"),
                ("amount", "i?"),
                ("currency", "s"),
                ("score", "i?"),
            ],
            &["tenant_id", "contact_id", "event_id"],
        )
        .await?;
        // What earlier versions built is not a sum of contributions: empty it (a replay
        // rebuilds it; contact facts stay, they are facts). Tables of later migrations do not
        // exist yet.
        for t in super::READ_MODEL_TABLES.iter().filter(|t| !super::campaigns::TABLES.contains(t)) {
            m.get_connection().execute_unprepared(&format!("DELETE FROM {t}")).await?;
        }
        Ok(())
    }

    async fn down(&self, _m: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration("m0007_ledger cannot be undone; restore a backup".into()))
    }
}
