//! Storage faults: what a write the storage cannot take becomes, and how readiness sees the
//! storage come back.
//!
//! - A write that fails for want of space (SQLite `SQLITE_FULL`, PostgreSQL `53100 disk_full`)
//!   is RESOURCE_EXHAUSTED; one that fails because the storage is read-only or failing
//!   (`SQLITE_READONLY`, `SQLITE_IOERR`, `SQLITE_CANTOPEN`, PostgreSQL `25006`, `58xxx`) is
//!   UNAVAILABLE. Both say why, and both mark the storage suspect ([`suspect`]): readiness
//!   then stays NOT_SERVING until a real write (`db::probe_write`) succeeds again.
//! - On SQLite, a write transaction is refused before it starts when the file system holding
//!   the database has less than `database.min_free_bytes` free ([`check_space`]): the reserve
//!   keeps room for SQLite's own needs (WAL growth, checkpoints) and for the event consumers to
//!   catch up, and turns a full disk into a clean refusal instead of a failure half-way.
//!   PostgreSQL manages its own disk; its `disk_full` errors are mapped as above.
//!
//! This module only classifies and remembers; `error` turns a [`Fault`] or a [`Refusal`] into
//! the status a client gets, and `db::probe_write` is the real write readiness makes.
//!
//! A failed write never leaves anything behind: SQLite rolls the transaction back (and the
//! patched sqlx-sqlite in `vendor/` no longer mistakes the connection for one still inside it,
//! vendor/README.md), PostgreSQL aborts it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};

use sea_orm::{DatabaseConnection, DbBackend, DbErr, RuntimeErr};

/// Why the storage refused a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No space left.
    Full,
    /// Read-only or failing storage (I/O error, file cannot be opened for writing).
    Unwritable,
}

/// The storage fault behind a database error, if it is one.
pub fn classify(err: &DbErr) -> Option<Fault> {
    let (DbErr::Exec(RuntimeErr::SqlxError(e))
    | DbErr::Query(RuntimeErr::SqlxError(e))
    | DbErr::Conn(RuntimeErr::SqlxError(e))) = err
    else {
        return None;
    };
    let db = e.as_database_error()?;
    if let Some(sqlite) = db.try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>() {
        // Extended result codes: the primary code is the low byte.
        let code = sea_orm::sqlx::error::DatabaseError::code(sqlite).and_then(|c| c.parse::<i32>().ok())?;
        return match code & 0xff {
            13 => Some(Fault::Full),                // SQLITE_FULL
            8 | 10 | 14 => Some(Fault::Unwritable), // SQLITE_READONLY, SQLITE_IOERR, SQLITE_CANTOPEN
            _ => None,
        };
    }
    let code = db.code()?;
    match code.as_ref() {
        "53100" => Some(Fault::Full),
        "25006" => Some(Fault::Unwritable),
        c if c.starts_with("58") => Some(Fault::Unwritable),
        _ => None,
    }
}

impl Fault {
    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            Fault::Full => "no space left on the database's disk: the write was not applied; retry once space is freed",
            Fault::Unwritable => {
                "the database's storage cannot be written (read-only or failing): the write was not applied; retry \
                 with backoff"
            }
        }
    }
}

/// A write refused before it started, for want of the free-space reserve ([`check_space`]):
/// RESOURCE_EXHAUSTED with this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

static SUSPECT: AtomicBool = AtomicBool::new(false);
static WAKE: LazyLock<tokio::sync::Notify> = LazyLock::new(tokio::sync::Notify::new);

/// A write failed for a storage fault: readiness must prove a write succeeds before it says
/// SERVING again, and it checks at once rather than at its next interval.
pub fn mark_suspect() {
    SUSPECT.store(true, Ordering::Release);
    WAKE.notify_one();
}

/// Take the suspect mark (readiness probes every module's storage when it was set).
pub(crate) fn take_suspect() -> bool {
    SUSPECT.swap(false, Ordering::AcqRel)
}

/// Resolves when a storage fault was just seen.
pub(crate) async fn fault_seen() {
    WAKE.notified().await;
}

/// Free bytes SQLite writes keep in reserve (`database.min_free_bytes`; one value per process).
static MIN_FREE: AtomicU64 = AtomicU64::new(0);

pub(crate) fn set_min_free(bytes: u64) {
    MIN_FREE.store(bytes, Ordering::Relaxed);
}

/// Refuse a SQLite write (RESOURCE_EXHAUSTED) when the file system holding the database has
/// less than `database.min_free_bytes` free. PostgreSQL and in-memory SQLite: always fine.
pub fn check_space(db: &DatabaseConnection) -> Result<(), Refusal> {
    match below_reserve(db) {
        None => Ok(()),
        Some((free, min)) => {
            mark_suspect();
            Err(Refusal(format!(
                "no space left for writes: the database's disk has {free} bytes free, below the reserve of {min} \
                 (database.min_free_bytes); the write was not applied; retry once space is freed"
            )))
        }
    }
}

/// `(free, reserve)` when `db` is a SQLite file on a file system with less than the reserve
/// free; `None` otherwise (also when the free space cannot be read).
pub(crate) fn below_reserve(db: &DatabaseConnection) -> Option<(u64, u64)> {
    let min = MIN_FREE.load(Ordering::Relaxed);
    if min == 0 || db.get_database_backend() != DbBackend::Sqlite {
        return None;
    }
    let path = db.get_sqlite_connection_pool().connect_options().get_filename().to_path_buf();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let stat = rustix::fs::statvfs(&dir).ok()?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    (free < min).then_some((free, min))
}

/// Marks a [`check_space`] refusal carried as a `DbErr` (by writers whose error type is the
/// database's, e.g. `db::insert_all`), so `Error::from` gives it back as RESOURCE_EXHAUSTED.
const RESERVE_REFUSAL: &str = "clm-storage-reserve: ";

/// [`check_space`] for code returning `DbErr`.
pub fn check_space_db(db: &DatabaseConnection) -> Result<(), DbErr> {
    check_space(db).map_err(|e| DbErr::Custom(format!("{RESERVE_REFUSAL}{e}")))
}

/// The refusal [`check_space_db`] made, back as what it was.
pub(crate) fn reserve_refusal(err: &DbErr) -> Option<Refusal> {
    match err {
        DbErr::Custom(msg) => msg.strip_prefix(RESERVE_REFUSAL).map(|m| Refusal(m.to_owned())),
        _ => None,
    }
}

/// Modules whose database did not answer its last health ping.
static UNREACHABLE: LazyLock<Mutex<HashSet<&'static str>>> = LazyLock::new(Mutex::default);

pub(crate) fn set_reachable(module: &'static str, reachable: bool) {
    let mut set = UNREACHABLE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if reachable {
        set.remove(module);
    } else {
        set.insert(module);
    }
}

/// When a call last failed to reach a database (refused, reset, terminated), as milliseconds
/// since the process's first look at it; 0: never.
static LAST_CONNECTION_FAILURE: AtomicU64 = AtomicU64::new(0);
static EPOCH: LazyLock<std::time::Instant> = LazyLock::new(std::time::Instant::now);

/// A call could not reach its database (the pool may go on timing out while it is down).
pub(crate) fn connection_failed() {
    let ms = u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX).max(1);
    LAST_CONNECTION_FAILURE.store(ms, Ordering::Relaxed);
}

/// Every database of the process answered its last health ping and no call failed to reach
/// one in the last 10 s: a pool that timed out is busy (overload), not gone.
pub fn databases_reachable() -> bool {
    let last = LAST_CONNECTION_FAILURE.load(Ordering::Relaxed);
    let recent = last != 0 && EPOCH.elapsed().as_millis() < u128::from(last) + 10_000;
    !recent && UNREACHABLE.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_empty()
}
