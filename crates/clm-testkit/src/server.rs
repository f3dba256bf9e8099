//! Services on a real socket: settings for a test server, tokens it trusts, and servers of one
//! or several services in one process (as the single binary runs them).

use std::collections::HashMap;
use std::net::SocketAddr;

use clm_platform::auth::{Claims, mint_hs256};
use clm_platform::config::{Settings, Sources};
use clm_platform::runtime::{Service, start};
use clm_platform::server::{ServiceModule, Shared, serve};
use tokio::sync::oneshot;
use tonic::service::RoutesBuilder;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Signing secret of the tokens tests mint; servers started here trust it.
pub const TEST_SECRET: &str = "clm-test-secret-0123456789abcdef";

/// Settings for a test server: jwt auth with [`TEST_SECRET`], a random port, `overrides` as
/// `CLM_*` variables (e.g. `CLM_CONTACTS__DATABASE_URL`).
pub fn settings(overrides: &[(&str, &str)]) -> Settings {
    let mut env: HashMap<String, String> = [
        ("CLM_ENV", "test"),
        ("CLM_SERVER__LISTEN_ADDR", "127.0.0.1:0"),
        ("CLM_PAGES__LISTEN_ADDR", "127.0.0.1:0"),
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
    /// Where the hosted pages listen, when a service of the server has pages.
    pub pages_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT` of the hosted pages (append a path); panics when the server's
    /// services have none.
    pub fn pages_url(&self) -> String {
        format!("http://{}", self.pages_addr.expect("a service with hosted pages"))
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

/// Start any set of services in one process (one port, one bus), as the single binary does:
/// `Services::new(settings).await.with::<A>().await.with::<B>().await.serve().await`.
pub struct Services {
    shared: Shared,
    routes: RoutesBuilder,
    modules: Vec<ServiceModule>,
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

async fn serve_modules(shared: Shared, routes: RoutesBuilder, modules: Vec<ServiceModule>) -> TestServer {
    let listener = tokio::net::TcpListener::bind(shared.settings.server.listen_addr).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let pages_addr = shared.bind_pages().await.expect("bind the hosted pages");
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        serve(&shared, listener, routes, modules, async move {
            let _ = rx.await;
        })
        .await
    });
    TestServer { addr, pages_addr, shutdown: Some(tx), handle: Some(handle) }
}
