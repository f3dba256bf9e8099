//! Databases made for one test: a fresh SQLite file, or a fresh PostgreSQL database.
//!
//! PostgreSQL tests run when `CLM_TEST_DATABASE_URL` points at a server where the role may
//! create databases (CI sets it); each test gets its own database, dropped when the test
//! passes. Without it they print that they were skipped.

use sea_orm::{ConnectionTrait, Database};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database made for one test; PostgreSQL ones are dropped by [`TestDb::cleanup`].
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    admin_url: Option<String>,
    name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A fresh database, or `None` (with a note on stderr) when the backend is not available.
    pub async fn create(backend: Backend, label: &str) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}/{label}.db?mode=rwc", dir.path().display());
                Some(TestDb { url, admin_url: None, name: None, _dir: Some(dir) })
            }
            Backend::Postgres => {
                let Ok(base) = std::env::var("CLM_TEST_DATABASE_URL") else {
                    eprintln!("skipped: PostgreSQL test {label} (set CLM_TEST_DATABASE_URL to run it)");
                    return None;
                };
                let name = format!(
                    "clm_t_{}_{}",
                    label.chars().filter(char::is_ascii_alphanumeric).take(20).collect::<String>().to_lowercase(),
                    uuid::Uuid::new_v4().simple().to_string().get(..12).unwrap_or("x")
                );
                let admin = Database::connect(&base).await.expect("connect to CLM_TEST_DATABASE_URL");
                admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.expect("create test database");
                admin.close().await.ok();
                let url = match base.rfind('/') {
                    Some(i) if base[..i].contains("://") && i > base.find("://").unwrap() + 2 => {
                        let query = base[i..].find('?').map_or("", |q| &base[i + q..]);
                        format!("{}/{name}{query}", &base[..i])
                    }
                    _ => format!("{base}/{name}"),
                };
                Some(TestDb { url, admin_url: Some(base), name: Some(name), _dir: None })
            }
        }
    }

    /// Drop a PostgreSQL test database (call at the end of a passing test).
    pub async fn cleanup(self) {
        if let (Some(admin), Some(name)) = (self.admin_url, self.name)
            && let Ok(db) = Database::connect(&admin).await
        {
            let _ = db.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        }
    }
}
