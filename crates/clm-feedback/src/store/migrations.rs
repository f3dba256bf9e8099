//! Schema migrations of the feedback database. Times are BIGINT µs since the epoch.

use clm_platform::schema::{big, big_null, flag, id, index, int, int_null, long_text, text, text_null};
use sea_orm_migration::prelude::*;

#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(clm_platform::events::outbox::OutboxMigration),
            Box::new(clm_platform::events::inbox::InboxMigration),
            Box::new(clm_platform::idempotency::IdempotencyMigration),
            Box::new(M0001Feedback),
            Box::new(clm_platform::idempotency::IdempotencyHashMigration),
            Box::new(clm_platform::events::ordering::OutboxKeysMigration),
            Box::new(clm_platform::events::ordering::InboxPositionsMigration),
            Box::new(clm_platform::events::prune::InboxAgeIndexMigration),
            Box::new(M0002CesScale),
            Box::new(M0003ResponseExternalIds),
            Box::new(M0004SurveyDelivery),
        ]
    }
}

struct M0001Feedback;

impl MigrationName for M0001Feedback {
    fn name(&self) -> &'static str {
        "m0001_feedback"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0001Feedback {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Alias::new("surveys"))
                .col(id("id"))
                .col(text("tenant_id"))
                .col(text("display_name"))
                .col(text("kind"))
                .col(text("status"))
                .col(long_text("questions"))
                .col(text("target_stage_key"))
                .col(text("target_model_id"))
                .col(big("invitation_ttl"))
                .col(big("version"))
                .col(big("create_time"))
                .col(big("update_time"))
                .to_owned(),
        )
        .await?;
        index(m, "ix_surveys_tenant", "surveys", &["tenant_id", "create_time", "id"], false).await?;
        index(m, "ix_surveys_stage", "surveys", &["tenant_id", "target_stage_key", "status"], false).await?;

        m.create_table(
            Table::create()
                .table(Alias::new("invitations"))
                .col(id("id"))
                .col(text("tenant_id"))
                .col(text("survey_id"))
                .col(text("contact_id"))
                .col(text("status"))
                .col(text("source"))
                .col(text("stage_key"))
                .col(big("create_time"))
                .col(big("expire_time"))
                .col(big_null("respond_time"))
                .to_owned(),
        )
        .await?;
        index(m, "ix_invitations_survey", "invitations", &["tenant_id", "survey_id", "create_time"], false).await?;
        index(m, "ix_invitations_contact", "invitations", &["tenant_id", "contact_id", "create_time"], false).await?;

        m.create_table(
            Table::create()
                .table(Alias::new("contact_asks"))
                .col(text("tenant_id"))
                .col(text("contact_id"))
                .col(big("last_invite_time"))
                .primary_key(Index::create().col(Alias::new("tenant_id")).col(Alias::new("contact_id")))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Alias::new("responses"))
                .col(id("id"))
                .col(text("tenant_id"))
                .col(text("survey_id"))
                .col(text_null("invitation_id"))
                .col(text("contact_id"))
                .col(long_text("answers"))
                .col(flag("complete"))
                .col(int_null("score"))
                .col(text_null("band"))
                .col(text("stage_key"))
                .col(big("create_time"))
                .col(big("update_time"))
                .col(big_null("complete_time"))
                .col(big("version"))
                .to_owned(),
        )
        .await?;
        index(m, "ix_responses_survey", "responses", &["tenant_id", "survey_id", "complete_time"], false).await?;
        index(m, "ix_responses_tenant", "responses", &["tenant_id", "create_time", "id"], false).await?;
        index(m, "ix_responses_contact", "responses", &["tenant_id", "contact_id"], false).await?;
        index(m, "ux_responses_invitation", "responses", &["invitation_id"], true).await?;

        m.create_table(
            Table::create()
                .table(Alias::new("follow_ups"))
                .col(id("id"))
                .col(text("tenant_id"))
                .col(text("response_id"))
                .col(text("survey_id"))
                .col(text("contact_id"))
                .col(text("reason"))
                .col(text("status"))
                .col(text("owner"))
                .col(long_text("note"))
                .col(big("open_time"))
                .col(big_null("resolve_time"))
                .col(big("version"))
                .to_owned(),
        )
        .await?;
        index(m, "ux_follow_ups_response", "follow_ups", &["response_id"], true).await?;
        index(m, "ix_follow_ups_tenant", "follow_ups", &["tenant_id", "open_time", "id"], false).await?;

        m.create_table(
            Table::create()
                .table(Alias::new("reviews"))
                .col(id("id"))
                .col(text("tenant_id"))
                .col(text("contact_id"))
                .col(int("rating"))
                .col(long_text("text"))
                .col(text("platform"))
                .col(text("url"))
                .col(big("create_time"))
                .to_owned(),
        )
        .await?;
        index(m, "ix_reviews_tenant", "reviews", &["tenant_id", "create_time", "id"], false).await?;

        m.create_table(
            Table::create()
                .table(Alias::new("feedback_settings"))
                .col(ColumnDef::new(Alias::new("tenant_id")).string().not_null().primary_key())
                .col(big("throttle_window"))
                .col(big("default_ttl"))
                .col(int("ces_threshold"))
                .col(text("token_secret"))
                .col(big("version"))
                .col(big("update_time"))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Alias::new("contact_stages"))
                .col(text("tenant_id"))
                .col(text("contact_id"))
                .col(text("model_id"))
                .col(text("stage_key"))
                .col(big("enter_time"))
                .primary_key(
                    Index::create()
                        .col(Alias::new("tenant_id"))
                        .col(Alias::new("contact_id"))
                        .col(Alias::new("model_id")),
                )
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            "contact_stages",
            "feedback_settings",
            "reviews",
            "follow_ups",
            "responses",
            "contact_asks",
            "invitations",
            "surveys",
        ] {
            m.drop_table(Table::drop().table(Alias::new(t)).to_owned()).await?;
        }
        Ok(())
    }
}

/// CES was first read backwards (7 = most effort); it is 1 = very difficult … 7 = very easy.
/// What was stored under the old reading is turned round: a tenant's follow-up threshold `t`
/// ("scores t-7 open a follow-up", 2-7) becomes `8 - t` ("scores 1-(8-t) do", 1-6; the old
/// default 5 becomes the new default 3), and the bands of CES responses are recomputed from
/// their scores (1-3 high effort, 4 medium, 5-7 low; only CES responses have effort bands).
/// Follow-ups already opened stay as they are: they happened.
struct M0002CesScale;

impl MigrationName for M0002CesScale {
    fn name(&self) -> &'static str {
        "m0002_ces_scale"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0002CesScale {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        db.execute_unprepared("UPDATE feedback_settings SET ces_threshold = 8 - ces_threshold").await?;
        db.execute_unprepared(
            "UPDATE responses SET band = CASE WHEN score <= 3 THEN 'high_effort' \
             WHEN score = 4 THEN 'medium_effort' ELSE 'low_effort' END \
             WHERE band IN ('low_effort', 'medium_effort', 'high_effort') AND score IS NOT NULL",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        db.execute_unprepared("UPDATE feedback_settings SET ces_threshold = 8 - ces_threshold").await?;
        db.execute_unprepared(
            "UPDATE responses SET band = CASE WHEN score <= 3 THEN 'low_effort' \
             WHEN score = 4 THEN 'medium_effort' ELSE 'high_effort' END \
             WHERE band IN ('low_effort', 'medium_effort', 'high_effort') AND score IS NOT NULL",
        )
        .await?;
        Ok(())
    }
}

/// Imported responses keep their source system's id, unique per tenant and survey, so that
/// importing the same answers again skips them (ImportResponses). Responses submitted here have
/// none (NULL, which a unique index does not compare).
struct M0003ResponseExternalIds;

impl MigrationName for M0003ResponseExternalIds {
    fn name(&self) -> &'static str {
        "m0003_response_external_ids"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0003ResponseExternalIds {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(Table::alter().table(Alias::new("responses")).add_column(text_null("external_id")).to_owned())
            .await?;
        index(m, "ux_responses_external", "responses", &["tenant_id", "survey_id", "external_id"], true).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(Index::drop().name("ux_responses_external").table(Alias::new("responses")).to_owned()).await?;
        m.alter_table(Table::alter().table(Alias::new("responses")).drop_column(Alias::new("external_id")).to_owned())
            .await
    }
}

/// Surveys' delivery settings (message template, reminders, recurrence) and invitations'
/// reminder state: how many were sent, and when the next is due (the sweep's index).
/// Existing surveys get none: no template, no reminders, one-off.
struct M0004SurveyDelivery;

impl MigrationName for M0004SurveyDelivery {
    fn name(&self) -> &'static str {
        "m0004_survey_delivery"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0004SurveyDelivery {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        for column in [
            text("message_template_id").default("").to_owned(),
            big("reminder_after").default(0).to_owned(),
            big("max_reminders").default(0).to_owned(),
            big("recurrence").default(0).to_owned(),
        ] {
            m.alter_table(Table::alter().table(Alias::new("surveys")).add_column(column).to_owned()).await?;
        }
        for column in [
            big("reminders_sent").default(0).to_owned(),
            big_null("next_reminder_time"),
            big_null("next_recurrence_time"),
        ] {
            m.alter_table(Table::alter().table(Alias::new("invitations")).add_column(column).to_owned()).await?;
        }
        // The sweep: reminders and recurrences due, across tenants; a contact's latest
        // invitation to a survey.
        index(m, "ix_invitations_reminder", "invitations", &["next_reminder_time"], false).await?;
        index(m, "ix_invitations_recurrence", "invitations", &["next_recurrence_time"], false).await?;
        let cols = ["tenant_id", "survey_id", "contact_id", "create_time"];
        index(m, "ix_invitations_survey_contact", "invitations", &cols, false).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for ix in ["ix_invitations_reminder", "ix_invitations_recurrence", "ix_invitations_survey_contact"] {
            m.drop_index(Index::drop().name(ix).table(Alias::new("invitations")).to_owned()).await?;
        }
        for c in ["next_recurrence_time", "next_reminder_time", "reminders_sent"] {
            m.alter_table(Table::alter().table(Alias::new("invitations")).drop_column(Alias::new(c)).to_owned())
                .await?;
        }
        for c in ["recurrence", "max_reminders", "reminder_after", "message_template_id"] {
            m.alter_table(Table::alter().table(Alias::new("surveys")).drop_column(Alias::new(c)).to_owned()).await?;
        }
        Ok(())
    }
}
