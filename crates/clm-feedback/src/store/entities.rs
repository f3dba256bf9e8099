//! SeaORM entities of the feedback schema (DDL in `migrations`).

pub mod survey {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "surveys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub display_name: String,
        pub kind: String,
        pub status: String,
        pub questions: String,
        pub target_stage_key: String,
        pub target_model_id: String,
        pub invitation_ttl: i64,
        pub version: i64,
        pub create_time: i64,
        pub update_time: i64,
        /// The lifecycle message template of its invitations (empty: lifecycle's built-in).
        pub message_template_id: String,
        /// µs after the invitation (or its last reminder) that an unanswered one is reminded;
        /// 0: never.
        pub reminder_after: i64,
        /// Most reminders per invitation.
        pub max_reminders: i64,
        /// µs after a contact's last invitation to it that they are invited again; 0: one-off.
        pub recurrence: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod invitation {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "invitations")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub survey_id: String,
        pub contact_id: String,
        pub status: String,
        pub source: String,
        pub stage_key: String,
        pub create_time: i64,
        pub expire_time: i64,
        pub respond_time: Option<i64>,
        /// Reminders sent (each claimed by a conditional update on this count).
        pub reminders_sent: i64,
        /// When the next reminder is due (NULL: none is).
        pub next_reminder_time: Option<i64>,
        /// A recurring survey: when its contact is due to be invited again (NULL: not, or
        /// already handled by the sweep).
        pub next_recurrence_time: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod contact_ask {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "contact_asks")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub contact_id: String,
        pub last_invite_time: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod response {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "responses")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub survey_id: String,
        pub invitation_id: Option<String>,
        pub contact_id: String,
        pub answers: String,
        pub complete: bool,
        pub score: Option<i32>,
        pub band: Option<String>,
        pub stage_key: String,
        pub create_time: i64,
        pub update_time: i64,
        pub complete_time: Option<i64>,
        pub version: i64,
        /// The source system's id of an imported response (unique per tenant and survey);
        /// `None` for responses submitted here.
        pub external_id: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod follow_up {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "follow_ups")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub response_id: String,
        pub survey_id: String,
        pub contact_id: String,
        pub reason: String,
        pub status: String,
        pub owner: String,
        pub note: String,
        pub open_time: i64,
        pub resolve_time: Option<i64>,
        pub version: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod review {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "reviews")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub contact_id: String,
        pub rating: i32,
        pub text: String,
        pub platform: String,
        pub url: String,
        pub create_time: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod settings {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "feedback_settings")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        pub throttle_window: i64,
        pub default_ttl: i64,
        pub ces_threshold: i32,
        pub token_secret: String,
        pub version: i64,
        pub update_time: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod contact_stage {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "contact_stages")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub contact_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub model_id: String,
        pub stage_key: String,
        pub enter_time: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
