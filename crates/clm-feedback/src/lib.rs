//! CLM feedback service: surveys (NPS, CSAT, CES, custom), invitations with throttling,
//! responses, results and closed-loop follow-up, reviews. Owns its own database schema (see
//! `store`); talks to other services only through gRPC (contacts: segment members, contact
//! checks) and events (consumes lifecycle and contact events, publishes its own). Serves the
//! survey page of invitation links on the hosted pages' port (`pages`).

pub mod api;
pub mod domain;
pub mod events;
pub mod pages;
pub mod store;

use clm_platform::server::Shared;
use sea_orm::DatabaseConnection;
use tonic::service::RoutesBuilder;

/// The feedback service as the process runtime sees it.
#[derive(Debug)]
pub struct FeedbackService;

impl clm_platform::runtime::Service for FeedbackService {
    const NAME: &'static str = "feedback";
    type Migrator = store::migrations::Migrator;

    async fn register(
        shared: &Shared,
        db: DatabaseConnection,
        routes: &mut RoutesBuilder,
    ) -> anyhow::Result<Vec<&'static str>> {
        use clm_platform::events::{consumer, outbox};
        let writer = outbox::OutboxWriter::new(Self::NAME);
        shared.track(outbox::spawn_relay(
            Self::NAME,
            db.clone(),
            shared.bus.clone(),
            &writer,
            shared.relay_options(),
            shared.stopping(),
        ));
        let publisher = events::Publisher::new(writer);
        shared.track(consumer::spawn_consumer(
            shared.bus.clone(),
            db.clone(),
            consumer::ConsumerSpec::new(&shared.settings.events, "feedback", &["contacts", "lifecycle"]),
            std::sync::Arc::new(events::FeedbackHandler { publisher: publisher.clone() }),
            shared.stopping(),
        ));
        // Reminders and recurring surveys (every replica; each claimed once).
        shared.track(events::sweep::spawn(
            db.clone(),
            publisher.clone(),
            std::time::Duration::from_millis(shared.settings.feedback.scheduler_interval_ms.max(10)),
            shared.stopping(),
        ));
        let contacts = clm_platform::contacts::ContactsClient::new(
            "feedback",
            shared.settings.feedback.contacts_url.clone(),
            shared.local_addr.clone(),
            &shared.settings,
        );
        let max = shared.max_message_bytes();
        let api = api::FeedbackApi::new(db, shared.page_tokens.clone(), publisher, contacts);
        // The survey page of invitation links (`/s/<token>`), on the process's pages port.
        shared.add_pages(pages::router(api.clone()));
        let server = clm_proto::feedback::v1::feedback_service_server::FeedbackServiceServer::new(api)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        routes.add_service(server);
        Ok(vec!["clm.feedback.v1.FeedbackService"])
    }
}
