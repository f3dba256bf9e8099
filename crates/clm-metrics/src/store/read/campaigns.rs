//! Campaign enrolments of a range (GetCampaignMetrics): the enrolments that began in it,
//! counted by campaign, state and conversion; the converted ones with their times; the range's
//! purchases of their contacts; the campaigns' names. Read from the enrolment ledger itself
//! (one row per enrolment, indexed by tenant and enrolment time), so the cost grows with the
//! enrolments of the range. Merges: a converted contact's purchases are those of every contact
//! merged with it (before or after), all under the id of the one they were merged into.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use clm_platform::{Result, TenantId};
use sea_orm::ConnectionTrait;

use super::{ID_CHUNK, Slice};
use crate::domain::campaign::{Conversion, EnrolmentState, Purchase, Tally};
use crate::domain::facts::Money;
use crate::store::sql::{Sql, rows, v};

/// What the figures of a range's campaigns are computed from (`domain::campaign::figures`).
#[derive(Debug, Clone, Default)]
pub struct CampaignFacts {
    pub tallies: Vec<Tally>,
    /// Contacts as the roots of their merges.
    pub conversions: Vec<Conversion>,
    /// Contacts as the roots of their merges.
    pub purchases: Vec<Purchase>,
    /// Campaign id → name (its latest event's).
    pub names: HashMap<String, String>,
}

/// Enrolments that began in the slice's range, of the slice's contacts (channel, campaign of
/// acquisition, segment; the model does not apply), of `campaigns` when given.
fn enrolments(
    tenant: &TenantId,
    slice: &Slice,
    cols: &str,
    ids: Option<&[String]>,
    campaigns: Option<&[String]>,
) -> Sql {
    let mut q = Sql::select(tenant, cols, "ledger_enrolments e");
    if slice.channel.is_some() || slice.campaign.is_some() {
        q = q.left_join("contact_facts f", "f.contact_id = e.contact_id");
    }
    let q = q.and("e.enrol_time >= ? AND e.enrol_time < ?", [v(slice.start), v(slice.end)]);
    slice.fact_filters(q).and_in("e.contact_id", ids).and_in("e.campaign_id", campaigns)
}

/// Everything the figures of the slice's campaigns (`campaigns`, or all) need.
pub async fn campaign_facts(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    slice: &Slice,
    campaigns: Option<&[String]>,
) -> Result<CampaignFacts> {
    let mut out = CampaignFacts::default();
    let mut converted: Vec<(String, String, i64, i64)> = Vec::new();
    for ids in slice.chunks() {
        let cols = "e.campaign_id, e.state, e.converted, COUNT(*) AS n";
        let q =
            enrolments(tenant, slice, cols, ids, campaigns).then(" GROUP BY e.campaign_id, e.state, e.converted", []);
        for r in rows(db, q).await? {
            let state: String = r.try_get("", "state")?;
            let Some(state) = EnrolmentState::parse(&state) else { continue };
            out.tallies.push(Tally {
                campaign: r.try_get("", "campaign_id")?,
                state,
                converted: r.try_get::<i64>("", "converted")? != 0,
                n: r.try_get("", "n")?,
            });
        }
        let cols = "e.campaign_id, e.contact_id, e.enrol_time, e.finish_time";
        let q = enrolments(tenant, slice, cols, ids, campaigns).and("e.converted = 1", []);
        for r in rows(db, q).await? {
            let enrol: i64 = r.try_get("", "enrol_time")?;
            let finish = r.try_get::<Option<i64>>("", "finish_time")?.unwrap_or(enrol);
            converted.push((r.try_get("", "campaign_id")?, r.try_get("", "contact_id")?, enrol, finish));
        }
    }
    let contacts: BTreeSet<String> = converted.iter().map(|c| c.1.clone()).collect();
    let root = merge_roots(db, tenant, contacts).await?;
    let root_of = |c: &str| root.get(c).cloned().unwrap_or_else(|| c.to_owned());
    out.conversions = converted
        .into_iter()
        .map(|(campaign, contact, enrol_time, convert_time)| Conversion {
            campaign,
            contact: root_of(&contact),
            enrol_time,
            convert_time,
        })
        .collect();
    let group: Vec<String> = root.keys().cloned().collect();
    let mut seen = BTreeSet::new();
    for ids in group.chunks(ID_CHUNK) {
        let q = Sql::select(tenant, "contact_id, event_id, at, amount, currency", "ledger_events")
            .and("kind = 'purchase' AND at >= ? AND at < ?", [v(slice.start), v(slice.end)])
            .and_in("contact_id", Some(ids));
        for r in rows(db, q).await? {
            let contact: String = r.try_get("", "contact_id")?;
            let event: String = r.try_get("", "event_id")?;
            // Lifecycle may have recorded a merged contact's purchase under both ids.
            if !seen.insert(event) {
                continue;
            }
            out.purchases.push(Purchase {
                contact: root_of(&contact),
                at: r.try_get("", "at")?,
                amount: Money {
                    currency: r.try_get("", "currency")?,
                    micros: r.try_get::<Option<i64>>("", "amount")?.unwrap_or(0),
                },
            });
        }
    }
    let mut wanted: BTreeSet<String> = out.tallies.iter().map(|t| t.campaign.clone()).collect();
    wanted.extend(campaigns.into_iter().flatten().cloned());
    let wanted: Vec<String> = wanted.into_iter().collect();
    for ids in wanted.chunks(ID_CHUNK) {
        let q = Sql::select(tenant, "campaign_id, display_name", "campaign_names").and_in("campaign_id", Some(ids));
        for r in rows(db, q).await? {
            out.names.insert(r.try_get("", "campaign_id")?, r.try_get("", "display_name")?);
        }
    }
    Ok(out)
}

/// Most rounds of following merges (a chain of merges longer than this is cut there).
const MERGE_ROUNDS: usize = 8;

/// Every contact merged with one of `contacts` (into it, or it into another, transitively),
/// each mapped to the contact they all were merged into (the survivor, itself when it was not
/// merged): `contacts` are all keys.
async fn merge_roots(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    contacts: BTreeSet<String>,
) -> Result<BTreeMap<String, String>> {
    let mut into: HashMap<String, String> = HashMap::new();
    let mut known = contacts.clone();
    let mut frontier: Vec<String> = contacts.into_iter().collect();
    for _ in 0..MERGE_ROUNDS {
        if frontier.is_empty() {
            break;
        }
        let mut next = Vec::new();
        for ids in frontier.chunks(ID_CHUNK) {
            let merged = || Sql::select(tenant, "contact_id, merged_into", "contact_facts").and("state = 'merged'", []);
            for q in [merged().and_in("contact_id", Some(ids)), merged().and_in("merged_into", Some(ids))] {
                for r in rows(db, q).await? {
                    let from: String = r.try_get("", "contact_id")?;
                    let Some(to) = r.try_get::<Option<String>>("", "merged_into")? else { continue };
                    for c in [&from, &to] {
                        if known.insert(c.clone()) {
                            next.push(c.clone());
                        }
                    }
                    into.insert(from, to);
                }
            }
        }
        frontier = next;
    }
    Ok(known
        .into_iter()
        .map(|c| {
            let mut root = c.clone();
            for _ in 0..=MERGE_ROUNDS {
                match into.get(&root) {
                    Some(to) if *to != c => root.clone_from(to),
                    _ => break,
                }
            }
            (c, root)
        })
        .collect())
}
