//! Rule settings handlers: which built-in rules run for the tenant.

use clm_platform::convert::{duration, duration_micros, etag};
use clm_platform::crud::{ExpectedVersion, UpdateMask};
use clm_platform::{Error, Violations};
use clm_proto::lifecycle::v1 as pb;
use tonic::{Request, Response, Status};

use super::{LifecycleApi, ctx};
use crate::store::{self, StoredRules};

fn rules_pb(r: &StoredRules, version: i64) -> pb::RuleSettings {
    pb::RuleSettings {
        first_touchpoint_awareness: r.first_touchpoint_awareness,
        lead_captured_acquisition: r.lead_captured_acquisition,
        first_purchase_conversion: r.first_purchase_conversion,
        repeat_purchase_retention: r.repeat_purchase_retention,
        customer_tenure_retention: r.customer_tenure_retention_micros.map(duration),
        advocacy_loyalty: r.advocacy_loyalty,
        dormancy: r.dormancy,
        reactivation: r.reactivation,
        detractor_at_risk: r.detractor_at_risk,
        etag: etag(version),
    }
}

pub(super) async fn get_rule_settings(
    api: &LifecycleApi,
    req: Request<pb::GetRuleSettingsRequest>,
) -> Result<Response<pb::GetRuleSettingsResponse>, Status> {
    let ctx = ctx(&req)?;
    let (r, version) = store::rules(&api.db, &ctx.tenant).await?;
    Ok(Response::new(pb::GetRuleSettingsResponse { rule_settings: Some(rules_pb(&r, version)) }))
}

pub(super) async fn update_rule_settings(
    api: &LifecycleApi,
    req: Request<pb::UpdateRuleSettingsRequest>,
) -> Result<Response<pb::UpdateRuleSettingsResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let s = req.rule_settings.ok_or_else(|| Error::invalid("rule_settings", "is required"))?;
    let mut v = Violations::new();
    let expected = ExpectedVersion::parse(&mut v, "rule_settings.etag", &s.etag);
    const PATHS: [&str; 9] = [
        "first_touchpoint_awareness",
        "lead_captured_acquisition",
        "first_purchase_conversion",
        "repeat_purchase_retention",
        "customer_tenure_retention",
        "advocacy_loyalty",
        "dormancy",
        "reactivation",
        "detractor_at_risk",
    ];
    let mask = UpdateMask::parse(&mut v, req.update_mask, &PATHS);
    let tenure = match &s.customer_tenure_retention {
        None => None,
        Some(d) => match duration_micros(d) {
            Some(m) if m > 0 => Some(m),
            _ => {
                v.add("rule_settings.customer_tenure_retention", "must be a positive duration");
                None
            }
        },
    };
    v.finish()?;
    let txn = clm_platform::db::begin_write(&api.db).await?;
    let (mut r, version) = store::rules(&txn, &ctx.tenant).await?;
    expected.check(version, "settings")?;
    // No mask: every setting is replaced (bools, which cannot be "not given").
    macro_rules! set {
        ($($f:ident),+) => { $( if mask.has(stringify!($f)) { r.$f = s.$f; } )+ };
    }
    set!(
        first_touchpoint_awareness,
        lead_captured_acquisition,
        first_purchase_conversion,
        repeat_purchase_retention,
        advocacy_loyalty,
        dormancy,
        reactivation,
        detractor_at_risk
    );
    if mask.has("customer_tenure_retention") {
        r.customer_tenure_retention_micros = tenure;
    }
    let new_version = store::save_rules(&txn, &ctx.tenant, &r, version).await?;
    txn.commit().await.map_err(Error::from)?;
    Ok(Response::new(pb::UpdateRuleSettingsResponse { rule_settings: Some(rules_pb(&r, new_version)) }))
}
