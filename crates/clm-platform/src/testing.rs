//! Test support for services (feature `testing`): start a real server on 127.0.0.1:0 against a
//! fresh SQLite file or a fresh PostgreSQL database, mint tokens, build authenticated clients.
//!
//! PostgreSQL tests run when `CLM_TEST_DATABASE_URL` points at a server where the role may
//! create databases (CI sets it); each test gets its own database, dropped when the test
//! passes. Without it they print that they were skipped.

use std::collections::HashMap;
use std::net::SocketAddr;

use sea_orm::{ConnectionTrait, Database};
use tokio::sync::oneshot;
use tonic::service::RoutesBuilder;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::auth::{Claims, mint_hs256};
use crate::config::{Settings, Sources};
use crate::runtime::{Service, start};
use crate::server::{Shared, serve};

/// Signing secret of the tokens tests mint; servers started here trust it.
pub const TEST_SECRET: &str = "clm-test-secret-0123456789abcdef";

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

/// Settings for a test server: jwt auth with [`TEST_SECRET`], a random port, `overrides` as
/// `CLM_*` variables (e.g. `CLM_CONTACTS__DATABASE_URL`).
pub fn settings(overrides: &[(&str, &str)]) -> Settings {
    let mut env: HashMap<String, String> = [
        ("CLM_ENV", "test"),
        ("CLM_SERVER__LISTEN_ADDR", "127.0.0.1:0"),
        ("CLM_SERVER__HEALTH_CHECK_INTERVAL_MS", "200"),
        ("CLM_SERVER__SHUTDOWN_GRACE_MS", "5000"),
        ("CLM_AUTH__MODE", "jwt"),
        ("CLM_AUTH__JWT_HS256_SECRET", TEST_SECRET),
        ("CLM_DATABASE__MAX_CONNECTIONS", "5"),
        ("CLM_EVENTS__RELAY_POLL_MS", "50"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let events_log = std::env::temp_dir().join(format!("clm-test-events-{}.db", uuid::Uuid::new_v4().simple()));
    env.insert("CLM_EVENTS__LOG_DATABASE_URL".into(), format!("sqlite://{}?mode=rwc", events_log.display()));
    for (k, v) in overrides {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    let dir = tempfile::tempdir().expect("temp dir");
    Settings::load_from(&Sources { dir: Some(dir.path().to_owned()), env: Some(env) }).expect("test settings")
}

/// A bearer token for `tenant` with `scope` (space-separated), valid for an hour.
pub fn token(tenant: &str, scope: &str) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    mint_hs256(
        TEST_SECRET,
        &Claims {
            sub: format!("test-{tenant}"),
            tenant: tenant.to_owned(),
            scope: scope.to_owned(),
            exp: now + 3600,
            nbf: None,
            iss: None,
            aud: None,
        },
    )
    .expect("mint token")
}

/// A running server; dropped → shut down.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A plain channel to the server.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url()).expect("url").connect().await.expect("connect to test server")
    }

    /// A channel that sends `authorization: Bearer <token>` on every call.
    pub async fn authed(&self, token: &str) -> InterceptedService<Channel, BearerInterceptor> {
        let value: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().expect("header");
        InterceptedService::new(self.channel().await, BearerInterceptor(value))
    }

    /// Stop gracefully and wait for the server to finish.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.handle.take() {
            Some(h) => h.await?,
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Adds a fixed bearer token to every request.
#[derive(Clone, Debug)]
pub struct BearerInterceptor(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for BearerInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// Start one service on a random port with `settings`.
pub async fn spawn<S: Service>(settings: Settings) -> TestServer {
    let shared = Shared::new(settings).await.expect("shared");
    let mut routes = RoutesBuilder::default();
    let module = start::<S>(&shared, &mut routes).await.expect("start service");
    serve_modules(shared, routes, vec![module]).await
}

/// Start two services in one process (one port, one bus), as the single binary does.
pub async fn spawn_pair<A: Service, B: Service>(settings: Settings) -> TestServer {
    let shared = Shared::new(settings).await.expect("shared");
    let mut routes = RoutesBuilder::default();
    let a = start::<A>(&shared, &mut routes).await.expect("start service");
    let b = start::<B>(&shared, &mut routes).await.expect("start service");
    serve_modules(shared, routes, vec![a, b]).await
}

/// Poll `f` every 50 ms until it gives a value (events arrive asynchronously); panics naming
/// `what` after 15 s.
pub async fn wait_for<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..300 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{what}: not reached in 15 s");
}

/// Start any set of services in one process (one port, one bus), as the single binary does:
/// `Services::new(settings).await.with::<A>().await.with::<B>().await.serve().await`.
pub struct Services {
    shared: Shared,
    routes: RoutesBuilder,
    modules: Vec<crate::server::ServiceModule>,
}

impl Services {
    pub async fn new(settings: Settings) -> Self {
        let shared = Shared::new(settings).await.expect("shared");
        Self { shared, routes: RoutesBuilder::default(), modules: Vec::new() }
    }

    pub async fn with<S: Service>(mut self) -> Self {
        let module = start::<S>(&self.shared, &mut self.routes).await.expect("start service");
        self.modules.push(module);
        self
    }

    pub async fn serve(self) -> TestServer {
        serve_modules(self.shared, self.routes, self.modules).await
    }
}

async fn serve_modules(
    shared: Shared,
    routes: RoutesBuilder,
    modules: Vec<crate::server::ServiceModule>,
) -> TestServer {
    let listener = tokio::net::TcpListener::bind(shared.settings.server.listen_addr).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        serve(&shared, listener, routes, modules, async move {
            let _ = rx.await;
        })
        .await
    });
    TestServer { addr, shutdown: Some(tx), handle: Some(handle) }
}

/// Run `test` against SQLite and, when available, PostgreSQL.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::testing::Backend::Sqlite).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::testing::Backend::Postgres).await;
                }
            )+
        }
    };
}
