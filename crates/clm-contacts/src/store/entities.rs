//! SeaORM entities of the contacts schema (see `migrations` for the DDL and indexes).

pub mod contact {
    use sea_orm::entity::prelude::*;

    // Serialize: rows travel to PostgreSQL as one JSON parameter in bulk inserts (field names
    // are the column names).
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, serde::Serialize)]
    #[sea_orm(table_name = "contacts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub email: Option<String>,
        pub phone: Option<String>,
        pub given_name: String,
        pub family_name: String,
        pub company: String,
        pub job_title: String,
        pub birth_year: Option<i32>,
        pub age_band: Option<String>,
        pub gender: Option<String>,
        pub locale: String,
        pub country_code: Option<String>,
        pub region: String,
        pub city: String,
        /// JSON: {"tags": [...], "interests": [...], "values": [...]} in the caller's spelling.
        pub labels: String,
        /// JSON: {"key": {"t": "text"} | {"n": 1.5} | {"b": true} | {"ts": micros}}.
        pub attributes: String,
        /// JSON list of consents.
        pub consents: String,
        pub acq_channel: Option<String>,
        pub acq_campaign: String,
        pub acq_source_detail: String,
        pub acq_cost_currency: Option<String>,
        pub acq_cost_micros: Option<i64>,
        pub referred_by: Option<String>,
        pub acquired_at: Option<i64>,
        pub lead_score: Option<i32>,
        pub state: String,
        pub merged_into: Option<String>,
        pub create_time: i64,
        pub update_time: i64,
        pub delete_time: Option<i64>,
        pub version: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod label {
    use sea_orm::entity::prelude::*;

    /// One tag / interest / value of a contact, lower-cased, for filtering.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "contact_labels")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub contact_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub kind: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub value: String,
        pub tenant_id: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod attribute {
    use sea_orm::entity::prelude::*;

    /// One custom attribute of a contact, typed, for filtering.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "contact_attributes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub contact_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub key: String,
        pub tenant_id: String,
        pub text_value: Option<String>,
        pub number_value: Option<f64>,
        pub bool_value: Option<bool>,
        pub time_value: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod segment {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "segments")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub display_name: String,
        pub description: String,
        pub filter: String,
        pub create_time: i64,
        pub update_time: i64,
        pub version: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod erasure {
    use sea_orm::entity::prelude::*;

    /// That a contact was erased, when and why: no personal data.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "erasures")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub contact_id: String,
        pub tenant_id: String,
        pub erase_time: i64,
        pub reason: String,
        pub actor: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
