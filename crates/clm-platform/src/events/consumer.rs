//! Running a consumer: fetch from the bus, apply each event through the inbox in order, ack.
//! A failure naks the event and the rest of its batch (so order holds) and retries with
//! backoff; an undecodable event is logged and acked (it can never succeed).

use std::sync::Arc;
use std::time::Duration;

use clm_proto::events::v1::EventEnvelope;
use prost::Message;
use sea_orm::DatabaseConnection;
use tokio::sync::watch;

use super::bus::EventBus;
use super::inbox::EventHandler;
use super::ordering::{Positions, Verdict};

/// A consumer's identity and what it listens to.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Durable name, e.g. `metrics`.
    pub name: String,
    /// Subject prefixes, e.g. `clm.contacts.`.
    pub prefixes: Vec<String>,
    pub batch: usize,
    pub wait: Duration,
    /// How long an event waits for its contact's earlier one (or a cause from another
    /// service) before it is applied anyway.
    pub order_wait: Duration,
    /// Since when this process has been holding each event it holds.
    pub waiting: Waiting,
    /// The bus's `messaging.system`, for the consumer's spans (`telemetry::semconv`).
    pub system: &'static str,
}

/// When this process first held each event it is holding back ([`Verdict::Hold`]), so one
/// whose predecessor never comes is applied after `order_wait` — measured from when it was
/// first held here, not from when it was published, so a replay of old events waits too.
#[derive(Debug, Clone, Default)]
pub struct Waiting(Arc<std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>>);

impl Waiting {
    /// Whether `event_id` has been held longer than `limit` (starting its clock if new).
    fn overdue(&self, event_id: &str, limit: Duration) -> bool {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() > 100_000 {
            // Entries of events another replica applied meanwhile are never forgotten here.
            map.retain(|_, since| since.elapsed() < limit * 4);
        }
        map.entry(event_id.to_owned()).or_insert_with(std::time::Instant::now).elapsed() > limit
    }

    fn forget<'a>(&self, event_ids: impl IntoIterator<Item = &'a str>) {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.is_empty() {
            return;
        }
        for id in event_ids {
            map.remove(id);
        }
    }
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
            order_wait: Duration::from_millis(settings.order_wait_ms),
            waiting: Waiting::default(),
            system: crate::telemetry::semconv::messaging_system(settings.transport),
        }
    }
}

/// Process what is available once for `prefix`: what was acknowledged and what put back.
pub async fn consume_once(
    bus: &dyn EventBus,
    db: &DatabaseConnection,
    spec: &ConsumerSpec,
    prefix: &str,
    handler: &dyn EventHandler,
) -> anyhow::Result<Settled> {
    let deliveries = bus.fetch(&spec.name, prefix, spec.batch, spec.wait).await?;
    apply_batch(db, spec, deliveries, handler).await
}

fn consume_span(spec: &ConsumerSpec, env: &EventEnvelope) -> tracing::Span {
    crate::telemetry::semconv::process_span(
        spec.system,
        &spec.name,
        &super::subject(env),
        &env.event_id,
        &env.tenant_id,
        &env.trace_context,
    )
}

/// What became of a batch's deliveries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// Applied now, or found applied before: acknowledged.
    pub done: usize,
    /// Put back: an earlier event of one of their contacts is not applied yet.
    pub held: usize,
}

/// Apply `envs` (in order) in one transaction: each that is next for its contacts
/// ([`super::ordering`]) and new to the inbox is applied, one applied before is skipped, one
/// whose predecessor is missing is held. On PostgreSQL the transaction first takes the
/// consumer's lock, so the consumer's replicas write its read model one at a time (no lost
/// updates between them) and each sees what the one before committed. Any failure rolls it
/// all back.
async fn apply_together(
    db: &DatabaseConnection,
    spec: &ConsumerSpec,
    envs: &[EventEnvelope],
    handler: &dyn EventHandler,
) -> anyhow::Result<Vec<Verdict>> {
    // A unit of work: what the handler appends to its own outbox is published on commit.
    let txn = super::work::UnitOfWork::begin(db).await?;
    crate::db::advisory_lock(&txn, &format!("consumer:{}", spec.name)).await?;
    // One inbox read, one positions read and one write of each for the batch.
    let ids: Vec<&str> = envs.iter().map(|e| e.event_id.as_str()).collect();
    let mut seen = super::inbox::applied_among(&txn, &spec.name, &ids).await?;
    let refs: Vec<&EventEnvelope> = envs.iter().collect();
    let mut positions = Positions::load(&txn, &spec.name, &refs).await?;
    let consumes = |service: &str| spec.prefixes.iter().any(|p| *p == super::service_subjects(service));
    let mut verdicts = Vec::with_capacity(envs.len());
    let mut fresh: Vec<&EventEnvelope> = Vec::new();
    for env in envs {
        let verdict = if seen.contains(&env.event_id) {
            Verdict::Skip
        } else {
            match positions.judge(env, &consumes, false) {
                Verdict::Hold if spec.waiting.overdue(&env.event_id, spec.order_wait) => {
                    positions.judge(env, &consumes, true)
                }
                v => v,
            }
        };
        if verdict == Verdict::Apply {
            seen.insert(env.event_id.clone());
            positions.advance(env);
            fresh.push(env);
        }
        verdicts.push(verdict);
    }
    handler.handle_batch(&txn, &fresh, &|env| consume_span(spec, env)).await?;
    let ids: Vec<&str> = fresh.iter().map(|e| e.event_id.as_str()).collect();
    super::inbox::record_applied(&txn, &spec.name, &ids).await?;
    positions.save(&txn, &spec.name).await?;
    txn.commit().await?;
    spec.waiting
        .forget(envs.iter().zip(&verdicts).filter(|(_, v)| **v != Verdict::Hold).map(|(e, _)| e.event_id.as_str()));
    Ok(verdicts)
}

/// Acknowledge what was applied or skipped and put back what was held. Where an ack also
/// acknowledges every earlier delivery of the stream (a log position), only the part before
/// the first held one is acknowledged; the rest comes again and is skipped.
async fn settle(deliveries: Vec<super::bus::Delivery>, verdicts: &[Verdict]) -> anyhow::Result<Settled> {
    let held = verdicts.iter().filter(|v| **v == Verdict::Hold).count();
    let mut out = Settled { done: deliveries.len() - held, held };
    let first_held = verdicts.iter().position(|v| *v == Verdict::Hold).unwrap_or(verdicts.len());
    let positional = deliveries.iter().any(super::bus::Delivery::covers_earlier);
    let mut ack = Vec::new();
    let mut nak = Vec::new();
    for (i, (d, v)) in deliveries.into_iter().zip(verdicts).enumerate() {
        if *v == Verdict::Hold || (positional && i >= first_held) {
            nak.push(d);
        } else {
            ack.push(d);
        }
    }
    if positional {
        out.done = first_held;
    }
    super::bus::ack_all(ack).await?;
    for d in nak {
        d.nak().await?;
    }
    Ok(out)
}

/// Apply fetched deliveries in order through the inbox and the ordering positions, then
/// settle them: all in one transaction when it succeeds, else one by one — on a failure nak
/// it and the rest (so order holds) and return the error.
async fn apply_batch(
    db: &DatabaseConnection,
    spec: &ConsumerSpec,
    deliveries: Vec<super::bus::Delivery>,
    handler: &dyn EventHandler,
) -> anyhow::Result<Settled> {
    let mut kept = Vec::with_capacity(deliveries.len());
    let mut envs = Vec::with_capacity(deliveries.len());
    let mut undecodable = 0;
    let mut later = Vec::new();
    let mut iter = deliveries.into_iter();
    while let Some(d) = iter.next() {
        match EventEnvelope::decode(d.payload.clone()) {
            Ok(env) => {
                envs.push(env);
                kept.push(d);
            }
            // Its ack would acknowledge those before it, not applied yet: apply them first,
            // and it comes again at the head of the next fetch.
            Err(_) if d.covers_earlier() && !kept.is_empty() => {
                later.push(d);
                later.extend(iter.by_ref());
            }
            // It can never succeed: acknowledged, so it does not block what follows.
            Err(e) => {
                tracing::error!(subject = %d.subject, error = %e, "undecodable event skipped");
                undecodable += 1;
                d.ack().await?;
            }
        }
    }
    for d in later {
        d.nak().await?;
    }
    if kept.len() > 1 {
        match apply_together(db, spec, &envs, handler).await {
            Ok(verdicts) => {
                let mut s = settle(kept, &verdicts).await?;
                s.done += undecodable;
                return Ok(s);
            }
            Err(e) => {
                tracing::debug!(consumer = %spec.name, error = %e, "batch not applied together; one event at a time");
            }
        }
    }
    let mut total = Settled { done: undecodable, held: 0 };
    let mut rest = kept.into_iter().zip(envs);
    while let Some((d, one)) = rest.next() {
        // The event is applied under its process span, which `apply_together` makes for it.
        match apply_together(db, spec, std::slice::from_ref(&one), handler).await {
            Ok(verdicts) => {
                let s = settle(vec![d], &verdicts).await?;
                total.done += s.done;
                total.held += s.held;
            }
            Err(e) => {
                tracing::warn!(consumer = %spec.name, event_id = %one.event_id, error = %e, "event not applied; will retry");
                d.nak().await?;
                for (later, _) in rest {
                    later.nak().await?;
                }
                anyhow::bail!("event {} not applied: {e}", one.event_id);
            }
        }
    }
    Ok(total)
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
                            return Ok(Settled::default());
                        }
                        let _writer = writer.lock().await;
                        apply_batch(&db, &spec, deliveries, handler.as_ref()).await
                    };
                    let result = tokio::select! {
                        r = work => r,
                        _ = stop.changed() => return,
                    };
                    match result {
                        // Only events waiting for their predecessors came: give those time to
                        // arrive instead of spinning on the same ones.
                        Ok(s) if s.done == 0 && s.held > 0 => {
                            backoff = Duration::from_millis(100);
                            tokio::select! {
                                () = tokio::time::sleep(Duration::from_millis(200)) => {},
                                _ = stop.changed() => return,
                            }
                        }
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
