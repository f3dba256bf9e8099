//! One use case: a contact's journey changes. Every path that changes a journey goes through
//! [`advance`] — RecordJourneyEvent, ImportJourneyEvents and TransitionStage (`api/journeys.rs`),
//! the scheduler's sweep (`events/scheduler.rs`), consumed survey responses, reviews and
//! merges (`events/mod.rs`), and the automations' MoveToStage action ([`automations`]).
//!
//! ```text
//!  caller: UnitOfWork::begin ─ writes its input (a journey event) ┐
//!    advance(txn, …, Happened)                                   │ one transaction
//!      a move? write it (manual_moves)                           │
//!      store::rebuild_journey (rules → replay → transitions)     │
//!      Publisher::stage_changes (new + changed, retractions)     │
//!      automations owed? write a job (automation_jobs)           │
//!  caller: commit (wakes the relay) ─────────────────────────────┘
//!  automations::run_owed (after commit; the consumer's jobs: the runner)
//!      per job: ask contacts the remote conditions (no transaction open)
//!               UnitOfWork::begin ─ claim the job ─ run automations ─ commit
//!               (a MoveToStage is `advance` again: its automations are a job one deeper)
//! ```
//!
//! Decisions made here, once, for every path:
//!
//! - **Automations run on every path.** What fires them: the stage entered/exited by each new
//!   transition (a transition merely republished because a backdated event changed its
//!   content fires nothing again), plus the trigger of what happened: a recorded journey
//!   event's `journey_event` trigger (RecordJourneyEvent, a consumed review or survey
//!   response), a survey response's `survey_response` trigger, inactivity for the sweep. An
//!   import is history loaded in bulk: each touched journey is rebuilt once after the import
//!   and its new transitions fire their stage triggers, but the imported events' own
//!   `journey_event` triggers do not fire (10,000 past purchases must not send 10,000
//!   webhooks). A merge fires the survivor's new transitions.
//! - **No call to another service inside a write transaction.** Conditions on a contacts
//!   filter or a segment need the contacts service (its filter language covers fields
//!   lifecycle does not keep; `known_contacts` only answers tags and channel). So automations
//!   do not run inside the change's transaction: `advance` writes what it owes as a job
//!   (`automation_jobs`, in the same transaction, so a crash loses nothing), and the job runs
//!   after commit, asking contacts first (unreachable → the run is logged FAILED with the
//!   reason) and then running in a short write transaction of its own. Request handlers and
//!   the sweep run the jobs of the contact they changed before they answer; jobs a consumed
//!   event owed (the consumer's transaction covers its batch) are run by the background
//!   runner ([`automations::spawn_runner`]) within its poll interval.
//! - **Watchers** need nothing from here: `events/watch.rs` follows StageChanged on the bus.

pub mod actions;
pub mod automations;
pub mod campaigns;
pub mod conditions;
pub mod triggers;

/// Longest chain of automation- or campaign-caused moves from one original event.
pub const MAX_CHAIN: usize = 5;

use clm_platform::events::UnitOfWork;
use clm_platform::{Result, TenantId};
use sea_orm::ConnectionTrait;
use uuid::Uuid;

use crate::publish::Publisher;
use crate::store::entities::{automation_job, journey_event, manual_move, transition};
use crate::store::{self, ModelRecord, now_micros};
use automations::{Trigger, stage_triggers};

/// A survey response behind a recorded journey event.
#[derive(Debug, Clone, PartialEq)]
pub struct SurveyAnswer {
    pub kind: String,
    pub score: i32,
    pub response_id: String,
}

/// What happened to the contact.
#[derive(Debug, Clone, PartialEq)]
pub enum Happened {
    /// A journey event was recorded (its row is written): RecordJourneyEvent, a consumed review
    /// or survey response (`survey`). `custom_name` is a custom event's name.
    Recorded { event: journey_event::Model, custom_name: String, survey: Option<SurveyAnswer> },
    /// Journey events were imported (their rows are written): history, see the module header.
    Imported,
    /// A person moves the contact (TransitionStage, validated by the caller); `advance` writes it.
    Moved { row: manual_move::Model },
    /// An automation running at chain `depth` moves the contact; `advance` writes it.
    Automated { row: manual_move::Model, depth: usize },
    /// Other contacts were merged into this one (their events and moves are its own now).
    Merged,
    /// Time passed: the sweep's clock (dormancy, tenure, inactivity).
    Clock,
}

/// What a change did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Advanced {
    /// Transitions published as new: added, or kept but changed (republished), history order.
    pub new: Vec<transition::Model>,
    /// The contact's whole history in the model now.
    pub all: Vec<transition::Model>,
    /// Whether automations are owed: run them after commit (`automations::run_owed`).
    pub owed: bool,
}

/// Advance `contact`'s journey in `model` as of `now`, inside the caller's write transaction
/// `txn`: write the move if one happened, rebuild the history, publish its changes, and owe the
/// automations they fire. The caller commits, then runs what is owed.
pub async fn advance(
    txn: &UnitOfWork,
    publisher: &Publisher,
    tenant: &TenantId,
    contact: Uuid,
    model: &ModelRecord,
    now: i64,
    happened: Happened,
) -> Result<Advanced> {
    if let Happened::Moved { row } | Happened::Automated { row, .. } = &happened {
        store::insert_move(txn, row.clone()).await?;
    }
    let (rules, _) = store::rules(txn, tenant).await?;
    let (journey, new, dropped) = store::rebuild_journey(txn, tenant, contact, model, &rules.to_domain(), now).await?;
    let all = store::transitions_of(txn, tenant, contact, model.id).await?;
    publisher.stage_changes(txn, tenant, model, &all, &new, &dropped).await?;
    // A transition republished with new content is not entered again.
    let entered: Vec<transition::Model> =
        new.iter().filter(|t| !dropped.iter().any(|(d, _)| d.id == t.id)).cloned().collect();
    let mut triggers = stage_triggers(&entered);
    let depth = match &happened {
        Happened::Recorded { event, custom_name, survey } => {
            triggers.push(Trigger::JourneyEvent {
                kind: event.kind.clone(),
                custom_name: custom_name.clone(),
                event_id: event.id.clone(),
            });
            if let Some(s) = survey {
                triggers.push(Trigger::SurveyResponse {
                    kind: s.kind.clone(),
                    score: s.score,
                    response_id: s.response_id.clone(),
                });
            }
            0
        }
        Happened::Clock => {
            if let Some(last) = journey.last_activity {
                triggers.push(Trigger::Inactive { idle_micros: now - last, since: last });
            }
            0
        }
        Happened::Automated { depth, .. } => depth + 1,
        Happened::Imported | Happened::Moved { .. } | Happened::Merged => 0,
    };
    let owed = owe(txn, tenant, contact, model, depth, triggers).await?;
    Ok(Advanced { new, all, owed })
}

/// Write a job for the triggers that fire an enabled automation (none: nothing owed).
async fn owe(
    txn: &impl ConnectionTrait,
    tenant: &TenantId,
    contact: Uuid,
    model: &ModelRecord,
    depth: usize,
    triggers: Vec<Trigger>,
) -> Result<bool> {
    if triggers.is_empty() {
        return Ok(false);
    }
    let autos = store::automations::enabled(txn, tenant, model.id).await?;
    // Campaigns care about every trigger of a contact they hold (exit rules, waits), and about
    // the triggers that enrol into them.
    let fired: Vec<Trigger> = if campaigns::concerned(txn, tenant, model.id, contact, &triggers).await? {
        triggers
    } else {
        triggers.into_iter().filter(|t| autos.iter().any(|a| t.fires(a))).collect()
    };
    if fired.is_empty() {
        return Ok(false);
    }
    let job = automation_job::Model {
        id: Uuid::now_v7().to_string(),
        tenant_id: tenant.as_str().to_owned(),
        contact_id: contact.to_string(),
        model_id: model.id.to_string(),
        depth: i64::try_from(depth).unwrap_or(i64::MAX),
        triggers: serde_json::to_string(&fired).expect("triggers serialize"),
        create_time: now_micros(),
    };
    store::automations::enqueue(txn, job).await?;
    Ok(true)
}
