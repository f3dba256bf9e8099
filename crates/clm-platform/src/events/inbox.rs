//! The consumer side: apply each event exactly once in effect.
//!
//! The event id is inserted into the consumer's `inbox` in the same transaction as the
//! consumer's own change; a redelivered event finds its id there and changes nothing.

use async_trait::async_trait;
use clm_proto::events::v1::EventEnvelope;
use sea_orm::{
    ActiveValue, ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter, QuerySelect,
};
use sea_orm_migration::prelude::*;
use tracing::Instrument as _;

use super::work::UnitOfWork;

pub(crate) mod entity {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "inbox")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub consumer: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        pub process_time: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

#[derive(DeriveIden)]
enum Inbox {
    Table,
    Consumer,
    EventId,
    ProcessTime,
}

/// Migration creating `inbox`; consumers add it to their migrator.
pub struct InboxMigration;

impl MigrationName for InboxMigration {
    fn name(&self) -> &'static str {
        "platform_0002_inbox"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for InboxMigration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Inbox::Table)
                .col(ColumnDef::new(Inbox::Consumer).string().not_null())
                .col(ColumnDef::new(Inbox::EventId).string().not_null())
                .col(ColumnDef::new(Inbox::ProcessTime).big_integer().not_null())
                .primary_key(Index::create().col(Inbox::Consumer).col(Inbox::EventId))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(Inbox::Table).to_owned()).await
    }
}

/// What a consumer does with one event, inside the inbox transaction: a [`UnitOfWork`], so
/// the events a handler appends to its own outbox are published as soon as the batch commits.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Apply `event` using `txn` (the inbox row is already in it).
    async fn handle(&self, txn: &UnitOfWork, event: &EventEnvelope) -> crate::Result<()>;

    /// Apply `events` in order using `txn`, each under the span `span` makes for it. The
    /// default handles them one by one; a handler may override it to put off part of the work
    /// to the end of the batch (still in `txn`, before the commit).
    async fn handle_batch(
        &self,
        txn: &UnitOfWork,
        events: &[&EventEnvelope],
        span: &(dyn for<'e> Fn(&'e EventEnvelope) -> tracing::Span + Send + Sync),
    ) -> crate::Result<()> {
        for event in events {
            self.handle(txn, event).instrument(span(event)).await?;
        }
        Ok(())
    }

    /// Clear the read model before a replay from the first event.
    async fn reset(&self, txn: &DatabaseTransaction) -> crate::Result<()>;
}

/// Which of `event_ids` `consumer` has applied already (one query, for a batch).
pub async fn applied_among(
    txn: &DatabaseTransaction,
    consumer: &str,
    event_ids: &[&str],
) -> crate::Result<std::collections::HashSet<String>> {
    let mut out = std::collections::HashSet::new();
    for chunk in event_ids.chunks(1000) {
        let rows: Vec<String> = entity::Entity::find()
            .select_only()
            .column(entity::Column::EventId)
            .filter(entity::Column::Consumer.eq(consumer))
            .filter(entity::Column::EventId.is_in(chunk.iter().map(|s| (*s).to_owned())))
            .into_tuple()
            .all(txn)
            .await?;
        out.extend(rows);
    }
    Ok(out)
}

/// Record that `consumer` applied `event_ids` (one multi-row insert, in the transaction that
/// applied them). An id recorded meanwhile by another replica fails the insert, and with it
/// the transaction: the caller then applies event by event.
pub async fn record_applied(txn: &DatabaseTransaction, consumer: &str, event_ids: &[&str]) -> crate::Result<()> {
    let now = chrono::Utc::now().timestamp_micros();
    for chunk in event_ids.chunks(1000) {
        let rows = chunk.iter().map(|id| entity::ActiveModel {
            consumer: ActiveValue::Set(consumer.to_owned()),
            event_id: ActiveValue::Set((*id).to_owned()),
            process_time: ActiveValue::Set(now),
        });
        entity::Entity::insert_many(rows).exec_without_returning(txn).await?;
    }
    Ok(())
}

/// Forget what `consumer` applied and let the handler clear its read model (one transaction),
/// ready for a replay from the first event.
pub async fn reset(db: &DatabaseConnection, consumer: &str, handler: &dyn EventHandler) -> crate::Result<()> {
    let txn = crate::db::begin_write(db).await?;
    entity::Entity::delete_many().filter(entity::Column::Consumer.eq(consumer)).exec(&txn).await?;
    super::ordering::reset(&txn, consumer).await?;
    handler.reset(&txn).await?;
    txn.commit().await?;
    Ok(())
}
