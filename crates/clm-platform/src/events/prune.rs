//! Retention: a background pruner deletes what the event machinery no longer needs.
//!
//! Once older than its retention (`events.*_retention_hours`; 0 keeps forever) goes:
//! - an **outbox** row the relay published (`publish_time`); an unsent row never goes. Published
//!   rows are kept a while (a week by default, never under an hour) so that events a bus lost
//!   *after* acknowledging them — NATS by default fsyncs every two minutes and acknowledges
//!   before that — can be published again (docs/operations.md § Retention);
//! - an **inbox** key (`process_time`). The inbox drops an event delivered again, so it must
//!   remember every event the bus can still deliver: the settings refuse an inbox retention
//!   shorter than the bus's (`config`);
//! - an entry of the durable **log** (the single binary's bus) that every consumer registered
//!   on the log has consumed ([`EventBus::prune`]). JetStream ages its streams out itself
//!   (`max_age`, set from `events.stream_max_age_hours` by `nats`).
//!
//! Deletes go [`BATCH`] rows a statement with a short pause between, so no statement holds a
//! lock for long and other writers (on SQLite: the one writer connection) wait behind one batch
//! at most. On PostgreSQL, replicas pruning at the same moment skip each other's rows
//! (`FOR UPDATE SKIP LOCKED`) instead of queueing on them.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};
use sea_orm_migration::prelude::*;
use tokio::sync::watch;

use super::bus::EventBus;
use crate::config::EventSettings;

/// Rows deleted per statement.
pub const BATCH: u64 = 1000;
/// Pause between two batches, so writers waiting for the lock get it.
pub(crate) const PAUSE: Duration = Duration::from_millis(20);

/// What is kept how long (`None`: forever), and how often the pruner looks.
#[derive(Debug, Clone)]
pub struct Retention {
    pub outbox: Option<Duration>,
    pub inbox: Option<Duration>,
    pub log: Option<Duration>,
    pub interval: Duration,
}

impl Retention {
    pub fn from_settings(s: &EventSettings) -> Self {
        let hours = |h: u64| (h > 0).then(|| Duration::from_secs(h.saturating_mul(3600)));
        Self {
            outbox: hours(s.outbox_retention_hours),
            inbox: hours(s.inbox_retention_hours),
            log: hours(s.log_retention_hours),
            interval: Duration::from_millis(s.prune_interval_ms),
        }
    }
}

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub outbox: u64,
    pub inbox: u64,
    pub log: u64,
}

/// The time `older_than` ago, in µs since the epoch (the unit of every time column).
pub(crate) fn cutoff(older_than: Duration) -> i64 {
    let age: i64 = older_than.as_micros().try_into().unwrap_or(i64::MAX);
    chrono::Utc::now().timestamp_micros().saturating_sub(age)
}

/// Delete outbox rows published more than `older_than` ago (never an unsent one); how many.
pub async fn prune_outbox(db: &DatabaseConnection, older_than: Duration) -> Result<u64, DbErr> {
    let sql = match db.get_database_backend() {
        DbBackend::Postgres => format!(
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox \
             WHERE publish_time IS NOT NULL AND publish_time < $1 LIMIT {BATCH} FOR UPDATE SKIP LOCKED)"
        ),
        _ => format!(
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox \
             WHERE publish_time IS NOT NULL AND publish_time < ? LIMIT {BATCH})"
        ),
    };
    delete_in_batches(db, &sql, cutoff(older_than)).await
}

/// Delete inbox keys of events processed more than `older_than` ago; how many.
pub async fn prune_inbox(db: &DatabaseConnection, older_than: Duration) -> Result<u64, DbErr> {
    let sql = match db.get_database_backend() {
        DbBackend::Postgres => format!(
            "DELETE FROM inbox WHERE (consumer, event_id) IN (SELECT consumer, event_id FROM inbox \
             WHERE process_time < $1 LIMIT {BATCH} FOR UPDATE SKIP LOCKED)"
        ),
        _ => format!("DELETE FROM inbox WHERE rowid IN (SELECT rowid FROM inbox WHERE process_time < ? LIMIT {BATCH})"),
    };
    delete_in_batches(db, &sql, cutoff(older_than)).await
}

/// Run `sql` (a delete of at most [`BATCH`] rows older than its one parameter) until it
/// deletes less than a batch.
async fn delete_in_batches(db: &DatabaseConnection, sql: &str, cutoff: i64) -> Result<u64, DbErr> {
    let mut total = 0;
    loop {
        let deleted = {
            let writer = crate::db::writer(db).await;
            let statement = Statement::from_sql_and_values(writer.get_database_backend(), sql, [cutoff.into()]);
            writer.execute_raw(statement).await?.rows_affected()
        };
        total += deleted;
        if deleted < BATCH {
            return Ok(total);
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// One pass over `dbs` (each service database of the process: its outbox and inbox, where it
/// has them) and the bus. A failure in one place does not stop the others; the first is
/// returned after all were tried.
pub async fn prune_once(
    dbs: &[DatabaseConnection],
    bus: &dyn EventBus,
    retention: &Retention,
) -> anyhow::Result<Pruned> {
    let mut pruned = Pruned::default();
    let mut first_error = None;
    for db in dbs {
        let schema = SchemaManager::new(db);
        if let Some(age) = retention.outbox {
            match async { if schema.has_table("outbox").await? { prune_outbox(db, age).await } else { Ok(0) } }.await {
                Ok(n) => pruned.outbox += n,
                Err(e) => _ = first_error.get_or_insert(anyhow::anyhow!("pruning the outbox: {e}")),
            }
        }
        if let Some(age) = retention.inbox {
            match async { if schema.has_table("inbox").await? { prune_inbox(db, age).await } else { Ok(0) } }.await {
                Ok(n) => pruned.inbox += n,
                Err(e) => _ = first_error.get_or_insert(anyhow::anyhow!("pruning the inbox: {e}")),
            }
        }
    }
    if let Some(age) = retention.log {
        match bus.prune(age).await {
            Ok(n) => pruned.log = n,
            Err(e) => _ = first_error.get_or_insert(e.context("pruning the event log")),
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(pruned),
    }
}

/// Prune every `retention.interval` (plus up to a tenth, so replicas started together do not
/// prune in step) until `stop` turns true.
///
/// The first pass comes one interval after start, not at once: after an outage longer than the
/// inbox retention, deliveries left unacknowledged come back within seconds of a consumer
/// starting (JetStream's ack wait, the log's stored position), and their keys must still be
/// there to drop them.
pub fn spawn(
    bus: Arc<dyn EventBus>,
    dbs: Vec<DatabaseConnection>,
    retention: Retention,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if retention.outbox.is_none() && retention.inbox.is_none() && retention.log.is_none() {
            return;
        }
        loop {
            let wait = retention.interval.mul_f64(1.0 + rand::random::<f64>() / 10.0);
            tokio::select! {
                () = tokio::time::sleep(wait) => {},
                _ = stop.changed() => return,
            }
            let result = tokio::select! {
                r = prune_once(&dbs, bus.as_ref(), &retention) => r,
                _ = stop.changed() => return,
            };
            match result {
                Ok(p) if p != Pruned::default() => {
                    tracing::info!(outbox = p.outbox, inbox = p.inbox, log = p.log, "pruned rows past their retention");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = format!("{e:#}"), "pruning failed; trying again next interval"),
            }
        }
    })
}

#[derive(DeriveIden)]
enum Inbox {
    Table,
    ProcessTime,
}

/// The index the pruner finds old inbox keys by; consumers add it to their migrator after
/// [`super::inbox::InboxMigration`]. (The outbox's `publish_time` is indexed from the start.)
pub struct InboxAgeIndexMigration;

impl MigrationName for InboxAgeIndexMigration {
    fn name(&self) -> &'static str {
        "platform_0007_inbox_process_time"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for InboxAgeIndexMigration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_index(
            Index::create().name("ix_inbox_process_time").table(Inbox::Table).col(Inbox::ProcessTime).to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(Index::drop().name("ix_inbox_process_time").table(Inbox::Table).to_owned()).await
    }
}
