//! A durable event log in a database: the bus of the single binary.
//!
//! Published events are appended to `bus_log` (deduplicated by event id); each consumer's
//! position is a row in `bus_offsets`, written at its first fetch (position 0) and moved by its
//! acks. A crash loses nothing: unacknowledged events are read again from the stored position,
//! and consumers' inboxes drop what they already applied. Waiting consumers are woken
//! in-process the moment something is appended. The pruner deletes old entries, never one a
//! consumer with a position has not consumed yet ([`EventBus::prune`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use sea_orm_migration::prelude::*;
use tokio::sync::Notify;

use super::bus::{Acker, Delivery, EventBus};
use crate::config::DatabaseSettings;

mod schema;

use schema::{LogMigrator, log_entry, offset, stream_of};

/// The database-backed bus.
#[derive(Debug, Clone)]
pub struct LogBus {
    db: DatabaseConnection,
    /// Woken on every append to a stream (by stream), so a consumer waits only for its own.
    appended: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<Notify>>>>,
    /// The (consumer, prefix) pairs known to have a position row (see [`LogBus::register`]).
    registered: Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>,
}

impl LogBus {
    /// Open (and create) the log at `url`.
    pub async fn connect(url: &str, settings: &DatabaseSettings) -> anyhow::Result<Self> {
        let db = crate::db::connect(url, settings)
            .await
            .map_err(|e| anyhow::anyhow!("{e} (key `events.log_database_url`)"))?;
        crate::db::migrate::<LogMigrator>(&db).await?;
        Ok(Self { db, appended: Arc::default(), registered: Arc::default() })
    }

    /// The wake-up of the stream `subject_or_prefix` belongs to (one for all that name none).
    fn wake_of(&self, subject_or_prefix: &str) -> Arc<Notify> {
        let stream = stream_of(subject_or_prefix).unwrap_or_default();
        let mut map = self.appended.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(stream.to_owned()).or_default().clone()
    }

    /// Wake the consumers waiting on the streams of `subjects`.
    fn woke<'a>(&self, subjects: impl IntoIterator<Item = &'a str>) {
        let mut streams: Vec<&str> = subjects.into_iter().map(|s| stream_of(s).unwrap_or_default()).collect();
        streams.sort_unstable();
        streams.dedup();
        for s in streams {
            self.wake_of(s).notify_waiters();
        }
        // Those waiting on a prefix that names no stream hear of everything.
        if let Some(any) = self.appended.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get("") {
            any.notify_waiters();
        }
    }

    /// Give a consumer a position row (0: nothing consumed) before its first read, so the
    /// pruner keeps what it has not consumed even before its first ack (a consumer stuck on
    /// its stream's first event has no ack at all).
    async fn register(&self, consumer: &str, prefix: &str) -> anyhow::Result<()> {
        let key = (consumer.to_owned(), prefix.to_owned());
        if self.registered.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&key) {
            return Ok(());
        }
        offset::Entity::insert(offset::ActiveModel {
            consumer: ActiveValue::Set(key.0.clone()),
            prefix: ActiveValue::Set(key.1.clone()),
            position: ActiveValue::Set(0),
        })
        .on_conflict(OnConflict::columns([offset::Column::Consumer, offset::Column::Prefix]).do_nothing().to_owned())
        .exec_without_returning(&crate::db::writer(&self.db).await)
        .await?;
        self.registered.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key);
        Ok(())
    }

    /// The streams that have entries: a loose index scan of (stream, seq), one lookup per
    /// stream instead of a read of every entry.
    async fn streams(&self) -> anyhow::Result<Vec<String>> {
        let sql = "WITH RECURSIVE s(stream) AS (\
                   SELECT MIN(stream) FROM bus_log \
                   UNION ALL SELECT (SELECT MIN(stream) FROM bus_log WHERE stream > s.stream) FROM s \
                   WHERE s.stream IS NOT NULL) \
                   SELECT stream FROM s WHERE stream IS NOT NULL";
        let rows = self.db.query_all_raw(sea_orm::Statement::from_string(self.db.get_database_backend(), sql)).await?;
        Ok(rows.iter().map(|r| r.try_get::<String>("", "stream")).collect::<Result<_, _>>()?)
    }

    /// Delete the entries of `stream` appended before `cutoff` (µs) up to position `bound`,
    /// oldest first, a batch at a time; how many. Entries are read in sequence order and the
    /// pass stops at the first one too young, so it reads only what it deletes (plus one batch).
    async fn prune_stream(&self, stream: &str, bound: i64, cutoff: i64) -> anyhow::Result<u64> {
        let mut total = 0;
        loop {
            let rows: Vec<(i64, i64)> = log_entry::Entity::find()
                .select_only()
                .column(log_entry::Column::Seq)
                .column(log_entry::Column::AppendTime)
                .filter(log_entry::Column::Stream.eq(stream))
                .filter(log_entry::Column::Seq.lte(bound))
                .order_by_asc(log_entry::Column::Seq)
                .limit(super::prune::BATCH)
                .into_tuple()
                .all(&self.db)
                .await?;
            let old = rows.iter().take_while(|(_, appended)| *appended < cutoff).count();
            let Some(&(last, _)) = old.checked_sub(1).and_then(|i| rows.get(i)) else { return Ok(total) };
            total += log_entry::Entity::delete_many()
                .filter(log_entry::Column::Stream.eq(stream))
                .filter(log_entry::Column::Seq.lte(last))
                .filter(log_entry::Column::AppendTime.lt(cutoff))
                .exec(&crate::db::writer(&self.db).await)
                .await?
                .rows_affected;
            if old < rows.len() || (rows.len() as u64) < super::prune::BATCH {
                return Ok(total);
            }
            tokio::time::sleep(super::prune::PAUSE).await;
        }
    }

    async fn position(&self, consumer: &str, prefix: &str) -> anyhow::Result<i64> {
        Ok(offset::Entity::find_by_id((consumer.to_owned(), prefix.to_owned()))
            .one(&self.db)
            .await?
            .map_or(0, |o| o.position))
    }

    async fn read_after(&self, position: i64, prefix: &str, max: usize) -> anyhow::Result<Vec<log_entry::Model>> {
        let by_stream = match stream_of(prefix) {
            // A whole stream (the usual case): the (stream, seq) index.
            Some(stream) if stream == prefix => log_entry::Column::Stream.eq(prefix),
            _ => log_entry::Column::Subject.starts_with(prefix),
        };
        Ok(log_entry::Entity::find()
            .filter(log_entry::Column::Seq.gt(position))
            .filter(by_stream)
            .order_by_asc(log_entry::Column::Seq)
            .limit(max as u64)
            .all(&self.db)
            .await?)
    }
}

struct LogAck {
    db: DatabaseConnection,
    consumer: String,
    prefix: String,
    seq: i64,
}

#[async_trait]
impl Acker for LogAck {
    async fn ack(self: Box<Self>) -> anyhow::Result<()> {
        // Positions only move forward.
        offset::Entity::insert(offset::ActiveModel {
            consumer: ActiveValue::Set(self.consumer.clone()),
            prefix: ActiveValue::Set(self.prefix.clone()),
            position: ActiveValue::Set(self.seq),
        })
        .on_conflict(
            OnConflict::columns([offset::Column::Consumer, offset::Column::Prefix])
                .update_column(offset::Column::Position)
                .action_and_where(Expr::col((offset::Entity, offset::Column::Position)).lt(self.seq))
                .to_owned(),
        )
        .exec_without_returning(&crate::db::writer(&self.db).await)
        .await?;
        Ok(())
    }

    async fn nak(self: Box<Self>) -> anyhow::Result<()> {
        // The position stays: the next fetch returns this event again.
        Ok(())
    }

    fn covers_earlier(&self) -> bool {
        true
    }
}

#[async_trait]
impl EventBus for LogBus {
    fn system(&self) -> &'static str {
        crate::telemetry::semconv::LOG_BUS
    }

    async fn publish(&self, subject: &str, event_id: &str, payload: Bytes) -> anyhow::Result<()> {
        log_entry::Entity::insert(log_entry::ActiveModel {
            seq: ActiveValue::NotSet,
            event_id: ActiveValue::Set(event_id.to_owned()),
            subject: ActiveValue::Set(subject.to_owned()),
            payload: ActiveValue::Set(payload.to_vec()),
            append_time: ActiveValue::Set(chrono::Utc::now().timestamp_micros()),
            stream: ActiveValue::Set(stream_of(subject).unwrap_or_default().to_owned()),
        })
        .on_conflict(OnConflict::column(log_entry::Column::EventId).do_nothing().to_owned())
        .exec_without_returning(&crate::db::writer(&self.db).await)
        .await?;
        self.woke([subject]);
        Ok(())
    }

    async fn publish_all(&self, events: &[super::bus::Outgoing<'_>]) -> anyhow::Result<bool> {
        if events.is_empty() {
            return Ok(true);
        }
        let now = chrono::Utc::now().timestamp_micros();
        log_entry::Entity::insert_many(events.iter().map(|e| log_entry::ActiveModel {
            seq: ActiveValue::NotSet,
            event_id: ActiveValue::Set(e.event_id.to_owned()),
            subject: ActiveValue::Set(e.subject.to_owned()),
            payload: ActiveValue::Set(e.payload.to_vec()),
            append_time: ActiveValue::Set(now),
            stream: ActiveValue::Set(stream_of(e.subject).unwrap_or_default().to_owned()),
        }))
        .on_conflict(OnConflict::column(log_entry::Column::EventId).do_nothing().to_owned())
        .exec_without_returning(&crate::db::writer(&self.db).await)
        .await?;
        self.woke(events.iter().map(|e| e.subject));
        Ok(true)
    }

    async fn fetch(&self, consumer: &str, prefix: &str, max: usize, wait: Duration) -> anyhow::Result<Vec<Delivery>> {
        self.register(consumer, prefix).await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register interest before reading so an append between the read and the wait
            // is not missed.
            let wake = self.wake_of(prefix);
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let position = self.position(consumer, prefix).await?;
            let rows = self.read_after(position, prefix, max).await?;
            if !rows.is_empty() {
                return Ok(rows
                    .into_iter()
                    .map(|r| {
                        Delivery::new(
                            r.subject,
                            Bytes::from(r.payload),
                            Box::new(LogAck {
                                db: self.db.clone(),
                                consumer: consumer.to_owned(),
                                prefix: prefix.to_owned(),
                                seq: r.seq,
                            }),
                        )
                    })
                    .collect());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    /// Reads the log after the last sequence seen, woken by appends in this process (and at
    /// least once a second, for another process writing the same log).
    fn tail(self: Arc<Self>, pattern: &str) -> tokio::sync::mpsc::Receiver<Bytes> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let pattern = pattern.to_owned();
        tokio::spawn(async move {
            let stream = stream_of(&pattern).unwrap_or(&pattern).to_owned();
            let mut last: Option<i64> = None;
            while !tx.is_closed() {
                let wake = self.wake_of(&stream);
                let notified = wake.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let read = async {
                    let Some(after) = last else {
                        let max: Option<i64> = log_entry::Entity::find()
                            .select_only()
                            .column_as(log_entry::Column::Seq.max(), "m")
                            .into_tuple()
                            .one(&self.db)
                            .await?
                            .flatten();
                        last = Some(max.unwrap_or(0));
                        return Ok(true);
                    };
                    let rows = self.read_after(after, &stream, 500).await?;
                    let more = rows.len() == 500;
                    for r in rows {
                        last = Some(r.seq);
                        if super::bus::matches(&pattern, &r.subject) && tx.send(Bytes::from(r.payload)).await.is_err() {
                            return Ok(false);
                        }
                    }
                    Ok::<bool, anyhow::Error>(more)
                };
                match read.await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => tracing::debug!(error = %e, "tail of the log interrupted"),
                }
                tokio::select! {
                    () = notified => {},
                    () = tokio::time::sleep(Duration::from_secs(1)) => {},
                    () = tx.closed() => return,
                }
            }
        });
        rx
    }

    /// Back to position 0 (the row stays, so the pruner keeps what the replay has to read).
    async fn reset(&self, consumer: &str, prefix: &str) -> anyhow::Result<()> {
        offset::Entity::insert(offset::ActiveModel {
            consumer: ActiveValue::Set(consumer.to_owned()),
            prefix: ActiveValue::Set(prefix.to_owned()),
            position: ActiveValue::Set(0),
        })
        .on_conflict(
            OnConflict::columns([offset::Column::Consumer, offset::Column::Prefix])
                .update_column(offset::Column::Position)
                .to_owned(),
        )
        .exec_without_returning(&crate::db::writer(&self.db).await)
        .await?;
        Ok(())
    }

    /// Per stream: delete the entries appended more than `older_than` ago up to the lowest
    /// position of the consumers that read it (a consumer of a narrower prefix counts for its
    /// whole stream, one of no stream for every stream). A consumer holding old entries back
    /// is logged: one that no longer exists (renamed, `events.consumer_prefix` changed) keeps
    /// its stream's entries until its `bus_offsets` rows are deleted.
    async fn prune(&self, older_than: Duration) -> anyhow::Result<u64> {
        let cutoff = super::prune::cutoff(older_than);
        let offsets = offset::Entity::find().all(&self.db).await?;
        let mut total = 0;
        for stream in self.streams().await? {
            let readers: Vec<&offset::Model> = offsets
                .iter()
                .filter(|o| stream.is_empty() || stream_of(&o.prefix).is_none_or(|s| s == stream))
                .collect();
            let bound = readers.iter().map(|o| o.position).min().unwrap_or(i64::MAX);
            total += self.prune_stream(&stream, bound, cutoff).await?;
            let held_back = log_entry::Entity::find()
                .filter(log_entry::Column::Stream.eq(&stream))
                .filter(log_entry::Column::Seq.gt(bound))
                .order_by_asc(log_entry::Column::Seq)
                .one(&self.db)
                .await?
                .is_some_and(|e| e.append_time < cutoff);
            if held_back {
                let behind: Vec<&str> =
                    readers.iter().filter(|o| o.position == bound).map(|o| o.consumer.as_str()).collect();
                tracing::warn!(
                    stream = %stream,
                    consumers = ?behind,
                    position = bound,
                    "event log entries past their retention are kept: not yet consumed by these consumers \
                     (if one no longer exists, delete its rows from bus_offsets)"
                );
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::schema::CreateLog;
    use super::*;
    use clm_testkit::{Backend, TestDb};

    /// A log as the first version left it (no stream column).
    struct V1;

    impl MigratorTrait for V1 {
        fn migrations() -> Vec<Box<dyn MigrationTrait>> {
            vec![Box::new(CreateLog)]
        }

        fn migration_table_name() -> sea_orm::DynIden {
            "bus_migrations".into_iden()
        }
    }

    async fn upgrade_keeps_every_entry_readable(backend: Backend) {
        let Some(tdb) = TestDb::create(backend, "buslog").await else { return };
        let settings = DatabaseSettings {
            max_connections: 2,
            min_connections: 1,
            connect_timeout_ms: 5000,
            acquire_timeout_ms: 5000,
            ping_idle_after_ms: 30_000,
            migrate_on_start: true,
            min_free_bytes: 0,
        };
        let db = crate::db::connect(&tdb.url, &settings).await.unwrap();
        V1::up(&db, None).await.unwrap();
        for (i, subject) in
            ["clm.contacts.contact.ContactCreated", "clm.lifecycle.journey.StageChanged"].iter().enumerate()
        {
            db.execute_unprepared(&format!(
                "INSERT INTO bus_log (event_id, subject, payload, append_time) VALUES ('e{i}', '{subject}', '', 0)"
            ))
            .await
            .unwrap();
        }
        drop(db);
        let bus = LogBus::connect(&tdb.url, &settings).await.unwrap();
        bus.publish("clm.contacts.contact.ContactUpdated", "e9", Bytes::new()).await.unwrap();
        let contacts = bus.fetch("c", "clm.contacts.", 10, Duration::from_millis(10)).await.unwrap();
        let subjects: Vec<_> = contacts.iter().map(|d| d.subject.as_str()).collect();
        assert_eq!(subjects, ["clm.contacts.contact.ContactCreated", "clm.contacts.contact.ContactUpdated"]);
        let lifecycle = bus.fetch("c", "clm.lifecycle.", 10, Duration::from_millis(10)).await.unwrap();
        assert_eq!(lifecycle.len(), 1);
        // A prefix narrower than a stream still works (by subject).
        let narrow = bus.fetch("c", "clm.contacts.contact.ContactU", 10, Duration::from_millis(10)).await.unwrap();
        assert_eq!(narrow.len(), 1);
        drop(bus);
        tdb.cleanup().await;
    }

    #[tokio::test]
    async fn upgrade_sqlite() {
        upgrade_keeps_every_entry_readable(Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn upgrade_postgres() {
        upgrade_keeps_every_entry_readable(Backend::Postgres).await;
    }

    #[test]
    fn streams_of_subjects() {
        assert_eq!(stream_of("clm.contacts.contact.ContactCreated"), Some("clm.contacts."));
        assert_eq!(stream_of("clm.contacts."), Some("clm.contacts."));
        assert_eq!(stream_of("clm.contacts"), None);
        assert_eq!(stream_of("clm..x"), None);
        assert_eq!(stream_of(""), None);
    }
}
