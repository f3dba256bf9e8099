//! CLM contacts service: the single source of truth about who each customer is and where they
//! came from. Rooms: `api` (gRPC handlers), `domain` (rules, no I/O), `store` (schema, queries).

pub mod api;
pub mod domain;
pub mod events;
pub mod store;

use clm_platform::server::Shared;
use sea_orm::DatabaseConnection;
use tonic::service::RoutesBuilder;

/// The contacts service as the process runtime sees it.
#[derive(Debug)]
pub struct ContactsService;

impl clm_platform::runtime::Service for ContactsService {
    const NAME: &'static str = "contacts";
    type Migrator = store::migrations::Migrator;

    async fn register(
        shared: &Shared,
        db: DatabaseConnection,
        routes: &mut RoutesBuilder,
    ) -> anyhow::Result<Vec<&'static str>> {
        let max = shared.max_message_bytes();
        let outbox = clm_platform::events::outbox::OutboxWriter::new(Self::NAME);
        shared.track(clm_platform::events::outbox::spawn_relay(
            Self::NAME,
            db.clone(),
            shared.bus.clone(),
            &outbox,
            shared.relay_options(),
            shared.stopping(),
        ));
        let publisher = events::Publisher::new(outbox);
        shared.track(clm_platform::events::consumer::spawn_consumer(
            shared.bus.clone(),
            db.clone(),
            clm_platform::events::consumer::ConsumerSpec::new(&shared.settings.events, "contacts", &["lifecycle"]),
            std::sync::Arc::new(events::LifecycleEvents { publisher: publisher.clone() }),
            shared.stopping(),
        ));
        let server = clm_proto::contacts::v1::contacts_service_server::ContactsServiceServer::new(
            api::ContactsApi::new(db, shared.page_tokens.clone(), publisher).with_max_message_bytes(max),
        )
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
        routes.add_service(server);
        Ok(vec!["clm.contacts.v1.ContactsService"])
    }
}
