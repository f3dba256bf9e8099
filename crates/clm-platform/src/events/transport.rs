//! Which bus a process uses: the settings' `events.transport` picks one of the
//! implementations of [`EventBus`] (above them all, so neither knows of the other).

use std::sync::Arc;

use super::bus::EventBus;
use super::log_bus::LogBus;
use super::nats::NatsBus;
use crate::config::{DatabaseSettings, EventSettings, EventTransport};

/// Build the bus the settings ask for: the durable log (`events.log_database_url`) or NATS
/// JetStream (`events.nats_url`).
pub async fn from_settings(settings: &EventSettings, db: &DatabaseSettings) -> anyhow::Result<Arc<dyn EventBus>> {
    match settings.transport {
        EventTransport::Log => Ok(Arc::new(LogBus::connect(&settings.log_database_url, db).await?)),
        EventTransport::Nats => Ok(Arc::new(NatsBus::connect(settings).await?)),
    }
}
