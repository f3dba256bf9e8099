//! The campaign engine: contacts enrolled by a trigger walk a campaign's steps.
//!
//! - **Enrolment** happens where automations run — in an automation job, after the journey
//!   change that fired the trigger committed ([`on_triggers`], called by
//!   `automations::run_job` in the job's transaction): the campaign's entry conditions hold
//!   (remote ones asked before the transaction, with the automations'), the contact has no
//!   active enrolment in it, and was never enrolled unless re-entry is allowed.
//! - The same triggers move **active enrolments** on: an exit rule that matches ends the
//!   enrolment (converted or not); a wait for a journey event that happened ends the wait.
//! - The **runner** ([`spawn_runner`], every replica) takes enrolments whose timer is due — a
//!   new enrolment and one just moved on are due at once — by leasing them, and walks their
//!   steps, one step per transaction, until a wait sets a timer or the campaign ends. The
//!   contacts service is asked (a branch on a filter or a segment) before each transaction.
//!   Timers are rows: they survive restarts, and one replica fires each (`store::campaigns`).
//! - **Actions** are the automations' own: a move goes through [`advance`] (its automations
//!   and campaigns owed one job deeper: chains stop at `MAX_CHAIN`), tags and survey requests
//!   are published like an automation's, messages are queued with `messaging::enqueue`.

use std::sync::Arc;
use std::time::Duration;

use clm_platform::events::UnitOfWork;
use clm_platform::{Error, TenantId};
use clm_proto::lifecycle::v1 as pb;
use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use super::MAX_CHAIN;
use super::conditions::{RemoteFacts, ask, evaluate, needed_of};
use super::triggers::Trigger;
use crate::contacts_client::Automator;
use crate::convert::SURVEY_RESPONSE;
use crate::domain::contact::ContactState;
use crate::messaging;
use crate::publish::Publisher;
use crate::store::entities::{campaign, enrolment};
use crate::store::{self, ModelRecord, now_micros};

/// Most steps one runner turn walks for one enrolment (validation forbids a loop without a
/// wait; this bounds a campaign edited while enrolments walk it).
const MAX_STEPS_PER_TURN: usize = 50;

pub fn body(c: &campaign::Model) -> pb::Campaign {
    pb::Campaign::decode(c.body.as_slice()).unwrap_or_default()
}

/// Whether `t` enrols into campaign `c`.
pub fn fires(t: &Trigger, c: &pb::Campaign) -> bool {
    c.trigger.as_ref().is_some_and(|tr| t.matches(tr))
}

/// The remote entry conditions of the campaigns `triggers` may enrol into.
pub fn needed(campaigns: &[campaign::Model], triggers: &[Trigger], out: &mut Vec<super::conditions::Remote>) {
    for c in campaigns {
        let b = body(c);
        if triggers.iter().any(|t| fires(t, &b)) {
            needed_of(&b.entry_conditions, out);
        }
    }
}

/// Whether the triggers matter to campaigns at all (an active campaign they enrol into, or an
/// active enrolment of the contact they may move on): `advance` then owes a job.
pub async fn concerned(
    txn: &impl ConnectionTrait,
    tenant: &TenantId,
    model: Uuid,
    contact: Uuid,
    triggers: &[Trigger],
) -> Result<bool, Error> {
    if !store::campaigns::active_of(txn, tenant, &contact.to_string()).await?.is_empty() {
        return Ok(true);
    }
    let campaigns = store::campaigns::active(txn, tenant, model).await?;
    Ok(campaigns.iter().any(|c| {
        let b = body(c);
        triggers.iter().any(|t| fires(t, &b))
    }))
}

fn event_matches(t: &Trigger, wanted: &str) -> bool {
    match t {
        Trigger::JourneyEvent { kind, custom_name, .. } => {
            kind == wanted || (kind == "custom" && custom_name == wanted)
        }
        Trigger::SurveyResponse { .. } => wanted == SURVEY_RESPONSE,
        _ => false,
    }
}

fn exit_matches(rule: &pb::ExitRule, t: &Trigger) -> bool {
    match (&rule.kind, t) {
        (Some(pb::exit_rule::Kind::EnteredStage(s)), Trigger::Entered { stage, .. })
        | (Some(pb::exit_rule::Kind::LeftStage(s)), Trigger::Exited { stage, .. }) => s == stage,
        (Some(pb::exit_rule::Kind::JourneyEvent(k)), t) => event_matches(t, k),
        _ => false,
    }
}

/// Wakes this process's campaign runners (after a commit that enrolled or moved one on).
pub fn wake() {
    wake_handle().notify_waiters();
}

fn wake_handle() -> Arc<Notify> {
    static WAKE: std::sync::OnceLock<Arc<Notify>> = std::sync::OnceLock::new();
    WAKE.get_or_init(|| Arc::new(Notify::new())).clone()
}

/// Move `e` to `next` (or to the end), logging the step it leaves as completed.
async fn go(
    txn: &impl ConnectionTrait,
    tenant: &TenantId,
    e: &mut enrolment::Model,
    next: &str,
    now: i64,
) -> Result<(), Error> {
    store::campaigns::log(txn, tenant, e, &e.step_key.clone(), "completed", false, "", now).await?;
    e.waiting = false;
    e.waiting_event.clear();
    if next.is_empty() {
        e.state = "completed".into();
        e.finish_time = Some(now);
        e.wake_time = 0;
    } else {
        next.clone_into(&mut e.step_key);
        e.wake_time = now;
        store::campaigns::log(txn, tenant, e, next, "entered", false, "", now).await?;
    }
    Ok(())
}

/// End `e` early at its step.
async fn exit(
    txn: &impl ConnectionTrait,
    tenant: &TenantId,
    e: &mut enrolment::Model,
    converted: bool,
    reason: &str,
    now: i64,
) -> Result<(), Error> {
    store::campaigns::log(txn, tenant, e, &e.step_key.clone(), "exited", converted, reason, now).await?;
    e.state = "exited".into();
    e.converted = converted;
    reason.clone_into(&mut e.exit_reason);
    e.waiting = false;
    e.wake_time = 0;
    e.finish_time = Some(now);
    Ok(())
}

/// What `triggers` do to campaigns for `contact`, inside the automation job's transaction:
/// move its active enrolments on (exit rules, waits for an event), then enrol it.
#[allow(clippy::too_many_arguments)]
pub async fn on_triggers(
    txn: &UnitOfWork,
    publisher: &Publisher,
    tenant: &TenantId,
    model: &ModelRecord,
    contact: Uuid,
    depth: usize,
    triggers: &[Trigger],
    facts: &RemoteFacts,
) -> Result<(), Error> {
    let now = now_micros();
    for mut e in store::campaigns::active_of(txn, tenant, &contact.to_string()).await? {
        let Ok(id) = Uuid::parse_str(&e.campaign_id) else { continue };
        let (name, c) = match store::campaigns::find(txn, tenant, id).await {
            Ok(c) if c.model_id == model.id.to_string() => (c.display_name.clone(), body(&c)),
            Ok(_) | Err(Error::NotFound { .. }) => continue,
            Err(err) => return Err(err),
        };
        let version = e.version;
        if let Some(rule) = c.exit_rules.iter().find(|r| triggers.iter().any(|t| exit_matches(r, t))) {
            let reason = match &rule.kind {
                Some(pb::exit_rule::Kind::EnteredStage(s)) => format!("entered {s}"),
                Some(pb::exit_rule::Kind::LeftStage(s)) => format!("left {s}"),
                Some(pb::exit_rule::Kind::JourneyEvent(k)) => format!("journey event {k}"),
                None => "exit rule".into(),
            };
            exit(txn, tenant, &mut e, rule.converted, &reason, now).await?;
        } else if e.waiting
            && !e.waiting_event.is_empty()
            && triggers.iter().any(|t| event_matches(t, &e.waiting_event))
        {
            let next = c.steps.iter().find(|s| s.key == e.step_key).map(|s| s.next.clone()).unwrap_or_default();
            go(txn, tenant, &mut e, &next, now).await?;
        } else {
            continue;
        }
        e.lease_until = 0;
        if store::campaigns::save(txn, tenant, &e, version).await? && e.state != "active" {
            publisher.enrolment(txn, tenant, &name, &e).await?;
        }
    }
    if depth >= MAX_CHAIN {
        return Ok(());
    }
    let current =
        store::get_journey(txn, tenant, contact, model.id).await?.and_then(|j| j.current_stage).unwrap_or_default();
    // A stage trigger enrols only a contact still in (or still out of) that stage: a history
    // replayed at once (an import, a backdated event) enrols by where the contact is now, not
    // by every stage it passed through on the way.
    let still = |t: &&Trigger| match t {
        Trigger::Entered { stage, .. } => *stage == current,
        Trigger::Exited { stage, .. } => *stage != current,
        _ => true,
    };
    for row in store::campaigns::active(txn, tenant, model.id).await? {
        let c = body(&row);
        if !triggers.iter().filter(still).any(|t| fires(t, &c)) || c.steps.is_empty() {
            continue;
        }
        if evaluate(txn, tenant, contact, &c.entry_conditions, &current, facts).await? != Ok(true) {
            continue;
        }
        let (before, active) = store::campaigns::enrolled(txn, tenant, &row.id, &contact.to_string()).await?;
        if active || (before && !c.allow_reentry) {
            continue;
        }
        let e = enrolment::Model {
            id: Uuid::now_v7().to_string(),
            tenant_id: tenant.as_str().to_owned(),
            campaign_id: row.id.clone(),
            contact_id: contact.to_string(),
            state: "active".into(),
            step_key: c.steps[0].key.clone(),
            waiting: false,
            wake_time: now,
            waiting_event: String::new(),
            converted: false,
            exit_reason: String::new(),
            depth: i64::try_from(depth).unwrap_or(i64::MAX),
            lease_until: 0,
            version: 1,
            enrol_time: now,
            finish_time: None,
        };
        store::campaigns::enrol(txn, e.clone()).await?;
        store::campaigns::log(txn, tenant, &e, &e.step_key, "entered", false, "", now).await?;
        publisher.enrolment(txn, tenant, &row.display_name, &e).await?;
    }
    Ok(())
}

// ---- the runner ----

/// Walk due enrolments every `poll` (sooner when woken) until `stop`.
pub fn spawn_runner(
    db: DatabaseConnection,
    automator: Automator,
    poll: Duration,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let notify = wake_handle();
    tokio::spawn(async move {
        loop {
            let wait = match turn(&db, &automator, poll).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "campaign enrolments unreadable");
                    poll
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {},
                () = notify.notified() => {},
                _ = stop.changed() => return,
            }
        }
    })
}

async fn turn(db: &DatabaseConnection, automator: &Automator, poll: Duration) -> Result<Duration, Error> {
    let now = now_micros();
    let due = store::campaigns::due(db, now, 100).await?;
    let full = due.len() == 100;
    for e in due {
        if let Err(err) = take(db, automator, e.clone(), poll).await {
            tracing::warn!(error = %err, enrolment = %e.id, "campaign step not run; it stays due");
        }
    }
    if full {
        return Ok(Duration::ZERO);
    }
    Ok(store::campaigns::next_due(db)
        .await?
        .map_or(poll, |t| Duration::from_micros(u64::try_from(t - now_micros()).unwrap_or(0)).min(poll)))
}

/// Lease `e` and walk its steps until a wait, the end, or another runner's change.
async fn take(
    db: &DatabaseConnection,
    automator: &Automator,
    e: enrolment::Model,
    poll: Duration,
) -> Result<(), Error> {
    let Ok(tenant) = TenantId::parse(&e.tenant_id) else { return Ok(()) };
    let now = now_micros();
    // Held as long as the steps of one turn may take (each step asks contacts at most once).
    let until = now + 60_000_000;
    if !store::campaigns::lease(db, &tenant, &e.id, e.version, now, until).await? {
        return Ok(());
    }
    let mut current = e;
    for _ in 0..MAX_STEPS_PER_TURN {
        match step(db, automator, &tenant, &current, poll).await? {
            Some(next) if next.state == "active" && next.wake_time <= now_micros() && !next.waiting => current = next,
            _ => return Ok(()),
        }
    }
    Ok(())
}

/// Run the enrolment's current step in a transaction of its own; the enrolment after it, or
/// `None` when nothing more is to be done now (a paused campaign, another runner's change).
async fn step(
    db: &DatabaseConnection,
    automator: &Automator,
    tenant: &TenantId,
    e: &enrolment::Model,
    poll: Duration,
) -> Result<Option<enrolment::Model>, Error> {
    let Ok(campaign_id) = Uuid::parse_str(&e.campaign_id) else { return Ok(None) };
    let Ok(contact) = Uuid::parse_str(&e.contact_id) else { return Ok(None) };
    let row = match store::campaigns::find(db, tenant, campaign_id).await {
        Ok(c) => c,
        Err(Error::NotFound { .. }) => return Ok(None),
        Err(err) => return Err(err),
    };
    if row.status != "active" {
        // Paused: the enrolment stays where it is; looked at again later.
        let later = now_micros() + i64::try_from((poll * 10).as_micros()).unwrap_or(i64::MAX / 2);
        store::campaigns::snooze(db, tenant, &e.id, later).await?;
        return Ok(None);
    }
    let c = body(&row);
    let step = c.steps.iter().find(|s| s.key == e.step_key).cloned();
    // Before the transaction: the contacts service's answer for a branch that needs it.
    let facts = match step.as_ref().and_then(|s| s.kind.as_ref()) {
        Some(pb::campaign_step::Kind::Branch(b)) => match b.condition.as_ref().and_then(|c| c.kind.as_ref()) {
            Some(pb::campaign_condition::Kind::Contact(cond)) => {
                let mut remote = Vec::new();
                needed_of(std::iter::once(cond), &mut remote);
                ask(&automator.contacts, tenant, contact, remote).await
            }
            _ => RemoteFacts::new(),
        },
        _ => RemoteFacts::new(),
    };
    let txn = UnitOfWork::begin(db).await?;
    let Some(mut now_e) = store::campaigns::find_enrolment(&txn, tenant, &e.id).await? else { return Ok(None) };
    if now_e.version != e.version || now_e.state != "active" {
        return Ok(None);
    }
    let version = now_e.version;
    let now = now_micros();
    let mut moved = false;
    if store::contact_state(&txn, tenant, contact).await?.is_some_and(ContactState::is_gone) {
        exit(&txn, tenant, &mut now_e, false, "the contact is gone", now).await?;
    } else if let Some(step) = step {
        let model = store::get_model(&txn, tenant, &row.model_id).await?;
        moved = run_step(&txn, &automator.publisher, tenant, &model, &row, &mut now_e, &step, &facts, now).await?;
    } else {
        exit(&txn, tenant, &mut now_e, false, "step removed from the campaign", now).await?;
    }
    now_e.lease_until = if now_e.state == "active" && !now_e.waiting { now_e.lease_until } else { 0 };
    if !store::campaigns::save(&txn, tenant, &now_e, version).await? {
        return Ok(None);
    }
    if now_e.state != "active" {
        automator.publisher.enrolment(&txn, tenant, &row.display_name, &now_e).await?;
    }
    txn.commit().await?;
    messaging::wake();
    if moved {
        // The move owed its automations and campaigns a job; the automation runner runs it.
        tracing::debug!(%contact, "campaign move made; its automations are owed");
    }
    now_e.version = version + 1;
    Ok(Some(now_e))
}

/// Do `step` for `e` (in `txn`); whether it moved the contact's stage.
#[allow(clippy::too_many_arguments)]
async fn run_step(
    txn: &UnitOfWork,
    publisher: &Publisher,
    tenant: &TenantId,
    model: &ModelRecord,
    row: &campaign::Model,
    e: &mut enrolment::Model,
    step: &pb::CampaignStep,
    facts: &RemoteFacts,
    now: i64,
) -> Result<bool, Error> {
    use super::actions::{Act, Actor, perform};
    use pb::campaign_step::Kind;
    let contact = Uuid::parse_str(&e.contact_id).map_err(Error::internal)?;
    let act = match &step.kind {
        Some(Kind::Wait(w)) => {
            let duration = w.duration.as_ref().and_then(clm_platform::convert::duration_micros).unwrap_or(0);
            if e.waiting {
                // The timer fired: the time passed (or, waiting for an event, the timeout).
                let next = if w.until_event.is_empty() { step.next.clone() } else { w.timeout_next.clone() };
                go(txn, tenant, e, &next, now).await?;
            } else {
                e.waiting = true;
                e.wake_time = now + duration;
                e.waiting_event.clone_from(&w.until_event);
            }
            return Ok(false);
        }
        Some(Kind::Branch(b)) => {
            let holds = branch_holds(txn, tenant, model, e, contact, b, facts).await?;
            let next = if holds { &b.then_next } else { &b.else_next };
            go(txn, tenant, e, next, now).await?;
            return Ok(false);
        }
        Some(Kind::Exit(x)) => {
            exit(txn, tenant, e, x.converted, "exit step", now).await?;
            return Ok(false);
        }
        None => {
            go(txn, tenant, e, &step.next, now).await?;
            return Ok(false);
        }
        Some(Kind::SendMessage(t)) => Act::SendMessage(t),
        Some(Kind::MoveToStage(s)) => Act::MoveToStage(s),
        Some(Kind::AddTag(t)) => Act::AddTag(t),
        Some(Kind::RemoveTag(t)) => Act::RemoveTag(t),
        Some(Kind::RequestSurvey(s)) => Act::RequestSurvey(s),
    };
    let depth = usize::try_from(e.depth).unwrap_or(MAX_CHAIN);
    let actor = Actor::Campaign { id: &row.id, name: &row.display_name };
    match perform(txn, publisher, tenant, model, contact, depth, actor, act).await? {
        Ok(done) => {
            if let Some(delivery) = &done.delivery {
                // The delivery id, for `message_sent` branches.
                store::campaigns::log(txn, tenant, e, &step.key, "sent", false, delivery, now).await?;
            }
            go(txn, tenant, e, &step.next, now).await?;
            Ok(done.moved > 0)
        }
        Err(why) => {
            exit(txn, tenant, e, false, &why, now).await?;
            Ok(false)
        }
    }
}

async fn branch_holds(
    txn: &UnitOfWork,
    tenant: &TenantId,
    model: &ModelRecord,
    e: &enrolment::Model,
    contact: Uuid,
    b: &pb::BranchStep,
    facts: &RemoteFacts,
) -> Result<bool, Error> {
    use pb::campaign_condition::Kind;
    Ok(match b.condition.as_ref().and_then(|c| c.kind.as_ref()) {
        Some(Kind::Contact(cond)) => {
            let current = store::get_journey(txn, tenant, contact, model.id)
                .await?
                .and_then(|j| j.current_stage)
                .unwrap_or_default();
            // A condition that could not be evaluated (contacts unreachable) counts as false.
            evaluate(txn, tenant, contact, std::slice::from_ref(cond), &current, facts).await? == Ok(true)
        }
        Some(Kind::SurveyScore(band)) => {
            let events = store::events_of(txn, tenant, contact, model.id).await?;
            let last = events.iter().rev().find_map(|ev| {
                let body = pb::JourneyEvent::decode(ev.body.as_slice()).ok()?;
                let Some(pb::journey_event::Detail::Custom(c)) = body.detail else { return None };
                if c.name != SURVEY_RESPONSE {
                    return None;
                }
                let kind = c.properties.get("kind").cloned().unwrap_or_default();
                if !band.survey_kind.is_empty() && kind != band.survey_kind {
                    return None;
                }
                c.properties.get("score")?.parse::<i32>().ok()
            });
            last.is_some_and(|s| (band.min_score..=band.max_score).contains(&s))
        }
        Some(Kind::MessageSent(key)) => match store::campaigns::logged(txn, tenant, &e.id, key, "sent").await? {
            Some(delivery) => match Uuid::parse_str(&delivery) {
                Ok(id) => store::messaging::find_delivery(txn, tenant, id).await.is_ok_and(|d| d.state == "sent"),
                Err(_) => false,
            },
            None => false,
        },
        None => false,
    })
}
