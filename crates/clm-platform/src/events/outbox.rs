//! The transactional outbox and its relay.
//!
//! A service writes each event into its own `outbox` table in the same transaction as the
//! change ([`OutboxWriter::append`] in a [`UnitOfWork`], which wakes the relay after the
//! commit). The relay ([`spawn_relay`]) publishes unsent rows in sequence order and marks them
//! sent; if the bus is down it backs off and the outbox simply grows, and after a crash it
//! resumes from the first unsent row (at-least-once; inboxes drop repeats). With several
//! replicas, a lease row makes one relay active at a time so order is kept.

use std::sync::Arc;
use std::time::Duration;

use clm_proto::events::v1::EventEnvelope;
use clm_proto::events::v1::event_envelope::Payload;
use prost::Message;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use sea_orm_migration::prelude::*;
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use super::bus::EventBus;
use super::work::UnitOfWork;
use crate::auth::TenantId;

pub(crate) mod entity {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "outbox")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub seq: i64,
        #[sea_orm(unique)]
        pub event_id: String,
        pub tenant_id: String,
        pub subject: String,
        pub payload: Vec<u8>,
        pub create_time: i64,
        pub publish_time: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

mod lease {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "outbox_lease")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        pub holder: String,
        pub expire_time: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Seq,
    EventId,
    TenantId,
    Subject,
    Payload,
    CreateTime,
    PublishTime,
}

#[derive(DeriveIden)]
enum OutboxLease {
    Table,
    Name,
    Holder,
    ExpireTime,
}

/// Migration creating `outbox` and `outbox_lease`; producers add it to their migrator.
pub struct OutboxMigration;

impl MigrationName for OutboxMigration {
    fn name(&self) -> &'static str {
        "platform_0001_outbox"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for OutboxMigration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Outbox::Table)
                .col(ColumnDef::new(Outbox::Seq).big_integer().not_null().auto_increment().primary_key())
                .col(ColumnDef::new(Outbox::EventId).string().not_null().unique_key())
                .col(ColumnDef::new(Outbox::TenantId).string().not_null())
                .col(ColumnDef::new(Outbox::Subject).string().not_null())
                .col(ColumnDef::new(Outbox::Payload).blob().not_null())
                .col(ColumnDef::new(Outbox::CreateTime).big_integer().not_null())
                .col(ColumnDef::new(Outbox::PublishTime).big_integer().null())
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_outbox_unsent")
                .table(Outbox::Table)
                .col(Outbox::PublishTime)
                .col(Outbox::Seq)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(OutboxLease::Table)
                .col(ColumnDef::new(OutboxLease::Name).string().not_null().primary_key())
                .col(ColumnDef::new(OutboxLease::Holder).string().not_null())
                .col(ColumnDef::new(OutboxLease::ExpireTime).big_integer().not_null())
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(OutboxLease::Table).to_owned()).await?;
        m.drop_table(Table::drop().table(Outbox::Table).to_owned()).await
    }
}

/// A producer's handle on its outbox: append events in a [`UnitOfWork`], which wakes the
/// relay after it commits.
#[derive(Clone, Debug)]
pub struct OutboxWriter {
    service: &'static str,
    wake: Arc<Notify>,
}

impl OutboxWriter {
    pub fn new(service: &'static str) -> Self {
        Self { service, wake: Arc::new(Notify::new()) }
    }

    /// Append an event in `work` (committed with the change; the relay is woken when `work`
    /// commits), with its place among this producer's events of each contact it is about
    /// ([`super::ordering`]). Returns the envelope written.
    pub async fn append(
        &self,
        work: &UnitOfWork,
        tenant: &TenantId,
        aggregate_type: &str,
        aggregate_id: &str,
        occur_time_micros: i64,
        payload: Payload,
    ) -> crate::Result<EventEnvelope> {
        let mut env = super::envelope(self.service, tenant, aggregate_type, aggregate_id, occur_time_micros, payload);
        super::ordering::stamp(work, tenant, &mut env).await?;
        let insert = sea_orm::QueryTrait::into_query(entity::Entity::insert(row(tenant, &env)));
        work.execute(&insert).await?;
        work.woken_after_commit(&self.wake);
        Ok(env)
    }

    /// The first event of a new aggregate as insert statements (the outbox row and the start of
    /// its contacts' ordering counters), for callers that write it together with the change in
    /// one statement ([`UnitOfWork::insert_all`]) instead of appending it in a transaction.
    /// Fails when executed if a contact it names has had events before.
    pub fn insert(
        &self,
        tenant: &TenantId,
        aggregate_type: &str,
        aggregate_id: &str,
        occur_time_micros: i64,
        payload: Payload,
    ) -> (OutboxInserts, EventEnvelope) {
        let mut env = super::envelope(self.service, tenant, aggregate_type, aggregate_id, occur_time_micros, payload);
        let keys = super::ordering::first(tenant, &mut env);
        let mut out: Vec<_> = super::ordering::first_insert(&keys).into_iter().collect();
        out.push(sea_orm::QueryTrait::into_query(entity::Entity::insert(row(tenant, &env))));
        (OutboxInserts { statements: out, wake: self.wake.clone() }, env)
    }

    /// The first events of several new aggregates of one type as multi-row inserts of at most
    /// [`INSERT_ROWS`] rows each (databases cap bound parameters), like [`Self::insert`].
    pub fn insert_many(
        &self,
        tenant: &TenantId,
        aggregate_type: &str,
        events: impl IntoIterator<Item = (String, i64, Payload)>,
    ) -> OutboxInserts {
        let mut out = OutboxInserts { statements: Vec::new(), wake: self.wake.clone() };
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            let mut keys = Vec::new();
            let rows: Vec<_> = events
                .by_ref()
                .take(INSERT_ROWS)
                .map(|(aggregate_id, at, payload)| {
                    let mut env = super::envelope(self.service, tenant, aggregate_type, &aggregate_id, at, payload);
                    keys.extend(super::ordering::first(tenant, &mut env));
                    row(tenant, &env)
                })
                .collect();
            out.statements.extend(super::ordering::first_insert(&keys));
            out.statements.push(sea_orm::QueryTrait::into_query(entity::Entity::insert_many(rows)));
        }
        out
    }
}

/// Most outbox rows in one of [`OutboxWriter::insert_many`]'s statements.
pub const INSERT_ROWS: usize = 1000;

/// Outbox rows (and their ordering counters) as insert statements, to be run only by
/// [`UnitOfWork::insert_all`] (with the change, in one statement) or [`UnitOfWork::insert`] (in
/// a unit of work): either wakes the relay after the commit.
#[must_use = "events are written only by UnitOfWork::insert_all or UnitOfWork::insert"]
#[derive(Debug)]
pub struct OutboxInserts {
    statements: Vec<sea_orm::sea_query::InsertStatement>,
    wake: Arc<Notify>,
}

impl OutboxInserts {
    /// How many statements (not rows) these are.
    pub fn len(&self) -> usize {
        self.statements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    pub(super) fn into_parts(self) -> (Vec<sea_orm::sea_query::InsertStatement>, Arc<Notify>) {
        (self.statements, self.wake)
    }
}

/// The outbox row of `env`.
fn row(tenant: &TenantId, env: &EventEnvelope) -> entity::ActiveModel {
    entity::ActiveModel {
        seq: ActiveValue::NotSet,
        event_id: ActiveValue::Set(env.event_id.clone()),
        tenant_id: ActiveValue::Set(tenant.as_str().to_owned()),
        subject: ActiveValue::Set(super::subject(env)),
        payload: ActiveValue::Set(env.encode_to_vec()),
        create_time: ActiveValue::Set(chrono::Utc::now().timestamp_micros()),
        publish_time: ActiveValue::Set(None),
    }
}

/// Relay tuning.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    pub batch: u64,
    pub poll: Duration,
    /// After a round that published something but less than a full batch, wait this long
    /// before the next, so that under load a round carries many events instead of one or two.
    /// The first event after a quiet spell still goes at once. Zero: no wait.
    pub linger: Duration,
    pub max_backoff: Duration,
    /// Identity of this replica for the lease.
    pub holder: String,
    pub lease: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch: 100,
            poll: Duration::from_millis(250),
            linger: Duration::from_millis(2),
            max_backoff: Duration::from_secs(2),
            holder: uuid::Uuid::new_v4().to_string(),
            lease: Duration::from_secs(15),
        }
    }
}

/// Take or renew a named lease (relay, scheduler); true when `holder` has it now. Used so one
/// replica at a time does work that must not run twice concurrently.
pub async fn hold_lease(
    db: &DatabaseConnection,
    name: &str,
    holder: &str,
    lease: Duration,
) -> Result<bool, sea_orm::DbErr> {
    let db = &crate::db::writer(db).await;
    let now = chrono::Utc::now().timestamp_micros();
    let expire = now + lease.as_micros() as i64;
    let updated = lease::Entity::update_many()
        .col_expr(lease::Column::Holder, Expr::val(holder))
        .col_expr(lease::Column::ExpireTime, Expr::val(expire))
        .filter(lease::Column::Name.eq(name))
        .filter(Expr::col(lease::Column::Holder).eq(holder).or(Expr::col(lease::Column::ExpireTime).lt(now)))
        .exec(db)
        .await?;
    if updated.rows_affected == 1 {
        return Ok(true);
    }
    let inserted = lease::Entity::insert(lease::ActiveModel {
        name: ActiveValue::Set(name.to_owned()),
        holder: ActiveValue::Set(holder.to_owned()),
        expire_time: ActiveValue::Set(expire),
    })
    .on_conflict(sea_orm::sea_query::OnConflict::column(lease::Column::Name).do_nothing().to_owned())
    .exec_without_returning(db)
    .await?;
    Ok(inserted == 1)
}

/// Give a lease up (graceful stop), so another replica — or this one restarted — need not wait
/// for it to expire.
pub async fn release_lease(db: &DatabaseConnection, name: &str, holder: &str) -> Result<(), sea_orm::DbErr> {
    let db = &crate::db::writer(db).await;
    lease::Entity::update_many()
        .col_expr(lease::Column::ExpireTime, Expr::val(0_i64))
        .filter(lease::Column::Name.eq(name))
        .filter(lease::Column::Holder.eq(holder))
        .exec(db)
        .await?;
    Ok(())
}

/// Publish one batch of unsent rows in order; returns how many were sent.
pub async fn relay_once(db: &DatabaseConnection, bus: &dyn EventBus, batch: u64) -> anyhow::Result<usize> {
    let rows = entity::Entity::find()
        .filter(entity::Column::PublishTime.is_null())
        .order_by_asc(entity::Column::Seq)
        .limit(batch)
        .all(db)
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    // Where the bus can take the batch in one write (the log bus), do that.
    let spans: Vec<tracing::Span> = rows
        .iter()
        .map(|row| {
            let trace_context =
                EventEnvelope::decode(row.payload.as_slice()).map(|env| env.trace_context).unwrap_or_default();
            crate::telemetry::semconv::publish_span(bus.system(), &row.subject, &row.event_id, &trace_context)
        })
        .collect();
    let outgoing: Vec<super::bus::Outgoing<'_>> = rows
        .iter()
        .map(|r| super::bus::Outgoing { subject: &r.subject, event_id: &r.event_id, payload: &r.payload })
        .collect();
    if bus.publish_all(&outgoing).instrument(spans[0].clone()).await? {
        drop(spans);
        mark_sent(db, &rows).await?;
        return Ok(rows.len());
    }
    let (sent, error) = bus.publish_each(&outgoing, &spans).await;
    drop(spans);
    if sent > 0 {
        mark_sent(db, &rows[..sent]).await?;
    }
    match error {
        Some(e) => Err(e),
        None => Ok(sent),
    }
}

async fn mark_sent(db: &DatabaseConnection, rows: &[entity::Model]) -> Result<(), sea_orm::DbErr> {
    let db = &crate::db::writer(db).await;
    entity::Entity::update_many()
        .col_expr(entity::Column::PublishTime, Expr::val(chrono::Utc::now().timestamp_micros()))
        .filter(entity::Column::Seq.is_in(rows.iter().map(|r| r.seq)))
        .exec(db)
        .await?;
    Ok(())
}

/// How many events wait in the outbox.
pub async fn pending(db: &DatabaseConnection) -> Result<u64, sea_orm::DbErr> {
    use sea_orm::PaginatorTrait;
    entity::Entity::find().filter(entity::Column::PublishTime.is_null()).count(db).await
}

/// Run the relay until `stop` turns true.
pub fn spawn_relay(
    service: &'static str,
    db: DatabaseConnection,
    bus: Arc<dyn EventBus>,
    writer: &OutboxWriter,
    opts: RelayOptions,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let wake = writer.wake.clone();
    tokio::spawn(async move {
        let holder = opts.holder.clone();
        relay_loop(service, &db, bus.as_ref(), &wake, &opts, &mut stop).await;
        if let Err(e) = release_lease(&db, service, &holder).await {
            tracing::debug!(service, error = %e, "relay lease not released; it expires by itself");
        }
    })
}

async fn relay_loop(
    service: &'static str,
    db: &DatabaseConnection,
    bus: &dyn EventBus,
    wake: &tokio::sync::Notify,
    opts: &RelayOptions,
    stop: &mut watch::Receiver<bool>,
) {
    {
        let mut backoff = Duration::from_millis(100);
        // When the lease was last taken or renewed: it is renewed once a third of it has run,
        // not on every round (a busy relay runs hundreds of rounds a second).
        let mut renewed: Option<std::time::Instant> = None;
        loop {
            if *stop.borrow() {
                return;
            }
            let step = async {
                if renewed.is_none_or(|t| t.elapsed() >= opts.lease / 3) {
                    renewed = None;
                    let asked = std::time::Instant::now();
                    if !hold_lease(db, service, &opts.holder, opts.lease).await? {
                        return Ok::<usize, anyhow::Error>(0);
                    }
                    renewed = Some(asked);
                }
                relay_once(db, bus, opts.batch).await
            };
            match step.await {
                Ok(n) if n as u64 == opts.batch => backoff = Duration::from_millis(100),
                // Events are arriving: let more gather before the next round. Without this, a
                // relay woken by every commit ran a round (read, publish, mark) per one or two
                // events: at 4,000 CreateContact/s on PostgreSQL, ~2,000 rounds a second.
                Ok(n) if n > 0 && !opts.linger.is_zero() => {
                    backoff = Duration::from_millis(100);
                    tokio::select! {
                        () = tokio::time::sleep(opts.linger) => {},
                        _ = stop.changed() => return,
                    }
                }
                Ok(_) => {
                    backoff = Duration::from_millis(100);
                    tokio::select! {
                        () = wake.notified() => {},
                        () = tokio::time::sleep(opts.poll) => {},
                        _ = stop.changed() => return,
                    }
                }
                Err(e) => {
                    // The bus (or the database) is down: writes keep landing in the outbox;
                    // retry with exponential backoff, ignoring wake-ups meanwhile.
                    tracing::warn!(service, error = %e, retry_in_ms = backoff.as_millis() as u64, "outbox relay: cannot publish, backing off");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {},
                        _ = stop.changed() => return,
                    }
                    backoff = (backoff * 2).min(opts.max_backoff);
                }
            }
        }
    }
}
