//! The automation engine: runs a tenant's automations when their trigger fires.
//!
//! Triggers: a stage entered or exited, a journey event of a kind, a survey response in a
//! score band, inactivity (from the scheduler). Conditions: the contact is in a stage, has a
//! tag, came from a channel (answered from `known_contacts`, fed by contact events), matches a
//! contacts filter, is in a segment (the last two asked of contacts over gRPC, *before* the
//! transaction: [`ask`]). Actions: move to a stage (through [`advance`]), add/remove a tag (asked
//! of contacts by event), request a survey (asked of feedback by event), publish a
//! webhook-style event. A move can fire further automations, one job deeper; chains stop at
//! [`MAX_CHAIN`] (the run is logged LOOP_LIMITED).
//!
//! A job (`automation_jobs`) is what [`advance`] owes: the triggers one journey change fired.
//! [`run_owed`] runs a contact's jobs after the change committed, each in three steps: read the
//! job and the automations it fires, ask contacts the remote conditions (no transaction open),
//! then in one write transaction claim the job, run the automations and commit.

use std::time::Duration;

use clm_platform::events::UnitOfWork;
use clm_platform::{Error, TenantId};
use clm_proto::lifecycle::v1 as pb;
use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use tokio::sync::watch;
use uuid::Uuid;

use crate::contacts_client::Automator;
use crate::domain::contact::ContactState;
use crate::publish::Publisher;
use crate::store::entities::{automation, automation_job, automation_run};
use crate::store::{self, ModelRecord};

pub use super::MAX_CHAIN;
/// Most automations per tenant.
pub const MAX_AUTOMATIONS: u64 = 200;
pub use super::conditions::{REMOTE_TIMEOUT, Remote, RemoteFacts, ask};
pub use super::triggers::{Trigger, stage_triggers};

// ---- conditions the contacts service answers, asked before the transaction ----

/// The remote conditions of the automations `triggers` fire.
fn needed(autos: &[automation::Model], triggers: &[Trigger]) -> Vec<Remote> {
    let mut out = Vec::new();
    for a in autos.iter().filter(|a| triggers.iter().any(|t| t.fires(a))) {
        let Ok(body) = pb::Automation::decode(a.body.as_slice()) else { continue };
        super::conditions::needed_of(&body.conditions, &mut out);
    }
    out
}

// ---- running jobs ----

/// Run the jobs owed to `contact` (and the ones their moves owe in turn), oldest first, each
/// after asking its remote conditions and in a write transaction of its own. Call it after the
/// change that owed them committed, holding no transaction. Returns how many transitions the
/// automations' moves made. An error is logged and the job stays for the background runner.
pub async fn run_owed(db: &DatabaseConnection, automator: &Automator, tenant: &TenantId, contact: Uuid) -> usize {
    let mut moved = 0;
    loop {
        let jobs = match store::automations::jobs_of(db, tenant, contact).await {
            Ok(jobs) if !jobs.is_empty() => jobs,
            Ok(_) => return moved,
            Err(e) => {
                tracing::warn!(error = %e, %contact, "automation jobs unreadable; left for the runner");
                return moved;
            }
        };
        for job in jobs {
            match run_job(db, automator, tenant, contact, &job).await {
                Ok(n) => moved += n,
                Err(e) => {
                    tracing::warn!(error = %e, job = %job.id, %contact, "automation job failed; left for the runner");
                    return moved;
                }
            }
        }
    }
}

async fn run_job(
    db: &DatabaseConnection,
    automator: &Automator,
    tenant: &TenantId,
    contact: Uuid,
    job: &automation_job::Model,
) -> Result<usize, Error> {
    let triggers: Vec<Trigger> = serde_json::from_str(&job.triggers).unwrap_or_default();
    let depth = usize::try_from(job.depth).unwrap_or(MAX_CHAIN);
    let model_id = Uuid::parse_str(&job.model_id).unwrap_or_default();
    // Step 1, no transaction: what the job fires, and the contacts service's answers for it.
    let autos = store::automations::enabled(db, tenant, model_id).await?;
    // Campaigns the triggers may enrol the contact into (their entry conditions are asked too).
    let campaigns = store::campaigns::active(db, tenant, model_id).await?;
    let facts = if depth < MAX_CHAIN {
        let mut remote = needed(&autos, &triggers);
        super::campaigns::needed(&campaigns, &triggers, &mut remote);
        ask(&automator.contacts, tenant, contact, remote).await
    } else {
        RemoteFacts::new()
    };
    // Step 2: one transaction, which takes the job (another runner may have).
    let txn = UnitOfWork::begin(db).await?;
    if !store::automations::claim(&txn, tenant, &job.id).await? {
        return Ok(0);
    }
    // Erased or merged away since the job was owed: nothing runs for it (a move would bring
    // a journey back).
    if store::contact_state(&txn, tenant, contact).await?.is_some_and(ContactState::is_gone) {
        txn.commit().await?;
        return Ok(0);
    }
    let moved = match store::get_model(&txn, tenant, &job.model_id).await {
        Ok(model) => {
            let run = Run { publisher: &automator.publisher, tenant, model: &model, contact, depth, facts: &facts };
            let moved = run.execute(&txn, &triggers).await?;
            // The same triggers move the contact's campaign enrolments on (exit rules, waits
            // for an event) and enrol it into campaigns; their steps run in the campaign runner.
            super::campaigns::on_triggers(
                &txn,
                &automator.publisher,
                tenant,
                &model,
                contact,
                depth,
                &triggers,
                &facts,
            )
            .await?;
            moved
        }
        // The model was deleted since: nothing to run in it.
        Err(Error::NotFound { .. }) => 0,
        Err(e) => return Err(e),
    };
    txn.commit().await?;
    // Enrolments this job made or moved on are due now.
    super::campaigns::wake();
    Ok(moved)
}

/// Run what is owed to any contact (jobs a consumed event owed, or left by a crash or an
/// error) every `interval` until `stop`. Jobs of one contact run in order; a job two runners
/// find runs once (`claim`).
pub fn spawn_runner(
    db: DatabaseConnection,
    automator: Automator,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {},
                _ = stop.changed() => return,
            }
            let jobs = match store::automations::oldest_jobs(&db, 100).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::warn!(error = %e, "automation jobs unreadable");
                    continue;
                }
            };
            let mut contacts: Vec<(String, String)> = Vec::new();
            for j in jobs {
                let key = (j.tenant_id, j.contact_id);
                if !contacts.contains(&key) {
                    contacts.push(key);
                }
            }
            for (tenant, contact) in contacts {
                if let (Ok(tenant), Ok(contact)) = (TenantId::parse(&tenant), Uuid::parse_str(&contact)) {
                    run_owed(&db, &automator, &tenant, contact).await;
                }
            }
        }
    })
}

// ---- one job, inside its transaction ----

fn run_row(
    tenant: &TenantId,
    a: &automation::Model,
    contact: Uuid,
    trigger_ref: &str,
    outcome: pb::RunOutcome,
    message: &str,
) -> automation_run::ActiveModel {
    let outcome = outcome.as_str_name().trim_start_matches("RUN_OUTCOME_").to_lowercase();
    store::automations::run_row(tenant, &a.id, contact, trigger_ref, &outcome, message)
}

/// One job's run: everything it needs is here, and no contacts client (its answers are in
/// `facts`), so nothing inside the transaction can call another service.
struct Run<'a> {
    publisher: &'a Publisher,
    tenant: &'a TenantId,
    model: &'a ModelRecord,
    contact: Uuid,
    depth: usize,
    facts: &'a RemoteFacts,
}

impl Run<'_> {
    /// Run the automations `triggers` fire, inside `txn`. A move goes through [`advance`], which
    /// owes the automations it fires as a job one deeper. Returns how many transitions moves made.
    async fn execute(&self, txn: &UnitOfWork, triggers: &[Trigger]) -> Result<usize, Error> {
        let (tenant, contact) = (self.tenant, self.contact);
        let autos = store::automations::enabled(txn, tenant, self.model.id).await?;
        let mut moved = 0;
        for trig in triggers {
            for a in &autos {
                let Ok(body) = pb::Automation::decode(a.body.as_slice()) else { continue };
                if !body.trigger.as_ref().is_some_and(|t| trig.matches(t)) {
                    continue;
                }
                // An inactivity automation fires once per idle period.
                if let Trigger::Inactive { since, .. } = trig
                    && store::automations::ran_since(txn, tenant, &a.id, contact, *since).await?
                {
                    continue;
                }
                let log = |outcome, message: &str| run_row(tenant, a, contact, &trig.reference(), outcome, message);
                if self.depth >= MAX_CHAIN {
                    let row = log(pb::RunOutcome::LoopLimited, "chain of automation moves too long; stopped");
                    store::automations::log_run(txn, row).await?;
                    continue;
                }
                let current = store::get_journey(txn, tenant, contact, self.model.id)
                    .await?
                    .and_then(|j| j.current_stage)
                    .unwrap_or_default();
                match self.conditions(txn, &body, &current).await? {
                    Ok(true) => {}
                    Ok(false) => {
                        store::automations::log_run(txn, log(pb::RunOutcome::Skipped, "conditions did not hold"))
                            .await?;
                        continue;
                    }
                    Err(why) => {
                        let row = log(pb::RunOutcome::Failed, &format!("condition not evaluated: {why}"));
                        store::automations::log_run(txn, row).await?;
                        continue;
                    }
                }
                let (outcome, message, n) = self.actions(txn, a, &body, &current).await?;
                moved += n;
                store::automations::log_run(txn, log(outcome, &message)).await?;
            }
        }
        Ok(moved)
    }

    /// Whether the automation's conditions hold (`Err`: one could not be evaluated).
    async fn conditions(
        &self,
        txn: &impl ConnectionTrait,
        body: &pb::Automation,
        current: &str,
    ) -> Result<Result<bool, String>, Error> {
        super::conditions::evaluate(txn, self.tenant, self.contact, &body.conditions, current, self.facts).await
    }

    /// Carry out the actions (`journeys::actions`, shared with campaigns); the run's outcome,
    /// its message and how many transitions moves made.
    async fn actions(
        &self,
        txn: &UnitOfWork,
        a: &automation::Model,
        body: &pb::Automation,
        _current: &str,
    ) -> Result<(pb::RunOutcome, String, usize), Error> {
        use super::actions::{Act, Actor, perform};
        let actor = Actor::Automation { id: &a.id, name: &a.display_name };
        let mut notes = Vec::new();
        let mut moved = 0;
        for action in &body.actions {
            let act = match &action.kind {
                Some(pb::action::Kind::MoveToStage(s)) => Act::MoveToStage(s),
                Some(pb::action::Kind::AddTag(t)) => Act::AddTag(t),
                Some(pb::action::Kind::RemoveTag(t)) => Act::RemoveTag(t),
                Some(pb::action::Kind::RequestSurvey(s)) => Act::RequestSurvey(s),
                Some(pb::action::Kind::PublishWebhook(w)) => Act::Publish { topic: &w.topic, payload: &w.payload },
                Some(pb::action::Kind::SendMessage(t)) => Act::SendMessage(t),
                None => continue,
            };
            match perform(txn, self.publisher, self.tenant, self.model, self.contact, self.depth, actor, act).await? {
                Ok(done) => {
                    moved += done.moved;
                    notes.push(done.note);
                }
                Err(why) => return Ok((pb::RunOutcome::Failed, why, moved)),
            }
        }
        Ok((pb::RunOutcome::Succeeded, notes.join("; "), moved))
    }
}
