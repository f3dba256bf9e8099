//! GetCampaignMetrics: enrolment and conversion per lifecycle campaign (docs/metrics.md §
//! Campaigns).

use clm_platform::Violations;
use clm_platform::convert::{duration, uuid};
use clm_proto::metrics::v1 as pb;
use tonic::{Request, Response, Status};

use super::kpi::money_exact;
use super::{MetricsApi, ctx, slice};
use crate::domain::campaign::{self, CampaignFigures};
use crate::store::read::campaigns::campaign_facts;

/// Most campaigns one request names.
const MAX_CAMPAIGNS: usize = 100;

fn to_pb(f: CampaignFigures, name: String) -> pb::CampaignMetrics {
    pb::CampaignMetrics {
        conversion_rate: f.conversion_rate(),
        campaign_id: f.campaign,
        campaign_name: name,
        enrolled: f.enrolled,
        converted: f.converted,
        completed: f.completed,
        exited: f.exited,
        active: f.active,
        median_time_to_convert: f.median_to_convert.map(duration),
        revenue_after_conversion: f.revenue.iter().filter_map(|(cur, micros)| money_exact(*micros, cur)).collect(),
    }
}

pub async fn get(
    api: &MetricsApi,
    req: Request<pb::GetCampaignMetricsRequest>,
) -> Result<Response<pb::GetCampaignMetricsResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let mut v = Violations::new();
    let mut slice = slice(&ctx.tenant, req.scope.as_ref(), "scope.", &mut v);
    if req.campaign_ids.len() > MAX_CAMPAIGNS {
        v.add("campaign_ids", format!("at most {MAX_CAMPAIGNS} campaigns"));
    }
    let mut ids: Vec<String> = Vec::new();
    for (i, raw) in req.campaign_ids.iter().enumerate() {
        if let Some(id) = v.check(uuid(&format!("campaign_ids[{i}]"), raw)) {
            ids.push(id.to_string());
        }
    }
    v.finish()?;
    ids.sort_unstable();
    ids.dedup();
    slice.contacts = api.members(&ctx.tenant, req.scope.as_ref(), "scope.segment_filter").await?;
    let wanted = (!ids.is_empty()).then_some(ids.as_slice());
    let mut facts = campaign_facts(&api.db, &ctx.tenant, &slice, wanted).await?;
    let mut figures = campaign::figures(&facts.tallies, &facts.conversions, &facts.purchases);
    for id in &ids {
        figures.entry(id.clone()).or_insert_with(|| CampaignFigures { campaign: id.clone(), ..Default::default() });
    }
    let mut rows: Vec<pb::CampaignMetrics> = figures
        .into_values()
        .map(|f| {
            let name = facts.names.remove(&f.campaign).unwrap_or_default();
            to_pb(f, name)
        })
        .collect();
    rows.sort_by(|a, b| (&a.campaign_name, &a.campaign_id).cmp(&(&b.campaign_name, &b.campaign_id)));
    Ok(Response::new(pb::GetCampaignMetricsResponse { campaigns: rows }))
}
