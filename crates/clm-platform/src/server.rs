//! The gRPC server every CLM process runs: the services of one or more modules behind
//! health, reflection (of those services only: `crate::reflection`), tracing, authentication, a global concurrency limit with load shedding,
//! a request timeout, and graceful shutdown.
//!
//! Layers, outermost first: tonic's error recovery (maps shed load to RESOURCE_EXHAUSTED) →
//! request span (parent taken from `traceparent`) → load shed + global concurrency limit
//! (health checks exempt, see `shed`) → auth → deadline (the smaller of `request_timeout_ms` and
//! the client's `grpc-timeout`; DEADLINE_EXCEEDED past it, see `deadline`) → the service.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tonic::service::RoutesBuilder;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::ServiceBuilder;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::auth::{AuthLayer, Authenticator};
use crate::config::Settings;
use crate::events::EventBus;
use crate::pagination::PageTokens;

/// Everything a service module needs from the process to build its handlers.
#[derive(Clone, Debug)]
pub struct Shared {
    pub settings: Arc<Settings>,
    pub page_tokens: PageTokens,
    /// The event bus (one per process; every service in it shares it).
    pub bus: Arc<dyn EventBus>,
    stop: Arc<tokio::sync::watch::Sender<bool>>,
    /// The address the server bound (known once `serve` runs), for calls to services in
    /// the same process.
    pub local_addr: Arc<std::sync::OnceLock<std::net::SocketAddr>>,
    /// Background tasks to wait for (briefly) at shutdown, so they finish their batch and
    /// give up their leases.
    background: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// The hosted pages services added ([`Shared::add_pages`]), served by [`serve`].
    pages: Arc<crate::pages::Registry>,
}

impl Shared {
    /// Build the process-wide parts: page-token key and the event bus the settings name.
    pub async fn new(settings: Settings) -> anyhow::Result<Self> {
        let bus = crate::events::transport::from_settings(&settings.events, &settings.database).await?;
        Ok(Self::with_bus(settings, bus))
    }

    /// As [`Shared::new`] with a given bus.
    pub fn with_bus(settings: Settings, bus: Arc<dyn EventBus>) -> Self {
        let page_tokens = PageTokens::new(&settings.server.page_token_secret);
        let (stop, _) = tokio::sync::watch::channel(false);
        Self {
            settings: Arc::new(settings),
            page_tokens,
            bus,
            stop: Arc::new(stop),
            local_addr: Arc::new(std::sync::OnceLock::new()),
            background: Arc::default(),
            pages: Arc::default(),
        }
    }

    /// Add a service's hosted pages (`crate::pages`): routes with their state applied, merged
    /// with the other services' and served on `pages.listen_addr` by [`serve`]. Call it from
    /// `Service::register`. Two services must not claim the same path (axum panics at the
    /// merge, at start).
    pub fn add_pages(&self, routes: axum::Router) {
        self.pages.add(routes);
    }

    /// Bind `pages.listen_addr` now if any service added pages, and say where (port 0: the port
    /// the system chose); `None` when this process has no pages. [`serve`] binds it otherwise.
    pub async fn bind_pages(&self) -> anyhow::Result<Option<std::net::SocketAddr>> {
        self.pages.bind(&self.settings).await
    }

    /// Where the hosted pages listen, once bound.
    pub fn pages_addr(&self) -> Option<std::net::SocketAddr> {
        self.pages.addr()
    }

    /// Background tasks (relays, consumers) stop when this turns true.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Ask background tasks to stop.
    pub fn stop_background(&self) {
        let _ = self.stop.send(true);
    }

    /// Keep a background task's handle so shutdown waits for it (see [`Shared::join_background`]).
    pub fn track(&self, task: tokio::task::JoinHandle<()>) {
        self.background.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(task);
    }

    /// After [`Shared::stop_background`]: wait up to `grace` for the tracked tasks, then abort
    /// what is left.
    pub async fn join_background(&self, grace: Duration) {
        let tasks: Vec<_> =
            std::mem::take(&mut *self.background.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let aborts: Vec<_> = tasks.iter().map(tokio::task::JoinHandle::abort_handle).collect();
        if tokio::time::timeout(grace, futures::future::join_all(tasks)).await.is_err() {
            tracing::warn!("background tasks did not stop within {} ms; abandoning them", grace.as_millis());
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
        }
    }

    /// Relay options from the settings. The relay's lease holder is this process's listening
    /// slot (host and address) when the port is fixed, so a process restarted in the same slot
    /// (a crashed container, kill -9) takes its relay back at once instead of waiting for its
    /// own old lease to expire; two live processes can never share a slot (the port is bound
    /// before any relay starts). With port 0 every process is a holder of its own.
    pub fn relay_options(&self) -> crate::events::outbox::RelayOptions {
        let mut opts = crate::events::outbox::RelayOptions {
            batch: self.settings.events.relay_batch,
            poll: Duration::from_millis(self.settings.events.relay_poll_ms),
            linger: Duration::from_millis(self.settings.events.relay_linger_ms),
            ..Default::default()
        };
        let addr = self.settings.server.listen_addr;
        if addr.port() != 0 {
            opts.holder = format!("{}/{addr}", host_name());
        }
        opts
    }

    /// The configured largest message, for the generated servers' encode/decode limits.
    pub fn max_message_bytes(&self) -> usize {
        self.settings.server.max_message_bytes
    }
}

/// A service as the server sees it: its name, the gRPC services it answers for (health
/// names) and the database whose reachability decides whether it is SERVING.
#[derive(Debug, Clone)]
pub struct ServiceModule {
    /// Short name: `contacts`, `lifecycle`, `feedback`, `metrics`.
    pub name: &'static str,
    /// Fully-qualified gRPC service names reported by `grpc.health.v1`.
    pub grpc_services: Vec<&'static str>,
    pub db: DatabaseConnection,
}

/// Health names: `liveness` answers SERVING while the process answers at all (a busy or
/// degraded server is not a dead one: restarting it helps nobody); `readiness` (and the
/// overall `""`) is SERVING while every module's database answers and takes writes; each
/// module's own names (`contacts`, `clm.contacts.v1.ContactsService`) follow that module's
/// readiness. docs/operations.md § Health and probes.
pub const LIVENESS: &str = "liveness";
pub const READINESS: &str = "readiness";

/// Health reporting for a set of modules, driven by periodic checks on connections of their
/// own (`db::side_connection`), and at once after a write failed for a storage fault.
#[derive(Clone, Debug)]
pub struct Health {
    reporter: HealthReporter,
    modules: Arc<Vec<ModuleHealth>>,
}

#[derive(Debug)]
struct ModuleHealth {
    module: ServiceModule,
    /// A connection of its own for pings and probe writes.
    probe: DatabaseConnection,
    /// A write failed for a storage fault: ready again only once a probe write succeeds.
    suspect: std::sync::atomic::AtomicBool,
}

impl Health {
    fn new(reporter: HealthReporter, modules: Vec<ServiceModule>) -> Self {
        let modules = modules
            .into_iter()
            .map(|module| ModuleHealth {
                probe: crate::db::side_connection(&module.db),
                module,
                suspect: std::sync::atomic::AtomicBool::new(false),
            })
            .collect();
        Self { reporter, modules: Arc::new(modules) }
    }

    async fn set_module(&self, m: &ServiceModule, status: ServingStatus) {
        for svc in &m.grpc_services {
            self.reporter.set_service_status(*svc, status).await;
        }
        self.reporter.set_service_status(m.name, status).await;
    }

    /// Readiness (overall and per module) to `status`; liveness is not touched.
    async fn set_all(&self, status: ServingStatus) {
        for m in self.modules.iter() {
            self.set_module(&m.module, status).await;
        }
        self.reporter.set_service_status(READINESS, status).await;
        self.reporter.set_service_status("", status).await;
    }

    /// Check each module's database now and publish the result: it answers a ping, and (SQLite)
    /// its disk is above the free-space reserve, and after a storage fault a real write
    /// succeeds again.
    pub async fn check_once(&self) {
        use std::sync::atomic::Ordering;
        let fault_seen = crate::storage::take_suspect();
        let mut all_ok = true;
        for m in self.modules.iter() {
            if fault_seen {
                m.suspect.store(true, Ordering::Release);
            }
            let reachable = tokio::time::timeout(Duration::from_secs(2), m.probe.ping()).await.is_ok_and(|r| r.is_ok());
            crate::storage::set_reachable(m.module.name, reachable);
            let mut ok = reachable;
            if ok && let Some((free, min)) = crate::storage::below_reserve(&m.probe) {
                tracing::warn!(
                    module = m.module.name,
                    free,
                    reserve = min,
                    "database disk below its free-space reserve: not ready"
                );
                m.suspect.store(true, Ordering::Release);
                ok = false;
            }
            if ok && m.suspect.load(Ordering::Acquire) {
                match tokio::time::timeout(Duration::from_secs(3), crate::db::probe_write(&m.probe)).await {
                    Ok(Ok(())) => {
                        tracing::info!(module = m.module.name, "database takes writes again: ready");
                        m.suspect.store(false, Ordering::Release);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(module = m.module.name, error = %e, "database still refuses writes: not ready");
                        ok = false;
                    }
                    Err(_) => ok = false,
                }
            }
            all_ok &= ok;
            let status = if ok { ServingStatus::Serving } else { ServingStatus::NotServing };
            self.set_module(&m.module, status).await;
        }
        let overall = if all_ok { ServingStatus::Serving } else { ServingStatus::NotServing };
        self.reporter.set_service_status(READINESS, overall).await;
        self.reporter.set_service_status("", overall).await;
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// Serve `routes` on `listener` until `shutdown` resolves, then drain for at most
/// `server.shutdown_grace_ms`: health turns NOT_SERVING, the listener closes, new calls on open
/// connections are refused (HTTP/2 GOAWAY) and in-flight calls complete.
///
/// The hosted pages services added (`crate::pages`) are served on `pages.listen_addr` (bound
/// before anything is served, so a port in use fails the start naming the key) from just before
/// the gRPC server starts; their graceful shutdown begins with the drain, and shutdown waits
/// for them like the other background tasks.
///
/// It also runs the process's pruner over the modules' outboxes and inboxes and the bus
/// (`crate::events::prune`), a background task like the relays and consumers.
pub async fn serve(
    shared: &Shared,
    listener: TcpListener,
    mut routes: RoutesBuilder,
    modules: Vec<ServiceModule>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let settings = &shared.settings;
    shared.bind_pages().await?;
    shared.track(crate::events::prune::spawn(
        shared.bus.clone(),
        modules.iter().map(|m| m.db.clone()).collect(),
        crate::events::prune::Retention::from_settings(&settings.events),
        shared.stopping(),
    ));
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health::new(reporter, modules);
    health.reporter.set_service_status(LIVENESS, ServingStatus::Serving).await;
    health.set_all(ServingStatus::NotServing).await;
    health.check_once().await;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let monitor = {
        let health = health.clone();
        let interval = Duration::from_millis(settings.server.health_check_interval_ms.max(100));
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    () = tokio::time::sleep(interval) => {}
                    () = crate::storage::fault_seen() => {}
                }
                health.check_once().await;
                // At most ten checks a second, however many writes fail meanwhile.
                tokio::time::sleep(Duration::from_millis(100).min(interval)).await;
            }
        })
    };

    // Reflection lists and describes only what this process serves (crate::reflection).
    let served: Vec<&'static str> =
        health.modules.iter().flat_map(|m| m.module.grpc_services.iter().copied()).collect();
    crate::reflection::add_to(&mut routes, &served)?;
    routes.add_service(health_service);
    let routes = answer_unserved(routes.routes(), &served);

    let auth = Arc::new(Authenticator::from_settings(&settings.auth)?);
    let layers = ServiceBuilder::new()
        .layer(
            TraceLayer::new_for_grpc()
                .make_span_with(request_span::<tonic::body::Body>)
                // A caller's mistake is not the server's error: details at debug, while internal
                // errors are logged at error level where they are mapped (crate::error).
                .on_response(crate::telemetry::semconv::ServerOutcome)
                .on_eos(crate::telemetry::semconv::ServerOutcome)
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(crate::header_limit::HeaderLimitLayer::new(settings.server.max_header_bytes))
        .layer(crate::shed::ShedLayer::new(settings.server.max_concurrent_requests))
        .layer(AuthLayer::new(auth))
        .layer(crate::deadline::DeadlineLayer::new(Duration::from_millis(settings.server.request_timeout_ms)));

    let addr = listener.local_addr()?;
    let _ = shared.local_addr.set(addr);
    let guard = crate::listener::Guard::new(crate::listener::Limits {
        max_connections: settings.server.max_connections,
        handshake_timeout: Duration::from_millis(settings.server.handshake_timeout_ms),
        idle_timeout: Duration::from_millis(settings.server.idle_timeout_ms),
    });
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true)).filter_map(move |conn| {
        let admitted = match conn {
            Ok(stream) => guard.admit(stream).map(Ok),
            Err(e) => Some(Err(e)),
        };
        std::future::ready(admitted)
    });
    let grace = Duration::from_millis(settings.server.shutdown_grace_ms);

    // The pages drain when the gRPC drain begins, or when the gRPC server ended by itself.
    let pages_stop = {
        let (mut draining, mut stopped) = (stop_rx.clone(), shared.stopping());
        async move {
            tokio::select! {
                _ = draining.wait_for(|s| *s) => {}
                _ = stopped.wait_for(|s| *s) => {}
            }
        }
    };
    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = {
        let health = health.clone();
        async move {
            shutdown.await;
            let _ = stop_tx.send(true);
            health.set_all(ServingStatus::NotServing).await;
            tracing::info!(grace_ms = grace.as_millis() as u64, "draining in-flight calls");
            let _ = draining_tx.send(());
        }
    };

    let tls = crate::tls::server_config(&shared.settings.tls)?;
    let mutual = !shared.settings.tls.client_ca_file.is_empty();
    tracing::info!(%addr, tls = tls.is_some(), mutual_tls = mutual, services = ?health.modules.iter().map(|m| m.module.name).collect::<Vec<_>>(), "serving gRPC");
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let server = builder
        .http2_keepalive_interval(Some(Duration::from_millis(settings.server.keepalive_interval_ms)))
        .http2_keepalive_timeout(Some(Duration::from_millis(settings.server.keepalive_timeout_ms)))
        // Past server.max_header_bytes the call is answered by `header_limit` (a gRPC status);
        // the HTTP/2 layer's own ceiling is well above it.
        .http2_max_header_list_size(crate::header_limit::http2_limit(settings.server.max_header_bytes))
        .layer(layers)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, signal);
    tokio::pin!(server);
    if let Some(pages) = crate::pages::spawn(&shared.pages, settings, pages_stop).await? {
        shared.track(pages);
    }

    let result = tokio::select! {
        r = &mut server => r.map_err(anyhow::Error::from),
        _ = draining_rx => match tokio::time::timeout(grace, &mut server).await {
            Ok(r) => r.map_err(anyhow::Error::from),
            Err(_) => {
                tracing::warn!("shutdown grace period elapsed; abandoning calls still in flight");
                Ok(())
            }
        },
    };
    monitor.abort();
    shared.stop_background();
    shared.join_background(Duration::from_secs(3)).await;
    tracing::info!("server stopped");
    result
}

/// A call to a service this process does not serve (a lifecycle call sent to `clm-contacts`)
/// is UNIMPLEMENTED, as gRPC has it, with a message naming what is served here: tonic's own
/// answer has none.
fn answer_unserved(routes: tonic::service::Routes, served: &[&str]) -> tonic::service::Routes {
    let served = served.join(", ");
    let fallback = move |uri: http::Uri| {
        let served = served.clone();
        async move {
            let path = uri.path().trim_start_matches('/');
            let service = path.split_once('/').map_or(path, |(service, _)| service);
            let status = tonic::Status::unimplemented(format!(
                "{service} is not served here: this server serves {served} (each clm-<service> binary serves its \
                 own service; the clm binary serves all four)"
            ));
            let (parts, ()) = status.into_http::<()>().into_parts();
            http::Response::from_parts(parts, tonic::body::Body::empty())
        }
    };
    routes.into_axum_router().fallback(fallback).into()
}

/// The span of one call (SERVER, named after the RPC: `telemetry::semconv`), child of the
/// caller's `traceparent` if any.
fn request_span<B>(req: &http::Request<B>) -> tracing::Span {
    let span = crate::telemetry::semconv::rpc_span(crate::telemetry::semconv::Side::Server, req.uri().path());
    crate::telemetry::set_remote_parent(&span, crate::telemetry::extract_context(req.headers()));
    span
}

/// This machine's (or pod's) name: `HOSTNAME`, else the kernel's, else "localhost".
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map_or_else(|| "localhost".to_owned(), |h| h.trim().to_owned())
}
