//! CLM metrics service. Owns its own database schema (see `store`); talks to other services only
//! through gRPC and events.
//!
//! Status: the service is wired into the server (database, migrations, health), consumes
//! contact events into its read model (`events`), and its contract is in
//! `proto/clm/metrics/v1`; its query handlers land with its own issue.

pub mod events;
pub mod store;

use clm_platform::server::Shared;
use sea_orm::DatabaseConnection;
use tonic::service::RoutesBuilder;

/// The metrics service as the process runtime sees it.
#[derive(Debug)]
pub struct MetricsService;

impl clm_platform::runtime::Service for MetricsService {
    const NAME: &'static str = "metrics";
    type Migrator = store::migrations::Migrator;

    async fn register(
        shared: &Shared,
        db: DatabaseConnection,
        _routes: &mut RoutesBuilder,
    ) -> anyhow::Result<Vec<&'static str>> {
        clm_platform::events::consumer::spawn_consumer(
            shared.bus.clone(),
            db,
            events::consumer_spec(&shared.settings.events),
            std::sync::Arc::new(events::MetricsHandler),
            shared.stopping(),
        );
        Ok(vec!["clm.metrics.v1.MetricsService"])
    }
}
