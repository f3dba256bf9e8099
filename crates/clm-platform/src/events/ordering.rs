//! Per-contact order at any number of replicas.
//!
//! **Producer.** Every event names the contacts it is about (its *keys*; a merge names the
//! survivor and every merged contact) and, for each, its position among this producer's events
//! of that key: 1, 2, 3, … with no gaps. The counter (`outbox_keys`) is bumped in the event's
//! own transaction, so a rolled-back change leaves no hole, and on PostgreSQL its row lock
//! queues concurrent writers of one contact: positions follow commit order. Writers of a key
//! first take its advisory lock ([`lock_key`]), the one lock per contact every replica of the
//! producer queues on.
//!
//! **Consumer.** `inbox_positions` holds, per consumer, producer, tenant and key, the last
//! position applied (written in the transaction that applied it). An event is applied when it
//! is next for every key it names, skipped when it was applied already, and otherwise *held*:
//! put back on the bus for later, because the one before it is still on its way (fetched by
//! another replica, or waiting out a dead replica's ack deadline). Whatever the number of
//! replicas and however the bus hands events out, each contact's events take effect in the
//! order they were committed.
//!
//! **Across services.** An event also names its causes from other services (`after`): what
//! its producer, as a consumer, had applied of their events about the same contacts when it
//! wrote it (lifecycle had the contact's ContactCreated before it derived a StageChanged). A
//! consumer that reads those services holds the event until it has applied them too, so
//! metrics never counts a lead before it knows the contact's channel.
//!
//! A hole that never fills (the event before was pruned from the bus, or can never be applied)
//! would stop a contact for good, so an event held here longer than `events.order_wait_ms` is
//! applied anyway and the skip is logged.

use std::collections::HashMap;

use clm_proto::events::v1::event_envelope::Payload;
use clm_proto::events::v1::{Dependency, EventEnvelope, OrderingKey};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query};
use sea_orm::{ConnectionTrait, DbErr};
use sea_orm_migration::prelude::*;

use crate::auth::TenantId;

/// The keys an event is ordered by: `contact/<id>` for each contact it is about, else its
/// aggregate. Sorted, without repeats.
pub fn keys_of(aggregate_type: &str, aggregate_id: &str, payload: Option<&Payload>) -> Vec<String> {
    let mut contacts: Vec<&str> = match payload {
        Some(Payload::ContactCreated(p)) => vec![&p.contact_id],
        Some(Payload::ContactUpdated(p)) => vec![&p.contact_id],
        Some(Payload::ContactMerged(p)) => {
            std::iter::once(p.survivor_id.as_str()).chain(p.merged_ids.iter().map(String::as_str)).collect()
        }
        Some(Payload::ContactErased(p)) => vec![&p.contact_id],
        Some(Payload::ContactDeleted(p)) => vec![&p.contact_id],
        Some(Payload::StageChanged(p)) => vec![&p.contact_id],
        Some(Payload::JourneyEventRecorded(p)) => vec![&p.contact_id],
        Some(Payload::AutomationTriggered(p)) => vec![&p.contact_id],
        Some(Payload::UnsubscribeRecorded(p)) => vec![&p.contact_id],
        Some(Payload::CampaignEnrolmentChanged(p)) => vec![&p.contact_id],
        Some(Payload::SurveyRequested(p)) => vec![&p.contact_id],
        Some(Payload::ResponseSubmitted(p)) => vec![&p.contact_id],
        Some(Payload::FollowUpOpened(p)) => vec![&p.contact_id],
        Some(Payload::FollowUpClosed(p)) => vec![&p.contact_id],
        Some(Payload::ReviewRecorded(p)) => vec![&p.contact_id],
        // About a model, no contact: keyed by its aggregate.
        Some(Payload::LifecycleModelChanged(_)) | None => vec![],
    };
    contacts.retain(|c| !c.is_empty());
    let mut keys: Vec<String> = if contacts.is_empty() {
        vec![format!("{aggregate_type}/{aggregate_id}")]
    } else {
        contacts.iter().map(|c| format!("contact/{c}")).collect()
    };
    keys.sort_unstable();
    keys.dedup();
    keys
}

#[derive(DeriveIden)]
enum OutboxKeys {
    Table,
    TenantId,
    Key,
    Seq,
}

#[derive(DeriveIden)]
enum InboxPositions {
    Table,
    Consumer,
    Source,
    TenantId,
    Key,
    Seq,
}

/// Migration creating `outbox_keys`; producers add it after [`super::outbox::OutboxMigration`].
pub struct OutboxKeysMigration;

impl MigrationName for OutboxKeysMigration {
    fn name(&self) -> &'static str {
        "platform_0005_outbox_keys"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for OutboxKeysMigration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(OutboxKeys::Table)
                .col(ColumnDef::new(OutboxKeys::TenantId).string().not_null())
                .col(ColumnDef::new(OutboxKeys::Key).string().not_null())
                .col(ColumnDef::new(OutboxKeys::Seq).big_integer().not_null())
                .primary_key(Index::create().col(OutboxKeys::TenantId).col(OutboxKeys::Key))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(OutboxKeys::Table).to_owned()).await
    }
}

/// Migration creating `inbox_positions`; consumers add it after [`super::inbox::InboxMigration`].
pub struct InboxPositionsMigration;

impl MigrationName for InboxPositionsMigration {
    fn name(&self) -> &'static str {
        "platform_0006_inbox_positions"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for InboxPositionsMigration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(InboxPositions::Table)
                .col(ColumnDef::new(InboxPositions::Consumer).string().not_null())
                .col(ColumnDef::new(InboxPositions::Key).string().not_null())
                .col(ColumnDef::new(InboxPositions::Source).string().not_null())
                .col(ColumnDef::new(InboxPositions::TenantId).string().not_null())
                .col(ColumnDef::new(InboxPositions::Seq).big_integer().not_null())
                .primary_key(
                    Index::create()
                        .col(InboxPositions::Consumer)
                        .col(InboxPositions::Key)
                        .col(InboxPositions::Source)
                        .col(InboxPositions::TenantId),
                )
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(InboxPositions::Table).to_owned()).await
    }
}

/// Producer: give `env` its position for each of its keys, bumping the counters in `txn`.
pub async fn stamp(txn: &impl ConnectionTrait, tenant: &TenantId, env: &mut EventEnvelope) -> Result<(), DbErr> {
    let backend = txn.get_database_backend();
    let keys = keys_of(&env.aggregate_type, &env.aggregate_id, env.payload.as_ref());
    env.ordering.clear();
    for key in keys {
        lock_key(txn, tenant.as_str(), &key).await?;
        let stmt = Query::insert()
            .into_table(OutboxKeys::Table)
            .columns([OutboxKeys::TenantId, OutboxKeys::Key, OutboxKeys::Seq])
            .values_panic([tenant.as_str().into(), key.clone().into(), 1_i64.into()])
            .on_conflict(
                OnConflict::columns([OutboxKeys::TenantId, OutboxKeys::Key])
                    .value(OutboxKeys::Seq, Expr::col((OutboxKeys::Table, OutboxKeys::Seq)).add(1))
                    .to_owned(),
            )
            .returning_col(OutboxKeys::Seq)
            .to_owned();
        let row = txn
            .query_one_raw(backend.build(&stmt))
            .await?
            .ok_or_else(|| DbErr::Custom(format!("outbox_keys: no position returned for {key}")))?;
        let sequence: i64 = row.try_get_by_index(0)?;
        env.ordering.push(OrderingKey { key, sequence });
    }
    env.after = applied_of(txn, tenant, env).await?;
    Ok(())
}

/// What this service (as a consumer) has applied of other services' events about `env`'s
/// keys: the event's causes, which a consumer of those services must apply first.
async fn applied_of(
    txn: &impl ConnectionTrait,
    tenant: &TenantId,
    env: &EventEnvelope,
) -> Result<Vec<Dependency>, DbErr> {
    let keys: Vec<String> = env.ordering.iter().map(|k| k.key.clone()).collect();
    let stmt = Query::select()
        .columns([InboxPositions::Key, InboxPositions::Source])
        .expr(Expr::col(InboxPositions::Seq).max())
        .from(InboxPositions::Table)
        .and_where(Expr::col(InboxPositions::TenantId).eq(tenant.as_str()))
        .and_where(Expr::col(InboxPositions::Key).is_in(keys))
        .and_where(Expr::col(InboxPositions::Source).ne(env.source_service.as_str()))
        .group_by_columns([InboxPositions::Key, InboxPositions::Source])
        .to_owned();
    let backend = txn.get_database_backend();
    let mut out = Vec::new();
    for row in txn.query_all_raw(backend.build(&stmt)).await? {
        out.push(Dependency {
            key: row.try_get_by_index(0)?,
            source_service: row.try_get_by_index(1)?,
            sequence: row.try_get_by_index(2)?,
        });
    }
    out.sort_by(|a, b| (&a.source_service, &a.key).cmp(&(&b.source_service, &b.key)));
    Ok(out)
}

/// Producer, for events of aggregates created in the same statement (no counter exists yet):
/// position 1 for every key of `env`, and the insert that starts their counters. Fails (a
/// primary-key violation) if a key has had events before.
pub fn first(tenant: &TenantId, env: &mut EventEnvelope) -> Vec<(String, String)> {
    let keys = keys_of(&env.aggregate_type, &env.aggregate_id, env.payload.as_ref());
    env.ordering = keys.iter().map(|k| OrderingKey { key: k.clone(), sequence: 1 }).collect();
    keys.into_iter().map(|k| (tenant.as_str().to_owned(), k)).collect()
}

/// The insert starting the counters of `keys` (tenant, key) at 1.
pub fn first_insert(keys: &[(String, String)]) -> Option<sea_orm::sea_query::InsertStatement> {
    if keys.is_empty() {
        return None;
    }
    let mut q = Query::insert();
    q.into_table(OutboxKeys::Table).columns([OutboxKeys::TenantId, OutboxKeys::Key, OutboxKeys::Seq]);
    for (tenant, key) in keys {
        q.values_panic([tenant.clone().into(), key.clone().into(), 1_i64.into()]);
    }
    Some(q)
}

/// What a consumer does with one event of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Next for every key (or unordered): apply it.
    Apply,
    /// Applied before for every key: acknowledge, change nothing.
    Skip,
    /// An earlier event of one of its keys has not been applied yet: put it back.
    Hold,
}

/// Consumer: the last positions applied, for the keys of a batch, and the ones it moves.
#[derive(Debug, Default)]
pub struct Positions {
    /// (key, source, tenant) → last applied position.
    last: HashMap<(String, String, String), i64>,
    changed: HashMap<(String, String, String), i64>,
}

fn slot(env: &EventEnvelope, key: &str) -> (String, String, String) {
    (key.to_owned(), env.source_service.clone(), env.tenant_id.clone())
}

impl Positions {
    /// Read the positions of every key `envs` name (in `txn`, after the consumer's lock).
    pub async fn load(txn: &impl ConnectionTrait, consumer: &str, envs: &[&EventEnvelope]) -> Result<Self, DbErr> {
        let mut keys: Vec<&str> = envs
            .iter()
            .flat_map(|e| e.ordering.iter().map(|k| k.key.as_str()).chain(e.after.iter().map(|d| d.key.as_str())))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let mut last = HashMap::new();
        let backend = txn.get_database_backend();
        for chunk in keys.chunks(500) {
            let stmt = Query::select()
                .columns([InboxPositions::Key, InboxPositions::Source, InboxPositions::TenantId, InboxPositions::Seq])
                .from(InboxPositions::Table)
                .and_where(Expr::col(InboxPositions::Consumer).eq(consumer))
                .and_where(Expr::col(InboxPositions::Key).is_in(chunk.iter().map(|k| (*k).to_owned())))
                .to_owned();
            for row in txn.query_all_raw(backend.build(&stmt)).await? {
                let key: String = row.try_get_by_index(0)?;
                let source: String = row.try_get_by_index(1)?;
                let tenant: String = row.try_get_by_index(2)?;
                let seq: i64 = row.try_get_by_index(3)?;
                last.insert((key, source, tenant), seq);
            }
        }
        Ok(Self { last, changed: HashMap::new() })
    }

    fn at(&self, slot: &(String, String, String)) -> Option<i64> {
        self.changed.get(slot).or_else(|| self.last.get(slot)).copied()
    }

    /// Judge `env` against the positions so far. `consumes`: whether this consumer reads a
    /// service's events (a cause from a service it does not read is not waited for).
    /// `overdue`: it has waited long enough that what is missing will not come (applied
    /// anyway, logged).
    pub fn judge(&self, env: &EventEnvelope, consumes: &dyn Fn(&str) -> bool, overdue: bool) -> Verdict {
        let mut all_seen = !env.ordering.is_empty();
        let mut waits = false;
        for k in &env.ordering {
            let at = self.at(&slot(env, &k.key));
            // A key never seen starts at its first event; one seen before is `at`.
            let next = at.map_or(1, |a| a + 1);
            if k.sequence >= next {
                all_seen = false;
            }
            waits |= k.sequence > next;
        }
        if all_seen {
            return Verdict::Skip;
        }
        for d in env.after.iter().filter(|d| consumes(&d.source_service)) {
            let at = self.at(&(d.key.clone(), d.source_service.clone(), env.tenant_id.clone()));
            waits |= at.is_none_or(|a| a < d.sequence);
        }
        if waits && !overdue { Verdict::Hold } else { Verdict::Apply }
    }

    /// Record that `env` was applied (past a hole or a missing cause, when overdue: logged).
    pub fn advance(&mut self, env: &EventEnvelope) {
        for d in &env.after {
            let at = self.at(&(d.key.clone(), d.source_service.clone(), env.tenant_id.clone()));
            if at.is_some_and(|a| a < d.sequence) {
                tracing::warn!(
                    event_id = %env.event_id, key = %d.key, cause_source = %d.source_service,
                    cause_sequence = d.sequence, applied = at,
                    "an event's cause from another service never arrived in time; applied it anyway"
                );
            }
        }
        for k in &env.ordering {
            let s = slot(env, &k.key);
            let at = self.at(&s);
            if let Some(a) = at
                && a + 1 < k.sequence
            {
                tracing::error!(
                    event_id = %env.event_id, key = %k.key, source = %env.source_service,
                    missing_from = a + 1, missing_to = k.sequence - 1,
                    "events of this key never arrived in time; applied the next one anyway (order gap skipped)"
                );
            }
            if at.is_none_or(|a| a < k.sequence) {
                self.changed.insert(s, k.sequence);
            }
        }
    }

    /// Write the positions that moved (in the transaction that applied their events).
    pub async fn save(&self, txn: &impl ConnectionTrait, consumer: &str) -> Result<(), DbErr> {
        let rows: Vec<_> = self.changed.iter().collect();
        for chunk in rows.chunks(500) {
            let mut q = Query::insert();
            q.into_table(InboxPositions::Table).columns([
                InboxPositions::Consumer,
                InboxPositions::Key,
                InboxPositions::Source,
                InboxPositions::TenantId,
                InboxPositions::Seq,
            ]);
            for ((key, source, tenant), seq) in chunk {
                q.values_panic([
                    consumer.into(),
                    key.clone().into(),
                    source.clone().into(),
                    tenant.clone().into(),
                    (**seq).into(),
                ]);
            }
            q.on_conflict(
                OnConflict::columns([
                    InboxPositions::Consumer,
                    InboxPositions::Key,
                    InboxPositions::Source,
                    InboxPositions::TenantId,
                ])
                .update_column(InboxPositions::Seq)
                .to_owned(),
            );
            txn.execute(&q).await?;
        }
        Ok(())
    }
}

/// Forget `consumer`'s positions (a replay starts from the first event).
pub async fn reset(txn: &impl ConnectionTrait, consumer: &str) -> Result<(), DbErr> {
    let stmt = Query::delete()
        .from_table(InboxPositions::Table)
        .and_where(Expr::col(InboxPositions::Consumer).eq(consumer))
        .to_owned();
    txn.execute(&stmt).await?;
    Ok(())
}

/// Queue (on PostgreSQL, until commit or rollback) behind every other transaction, of any
/// replica, working on `tenant`'s `key` in this database: producers take it before they
/// number an event of the key, and a service takes it before it reads what it will derive
/// events of the contact from (lifecycle's journey rebuild), so two replicas never derive the
/// same change twice. Taking it again in one transaction is free.
pub async fn lock_key(txn: &impl ConnectionTrait, tenant: &str, key: &str) -> Result<(), DbErr> {
    crate::db::advisory_lock(txn, &format!("key:{tenant}:{key}")).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clm_proto::events::v1 as ev;

    fn env(source: &str, ordering: &[(&str, i64)]) -> EventEnvelope {
        EventEnvelope {
            event_id: uuid::Uuid::now_v7().to_string(),
            tenant_id: "t".into(),
            source_service: source.into(),
            ordering: ordering.iter().map(|(k, s)| OrderingKey { key: (*k).into(), sequence: *s }).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn keys_name_every_contact_of_a_merge_and_fall_back_to_the_aggregate() {
        let merged = Payload::ContactMerged(ev::ContactMerged {
            survivor_id: "b".into(),
            merged_ids: vec!["c".into(), "a".into(), "b".into()],
            facts: None,
        });
        assert_eq!(keys_of("contact", "b", Some(&merged)), ["contact/a", "contact/b", "contact/c"]);
        let anonymous = Payload::ResponseSubmitted(ev::ResponseSubmitted::default());
        assert_eq!(keys_of("response", "r1", Some(&anonymous)), ["response/r1"]);
    }

    #[test]
    fn next_applies_seen_skips_ahead_holds_until_overdue() {
        let mut p = Positions::default();
        let all = |_: &str| true;
        assert_eq!(p.judge(&env("lifecycle", &[("contact/x", 2)]), &all, false), Verdict::Hold);
        let first = env("lifecycle", &[("contact/x", 1)]);
        assert_eq!(p.judge(&first, &all, false), Verdict::Apply);
        p.advance(&first);
        assert_eq!(p.judge(&first, &all, false), Verdict::Skip);
        // Another producer's key of the same contact is its own sequence.
        assert_eq!(p.judge(&env("feedback", &[("contact/x", 1)]), &all, false), Verdict::Apply);
        // A merge waits for every contact it names.
        let merge = env("lifecycle", &[("contact/x", 2), ("contact/y", 3)]);
        assert_eq!(p.judge(&merge, &all, false), Verdict::Hold);
        assert_eq!(p.judge(&merge, &all, true), Verdict::Apply);
        p.advance(&merge);
        assert_eq!(p.judge(&env("lifecycle", &[("contact/y", 2)]), &all, false), Verdict::Skip);
        assert_eq!(p.judge(&env("lifecycle", &[("contact/y", 4)]), &all, false), Verdict::Apply);
        // Unordered (events written before ordering existed) always apply; the inbox dedups.
        assert_eq!(p.judge(&env("lifecycle", &[]), &all, false), Verdict::Apply);
    }

    #[test]
    fn an_event_waits_for_its_causes_from_services_this_consumer_reads() {
        let mut p = Positions::default();
        let all = |_: &str| true;
        let mut stage = env("lifecycle", &[("contact/z", 1)]);
        stage.after = vec![Dependency { source_service: "contacts".into(), key: "contact/z".into(), sequence: 2 }];
        assert_eq!(p.judge(&stage, &all, false), Verdict::Hold);
        assert_eq!(p.judge(&stage, &|s: &str| s != "contacts", false), Verdict::Apply, "a source not read");
        let created = env("contacts", &[("contact/z", 1)]);
        p.advance(&created);
        assert_eq!(p.judge(&stage, &all, false), Verdict::Hold, "the update it saw is still missing");
        p.advance(&env("contacts", &[("contact/z", 2)]));
        assert_eq!(p.judge(&stage, &all, false), Verdict::Apply);
        assert_eq!(p.judge(&env("lifecycle", &[("contact/w", 1)]), &all, true), Verdict::Apply);
    }
}
