//! Message templates, the delivery queue, attempts and suppressions.
//!
//! The queue is the `deliveries` table: a delivery is inserted in the transaction of whatever
//! asked for it (SendMessage, an automation run), so it exists exactly when that change
//! committed. A sender takes a due delivery by *leasing* it (`lease_until`, a conditional
//! update only one replica wins), sends, then records the outcome and the attempt in one
//! transaction. A sender that dies mid-send leaves a lease that expires; the delivery is then
//! sent again under the same id (Message-ID, Idempotency-Key), so it is never lost and a
//! receiver can recognise the resend.

use std::collections::HashMap;

use clm_platform::{Error, Result, TenantId};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;

use super::entities::{delivery, delivery_attempt, message_template, suppression};

/// States a sender may take a delivery in.
pub const PENDING: [&str; 2] = ["queued", "retrying"];

// ---- templates ----

pub async fn insert_template(db: &impl ConnectionTrait, row: message_template::Model) -> Result<()> {
    message_template::Entity::insert(row.into_active_model()).exec_without_returning(db).await?;
    Ok(())
}

pub async fn find_template(db: &impl ConnectionTrait, tenant: &TenantId, id: Uuid) -> Result<message_template::Model> {
    message_template::Entity::find()
        .filter(message_template::Column::TenantId.eq(tenant.as_str()))
        .filter(message_template::Column::Id.eq(id.to_string()))
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("message template", id.to_string()))
}

pub async fn count_templates(db: &impl ConnectionTrait, tenant: &TenantId) -> Result<u64> {
    Ok(message_template::Entity::find()
        .filter(message_template::Column::TenantId.eq(tenant.as_str()))
        .count(db)
        .await?)
}

/// Write `row` if the stored version is still `expected_version` (else ABORTED).
pub async fn update_template(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    row: &message_template::Model,
    expected_version: i64,
) -> Result<()> {
    let res = message_template::Entity::update_many()
        .col_expr(message_template::Column::DisplayName, Expr::val(row.display_name.clone()))
        .col_expr(message_template::Column::Body, Expr::val(row.body.clone()))
        .col_expr(message_template::Column::SigningSecret, Expr::val(row.signing_secret.clone()))
        .col_expr(message_template::Column::Version, Expr::val(row.version))
        .col_expr(message_template::Column::UpdateTime, Expr::val(row.update_time))
        .filter(message_template::Column::TenantId.eq(tenant.as_str()))
        .filter(message_template::Column::Id.eq(row.id.clone()))
        .filter(message_template::Column::Version.eq(expected_version))
        .exec(db)
        .await?;
    if res.rows_affected == 1 {
        Ok(())
    } else {
        Err(Error::Aborted("the message template changed; re-read and retry".into()))
    }
}

pub async fn delete_template(db: &impl ConnectionTrait, tenant: &TenantId, id: &str) -> Result<()> {
    message_template::Entity::delete_many()
        .filter(message_template::Column::TenantId.eq(tenant.as_str()))
        .filter(message_template::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// A page of templates, oldest first, after `(create_time, id)`.
pub async fn list_templates(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    after: Option<&(i64, String)>,
    limit: u64,
) -> Result<(Vec<message_template::Model>, Option<(i64, String)>)> {
    let mut q = message_template::Entity::find().filter(message_template::Column::TenantId.eq(tenant.as_str()));
    if let Some((t, id)) = after {
        q = q.filter(
            Expr::col(message_template::Column::CreateTime).gt(*t).or(Expr::col(message_template::Column::CreateTime)
                .eq(*t)
                .and(Expr::col(message_template::Column::Id).gt(id.clone()))),
        );
    }
    let rows = q
        .order_by_asc(message_template::Column::CreateTime)
        .order_by_asc(message_template::Column::Id)
        .limit(limit + 1)
        .all(db)
        .await?;
    Ok(clm_platform::pagination::split_page(rows, limit, |m| (m.create_time, m.id.clone())))
}

/// How many deliveries are still waiting on a template (a template with some cannot go).
pub async fn pending_of_template(db: &impl ConnectionTrait, tenant: &TenantId, template: &str) -> Result<u64> {
    Ok(delivery::Entity::find()
        .filter(delivery::Column::TenantId.eq(tenant.as_str()))
        .filter(delivery::Column::TemplateId.eq(template))
        .filter(delivery::Column::State.is_in(PENDING))
        .count(db)
        .await?)
}

// ---- deliveries ----

pub async fn insert_delivery(db: &impl ConnectionTrait, row: delivery::Model) -> Result<()> {
    delivery::Entity::insert(row.into_active_model()).exec_without_returning(db).await?;
    Ok(())
}

pub async fn find_delivery(db: &impl ConnectionTrait, tenant: &TenantId, id: Uuid) -> Result<delivery::Model> {
    delivery::Entity::find()
        .filter(delivery::Column::TenantId.eq(tenant.as_str()))
        .filter(delivery::Column::Id.eq(id.to_string()))
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("delivery", id.to_string()))
}

/// The attempts of `ids`, oldest first, by delivery.
pub async fn attempts_of(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    ids: &[String],
) -> Result<HashMap<String, Vec<delivery_attempt::Model>>> {
    let mut out: HashMap<String, Vec<delivery_attempt::Model>> = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let rows = delivery_attempt::Entity::find()
        .filter(delivery_attempt::Column::TenantId.eq(tenant.as_str()))
        .filter(delivery_attempt::Column::DeliveryId.is_in(ids.iter().cloned()))
        .order_by_asc(delivery_attempt::Column::AttemptTime)
        .order_by_asc(delivery_attempt::Column::Id)
        .all(db)
        .await?;
    for r in rows {
        out.entry(r.delivery_id.clone()).or_default().push(r);
    }
    Ok(out)
}

/// What ListDeliveries selects.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub contact: Option<Uuid>,
    pub automation: Option<Uuid>,
    pub template: Option<Uuid>,
    pub campaign: Option<Uuid>,
    pub state: Option<&'static str>,
}

/// A page of deliveries, newest first, after `(create_time, id)`.
pub async fn list_deliveries(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    filter: &DeliveryFilter,
    after: Option<&(i64, String)>,
    limit: u64,
) -> Result<(Vec<delivery::Model>, Option<(i64, String)>)> {
    let mut q = delivery::Entity::find().filter(delivery::Column::TenantId.eq(tenant.as_str()));
    if let Some(c) = filter.contact {
        q = q.filter(delivery::Column::ContactId.eq(c.to_string()));
    }
    if let Some(a) = filter.automation {
        q = q.filter(delivery::Column::AutomationId.eq(a.to_string()));
    }
    if let Some(t) = filter.template {
        q = q.filter(delivery::Column::TemplateId.eq(t.to_string()));
    }
    if let Some(c) = filter.campaign {
        q = q.filter(delivery::Column::CampaignId.eq(c.to_string()));
    }
    if let Some(s) = filter.state {
        q = q.filter(delivery::Column::State.eq(s));
    }
    if let Some((t, id)) = after {
        q =
            q.filter(Expr::col(delivery::Column::CreateTime).lt(*t).or(
                Expr::col(delivery::Column::CreateTime).eq(*t).and(Expr::col(delivery::Column::Id).lt(id.clone())),
            ));
    }
    let rows = q
        .order_by_desc(delivery::Column::CreateTime)
        .order_by_desc(delivery::Column::Id)
        .limit(limit + 1)
        .all(db)
        .await?;
    Ok(clm_platform::pagination::split_page(rows, limit, |m| (m.create_time, m.id.clone())))
}

/// Which deliveries one lane of the sender looks at.
#[derive(Debug, Clone, Copy)]
pub struct DueFilter<'a> {
    /// Email deliveries (`true`) or all the others (webhooks).
    pub email: bool,
    /// Deliveries this lane has in flight (not leased yet, a moment after they were picked).
    pub skip_ids: &'a [String],
    /// Tenants holding all the lane's slots a tenant may hold.
    pub skip_tenants: &'a [String],
}

impl DueFilter<'_> {
    fn apply(&self, q: sea_orm::Select<delivery::Entity>, now: i64) -> sea_orm::Select<delivery::Entity> {
        let channel =
            if self.email { delivery::Column::Channel.eq("email") } else { delivery::Column::Channel.ne("email") };
        let mut q = q
            .filter(delivery::Column::State.is_in(PENDING))
            .filter(delivery::Column::LeaseUntil.lt(now))
            .filter(channel);
        if !self.skip_ids.is_empty() {
            q = q.filter(delivery::Column::Id.is_not_in(self.skip_ids.iter().cloned()));
        }
        if !self.skip_tenants.is_empty() {
            q = q.filter(delivery::Column::TenantId.is_not_in(self.skip_tenants.iter().cloned()));
        }
        q
    }
}

/// Deliveries of any tenant due at `now`, not held by a sender, that `filter` lets through,
/// soonest first (a sender lane's scan).
pub async fn due(
    db: &impl ConnectionTrait,
    filter: DueFilter<'_>,
    now: i64,
    limit: u64,
) -> Result<Vec<delivery::Model>> {
    Ok(filter
        .apply(delivery::Entity::find(), now)
        .filter(delivery::Column::NextAttemptTime.lte(now))
        .order_by_asc(delivery::Column::NextAttemptTime)
        .order_by_asc(delivery::Column::Id)
        .limit(limit)
        .all(db)
        .await?)
}

/// The earliest time a delivery `filter` lets through falls due (the lane sleeps until then at
/// most).
pub async fn next_due(db: &impl ConnectionTrait, filter: DueFilter<'_>, now: i64) -> Result<Option<i64>> {
    let row: Option<i64> = filter
        .apply(delivery::Entity::find(), now)
        .select_only()
        .column_as(Expr::col(delivery::Column::NextAttemptTime).min(), "t")
        .into_tuple::<Option<i64>>()
        .one(db)
        .await?
        .flatten();
    Ok(row)
}

/// Take delivery `id` until `until`, if it is still pending and nobody holds it. Only one
/// sender's update matches.
pub async fn lease(db: &impl ConnectionTrait, tenant: &TenantId, id: &str, now: i64, until: i64) -> Result<bool> {
    let res = delivery::Entity::update_many()
        .col_expr(delivery::Column::LeaseUntil, Expr::val(until))
        .filter(delivery::Column::TenantId.eq(tenant.as_str()))
        .filter(delivery::Column::Id.eq(id))
        .filter(delivery::Column::State.is_in(PENDING))
        .filter(delivery::Column::LeaseUntil.lt(now))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// Give a leased delivery back, due at `at` (rate-limited, or the contacts service is down):
/// no attempt is counted.
pub async fn defer(db: &impl ConnectionTrait, tenant: &TenantId, id: &str, at: i64, reason: &str) -> Result<()> {
    delivery::Entity::update_many()
        .col_expr(delivery::Column::NextAttemptTime, Expr::val(at))
        .col_expr(delivery::Column::LeaseUntil, Expr::val(0i64))
        .col_expr(delivery::Column::Reason, Expr::val(reason.to_owned()))
        .filter(delivery::Column::TenantId.eq(tenant.as_str()))
        .filter(delivery::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// What became of one turn of a delivery.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// "sent", "retrying", "skipped" or "dead".
    pub state: &'static str,
    pub reason: String,
    pub recipient: String,
    pub subject: String,
    /// The attempt made, if one was (`None` when skipped before sending).
    pub attempt: Option<(bool, String)>,
    /// When the next attempt is due (retrying).
    pub next_attempt_time: i64,
    pub at: i64,
}

/// Record `outcome` for a delivery this sender leased until `lease_until`: its state and, if it
/// tried, the attempt. `false` (nothing written) when the lease was lost meanwhile.
pub async fn finish(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    d: &delivery::Model,
    lease_until: i64,
    outcome: &Outcome,
) -> Result<bool> {
    let tried = i64::from(outcome.attempt.is_some());
    let finished = matches!(outcome.state, "sent" | "skipped" | "dead").then_some(outcome.at);
    let res = delivery::Entity::update_many()
        .col_expr(delivery::Column::State, Expr::val(outcome.state))
        .col_expr(delivery::Column::Reason, Expr::val(outcome.reason.clone()))
        .col_expr(delivery::Column::Recipient, Expr::val(outcome.recipient.clone()))
        .col_expr(delivery::Column::Subject, Expr::val(outcome.subject.clone()))
        .col_expr(delivery::Column::AttemptCount, Expr::val(d.attempt_count + tried))
        .col_expr(delivery::Column::NextAttemptTime, Expr::val(outcome.next_attempt_time))
        .col_expr(delivery::Column::LeaseUntil, Expr::val(0i64))
        .col_expr(delivery::Column::FinishTime, Expr::val(finished))
        .filter(delivery::Column::TenantId.eq(tenant.as_str()))
        .filter(delivery::Column::Id.eq(d.id.clone()))
        // Only while this sender's lease holds: after it, another sender owns the delivery.
        .filter(delivery::Column::LeaseUntil.eq(lease_until))
        .exec(db)
        .await?;
    if res.rows_affected == 0 {
        return Ok(false);
    }
    if let Some((accepted, detail)) = &outcome.attempt {
        let row = delivery_attempt::Model {
            id: Uuid::now_v7().to_string(),
            tenant_id: tenant.as_str().to_owned(),
            delivery_id: d.id.clone(),
            attempt_time: outcome.at,
            accepted: *accepted,
            detail: detail.clone(),
        };
        delivery_attempt::Entity::insert(row.into_active_model()).exec_without_returning(db).await?;
    }
    Ok(true)
}

/// Attempts the tenant made since `since` (µs) — the per-tenant rate limit.
pub async fn attempts_since(db: &impl ConnectionTrait, tenant: &TenantId, since: i64) -> Result<u64> {
    Ok(delivery_attempt::Entity::find()
        .filter(delivery_attempt::Column::TenantId.eq(tenant.as_str()))
        .filter(delivery_attempt::Column::AttemptTime.gte(since))
        .count(db)
        .await?)
}

/// Forget a contact's deliveries (erased).
pub async fn drop_contact(db: &impl ConnectionTrait, tenant: &TenantId, contact: &str) -> Result<()> {
    let ids: Vec<String> = delivery::Entity::find()
        .select_only()
        .column(delivery::Column::Id)
        .filter(delivery::Column::TenantId.eq(tenant.as_str()))
        .filter(delivery::Column::ContactId.eq(contact))
        .into_tuple()
        .all(db)
        .await?;
    for chunk in ids.chunks(500) {
        delivery_attempt::Entity::delete_many()
            .filter(delivery_attempt::Column::TenantId.eq(tenant.as_str()))
            .filter(delivery_attempt::Column::DeliveryId.is_in(chunk.iter().cloned()))
            .exec(db)
            .await?;
    }
    delivery::Entity::delete_many()
        .filter(delivery::Column::TenantId.eq(tenant.as_str()))
        .filter(delivery::Column::ContactId.eq(contact))
        .exec(db)
        .await?;
    suppression::Entity::delete_many()
        .filter(suppression::Column::TenantId.eq(tenant.as_str()))
        .filter(suppression::Column::ContactId.eq(contact))
        .exec(db)
        .await?;
    Ok(())
}

// ---- suppressions ----

/// When the contact unsubscribed from `channel` for `purpose` through a link, if it did (a
/// consent granted again after that time wins).
pub async fn suppressed_at(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    contact: &str,
    channel: &str,
    purpose: &str,
) -> Result<Option<i64>> {
    Ok(suppression::Entity::find()
        .filter(suppression::Column::TenantId.eq(tenant.as_str()))
        .filter(suppression::Column::ContactId.eq(contact))
        .filter(suppression::Column::Channel.eq(channel))
        .filter(suppression::Column::Purpose.eq(purpose))
        .one(db)
        .await?
        .map(|s| s.create_time))
}

/// Record an unsubscribe; `false` when one for that contact, channel and purpose was recorded
/// already (see [`resuppress`]).
pub async fn suppress(db: &impl ConnectionTrait, row: suppression::Model) -> Result<bool> {
    let res = suppression::Entity::insert(row.into_active_model())
        .on_conflict(
            OnConflict::columns([
                suppression::Column::TenantId,
                suppression::Column::ContactId,
                suppression::Column::Channel,
                suppression::Column::Purpose,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(res == 1)
}

/// Record again an unsubscribe already recorded for the contact, channel and purpose, when it
/// comes from another delivery's link (a new decision, perhaps after a consent granted again):
/// its delivery and time become `row`'s. `false` when the recorded one is that delivery's (the
/// same link used again: nothing changes).
pub async fn resuppress(db: &impl ConnectionTrait, tenant: &TenantId, row: &suppression::Model) -> Result<bool> {
    let res = suppression::Entity::update_many()
        .col_expr(suppression::Column::DeliveryId, Expr::val(row.delivery_id.clone()))
        .col_expr(suppression::Column::CreateTime, Expr::val(row.create_time))
        .filter(suppression::Column::TenantId.eq(tenant.as_str()))
        .filter(suppression::Column::ContactId.eq(row.contact_id.clone()))
        .filter(suppression::Column::Channel.eq(row.channel.clone()))
        .filter(suppression::Column::Purpose.eq(row.purpose.clone()))
        .filter(suppression::Column::DeliveryId.ne(row.delivery_id.clone()))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}
