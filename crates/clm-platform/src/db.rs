//! Database connections: one SeaORM pool per service database, SQLite or PostgreSQL by URL.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use sea_orm::sea_query::{Alias, CommonTableExpression, InsertStatement, WithClause};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use sea_orm_migration::MigratorTrait;

use crate::config::DatabaseSettings;

/// Connect to `url` (`sqlite://path?mode=rwc` or `postgres://…`) with the pool settings.
/// For SQLite the parent directory is created and WAL mode is used so readers do not block
/// the writer.
pub async fn connect(url: &str, settings: &DatabaseSettings) -> anyhow::Result<DatabaseConnection> {
    if let Some(path) = sqlite_path(url)
        && let Some(parent) = std::path::Path::new(&path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| anyhow::anyhow!("cannot create directory {} for SQLite: {e}", parent.display()))?;
    }
    crate::storage::set_min_free(settings.min_free_bytes);
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.max_connections(settings.max_connections)
        .min_connections(settings.min_connections)
        .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
        .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
        .sqlx_logging(false);
    // sqlx pings every connection it checks out by default: on PostgreSQL a round trip before
    // each statement or transaction (CreateContact and GetContact were two where one does),
    // on SQLite a hand-off to the connection's thread and back. Only idle ones need it.
    if settings.ping_idle_after_ms > 0 {
        opts.test_before_acquire_if_idle_for(Duration::from_millis(settings.ping_idle_after_ms));
    }
    // FULL: a commit is on disk (the WAL fsynced) before it is acknowledged, so an acknowledged
    // write survives a power cut or kernel crash too; NORMAL in WAL mode survives only the
    // process dying and may lose the last commits to a machine crash.
    opts.map_sqlx_sqlite_opts(|o| {
        o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
    });
    Database::connect(opts).await.map_err(|e| anyhow::anyhow!("cannot connect to database {}: {e}", redact(url)))
}

/// Bring the schema up to date, in one transaction: a migration applies whole or not at all
/// (DDL is transactional on both backends).
pub async fn migrate<M: MigratorTrait>(db: &DatabaseConnection) -> anyhow::Result<()> {
    if db.get_database_backend() == DbBackend::Sqlite {
        // On the file's writer connection, never spread over the pool: a pooled connection
        // still holding an older snapshot would judge a statement against the schema as it
        // was before the previous statement (an index a dropped table took with it "already
        // exists").
        // (No free-space check: a restart on a full disk with nothing to migrate must start.)
        let txn = writer(db)
            .await
            .begin_with_options(write_options())
            .await
            .map_err(|e| anyhow::anyhow!("migration failed: {e}"))?;
        M::up(&txn, None).await.map_err(|e| anyhow::anyhow!("migration failed: {e}"))?;
        return txn.commit().await.map_err(|e| anyhow::anyhow!("migration failed: {e}"));
    }
    if db.get_database_backend() != DbBackend::Postgres {
        return M::up(db, None).await.map_err(|e| anyhow::anyhow!("migration failed: {e}"));
    }
    // Replicas starting together migrate one at a time, each in one transaction (PostgreSQL's
    // DDL is transactional: a migration applies whole or not at all); the ones after find
    // nothing left to do.
    use sea_orm::TransactionTrait as _;
    let txn = db.begin().await.map_err(|e| anyhow::anyhow!("migration failed: {e}"))?;
    advisory_lock(&txn, "clm:migrations").await.map_err(|e| anyhow::anyhow!("migration lock: {e}"))?;
    M::up(&txn, None).await.map_err(|e| anyhow::anyhow!("migration failed: {e}"))?;
    txn.commit().await.map_err(|e| anyhow::anyhow!("migration failed: {e}"))
}

/// Begin a transaction that will write. On SQLite it runs on the file's writer connection
/// ([`writer`]) and takes the write lock up front (`BEGIN IMMEDIATE`), so it never has to
/// upgrade a read lock; PostgreSQL ignores the mode.
///
/// On SQLite the write is refused up front (RESOURCE_EXHAUSTED) when the disk is below
/// `database.min_free_bytes` free (`crate::storage`).
pub async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, crate::Error> {
    crate::storage::check_space(db)?;
    Ok(writer(db).await.begin_with_options(write_options()).await?)
}

/// SQLite files this process writes through one connection each: (path, device, inode) → a
/// pool of one connection. Path and inode both: a deleted file's inode number can come back for
/// a new file elsewhere, and its old connection must not be handed out for the new one.
type WriterKey = (std::path::PathBuf, u64, u64);
static WRITERS: LazyLock<Mutex<HashMap<WriterKey, DatabaseConnection>>> = LazyLock::new(Mutex::default);

/// How long a write waits for its turn on a SQLite file (as SQLite's own busy timeout).
const WRITE_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

fn file_key(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino()))
}

/// The connection to write through. SQLite lets one connection write a file at a time, and a
/// writer that finds the file locked sleeps in SQLite's busy handler (1, 2, 5 … 100 ms) before
/// it looks again: with several writers in one process (API calls, consumers, relays) that
/// added up to hundreds of milliseconds per write and left the lock idle meanwhile. So in this
/// process every write to a SQLite file goes through one dedicated connection (a pool of one,
/// made on first use): writers queue for it in order and never find the lock taken by another
/// writer of the process. Readers keep the main pool (WAL: they never wait for the writer).
/// PostgreSQL, and in-memory SQLite: `db` itself.
pub async fn writer(db: &DatabaseConnection) -> DatabaseConnection {
    if db.get_database_backend() != DbBackend::Sqlite {
        return db.clone();
    }
    let options = db.get_sqlite_connection_pool().connect_options();
    let path = options.get_filename().to_path_buf();
    let Some((dev, ino)) = file_key(&path) else { return db.clone() };
    let key = (path, dev, ino);
    if let Some(w) = WRITERS.lock().ok().and_then(|w| w.get(&key).cloned()) {
        return w;
    }
    let pool = sea_orm::sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        // A file of this process: nothing can drop the connection, so no ping per write.
        .test_before_acquire(false)
        .acquire_timeout(WRITE_QUEUE_TIMEOUT)
        .idle_timeout(None)
        .connect_with((*options).clone())
        .await;
    match pool {
        Ok(pool) => {
            let w = sea_orm::SqlxSqliteConnector::from_sqlx_sqlite_pool(pool);
            match WRITERS.lock() {
                Ok(mut writers) => {
                    // Forget the writers of files deleted since (temporary databases).
                    writers.retain(|(p, d, i), _| file_key(p) == Some((*d, *i)));
                    writers.entry(key).or_insert(w).clone()
                }
                Err(_) => db.clone(),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "no writer connection for a SQLite file; writing through the pool");
            db.clone()
        }
    }
}

/// A connection of its own to the database `db` connects to (a pool of one, made lazily), for
/// health checks: a pool busy with long reads must not make a live database look dead.
/// In-memory SQLite: `db` itself (another connection would be another database).
pub fn side_connection(db: &DatabaseConnection) -> DatabaseConnection {
    match db.get_database_backend() {
        DbBackend::Sqlite => {
            let options = db.get_sqlite_connection_pool().connect_options();
            let name = options.get_filename().to_string_lossy().into_owned();
            if name.is_empty() || name == ":memory:" || name.contains("mode=memory") {
                return db.clone();
            }
            let pool = sea_orm::sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(0)
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(3))
                .connect_lazy_with((*options).clone());
            sea_orm::SqlxSqliteConnector::from_sqlx_sqlite_pool(pool)
        }
        DbBackend::Postgres => {
            let options = db.get_postgres_connection_pool().connect_options();
            let pool = sea_orm::sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .min_connections(0)
                .acquire_timeout(Duration::from_secs(1))
                .connect_lazy_with((*options).clone());
            sea_orm::SqlxPostgresConnector::from_sqlx_postgres_pool(pool)
        }
        _ => db.clone(),
    }
}

fn write_options() -> TransactionOptions {
    TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..TransactionOptions::default()
    }
}

/// Run `inserts` as one atomic write: all of them land or none does. On PostgreSQL they go
/// as one statement (every insert but the last a data-modifying CTE), so the write is a single
/// round trip with no `BEGIN`/`COMMIT`; on SQLite (in process, no round trips) they run in one
/// write transaction. The inserts must not depend on each other's effects: within one
/// PostgreSQL statement they all see the same snapshot. A constraint violation by any of them
/// fails the whole write and is returned as the database's error.
pub async fn insert_all(db: &DatabaseConnection, mut inserts: Vec<InsertStatement>) -> Result<(), DbErr> {
    let Some(last) = inserts.pop() else { return Ok(()) };
    if db.get_database_backend() == DbBackend::Postgres {
        if inserts.is_empty() {
            db.execute(&last).await?;
        } else {
            let mut with = WithClause::new();
            for (i, insert) in inserts.into_iter().enumerate() {
                with.cte(CommonTableExpression::new().query(insert).table_name(Alias::new(format!("w{i}"))).to_owned());
            }
            db.execute(&last.with(with)).await?;
        }
        return Ok(());
    }
    crate::storage::check_space_db(db)?;
    let txn = writer(db).await.begin_with_options(write_options()).await?;
    for insert in inserts.iter().chain(std::iter::once(&last)) {
        txn.execute(insert).await?;
    }
    txn.commit().await
}

/// On PostgreSQL, wait for the transaction-scoped advisory lock `name` (held until commit or
/// rollback; reentrant within a transaction), so transactions of every replica that name it
/// run one at a time. On SQLite nothing: a file has one writer at a time anyway.
pub async fn advisory_lock(txn: &impl ConnectionTrait, name: &str) -> Result<(), DbErr> {
    if txn.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    txn.execute_raw(sea_orm::Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_advisory_xact_lock($1)",
        [lock_id(name).into()],
    ))
    .await?;
    Ok(())
}

/// A stable 64-bit id for an advisory lock name (FNV-1a: the same in every process).
fn lock_id(name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// The file path of a SQLite URL, if it is one and not in-memory.
fn sqlite_path(url: &str) -> Option<String> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" { None } else { Some(path.to_owned()) }
}

/// A URL with any password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..scheme_end + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// A real write to `db` (a one-row table of its own, created on first use): readiness uses it
/// to see that storage which failed takes writes again.
pub async fn probe_write(db: &DatabaseConnection) -> Result<(), crate::Error> {
    crate::storage::check_space(db)?;
    let now = chrono::Utc::now().timestamp_micros();
    let txn = begin_write(db).await?;
    txn.execute_unprepared("CREATE TABLE IF NOT EXISTS clm_storage_probe (id INTEGER PRIMARY KEY, at BIGINT NOT NULL)")
        .await?;
    txn.execute_unprepared(&format!(
        "INSERT INTO clm_storage_probe (id, at) VALUES (1, {now}) ON CONFLICT (id) DO UPDATE SET at = excluded.at"
    ))
    .await?;
    txn.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://data/x.db?mode=rwc"), "sqlite://data/x.db?mode=rwc");
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(sqlite_path("sqlite://data/x.db?mode=rwc").as_deref(), Some("data/x.db"));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://h/db"), None);
    }
}
