//! NATS JetStream as the bus of the distributed mode.
//!
//! One stream per producing service (`<prefix>_<SERVICE>` over `clm.<service>.>`), file
//! storage; publishes carry `Nats-Msg-Id` = event id so JetStream drops duplicates within its
//! window. Each consuming service has a durable pull consumer per producer stream, so several
//! replicas of a consumer share the work. Start-up does not wait for NATS: the client retries
//! in the background while the outbox keeps every event.
//!
//! Each stream keeps a message `events.stream_max_age_hours` (JetStream deletes older ones) on
//! `events.stream_replicas` servers. Both are applied to a stream that already exists, as
//! earlier versions created it without limits; its other settings are left as they are.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Mutex;

use super::bus::{Acker, Delivery, EventBus};
use crate::config::EventSettings;

pub struct NatsBus {
    js: jetstream::Context,
    stream_prefix: String,
    namespace: String,
    /// `max_age` of every stream (zero: no limit) and its replicas.
    max_age: Duration,
    replicas: usize,
    streams: Mutex<HashMap<String, jetstream::stream::Stream>>,
    consumers: Mutex<HashMap<(String, String), PullConsumer>>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus").field("stream_prefix", &self.stream_prefix).finish_non_exhaustive()
    }
}

/// `clm.contacts.` or `clm.contacts.contact.ContactCreated` → `contacts`.
fn service_of(subject: &str) -> anyhow::Result<&str> {
    subject
        .strip_prefix("clm.")
        .and_then(|r| r.split('.').next())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow::anyhow!("subject {subject:?} is not clm.<service>.…"))
}

impl NatsBus {
    pub async fn connect(settings: &EventSettings) -> anyhow::Result<Self> {
        let client = async_nats::ConnectOptions::new()
            .name("clm")
            .connection_timeout(Duration::from_secs(5))
            .retry_on_initial_connect()
            // Reconnect soon after the server is back: 50 ms doubling to at most 1 s (the
            // library's default grows to 4 s, a long pause for a broker on the same network).
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(50_u64.saturating_mul(1 << attempts.min(5)).min(1000))
            })
            .connect(settings.nats_url.as_str())
            .await
            .map_err(|e| anyhow::anyhow!("NATS at {} (key `events.nats_url`): {e}", settings.nats_url))?;
        Ok(Self {
            js: jetstream::new(client),
            stream_prefix: settings.stream_prefix.clone(),
            namespace: settings.nats_namespace.clone(),
            max_age: Duration::from_secs(settings.stream_max_age_hours.saturating_mul(3600)),
            replicas: settings.stream_replicas,
            streams: Mutex::new(HashMap::new()),
            consumers: Mutex::new(HashMap::new()),
        })
    }

    /// The NATS subject of a logical `clm.…` subject (namespaced when configured).
    fn physical(&self, subject: &str) -> String {
        if self.namespace.is_empty() { subject.to_owned() } else { format!("{}.{subject}", self.namespace) }
    }

    fn logical<'a>(&self, subject: &'a str) -> &'a str {
        if self.namespace.is_empty() {
            subject
        } else {
            subject.strip_prefix(&self.namespace).and_then(|s| s.strip_prefix('.')).unwrap_or(subject)
        }
    }

    /// Delete the streams this bus created or used (tests, teardown of an environment).
    pub async fn delete_streams(&self) -> anyhow::Result<()> {
        let names: Vec<String> =
            self.streams.lock().await.values().map(|s| s.cached_info().config.name.clone()).collect();
        for name in names {
            self.js.delete_stream(&name).await.map_err(|e| anyhow::anyhow!("delete stream {name}: {e}"))?;
        }
        self.streams.lock().await.clear();
        self.consumers.lock().await.clear();
        Ok(())
    }

    async fn stream(&self, service: &str) -> anyhow::Result<jetstream::stream::Stream> {
        let mut streams = self.streams.lock().await;
        if let Some(s) = streams.get(service) {
            return Ok(s.clone());
        }
        let name = format!("{}_{}", self.stream_prefix, service.to_ascii_uppercase());
        let mut stream = self
            .js
            .get_or_create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![self.physical(&format!("clm.{service}.>"))],
                storage: jetstream::stream::StorageType::File,
                duplicate_window: Duration::from_mins(2),
                max_age: self.max_age,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("JetStream stream {name} {}: {e}", self.limits()))?;
        let have = &stream.cached_info().config;
        if have.max_age != self.max_age || have.num_replicas != self.replicas {
            let mut want = have.clone();
            want.max_age = self.max_age;
            want.num_replicas = self.replicas;
            self.js
                .update_stream(&want)
                .await
                .map_err(|e| anyhow::anyhow!("JetStream stream {name}: cannot apply {}: {e}", self.limits()))?;
            stream = self.js.get_stream(&name).await.map_err(|e| anyhow::anyhow!("JetStream stream {name}: {e}"))?;
            tracing::info!(stream = %name, max_age_hours = self.max_age.as_secs() / 3600, replicas = self.replicas, "JetStream stream limits updated");
        }
        streams.insert(service.to_owned(), stream.clone());
        Ok(stream)
    }

    /// The limits this bus gives its streams, naming their keys (for errors).
    fn limits(&self) -> String {
        format!(
            "(`events.stream_max_age_hours` = {}, `events.stream_replicas` = {}: more than 1 needs a clustered NATS)",
            self.max_age.as_secs() / 3600,
            self.replicas
        )
    }

    async fn consumer(&self, consumer: &str, prefix: &str) -> anyhow::Result<PullConsumer> {
        let service = service_of(prefix)?.to_owned();
        let key = (consumer.to_owned(), service.clone());
        if let Some(c) = self.consumers.lock().await.get(&key) {
            return Ok(c.clone());
        }
        let stream = self.stream(&service).await?;
        let durable = format!("{consumer}-from-{service}");
        let c: PullConsumer = stream
            .get_or_create_consumer(
                &durable,
                jetstream::consumer::pull::Config {
                    durable_name: Some(durable.clone()),
                    filter_subject: self.physical(&format!("clm.{service}.>")),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    deliver_policy: jetstream::consumer::DeliverPolicy::All,
                    // A delivery whose consumer died (kill -9, or NATS itself restarted before the
                    // ack arrived) is redelivered after this; a batch takes well under it to apply.
                    ack_wait: Duration::from_secs(10),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("JetStream consumer {durable}: {e}"))?;
        self.consumers.lock().await.insert(key, c.clone());
        Ok(c)
    }
}

impl NatsBus {
    async fn collect(&self, mut batch: jetstream::consumer::pull::Batch) -> anyhow::Result<Vec<Delivery>> {
        let mut out = Vec::new();
        while let Some(msg) = batch.next().await {
            let msg = msg.map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
            let logical = self.logical(&msg.subject).to_owned();
            out.push(Delivery::new(logical, msg.payload.clone(), Box::new(NatsAck(msg))));
        }
        Ok(out)
    }
}

struct NatsAck(jetstream::Message);

#[async_trait]
impl Acker for NatsAck {
    async fn ack(self: Box<Self>) -> anyhow::Result<()> {
        self.0.double_ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))
    }

    async fn ack_unconfirmed(self: Box<Self>) -> anyhow::Result<()> {
        self.0.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))
    }

    async fn nak(self: Box<Self>) -> anyhow::Result<()> {
        self.0
            .ack_with(jetstream::AckKind::Nak(Some(Duration::from_millis(500))))
            .await
            .map_err(|e| anyhow::anyhow!("nak: {e}"))
    }
}

#[async_trait]
impl EventBus for NatsBus {
    fn system(&self) -> &'static str {
        crate::telemetry::semconv::NATS
    }

    async fn publish(&self, subject: &str, event_id: &str, payload: Bytes) -> anyhow::Result<()> {
        self.stream(service_of(subject)?).await?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", event_id);
        let ack = self
            .js
            .publish_with_headers(self.physical(subject), headers, payload)
            .await
            .map_err(|e| anyhow::anyhow!("publish: {e}"))?;
        ack.await.map_err(|e| anyhow::anyhow!("publish ack: {e}"))?;
        Ok(())
    }

    /// All the publishes go out first, then their acknowledgements are awaited: one round
    /// trip to JetStream for the batch instead of one per event. JetStream stores one
    /// connection's messages in the order sent; what follows a failure is published again
    /// later (deduplicated by `Nats-Msg-Id`).
    async fn publish_each(
        &self,
        events: &[super::bus::Outgoing<'_>],
        spans: &[tracing::Span],
    ) -> (usize, Option<anyhow::Error>) {
        use tracing::Instrument as _;
        let mut acks = Vec::with_capacity(events.len());
        let mut stopped = None;
        for (e, span) in events.iter().zip(spans) {
            let sent = async {
                self.stream(service_of(e.subject)?).await?;
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", e.event_id);
                self.js
                    .publish_with_headers(self.physical(e.subject), headers, Bytes::copy_from_slice(e.payload))
                    .await
                    .map_err(|err| anyhow::anyhow!("publish: {err}"))
            }
            .instrument(span.clone())
            .await;
            match sent {
                Ok(ack) => acks.push(ack),
                Err(err) => {
                    stopped = Some(err);
                    break;
                }
            }
        }
        let mut done = 0;
        for ack in acks {
            if let Err(err) = ack.await {
                return (done, Some(anyhow::anyhow!("publish ack: {err}")));
            }
            done += 1;
        }
        (done, stopped)
    }

    /// What is there now (up to `max`, no waiting); when nothing is, a long poll for one message
    /// for up to `wait`. Either pull request completes on the server before this returns, so no
    /// message is ever handed to a request nobody reads (it would sit out `ack_wait`).
    async fn fetch(&self, consumer: &str, prefix: &str, max: usize, wait: Duration) -> anyhow::Result<Vec<Delivery>> {
        let c = self.consumer(consumer, prefix).await?;
        let now = c.fetch().max_messages(max).messages().await.map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
        let mut out = self.collect(now).await?;
        if out.is_empty() {
            let poll = c
                .batch()
                .max_messages(1)
                .expires(wait.max(Duration::from_millis(10)))
                .messages()
                .await
                .map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
            out = self.collect(poll).await?;
        }
        Ok(out)
    }

    /// An ordered consumer (ephemeral, no acks; the client recreates it on a gap) from the next
    /// message on; after an outage a new one starts after the last stream sequence passed on.
    fn tail(self: std::sync::Arc<Self>, pattern: &str) -> tokio::sync::mpsc::Receiver<Bytes> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let pattern = pattern.to_owned();
        tokio::spawn(async move {
            let filter =
                if pattern.ends_with('.') { self.physical(&format!("{pattern}>")) } else { self.physical(&pattern) };
            let mut next: Option<u64> = None;
            let mut backoff = Duration::from_millis(100);
            while !tx.is_closed() {
                let followed = async {
                    let stream = self.stream(service_of(&pattern)?).await?;
                    let deliver_policy = match next {
                        Some(start_sequence) => jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence },
                        None => jetstream::consumer::DeliverPolicy::New,
                    };
                    let consumer = stream
                        .create_consumer(jetstream::consumer::pull::OrderedConfig {
                            filter_subject: filter.clone(),
                            deliver_policy,
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| anyhow::anyhow!("tail {filter}: {e}"))?;
                    let mut messages = consumer.messages().await.map_err(|e| anyhow::anyhow!("tail {filter}: {e}"))?;
                    while let Some(m) = messages.next().await {
                        let m = m.map_err(|e| anyhow::anyhow!("tail {filter}: {e}"))?;
                        if let Ok(info) = m.info() {
                            next = Some(info.stream_sequence + 1);
                        }
                        backoff = Duration::from_millis(100);
                        if tx.send(m.payload.clone()).await.is_err() {
                            break;
                        }
                    }
                    Ok::<(), anyhow::Error>(())
                }
                .await;
                if let Err(e) = followed {
                    tracing::debug!(error = %e, retry_in_ms = backoff.as_millis() as u64, "tail interrupted");
                }
                if tx.is_closed() {
                    break;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        });
        rx
    }

    async fn reset(&self, consumer: &str, prefix: &str) -> anyhow::Result<()> {
        let service = service_of(prefix)?.to_owned();
        let stream = self.stream(&service).await?;
        let durable = format!("{consumer}-from-{service}");
        self.consumers.lock().await.remove(&(consumer.to_owned(), service));
        match stream.delete_consumer(&durable).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("not found") => Ok(()),
            Err(e) => Err(anyhow::anyhow!("reset {durable}: {e}")),
        }
    }
}
