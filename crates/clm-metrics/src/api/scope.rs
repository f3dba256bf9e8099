//! The request edge every metrics query shares: a `MetricsScope` checked into a slice of the
//! aggregates (range, model, channel, campaign; each field named when wrong) and a granularity.

use clm_platform::convert::{TimeBounds, parse_time, uuid};
use clm_platform::{TenantId, Violations};
use clm_proto::metrics::v1 as pb;
use uuid::Uuid;

use super::{DEFAULT_RANGE, MAX_FILTER_BYTES};
use crate::domain::channel::Channel;
use crate::domain::{DAY, Gran};
use crate::store::read::Slice;

/// The id lifecycle gives a tenant's default model (a UUID v5 of the tenant, a published
/// contract), so metrics can default to it without asking.
pub fn default_model_id(tenant: &TenantId) -> String {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("clm-default-model/{tenant}").as_bytes()).to_string()
}

pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Check a scope into a slice; `prefix` names the field ("scope." or "goal.scope.").
pub fn slice(tenant: &TenantId, scope: Option<&pb::MetricsScope>, prefix: &str, v: &mut Violations) -> Slice {
    let s = scope.cloned().unwrap_or_default();
    let end = match &s.end_time {
        None => Some(now_micros()),
        Some(t) => v.check(parse_time(&format!("{prefix}end_time"), t, TimeBounds::Any)),
    };
    let start = match &s.start_time {
        None => end.map(|e| e - DEFAULT_RANGE),
        Some(t) => v.check(parse_time(&format!("{prefix}start_time"), t, TimeBounds::Any)),
    };
    let (start, end) = match (start, end) {
        (Some(start), Some(end)) => {
            if start >= end {
                v.add(format!("{prefix}end_time"), "must be after start_time");
            }
            if end - start > 20 * 366 * DAY {
                v.add(format!("{prefix}start_time"), "a range of at most 20 years");
            }
            (start, end)
        }
        _ => (0, 0),
    };
    let model = if s.model_id.is_empty() || s.model_id == "default" {
        default_model_id(tenant)
    } else {
        v.check(uuid(&format!("{prefix}model_id"), &s.model_id)).map(|u| u.to_string()).unwrap_or_default()
    };
    if s.segment_filter.len() > MAX_FILTER_BYTES {
        v.add(format!("{prefix}segment_filter"), format!("at most {MAX_FILTER_BYTES} bytes"));
    }
    Slice {
        model,
        start,
        end,
        channel: (!s.channel.trim().is_empty()).then(|| Channel::from_key(&s.channel)),
        campaign: (!s.campaign.is_empty()).then(|| s.campaign.clone()),
        contacts: None,
    }
}

pub fn gran(v: &mut Violations, field: &str, raw: i32, default: Gran, allow_day: bool) -> Gran {
    match pb::Granularity::try_from(raw) {
        Ok(pb::Granularity::Unspecified) => default,
        Ok(pb::Granularity::Day) if allow_day => Gran::Day,
        Ok(pb::Granularity::Week) => Gran::Week,
        Ok(pb::Granularity::Month) => Gran::Month,
        Ok(pb::Granularity::Quarter) if allow_day => Gran::Quarter,
        _ => {
            v.add(field, if allow_day { "DAY, WEEK, MONTH or QUARTER" } else { "WEEK or MONTH" });
            default
        }
    }
}
