//! SeaORM entities of the lifecycle schema (DDL in `migrations`).

use serde::{Deserialize, Serialize};

/// Rule switches as stored (JSON); missing fields take their defaults (all on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[allow(clippy::struct_excessive_bools)]
pub struct StoredRules {
    pub first_touchpoint_awareness: bool,
    pub lead_captured_acquisition: bool,
    pub first_purchase_conversion: bool,
    pub repeat_purchase_retention: bool,
    pub customer_tenure_retention_micros: Option<i64>,
    pub advocacy_loyalty: bool,
    pub dormancy: bool,
    pub reactivation: bool,
    pub detractor_at_risk: bool,
}

impl Default for StoredRules {
    fn default() -> Self {
        Self {
            first_touchpoint_awareness: true,
            lead_captured_acquisition: true,
            first_purchase_conversion: true,
            repeat_purchase_retention: true,
            customer_tenure_retention_micros: None,
            advocacy_loyalty: true,
            dormancy: true,
            reactivation: true,
            detractor_at_risk: true,
        }
    }
}

impl StoredRules {
    pub fn to_domain(&self) -> crate::domain::journey::Rules {
        crate::domain::journey::Rules {
            first_touchpoint_awareness: self.first_touchpoint_awareness,
            lead_captured_acquisition: self.lead_captured_acquisition,
            first_purchase_conversion: self.first_purchase_conversion,
            repeat_purchase_retention: self.repeat_purchase_retention,
            customer_tenure_retention: self.customer_tenure_retention_micros,
            advocacy_loyalty: self.advocacy_loyalty,
            dormancy: self.dormancy,
            reactivation: self.reactivation,
        }
    }
}

pub mod lifecycle_model {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "lifecycle_models")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub display_name: String,
        pub description: String,
        pub stages: String,
        pub allowed: String,
        pub is_default: bool,
        pub version: i64,
        pub create_time: i64,
        pub update_time: i64,
        pub churn_excludes_dormancy: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod journey_event {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "journey_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub contact_id: String,
        pub model_id: String,
        pub occur_time: i64,
        pub record_time: i64,
        pub idempotency_key: Option<String>,
        /// touchpoint, purchase, referral, review, custom.
        pub kind: String,
        /// A touchpoint that captures a lead (what the rules need to know of it).
        pub lead: bool,
        /// An NPS score (survey responses recorded from feedback's events).
        pub score: Option<i32>,
        /// Encoded `clm.lifecycle.v1.JourneyEvent`.
        pub body: Vec<u8>,
        /// A purchase's order id (unique per tenant; none for other kinds and for purchases
        /// recorded before order ids were kept).
        pub order_id: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod manual_move {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "manual_moves")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub contact_id: String,
        pub model_id: String,
        pub to_stage: String,
        pub at: i64,
        pub reason: String,
        pub actor: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod journey {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "journeys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub contact_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub model_id: String,
        pub current_stage: Option<String>,
        pub enter_time: i64,
        pub last_activity: Option<i64>,
        /// When the scheduler must look again (a dormancy threshold or tenure rule falls due);
        /// `None`: nothing time-based can happen.
        pub check_after: Option<i64>,
        pub reactivations: i64,
        pub version: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod transition {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "transitions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub contact_id: String,
        pub model_id: String,
        pub seq: i64,
        pub from_stage: Option<String>,
        pub to_stage: String,
        pub at: i64,
        /// `rule:<name>` or `manual`.
        pub cause: String,
        pub cause_ref: String,
        pub actor: String,
        pub reason: String,
        pub reactivation: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod known_contact {
    use sea_orm::entity::prelude::*;

    /// A contact as known from contact events: active, deleted, merged or erased.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "known_contacts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub contact_id: String,
        pub state: String,
        /// JSON list of the contact's tags (lower-cased), for automation conditions.
        pub tags: String,
        /// Acquisition channel key.
        pub channel: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod rule_settings {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "rule_settings")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        pub settings: String,
        pub version: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod automation {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "automations")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub display_name: String,
        pub enabled: bool,
        pub model_id: String,
        /// Encoded `clm.lifecycle.v1.Automation` (trigger, conditions, actions).
        pub body: Vec<u8>,
        pub version: i64,
        pub create_time: i64,
        pub update_time: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod automation_run {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "automation_runs")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub automation_id: String,
        pub contact_id: String,
        pub trigger_ref: String,
        pub run_time: i64,
        pub outcome: String,
        pub message: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Automations owed to a contact: the triggers a journey change fired, written in that change's
/// transaction and run after its commit (`journeys::automations`), in a transaction of their own.
pub mod automation_job {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "automation_jobs")]
    pub struct Model {
        /// UUID v7: jobs run oldest first.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub contact_id: String,
        pub model_id: String,
        /// How many automation moves led here (chains stop at `MAX_CHAIN`).
        pub depth: i64,
        /// The triggers, as JSON.
        pub triggers: String,
        pub create_time: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A message template: its content as an encoded `clm.lifecycle.v1.MessageTemplate` (without the
/// webhook signing secret, kept apart and never returned).
pub mod message_template {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "message_templates")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub display_name: String,
        /// "email" or "webhook".
        pub channel: String,
        pub body: Vec<u8>,
        pub signing_secret: String,
        pub version: i64,
        pub create_time: i64,
        pub update_time: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// One message to one contact: the durable queue the sender works from.
pub mod delivery {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "deliveries")]
    pub struct Model {
        /// UUID v7; also the message's idempotency key.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub contact_id: String,
        pub template_id: String,
        pub channel: String,
        /// "api", "automation", "campaign" or "survey".
        pub source: String,
        pub automation_id: String,
        /// The campaign that sent it ("" if none).
        pub campaign_id: String,
        /// "queued", "retrying", "sent", "skipped" or "dead".
        pub state: String,
        pub reason: String,
        pub recipient: String,
        pub subject: String,
        pub attempt_count: i64,
        pub next_attempt_time: i64,
        /// A sender holds it until then (0: nobody).
        pub lease_until: i64,
        pub create_time: i64,
        pub finish_time: Option<i64>,
        /// The feedback invitation it carries (source "survey"), else empty.
        pub invitation_id: String,
        /// Which reminder of that invitation (0: the invitation itself).
        pub reminder: i64,
        /// What the template needs beyond the contact, as JSON (`messaging::Extra`); empty
        /// for none.
        pub context: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod delivery_attempt {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "delivery_attempts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub delivery_id: String,
        pub attempt_time: i64,
        pub accepted: bool,
        pub detail: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// An unsubscribe recorded here (and published to contacts): nothing more goes to the contact
/// on that channel for that purpose, even before contacts has applied it.
pub mod suppression {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "suppressions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub contact_id: String,
        pub channel: String,
        pub purpose: String,
        pub delivery_id: String,
        pub create_time: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A campaign: its definition as an encoded `clm.lifecycle.v1.Campaign` (trigger, conditions,
/// steps, exit rules, re-entry).
pub mod campaign {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "campaigns")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub display_name: String,
        /// "draft", "active" or "paused".
        pub status: String,
        pub model_id: String,
        pub body: Vec<u8>,
        pub version: i64,
        pub create_time: i64,
        pub update_time: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// One contact's way through one campaign: the step it is at and its timer.
pub mod enrolment {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "campaign_enrolments")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub campaign_id: String,
        pub contact_id: String,
        /// "active", "completed" or "exited".
        pub state: String,
        pub step_key: String,
        /// At a wait step, its timer set.
        pub waiting: bool,
        /// When the runner should look at it (µs; due now when enrolled or moved on).
        pub wake_time: i64,
        /// A wait step's event ("" = none).
        pub waiting_event: String,
        pub converted: bool,
        pub exit_reason: String,
        /// How many automation or campaign moves led to the enrolment (loop guard).
        pub depth: i64,
        pub lease_until: i64,
        pub version: i64,
        pub enrol_time: i64,
        pub finish_time: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// What each enrolment did at each step: "entered", "completed", "exited" (the statistics).
pub mod step_log {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "campaign_step_log")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub campaign_id: String,
        pub enrolment_id: String,
        pub step_key: String,
        pub what: String,
        pub converted: bool,
        /// A send step's delivery id; an exit's reason.
        pub detail: String,
        pub at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
