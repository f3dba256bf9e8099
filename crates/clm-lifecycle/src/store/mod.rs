//! The lifecycle service's own schema and queries. Every function takes the tenant.
//!
//! Journey events and manual moves are the source of truth; `journeys` and `transitions` are
//! derived from them by replaying the timeline (`domain::journey::replay`), so a backdated event
//! or an import rewrites the history it implies. Transition ids are derived from what they are
//! (contact, model, cause, stage, time, and which repetition of those it is), so a rebuild keeps
//! the ids of unchanged transitions. Only `journeys::advance` calls [`rebuild_journey`] and
//! [`insert_move`].

pub mod automations;
pub mod campaigns;
pub mod entities;
mod journeys;
pub mod messaging;
pub mod migrations;

pub use journeys::*;

use clm_platform::{Error, Result, TenantId};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveModelTrait, ActiveValue, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::contact::ContactState;
use crate::domain::model::{Allowed, Category, Model, Role, Stage, StageKey};
use entities::{journey, journey_event, known_contact, lifecycle_model, manual_move, rule_settings, transition};

pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

// ---- models ----

#[derive(Serialize, Deserialize)]
struct StoredStage {
    key: String,
    name: String,
    category: String,
    role: String,
    dormancy: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct StoredAllowed {
    from: Option<String>,
    to: String,
}

/// A stored lifecycle model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRecord {
    pub id: Uuid,
    pub display_name: String,
    pub description: String,
    pub model: Model,
    pub is_default: bool,
    pub version: i64,
    pub create_time: i64,
    pub update_time: i64,
    /// Dormancy is not churn (metrics' churn basis; `LifecycleModel.churn_excludes_dormancy`).
    pub churn_excludes_dormancy: bool,
}

fn cat_key(c: Category) -> &'static str {
    match c {
        Category::Prospect => "prospect",
        Category::Customer => "customer",
        Category::Lost => "lost",
    }
}

fn role_key(r: Role) -> &'static str {
    match r {
        Role::Normal => "normal",
        Role::Dormant => "dormant",
        Role::Churned => "churned",
        Role::Reactivated => "reactivated",
    }
}

fn corrupt(what: &str) -> Error {
    Error::internal(anyhow::anyhow!("stored {what} is unreadable"))
}

fn model_from(m: lifecycle_model::Model) -> Result<ModelRecord> {
    let stages: Vec<StoredStage> = serde_json::from_str(&m.stages).map_err(|_| corrupt("stages"))?;
    let allowed: Vec<StoredAllowed> = serde_json::from_str(&m.allowed).map_err(|_| corrupt("moves"))?;
    let stages = stages
        .into_iter()
        .map(|s| {
            Ok(Stage {
                key: StageKey::parse("stage", &s.key).map_err(|_| corrupt("stage key"))?,
                display_name: s.name,
                category: match s.category.as_str() {
                    "prospect" => Category::Prospect,
                    "customer" => Category::Customer,
                    "lost" => Category::Lost,
                    _ => return Err(corrupt("category")),
                },
                role: match s.role.as_str() {
                    "dormant" => Role::Dormant,
                    "churned" => Role::Churned,
                    "reactivated" => Role::Reactivated,
                    _ => Role::Normal,
                },
                dormancy_micros: s.dormancy,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let allowed = allowed
        .into_iter()
        .map(|a| {
            Ok(Allowed {
                from: a.from.map(|f| StageKey::parse("from", &f)).transpose().map_err(|_| corrupt("move"))?,
                to: StageKey::parse("to", &a.to).map_err(|_| corrupt("move"))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ModelRecord {
        id: Uuid::parse_str(&m.id).map_err(|_| corrupt("model id"))?,
        display_name: m.display_name,
        description: m.description,
        model: Model::new(stages, allowed).map_err(|_| corrupt("model"))?,
        is_default: m.is_default,
        version: m.version,
        create_time: m.create_time,
        update_time: m.update_time,
        churn_excludes_dormancy: m.churn_excludes_dormancy,
    })
}

fn model_row(tenant: &TenantId, r: &ModelRecord) -> lifecycle_model::Model {
    let stages: Vec<StoredStage> = r
        .model
        .stages()
        .iter()
        .map(|s| StoredStage {
            key: s.key.as_str().to_owned(),
            name: s.display_name.clone(),
            category: cat_key(s.category).to_owned(),
            role: role_key(s.role).to_owned(),
            dormancy: s.dormancy_micros,
        })
        .collect();
    let allowed: Vec<StoredAllowed> = r
        .model
        .allowed()
        .iter()
        .map(|a| StoredAllowed { from: a.from.as_ref().map(|f| f.as_str().to_owned()), to: a.to.as_str().to_owned() })
        .collect();
    lifecycle_model::Model {
        id: r.id.to_string(),
        tenant_id: tenant.as_str().to_owned(),
        display_name: r.display_name.clone(),
        description: r.description.clone(),
        stages: serde_json::to_string(&stages).expect("stages serialize"),
        allowed: serde_json::to_string(&allowed).expect("moves serialize"),
        is_default: r.is_default,
        version: r.version,
        create_time: r.create_time,
        update_time: r.update_time,
        churn_excludes_dormancy: r.churn_excludes_dormancy,
    }
}

/// The tenant's default model, created on first use.
pub async fn default_model(db: &impl ConnectionTrait, tenant: &TenantId) -> Result<ModelRecord> {
    if let Some(m) = lifecycle_model::Entity::find()
        .filter(lifecycle_model::Column::TenantId.eq(tenant.as_str()))
        .filter(lifecycle_model::Column::IsDefault.eq(true))
        .one(db)
        .await?
    {
        return model_from(m);
    }
    let now = now_micros();
    // A stable id per tenant, so two first uses racing create the same row once.
    let id = Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("clm-default-model/{tenant}").as_bytes());
    let rec = ModelRecord {
        id,
        display_name: "Default".into(),
        description: "awareness → acquisition → conversion → retention → loyalty, with dormant and churned".into(),
        model: Model::default_model(),
        is_default: true,
        version: 1,
        create_time: now,
        update_time: now,
        churn_excludes_dormancy: false,
    };
    lifecycle_model::Entity::insert(model_row(tenant, &rec).into_active_model())
        .on_conflict(OnConflict::column(lifecycle_model::Column::Id).do_nothing().to_owned())
        .exec_without_returning(db)
        .await?;
    Ok(rec)
}

/// A model by id, or the default model for `"default"` / empty.
pub async fn get_model(db: &impl ConnectionTrait, tenant: &TenantId, id: &str) -> Result<ModelRecord> {
    if id.is_empty() || id == "default" {
        return default_model(db, tenant).await;
    }
    let uuid = Uuid::parse_str(id).map_err(|_| Error::invalid("model_id", "must be a UUID or \"default\""))?;
    lifecycle_model::Entity::find()
        .filter(lifecycle_model::Column::TenantId.eq(tenant.as_str()))
        .filter(lifecycle_model::Column::Id.eq(uuid.to_string()))
        .one(db)
        .await?
        .map(model_from)
        .transpose()?
        .ok_or_else(|| Error::not_found("lifecycle model", id))
}

pub async fn insert_model(db: &impl ConnectionTrait, tenant: &TenantId, r: &ModelRecord) -> Result<()> {
    lifecycle_model::Entity::insert(model_row(tenant, r).into_active_model()).exec_without_returning(db).await?;
    Ok(())
}

pub async fn update_model(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    r: &ModelRecord,
    expected_version: i64,
) -> Result<()> {
    let mut am = model_row(tenant, r).into_active_model().reset_all();
    am.id = ActiveValue::Unchanged(r.id.to_string());
    am.tenant_id = ActiveValue::Unchanged(tenant.as_str().to_owned());
    let res = lifecycle_model::Entity::update_many()
        .set(am)
        .filter(lifecycle_model::Column::TenantId.eq(tenant.as_str()))
        .filter(lifecycle_model::Column::Id.eq(r.id.to_string()))
        .filter(lifecycle_model::Column::Version.eq(expected_version))
        .exec(db)
        .await?;
    if res.rows_affected == 1 {
        Ok(())
    } else {
        Err(Error::Aborted("the model changed since it was read (etag mismatch); re-read and retry".into()))
    }
}

/// Make `id` the only default model of the tenant.
pub async fn set_default(db: &impl ConnectionTrait, tenant: &TenantId, id: Uuid) -> Result<()> {
    lifecycle_model::Entity::update_many()
        .col_expr(lifecycle_model::Column::IsDefault, Expr::col(lifecycle_model::Column::Id).eq(id.to_string()))
        .filter(lifecycle_model::Column::TenantId.eq(tenant.as_str()))
        .exec(db)
        .await?;
    Ok(())
}

pub async fn delete_model(db: &impl ConnectionTrait, tenant: &TenantId, id: Uuid) -> Result<()> {
    lifecycle_model::Entity::delete_many()
        .filter(lifecycle_model::Column::TenantId.eq(tenant.as_str()))
        .filter(lifecycle_model::Column::Id.eq(id.to_string()))
        .exec(db)
        .await?;
    Ok(())
}

pub async fn list_models(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    after: Option<&(i64, String)>,
    limit: u64,
) -> Result<(Vec<ModelRecord>, Option<(i64, String)>)> {
    let mut q = lifecycle_model::Entity::find().filter(lifecycle_model::Column::TenantId.eq(tenant.as_str()));
    if let Some((t, id)) = after {
        q = q.filter(
            Expr::col(lifecycle_model::Column::CreateTime).gt(*t).or(Expr::col(lifecycle_model::Column::CreateTime)
                .eq(*t)
                .and(Expr::col(lifecycle_model::Column::Id).gt(id.clone()))),
        );
    }
    let rows = q
        .order_by_asc(lifecycle_model::Column::CreateTime)
        .order_by_asc(lifecycle_model::Column::Id)
        .limit(limit + 1)
        .all(db)
        .await?;
    let (rows, next) = clm_platform::pagination::split_page(rows, limit, |m| (m.create_time, m.id.clone()));
    Ok((rows.into_iter().map(model_from).collect::<Result<Vec<_>>>()?, next))
}

/// How many contacts of the model are currently in each of `stages`.
pub async fn contacts_in_stages(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    model: Uuid,
    stages: &[StageKey],
) -> Result<u64> {
    if stages.is_empty() {
        return Ok(0);
    }
    Ok(journey::Entity::find()
        .filter(journey::Column::TenantId.eq(tenant.as_str()))
        .filter(journey::Column::ModelId.eq(model.to_string()))
        .filter(journey::Column::CurrentStage.is_in(stages.iter().map(|s| s.as_str().to_owned())))
        .count(db)
        .await?)
}

/// Whether any journey uses the model.
pub async fn model_in_use(db: &impl ConnectionTrait, tenant: &TenantId, model: Uuid) -> Result<bool> {
    Ok(journey::Entity::find()
        .filter(journey::Column::TenantId.eq(tenant.as_str()))
        .filter(journey::Column::ModelId.eq(model.to_string()))
        .count(db)
        .await?
        > 0)
}

// ---- contacts known from events ----

pub async fn set_contact_state(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    contact: &str,
    state: ContactState,
) -> Result<()> {
    known_contact::Entity::insert(known_contact::ActiveModel {
        tenant_id: ActiveValue::Set(tenant.as_str().to_owned()),
        contact_id: ActiveValue::Set(contact.to_owned()),
        state: ActiveValue::Set(state.key().to_owned()),
        tags: ActiveValue::Set("[]".to_owned()),
        channel: ActiveValue::Set(String::new()),
    })
    .on_conflict(
        OnConflict::columns([known_contact::Column::TenantId, known_contact::Column::ContactId])
            .update_column(known_contact::Column::State)
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// Remember a contact's tags and channel (from contact events) for automation conditions.
pub async fn set_contact_facts(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    contact: &str,
    tags: &[String],
    channel: &str,
) -> Result<()> {
    let tags: Vec<String> = tags.iter().map(|t| t.to_lowercase()).collect();
    known_contact::Entity::insert(known_contact::ActiveModel {
        tenant_id: ActiveValue::Set(tenant.as_str().to_owned()),
        contact_id: ActiveValue::Set(contact.to_owned()),
        state: ActiveValue::Set(ContactState::Active.key().to_owned()),
        tags: ActiveValue::Set(serde_json::to_string(&tags).expect("tags serialize")),
        channel: ActiveValue::Set(channel.to_owned()),
    })
    .on_conflict(
        OnConflict::columns([known_contact::Column::TenantId, known_contact::Column::ContactId])
            .update_columns([known_contact::Column::Tags, known_contact::Column::Channel])
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// A contact's tags and channel as known from contact events.
pub async fn contact_facts(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    contact: Uuid,
) -> Result<(Vec<String>, String)> {
    match known_contact::Entity::find_by_id((tenant.as_str().to_owned(), contact.to_string())).one(db).await? {
        Some(k) => Ok((serde_json::from_str(&k.tags).unwrap_or_default(), k.channel)),
        None => Ok((Vec::new(), String::new())),
    }
}

/// The state of a contact as known from contact events (`None`: not heard of).
pub async fn contact_state(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    contact: Uuid,
) -> Result<Option<ContactState>> {
    let Some(k) = known_contact::Entity::find_by_id((tenant.as_str().to_owned(), contact.to_string())).one(db).await?
    else {
        return Ok(None);
    };
    ContactState::parse(&k.state)
        .map(Some)
        .ok_or_else(|| Error::internal(anyhow::anyhow!("unknown contact state {:?}", k.state)))
}

/// Remove everything about a contact (erased upstream).
pub async fn erase_contact(db: &impl ConnectionTrait, tenant: &TenantId, contact: &str) -> Result<()> {
    automations::drop_jobs(db, tenant, contact).await?;
    messaging::drop_contact(db, tenant, contact).await?;
    campaigns::drop_contact(db, tenant, contact).await?;
    journey_event::Entity::delete_many()
        .filter(journey_event::Column::TenantId.eq(tenant.as_str()))
        .filter(journey_event::Column::ContactId.eq(contact))
        .exec(db)
        .await?;
    manual_move::Entity::delete_many()
        .filter(manual_move::Column::TenantId.eq(tenant.as_str()))
        .filter(manual_move::Column::ContactId.eq(contact))
        .exec(db)
        .await?;
    transition::Entity::delete_many()
        .filter(transition::Column::TenantId.eq(tenant.as_str()))
        .filter(transition::Column::ContactId.eq(contact))
        .exec(db)
        .await?;
    journey::Entity::delete_many()
        .filter(journey::Column::TenantId.eq(tenant.as_str()))
        .filter(journey::Column::ContactId.eq(contact))
        .exec(db)
        .await?;
    Ok(())
}

// ---- rule settings ----

pub use entities::StoredRules;

pub async fn rules(db: &impl ConnectionTrait, tenant: &TenantId) -> Result<(StoredRules, i64)> {
    match rule_settings::Entity::find_by_id(tenant.as_str().to_owned()).one(db).await? {
        Some(r) => Ok((serde_json::from_str(&r.settings).map_err(|_| corrupt("rule settings"))?, r.version)),
        None => Ok((StoredRules::default(), 0)),
    }
}

pub async fn save_rules(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    rules: &StoredRules,
    expected_version: i64,
) -> Result<i64> {
    let json = serde_json::to_string(rules).expect("rules serialize");
    if expected_version == 0 {
        let inserted = rule_settings::Entity::insert(rule_settings::ActiveModel {
            tenant_id: ActiveValue::Set(tenant.as_str().to_owned()),
            settings: ActiveValue::Set(json),
            version: ActiveValue::Set(1),
        })
        .on_conflict(OnConflict::column(rule_settings::Column::TenantId).do_nothing().to_owned())
        .exec_without_returning(db)
        .await?;
        return if inserted == 1 {
            Ok(1)
        } else {
            Err(Error::Aborted("rule settings changed; re-read and retry".into()))
        };
    }
    let res = rule_settings::Entity::update_many()
        .col_expr(rule_settings::Column::Settings, Expr::val(json))
        .col_expr(rule_settings::Column::Version, Expr::val(expected_version + 1))
        .filter(rule_settings::Column::TenantId.eq(tenant.as_str()))
        .filter(rule_settings::Column::Version.eq(expected_version))
        .exec(db)
        .await?;
    if res.rows_affected == 1 {
        Ok(expected_version + 1)
    } else {
        Err(Error::Aborted("rule settings changed; re-read and retry".into()))
    }
}
