//! The write side of the read model: applying events.
//!
//! An event changes what is known about one or a few contacts (the ledger, `ledger`). Each
//! contact's contribution to the aggregates is a pure function of that knowledge
//! (`domain::contribution`); a batch of events computes the contributions of the contacts it
//! touches before ([`Pending::before`]) and after ([`Pending::finish`]) its changes, adds the
//! difference to the aggregate counters (`store::counters`, summed over the batch) and
//! replaces the contacts' own rows (`rows`). So the aggregates always equal the sum of every
//! contact's contribution to its current facts, whatever order the facts arrived in.

pub mod facts;
pub mod ledger;
pub mod rows;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use clm_platform::{Result, TenantId};
use sea_orm::ConnectionTrait;

use super::counters;
use super::sql::{Sql, rows, v};
use crate::domain::contribution::{self, Contribution};

/// The contacts a batch touches, per tenant, with their contributions before it.
#[derive(Debug, Default)]
pub struct Pending {
    before: BTreeMap<TenantId, HashMap<String, Contribution>>,
}

async fn contributions(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    contacts: &[String],
) -> Result<HashMap<String, Contribution>> {
    let known = ledger::load(db, tenant, contacts).await?;
    Ok(known
        .into_iter()
        .map(|(c, k)| {
            let x = contribution::contribution(&c, &k.facts, &k.transitions, &k.events);
            (c, x)
        })
        .collect())
}

impl Pending {
    /// Note the contributions of `touched` contacts before the batch changes them.
    pub async fn before(db: &impl ConnectionTrait, touched: &BTreeMap<TenantId, BTreeSet<String>>) -> Result<Self> {
        let mut before = BTreeMap::new();
        for (tenant, contacts) in touched {
            let ids: Vec<String> = contacts.iter().cloned().collect();
            before.insert(tenant.clone(), contributions(db, tenant, &ids).await?);
        }
        Ok(Self { before })
    }

    /// After the batch's changes: add each contact's new contribution minus its old one to the
    /// aggregates, and replace the rows of contacts whose own rows changed.
    pub async fn finish(self, db: &impl ConnectionTrait) -> Result<()> {
        for (tenant, before) in self.before {
            let ids: Vec<String> = before.keys().cloned().collect();
            let after = contributions(db, &tenant, &ids).await?;
            apply(db, &tenant, &before, &after).await?;
        }
        Ok(())
    }
}

/// Add `after − before` for each contact of `after`.
async fn apply(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    before: &HashMap<String, Contribution>,
    after: &HashMap<String, Contribution>,
) -> Result<()> {
    let empty = Contribution::default();
    let mut changed = Vec::new();
    for (contact, new) in after {
        let old = before.get(contact).unwrap_or(&empty);
        for (table, key, deltas) in contribution::diff(&old.cells, &new.cells) {
            counters::add(db, tenant, counters::by_name(table), key, &deltas).await?;
        }
        if (&old.reaches, &old.now, &old.customer, &old.periods)
            != (&new.reaches, &new.now, &new.customer, &new.periods)
        {
            changed.push((contact.as_str(), new));
        }
    }
    changed.sort_by_key(|c| c.0);
    rows::replace(db, tenant, &changed).await
}

/// Empty the read model and `contact_facts`, of every tenant: the consumer's reset before a
/// replay refills them from the first event.
pub async fn clear(db: &impl ConnectionTrait) -> Result<()> {
    let mut tables = vec!["contact_facts"];
    tables.extend(super::migrations::READ_MODEL_TABLES);
    super::sql::clear_every_tenant(db, &tables).await
}

/// The bulk entry point: compute every contact of `tenant` in the ledger and add their
/// contributions, for a tenant whose aggregates and per-contact rows are empty (a bulk load
/// of raw facts into the ledger and `contact_facts`, as `clm-bench` does). Runs `chunk`
/// contacts at a time, each chunk's counters summed in memory and written together.
pub async fn rebuild(db: &impl ConnectionTrait, tenant: &TenantId, chunk: usize) -> Result<u64> {
    let mut done = 0;
    let mut after = String::new();
    loop {
        let ids_after = |table| Sql::select(tenant, "contact_id", table).and("contact_id > ?", [v(after.as_str())]);
        let q = ids_after("contact_facts").union(ids_after("ledger_transitions")).union(ids_after("ledger_events"));
        let q = Sql::around("contact_id", q)
            .then(" ORDER BY contact_id LIMIT ?", [v(i64::try_from(chunk).unwrap_or(i64::MAX))]);
        let page = rows(db, q).await?;
        let ids: Vec<String> =
            page.iter().map(|r| r.try_get("", "contact_id")).collect::<std::result::Result<_, _>>()?;
        let Some(last) = ids.last().cloned() else { return Ok(done) };
        let new = contributions(db, tenant, &ids).await?;
        counters::deferred(db, apply(db, tenant, &HashMap::new(), &new)).await?;
        done += ids.len() as u64;
        after = last;
    }
}
