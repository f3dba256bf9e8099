//! CLM metrics service: funnel, stage KPIs, channels, cohorts, lifecycle breakdown, customer
//! value, goals and scorecard, KPI series and live updates. Its read model (see `store`) is
//! fed only by events (contacts, lifecycle, feedback), kept current as they arrive, and
//! rebuildable by replaying them (`clm replay --consumer metrics`).

pub mod api;
pub mod domain;
pub mod events;
pub mod store;
pub mod watch;

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
        routes: &mut RoutesBuilder,
    ) -> anyhow::Result<Vec<&'static str>> {
        shared.track(clm_platform::events::consumer::spawn_consumer(
            shared.bus.clone(),
            db.clone(),
            events::consumer_spec(&shared.settings.events),
            std::sync::Arc::new(events::MetricsHandler),
            shared.stopping(),
        ));
        let contacts = clm_platform::contacts::ContactsClient::new(
            "metrics",
            shared.settings.metrics.contacts_url.clone(),
            shared.local_addr.clone(),
            &shared.settings,
        );
        let max = shared.max_message_bytes();
        let server = clm_proto::metrics::v1::metrics_service_server::MetricsServiceServer::new(api::MetricsApi::new(
            db,
            shared.page_tokens.clone(),
            contacts,
        ))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
        routes.add_service(server);
        Ok(vec!["clm.metrics.v1.MetricsService"])
    }
}
