//! The metrics service's own read model, built only from events. Every query takes the tenant.

pub mod counters;
pub mod goals;
pub mod migrations;
pub mod read;
pub mod sql;
pub mod write;

pub mod contact_facts {
    use sea_orm::entity::prelude::*;

    /// What metrics knows of a contact: non-personal facts from contact events.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "contact_facts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub contact_id: String,
        pub acquisition_channel: String,
        pub campaign: String,
        pub cost_currency: Option<String>,
        pub cost_micros: Option<i64>,
        pub referred_by: Option<String>,
        pub lead_score: i32,
        pub country_code: String,
        pub acquire_time: Option<i64>,
        pub create_time: i64,
        /// active, deleted, merged or erased.
        pub state: String,
        pub merged_into: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
