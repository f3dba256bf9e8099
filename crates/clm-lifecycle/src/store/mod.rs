//! The lifecycle service's own schema and queries. Every function takes the tenant.
//!
//! Journey events and manual moves are the source of truth; `journeys` and `transitions` are
//! derived from them by replaying the timeline (`domain::journey::replay`), so a backdated event
//! or an import rewrites the history it implies. Transition ids are derived from what they are
//! (contact, model, cause, stage, time), so a rebuild keeps the ids of unchanged transitions.

pub mod automations;
pub mod entities;
pub mod migrations;

use clm_platform::{Error, Result, TenantId};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveModelTrait, ActiveValue, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, Order, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::journey::{Cause, Journey, Transition};
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

pub async fn set_contact_state(db: &impl ConnectionTrait, tenant: &str, contact: &str, state: &str) -> Result<()> {
    known_contact::Entity::insert(known_contact::ActiveModel {
        tenant_id: ActiveValue::Set(tenant.to_owned()),
        contact_id: ActiveValue::Set(contact.to_owned()),
        state: ActiveValue::Set(state.to_owned()),
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
    tenant: &str,
    contact: &str,
    tags: &[String],
    channel: &str,
) -> Result<()> {
    let tags: Vec<String> = tags.iter().map(|t| t.to_lowercase()).collect();
    known_contact::Entity::insert(known_contact::ActiveModel {
        tenant_id: ActiveValue::Set(tenant.to_owned()),
        contact_id: ActiveValue::Set(contact.to_owned()),
        state: ActiveValue::Set("active".to_owned()),
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
pub async fn contact_state(db: &impl ConnectionTrait, tenant: &TenantId, contact: Uuid) -> Result<Option<String>> {
    Ok(known_contact::Entity::find_by_id((tenant.as_str().to_owned(), contact.to_string()))
        .one(db)
        .await?
        .map(|k| k.state))
}

/// Remove everything about a contact (erased upstream).
pub async fn erase_contact(db: &impl ConnectionTrait, tenant: &str, contact: &str) -> Result<()> {
    journey_event::Entity::delete_many()
        .filter(journey_event::Column::TenantId.eq(tenant))
        .filter(journey_event::Column::ContactId.eq(contact))
        .exec(db)
        .await?;
    manual_move::Entity::delete_many()
        .filter(manual_move::Column::TenantId.eq(tenant))
        .filter(manual_move::Column::ContactId.eq(contact))
        .exec(db)
        .await?;
    transition::Entity::delete_many()
        .filter(transition::Column::TenantId.eq(tenant))
        .filter(transition::Column::ContactId.eq(contact))
        .exec(db)
        .await?;
    journey::Entity::delete_many()
        .filter(journey::Column::TenantId.eq(tenant))
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

// ---- journeys ----

/// A stored journey event (the body is the encoded proto `JourneyEvent`).
pub async fn insert_event(db: &impl ConnectionTrait, row: journey_event::Model) -> Result<bool> {
    let inserted = journey_event::Entity::insert(row.into_active_model())
        .on_conflict(
            OnConflict::columns([journey_event::Column::TenantId, journey_event::Column::IdempotencyKey])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await
        .map_err(|e| {
            // The other unique key: the order id, taken by a concurrent call since we looked.
            if matches!(e.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_))) {
                Error::Aborted("a concurrent request recorded a purchase with the same order id; retry".into())
            } else {
                e.into()
            }
        })?;
    Ok(inserted == 1)
}

/// The purchase recorded with this order id, if any.
pub async fn purchase_by_order(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    order_id: &str,
) -> Result<Option<journey_event::Model>> {
    Ok(journey_event::Entity::find()
        .filter(journey_event::Column::TenantId.eq(tenant.as_str()))
        .filter(journey_event::Column::OrderId.eq(order_id))
        .one(db)
        .await?)
}

pub async fn event_by_key(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    key: &str,
) -> Result<Option<journey_event::Model>> {
    Ok(journey_event::Entity::find()
        .filter(journey_event::Column::TenantId.eq(tenant.as_str()))
        .filter(journey_event::Column::IdempotencyKey.eq(key))
        .one(db)
        .await?)
}

pub async fn events_of(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    contact: Uuid,
    model: Uuid,
) -> Result<Vec<journey_event::Model>> {
    Ok(journey_event::Entity::find()
        .filter(journey_event::Column::TenantId.eq(tenant.as_str()))
        .filter(journey_event::Column::ContactId.eq(contact.to_string()))
        .filter(journey_event::Column::ModelId.eq(model.to_string()))
        .order_by_asc(journey_event::Column::OccurTime)
        .order_by_asc(journey_event::Column::Id)
        .all(db)
        .await?)
}

/// A page of a contact's events, newest first, after `(occur_time, id)`.
pub async fn list_events(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    contact: Uuid,
    kind: Option<&str>,
    after: Option<&(i64, String)>,
    limit: u64,
) -> Result<(Vec<journey_event::Model>, Option<(i64, String)>)> {
    let mut q = journey_event::Entity::find()
        .filter(journey_event::Column::TenantId.eq(tenant.as_str()))
        .filter(journey_event::Column::ContactId.eq(contact.to_string()));
    if let Some(k) = kind {
        q = q.filter(journey_event::Column::Kind.eq(k));
    }
    if let Some((t, id)) = after {
        q = q.filter(Expr::col(journey_event::Column::OccurTime).lt(*t).or(
            Expr::col(journey_event::Column::OccurTime).eq(*t).and(Expr::col(journey_event::Column::Id).lt(id.clone())),
        ));
    }
    let rows = q
        .order_by(journey_event::Column::OccurTime, Order::Desc)
        .order_by(journey_event::Column::Id, Order::Desc)
        .limit(limit + 1)
        .all(db)
        .await?;
    let (rows, next) = clm_platform::pagination::split_page(rows, limit, |m| (m.occur_time, m.id.clone()));
    Ok((rows, next))
}

pub async fn insert_move(db: &impl ConnectionTrait, row: manual_move::Model) -> Result<()> {
    manual_move::Entity::insert(row.into_active_model()).exec_without_returning(db).await?;
    Ok(())
}

pub async fn moves_of(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    contact: Uuid,
    model: Uuid,
) -> Result<Vec<manual_move::Model>> {
    Ok(manual_move::Entity::find()
        .filter(manual_move::Column::TenantId.eq(tenant.as_str()))
        .filter(manual_move::Column::ContactId.eq(contact.to_string()))
        .filter(manual_move::Column::ModelId.eq(model.to_string()))
        .all(db)
        .await?)
}

fn cause_key(c: &Cause) -> String {
    match c {
        Cause::Rule(r) => format!("rule:{r}"),
        Cause::Manual => "manual".into(),
        Cause::Automation => "automation".into(),
    }
}

/// The stable id of a transition (same facts → same id across rebuilds).
pub fn transition_id(contact: Uuid, model: Uuid, t: &Transition) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("{contact}/{model}/{}/{}/{}/{}", cause_key(&t.cause), t.cause_ref, t.to.as_str(), t.at).as_bytes(),
    )
}

/// A stored transition as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTransition {
    pub id: Uuid,
    pub transition: Transition,
    pub cause: String,
    pub actor: String,
    pub reason: String,
}

pub async fn transitions_of(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    contact: Uuid,
    model: Uuid,
) -> Result<Vec<transition::Model>> {
    Ok(transition::Entity::find()
        .filter(transition::Column::TenantId.eq(tenant.as_str()))
        .filter(transition::Column::ContactId.eq(contact.to_string()))
        .filter(transition::Column::ModelId.eq(model.to_string()))
        .order_by_asc(transition::Column::Seq)
        .all(db)
        .await?)
}

/// Transitions a rebuild removed (no longer part of the history), each with the time the
/// contact had entered the stage it left.
pub type Dropped = Vec<(transition::Model, Option<i64>)>;

/// Replace the derived journey and transitions of one contact in one model. Returns the
/// transitions that are new (ids not stored before), for StageChanged events, and those the
/// rebuild removed, for their retraction.
pub async fn save_journey(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    contact: Uuid,
    model: Uuid,
    j: &Journey,
    manual: &std::collections::HashMap<String, (String, String)>,
    check_after: Option<i64>,
) -> Result<(Vec<transition::Model>, Dropped)> {
    let previous = transitions_of(db, tenant, contact, model).await?;
    let before: std::collections::HashSet<String> = previous.iter().map(|t| t.id.clone()).collect();
    transition::Entity::delete_many()
        .filter(transition::Column::TenantId.eq(tenant.as_str()))
        .filter(transition::Column::ContactId.eq(contact.to_string()))
        .filter(transition::Column::ModelId.eq(model.to_string()))
        .exec(db)
        .await?;
    let rows: Vec<transition::Model> = j
        .transitions
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let (actor, reason) = manual
                .get(&t.cause_ref)
                .cloned()
                .filter(|_| matches!(t.cause, Cause::Manual | Cause::Automation))
                .unwrap_or_default();
            transition::Model {
                id: transition_id(contact, model, t).to_string(),
                tenant_id: tenant.as_str().to_owned(),
                contact_id: contact.to_string(),
                model_id: model.to_string(),
                seq: i as i64,
                from_stage: t.from.as_ref().map(|f| f.as_str().to_owned()),
                to_stage: t.to.as_str().to_owned(),
                at: t.at,
                cause: cause_key(&t.cause),
                cause_ref: t.cause_ref.clone(),
                actor,
                reason,
                reactivation: t.reactivation,
            }
        })
        .collect();
    if !rows.is_empty() {
        transition::Entity::insert_many(rows.iter().cloned().map(IntoActiveModel::into_active_model))
            .exec_without_returning(db)
            .await?;
    }
    let jrow = journey::Model {
        tenant_id: tenant.as_str().to_owned(),
        contact_id: contact.to_string(),
        model_id: model.to_string(),
        current_stage: j.current.as_ref().map(|s| s.as_str().to_owned()),
        enter_time: j.entered_at,
        last_activity: j.last_activity,
        check_after,
        reactivations: i64::from(j.reactivations),
        version: 0,
    };
    journey::Entity::insert(jrow.into_active_model())
        .on_conflict(
            OnConflict::columns([journey::Column::TenantId, journey::Column::ContactId, journey::Column::ModelId])
                .update_columns([
                    journey::Column::CurrentStage,
                    journey::Column::EnterTime,
                    journey::Column::LastActivity,
                    journey::Column::CheckAfter,
                    journey::Column::Reactivations,
                ])
                .value(journey::Column::Version, Expr::col((journey::Entity, journey::Column::Version)).add(1))
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    let kept: std::collections::HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let dropped = previous
        .iter()
        .filter(|t| !kept.contains(t.id.as_str()))
        .map(|t| {
            let enter = previous.iter().filter(|p| p.seq < t.seq).max_by_key(|p| p.seq).map(|p| p.at);
            (t.clone(), enter)
        })
        .collect();
    Ok((rows.into_iter().filter(|r| !before.contains(&r.id)).collect(), dropped))
}

pub async fn get_journey(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    contact: Uuid,
    model: Uuid,
) -> Result<Option<journey::Model>> {
    Ok(journey::Entity::find_by_id((tenant.as_str().to_owned(), contact.to_string(), model.to_string()))
        .one(db)
        .await?)
}

/// Contacts in a stage, longest there first, after `(enter_time, contact_id)`.
pub async fn in_stage(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    model: Uuid,
    stage: &StageKey,
    after: Option<&(i64, String)>,
    limit: u64,
) -> Result<(Vec<journey::Model>, Option<(i64, String)>, u64)> {
    let base = journey::Entity::find()
        .filter(journey::Column::TenantId.eq(tenant.as_str()))
        .filter(journey::Column::ModelId.eq(model.to_string()))
        .filter(journey::Column::CurrentStage.eq(stage.as_str()));
    let total = base.clone().count(db).await?;
    let mut q = base;
    if let Some((t, id)) = after {
        q = q.filter(Expr::col(journey::Column::EnterTime).gt(*t).or(
            Expr::col(journey::Column::EnterTime).eq(*t).and(Expr::col(journey::Column::ContactId).gt(id.clone())),
        ));
    }
    let rows = q
        .order_by_asc(journey::Column::EnterTime)
        .order_by_asc(journey::Column::ContactId)
        .limit(limit + 1)
        .all(db)
        .await?;
    let (rows, next) = clm_platform::pagination::split_page(rows, limit, |m| (m.enter_time, m.contact_id.clone()));
    Ok((rows, next, total))
}

/// Journeys a time-based rule may change by `now` (their `check_after` has passed), oldest
/// first, for the scheduler.
pub async fn due_journeys(db: &impl ConnectionTrait, now: i64, limit: u64) -> Result<Vec<journey::Model>> {
    Ok(journey::Entity::find()
        .filter(journey::Column::CheckAfter.lte(now))
        .order_by_asc(journey::Column::CheckAfter)
        .limit(limit)
        .all(db)
        .await?)
}

/// Rebuild a contact's journey in a model from its timeline (events + manual moves) up to
/// `now`, store it, and return the transitions that are new.
pub async fn rebuild_journey(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    contact: Uuid,
    model: &ModelRecord,
    rules: &crate::domain::journey::Rules,
    now: i64,
) -> Result<(Journey, Vec<transition::Model>, Dropped)> {
    use crate::domain::journey::{Happening, Item, replay};
    // One rebuild of a contact at a time across replicas: each sees what the one before
    // committed, so a transition is derived (and its StageChanged published) once.
    clm_platform::events::ordering::lock_key(db, tenant.as_str(), &format!("contact/{contact}")).await?;
    let mut items = Vec::new();
    for e in events_of(db, tenant, contact, model.id).await? {
        let what = match (e.kind.as_str(), e.score) {
            ("touchpoint", _) => Happening::Touchpoint { lead: e.lead },
            ("purchase", _) => Happening::Purchase,
            ("referral", _) => Happening::Referral,
            ("review", _) => Happening::Review,
            (_, Some(score)) => Happening::NpsScore(score),
            _ => Happening::Custom,
        };
        items.push(Item { at: e.occur_time, id: e.id.clone(), what });
    }
    let mut manual = std::collections::HashMap::new();
    for m in moves_of(db, tenant, contact, model.id).await? {
        // A move to a stage the model no longer has is skipped (the model was versioned).
        if let Ok(to) = StageKey::parse("to_stage", &m.to_stage)
            && model.model.stage(&to).is_some()
        {
            manual.insert(m.id.clone(), (m.actor.clone(), m.reason.clone()));
            let what =
                if m.actor.starts_with("automation:") { Happening::Automated { to } } else { Happening::Manual { to } };
            items.push(Item { at: m.at, id: m.id, what });
        }
    }
    let j = replay(&model.model, rules, &items, now);
    // When a time-based rule can next change this journey.
    let dormancy = match (&j.current, j.last_activity) {
        (Some(cur), Some(last)) if rules.dormancy => model.model.dormancy_of(cur).map(|d| last + d),
        _ => None,
    };
    let tenure = match (rules.customer_tenure_retention, j.customer_since) {
        (Some(t), Some(since)) if since + t > now => Some(since + t),
        _ => None,
    };
    // Inactivity automations fall due `idle` after the last activity.
    let mut idle_due = Vec::new();
    if let Some(last) = j.last_activity {
        for a in entities::automation::Entity::find()
            .filter(entities::automation::Column::TenantId.eq(tenant.as_str()))
            .filter(entities::automation::Column::ModelId.eq(model.id.to_string()))
            .filter(entities::automation::Column::Enabled.eq(true))
            .all(db)
            .await?
        {
            let body =
                <clm_proto::lifecycle::v1::Automation as prost::Message>::decode(a.body.as_slice()).unwrap_or_default();
            if let Some(clm_proto::lifecycle::v1::trigger::Kind::Inactivity(d)) = body.trigger.and_then(|t| t.kind)
                && let Some(idle) = clm_platform::convert::duration_micros(&d)
            {
                if last + idle > now {
                    idle_due.push(last + idle);
                } else {
                    // Already idle that long: due now, unless it ran for this idle period.
                    let ran = entities::automation_run::Entity::find()
                        .filter(entities::automation_run::Column::TenantId.eq(tenant.as_str()))
                        .filter(entities::automation_run::Column::AutomationId.eq(a.id.clone()))
                        .filter(entities::automation_run::Column::ContactId.eq(contact.to_string()))
                        .filter(entities::automation_run::Column::RunTime.gt(last))
                        .count(db)
                        .await?;
                    if ran == 0 {
                        idle_due.push(now);
                    }
                }
            }
        }
    }
    // The next moment after `now` at which something time-based can happen.
    let check_after = dormancy.into_iter().filter(|t| *t > now).chain(tenure).chain(idle_due).min();
    let (new, dropped) = save_journey(db, tenant, contact, model.id, &j, &manual, check_after).await?;
    Ok((j, new, dropped))
}

/// After a merge, the merged contacts' events and moves belong to the survivor.
pub async fn reassign_contact(db: &impl ConnectionTrait, tenant: &str, from: &str, to: &str) -> Result<Vec<String>> {
    let models: Vec<String> = journey_event::Entity::find()
        .select_only()
        .column(journey_event::Column::ModelId)
        .distinct()
        .filter(journey_event::Column::TenantId.eq(tenant))
        .filter(journey_event::Column::ContactId.eq(from))
        .into_tuple()
        .all(db)
        .await?;
    journey_event::Entity::update_many()
        .col_expr(journey_event::Column::ContactId, Expr::val(to))
        .filter(journey_event::Column::TenantId.eq(tenant))
        .filter(journey_event::Column::ContactId.eq(from))
        .exec(db)
        .await?;
    manual_move::Entity::update_many()
        .col_expr(manual_move::Column::ContactId, Expr::val(to))
        .filter(manual_move::Column::TenantId.eq(tenant))
        .filter(manual_move::Column::ContactId.eq(from))
        .exec(db)
        .await?;
    transition::Entity::delete_many()
        .filter(transition::Column::TenantId.eq(tenant))
        .filter(transition::Column::ContactId.eq(from))
        .exec(db)
        .await?;
    journey::Entity::delete_many()
        .filter(journey::Column::TenantId.eq(tenant))
        .filter(journey::Column::ContactId.eq(from))
        .exec(db)
        .await?;
    Ok(models)
}
