//! Schema migrations of the lifecycle database. Times are BIGINT µs since the epoch.

use clm_platform::schema::{big, big_null, flag, id, index, long_text, text, text_null};
use sea_orm_migration::prelude::*;

#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(clm_platform::events::outbox::OutboxMigration),
            Box::new(clm_platform::events::inbox::InboxMigration),
            Box::new(M0001Lifecycle),
            Box::new(clm_platform::idempotency::IdempotencyMigration),
            Box::new(clm_platform::idempotency::IdempotencyHashMigration),
            Box::new(M0002OrderIds),
            Box::new(clm_platform::events::ordering::OutboxKeysMigration),
            Box::new(clm_platform::events::ordering::InboxPositionsMigration),
            Box::new(clm_platform::events::prune::InboxAgeIndexMigration),
            Box::new(M0003AutomationJobs),
            Box::new(M0004ChurnSetting),
            Box::new(M0006Messaging),
            Box::new(M0007DeliveryContext),
            Box::new(M0008Campaigns),
        ]
    }
}

struct M0001Lifecycle;

impl MigrationName for M0001Lifecycle {
    fn name(&self) -> &'static str {
        "m0001_lifecycle"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0001Lifecycle {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Alias::new("lifecycle_models"))
                .col(id("id"))
                .col(text("tenant_id"))
                .col(text("display_name"))
                .col(long_text("description"))
                .col(long_text("stages"))
                .col(long_text("allowed"))
                .col(flag("is_default"))
                .col(big("version"))
                .col(big("create_time"))
                .col(big("update_time"))
                .to_owned(),
        )
        .await?;
        index(m, "ix_models_tenant", "lifecycle_models", &["tenant_id", "create_time", "id"], false).await?;

        m.create_table(
            Table::create()
                .table(Alias::new("journey_events"))
                .col(id("id"))
                .col(text("tenant_id"))
                .col(text("contact_id"))
                .col(text("model_id"))
                .col(big("occur_time"))
                .col(big("record_time"))
                .col(text_null("idempotency_key"))
                .col(text("kind"))
                .col(flag("lead"))
                .col(ColumnDef::new(Alias::new("score")).integer().null())
                .col(ColumnDef::new(Alias::new("body")).blob().not_null())
                .to_owned(),
        )
        .await?;
        index(m, "ix_events_contact", "journey_events", &["tenant_id", "contact_id", "model_id", "occur_time"], false)
            .await?;
        index(m, "ux_events_idem", "journey_events", &["tenant_id", "idempotency_key"], true).await?;

        m.create_table(
            Table::create()
                .table(Alias::new("manual_moves"))
                .col(id("id"))
                .col(text("tenant_id"))
                .col(text("contact_id"))
                .col(text("model_id"))
                .col(text("to_stage"))
                .col(big("at"))
                .col(text("reason"))
                .col(text("actor"))
                .to_owned(),
        )
        .await?;
        index(m, "ix_moves_contact", "manual_moves", &["tenant_id", "contact_id", "model_id"], false).await?;

        m.create_table(
            Table::create()
                .table(Alias::new("journeys"))
                .col(text("tenant_id"))
                .col(text("contact_id"))
                .col(text("model_id"))
                .col(text_null("current_stage"))
                .col(big("enter_time"))
                .col(big_null("last_activity"))
                .col(big_null("check_after"))
                .col(big("reactivations"))
                .col(big("version"))
                .primary_key(
                    Index::create()
                        .col(Alias::new("tenant_id"))
                        .col(Alias::new("contact_id"))
                        .col(Alias::new("model_id")),
                )
                .to_owned(),
        )
        .await?;
        index(m, "ix_journeys_stage", "journeys", &["tenant_id", "model_id", "current_stage", "enter_time"], false)
            .await?;

        m.create_table(
            Table::create()
                .table(Alias::new("transitions"))
                .col(id("id"))
                .col(text("tenant_id"))
                .col(text("contact_id"))
                .col(text("model_id"))
                .col(big("seq"))
                .col(text_null("from_stage"))
                .col(text("to_stage"))
                .col(big("at"))
                .col(text("cause"))
                .col(text("cause_ref"))
                .col(text("actor"))
                .col(text("reason"))
                .col(flag("reactivation"))
                .to_owned(),
        )
        .await?;
        index(m, "ix_transitions_contact", "transitions", &["tenant_id", "contact_id", "model_id", "seq"], false)
            .await?;

        m.create_table(
            Table::create()
                .table(Alias::new("known_contacts"))
                .col(text("tenant_id"))
                .col(text("contact_id"))
                .col(text("state"))
                .col(long_text("tags"))
                .col(text("channel"))
                .primary_key(Index::create().col(Alias::new("tenant_id")).col(Alias::new("contact_id")))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Alias::new("automations"))
                .col(id("id"))
                .col(text("tenant_id"))
                .col(text("display_name"))
                .col(flag("enabled"))
                .col(text("model_id"))
                .col(ColumnDef::new(Alias::new("body")).blob().not_null())
                .col(big("version"))
                .col(big("create_time"))
                .col(big("update_time"))
                .to_owned(),
        )
        .await?;
        index(m, "ix_automations_tenant", "automations", &["tenant_id", "create_time", "id"], false).await?;
        m.create_table(
            Table::create()
                .table(Alias::new("automation_runs"))
                .col(id("id"))
                .col(text("tenant_id"))
                .col(text("automation_id"))
                .col(text("contact_id"))
                .col(text("trigger_ref"))
                .col(big("run_time"))
                .col(text("outcome"))
                .col(long_text("message"))
                .to_owned(),
        )
        .await?;
        index(m, "ix_runs_tenant", "automation_runs", &["tenant_id", "run_time", "id"], false).await?;

        m.create_table(
            Table::create()
                .table(Alias::new("rule_settings"))
                .col(id("tenant_id"))
                .col(long_text("settings"))
                .col(big("version"))
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            "automation_runs",
            "automations",
            "rule_settings",
            "known_contacts",
            "transitions",
            "journeys",
            "manual_moves",
            "journey_events",
            "lifecycle_models",
        ] {
            m.drop_table(Table::drop().table(Alias::new(t)).to_owned()).await?;
        }
        Ok(())
    }
}

/// `journey_events.order_id`: a purchase's order id, unique per tenant (a purchase whose order
/// id was already recorded is the same sale, not a second one). Events recorded before have
/// none and are not checked.
struct M0002OrderIds;

impl MigrationName for M0002OrderIds {
    fn name(&self) -> &'static str {
        "m0002_order_ids"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0002OrderIds {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(Table::alter().table(Alias::new("journey_events")).add_column(text_null("order_id")).to_owned())
            .await?;
        index(m, "ux_events_order", "journey_events", &["tenant_id", "order_id"], true).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(Index::drop().name("ux_events_order").table(Alias::new("journey_events")).to_owned()).await?;
        m.alter_table(Table::alter().table(Alias::new("journey_events")).drop_column(Alias::new("order_id")).to_owned())
            .await
    }
}

/// `automation_jobs`: the automations a journey change owes, run after its commit (#21: no
/// call to the contacts service while a write transaction is open).
struct M0003AutomationJobs;

impl MigrationName for M0003AutomationJobs {
    fn name(&self) -> &'static str {
        "m0003_automation_jobs"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0003AutomationJobs {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Alias::new("automation_jobs"))
                .col(id("id"))
                .col(text("tenant_id"))
                .col(text("contact_id"))
                .col(text("model_id"))
                .col(big("depth"))
                .col(long_text("triggers"))
                .col(big("create_time"))
                .to_owned(),
        )
        .await?;
        index(m, "ix_automation_jobs_contact", "automation_jobs", &["tenant_id", "contact_id", "id"], false).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(Alias::new("automation_jobs")).to_owned()).await
    }
}

/// `lifecycle_models.churn_excludes_dormancy`: whether dormancy is left out of churn (false
/// for every existing model: dormancy counted as churn before the setting existed).
struct M0004ChurnSetting;

impl MigrationName for M0004ChurnSetting {
    fn name(&self) -> &'static str {
        "m0004_churn_setting"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0004ChurnSetting {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Alias::new("lifecycle_models"))
                .add_column(ColumnDef::new(Alias::new("churn_excludes_dormancy")).boolean().not_null().default(false))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Alias::new("lifecycle_models"))
                .drop_column(Alias::new("churn_excludes_dormancy"))
                .to_owned(),
        )
        .await
    }
}

/// Messages: templates, the delivery queue (`deliveries`, leased by the sender), each attempt,
/// and the unsubscribes recorded here before contacts applies them (`suppressions`).
struct M0006Messaging;

impl MigrationName for M0006Messaging {
    fn name(&self) -> &'static str {
        "m0006_messaging"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0006Messaging {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Alias::new("message_templates"))
                .col(id("id"))
                .col(text("tenant_id"))
                .col(text("display_name"))
                .col(text("channel"))
                .col(ColumnDef::new(Alias::new("body")).blob().not_null())
                .col(text("signing_secret"))
                .col(big("version"))
                .col(big("create_time"))
                .col(big("update_time"))
                .to_owned(),
        )
        .await?;
        index(m, "ix_message_templates_tenant", "message_templates", &["tenant_id", "create_time", "id"], false)
            .await?;
        m.create_table(
            Table::create()
                .table(Alias::new("deliveries"))
                .col(id("id"))
                .col(text("tenant_id"))
                .col(text("contact_id"))
                .col(text("template_id"))
                .col(text("channel"))
                .col(text("source"))
                .col(text("automation_id"))
                .col(text("state"))
                .col(long_text("reason"))
                .col(long_text("recipient"))
                .col(long_text("subject"))
                .col(big("attempt_count"))
                .col(big("next_attempt_time"))
                .col(big("lease_until"))
                .col(big("create_time"))
                .col(big_null("finish_time"))
                .to_owned(),
        )
        .await?;
        // The sender's scan: what is due, across tenants.
        index(m, "ix_deliveries_due", "deliveries", &["state", "next_attempt_time"], false).await?;
        index(m, "ix_deliveries_tenant", "deliveries", &["tenant_id", "create_time", "id"], false).await?;
        index(m, "ix_deliveries_contact", "deliveries", &["tenant_id", "contact_id", "create_time"], false).await?;
        index(m, "ix_deliveries_automation", "deliveries", &["tenant_id", "automation_id", "create_time"], false)
            .await?;
        m.create_table(
            Table::create()
                .table(Alias::new("delivery_attempts"))
                .col(id("id"))
                .col(text("tenant_id"))
                .col(text("delivery_id"))
                .col(big("attempt_time"))
                .col(flag("accepted"))
                .col(long_text("detail"))
                .to_owned(),
        )
        .await?;
        index(
            m,
            "ix_delivery_attempts_delivery",
            "delivery_attempts",
            &["tenant_id", "delivery_id", "attempt_time"],
            false,
        )
        .await?;
        // The per-tenant rate limit counts a tenant's recent attempts.
        index(m, "ix_delivery_attempts_tenant_time", "delivery_attempts", &["tenant_id", "attempt_time"], false)
            .await?;
        m.create_table(
            Table::create()
                .table(Alias::new("suppressions"))
                .col(id("id"))
                .col(text("tenant_id"))
                .col(text("contact_id"))
                .col(text("channel"))
                .col(text("purpose"))
                .col(text("delivery_id"))
                .col(big("create_time"))
                .to_owned(),
        )
        .await?;
        index(m, "ux_suppressions", "suppressions", &["tenant_id", "contact_id", "channel", "purpose"], true).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in ["suppressions", "delivery_attempts", "deliveries", "message_templates"] {
            m.drop_table(Table::drop().table(Alias::new(t)).to_owned()).await?;
        }
        Ok(())
    }
}

/// Deliveries of survey invitations: the invitation they carry, which reminder, and the
/// template context beyond the contact (`context`, JSON: the survey's name, kind, token...).
/// Existing deliveries carry none.
struct M0007DeliveryContext;

impl MigrationName for M0007DeliveryContext {
    fn name(&self) -> &'static str {
        "m0007_delivery_context"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0007DeliveryContext {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        for column in [
            text("invitation_id").default("").to_owned(),
            big("reminder").default(0).to_owned(),
            long_text("context").default("").to_owned(),
        ] {
            m.alter_table(Table::alter().table(Alias::new("deliveries")).add_column(column).to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for c in ["context", "reminder", "invitation_id"] {
            m.alter_table(Table::alter().table(Alias::new("deliveries")).drop_column(Alias::new(c)).to_owned()).await?;
        }
        Ok(())
    }
}

/// Campaigns, each contact's enrolment (its step and its timer, leased by one runner at a time)
/// and the step log behind the statistics; deliveries name the campaign that sent them.
struct M0008Campaigns;

impl MigrationName for M0008Campaigns {
    fn name(&self) -> &'static str {
        "m0008_campaigns"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0008Campaigns {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Alias::new("campaigns"))
                .col(id("id"))
                .col(text("tenant_id"))
                .col(text("display_name"))
                .col(text("status"))
                .col(text("model_id"))
                .col(ColumnDef::new(Alias::new("body")).blob().not_null())
                .col(big("version"))
                .col(big("create_time"))
                .col(big("update_time"))
                .to_owned(),
        )
        .await?;
        index(m, "ix_campaigns_tenant", "campaigns", &["tenant_id", "create_time", "id"], false).await?;
        m.create_table(
            Table::create()
                .table(Alias::new("campaign_enrolments"))
                .col(id("id"))
                .col(text("tenant_id"))
                .col(text("campaign_id"))
                .col(text("contact_id"))
                .col(text("state"))
                .col(text("step_key"))
                .col(flag("waiting"))
                .col(big("wake_time"))
                .col(text("waiting_event"))
                .col(flag("converted"))
                .col(long_text("exit_reason"))
                .col(big("depth"))
                .col(big("lease_until"))
                .col(big("version"))
                .col(big("enrol_time"))
                .col(big_null("finish_time"))
                .to_owned(),
        )
        .await?;
        // The runner's scan: active enrolments whose timer is due.
        index(m, "ix_enrolments_due", "campaign_enrolments", &["state", "wake_time"], false).await?;
        index(m, "ix_enrolments_contact", "campaign_enrolments", &["tenant_id", "contact_id", "state"], false).await?;
        index(m, "ix_enrolments_campaign", "campaign_enrolments", &["tenant_id", "campaign_id", "contact_id"], false)
            .await?;
        m.create_table(
            Table::create()
                .table(Alias::new("campaign_step_log"))
                .col(id("id"))
                .col(text("tenant_id"))
                .col(text("campaign_id"))
                .col(text("enrolment_id"))
                .col(text("step_key"))
                .col(text("what"))
                .col(flag("converted"))
                .col(long_text("detail"))
                .col(big("at"))
                .to_owned(),
        )
        .await?;
        index(m, "ix_step_log_campaign", "campaign_step_log", &["tenant_id", "campaign_id", "step_key", "what"], false)
            .await?;
        index(m, "ix_step_log_enrolment", "campaign_step_log", &["tenant_id", "enrolment_id"], false).await?;
        m.alter_table(
            Table::alter()
                .table(Alias::new("deliveries"))
                .add_column(ColumnDef::new(Alias::new("campaign_id")).text().not_null().default(""))
                .to_owned(),
        )
        .await?;
        index(m, "ix_deliveries_campaign", "deliveries", &["tenant_id", "campaign_id", "create_time"], false).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(Table::alter().table(Alias::new("deliveries")).drop_column(Alias::new("campaign_id")).to_owned())
            .await?;
        for t in ["campaign_step_log", "campaign_enrolments", "campaigns"] {
            m.drop_table(Table::drop().table(Alias::new(t)).to_owned()).await?;
        }
        Ok(())
    }
}
