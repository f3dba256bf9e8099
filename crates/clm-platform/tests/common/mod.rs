//! What the event tests share: a producer/consumer database migrated as the services' are, a
//! handler that records what it applies, and the settings they run with.
#![allow(dead_code)]

use std::time::Duration;

use async_trait::async_trait;
use clm_platform::config::DatabaseSettings;
use clm_platform::events::UnitOfWork;
use clm_platform::events::bus::EventBus;
use clm_platform::events::consumer::{ConsumerSpec, Waiting, consume_once};
use clm_platform::events::inbox::{EventHandler, InboxMigration};
use clm_platform::events::ordering::{InboxPositionsMigration, OutboxKeysMigration};
use clm_platform::events::outbox::OutboxMigration;
use clm_platform::events::prune::InboxAgeIndexMigration;
use clm_proto::events::v1 as ev;
use clm_proto::events::v1::event_envelope::Payload;
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, Statement};
use sea_orm_migration::prelude::*;

pub struct Applied;

impl MigrationName for Applied {
    fn name(&self) -> &'static str {
        "test_0001_applied"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Applied {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("applied")
                .col(ColumnDef::new("id").big_integer().not_null().auto_increment().primary_key())
                .col(ColumnDef::new("aggregate_id").string().not_null())
                .col(ColumnDef::new("n").big_integer().not_null())
                .col(ColumnDef::new("event_id").string().not_null())
                .to_owned(),
        )
        .await
    }
    async fn down(&self, _: &SchemaManager) -> Result<(), DbErr> {
        Ok(())
    }
}

pub struct TestMigrator;

impl MigratorTrait for TestMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(OutboxMigration),
            Box::new(InboxMigration),
            Box::new(InboxAgeIndexMigration),
            Box::new(Applied),
            Box::new(OutboxKeysMigration),
            Box::new(InboxPositionsMigration),
        ]
    }
}

/// Records (aggregate, n) per applied event; `n` is the event's order within its aggregate.
pub struct Recorder;

#[async_trait]
impl EventHandler for Recorder {
    async fn handle(&self, txn: &UnitOfWork, e: &ev::EventEnvelope) -> clm_platform::Result<()> {
        let Some(Payload::ContactUpdated(u)) = &e.payload else { return Ok(()) };
        let n: i64 = u.changed_paths[0].parse().unwrap();
        txn.execute_raw(Statement::from_sql_and_values(
            txn.get_database_backend(),
            match txn.get_database_backend() {
                sea_orm::DbBackend::Postgres => "INSERT INTO applied (aggregate_id, n, event_id) VALUES ($1, $2, $3)",
                _ => "INSERT INTO applied (aggregate_id, n, event_id) VALUES (?, ?, ?)",
            },
            [u.contact_id.clone().into(), n.into(), e.event_id.clone().into()],
        ))
        .await?;
        Ok(())
    }

    async fn reset(&self, txn: &DatabaseTransaction) -> clm_platform::Result<()> {
        txn.execute_unprepared("DELETE FROM applied").await?;
        Ok(())
    }
}

pub async fn applied(db: &DatabaseConnection) -> Vec<(String, i64)> {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT aggregate_id, n FROM applied ORDER BY id",
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|r| (r.try_get::<String>("", "aggregate_id").unwrap(), r.try_get::<i64>("", "n").unwrap()))
        .collect()
}

pub fn spec(name: &str, service: &str) -> ConsumerSpec {
    ConsumerSpec {
        name: name.into(),
        prefixes: vec![format!("clm.{service}.")],
        batch: 50,
        wait: Duration::from_millis(200),
        order_wait: Duration::from_mins(1),
        waiting: Waiting::default(),
        system: "test",
    }
}

pub async fn drain(bus: &dyn EventBus, db: &DatabaseConnection, spec: &ConsumerSpec) {
    for _ in 0..500 {
        if consume_once(bus, db, spec, &spec.prefixes[0], &Recorder).await.unwrap().done == 0 {
            return;
        }
    }
    panic!("consumer did not drain");
}

pub fn nats_url() -> Option<String> {
    let url = std::env::var("CLM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let addr = url.trim_start_matches("nats://").to_owned();
    if std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(300)).is_ok() {
        Some(url)
    } else {
        eprintln!("skipped: NATS test (no server at {url}; set CLM_TEST_NATS_URL)");
        None
    }
}

pub fn db_settings() -> DatabaseSettings {
    DatabaseSettings {
        max_connections: 5,
        min_connections: 1,
        connect_timeout_ms: 5000,
        acquire_timeout_ms: 5000,
        ping_idle_after_ms: 30_000,
        min_free_bytes: 0,
        migrate_on_start: true,
    }
}
