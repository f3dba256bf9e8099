//! Outbox → relay → bus → inbox, on the durable log bus and on NATS JetStream, against real
//! SQLite and PostgreSQL: exactly-once effect, per-aggregate order, relay crash, broker outage,
//! replay.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
mod common;

use clm_platform::TenantId;
use clm_platform::config::{EventSettings, EventTransport};
use clm_platform::events::bus::{Delivery, EventBus};
use clm_platform::events::consumer::{consume_once, replay};
use clm_platform::events::log_bus::LogBus;
use clm_platform::events::nats::NatsBus;
use clm_platform::events::outbox::{OutboxWriter, pending, relay_once};
use clm_proto::events::v1 as ev;
use clm_proto::events::v1::event_envelope::Payload;
use clm_testkit::{Backend, TestDb};
use common::{Recorder, TestMigrator, applied, db_settings, drain, nats_url, spec};
use sea_orm::DatabaseConnection;

/// Append `per_aggregate` events for each of `aggregates`, interleaved, one transaction each.
async fn produce(
    db: &DatabaseConnection,
    outbox: &OutboxWriter,
    aggregates: &[&str],
    per_aggregate: usize,
    start: usize,
) {
    let tenant = TenantId::parse("t1").unwrap();
    for n in start..start + per_aggregate {
        for agg in aggregates {
            let txn = clm_platform::events::UnitOfWork::begin(db).await.unwrap();
            outbox
                .append(
                    &txn,
                    &tenant,
                    "contact",
                    agg,
                    0,
                    Payload::ContactUpdated(ev::ContactUpdated {
                        contact_id: (*agg).to_string(),
                        changed_paths: vec![n.to_string()],
                        facts: None,
                    }),
                )
                .await
                .unwrap();
            txn.commit().await.unwrap();
        }
    }
}

/// A service name of its own per test, so JetStream streams (one per service) never overlap.
fn service_name() -> &'static str {
    Box::leak(format!("svc{}", uuid::Uuid::new_v4().simple().to_string().get(..10).unwrap()).into_boxed_str())
}

fn assert_exactly_once_in_order(rows: &[(String, i64)], aggregates: &[&str], per_aggregate: usize) {
    assert_eq!(rows.len(), aggregates.len() * per_aggregate, "each event applied exactly once");
    let mut by_agg: HashMap<&str, Vec<i64>> = HashMap::new();
    for (a, n) in rows {
        by_agg.entry(a.as_str()).or_default().push(*n);
    }
    for a in aggregates {
        let seq = &by_agg[a];
        let expected: Vec<i64> = (0..per_aggregate as i64).collect();
        assert_eq!(seq, &expected, "order within aggregate {a}");
    }
}

// ---- transports ----

#[derive(Clone, Copy, Debug)]
enum Transport {
    Log,
    Nats,
}

fn event_settings(transport: EventTransport, nats_url: &str, log_url: &str, prefix: &str) -> EventSettings {
    EventSettings {
        transport,
        log_database_url: log_url.into(),
        nats_url: nats_url.into(),
        nats_namespace: String::new(),
        stream_prefix: prefix.into(),
        consumer_prefix: String::new(),
        outbox_retention_hours: 168,
        inbox_retention_hours: 720,
        log_retention_hours: 720,
        stream_max_age_hours: 720,
        stream_replicas: 1,
        prune_interval_ms: 300_000,
        relay_batch: 100,
        relay_poll_ms: 50,
        relay_linger_ms: 2,
        consumer_batch: 50,
        order_wait_ms: 60_000,
    }
}

/// Keeps what a test made; NATS streams are deleted when it ends.
struct Env {
    _dir: tempfile::TempDir,
    nats: Option<Arc<NatsBus>>,
    /// What another replica connects with: the log's URL, or NATS settings.
    log_url: String,
    nats_settings: Option<EventSettings>,
}

impl Env {
    async fn cleanup(self) {
        if let Some(n) = self.nats {
            n.delete_streams().await.unwrap();
        }
    }
}

/// The same bus as another replica would open it (its own connection, the same streams and
/// durable consumers).
async fn another_bus(env: &Env) -> Arc<dyn EventBus> {
    match &env.nats_settings {
        Some(s) => Arc::new(NatsBus::connect(s).await.unwrap()),
        None => Arc::new(LogBus::connect(&env.log_url, &db_settings()).await.unwrap()),
    }
}

async fn make_bus(t: Transport, tag: &str) -> Option<(Arc<dyn EventBus>, Env)> {
    let dir = tempfile::tempdir().unwrap();
    match t {
        Transport::Log => {
            let url = format!("sqlite://{}/bus.db?mode=rwc", dir.path().display());
            let bus = Arc::new(LogBus::connect(&url, &db_settings()).await.unwrap());
            Some((bus, Env { _dir: dir, nats: None, log_url: url, nats_settings: None }))
        }
        Transport::Nats => {
            let url = nats_url()?;
            // A fresh stream name per test so runs never see each other's events.
            let prefix = format!(
                "T{}_{}",
                tag.to_uppercase(),
                uuid::Uuid::new_v4().simple().to_string().get(..8).unwrap().to_uppercase()
            );
            let s = event_settings(EventTransport::Nats, &url, "", &prefix);
            let bus = Arc::new(NatsBus::connect(&s).await.unwrap());
            Some((bus.clone(), Env { _dir: dir, nats: Some(bus), log_url: String::new(), nats_settings: Some(s) }))
        }
    }
}

async fn setup(
    backend: Backend,
    t: Transport,
    tag: &str,
) -> Option<(TestDb, DatabaseConnection, Arc<dyn EventBus>, Env)> {
    let (bus, dir) = make_bus(t, tag).await?;
    let db = TestDb::create(backend, tag).await?;
    let conn = clm_platform::db::connect(&db.url, &db_settings()).await.unwrap();
    clm_platform::db::migrate::<TestMigrator>(&conn).await.unwrap();
    Some((db, conn, bus, dir))
}

const AGGS: [&str; 3] = ["a", "b", "c"];

async fn exactly_once_in_order(backend: Backend, t: Transport) {
    let Some((testdb, db, bus, env)) = setup(backend, t, "once").await else { return };
    let svc = service_name();
    let outbox = OutboxWriter::new(svc);
    produce(&db, &outbox, &AGGS, 20, 0).await;
    assert_eq!(pending(&db).await.unwrap(), 60);
    while relay_once(&db, bus.as_ref(), 25).await.unwrap() > 0 {}
    assert_eq!(pending(&db).await.unwrap(), 0);
    let s = spec("once", svc);
    drain(bus.as_ref(), &db, &s).await;
    assert_exactly_once_in_order(&applied(&db).await, &AGGS, 20);

    // Everything delivered again (a rewound consumer, as after a lost ack): nothing changes.
    bus.reset(&s.name, &s.prefixes[0]).await.unwrap();
    drain(bus.as_ref(), &db, &s).await;
    assert_exactly_once_in_order(&applied(&db).await, &AGGS, 20);

    // Replay rebuilds the read model from the first event, to the same result.
    replay(bus.as_ref(), &db, &s, &Recorder).await.unwrap();
    assert!(applied(&db).await.is_empty());
    drain(bus.as_ref(), &db, &s).await;
    assert_exactly_once_in_order(&applied(&db).await, &AGGS, 20);
    db.close().await.ok();
    testdb.cleanup().await;
    env.cleanup().await;
}

/// Wraps a real bus: can be "down" (publish fails), and can hang forever on the k-th publish
/// so the relay can be killed between publishing and marking rows sent.
#[derive(Debug)]
struct Faulty {
    inner: Arc<dyn EventBus>,
    down: AtomicBool,
    hang_after: AtomicUsize,
    published: AtomicUsize,
}

#[async_trait]
impl EventBus for Faulty {
    async fn publish(&self, subject: &str, event_id: &str, payload: Bytes) -> anyhow::Result<()> {
        if self.down.load(Ordering::SeqCst) {
            anyhow::bail!("broker unreachable");
        }
        if self.published.load(Ordering::SeqCst) >= self.hang_after.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.publish(subject, event_id, payload).await?;
        self.published.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn fetch(&self, consumer: &str, prefix: &str, max: usize, wait: Duration) -> anyhow::Result<Vec<Delivery>> {
        self.inner.fetch(consumer, prefix, max, wait).await
    }
    async fn reset(&self, consumer: &str, prefix: &str) -> anyhow::Result<()> {
        self.inner.reset(consumer, prefix).await
    }
}

async fn relay_killed_mid_batch(backend: Backend, t: Transport) {
    let Some((testdb, db, bus, env)) = setup(backend, t, "kill").await else { return };
    let svc = service_name();
    let outbox = OutboxWriter::new(svc);
    produce(&db, &outbox, &AGGS, 10, 0).await;
    let faulty = Arc::new(Faulty {
        inner: bus.clone(),
        down: AtomicBool::new(false),
        hang_after: AtomicUsize::new(7),
        published: AtomicUsize::new(0),
    });
    // The relay publishes 7 events of its batch, then is killed before marking any as sent.
    let f = faulty.clone();
    let dbc = db.clone();
    let task = tokio::spawn(async move { relay_once(&dbc, f.as_ref(), 100).await });
    for _ in 0..100 {
        if faulty.published.load(Ordering::SeqCst) == 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    let _ = task.await;
    assert_eq!(faulty.published.load(Ordering::SeqCst), 7);
    assert_eq!(pending(&db).await.unwrap(), 30, "nothing was marked sent");
    // Restart: everything is published (7 of them twice), then consumed exactly once.
    faulty.hang_after.store(usize::MAX, Ordering::SeqCst);
    while relay_once(&db, faulty.as_ref(), 100).await.unwrap() > 0 {}
    assert_eq!(faulty.published.load(Ordering::SeqCst), 37);
    drain(bus.as_ref(), &db, &spec("kill", svc)).await;
    assert_exactly_once_in_order(&applied(&db).await, &AGGS, 10);
    db.close().await.ok();
    testdb.cleanup().await;
    env.cleanup().await;
}

async fn broker_down_then_back(backend: Backend, t: Transport) {
    let Some((testdb, db, bus, env)) = setup(backend, t, "down").await else { return };
    let svc = service_name();
    let outbox = OutboxWriter::new(svc);
    let faulty = Arc::new(Faulty {
        inner: bus.clone(),
        down: AtomicBool::new(true),
        hang_after: AtomicUsize::new(usize::MAX),
        published: AtomicUsize::new(0),
    });
    // The relay runs all along, backing off while the broker is down.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let opts = clm_platform::events::outbox::RelayOptions {
        poll: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..Default::default()
    };
    let relay = clm_platform::events::outbox::spawn_relay(svc, db.clone(), faulty.clone(), &outbox, opts, stop_rx);
    produce(&db, &outbox, &AGGS, 5, 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pending(&db).await.unwrap(), 15, "writes succeed while the broker is down; the outbox grows");
    produce(&db, &outbox, &AGGS, 5, 5).await;
    faulty.down.store(false, Ordering::SeqCst);
    for _ in 0..100 {
        if pending(&db).await.unwrap() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pending(&db).await.unwrap(), 0, "caught up after the broker returned");
    stop_tx.send(true).unwrap();
    relay.await.unwrap();
    drain(bus.as_ref(), &db, &spec("down", svc)).await;
    assert_exactly_once_in_order(&applied(&db).await, &AGGS, 10);
    db.close().await.ok();
    testdb.cleanup().await;
    env.cleanup().await;
}

macro_rules! matrix {
    ($($name:ident),+) => {
        mod log_sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Backend::Sqlite, super::Transport::Log).await; } )+ }
        mod log_postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Backend::Postgres, super::Transport::Log).await; } )+ }
        mod nats_sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Backend::Sqlite, super::Transport::Nats).await; } )+ }
        mod nats_postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Backend::Postgres, super::Transport::Nats).await; } )+ }
    };
}

/// Hands out what the real bus fetched after a random pause, so replicas sharing a durable
/// consumer finish their batches in a shuffled order.
#[derive(Debug)]
struct Jitter(Arc<dyn EventBus>);

#[async_trait]
impl EventBus for Jitter {
    async fn publish(&self, subject: &str, event_id: &str, payload: Bytes) -> anyhow::Result<()> {
        self.0.publish(subject, event_id, payload).await
    }
    async fn fetch(&self, consumer: &str, prefix: &str, max: usize, wait: Duration) -> anyhow::Result<Vec<Delivery>> {
        let got = self.0.fetch(consumer, prefix, max, wait).await?;
        let pause = rand::random_range(0..30);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        Ok(got)
    }
    async fn reset(&self, consumer: &str, prefix: &str) -> anyhow::Result<()> {
        self.0.reset(consumer, prefix).await
    }
}

/// Three replicas of one consumer (each its own database pool and bus connection, sharing the
/// durable consumer) take small batches in a shuffled order, and a fourth fetches a batch and
/// dies without acknowledging it (kill -9: the bus hands those events out again only after its
/// ack deadline, long after their successors went to the others). Each aggregate's events are
/// still applied exactly once and in the order they were committed.
async fn replicas_apply_each_aggregate_in_order(backend: Backend, t: Transport) {
    let Some((testdb, db, bus, env)) = setup(backend, t, "replicas").await else { return };
    let svc = service_name();
    let outbox = OutboxWriter::new(svc);
    let aggs = ["r1", "r2", "r3", "r4", "r5", "r6"];
    produce(&db, &outbox, &aggs, 30, 0).await;
    while relay_once(&db, bus.as_ref(), 100).await.unwrap() > 0 {}
    let mut s = spec("replicas", svc);
    s.batch = 7;

    // The replica that dies holding a batch.
    let doomed = another_bus(&env).await;
    let dropped = doomed.fetch(&s.name, &s.prefixes[0], s.batch, s.wait).await.unwrap();
    assert!(!dropped.is_empty());
    std::mem::forget(dropped);

    let total = aggs.len() * 30;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let bus: Arc<dyn EventBus> = Arc::new(Jitter(another_bus(&env).await));
        let db = clm_platform::db::connect(&testdb.url, &db_settings()).await.unwrap();
        let (s, counter) = (s.clone(), db.clone());
        replicas.push(tokio::spawn(async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(90);
            while std::time::Instant::now() < deadline {
                consume_once(bus.as_ref(), &db, &s, &s.prefixes[0], &Recorder).await.unwrap();
                if applied(&counter).await.len() >= total {
                    return;
                }
            }
        }));
    }
    for r in replicas {
        r.await.unwrap();
    }
    assert_exactly_once_in_order(&applied(&db).await, &aggs, 30);
    db.close().await.ok();
    testdb.cleanup().await;
    env.cleanup().await;
}

matrix!(exactly_once_in_order, relay_killed_mid_batch, broker_down_then_back, replicas_apply_each_aggregate_in_order);

/// A real NATS server stopped and restarted: publishing fails while it is down, the relay's
/// outbox keeps the events, and after the restart everything arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_nats_restart() {
    let bin = std::path::Path::new("/usr/sbin/nats-server");
    if !bin.exists() {
        eprintln!("skipped: real_nats_restart (no /usr/sbin/nats-server)");
        return;
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let store = tempfile::tempdir().unwrap();
    let start = || {
        std::process::Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let wait_up = || async {
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nats-server did not start");
    };
    let mut server = start();
    wait_up().await;
    let url = format!("nats://127.0.0.1:{port}");
    let nats = Arc::new(NatsBus::connect(&event_settings(EventTransport::Nats, &url, "", "RESTART")).await.unwrap());
    let bus: Arc<dyn EventBus> = nats.clone();
    let testdb = TestDb::create(Backend::Sqlite, "natsrestart").await.unwrap();
    let db = clm_platform::db::connect(&testdb.url, &db_settings()).await.unwrap();
    clm_platform::db::migrate::<TestMigrator>(&db).await.unwrap();
    let svc = service_name();
    let outbox = OutboxWriter::new(svc);
    produce(&db, &outbox, &AGGS, 3, 0).await;
    while relay_once(&db, bus.as_ref(), 100).await.unwrap() > 0 {}

    server.kill().unwrap();
    server.wait().unwrap();
    produce(&db, &outbox, &AGGS, 3, 3).await;
    let r = tokio::time::timeout(Duration::from_secs(20), relay_once(&db, bus.as_ref(), 100)).await;
    assert!(!matches!(r, Ok(Ok(n)) if n > 0), "nothing can be published while NATS is down");
    assert_eq!(pending(&db).await.unwrap(), 9);

    let mut server = start();
    wait_up().await;
    let mut caught_up = false;
    for _ in 0..100 {
        match relay_once(&db, bus.as_ref(), 100).await {
            Ok(_) if pending(&db).await.unwrap() == 0 => {
                caught_up = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    assert!(caught_up, "the outbox drains once NATS is back");
    drain(bus.as_ref(), &db, &spec("restart", svc)).await;
    assert_exactly_once_in_order(&applied(&db).await, &AGGS, 6);
    server.kill().ok();
    server.wait().ok();
}

/// One relay at a time holds a service's lease; the holder renews it, a stranger waits for it
/// to expire, and a released lease is free at once (graceful stop, or a restart in the same
/// slot taking it back).
async fn leases(backend: Backend) {
    use clm_platform::events::outbox::{hold_lease, release_lease};
    let Some(testdb) = TestDb::create(backend, "lease").await else { return };
    let db = clm_platform::db::connect(&testdb.url, &db_settings()).await.unwrap();
    clm_platform::db::migrate::<TestMigrator>(&db).await.unwrap();
    let long = Duration::from_mins(1);
    assert!(hold_lease(&db, "svc", "a", long).await.unwrap(), "a free lease is taken");
    assert!(hold_lease(&db, "svc", "a", long).await.unwrap(), "the holder renews it");
    assert!(!hold_lease(&db, "svc", "b", long).await.unwrap(), "another holder waits");
    assert!(hold_lease(&db, "other", "b", long).await.unwrap(), "leases are per name");
    release_lease(&db, "svc", "b").await.unwrap();
    assert!(!hold_lease(&db, "svc", "b", long).await.unwrap(), "only the holder can release");
    release_lease(&db, "svc", "a").await.unwrap();
    assert!(hold_lease(&db, "svc", "b", long).await.unwrap(), "a released lease is free at once");
    assert!(!hold_lease(&db, "svc", "a", long).await.unwrap());
    assert!(hold_lease(&db, "short", "a", Duration::from_millis(1)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(hold_lease(&db, "short", "b", long).await.unwrap(), "an expired lease is free");
    db.close().await.ok();
    testdb.cleanup().await;
}

#[tokio::test]
async fn leases_sqlite() {
    leases(Backend::Sqlite).await;
}

#[tokio::test]
async fn leases_postgres() {
    leases(Backend::Postgres).await;
}

/// Appends one event per applied event to the outbox it is given, in the consumer's unit of
/// work (as a service's consumer that publishes does).
struct Forwarder(OutboxWriter);

#[async_trait]
impl clm_platform::events::inbox::EventHandler for Forwarder {
    async fn handle(&self, work: &clm_platform::events::UnitOfWork, e: &ev::EventEnvelope) -> clm_platform::Result<()> {
        let tenant = TenantId::parse(&e.tenant_id).unwrap();
        let payload = Payload::ContactUpdated(ev::ContactUpdated {
            contact_id: format!("fwd-{}", e.aggregate_id),
            changed_paths: vec!["0".into()],
            facts: None,
        });
        self.0.append(work, &tenant, "contact", &format!("fwd-{}", e.aggregate_id), 0, payload).await?;
        Ok(())
    }

    async fn reset(&self, _txn: &sea_orm::DatabaseTransaction) -> clm_platform::Result<()> {
        Ok(())
    }
}

/// Every way of writing events wakes the relay once its unit of work commits — an API's
/// transaction, a one-statement insert, a consumer's batch — so with the relay's poll at a
/// minute each is still published at once; a unit of work dropped uncommitted leaves nothing.
async fn a_unit_of_work_wakes_the_relay_on_commit(backend: Backend) {
    use clm_platform::events::UnitOfWork;
    let Some((testdb, db, bus, env)) = setup(backend, Transport::Log, "wake").await else { return };
    let svc = service_name();
    let outbox = OutboxWriter::new(svc);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let opts = clm_platform::events::outbox::RelayOptions { poll: Duration::from_mins(1), ..Default::default() };
    let relay = clm_platform::events::outbox::spawn_relay(svc, db.clone(), bus.clone(), &outbox, opts, stop_rx);
    let all_sent = async |what: &str| {
        for _ in 0..200 {
            if pending(&db).await.unwrap() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what}: still unsent after 10 s (the relay polls only every minute)");
    };
    let tenant = TenantId::parse("t1").unwrap();
    let updated = |id: &str| {
        Payload::ContactUpdated(ev::ContactUpdated {
            contact_id: id.into(),
            changed_paths: vec!["0".into()],
            facts: None,
        })
    };

    produce(&db, &outbox, &["a"], 1, 0).await;
    all_sent("an event appended in a unit of work").await;

    let dropped = UnitOfWork::begin(&db).await.unwrap();
    outbox.append(&dropped, &tenant, "contact", "never", 0, updated("never")).await.unwrap();
    drop(dropped);
    assert_eq!(pending(&db).await.unwrap(), 0, "a unit of work dropped uncommitted wrote nothing");

    let (event, _) = outbox.insert(&tenant, "contact", "b", 0, updated("b"));
    UnitOfWork::insert_all(&db, Vec::new(), event).await.unwrap();
    all_sent("an event inserted in one statement").await;

    let work = UnitOfWork::begin(&db).await.unwrap();
    work.insert(outbox.insert_many(&tenant, "contact", [("c".to_string(), 0, updated("c"))])).await.unwrap();
    work.commit().await.unwrap();
    all_sent("events inserted in a unit of work").await;

    // A consumer's handler appends: its batch's commit wakes the relay.
    let s = spec("wake", svc);
    let mut forwarded = 0;
    for _ in 0..50 {
        forwarded +=
            consume_once(bus.as_ref(), &db, &s, &s.prefixes[0], &Forwarder(outbox.clone())).await.unwrap().done;
        if forwarded >= 3 {
            break;
        }
    }
    assert_eq!(forwarded, 3, "a, b and c consumed");
    all_sent("the events a consumer appended").await;

    stop_tx.send(true).unwrap();
    relay.await.unwrap();
    db.close().await.ok();
    testdb.cleanup().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_of_work_wakes_the_relay_on_commit_sqlite() {
    a_unit_of_work_wakes_the_relay_on_commit(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_of_work_wakes_the_relay_on_commit_postgres() {
    a_unit_of_work_wakes_the_relay_on_commit(Backend::Postgres).await;
}
