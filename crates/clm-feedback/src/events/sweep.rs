//! Feedback by the clock: reminders of unanswered invitations and recurring surveys' next
//! rounds. Every replica sweeps; each reminder and each round is *claimed* by a conditional
//! update of the invitation in the same transaction as the event it publishes, so whatever the
//! number of replicas (or a sweep that dies half-way) each is sent exactly once.
//!
//! - A reminder belongs to its invitation: SurveyRequested again with the same invitation and
//!   token and `reminder` = n. It is not an invitation: not throttled, no new token. It goes
//!   only while the invitation is pending, unanswered (not even partly), unexpired, and its
//!   survey active with reminders on; at most `max_reminders`, each `reminder_after` after the
//!   last.
//! - A recurring survey invites a contact again `recurrence` after their latest invitation to
//!   it, through `invite` like every invitation (the throttle window applies: a throttled
//!   contact is tried again when it allows). An unanswered invitation of the round before is
//!   superseded (cancelled). The new invitation's id is derived from the one before, so two
//!   sweeps cannot both make it.

use std::time::Duration;

use clm_platform::events::UnitOfWork;
use clm_platform::{Result, TenantId};
use sea_orm::DatabaseConnection;
use tokio::sync::watch;
use uuid::Uuid;

use super::{Publisher, Skip, Source, invite};
use crate::domain::survey::SurveyStatus;
use crate::domain::token;
use crate::domain::values::Reminders;
use crate::store::entities::invitation;
use crate::store::{self, now_micros};

/// Invitations looked at per round and kind.
const BATCH: u64 = 200;

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub reminders: usize,
    pub invitations: usize,
}

/// One round at `now`.
pub async fn tick(db: &DatabaseConnection, publisher: &Publisher, now: i64) -> Result<Swept> {
    let mut out = Swept::default();
    for inv in store::due_reminders(db, now, BATCH).await? {
        let Ok(tenant) = TenantId::parse(&inv.tenant_id) else { continue };
        let txn = UnitOfWork::begin(db).await?;
        match remind(&txn, publisher, &tenant, &inv, now).await {
            Ok(sent) => {
                txn.commit().await?;
                out.reminders += usize::from(sent);
            }
            // Rolled back (the transaction is dropped): due again at the next round.
            Err(e) => tracing::warn!(error = %e, invitation = %inv.id, "reminder not sent"),
        }
    }
    for inv in store::due_recurrences(db, now, BATCH).await? {
        let Ok(tenant) = TenantId::parse(&inv.tenant_id) else { continue };
        let txn = UnitOfWork::begin(db).await?;
        match recur(&txn, publisher, &tenant, &inv, now).await {
            Ok(invited) => {
                txn.commit().await?;
                out.invitations += usize::from(invited);
            }
            Err(e) => tracing::warn!(error = %e, invitation = %inv.id, "recurring survey not sent"),
        }
    }
    Ok(out)
}

/// Send `inv`'s next reminder if it is still owed; `true` when this sweep sent it.
async fn remind(
    txn: &UnitOfWork,
    publisher: &Publisher,
    tenant: &TenantId,
    inv: &invitation::Model,
    now: i64,
) -> Result<bool> {
    let Some(due) = inv.next_reminder_time else { return Ok(false) };
    let survey = match Uuid::parse_str(&inv.survey_id) {
        Ok(id) => match store::get_survey(txn, tenant, id).await {
            Ok(s) => Some(s),
            Err(clm_platform::Error::NotFound { .. }) => None,
            Err(e) => return Err(e),
        },
        Err(_) => None,
    };
    let answered = store::response_of_invitation(txn, tenant, &inv.id).await?.is_some();
    let owed = survey.filter(|s| {
        inv.status == "pending"
            && inv.expire_time > now
            && !answered
            && SurveyStatus::from_key(&s.status) == Some(SurveyStatus::Active)
            && inv.reminders_sent < i64::from(Reminders::from_stored(s.reminder_after, s.max_reminders).max())
    });
    let Some(survey) = owed else {
        store::clear_reminder(txn, tenant, &inv.id).await?;
        return Ok(false);
    };
    let reminders = Reminders::from_stored(survey.reminder_after, survey.max_reminders);
    let sent = inv.reminders_sent + 1;
    let next = reminders.next_due(sent, now, inv.expire_time);
    if !store::claim_reminder(txn, tenant, &inv.id, inv.reminders_sent, due, next).await? {
        return Ok(false);
    }
    let settings = store::settings(txn, tenant).await?;
    let id = Uuid::parse_str(&inv.id).map_err(clm_platform::Error::internal)?;
    let t = token::issue(&settings.token_secret, tenant.as_str(), id);
    let number = i32::try_from(sent).unwrap_or(i32::MAX);
    publisher.survey_requested(txn, tenant, inv, &t, &survey, number, now).await?;
    tracing::info!(invitation = %inv.id, reminder = number, "survey reminder sent");
    Ok(true)
}

/// Invite `inv`'s contact to its survey again, if it is their latest invitation to a survey
/// that still recurs; `true` when this sweep invited them.
async fn recur(
    txn: &UnitOfWork,
    publisher: &Publisher,
    tenant: &TenantId,
    inv: &invitation::Model,
    now: i64,
) -> Result<bool> {
    let Some(due) = inv.next_recurrence_time else { return Ok(false) };
    let survey = match Uuid::parse_str(&inv.survey_id) {
        Ok(id) => match store::get_survey(txn, tenant, id).await {
            Ok(s) => Some(s),
            Err(clm_platform::Error::NotFound { .. }) => None,
            Err(e) => return Err(e),
        },
        Err(_) => None,
    };
    // The claim first: of racing sweeps one goes on, the others stop here.
    if !store::claim_recurrence(txn, tenant, &inv.id, Some(due), None).await? {
        return Ok(false);
    }
    let latest = store::latest_invitation(txn, tenant, &inv.survey_id, &inv.contact_id).await?;
    let (Some(survey), Ok(contact)) = (survey, Uuid::parse_str(&inv.contact_id)) else { return Ok(false) };
    let active = SurveyStatus::from_key(&survey.status) == Some(SurveyStatus::Active);
    if !active || survey.recurrence <= 0 || latest.is_some_and(|l| l.id != inv.id) {
        // Closed, no longer recurring, or a later invitation carries the next round.
        return Ok(false);
    }
    let settings = store::settings(txn, tenant).await?;
    let id = Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("invite/recur/{}", inv.id).as_bytes());
    let mut outcome =
        invite(txn, publisher, tenant, &settings, &survey, contact, Source::Recurrence, None, Some(id), now).await?;
    if matches!(outcome, Err(Skip::AlreadyInvited)) {
        // The last round is still unanswered (its TTL is longer than the recurrence): the new
        // round supersedes it — that link stops working, its reminders stop.
        store::supersede_invitation(txn, tenant, &inv.id).await?;
        outcome = invite(txn, publisher, tenant, &settings, &survey, contact, Source::Recurrence, None, Some(id), now)
            .await?;
    }
    match outcome {
        Ok((new, _)) => {
            tracing::info!(invitation = %new.id, survey = %survey.id, "recurring survey: invited again");
            Ok(new.create_time == now)
        }
        Err(Skip::Throttled(until)) => {
            // Not yet (the fatigue cap): again when the throttle window allows.
            store::claim_recurrence(txn, tenant, &inv.id, None, Some(until.max(now + 1))).await?;
            Ok(false)
        }
        Err(skip) => {
            tracing::info!(survey = %survey.id, ?skip, "recurring survey: not invited now");
            Ok(false)
        }
    }
}

/// Sweep every `interval` until `stop`.
pub fn spawn(
    db: DatabaseConnection,
    publisher: Publisher,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {},
                _ = stop.changed() => return,
            }
            match tick(&db, &publisher, now_micros()).await {
                Ok(s) if s != Swept::default() => tracing::info!(?s, "feedback sweep"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "feedback sweep failed"),
            }
        }
    })
}
