//! The per-contact rows segment queries read (`stage_reach`, `contact_now`, `customer_facts`,
//! `contact_periods`): replaced as a whole for each contact whose contribution changed.

use clm_platform::{Result, TenantId};
use sea_orm::{ConnectionTrait, Value};

use crate::domain::contribution::Contribution;
use crate::domain::day;
use crate::store::sql::{Sql, exec, v};

/// Rows per multi-row insert.
const ROWS: usize = 500;

async fn insert(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    table: &str,
    cols: &[&str],
    rows: Vec<Vec<Value>>,
) -> Result<()> {
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Vec<Value>> = rows.by_ref().take(ROWS).collect();
        exec(db, Sql::insert(tenant, table, cols, chunk)).await?;
    }
    Ok(())
}

/// Replace the rows of each `(contact, contribution)`.
pub async fn replace(db: &impl ConnectionTrait, tenant: &TenantId, all: &[(&str, &Contribution)]) -> Result<()> {
    for chunk in all.chunks(super::ledger::ID_CHUNK) {
        let ids: Vec<String> = chunk.iter().map(|(c, _)| (*c).to_owned()).collect();
        for table in ["stage_reach", "contact_now", "customer_facts", "contact_periods"] {
            exec(db, Sql::delete(tenant, table).and_in("contact_id", Some(&ids))).await?;
        }
        let mut reach = Vec::new();
        let mut now = Vec::new();
        let mut customer = Vec::new();
        let mut periods = Vec::new();
        for (contact, c) in chunk {
            for r in &c.reaches {
                reach.push(vec![
                    v(r.model.as_str()),
                    v(*contact),
                    v(r.stage.as_str()),
                    v(r.first_time),
                    v(r.took),
                    v(r.took.map(|_| day(r.first_time))),
                ]);
            }
            for n in &c.now {
                now.push(vec![
                    v(n.model.as_str()),
                    v(*contact),
                    v(n.stage.as_str()),
                    v(n.category.key()),
                    v(n.enter_time),
                    v(n.lead_time),
                    v(n.customer_time),
                    v(n.close_took),
                    v(n.customer_time.map(day)),
                ]);
            }
            if let Some(f) = &c.customer {
                customer.push(vec![
                    v(*contact),
                    v(f.first_purchase),
                    v(f.last_purchase),
                    v(f.orders),
                    v(f.revenue),
                    v(f.currency.as_str()),
                    v(f.currency_orders),
                    v(f.referrals),
                    v(f.reviews),
                    v(f.last_nps),
                ]);
            }
            for p in &c.periods {
                periods.push(vec![
                    v(*contact),
                    v(p.gran),
                    v(p.period),
                    v(p.currency.as_str()),
                    v(p.orders),
                    v(p.revenue),
                ]);
            }
        }
        insert(
            db,
            tenant,
            "stage_reach",
            &["model_id", "contact_id", "stage_key", "first_time", "took", "took_day"],
            reach,
        )
        .await?;
        insert(
            db,
            tenant,
            "contact_now",
            &[
                "model_id",
                "contact_id",
                "stage_key",
                "category",
                "enter_time",
                "lead_time",
                "customer_time",
                "close_took",
                "close_day",
            ],
            now,
        )
        .await?;
        insert(
            db,
            tenant,
            "customer_facts",
            &[
                "contact_id",
                "first_purchase",
                "last_purchase",
                "orders",
                "revenue",
                "currency",
                "currency_orders",
                "referrals",
                "reviews",
                "last_nps",
            ],
            customer,
        )
        .await?;
        insert(
            db,
            tenant,
            "contact_periods",
            &["contact_id", "gran", "period", "currency", "orders", "revenue"],
            periods,
        )
        .await?;
    }
    Ok(())
}
