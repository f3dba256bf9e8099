//! Conditions on a contact, shared by automations and campaigns: the ones lifecycle answers
//! itself (stage, tag, channel, from `known_contacts`) and the ones only the contacts service
//! can answer (a filter, a segment), asked by [`ask`] — given no transaction, and called with
//! none open — before the transaction that evaluates them ([`evaluate`]).

use std::collections::HashMap;
use std::time::Duration;

use clm_platform::{Error, TenantId};
use clm_proto::lifecycle::v1 as pb;
use sea_orm::ConnectionTrait;
use uuid::Uuid;

use crate::contacts_client::ContactsProbe;
use crate::store;

/// How long one question to the contacts service may take before the run is logged FAILED.
pub const REMOTE_TIMEOUT: Duration = Duration::from_secs(5);

/// A condition only the contacts service can answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Remote {
    Filter(String),
    Segment(String),
}

/// The answers to the remote conditions a job needs: `Err` names why one could not be asked
/// (contacts unreachable, a bad filter, a missing segment); the run is then logged FAILED.
pub type RemoteFacts = HashMap<Remote, Result<bool, String>>;

fn remote(c: &pb::Condition) -> Option<Remote> {
    match &c.kind {
        Some(pb::condition::Kind::ContactFilter(f)) => Some(Remote::Filter(f.clone())),
        Some(pb::condition::Kind::SegmentId(s)) => Some(Remote::Segment(s.clone())),
        _ => None,
    }
}

/// The remote conditions among `conditions`, without repeats, added to `out`.
pub fn needed_of<'a>(conditions: impl IntoIterator<Item = &'a pb::Condition>, out: &mut Vec<Remote>) {
    for r in conditions.into_iter().filter_map(remote) {
        if !out.contains(&r) {
            out.push(r);
        }
    }
}

/// Ask the contacts service the remote conditions. The only place lifecycle calls contacts
/// for automations; it is given no transaction, and callers hold none open.
pub async fn ask(contacts: &ContactsProbe, tenant: &TenantId, contact: Uuid, needed: Vec<Remote>) -> RemoteFacts {
    let mut facts = RemoteFacts::new();
    for r in needed {
        let call = async {
            match &r {
                Remote::Filter(f) => contacts.matches(tenant, contact, f).await,
                Remote::Segment(s) => contacts.in_segment(tenant, contact, s).await,
            }
        };
        let answer = match tokio::time::timeout(REMOTE_TIMEOUT, call).await {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("contacts service: no answer within {REMOTE_TIMEOUT:?}")),
        };
        facts.insert(r, answer);
    }
    facts
}

/// Whether all of `conditions` hold for `contact` (`Err`: one could not be evaluated). `current`
/// is the contact's stage key in the model; remote answers come from `facts`.
pub async fn evaluate(
    txn: &impl ConnectionTrait,
    tenant: &TenantId,
    contact: Uuid,
    conditions: &[pb::Condition],
    current: &str,
    facts: &RemoteFacts,
) -> Result<Result<bool, String>, Error> {
    let (tags, channel) = store::contact_facts(txn, tenant, contact).await?;
    for c in conditions {
        let ok = match (&c.kind, remote(c)) {
            (_, Some(r)) => {
                facts.get(&r).cloned().unwrap_or_else(|| Err("the definition changed while it ran; not asked".into()))
            }
            (Some(pb::condition::Kind::InStage(s)), None) => Ok(s == current),
            (Some(pb::condition::Kind::HasTag(t)), None) => Ok(tags.contains(&t.to_lowercase())),
            (Some(pb::condition::Kind::AcquisitionChannel(ch)), None) => Ok(ch == &channel),
            _ => Ok(true),
        };
        if ok != Ok(true) {
            return Ok(ok);
        }
    }
    Ok(Ok(true))
}
