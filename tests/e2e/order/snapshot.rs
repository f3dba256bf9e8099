//! Every read model of a tenant as one flat (path → value) map: the answers of every read RPC
//! over several scopes (`scopes`, `KPIS`, `snapshot`), decoded generically through the protos'
//! descriptors (`Schema`, `varint`, `put`) into `Val`s, with ids left out and the test run's own
//! times (survey responses) read as "now", so two tenants' maps can be compared key by key.

use std::collections::{BTreeMap, HashMap};

use clm_platform::convert::timestamp;
use clm_proto::common::v1::Money;
use clm_proto::lifecycle::v1 as lpb;
use clm_proto::metrics::v1 as pb;
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};

use super::env::{Clients, Fed};
use super::plan::{DAY, Plan, micros_of, month_start, next_month, show_time};

#[derive(Debug, Clone)]
pub(super) enum Val {
    Int(i64),
    Num(f64),
    Str(String),
    Time(i64),
    Dur(i64),
    Money(String, i128),
    /// A time of the test run (a survey response's), or a duration ending at one.
    Now,
}

impl std::fmt::Display for Val {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Val::Int(i) => write!(f, "{i}"),
            Val::Num(x) => write!(f, "{x}"),
            Val::Str(s) => write!(f, "{s:?}"),
            Val::Time(t) => write!(f, "{}", show_time(*t)),
            Val::Dur(d) => write!(f, "{:.3}d", *d as f64 / DAY as f64),
            Val::Money(c, m) => write!(f, "{}.{:06} {c}", m / 1_000_000, (m % 1_000_000).abs()),
            Val::Now => write!(f, "(now)"),
        }
    }
}

/// Fields that differ between tenants by construction: ids and the token's subject.
const IGNORED: [&str; 5] = ["id", "contact_id", "model_id", "cause_ref", "actor"];

pub(super) struct Schema {
    messages: HashMap<String, DescriptorProto>,
    /// Times from here on are the test run's (survey responses).
    run_start: i64,
}

impl Schema {
    pub(super) fn new(run_start: i64) -> Schema {
        let fds = FileDescriptorSet::decode(clm_proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
        let mut messages = HashMap::new();
        fn add(messages: &mut HashMap<String, DescriptorProto>, scope: &str, m: &DescriptorProto) {
            let name = format!("{scope}.{}", m.name());
            for n in &m.nested_type {
                add(messages, &name, n);
            }
            messages.insert(name, m.clone());
        }
        for file in &fds.file {
            for m in &file.message_type {
                add(&mut messages, &format!(".{}", file.package()), m);
            }
        }
        Schema { messages, run_start }
    }

    /// The fields of `msg` (of proto type `ty`) as paths under `prefix`.
    fn flatten(&self, ty: &str, msg: &impl Message, prefix: &str, out: &mut BTreeMap<String, Val>) {
        for (path, v) in self.walk(ty, &msg.encode_to_vec()) {
            out.insert(format!("{prefix} {path}"), v);
        }
    }

    fn walk(&self, ty: &str, mut buf: &[u8]) -> Vec<(String, Val)> {
        let d = &self.messages[ty];
        let mut out: Vec<(String, Val)> = Vec::new();
        let mut counts: HashMap<i32, usize> = HashMap::new();
        while !buf.is_empty() {
            let key = varint(&mut buf);
            let (num, wire) = ((key >> 3) as i32, key & 7);
            let raw: &[u8];
            let mut int = 0u64;
            match wire {
                0 => {
                    int = varint(&mut buf);
                    raw = &[];
                }
                1 => {
                    (raw, buf) = buf.split_at(8);
                }
                2 => {
                    let len = varint(&mut buf) as usize;
                    (raw, buf) = buf.split_at(len);
                }
                5 => {
                    (raw, buf) = buf.split_at(4);
                }
                w => panic!("wire type {w} in {ty}"),
            }
            let Some(f) = d.field.iter().find(|f| f.number() == num) else { continue };
            if IGNORED.contains(&f.name()) {
                continue;
            }
            let repeated = f.label() == Label::Repeated;
            let index = counts.entry(num).or_default();
            let name = if repeated { format!("{}[{index}]", f.name()) } else { f.name().to_owned() };
            *index += 1;
            let scalar = |wire: u64, raw: &[u8], int: u64| -> Val {
                match (f.r#type(), wire) {
                    (Type::Double, 1) => Val::Num(f64::from_le_bytes(raw.try_into().unwrap())),
                    (Type::Float, 5) => Val::Num(f64::from(f32::from_le_bytes(raw.try_into().unwrap()))),
                    (Type::String, 2) => Val::Str(String::from_utf8_lossy(raw).into_owned()),
                    (Type::Bytes, 2) => Val::Str(format!("{raw:02x?}")),
                    (Type::Enum, 0) => {
                        let e = f.type_name().rsplit('.').next().unwrap_or_default();
                        Val::Str(format!("{e}#{}", int as i64))
                    }
                    _ => Val::Int(int as i64),
                }
            };
            if f.r#type() != Type::Message {
                if wire == 2 && !matches!(f.r#type(), Type::String | Type::Bytes) {
                    // Packed repeated scalars.
                    let mut p = raw;
                    let mut k = 0;
                    while !p.is_empty() {
                        let v = match f.r#type() {
                            Type::Double => {
                                let (x, rest) = p.split_at(8);
                                p = rest;
                                scalar(1, x, 0)
                            }
                            _ => scalar(0, &[], varint(&mut p)),
                        };
                        out.push((format!("{}[{k}]", f.name()), v));
                        k += 1;
                    }
                } else {
                    out.push((name, scalar(wire, raw, int)));
                }
                continue;
            }
            let tn = f.type_name();
            match tn {
                ".google.protobuf.Timestamp" => {
                    let t = prost_types::Timestamp::decode(raw).unwrap_or_default();
                    out.push((name, Val::Time(t.seconds * 1_000_000 + i64::from(t.nanos / 1000))));
                }
                ".google.protobuf.Duration" => {
                    let t = prost_types::Duration::decode(raw).unwrap_or_default();
                    out.push((name, Val::Dur(t.seconds * 1_000_000 + i64::from(t.nanos / 1000))));
                }
                ".clm.common.v1.Money" => {
                    let m = Money::decode(raw).unwrap_or_default();
                    out.push((name, Val::Money(m.currency_code.clone(), micros_of(&m))));
                }
                _ => {
                    let sub = self.walk(tn, raw);
                    let entry = self.messages[tn].options.as_ref().is_some_and(prost_types::MessageOptions::map_entry);
                    let get = |k: &str| sub.iter().find(|(p, _)| p == k).map(|(_, v)| v.to_string());
                    if entry {
                        let key = get("key").unwrap_or_default();
                        let v = sub.iter().find(|(p, _)| p == "value").map_or(Val::Int(0), |(_, v)| v.clone());
                        out.push((format!("{}[{key}]", f.name()), v));
                        continue;
                    }
                    // Rows named by what they are about, not their place, where they have a key.
                    let label = if repeated {
                        get("stage_key")
                            .or_else(|| get("channel").map(|c| format!("{c}/{}", get("campaign").unwrap_or_default())))
                            .or_else(|| get("cohort_start_time"))
                            .or_else(|| get("period_start_time"))
                            .or_else(|| get("period_index"))
                            .map(|l| format!("{}[{l}]", f.name()))
                    } else {
                        None
                    };
                    let label = label.unwrap_or(name);
                    for (p, v) in sub {
                        out.push((format!("{label}.{p}"), v));
                    }
                }
            }
        }
        // Times of the run (survey responses) and the durations of the same row.
        let run = out.iter().any(|(p, v)| !p.contains('.') && matches!(v, Val::Time(t) if *t >= self.run_start));
        for (p, v) in &mut out {
            let near = match v {
                Val::Time(t) => *t >= self.run_start,
                Val::Dur(_) => run && !p.contains('.'),
                _ => false,
            };
            if near {
                *v = Val::Now;
            }
        }
        out
    }
}

fn varint(buf: &mut &[u8]) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = buf[0];
        *buf = &buf[1..];
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

/// A read model's answer, or the error it gave, under `key`.
fn put<T: Message>(
    s: &Schema,
    out: &mut BTreeMap<String, Val>,
    ty: &str,
    key: &str,
    r: Result<tonic::Response<T>, tonic::Status>,
) {
    match r {
        Ok(r) => s.flatten(ty, r.get_ref(), key, out),
        Err(e) => {
            out.insert(format!("{key} error"), Val::Str(format!("{:?} {}", e.code(), e.message())));
        }
    }
}

/// The scopes every scoped read model is asked over: (label, scope).
pub(super) fn scopes(plan: &Plan) -> Vec<(String, pb::MetricsScope)> {
    let range = |start: i64, end: i64| pb::MetricsScope {
        start_time: Some(timestamp(start)),
        end_time: Some(timestamp(end)),
        ..Default::default()
    };
    let all = range(plan.start - DAY, plan.end);
    let month = month_start(plan.start + 100 * DAY);
    vec![
        ("all".into(), all.clone()),
        (format!("month {}", &show_time(month)[..7]), range(month, next_month(month))),
        ("channel=paid_search".into(), pb::MetricsScope { channel: "paid_search".into(), ..all.clone() }),
        ("campaign=spring".into(), pb::MetricsScope { campaign: "spring".into(), ..all }),
    ]
}

pub(super) const KPIS: [pb::Kpi; 22] = [
    pb::Kpi::NewContacts,
    pb::Kpi::Leads,
    pb::Kpi::CostPerLead,
    pb::Kpi::LeadQualityRate,
    pb::Kpi::NewCustomers,
    pb::Kpi::CloseRate,
    pb::Kpi::Revenue,
    pb::Kpi::AverageDealSize,
    pb::Kpi::TimeToCloseDays,
    pb::Kpi::Cac,
    pb::Kpi::ConversionRate,
    pb::Kpi::ChurnRate,
    pb::Kpi::RetentionRate,
    pb::Kpi::RepeatPurchaseRate,
    pb::Kpi::PurchaseFrequency,
    pb::Kpi::AverageOrderValue,
    pb::Kpi::Nps,
    pb::Kpi::Csat,
    pb::Kpi::Ces,
    pb::Kpi::ReferralRate,
    pb::Kpi::CustomerLifetimeValue,
    pb::Kpi::ClvToCacRatio,
];

/// Every read model of a tenant, through the public API.
pub(super) async fn snapshot(s: &Schema, plan: &Plan, fed: &Fed) -> BTreeMap<String, Val> {
    let Clients { mut l, mut m, .. } = fed.cl.clone();
    let mut out = BTreeMap::new();
    for (i, id) in fed.ids.iter().enumerate() {
        let r = l.get_journey(lpb::GetJourneyRequest { contact_id: id.clone(), model_id: String::new() }).await;
        put(s, &mut out, ".clm.lifecycle.v1.GetJourneyResponse", &format!("GetJourney{{c{i}}}"), r);
        let r = m.get_customer_value(pb::GetCustomerValueRequest { contact_id: id.clone() }).await;
        put(s, &mut out, ".clm.metrics.v1.GetCustomerValueResponse", &format!("GetCustomerValue{{c{i}}}"), r);
    }
    for (label, scope) in scopes(plan) {
        let scope = Some(scope);
        let r = m.get_funnel(pb::GetFunnelRequest { scope: scope.clone(), conversion_window: None }).await;
        put(s, &mut out, ".clm.metrics.v1.GetFunnelResponse", &format!("GetFunnel{{{label}}}"), r);
        let r =
            m.get_stage_metrics(pb::GetStageMetricsRequest { scope: scope.clone(), lead_quality_threshold: 0 }).await;
        put(s, &mut out, ".clm.metrics.v1.GetStageMetricsResponse", &format!("GetStageMetrics{{{label}}}"), r);
        for by_campaign in [false, true] {
            let r = m.get_channel_metrics(pb::GetChannelMetricsRequest { scope: scope.clone(), by_campaign }).await;
            let key = format!("GetChannelMetrics{{{label}{}}}", if by_campaign { ", by campaign" } else { "" });
            put(s, &mut out, ".clm.metrics.v1.GetChannelMetricsResponse", &key, r);
        }
        for g in [pb::Granularity::Month, pb::Granularity::Week] {
            let r = m
                .get_lifecycle_breakdown(pb::GetLifecycleBreakdownRequest {
                    scope: scope.clone(),
                    granularity: g as i32,
                })
                .await;
            let key = format!("GetLifecycleBreakdown{{{label}, {g:?}}}");
            put(s, &mut out, ".clm.metrics.v1.GetLifecycleBreakdownResponse", &key, r);
        }
        for k in KPIS {
            let r = m
                .list_kpi_series(pb::ListKpiSeriesRequest {
                    kpi: k as i32,
                    scope: scope.clone(),
                    granularity: pb::Granularity::Month as i32,
                })
                .await;
            put(s, &mut out, ".clm.metrics.v1.ListKpiSeriesResponse", &format!("ListKpiSeries{{{label}, {k:?}}}"), r);
        }
    }
    let (_, all) = scopes(plan).swap_remove(0);
    for g in [pb::Granularity::Month, pb::Granularity::Week] {
        for measure in [pb::CohortMeasure::Active, pb::CohortMeasure::Retained, pb::CohortMeasure::Revenue] {
            let r = m
                .get_cohort_retention(pb::GetCohortRetentionRequest {
                    scope: Some(all.clone()),
                    granularity: g as i32,
                    periods: 12,
                    measure: measure as i32,
                })
                .await;
            let key = format!("GetCohortRetention{{{g:?}, {measure:?}}}");
            put(s, &mut out, ".clm.metrics.v1.GetCohortRetentionResponse", &key, r);
        }
    }
    out
}
