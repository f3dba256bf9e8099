//! How a service plugs into a process: the [`Service`] trait, and the `main` of the
//! per-service binaries (`clm-contacts serve|migrate|check-config`). The single `clm` binary
//! composes several services with the same pieces.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;
use tonic::service::RoutesBuilder;

use crate::config::Settings;
use crate::server::{ServiceModule, Shared};

/// A CLM service: its name, its schema and how it registers its gRPC handlers (and, if it has
/// any, its hosted pages: `register` hands them to `Shared::add_pages`; the process serves every
/// service's pages on one HTTP port, `crate::pages`).
pub trait Service {
    /// Short name; also the settings section holding its `database_url`.
    const NAME: &'static str;
    /// Its own schema's migrations (it owns its database; no other service reads it).
    type Migrator: MigratorTrait;

    /// Register the handlers on `routes` (and any hosted pages with `shared.add_pages`) and
    /// start background work; returns the fully-qualified gRPC service names it serves (for
    /// health).
    fn register(
        shared: &Shared,
        db: DatabaseConnection,
        routes: &mut RoutesBuilder,
    ) -> impl Future<Output = anyhow::Result<Vec<&'static str>>> + Send;
}

/// Connect to the service's database (and migrate it when `database.migrate_on_start`).
pub async fn open_database<S: Service>(settings: &Settings, migrate: bool) -> anyhow::Result<DatabaseConnection> {
    let section = settings.service(S::NAME).ok_or_else(|| anyhow::anyhow!("unknown service {}", S::NAME))?;
    let db = crate::db::connect(&section.database_url, &settings.database)
        .await
        .map_err(|e| anyhow::anyhow!("{} (key `{}.database_url`)", e, S::NAME))?;
    if migrate {
        crate::db::migrate::<S::Migrator>(&db).await.map_err(|e| anyhow::anyhow!("{}: {e}", S::NAME))?;
        tracing::info!(service = S::NAME, "schema up to date");
    }
    Ok(db)
}

/// Open the database and register the service: what `serve` does for each service it hosts.
pub async fn start<S: Service>(shared: &Shared, routes: &mut RoutesBuilder) -> anyhow::Result<ServiceModule> {
    let db = open_database::<S>(&shared.settings, shared.settings.database.migrate_on_start).await?;
    let grpc_services = S::register(shared, db.clone(), routes).await?;
    Ok(ServiceModule { name: S::NAME, grpc_services, db })
}

#[derive(Debug, Parser)]
#[command(
    version,
    about = "A CLM service. Settings: built-in defaults < config/default.toml < config/<env>.toml < CLM_* env vars."
)]
struct ServiceCli {
    #[command(subcommand)]
    command: Option<ServiceCommand>,
}

#[derive(Debug, Subcommand)]
enum ServiceCommand {
    /// Serve gRPC, and the hosted pages if the service has any (the default).
    Serve,
    /// Apply schema migrations to this service's database and exit.
    Migrate,
    /// Run every check `serve` runs before it listens (values, auth keys, TLS files), print the
    /// effective listen addresses (gRPC, hosted pages) and exit: non-zero exactly when `serve`
    /// would refuse to start.
    CheckConfig,
}

/// Lifecycle, feedback and metrics ask the contacts service (`crate::contacts`) at their
/// `contacts_url`, which empty means "in this process": right in the single binary, never in
/// another service's own binary, where each of those calls would fail. Say so at start.
fn warn_without_contacts<S: Service>(settings: &Settings) {
    if S::NAME != "contacts" && settings.service(S::NAME).is_some_and(|s| s.contacts_url.is_empty()) {
        tracing::warn!(
            "key `{name}.contacts_url` is empty: this process does not serve the contacts service, so what {name} \
             asks it (segments, filters, which contacts exist) fails; set CLM_{upper}__CONTACTS_URL to the \
             contacts service, e.g. http://127.0.0.1:50061 (README § Distributed mode)",
            name = S::NAME,
            upper = S::NAME.to_uppercase(),
        );
    }
}

/// The `main` of a per-service binary.
pub fn service_main<S: Service>() -> ExitCode {
    let cli = ServiceCli::parse();
    let command = cli.command.unwrap_or(ServiceCommand::Serve);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clm-{}: cannot start runtime: {e}", S::NAME);
            return ExitCode::FAILURE;
        }
    };
    // `serve` and `check-config` run the same checks (keys and TLS files included), so
    // check-config says ok exactly when serve would start.
    let loaded = match command {
        ServiceCommand::Serve | ServiceCommand::CheckConfig => runtime.block_on(Settings::load_for_serve()),
        ServiceCommand::Migrate => Settings::load(),
    };
    let mut settings = match loaded {
        Ok(s) => s,
        Err(e) => {
            eprintln!("clm-{}: {e}", S::NAME);
            return ExitCode::from(2);
        }
    };
    if settings.telemetry.service_name == "clm" {
        settings.telemetry.service_name = format!("clm-{}", S::NAME);
    }
    let result = runtime.block_on(async move {
        match command {
            ServiceCommand::CheckConfig => {
                println!(
                    "configuration ok; listen_addr={} pages_addr={}",
                    settings.server.listen_addr, settings.pages.listen_addr
                );
                Ok(())
            }
            ServiceCommand::Migrate => {
                let _telemetry = crate::telemetry::init(&settings)?;
                open_database::<S>(&settings, true).await.map(|_| ())
            }
            ServiceCommand::Serve => {
                let _telemetry = crate::telemetry::init(&settings)?;
                warn_without_contacts::<S>(&settings);
                let listener = tokio::net::TcpListener::bind(settings.server.listen_addr).await.map_err(|e| {
                    anyhow::anyhow!("cannot listen on {} (key `server.listen_addr`): {e}", settings.server.listen_addr)
                })?;
                let shared = Shared::new(settings).await?;
                let mut routes = RoutesBuilder::default();
                let module = start::<S>(&shared, &mut routes).await?;
                crate::server::serve(&shared, listener, routes, vec![module], crate::server::shutdown_signal()).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "exiting");
            eprintln!("clm-{}: {e:#}", S::NAME);
            ExitCode::FAILURE
        }
    }
}
