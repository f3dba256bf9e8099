//! `db::insert_all` and `db::begin_write` against real SQLite and PostgreSQL: every insert lands or none does; concurrent writers all commit.

use clm_platform::config::DatabaseSettings;
use clm_platform::db;
use clm_testkit::{Backend, TestDb};
use sea_orm::sea_query::{Alias, Expr, Func, Index, InsertStatement, Query, Table};
use sea_orm::{ConnectionTrait, DatabaseConnection};

fn settings() -> DatabaseSettings {
    DatabaseSettings {
        max_connections: 4,
        min_connections: 1,
        connect_timeout_ms: 5000,
        acquire_timeout_ms: 5000,
        ping_idle_after_ms: 30_000,
        min_free_bytes: 0,
        migrate_on_start: true,
    }
}

async fn setup(backend: Backend) -> Option<(TestDb, DatabaseConnection)> {
    setup_with(backend, &settings()).await
}

/// Tables `parent` and `child` (id, note) and a unique index on `parent.note`.
async fn setup_with(backend: Backend, settings: &DatabaseSettings) -> Option<(TestDb, DatabaseConnection)> {
    let tdb = TestDb::create(backend, "insert_all").await?;
    let conn = db::connect(&tdb.url, settings).await.expect("connect");
    for t in ["parent", "child"] {
        conn.execute(
            Table::create()
                .table(Alias::new(t))
                .col(sea_orm::sea_query::ColumnDef::new(Alias::new("id")).string().not_null().primary_key())
                .col(sea_orm::sea_query::ColumnDef::new(Alias::new("note")).string().not_null()),
        )
        .await
        .expect("create table");
    }
    conn.execute(Index::create().name("ux_parent_note").table(Alias::new("parent")).col(Alias::new("note")).unique())
        .await
        .expect("create index");
    Some((tdb, conn))
}

fn row(table: &str, id: &str, note: &str) -> InsertStatement {
    Query::insert()
        .into_table(Alias::new(table))
        .columns([Alias::new("id"), Alias::new("note")])
        .values_panic([id.into(), note.into()])
        .to_owned()
}

async fn count(conn: &DatabaseConnection, table: &str) -> i64 {
    let q = Query::select().expr(Func::count(Expr::col(Alias::new("id")))).from(Alias::new(table)).to_owned();
    let r = conn.query_one(&q).await.expect("count").expect("a row");
    r.try_get_by_index::<i64>(0).expect("a number")
}

async fn all_or_nothing(backend: Backend) {
    let Some((tdb, conn)) = setup(backend).await else { return };

    // Three rows in two tables, one write.
    db::insert_all(&conn, vec![row("parent", "p1", "first"), row("child", "c1", "of p1"), row("child", "c2", "of p1")])
        .await
        .expect("first write");
    assert_eq!((count(&conn, "parent").await, count(&conn, "child").await), (1, 2));

    // The parent violates the unique note: the children written with it must not land either,
    // wherever the failing insert is in the list.
    for order in [0, 1, 2] {
        let mut inserts = vec![row("child", "c3", "orphan?"), row("child", "c4", "orphan?")];
        inserts.insert(order, row("parent", "p2", "first"));
        let err = db::insert_all(&conn, inserts).await.expect_err("duplicate note");
        assert!(
            matches!(err.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_))),
            "a unique violation, got {err}"
        );
        assert_eq!((count(&conn, "parent").await, count(&conn, "child").await), (1, 2), "order {order}");
    }

    // One insert alone and an empty list.
    db::insert_all(&conn, vec![row("parent", "p3", "third")]).await.expect("single");
    db::insert_all(&conn, vec![]).await.expect("empty");
    assert_eq!(count(&conn, "parent").await, 2);
    drop(conn);
    tdb.cleanup().await;
}

#[tokio::test]
async fn insert_all_sqlite() {
    all_or_nothing(Backend::Sqlite).await;
}

#[tokio::test]
async fn insert_all_postgres() {
    all_or_nothing(Backend::Postgres).await;
}

/// Many tasks writing one database at once (on SQLite they queue for the file's writer
/// connection): every transaction commits, none is lost, and reads go on meanwhile.
async fn concurrent_writers_all_commit(backend: Backend) {
    use sea_orm::TransactionTrait as _;
    let Some((tdb, conn)) = setup(backend).await else { return };
    // A second connection to the same database (as another service of the process would have).
    let other = db::connect(&tdb.url, &settings()).await.expect("connect again");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let conn = if i % 2 == 0 { conn.clone() } else { other.clone() };
        tasks.spawn(async move {
            let txn = db::begin_write(&conn).await.expect("begin");
            let before = {
                let q =
                    Query::select().expr(Func::count(Expr::col(Alias::new("id")))).from(Alias::new("child")).to_owned();
                txn.query_one(&q).await.expect("count").expect("row").try_get_by_index::<i64>(0).expect("n")
            };
            txn.execute(&row("child", &format!("c{i}"), &format!("after {before}"))).await.expect("insert");
            tokio::task::yield_now().await;
            txn.commit().await.expect("commit");
        });
    }
    // A write transaction open: reads through the pool are not held up by it.
    let open = db::begin_write(&conn).await.expect("begin");
    open.execute(&row("parent", "p1", "held")).await.expect("insert");
    let seen = count(&other, "parent").await;
    assert_eq!(seen, 0, "the open write is not visible yet");
    open.commit().await.expect("commit");
    while let Some(r) = tasks.join_next().await {
        r.expect("writer task");
    }
    assert_eq!(count(&conn, "child").await, 40);
    assert_eq!(count(&other, "parent").await, 1);
    if backend == Backend::Postgres {
        // PostgreSQL runs the transactions side by side (read committed): counts only.
        drop((conn, other));
        tdb.cleanup().await;
        return;
    }
    // SQLite: one writer at a time, each saw the ones before it: the counts it read are
    // 0..39, each once.
    let q = Query::select().column(Alias::new("note")).from(Alias::new("child")).to_owned();
    let mut notes: Vec<String> = conn
        .query_all(&q)
        .await
        .expect("notes")
        .iter()
        .map(|r| r.try_get_by_index::<String>(0).expect("note"))
        .collect();
    notes.sort_by_key(|n| n.trim_start_matches("after ").parse::<i64>().expect("a count"));
    let expected: Vec<String> = (0..40).map(|n| format!("after {n}")).collect();
    assert_eq!(notes, expected, "writes were serialised, none lost");
    let _ = other.begin().await.expect("other pool still usable");
    drop((conn, other));
    tdb.cleanup().await;
}

#[tokio::test]
async fn concurrent_writers_sqlite() {
    concurrent_writers_all_commit(Backend::Sqlite).await;
}

#[tokio::test]
async fn concurrent_writers_postgres() {
    concurrent_writers_all_commit(Backend::Postgres).await;
}

/// A slow statement, long enough to be cancelled part way (~0.3 s or more).
fn slow_statement(backend: Backend) -> sea_orm::Statement {
    match backend {
        Backend::Postgres => sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT n FROM generate_series(1, 3) AS n, pg_sleep(0.3)",
        ),
        Backend::Sqlite => sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) SELECT count(*) FROM c",
        ),
    }
}

async fn answer(conn: &impl ConnectionTrait, sql: &str) -> i64 {
    let stmt = sea_orm::Statement::from_string(conn.get_database_backend(), sql);
    conn.query_one_raw(stmt).await.expect(sql).expect("a row").try_get_by_index::<i64>(0).expect("a number")
}

/// The pool hands a connection back without a ping when it is known clean and alive (the
/// patched sqlx drivers, vendor/README.md). A call cancelled part way (a deadline), or a
/// transaction dropped without commit, must still leave the connection clean for its next
/// user: no stale rows, no open transaction. One connection in the pool, so every step reuses it.
async fn connection_is_clean_after_cancelled_calls(backend: Backend) {
    use sea_orm::TransactionTrait as _;
    use std::time::Duration;
    let one = DatabaseSettings { max_connections: 1, ..settings() };
    let Some((tdb, conn)) = setup_with(backend, &one).await else { return };

    for round in 0..3 {
        // A transaction dropped after a write, without commit: rolled back before the next user.
        let txn = conn.begin().await.expect("begin");
        txn.execute(&row("parent", &format!("p{round}"), "never committed")).await.expect("insert");
        drop(txn);
        assert_eq!(count(&conn, "parent").await, round, "the dropped transaction was rolled back");

        // A query cancelled while the database works on it: the next answer is the next query's.
        let slow = tokio::time::timeout(Duration::from_millis(30), conn.query_all_raw(slow_statement(backend))).await;
        assert!(slow.is_err(), "the slow statement was cancelled");
        assert_eq!(answer(&conn, &format!("SELECT CAST({round} + 40 AS BIGINT)")).await, 40 + round, "no stale rows");

        // A transaction cancelled in the middle of a statement, after a cancelled query.
        let txn = conn.begin().await.expect("begin");
        txn.execute(&row("parent", &format!("q{round}"), "never committed")).await.expect("insert");
        let slow = tokio::time::timeout(Duration::from_millis(30), txn.query_all_raw(slow_statement(backend))).await;
        assert!(slow.is_err(), "the slow statement was cancelled");
        drop(txn);
        assert_eq!(count(&conn, "parent").await, round, "the cancelled transaction was rolled back");

        // And the connection still writes outside any transaction (not left inside one).
        conn.execute(&row("parent", &format!("r{round}"), &format!("kept {round}"))).await.expect("insert");
        assert_eq!(count(&conn, "parent").await, round + 1);
    }
    let other = db::connect(&tdb.url, &one).await.expect("a second pool");
    assert_eq!(count(&other, "parent").await, 3, "the plain inserts were committed, nothing else");
    drop((conn, other));
    tdb.cleanup().await;
}

#[tokio::test]
async fn connection_is_clean_after_cancelled_calls_sqlite() {
    connection_is_clean_after_cancelled_calls(Backend::Sqlite).await;
}

#[tokio::test]
async fn connection_is_clean_after_cancelled_calls_postgres() {
    connection_is_clean_after_cancelled_calls(Backend::Postgres).await;
}

/// A statement that takes a little while (tens of milliseconds), to be cancelled at any point.
fn short_statement(backend: Backend) -> sea_orm::Statement {
    match backend {
        Backend::Postgres => sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, "SELECT pg_sleep(0.04)"),
        Backend::Sqlite => sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 60000) SELECT count(*) FROM c",
        ),
    }
}

/// A thread that keeps a core busy until dropped (the machine under load, as when the SQLite
/// variant of the test above once failed while a release build was compiling).
struct Spinner(std::sync::Arc<std::sync::atomic::AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl Spinner {
    fn start() -> Spinner {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        Spinner(stop, Some(thread))
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.1.take() {
            let _ = thread.join();
        }
    }
}

/// The test above cancels at fixed points; this one at random ones, many times: a plain query
/// and then a transaction (begin, insert, a statement that takes a while, commit) are each
/// cancelled after a random delay, so cancellation lands before a command is sent, while BEGIN
/// waits for its answer, in the middle of a statement, while COMMIT is under way, or not at
/// all. After each round the connection's next user must see exactly what another connection
/// sees (nothing of a cancelled transaction, no transaction left open), and that is what was
/// committed. Half of the rounds run with a core kept busy. `CLM_TEST_CANCEL_ROUNDS` sets the
/// number of rounds (default 100), `CLM_TEST_CANCEL_SEED` replays a failing run's delays.
async fn connection_is_clean_after_random_cancellations(backend: Backend) {
    use sea_orm::TransactionTrait as _;
    use std::time::{Duration, Instant};
    let rounds: u64 = std::env::var("CLM_TEST_CANCEL_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let seed: u64 = std::env::var("CLM_TEST_CANCEL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        u64::from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").subsec_nanos()) | 1
    });
    let one = DatabaseSettings { max_connections: 1, ..settings() };
    let Some((tdb, conn)) = setup_with(backend, &one).await else { return };
    let other = db::connect(&tdb.url, &one).await.expect("a second pool");

    let started = Instant::now();
    conn.query_all_raw(short_statement(backend)).await.expect("the statement runs");
    // Delays up to three times the statement's own duration: some rounds are cancelled at each
    // stage of the transaction, others complete.
    let span = u64::try_from(started.elapsed().as_micros()).expect("micros") * 3 + 1;
    let mut state = seed;
    let mut delay = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        Duration::from_micros(state % span)
    };

    let (mut committed, mut cancelled_and_gone, mut completed) = (0i64, 0u64, 0u64);
    let mut spinner = None;
    for round in 0..rounds {
        if round == rounds / 2 {
            spinner = Some(Spinner::start());
        }
        let after = delay();
        let _ = tokio::time::timeout(after, conn.query_all_raw(short_statement(backend))).await;

        let after = delay();
        let id = format!("t{round}");
        let work = async {
            let txn = conn.begin().await?;
            txn.execute(&row("parent", &id, &id)).await?;
            txn.query_all_raw(short_statement(backend)).await?;
            txn.commit().await
        };
        let outcome = tokio::time::timeout(after, work).await;

        let what = format!("round {round}, transaction cancelled after {after:?}, seed {seed}");
        let mine = count(&conn, "parent").await;
        let theirs = count(&other, "parent").await;
        assert_eq!(mine, theirs, "the connection is left in no transaction ({what})");
        match outcome {
            Ok(result) => {
                result.unwrap_or_else(|e| panic!("an uncancelled transaction commits ({what}): {e}"));
                completed += 1;
                committed += 1;
                assert_eq!(mine, committed, "the committed transaction is there ({what})");
            }
            // Cancelled while COMMIT was under way, it may have committed: either way, all
            // of it or nothing.
            Err(_) => {
                assert!(mine == committed || mine == committed + 1, "{mine} rows, {committed} committed ({what})");
                if mine == committed {
                    cancelled_and_gone += 1;
                }
                committed = mine;
            }
        }
    }
    drop(spinner);
    eprintln!("{rounds} rounds (seed {seed}): {completed} committed, {cancelled_and_gone} cancelled and rolled back");
    assert!(completed > 0 && cancelled_and_gone > 0, "both outcomes occurred (seed {seed})");
    drop((conn, other));
    tdb.cleanup().await;
}

#[tokio::test]
async fn connection_is_clean_after_random_cancellations_sqlite() {
    connection_is_clean_after_random_cancellations(Backend::Sqlite).await;
}

#[tokio::test]
async fn connection_is_clean_after_random_cancellations_postgres() {
    connection_is_clean_after_random_cancellations(Backend::Postgres).await;
}

/// A tmpfs of `size` on a fresh directory (needs root), unmounted on drop.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "clm-test"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// Rows of `child` as a connection of its own sees them (what a restart would find).
async fn committed(url: &str) -> i64 {
    let fresh = sea_orm::Database::connect(url).await.expect("a connection of its own");
    let n = count(&fresh, "child").await;
    fresh.close().await.expect("close");
    n
}

/// SQLite rolls a transaction back by itself when a write fails for want of space (SQLITE_FULL),
/// and the `ROLLBACK` sqlx then sends fails ("no transaction is active"). sqlx 0.9 kept counting
/// the transaction as open, so every later transaction on that connection became a SAVEPOINT
/// inside one that was never committed: acknowledged, visible to its own connection, gone for
/// everyone else and after a restart. After a failed write, the next one must really commit.
#[tokio::test]
async fn a_write_after_a_full_disk_really_commits_sqlite() {
    let Some(disk) = SmallDisk::mount("2m") else {
        eprintln!("skipped: cannot mount a tmpfs (needs root)");
        return;
    };
    let url = format!("sqlite://{}/full.db?mode=rwc", disk.0.path().display());
    let conn = db::connect(&url, &settings()).await.expect("connect");
    conn.execute_unprepared("CREATE TABLE child (id TEXT PRIMARY KEY, note TEXT NOT NULL)").await.expect("table");
    let big = "x".repeat(64 * 1024);
    let (mut failures, mut acknowledged) = (0, 0);
    for i in 0..200 {
        let result = async {
            let txn = db::begin_write(&conn).await.map_err(|e| e.to_string())?;
            txn.execute(&row("child", &format!("big{i}"), &big)).await.map_err(|e| e.to_string())?;
            txn.commit().await.map_err(|e| e.to_string())
        }
        .await;
        match result {
            Ok(()) => {
                acknowledged += 1;
                assert_eq!(committed(&url).await, acknowledged, "write {i} was acknowledged: it is committed");
            }
            Err(_) => failures += 1,
        }
        if failures == 3 {
            break;
        }
    }
    assert_eq!(failures, 3, "the disk filled up");
    // Small writes still fit (pages freed by the rolled-back ones): each must be durable too.
    for i in 0..3 {
        let txn = db::begin_write(&conn).await.expect("begin");
        txn.execute(&row("child", &format!("small{i}"), "s")).await.expect("insert");
        txn.commit().await.expect("commit");
        acknowledged += 1;
        assert_eq!(committed(&url).await, acknowledged, "small write {i} after the full disk is committed");
    }
    // What the writer's own connection sees is what is committed: no transaction left open.
    assert_eq!(count(&db::writer(&conn).await, "child").await, acknowledged);
    conn.close().await.expect("close");
}

/// A commit is fsynced before it is acknowledged (SQLite `synchronous = FULL` on every
/// connection, the writer's too): NORMAL in WAL mode loses the last commits to a power cut.
#[tokio::test]
async fn sqlite_commits_are_synced_before_they_are_acknowledged() {
    let Some((testdb, conn)) = setup(Backend::Sqlite).await else { return };
    assert_eq!(answer(&conn, "PRAGMA synchronous").await, 2, "FULL on a pooled connection");
    assert_eq!(answer(&db::writer(&conn).await, "PRAGMA synchronous").await, 2, "FULL on the writer");
    conn.close().await.ok();
    testdb.cleanup().await;
}

/// The same state without a small disk: a conflict under `INSERT OR ROLLBACK` makes SQLite roll
/// the whole transaction back by itself. The `Transaction` (and any savepoint in it) still counts
/// itself open; until it is rolled back its statements and its commit must fail. Upstream
/// sqlx-sqlite ran them in autocommit mode (a half-applied transaction), and its failing
/// `ROLLBACK` left the connection counting a transaction for good. A savepoint's failure fails
/// its parent too: the parent's write before it is gone with the rollback, so the parent must
/// not go on and commit the rest.
#[tokio::test]
async fn a_transaction_sqlite_rolled_back_fails_until_dropped_sqlite() {
    use sea_orm::TransactionTrait as _;
    let one = DatabaseSettings { max_connections: 1, ..settings() };
    let Some((tdb, conn)) = setup_with(Backend::Sqlite, &one).await else { return };
    let other = db::connect(&tdb.url, &one).await.expect("a second pool");
    conn.execute(&row("parent", "p0", "committed first")).await.expect("insert");
    let conflict = "INSERT OR ROLLBACK INTO parent (id, note) VALUES ('p0', 'conflict')";

    let txn = conn.begin().await.expect("begin");
    txn.execute(&row("parent", "p1", "gone with the rollback")).await.expect("insert");
    txn.execute_unprepared(conflict).await.expect_err("a unique violation");
    txn.execute(&row("parent", "p2", "after the rollback")).await.expect_err("the transaction is gone");
    txn.commit().await.expect_err("nothing left to commit");
    assert_eq!(count(&other, "parent").await, 1, "nothing of the transaction committed");

    let outer = conn.begin().await.expect("begin");
    outer.execute(&row("parent", "p3", "gone with the rollback")).await.expect("insert");
    let inner = outer.begin().await.expect("savepoint");
    inner.execute_unprepared(conflict).await.expect_err("a unique violation");
    inner.commit().await.expect_err("nothing left to commit");
    outer.execute(&row("parent", "p4", "after the rollback")).await.expect_err("the parent is gone too");
    outer.commit().await.expect_err("nothing left to commit");
    assert_eq!(count(&other, "parent").await, 1, "nothing of the parent committed");

    // Then the connection is clean: a dropped transaction is rolled back, a committed one is
    // committed (not a savepoint inside a transaction never committed).
    let txn = conn.begin().await.expect("begin");
    txn.execute(&row("parent", "p5", "dropped")).await.expect("insert");
    drop(txn);
    let txn = conn.begin().await.expect("begin");
    txn.execute(&row("parent", "p6", "committed")).await.expect("insert");
    txn.commit().await.expect("commit");
    assert_eq!(count(&conn, "parent").await, 2, "what the connection sees");
    assert_eq!(count(&other, "parent").await, 2, "what is committed");
    drop((conn, other));
    tdb.cleanup().await;
}
