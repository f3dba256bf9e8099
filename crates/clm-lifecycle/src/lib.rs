//! CLM lifecycle service: lifecycle models, contacts' journeys through them (built-in rules,
//! dormancy, reactivation, manual moves), automations, and the StageChanged events other
//! services follow. Owns its own database (`store`); talks to other services only through
//! gRPC (asking contacts about filters and segments) and events.
//!
//! Modules, top to bottom; each uses only the ones below it (`tests/architecture.rs`):
//! - `pages`: the hosted pages (HTTP) links in messages open: the unsubscribe confirmation.
//! - `api`: the gRPC handlers of `clm.lifecycle.v1.LifecycleService`, one module per resource.
//! - `events`: what lifecycle consumes (`LifecycleHandler`), the scheduler's sweep, and the
//!   feed `WatchStageChanges` streams.
//! - `journeys`: the one use case that changes a journey (`advance`), the automations it owes
//!   (run after commit, never with a transaction open while asking contacts) and the campaign
//!   engine (enrolments, steps, durable timers).
//! - `messaging`: messages to contacts — deliveries queued in the caller's transaction, sent
//!   after commit by the sender (SMTP, signed webhooks) while consent allows; unsubscribes.
//! - `contacts_client`: what automations need to run — the publisher and the contacts service.
//! - `publish`: what lifecycle publishes (StageChanged, JourneyEventRecorded,
//!   AutomationTriggered, LifecycleModelChanged, UnsubscribeRecorded), appended to the outbox in the caller's
//!   transaction.
//! - `convert`: proto ↔ domain (models, journey events, transitions).
//! - `store`: schema, migrations, queries; every query takes the `TenantId`.
//! - `domain`: the rules as pure functions (models; a journey replayed from its timeline).

pub mod api;
pub mod contacts_client;
pub mod convert;
pub mod domain;
pub mod events;
pub mod journeys;
pub mod messaging;
pub mod pages;
pub mod publish;
pub mod store;

use clm_platform::server::Shared;
use sea_orm::DatabaseConnection;
use tonic::service::RoutesBuilder;

/// The lifecycle service as the process runtime sees it.
#[derive(Debug)]
pub struct LifecycleService;

impl clm_platform::runtime::Service for LifecycleService {
    const NAME: &'static str = "lifecycle";
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
        let publisher = publish::Publisher::new(writer);
        let automator = contacts_client::Automator {
            publisher: publisher.clone(),
            contacts: contacts_client::ContactsProbe::new(
                "lifecycle",
                shared.settings.lifecycle.contacts_url.clone(),
                shared.local_addr.clone(),
                &shared.settings,
            ),
        };
        shared.track(consumer::spawn_consumer(
            shared.bus.clone(),
            db.clone(),
            consumer::ConsumerSpec::new(&shared.settings.events, "lifecycle", &["contacts", "feedback"]),
            std::sync::Arc::new(events::LifecycleHandler { publisher: publisher.clone() }),
            shared.stopping(),
        ));
        shared.track(events::scheduler::spawn(
            db.clone(),
            automator.clone(),
            std::time::Duration::from_millis(shared.settings.lifecycle.scheduler_interval_ms.max(100)),
            shared.stopping(),
        ));
        // Automations owed by consumed events (and any a crash or an error left behind).
        shared.track(journeys::automations::spawn_runner(
            db.clone(),
            automator.clone(),
            shared.relay_options().poll,
            shared.stopping(),
        ));
        let m = &shared.settings.messaging;
        let links = messaging::links::Links::new(&m.link_secret, &m.public_url);
        shared.track(messaging::lanes::spawn(
            messaging::sender::Sender::from_settings(db.clone(), automator.contacts.clone(), links.clone(), m)?,
            shared.stopping(),
        ));
        // Campaign enrolments whose timer is due (and new ones, woken at once).
        shared.track(journeys::campaigns::spawn_runner(
            db.clone(),
            automator.clone(),
            std::time::Duration::from_millis(m.poll_interval_ms.max(10)),
            shared.stopping(),
        ));
        shared.add_pages(pages::router(db.clone(), links.clone(), publisher.clone()));
        let changes = events::watch::changes();
        shared.track(events::watch::spawn_feed(shared.bus.clone(), db.clone(), changes.clone(), shared.stopping()));
        let max = shared.max_message_bytes();
        let server = clm_proto::lifecycle::v1::lifecycle_service_server::LifecycleServiceServer::new(
            api::LifecycleApi::new(db, shared.page_tokens.clone(), automator, changes, links),
        )
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
        routes.add_service(server);
        Ok(vec!["clm.lifecycle.v1.LifecycleService"])
    }
}
