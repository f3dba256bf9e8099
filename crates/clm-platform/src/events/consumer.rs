//! Running a consumer: fetch from the bus, apply each event through the inbox in order, ack.
//! A failure naks the event and the rest of its batch (so order holds) and retries with
//! backoff; an undecodable event is logged and acked (it can never succeed).

use std::sync::Arc;
use std::time::Duration;

use clm_proto::events::v1::EventEnvelope;
use prost::Message;
use sea_orm::DatabaseConnection;
use tokio::sync::watch;
use tracing::Instrument;

use super::bus::EventBus;
use super::inbox::{EventHandler, apply_once};

/// A consumer's identity and what it listens to.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Durable name, e.g. `metrics`.
    pub name: String,
    /// Subject prefixes, e.g. `clm.contacts.`.
    pub prefixes: Vec<String>,
    pub batch: usize,
    pub wait: Duration,
}

impl ConsumerSpec {
    /// The durable consumer `name` (after `events.consumer_prefix`) of everything the
    /// `producers` services publish, batch size from the settings.
    pub fn new(settings: &crate::config::EventSettings, name: &str, producers: &[&str]) -> Self {
        Self {
            name: format!("{}{name}", settings.consumer_prefix),
            prefixes: producers.iter().map(|p| super::service_subjects(p)).collect(),
            batch: settings.consumer_batch,
            wait: Duration::from_millis(500),
        }
    }
}

/// Process what is available once for `prefix`; returns events seen.
pub async fn consume_once(
    bus: &dyn EventBus,
    db: &DatabaseConnection,
    spec: &ConsumerSpec,
    prefix: &str,
    handler: &dyn EventHandler,
) -> anyhow::Result<usize> {
    let deliveries = bus.fetch(&spec.name, prefix, spec.batch, spec.wait).await?;
    apply_batch(db, spec, deliveries, handler).await
}

fn consume_span(spec: &ConsumerSpec, env: &EventEnvelope) -> tracing::Span {
    let span = tracing::info_span!(
        "event.consume",
        otel.name = %format!("consume {}", env.event_type),
        otel.kind = "consumer",
        consumer = %spec.name,
        event_id = %env.event_id,
        tenant = %env.tenant_id,
    );
    crate::telemetry::set_remote_parent(&span, crate::telemetry::context_from_map(&env.trace_context));
    span
}

/// The whole batch in one transaction (one commit instead of one per event: the consumer's
/// throughput). Any failure rolls it all back; the caller then goes event by event.
async fn apply_together(
    db: &DatabaseConnection,
    spec: &ConsumerSpec,
    envs: &[EventEnvelope],
    handler: &dyn EventHandler,
) -> anyhow::Result<()> {
    let txn = crate::db::begin_write(db).await?;
    // One inbox read and one inbox write for the batch, not one per event.
    let ids: Vec<&str> = envs.iter().map(|e| e.event_id.as_str()).collect();
    let mut seen = super::inbox::applied_among(&txn, &spec.name, &ids).await?;
    let fresh: Vec<&EventEnvelope> = envs.iter().filter(|e| seen.insert(e.event_id.clone())).collect();
    handler.handle_batch(&txn, &fresh, &|env| consume_span(spec, env)).await?;
    let ids: Vec<&str> = fresh.iter().map(|e| e.event_id.as_str()).collect();
    super::inbox::record_applied(&txn, &spec.name, &ids).await?;
    txn.commit().await?;
    Ok(())
}

/// Apply fetched deliveries in order through the inbox and ack them: all in one transaction
/// when it succeeds, else one by one — on a failure nak it and the rest (so order holds) and
/// return the error.
async fn apply_batch(
    db: &DatabaseConnection,
    spec: &ConsumerSpec,
    deliveries: Vec<super::bus::Delivery>,
    handler: &dyn EventHandler,
) -> anyhow::Result<usize> {
    let n = deliveries.len();
    if n > 1 {
        let decoded: Option<Vec<EventEnvelope>> =
            deliveries.iter().map(|d| EventEnvelope::decode(d.payload.clone()).ok()).collect();
        if let Some(envs) = decoded {
            match apply_together(db, spec, &envs, handler).await {
                Ok(()) => {
                    super::bus::ack_all(deliveries).await?;
                    return Ok(n);
                }
                Err(e) => {
                    tracing::debug!(consumer = %spec.name, error = %e, "batch not applied together; one event at a time");
                }
            }
        }
    }
    let mut iter = deliveries.into_iter();
    while let Some(d) = iter.next() {
        let env = match EventEnvelope::decode(d.payload.clone()) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(subject = %d.subject, error = %e, "undecodable event skipped");
                d.ack().await?;
                continue;
            }
        };
        match apply_once(db, &spec.name, &env, handler).instrument(consume_span(spec, &env)).await {
            Ok(_) => d.ack().await?,
            Err(e) => {
                tracing::warn!(consumer = %spec.name, event_id = %env.event_id, error = %e, "event not applied; will retry");
                d.nak().await?;
                for rest in iter {
                    rest.nak().await?;
                }
                anyhow::bail!("event {} not applied: {e}", env.event_id);
            }
        }
    }
    Ok(n)
}

/// Run a consumer until `stop` turns true.
///
/// Each subject prefix (producing service) is fetched by a task of its own, so a quiet producer's
/// long poll never delays another's events; the batches are applied one at a time (a lock per
/// consumer), so the read model has a single writer, as with one replica.
pub fn spawn_consumer(
    bus: Arc<dyn EventBus>,
    db: DatabaseConnection,
    spec: ConsumerSpec,
    handler: Arc<dyn EventHandler>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let spec = Arc::new(spec);
    let writer = Arc::new(tokio::sync::Mutex::new(()));
    tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for prefix in spec.prefixes.clone() {
            let (bus, db, spec, handler, writer) =
                (bus.clone(), db.clone(), spec.clone(), handler.clone(), writer.clone());
            let mut stop = stop.clone();
            tasks.spawn(async move {
                let mut backoff = Duration::from_millis(100);
                loop {
                    if *stop.borrow() {
                        return;
                    }
                    let work = async {
                        let deliveries = bus.fetch(&spec.name, &prefix, spec.batch, spec.wait).await?;
                        if deliveries.is_empty() {
                            return Ok(0);
                        }
                        let _writer = writer.lock().await;
                        apply_batch(&db, &spec, deliveries, handler.as_ref()).await
                    };
                    let result = tokio::select! {
                        r = work => r,
                        _ = stop.changed() => return,
                    };
                    match result {
                        Ok(_) => backoff = Duration::from_millis(100),
                        Err(e) => {
                            tracing::warn!(consumer = %spec.name, %prefix, error = %e, retry_in_ms = backoff.as_millis() as u64, "consumer backing off");
                            tokio::select! {
                                () = tokio::time::sleep(backoff) => {},
                                _ = stop.changed() => return,
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                        }
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    })
}

/// Replay: clear the consumer's inbox and read model, then rewind it on the bus.
pub async fn replay(
    bus: &dyn EventBus,
    db: &DatabaseConnection,
    spec: &ConsumerSpec,
    handler: &dyn EventHandler,
) -> anyhow::Result<()> {
    super::inbox::reset(db, &spec.name, handler).await?;
    for prefix in &spec.prefixes {
        bus.reset(&spec.name, prefix).await?;
    }
    Ok(())
}
