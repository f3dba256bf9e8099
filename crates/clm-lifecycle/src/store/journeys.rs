//! The journey side of the store: journey events and moves (the source of truth), and the
//! journeys and transitions derived from them.

use clm_platform::{Error, Result, TenantId};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, Order, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use uuid::Uuid;

use super::ModelRecord;
use super::entities::{self, journey, journey_event, manual_move, transition};
use crate::domain::journey::{Cause, Journey, Transition};
use crate::domain::model::StageKey;

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

/// The stable id of a transition (same facts → same id across rebuilds). `repeat` counts the
/// earlier transitions of the same history with the same facts: two dormancies into the same
/// stage at the same instant (their `cause_ref` is empty), or a move and a rule landing alike,
/// are two positions of the history and get two ids. The first keeps the id it always had.
pub fn transition_id(contact: Uuid, model: Uuid, t: &Transition, repeat: usize) -> Uuid {
    let name = format!("{contact}/{model}/{}/{}/{}/{}", cause_key(&t.cause), t.cause_ref, t.to.as_str(), t.at);
    let name = if repeat > 0 { format!("{name}#{repeat}") } else { name };
    Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes())
}

/// The ids of a history's transitions, unique per position ([`transition_id`]).
pub fn transition_ids(contact: Uuid, model: Uuid, ts: &[Transition]) -> Vec<Uuid> {
    let mut seen: std::collections::HashMap<Uuid, usize> = std::collections::HashMap::new();
    ts.iter()
        .map(|t| {
            let base = transition_id(contact, model, t, 0);
            let n = seen.entry(base).or_insert(0);
            let id = if *n == 0 { base } else { transition_id(contact, model, t, *n) };
            *n += 1;
            id
        })
        .collect()
}

/// What a StageChanged carries of a transition: a kept id whose content differs (a backdated
/// event changed where it came from, or its place among the others) is published again.
fn same_content(a: &transition::Model, b: &transition::Model) -> bool {
    (&a.from_stage, &a.to_stage, a.at, &a.cause, &a.cause_ref, a.reactivation)
        == (&b.from_stage, &b.to_stage, b.at, &b.cause, &b.cause_ref, b.reactivation)
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
/// transitions that are new, for StageChanged events, and those the rebuild removed, for their
/// retraction. A transition that keeps its id but not its content (from stage, to stage, time,
/// cause, reactivation, or its order among the kept ones) is both: the old one retracted, the
/// new one published, so consumers never keep a stale version.
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
    transition::Entity::delete_many()
        .filter(transition::Column::TenantId.eq(tenant.as_str()))
        .filter(transition::Column::ContactId.eq(contact.to_string()))
        .filter(transition::Column::ModelId.eq(model.to_string()))
        .exec(db)
        .await?;
    let ids = transition_ids(contact, model, &j.transitions);
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
                id: ids[i].to_string(),
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
    let (new, dropped) = diff(&previous, rows);
    Ok((new, dropped))
}

/// What changed between two histories of a contact (each in `seq` order): the transitions to
/// publish and those to retract (with the time the contact had entered the stage it left).
fn diff(previous: &[transition::Model], rows: Vec<transition::Model>) -> (Vec<transition::Model>, Dropped) {
    use std::collections::{HashMap, HashSet};
    let old: HashMap<&str, &transition::Model> = previous.iter().map(|t| (t.id.as_str(), t)).collect();
    let both: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).filter(|id| old.contains_key(id)).collect();
    // The kept ids before each kept one, in a history: its place among the kept.
    let places = |ids: Vec<&str>| -> HashMap<String, Vec<String>> {
        let mut out = HashMap::new();
        let mut seen: Vec<String> = Vec::new();
        for id in ids.into_iter().filter(|id| both.contains(id)) {
            let mut before = seen.clone();
            before.sort();
            out.insert(id.to_owned(), before);
            seen.push(id.to_owned());
        }
        out
    };
    let old_place = places(previous.iter().map(|t| t.id.as_str()).collect());
    let new_place = places(rows.iter().map(|t| t.id.as_str()).collect());
    let changed: HashSet<String> = rows
        .iter()
        .filter(|r| {
            old.get(r.id.as_str()).is_some_and(|o| !same_content(o, r) || old_place.get(&r.id) != new_place.get(&r.id))
        })
        .map(|r| r.id.clone())
        .collect();
    let kept: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let dropped = previous
        .iter()
        .filter(|t| !kept.contains(t.id.as_str()) || changed.contains(&t.id))
        .map(|t| {
            let enter = previous.iter().filter(|p| p.seq < t.seq).max_by_key(|p| p.seq).map(|p| p.at);
            (t.clone(), enter)
        })
        .collect();
    let new = rows.into_iter().filter(|r| !old.contains_key(r.id.as_str()) || changed.contains(&r.id)).collect();
    (new, dropped)
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
    let dormancy = j.dormant_at(&model.model, rules);
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
pub async fn reassign_contact(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    from: &str,
    to: &str,
) -> Result<Vec<String>> {
    // What was owed to the merged contact's journey went with it (the survivor's rebuild fires
    // its own).
    super::automations::drop_jobs(db, tenant, from).await?;
    let models: Vec<String> = journey_event::Entity::find()
        .select_only()
        .column(journey_event::Column::ModelId)
        .distinct()
        .filter(journey_event::Column::TenantId.eq(tenant.as_str()))
        .filter(journey_event::Column::ContactId.eq(from))
        .into_tuple()
        .all(db)
        .await?;
    journey_event::Entity::update_many()
        .col_expr(journey_event::Column::ContactId, Expr::val(to))
        .filter(journey_event::Column::TenantId.eq(tenant.as_str()))
        .filter(journey_event::Column::ContactId.eq(from))
        .exec(db)
        .await?;
    manual_move::Entity::update_many()
        .col_expr(manual_move::Column::ContactId, Expr::val(to))
        .filter(manual_move::Column::TenantId.eq(tenant.as_str()))
        .filter(manual_move::Column::ContactId.eq(from))
        .exec(db)
        .await?;
    transition::Entity::delete_many()
        .filter(transition::Column::TenantId.eq(tenant.as_str()))
        .filter(transition::Column::ContactId.eq(from))
        .exec(db)
        .await?;
    journey::Entity::delete_many()
        .filter(journey::Column::TenantId.eq(tenant.as_str()))
        .filter(journey::Column::ContactId.eq(from))
        .exec(db)
        .await?;
    Ok(models)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, seq: i64, from: Option<&str>, to: &str, at: i64) -> transition::Model {
        transition::Model {
            id: id.into(),
            tenant_id: "t".into(),
            contact_id: "c".into(),
            model_id: "m".into(),
            seq,
            from_stage: from.map(Into::into),
            to_stage: to.into(),
            at,
            cause: "rule:x".into(),
            cause_ref: String::new(),
            actor: String::new(),
            reason: String::new(),
            reactivation: false,
        }
    }

    fn ids<'a>(ts: impl IntoIterator<Item = &'a transition::Model>) -> Vec<&'a str> {
        ts.into_iter().map(|t| t.id.as_str()).collect()
    }

    #[test]
    fn an_unchanged_history_publishes_nothing() {
        let h = vec![row("a", 0, None, "awareness", 1), row("b", 1, Some("awareness"), "conversion", 5)];
        let (new, dropped) = diff(&h, h.clone());
        assert!(new.is_empty() && dropped.is_empty());
    }

    #[test]
    fn a_kept_id_with_other_content_is_retracted_then_published_again() {
        // A lead captured before the purchase: the conversion keeps its id, not its from stage.
        let before = vec![row("conv", 0, None, "conversion", 10)];
        let after = vec![row("lead", 0, None, "acquisition", 3), row("conv", 1, Some("acquisition"), "conversion", 10)];
        let (new, dropped) = diff(&before, after);
        assert_eq!(ids(&new), vec!["lead", "conv"]);
        assert_eq!(dropped.len(), 1);
        assert_eq!((dropped[0].0.id.as_str(), dropped[0].0.from_stage.as_deref()), ("conv", None), "the old version");
    }

    #[test]
    fn a_shift_in_position_alone_is_not_a_change_but_a_new_order_among_the_kept_is() {
        let before = vec![row("a", 0, None, "awareness", 1), row("b", 1, Some("awareness"), "conversion", 5)];
        // Something inserted before both, the first one's from stage unchanged (a manual start).
        let mut shifted = vec![row("x", 0, None, "awareness", 0)];
        shifted.extend(before.iter().cloned().map(|mut t| {
            t.seq += 1;
            t
        }));
        let (new, dropped) = diff(&before, shifted);
        assert_eq!(ids(&new), vec!["x"]);
        assert!(dropped.is_empty());
        // The same two kept, in the other order.
        let swapped = vec![row("b", 0, Some("awareness"), "conversion", 5), row("a", 1, None, "awareness", 1)];
        let (new, dropped) = diff(&before, swapped);
        assert_eq!(ids(&new), vec!["b", "a"]);
        assert_eq!(ids(dropped.iter().map(|(t, _)| t)), vec!["a", "b"]);
    }

    #[test]
    fn dropped_transitions_carry_when_the_stage_they_left_was_entered() {
        let before = vec![row("a", 0, None, "awareness", 1), row("b", 1, Some("awareness"), "conversion", 5)];
        let (new, dropped) = diff(&before, vec![before[0].clone()]);
        assert!(new.is_empty());
        assert_eq!(dropped, vec![(before[1].clone(), Some(1))]);
    }

    #[test]
    fn identical_transitions_have_ids_of_their_own_and_the_first_keeps_its_id() {
        let (contact, model) = (Uuid::new_v4(), Uuid::new_v4());
        let dormancy = Transition {
            from: Some(StageKey::parse("k", "retention").unwrap()),
            to: StageKey::parse("k", "dormant").unwrap(),
            at: 42,
            cause: Cause::Rule("dormancy"),
            cause_ref: String::new(),
            reactivation: false,
        };
        let ids = transition_ids(contact, model, &[dormancy.clone(), dormancy.clone(), dormancy.clone()]);
        assert_eq!(ids[0], transition_id(contact, model, &dormancy, 0), "the id it always had");
        assert_eq!(ids.iter().collect::<std::collections::HashSet<_>>().len(), 3);
        assert_eq!(ids, transition_ids(contact, model, &[dormancy.clone(), dormancy.clone(), dormancy]), "stable");
    }
}
