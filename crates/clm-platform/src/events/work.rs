//! The unit of work: one write transaction that carries a change and the events it publishes,
//! and the one place that wakes the relay after such a transaction commits.
//!
//! ```text
//! UnitOfWork::begin(db)            db::begin_write (SQLite: the free-space check, BEGIN IMMEDIATE)
//!   store::…(&work, …)             the change (the unit of work is a ConnectionTrait)
//!   OutboxWriter::append(&work, …) its events; the unit of work notes whose relay to wake
//! work.commit()                    COMMIT, then wake those relays
//! ```
//!
//! Events reach the outbox only through a unit of work ([`super::outbox::OutboxWriter::append`]
//! takes one, [`super::outbox::OutboxInserts`] are run only by [`UnitOfWork::insert_all`] or
//! [`UnitOfWork::insert`]), so no path can commit an event and forget to wake the relay: API
//! handlers, the consumer runner (events a handler appends go out when its batch commits) and
//! background jobs alike. The relay's poll (`events.relay_poll_ms`) is only the fallback for
//! what another process wrote. A unit of work dropped without `commit` rolls back and wakes
//! nothing.

use std::sync::{Arc, Mutex, PoisonError};

use sea_orm::sea_query::InsertStatement;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, ExecResult, QueryResult, Statement,
};
use tokio::sync::Notify;

use super::outbox::OutboxInserts;

/// A write transaction whose outbox events are published once it commits. Derefs to the
/// transaction and is itself a [`ConnectionTrait`], so store functions take `&work` as they
/// took `&txn`.
pub struct UnitOfWork {
    txn: DatabaseTransaction,
    /// The relays of the outboxes written in this unit (one per producer; in practice one).
    wake: Mutex<Vec<Arc<Notify>>>,
}

impl std::fmt::Debug for UnitOfWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnitOfWork").field("relays_to_wake", &self.relays().len()).finish_non_exhaustive()
    }
}

impl UnitOfWork {
    /// Begin a unit of work on `db` ([`crate::db::begin_write`]: on SQLite the file's writer
    /// connection, the write lock taken up front, and RESOURCE_EXHAUSTED when the disk is
    /// below `database.min_free_bytes`).
    pub async fn begin(db: &DatabaseConnection) -> crate::Result<Self> {
        Ok(Self { txn: crate::db::begin_write(db).await?, wake: Mutex::default() })
    }

    /// The transaction, for what takes a `&DatabaseTransaction` (deref gives it too).
    pub fn txn(&self) -> &DatabaseTransaction {
        &self.txn
    }

    /// Commit, then wake the relay of every outbox this unit appended to, so its events are
    /// published now rather than at the relay's next poll.
    pub async fn commit(self) -> crate::Result<()> {
        let wake = std::mem::take(&mut *self.wake.lock().unwrap_or_else(PoisonError::into_inner));
        self.txn.commit().await?;
        for relay in wake {
            relay.notify_one();
        }
        Ok(())
    }

    /// Write `events` (first events of new aggregates as insert statements) in this unit; their
    /// relay is woken when it commits.
    pub async fn insert(&self, events: OutboxInserts) -> crate::Result<()> {
        let (statements, wake) = events.into_parts();
        for insert in &statements {
            self.txn.execute(insert).await?;
        }
        if !statements.is_empty() {
            self.woken_after_commit(&wake);
        }
        Ok(())
    }

    /// A unit of work of inserts only: `rows` and then `events` as one atomic write
    /// ([`crate::db::insert_all`]: one statement on PostgreSQL, one transaction on SQLite), then
    /// wake the events' relay. The database's own error comes back as it is (a caller tells a
    /// unique violation from others).
    pub async fn insert_all(
        db: &DatabaseConnection,
        mut rows: Vec<InsertStatement>,
        events: OutboxInserts,
    ) -> Result<(), DbErr> {
        let (statements, wake) = events.into_parts();
        let any = !statements.is_empty();
        rows.extend(statements);
        crate::db::insert_all(db, rows).await?;
        if any {
            wake.notify_one();
        }
        Ok(())
    }

    /// Note that this unit wrote to the outbox whose relay `wake` wakes.
    pub(crate) fn woken_after_commit(&self, wake: &Arc<Notify>) {
        let mut relays = self.wake.lock().unwrap_or_else(PoisonError::into_inner);
        if !relays.iter().any(|r| Arc::ptr_eq(r, wake)) {
            relays.push(wake.clone());
        }
    }

    fn relays(&self) -> Vec<Arc<Notify>> {
        self.wake.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl std::ops::Deref for UnitOfWork {
    type Target = DatabaseTransaction;

    fn deref(&self) -> &DatabaseTransaction {
        &self.txn
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for UnitOfWork {
    fn get_database_backend(&self) -> DbBackend {
        self.txn.get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.txn.execute_raw(stmt).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.txn.execute_unprepared(sql).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.txn.query_one_raw(stmt).await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.txn.query_all_raw(stmt).await
    }

    fn support_returning(&self) -> bool {
        self.txn.support_returning()
    }
}
