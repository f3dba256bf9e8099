//! The transport between services, behind one trait: NATS JetStream in the distributed mode
//! (`nats`), a durable database log in the single binary (`log_bus`). Both are at-least-once
//! and keep per-subject order for a single consumer instance. This module is the bottom of
//! the events layers: it defines the trait and what travels through it, the buses implement
//! it, and `transport` picks one from the settings.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// Acknowledges or rejects one delivery.
#[async_trait]
pub trait Acker: Send {
    /// Done: never deliver again to this consumer.
    async fn ack(self: Box<Self>) -> anyhow::Result<()>;
    /// Failed: deliver again later.
    async fn nak(self: Box<Self>) -> anyhow::Result<()>;
    /// Ack without waiting for the bus to confirm (used for all but the last delivery of an
    /// applied batch, whose confirmed ack then follows on the same connection). A lost one
    /// only means a redelivery, which the inbox drops.
    async fn ack_unconfirmed(self: Box<Self>) -> anyhow::Result<()> {
        self.ack().await
    }
    /// Whether acking this delivery also acknowledges every earlier one of its stream (a log
    /// position), so a batch applied in order needs only its last ack.
    fn covers_earlier(&self) -> bool {
        false
    }
}

/// Ack deliveries applied in order: only the last when its ack covers the earlier ones,
/// else the earlier ones without waiting and the last confirmed.
pub async fn ack_all(mut deliveries: Vec<Delivery>) -> anyhow::Result<()> {
    let Some(last) = deliveries.pop() else { return Ok(()) };
    if !(last.acker.covers_earlier() && deliveries.iter().all(|d| d.acker.covers_earlier())) {
        for d in deliveries {
            d.acker.ack_unconfirmed().await?;
        }
    }
    last.ack().await
}

/// One event for [`EventBus::publish_all`].
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub subject: &'a str,
    pub event_id: &'a str,
    pub payload: &'a [u8],
}

/// One message handed to a consumer.
pub struct Delivery {
    pub subject: String,
    pub payload: Bytes,
    acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("subject", &self.subject).field("bytes", &self.payload.len()).finish()
    }
}

impl Delivery {
    pub fn new(subject: String, payload: Bytes, acker: Box<dyn Acker>) -> Self {
        Self { subject, payload, acker }
    }

    /// Whether acking this delivery also acknowledges the earlier ones of its stream.
    pub fn covers_earlier(&self) -> bool {
        self.acker.covers_earlier()
    }

    pub async fn ack(self) -> anyhow::Result<()> {
        self.acker.ack().await
    }

    pub async fn nak(self) -> anyhow::Result<()> {
        self.acker.nak().await
    }
}

#[async_trait]
pub trait EventBus: Send + Sync + std::fmt::Debug + 'static {
    /// The bus's `messaging.system` in spans (OpenTelemetry semantic conventions).
    fn system(&self) -> &'static str {
        "unknown"
    }

    /// Publish one event. `Ok` means the bus has it durably; publishing the same `event_id`
    /// twice is harmless (deduplicated by the bus where it can, by inboxes always).
    async fn publish(&self, subject: &str, event_id: &str, payload: Bytes) -> anyhow::Result<()>;

    /// Publish several events in order, all or none, in one write: `Ok(true)` when done,
    /// `Ok(false)` when this bus cannot (the caller publishes one by one).
    async fn publish_all(&self, _events: &[Outgoing<'_>]) -> anyhow::Result<bool> {
        Ok(false)
    }

    /// Publish `events` in order, as far as the bus takes them: how many (from the first) it
    /// acknowledged, and the error that stopped it, if one did. Each event's publish runs in
    /// its span of `spans`. The default publishes one at a time, waiting for each.
    async fn publish_each(&self, events: &[Outgoing<'_>], spans: &[tracing::Span]) -> (usize, Option<anyhow::Error>) {
        use tracing::Instrument as _;
        for (i, (e, span)) in events.iter().zip(spans).enumerate() {
            let sent =
                self.publish(e.subject, e.event_id, Bytes::copy_from_slice(e.payload)).instrument(span.clone()).await;
            if let Err(err) = sent {
                return (i, Some(err));
            }
        }
        (events.len().min(spans.len()), None)
    }

    /// Up to `max` deliveries for the durable consumer `consumer` of subjects starting with
    /// `prefix`, waiting at most `wait` when none is ready.
    async fn fetch(&self, consumer: &str, prefix: &str, max: usize, wait: Duration) -> anyhow::Result<Vec<Delivery>>;

    /// Rewind `consumer` to the first event (replay).
    async fn reset(&self, consumer: &str, prefix: &str) -> anyhow::Result<()>;

    /// Delete events stored longer than `older_than` that every consumer registered on the
    /// bus has consumed; how many (the pruner, `events::prune`, asks). A bus that ages events out by
    /// itself (JetStream's `max_age`) has nothing to do here.
    async fn prune(&self, _older_than: Duration) -> anyhow::Result<u64> {
        Ok(0)
    }

    /// Follow, in order, every event published from now on whose subject is `pattern` or, for a
    /// pattern ending in `.`, starts with it — whichever replica published it. Nothing is
    /// acknowledged and no durable state is kept on the bus (watch streams use this). The
    /// task behind the receiver retries through outages, resuming after the last event it
    /// passed on; it ends when the receiver is dropped. The default follows nothing.
    fn tail(self: Arc<Self>, pattern: &str) -> tokio::sync::mpsc::Receiver<Bytes> {
        let _ = pattern;
        tokio::sync::mpsc::channel(1).1
    }
}

/// Whether `subject` is one [`EventBus::tail`]'s `pattern` names.
pub fn matches(pattern: &str, subject: &str) -> bool {
    if pattern.ends_with('.') { subject.starts_with(pattern) } else { subject == pattern }
}
