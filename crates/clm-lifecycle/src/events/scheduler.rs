//! Time-based rules: contacts with no activity past their stage's dormancy threshold become
//! dormant, and inactivity automations fire — each due journey advanced by the clock through
//! `journeys::advance`, its automations run after its commit. Runs in every replica but acts
//! in one at a time (a lease in the database); after downtime it catches up, because dormancy
//! is computed from the last activity (or move), not from when the check runs.

use std::time::Duration;

use clm_platform::TenantId;
use clm_platform::events::UnitOfWork;
use clm_platform::events::outbox::{RelayOptions, hold_lease};
use sea_orm::DatabaseConnection;
use tokio::sync::watch;
use uuid::Uuid;

use crate::contacts_client::Automator;
use crate::journeys::{Happened, advance, automations};
use crate::store::{self, now_micros};

/// Journeys examined per round.
const BATCH: u64 = 500;

/// One round at `now`: returns how many journeys changed (by the clock, or by the automations
/// the clock fired).
pub async fn tick(db: &DatabaseConnection, automator: &Automator, now: i64) -> clm_platform::Result<usize> {
    // Journeys whose dormancy threshold or tenure rule has fallen due; each rebuild moves
    // check_after forward (or clears it), so a round never sees the same journey twice.
    let candidates = store::due_journeys(db, now, BATCH).await?;
    let mut changed = 0;
    for j in candidates {
        let (Ok(tenant), Ok(contact)) = (TenantId::parse(&j.tenant_id), Uuid::parse_str(&j.contact_id)) else {
            continue;
        };
        let txn = UnitOfWork::begin(db).await?;
        let model = store::get_model(&txn, &tenant, &j.model_id).await?;
        let done = advance(&txn, &automator.publisher, &tenant, contact, &model, now, Happened::Clock).await?;
        txn.commit().await?;
        let moved = if done.owed { automations::run_owed(db, automator, &tenant, contact).await } else { 0 };
        if !done.new.is_empty() || moved > 0 {
            changed += 1;
        }
    }
    Ok(changed)
}

/// Run the scheduler every `interval` until `stop`.
pub fn spawn(
    db: DatabaseConnection,
    automator: Automator,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let holder = RelayOptions::default().holder;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {},
                _ = stop.changed() => return,
            }
            match hold_lease(&db, "lifecycle-scheduler", &holder, interval * 3).await {
                Ok(true) => match tick(&db, &automator, now_micros()).await {
                    Ok(n) if n > 0 => tracing::info!(changed = n, "scheduler round"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "scheduler round failed"),
                },
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "scheduler lease unavailable"),
            }
        }
    })
}
