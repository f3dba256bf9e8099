//! Retention, through the real stores on SQLite and PostgreSQL: the pruner deletes published
//! outbox rows, inbox keys and durable-log entries past their retention, and nothing that is
//! still needed — unsent events, recent keys (a redelivery is still dropped), log entries a
//! consumer has not consumed; a replay still works from the first retained event; every
//! server runs the pruner; JetStream streams get their `max_age`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use clm_platform::TenantId;
use clm_platform::config::{EventSettings, EventTransport};
use clm_platform::events::bus::EventBus;
use clm_platform::events::consumer::replay;
use clm_platform::events::log_bus::LogBus;
use clm_platform::events::nats::NatsBus;
use clm_platform::events::outbox::{OutboxWriter, pending, relay_once};
use clm_platform::events::prune::{prune_inbox, prune_outbox};
use clm_proto::events::v1 as ev;
use clm_proto::events::v1::event_envelope::Payload;
use clm_testkit::{Backend, TestDb};
use common::{Recorder, TestMigrator, db_settings, drain, nats_url, spec};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

const HOUR: Duration = Duration::from_hours(1);
const DAY: Duration = Duration::from_hours(24);

async fn migrated(backend: Backend, label: &str) -> Option<(TestDb, DatabaseConnection)> {
    let testdb = TestDb::create(backend, label).await?;
    let db = clm_platform::db::connect(&testdb.url, &db_settings()).await.unwrap();
    clm_platform::db::migrate::<TestMigrator>(&db).await.unwrap();
    Some((testdb, db))
}

/// `n` events of service `svc` in one unit of work (one multi-row insert per thousand), each
/// the first of a contact of its own.
async fn produce(db: &DatabaseConnection, outbox: &OutboxWriter, n: usize) {
    let tenant = TenantId::parse("t1").unwrap();
    let txn = clm_platform::events::UnitOfWork::begin(db).await.unwrap();
    let call = uuid::Uuid::new_v4().simple().to_string();
    let events: Vec<_> = (0..n)
        .map(|i| {
            let id = format!("c{i}-{call}");
            let payload = Payload::ContactUpdated(ev::ContactUpdated {
                contact_id: id.clone(),
                changed_paths: vec![i.to_string()],
                facts: None,
            });
            (id, 0, payload)
        })
        .collect();
    txn.insert(outbox.insert_many(&tenant, "contact", events)).await.unwrap();
    txn.commit().await.unwrap();
}

async fn relay_all(db: &DatabaseConnection, bus: &dyn EventBus) {
    while relay_once(db, bus, 1000).await.unwrap() > 0 {}
}

async fn count(db: &DatabaseConnection, sql: &str) -> i64 {
    let row = db.query_one_raw(Statement::from_string(db.get_database_backend(), sql)).await.unwrap().unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

/// Move `column` of the rows of `table` that `filter` picks `age` into the past, as if they
/// had been written then.
async fn backdate(db: &DatabaseConnection, table: &str, column: &str, filter: &str, age: Duration) {
    let micros = age.as_micros();
    db.execute_unprepared(&format!("UPDATE {table} SET {column} = {column} - {micros} WHERE {filter}")).await.unwrap();
}

/// The durable log on `backend` (its own database), and a connection to look into it.
async fn log_bus(backend: Backend) -> Option<(TestDb, LogBus, DatabaseConnection)> {
    let testdb = TestDb::create(backend, "buslog").await?;
    let bus = LogBus::connect(&testdb.url, &db_settings()).await.unwrap();
    let db = clm_platform::db::connect(&testdb.url, &db_settings()).await.unwrap();
    Some((testdb, bus, db))
}

async fn old_published_outbox_rows_go_unsent_and_recent_ones_stay(backend: Backend) {
    let Some((testdb, db)) = migrated(backend, "pruneoutbox").await else { return };
    let Some((logdb, bus, _)) = log_bus(Backend::Sqlite).await else { return };
    let outbox = OutboxWriter::new("svc");
    // 2,500 events published a week and a day ago: three batches of deletes.
    produce(&db, &outbox, 2500).await;
    relay_all(&db, &bus).await;
    backdate(&db, "outbox", "publish_time", "publish_time IS NOT NULL", DAY * 8).await;
    // 5 published just now.
    produce(&db, &outbox, 5).await;
    relay_all(&db, &bus).await;
    // 7 never published, written a month ago (the bus was down all along).
    produce(&db, &outbox, 7).await;
    backdate(&db, "outbox", "create_time", "publish_time IS NULL", DAY * 30).await;
    assert_eq!(pending(&db).await.unwrap(), 7);

    assert_eq!(prune_outbox(&db, DAY * 7).await.unwrap(), 2500, "every row published over a week ago");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM outbox").await, 12);
    assert_eq!(pending(&db).await.unwrap(), 7, "unsent rows are never pruned, however old");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM outbox WHERE publish_time IS NOT NULL").await, 5);
    assert_eq!(prune_outbox(&db, DAY * 7).await.unwrap(), 0);
    // The unsent ones still go out, then age like the others.
    relay_all(&db, &bus).await;
    assert_eq!(pending(&db).await.unwrap(), 0);
    assert_eq!(prune_outbox(&db, HOUR).await.unwrap(), 0, "published a moment ago");
    db.close().await.ok();
    testdb.cleanup().await;
    logdb.cleanup().await;
}

/// Events applied a month ago: their inbox keys and their log entries go (both past 30 days);
/// the recent ones stay, so when the consumer is rewound the bus delivers only what the inbox
/// still remembers, and nothing is applied twice. A replay rebuilds from the first retained
/// event.
async fn inbox_forgets_old_keys_and_still_drops_redeliveries(backend: Backend) {
    let Some((testdb, db)) = migrated(backend, "pruneinbox").await else { return };
    let Some((logdb, bus, logconn)) = log_bus(backend).await else { return };
    let outbox = OutboxWriter::new("svc");
    let s = spec("reader", "svc");
    produce(&db, &outbox, 10).await;
    relay_all(&db, &bus).await;
    drain(&bus, &db, &s).await;
    // These ten were published and applied 31 days ago.
    backdate(&db, "inbox", "process_time", "1 = 1", DAY * 31).await;
    backdate(&logconn, "bus_log", "append_time", "1 = 1", DAY * 31).await;
    produce(&db, &outbox, 10).await;
    relay_all(&db, &bus).await;
    drain(&bus, &db, &s).await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM applied").await, 20);

    assert_eq!(prune_inbox(&db, DAY * 30).await.unwrap(), 10, "keys processed over 30 days ago");
    assert_eq!(bus.prune(DAY * 30).await.unwrap(), 10, "log entries appended over 30 days ago");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM inbox").await, 10);
    assert_eq!(prune_inbox(&db, DAY * 30).await.unwrap(), 0);

    // Everything still on the bus is delivered again (a rewound consumer, a lost ack): each
    // one's key is still there, so nothing is applied twice.
    bus.reset(&s.name, &s.prefixes[0]).await.unwrap();
    drain(&bus, &db, &s).await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM applied").await, 20, "redeliveries within retention are dropped");
    assert_eq!(count(&db, "SELECT COUNT(DISTINCT event_id) FROM applied").await, 20);

    // A replay rebuilds the read model from the first event still retained.
    replay(&bus, &db, &s, &Recorder).await.unwrap();
    drain(&bus, &db, &s).await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM applied").await, 10, "the ten retained events, once each");
    db.close().await.ok();
    logconn.close().await.ok();
    testdb.cleanup().await;
    logdb.cleanup().await;
}

/// A log entry goes only once every consumer registered on its stream has consumed it, even
/// one that has fetched but never acknowledged anything; a stream nobody reads ages out.
async fn the_log_keeps_what_a_consumer_has_not_consumed(backend: Backend) {
    let Some((logdb, bus, conn)) = log_bus(backend).await else { return };
    for i in 0..30 {
        bus.publish("clm.orders.order.OrderPlaced", &format!("a{i}"), Bytes::from(format!("a{i}"))).await.unwrap();
    }
    for i in 0..5 {
        bus.publish("clm.quiet.thing.Happened", &format!("b{i}"), Bytes::new()).await.unwrap();
    }
    let orders = "clm.orders.";
    let wait = Duration::from_millis(10);
    // "fast" consumed all of orders; "slow" fetched once and acknowledged nothing (stuck on
    // the first event).
    let all = bus.fetch("fast", orders, 100, wait).await.unwrap();
    assert_eq!(all.len(), 30);
    all.into_iter().last().unwrap().ack().await.unwrap();
    drop(bus.fetch("slow", orders, 100, wait).await.unwrap());
    backdate(&conn, "bus_log", "append_time", "1 = 1", DAY * 2).await;
    let left = |stream: &'static str| {
        let conn = conn.clone();
        async move { count(&conn, &format!("SELECT COUNT(*) FROM bus_log WHERE stream = '{stream}'")).await }
    };

    assert_eq!(bus.prune(DAY).await.unwrap(), 5, "only the stream nobody reads");
    assert_eq!((left(orders).await, left("clm.quiet.").await), (30, 0));
    // "slow" gets through the first ten.
    let ten = bus.fetch("slow", orders, 10, wait).await.unwrap();
    ten.into_iter().last().unwrap().ack().await.unwrap();
    assert_eq!(bus.prune(DAY).await.unwrap(), 10);
    assert_eq!(left(orders).await, 20);
    // Three new ones; both consumers read everything; only the old ones go.
    for i in 30..33 {
        bus.publish("clm.orders.order.OrderPlaced", &format!("a{i}"), Bytes::from(format!("a{i}"))).await.unwrap();
    }
    for consumer in ["fast", "slow"] {
        let rest = bus.fetch(consumer, orders, 100, wait).await.unwrap();
        rest.into_iter().last().unwrap().ack().await.unwrap();
    }
    assert_eq!(bus.prune(DAY).await.unwrap(), 20);
    assert_eq!(left(orders).await, 3, "the recent entries stay");
    assert_eq!(bus.prune(DAY).await.unwrap(), 0);

    // Replay within the retention: a rewound consumer reads from the first retained entry, in
    // order, and the pruner keeps what it has to read again.
    bus.reset("fast", orders).await.unwrap();
    backdate(&conn, "bus_log", "append_time", "1 = 1", DAY * 2).await;
    assert_eq!(bus.prune(DAY).await.unwrap(), 0, "a rewound consumer has consumed nothing yet");
    let again = bus.fetch("fast", orders, 100, wait).await.unwrap();
    let payloads: Vec<Bytes> = again.iter().map(|d| d.payload.clone()).collect();
    assert_eq!(payloads, ["a30", "a31", "a32"].map(|s| Bytes::from(s.to_owned())));
    conn.close().await.ok();
    logdb.cleanup().await;
}

clm_testkit::backend_tests!(
    old_published_outbox_rows_go_unsent_and_recent_ones_stay,
    inbox_forgets_old_keys_and_still_drops_redeliveries,
    the_log_keeps_what_a_consumer_has_not_consumed,
);

/// A service with an outbox and an inbox and no API: what `serve` does around it.
struct Plain;

impl clm_platform::runtime::Service for Plain {
    const NAME: &'static str = "contacts";
    type Migrator = TestMigrator;

    async fn register(
        _: &clm_platform::server::Shared,
        _: DatabaseConnection,
        _: &mut tonic::service::RoutesBuilder,
    ) -> anyhow::Result<Vec<&'static str>> {
        Ok(Vec::new())
    }
}

/// Every server prunes its services' outboxes and inboxes and its bus in the background,
/// starting one interval after it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_runs_the_pruner() {
    let (testdb, db) = migrated(Backend::Sqlite, "pruneserver").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log_url = format!("sqlite://{}/events.db?mode=rwc", dir.path().display());
    let bus = LogBus::connect(&log_url, &db_settings()).await.unwrap();
    let logconn = clm_platform::db::connect(&log_url, &db_settings()).await.unwrap();
    let outbox = OutboxWriter::new("svc");
    produce(&db, &outbox, 40).await;
    relay_all(&db, &bus).await;
    drain(&bus, &db, &spec("reader", "svc")).await;
    backdate(&db, "outbox", "publish_time", "1 = 1", DAY * 2).await;
    backdate(&db, "inbox", "process_time", "1 = 1", DAY * 2).await;
    backdate(&logconn, "bus_log", "append_time", "1 = 1", DAY * 2).await;
    produce(&db, &outbox, 3).await;

    let settings = clm_testkit::settings(&[
        ("CLM_CONTACTS__DATABASE_URL", testdb.url.as_str()),
        ("CLM_EVENTS__LOG_DATABASE_URL", log_url.as_str()),
        ("CLM_EVENTS__PRUNE_INTERVAL_MS", "1000"),
        ("CLM_EVENTS__OUTBOX_RETENTION_HOURS", "24"),
        ("CLM_EVENTS__INBOX_RETENTION_HOURS", "24"),
        ("CLM_EVENTS__LOG_RETENTION_HOURS", "24"),
    ]);
    let started = std::time::Instant::now();
    let server = clm_testkit::spawn::<Plain>(settings).await;
    let counts = async || {
        (
            count(&db, "SELECT COUNT(*) FROM outbox").await,
            count(&db, "SELECT COUNT(*) FROM inbox").await,
            count(&logconn, "SELECT COUNT(*) FROM bus_log").await,
        )
    };
    clm_testkit::wait_for("old outbox rows, inbox keys and log entries pruned", async || {
        (counts().await == (3, 0, 0)).then_some(())
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(900), "the first pass waits an interval");
    assert_eq!(pending(&db).await.unwrap(), 3, "unsent events stay");
    server.stop().await.unwrap();
    db.close().await.ok();
    testdb.cleanup().await;
}

fn nats_settings(url: &str, prefix: &str, max_age_hours: u64, replicas: usize) -> EventSettings {
    EventSettings {
        transport: EventTransport::Nats,
        log_database_url: String::new(),
        nats_url: url.into(),
        nats_namespace: String::new(),
        stream_prefix: prefix.into(),
        consumer_prefix: String::new(),
        outbox_retention_hours: 168,
        inbox_retention_hours: max_age_hours,
        log_retention_hours: max_age_hours,
        stream_max_age_hours: max_age_hours,
        stream_replicas: replicas,
        prune_interval_ms: 300_000,
        relay_batch: 100,
        relay_poll_ms: 50,
        relay_linger_ms: 2,
        consumer_batch: 50,
        order_wait_ms: 60_000,
    }
}

/// Streams get `max_age` from the settings: a new one, and one an earlier version made
/// without limits (its other settings kept). Replicas a single server cannot hold are refused
/// naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_streams_get_the_configured_max_age() {
    let Some(url) = nats_url() else { return };
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    // Names of this run's own: streams of a failed run never overlap with the next run's.
    let run = uuid::Uuid::new_v4().simple().to_string().get(..8).unwrap().to_owned();
    let prefix = format!("TRET_{}", run.to_uppercase());
    let [old_svc, new_svc, r3_svc] = ["old", "new", "third"].map(|s| format!("{s}{run}"));
    let stream_of = |svc: &str| format!("{prefix}_{}", svc.to_uppercase());
    // As earlier versions made it: no max_age. An operator capped its size meanwhile.
    let old = stream_of(&old_svc);
    js.create_stream(jetstream::stream::Config {
        name: old.clone(),
        subjects: vec![format!("clm.{old_svc}.>")],
        max_bytes: 64 << 20,
        duplicate_window: Duration::from_mins(2),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(js.get_stream(&old).await.unwrap().cached_info().config.max_age, Duration::ZERO);

    let bus = Arc::new(NatsBus::connect(&nats_settings(&url, &prefix, 48, 1)).await.unwrap());
    for svc in [&old_svc, &new_svc] {
        bus.publish(&format!("clm.{svc}.thing.Happened"), &uuid::Uuid::now_v7().to_string(), Bytes::new())
            .await
            .unwrap();
    }
    let config = |name: String| {
        let js = js.clone();
        async move { js.get_stream(&name).await.unwrap().cached_info().config.clone() }
    };
    let old_config = config(old.clone()).await;
    assert_eq!(old_config.max_age, HOUR * 48, "an existing stream gets the limit");
    assert_eq!(old_config.max_bytes, 64 << 20, "and keeps what else was set");
    assert_eq!(old_config.num_replicas, 1);
    let new_config = config(stream_of(&new_svc)).await;
    assert_eq!((new_config.max_age, new_config.num_replicas), (HOUR * 48, 1), "a new stream is made with it");
    assert_eq!(new_config.duplicate_window, Duration::from_mins(2));

    // Three replicas need a clustered NATS; a single server refuses, and the error says which
    // key asked for them.
    let r3 = NatsBus::connect(&nats_settings(&url, &prefix, 48, 3)).await.unwrap();
    let err = r3.publish(&format!("clm.{r3_svc}.thing.Happened"), "x", Bytes::new()).await.unwrap_err().to_string();
    assert!(err.contains("events.stream_replicas"), "{err}");

    bus.delete_streams().await.unwrap();
    r3.delete_streams().await.ok();
    let _ = js.delete_stream(stream_of(&r3_svc)).await;
}
