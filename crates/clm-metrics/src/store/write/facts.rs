//! `contact_facts`: what metrics knows of a contact from contact events — channel, campaign,
//! acquisition time and cost, referrer, lead score, country and state. No personal data; an
//! erased contact still counts in past periods.

use clm_platform::{Result, TenantId};
use sea_orm::{ConnectionTrait, Value};

use crate::domain::channel::Channel;
use crate::domain::facts::Money;
use crate::store::sql::{Sql, exec, v};

/// A contact's facts as its latest contact event states them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactFacts {
    pub acquisition_channel: Channel,
    pub campaign: String,
    pub cost: Option<Money>,
    pub referred_by: Option<String>,
    pub lead_score: i32,
    pub country_code: String,
    pub acquire_time: Option<i64>,
}

/// Where a contact stands in the contacts service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactState {
    Active,
    Deleted,
    Merged,
    Erased,
}

impl ContactState {
    pub fn key(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Deleted => "deleted",
            Self::Merged => "merged",
            Self::Erased => "erased",
        }
    }
}

const COLS: [&str; 8] = [
    "acquisition_channel",
    "campaign",
    "cost_currency",
    "cost_micros",
    "referred_by",
    "lead_score",
    "country_code",
    "acquire_time",
];

fn values(f: &ContactFacts) -> Vec<Value> {
    vec![
        v(f.acquisition_channel.as_str()),
        v(f.campaign.as_str()),
        v(f.cost.as_ref().map(|c| c.currency.clone())),
        v(f.cost.as_ref().map(|c| c.micros)),
        v(f.referred_by.clone()),
        v(f.lead_score),
        v(f.country_code.as_str()),
        v(f.acquire_time),
    ]
}

/// A contact heard of for the first time (its create event); one already known keeps its facts.
pub async fn insert(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    contact: &str,
    f: &ContactFacts,
    create_time: i64,
) -> Result<()> {
    let mut cols = vec!["contact_id"];
    cols.extend(COLS);
    cols.extend(["create_time", "state", "merged_into"]);
    let mut row = vec![v(contact)];
    row.extend(values(f));
    row.extend([v(create_time), v(ContactState::Active.key()), v(None::<String>)]);
    let q =
        Sql::insert(tenant, "contact_facts", &cols, [row]).then(" ON CONFLICT (tenant_id, contact_id) DO NOTHING", []);
    exec(db, q).await?;
    Ok(())
}

/// The new facts of a contact already known; an unknown contact is left unknown (its create
/// event comes first per aggregate).
pub async fn update(db: &impl ConnectionTrait, tenant: &TenantId, contact: &str, f: &ContactFacts) -> Result<()> {
    let set = COLS.iter().map(|c| format!("{c} = ?")).collect::<Vec<_>>().join(", ");
    exec(db, Sql::update(tenant, "contact_facts", &set, values(f)).and("contact_id = ?", [v(contact)])).await?;
    Ok(())
}

/// The state of `contacts` (and, merged, the contact they were merged into).
pub async fn set_state(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    contacts: &[String],
    state: ContactState,
    merged_into: Option<&str>,
) -> Result<()> {
    let q = Sql::update(
        tenant,
        "contact_facts",
        "state = ?, merged_into = ?",
        [v(state.key()), v(merged_into.map(str::to_owned))],
    )
    .and_in("contact_id", Some(contacts));
    exec(db, q).await?;
    Ok(())
}
