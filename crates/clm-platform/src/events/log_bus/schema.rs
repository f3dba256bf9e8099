//! The log bus's tables — `bus_log` (the entries) and `bus_offsets` (each consumer's position)
//! — and their migrations, kept in the log's own database (`bus_migrations`).

use sea_orm_migration::prelude::*;

pub(super) mod log_entry {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "bus_log")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub seq: i64,
        #[sea_orm(unique)]
        pub event_id: String,
        pub subject: String,
        pub payload: Vec<u8>,
        pub append_time: i64,
        /// The producing service's subject prefix (`clm.<service>.`): consumers read a
        /// stream by the index on (stream, seq), never by scanning other streams' entries.
        pub stream: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(super) mod offset {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "bus_offsets")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub consumer: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub prefix: String,
        pub position: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

#[derive(DeriveIden)]
enum BusLog {
    Table,
    Seq,
    EventId,
    Subject,
    Payload,
    AppendTime,
    Stream,
}

#[derive(DeriveIden)]
enum BusOffsets {
    Table,
    Consumer,
    Prefix,
    Position,
}

pub(super) struct CreateLog;

impl MigrationName for CreateLog {
    fn name(&self) -> &'static str {
        "bus_0001_log"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateLog {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(BusLog::Table)
                .if_not_exists()
                .col(ColumnDef::new(BusLog::Seq).big_integer().not_null().auto_increment().primary_key())
                .col(ColumnDef::new(BusLog::EventId).string().not_null().unique_key())
                .col(ColumnDef::new(BusLog::Subject).string().not_null())
                .col(ColumnDef::new(BusLog::Payload).blob().not_null())
                .col(ColumnDef::new(BusLog::AppendTime).big_integer().not_null())
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(BusOffsets::Table)
                .if_not_exists()
                .col(ColumnDef::new(BusOffsets::Consumer).string().not_null())
                .col(ColumnDef::new(BusOffsets::Prefix).string().not_null())
                .col(ColumnDef::new(BusOffsets::Position).big_integer().not_null())
                .primary_key(Index::create().col(BusOffsets::Consumer).col(BusOffsets::Prefix))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(BusOffsets::Table).to_owned()).await?;
        m.drop_table(Table::drop().table(BusLog::Table).to_owned()).await
    }
}

/// The stream column and its index. Without them a consumer of a quiet producer read every
/// entry after its position on every wake-up (its position never moved), so the cost of a
/// fetch grew with the log.
struct AddStream;

impl MigrationName for AddStream {
    fn name(&self) -> &'static str {
        "bus_0002_stream"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for AddStream {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(BusLog::Table)
                .add_column(ColumnDef::new(BusLog::Stream).string().not_null().default(""))
                .to_owned(),
        )
        .await?;
        // Entries appended before this migration: the stream from the subject.
        let backfill = match m.get_database_backend() {
            sea_orm::DbBackend::Postgres => {
                "UPDATE bus_log SET stream = split_part(subject, '.', 1) || '.' || split_part(subject, '.', 2) || '.'"
            }
            _ => "UPDATE bus_log SET stream = substr(subject, 1, 4 + instr(substr(subject, 5), '.'))",
        };
        m.get_connection().execute_unprepared(backfill).await?;
        m.create_index(
            Index::create()
                .name("ix_bus_log_stream")
                .table(BusLog::Table)
                .col(BusLog::Stream)
                .col(BusLog::Seq)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(Index::drop().name("ix_bus_log_stream").table(BusLog::Table).to_owned()).await?;
        m.alter_table(Table::alter().table(BusLog::Table).drop_column(BusLog::Stream).to_owned()).await
    }
}

/// The stream of a subject or prefix: its first two segments (`clm.contacts.`), when it has
/// them.
pub(super) fn stream_of(subject: &str) -> Option<&str> {
    let first = subject.find('.')?;
    let second = first + 1 + subject[first + 1..].find('.')?;
    (second > first + 1).then(|| &subject[..=second])
}

pub(super) struct LogMigrator;

impl MigratorTrait for LogMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateLog), Box::new(AddStream)]
    }

    fn migration_table_name() -> sea_orm::DynIden {
        "bus_migrations".into_iden()
    }
}
