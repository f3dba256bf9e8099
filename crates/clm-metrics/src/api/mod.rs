//! gRPC handlers of `clm.metrics.v1.MetricsService`: parse the scope into a slice of the
//! aggregates, read them (`store::read`), compute (`kpi`, `domain`), map back.

mod campaigns;
pub mod goals;
pub mod kpi;
mod scope;

pub use scope::{default_model_id, gran, now_micros, slice};

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use clm_platform::contacts::ContactsClient;
use clm_platform::convert::{duration, duration_micros, timestamp, uuid};
use clm_platform::pagination::PageTokens;
use clm_platform::{Error, RequestContext, TenantId, Violations};
use clm_proto::metrics::v1 as pb;
use clm_proto::metrics::v1::metrics_service_server::MetricsService;
use sea_orm::DatabaseConnection;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::kpi::{Counter, KpiKind};
use crate::domain::{self, DAY, Gran, ratio};
use crate::store::read::{self, Group, Slice, cohorts, funnel};
use kpi::{ClvModel, Snapshot, kpi_kind, kpi_pb, money, money_exact};

/// Default lead-quality threshold (lead score).
const DEFAULT_LEAD_THRESHOLD: i32 = 50;
/// Default range: the 30 days before the end.
const DEFAULT_RANGE: i64 = 30 * DAY;
/// Longest segment filter accepted (as the contacts service accepts).
const MAX_FILTER_BYTES: usize = 4096;
/// Default funnel conversion window.
const DEFAULT_WINDOW: i64 = 90 * DAY;

#[derive(Clone, Debug)]
pub struct MetricsApi {
    pub(crate) db: DatabaseConnection,
    pub(crate) tokens: PageTokens,
    /// Asked which contacts a `segment_filter` selects (the contact data lives there).
    pub(crate) contacts: ContactsClient,
}

impl MetricsApi {
    pub fn new(db: DatabaseConnection, tokens: PageTokens, contacts: ContactsClient) -> Self {
        Self { db, tokens, contacts }
    }

    /// The members of the scope's segment filter now (`None` without one), as the contacts
    /// service answers them; `field` names the filter in errors.
    pub(crate) async fn members(
        &self,
        tenant: &TenantId,
        scope: Option<&pb::MetricsScope>,
        field: &str,
    ) -> Result<Option<Arc<Vec<String>>>, Error> {
        let Some(filter) = scope.map(|s| s.segment_filter.trim()).filter(|f| !f.is_empty()) else { return Ok(None) };
        let ids = self.contacts.filter_members(tenant, filter, field).await?;
        Ok(Some(Arc::new(ids.iter().map(Uuid::to_string).collect())))
    }
}

fn ctx<T>(req: &Request<T>) -> Result<RequestContext, Status> {
    clm_platform::auth::context(req)
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchKpisResponse, Status>> + Send>>;

#[tonic::async_trait]
impl MetricsService for MetricsApi {
    async fn get_funnel(&self, req: Request<pb::GetFunnelRequest>) -> Result<Response<pb::GetFunnelResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        let mut slice = slice(&ctx.tenant, req.scope.as_ref(), "scope.", &mut v);
        let window = match req.conversion_window.as_ref().map(duration_micros) {
            None => None,
            Some(Some(w)) if w > 0 => Some(w),
            Some(_) => {
                v.add("conversion_window", "must be a positive duration");
                None
            }
        };
        v.finish()?;
        slice.contacts = self.members(&ctx.tenant, req.scope.as_ref(), "scope.segment_filter").await?;
        let tenant = &ctx.tenant;
        let stages: Vec<(String, i64, String, String)> = read::model_stages(&self.db, tenant, &slice.model)
            .await?
            .into_iter()
            .filter(|(_, _, cat, _)| cat != "lost")
            .collect();
        let window_days = window.unwrap_or(DEFAULT_WINDOW) / DAY;
        let reached: HashMap<String, i64> =
            funnel::funnel(&self.db, tenant, &slice, window_days).await?.into_iter().collect();
        let mut out = Vec::new();
        let first_n = stages.first().map_or(0, |s| reached.get(&s.0).copied().unwrap_or(0));
        let mut prev: Option<i64> = None;
        let hists = funnel::histograms(&self.db, tenant, &slice).await?;
        for (key, ..) in &stages {
            let n = reached.get(key).copied().unwrap_or(0);
            let hist = hists.get(key).map_or(&[][..], Vec::as_slice);
            out.push(pb::FunnelStage {
                stage_key: key.clone(),
                reached: n,
                conversion_rate_from_previous: prev.map_or(1.0, |p| ratio(n as f64, p as f64)),
                conversion_rate_from_first: ratio(n as f64, first_n as f64),
                median_time_from_previous: domain::quantile(hist, 0.5).map(duration),
                p90_time_from_previous: domain::quantile(hist, 0.9).map(duration),
            });
            prev = Some(n);
        }
        let overall = out.last().map_or(0.0, |l| ratio(l.reached as f64, first_n as f64));
        Ok(Response::new(pb::GetFunnelResponse {
            funnel: Some(pb::Funnel { stages: out, overall_conversion_rate: overall }),
        }))
    }

    async fn get_stage_metrics(
        &self,
        req: Request<pb::GetStageMetricsRequest>,
    ) -> Result<Response<pb::GetStageMetricsResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        let mut slice = slice(&ctx.tenant, req.scope.as_ref(), "scope.", &mut v);
        if !(0..=100).contains(&req.lead_quality_threshold) {
            v.add("lead_quality_threshold", "must be 0 to 100");
        }
        v.finish()?;
        slice.contacts = self.members(&ctx.tenant, req.scope.as_ref(), "scope.segment_filter").await?;
        let threshold =
            if req.lead_quality_threshold == 0 { DEFAULT_LEAD_THRESHOLD } else { req.lead_quality_threshold };
        let tenant = &ctx.tenant;
        let s = Snapshot::load(&self.db, tenant, &slice, threshold).await?;
        let by_channel = read::kpis(&self.db, tenant, &slice, &[Counter::NewContacts], Group::Channel).await?;
        let c = &s.c;
        let cur = s.currency.as_str();
        let n = |name: Counter| c.n(name) as i64;
        Ok(Response::new(pb::GetStageMetricsResponse {
            acquisition: Some(pb::AcquisitionMetrics {
                new_contacts: n(Counter::NewContacts),
                leads: n(Counter::Leads),
                acquisition_cost: money_exact(c.sum(Counter::AcquisitionCost), cur),
                cost_per_lead: money_exact(c.per(Counter::AcquisitionCost, Counter::Leads), cur),
                lead_quality_rate: s.lead_quality_rate,
                new_contacts_by_channel: by_channel.into_iter().map(|r| (r.group, r.n)).collect(),
            }),
            conversion: Some(pb::ConversionMetrics {
                new_customers: n(Counter::NewCustomers),
                close_rate: ratio(c.n(Counter::LeadsWon), c.n(Counter::Leads)),
                revenue: money_exact(c.sum(Counter::Revenue), cur),
                average_deal_size: money_exact(c.per(Counter::FirstPurchases, Counter::FirstPurchases), cur),
                median_time_to_close: s.median_time_to_close.map(duration),
                p90_time_to_close: s.p90_time_to_close.map(duration),
                cac: money_exact(c.per(Counter::AcquisitionCost, Counter::NewCustomers), cur),
            }),
            retention: Some(pb::RetentionMetrics {
                churn_rate: s.churn_rate,
                retention_rate: s.retention_rate,
                repeat_purchase_rate: s.repeat_purchase_rate,
                purchase_frequency: s.purchase_frequency,
                average_order_value: money_exact(c.per(Counter::Revenue, Counter::Revenue), cur),
                dormant: n(Counter::Dormant),
                reactivated: n(Counter::Reactivated),
                nps: s.nps(),
                csat: s.csat(),
                ces: s.ces(),
                customers_at_start: s.customers_at_start as i64,
            }),
            loyalty: Some(pb::LoyaltyMetrics {
                referral_rate: s.referral_rate,
                advocates: n(Counter::NpsPromoters) + n(Counter::Reviewers),
                promoters: n(Counter::NpsPromoters),
                reviewers: n(Counter::Reviewers),
                historical_clv: money_exact(s.historical_clv_micros, cur),
                predicted_clv: money(s.predicted_clv, cur),
                clv_to_cac_ratio: ratio(s.predicted_clv, s.cac()),
            }),
            other_currencies: s.c.other_currencies.clone(),
        }))
    }

    async fn get_channel_metrics(
        &self,
        req: Request<pb::GetChannelMetricsRequest>,
    ) -> Result<Response<pb::GetChannelMetricsResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        let mut slice = slice(&ctx.tenant, req.scope.as_ref(), "scope.", &mut v);
        v.finish()?;
        slice.contacts = self.members(&ctx.tenant, req.scope.as_ref(), "scope.segment_filter").await?;
        let group = if req.by_campaign { Group::ChannelCampaign } else { Group::Channel };
        let rows = read::kpis(
            &self.db,
            &ctx.tenant,
            &slice,
            &[
                Counter::NewContacts,
                Counter::Leads,
                Counter::LeadsWon,
                Counter::NewCustomers,
                Counter::AcquisitionCost,
                Counter::Revenue,
            ],
            group,
        )
        .await?;
        let mut groups: std::collections::BTreeMap<String, Vec<read::KpiRow>> = std::collections::BTreeMap::new();
        for r in rows {
            groups.entry(r.group.clone()).or_default().push(r);
        }
        let channels = groups
            .into_iter()
            .map(|(g, rows)| {
                let c = kpi::Counters::from_rows(&rows);
                let (channel, campaign) = match g.split_once('/') {
                    Some((a, b)) if req.by_campaign => (a.to_owned(), b.to_owned()),
                    _ => (g.clone(), String::new()),
                };
                let cur = c.currency.as_str();
                pb::ChannelMetrics {
                    channel,
                    campaign,
                    new_contacts: c.n(Counter::NewContacts) as i64,
                    leads: c.n(Counter::Leads) as i64,
                    customers: c.n(Counter::NewCustomers) as i64,
                    close_rate: ratio(c.n(Counter::LeadsWon), c.n(Counter::Leads)),
                    acquisition_cost: money_exact(c.sum(Counter::AcquisitionCost), cur),
                    cost_per_lead: money_exact(c.per(Counter::AcquisitionCost, Counter::Leads), cur),
                    cac: money_exact(c.per(Counter::AcquisitionCost, Counter::NewCustomers), cur),
                    revenue: money_exact(c.sum(Counter::Revenue), cur),
                }
            })
            .collect();
        Ok(Response::new(pb::GetChannelMetricsResponse { channels }))
    }

    async fn get_cohort_retention(
        &self,
        req: Request<pb::GetCohortRetentionRequest>,
    ) -> Result<Response<pb::GetCohortRetentionResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        let mut slice = slice(&ctx.tenant, req.scope.as_ref(), "scope.", &mut v);
        let g = gran(&mut v, "granularity", req.granularity, Gran::Month, false);
        if slice.channel.is_some() || slice.campaign.is_some() {
            v.add(
                "scope.channel",
                "cohorts are not split by channel or campaign (a segment filter can select contacts)",
            );
        }
        let periods = match req.periods {
            0 => 12,
            p if (1..=60).contains(&p) => i64::from(p),
            _ => {
                v.add("periods", "1 to 60");
                12
            }
        };
        let measure = match pb::CohortMeasure::try_from(req.measure) {
            Ok(pb::CohortMeasure::Unspecified) => pb::CohortMeasure::Retained,
            Ok(m) => m,
            Err(_) => {
                v.add("measure", "ACTIVE, RETAINED or REVENUE");
                pb::CohortMeasure::Retained
            }
        };
        v.finish()?;
        slice.contacts = self.members(&ctx.tenant, req.scope.as_ref(), "scope.segment_filter").await?;
        if req.scope.as_ref().and_then(|s| s.start_time.as_ref()).is_none() {
            // Default: the last year of cohorts.
            slice.start = slice.end - 365 * DAY;
        }
        let m =
            cohorts::cohorts(&self.db, &ctx.tenant, &slice, g, domain::period_start(slice.start, g), slice.end).await?;
        // Revenue is never summed across currencies: the cells show the currency with the most
        // revenue in these cohorts.
        let mut totals: HashMap<&str, i128> = HashMap::new();
        for (_, _, cur, r) in &m.revenue {
            *totals.entry(cur.as_str()).or_default() += i128::from(*r);
        }
        let currency =
            totals.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))).map(|c| (*c.0).to_owned()).unwrap_or_default();
        let now = now_micros();
        let rows = m
            .sizes
            .iter()
            .map(|&(cohort, size)| {
                let elapsed = domain::period_index(cohort, now, g) + 1;
                let cells = (0..periods.min(elapsed))
                    .map(|idx| {
                        let n = m.cells.iter().find(|c| c.0 == cohort && c.1 == idx).map_or(0, |c| c.2);
                        let revenue: i64 = m
                            .revenue
                            .iter()
                            .filter(|r| r.0 == cohort && r.1 == idx && r.2 == currency)
                            .map(|r| r.3)
                            .sum();
                        let retained: i64 = m.last.iter().filter(|l| l.0 == cohort && l.1 >= idx).map(|l| l.2).sum();
                        let (count, value) = match measure {
                            pb::CohortMeasure::Retained => (retained, ratio(retained as f64, size as f64)),
                            pb::CohortMeasure::Revenue => (n, ratio(revenue as f64 / 1e6, size as f64)),
                            _ => (n, ratio(n as f64, size as f64)),
                        };
                        pb::CohortCell {
                            period_index: i32::try_from(idx).unwrap_or(i32::MAX),
                            value,
                            count,
                            revenue: money_exact(i128::from(revenue), &currency),
                        }
                    })
                    .collect();
                pb::CohortRow { cohort_start_time: Some(timestamp(cohort)), cohort_size: size, cells }
            })
            .collect();
        Ok(Response::new(pb::GetCohortRetentionResponse { rows }))
    }

    async fn get_lifecycle_breakdown(
        &self,
        req: Request<pb::GetLifecycleBreakdownRequest>,
    ) -> Result<Response<pb::GetLifecycleBreakdownResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        let mut slice = slice(&ctx.tenant, req.scope.as_ref(), "scope.", &mut v);
        let g = gran(&mut v, "granularity", req.granularity, Gran::Month, true);
        if g == Gran::Quarter {
            v.add("granularity", "DAY, WEEK or MONTH");
        }
        v.finish()?;
        slice.contacts = self.members(&ctx.tenant, req.scope.as_ref(), "scope.segment_filter").await?;
        let tenant = &ctx.tenant;
        let start = domain::period_start(slice.start, g);
        let wide = Slice { start, ..slice.clone() };
        let rows = read::kpis(
            &self.db,
            tenant,
            &wide,
            &[Counter::Reactivated, Counter::Dormant, Counter::Churned],
            Group::Day,
        )
        .await?;
        let counts = cohorts::period_counts(&self.db, tenant, &slice, g, start, slice.end).await?;
        let periods = domain::periods(start, slice.end, g)
            .into_iter()
            .map(|p| {
                let sum = |name: Counter| -> i64 {
                    rows.iter().filter(|r| r.name == name && domain::period_start(r.day, g) == p).map(|r| r.n).sum()
                };
                let (returning, first) = counts.iter().find(|c| c.0 == p).map_or((0, 0), |c| (c.2, c.3));
                pb::BreakdownPeriod {
                    period_start_time: Some(timestamp(p)),
                    new: first,
                    returning,
                    reactivated: sum(Counter::Reactivated),
                    dormant: sum(Counter::Dormant),
                    churned: sum(Counter::Churned),
                }
            })
            .collect();
        Ok(Response::new(pb::GetLifecycleBreakdownResponse { periods }))
    }

    async fn get_customer_value(
        &self,
        req: Request<pb::GetCustomerValueRequest>,
    ) -> Result<Response<pb::GetCustomerValueResponse>, Status> {
        let ctx = ctx(&req)?;
        let id = uuid("contact_id", &req.get_ref().contact_id).map_err(|fv| Error::InvalidArgument(vec![fv]))?;
        let tenant = &ctx.tenant;
        let contact = id.to_string();
        if !read::contact_known(&self.db, tenant, &contact).await? {
            return Err(Error::not_found("contact", contact).into());
        }
        let f = read::customer(&self.db, tenant, &contact).await?.unwrap_or_default();
        let now = now_micros();
        let all =
            Slice { model: default_model_id(&ctx.tenant), start: now - 365 * DAY, end: now + DAY, ..Slice::default() };
        // The contact's own order value and frequency in its main currency (orders per year
        // since the first, at least a month of tenure), times the tenant's expected lifespan.
        let predicted = match f.first_purchase {
            Some(first) => {
                let lifespan = ClvModel::load(&self.db, tenant, &all, &f.currency).await?.lifespan_years();
                let years = ((now - first).max(30 * DAY) as f64) / (365.0 * DAY as f64);
                Some(domain::predicted_clv(
                    ratio(f.revenue as f64, f.currency_orders as f64),
                    f.currency_orders as f64 / years,
                    lifespan,
                ))
            }
            None => None,
        };
        let cost = read::acquisition_cost(&self.db, tenant, &contact).await?;
        Ok(Response::new(pb::GetCustomerValueResponse {
            customer_value: Some(pb::CustomerValue {
                contact_id: contact.clone(),
                historical_revenue: money_exact(f.revenue.into(), &f.currency),
                orders: f.orders,
                first_purchase_time: f.first_purchase.map(timestamp),
                last_purchase_time: f.last_purchase.map(timestamp),
                predicted_clv: predicted.and_then(|p| money(p, &f.currency)),
                acquisition_cost: cost.and_then(|(m, c)| money_exact(m.into(), &c)),
                current_stage: read::current_stage(&self.db, tenant, &default_model_id(&ctx.tenant), &contact)
                    .await?
                    .unwrap_or_default(),
            }),
        }))
    }

    async fn create_goal(
        &self,
        req: Request<pb::CreateGoalRequest>,
    ) -> Result<Response<pb::CreateGoalResponse>, Status> {
        goals::create(self, req).await
    }

    async fn get_goal(&self, req: Request<pb::GetGoalRequest>) -> Result<Response<pb::GetGoalResponse>, Status> {
        goals::get(self, req).await
    }

    async fn list_goals(&self, req: Request<pb::ListGoalsRequest>) -> Result<Response<pb::ListGoalsResponse>, Status> {
        goals::list(self, req).await
    }

    async fn update_goal(
        &self,
        req: Request<pb::UpdateGoalRequest>,
    ) -> Result<Response<pb::UpdateGoalResponse>, Status> {
        goals::update(self, req).await
    }

    async fn delete_goal(
        &self,
        req: Request<pb::DeleteGoalRequest>,
    ) -> Result<Response<pb::DeleteGoalResponse>, Status> {
        goals::delete(self, req).await
    }

    async fn get_scorecard(
        &self,
        req: Request<pb::GetScorecardRequest>,
    ) -> Result<Response<pb::GetScorecardResponse>, Status> {
        goals::scorecard(self, req).await
    }

    async fn get_campaign_metrics(
        &self,
        req: Request<pb::GetCampaignMetricsRequest>,
    ) -> Result<Response<pb::GetCampaignMetricsResponse>, Status> {
        campaigns::get(self, req).await
    }

    async fn list_kpi_series(
        &self,
        req: Request<pb::ListKpiSeriesRequest>,
    ) -> Result<Response<pb::ListKpiSeriesResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        let mut slice = slice(&ctx.tenant, req.scope.as_ref(), "scope.", &mut v);
        let g = gran(&mut v, "granularity", req.granularity, Gran::Month, true);
        const WHICH: &str = "which KPI (KPI_NEW_CONTACTS, KPI_NPS, …)";
        let k = kpi_kind(req.kpi);
        if k.is_none() {
            v.add("kpi", WHICH);
        }
        let periods = domain::periods(slice.start, slice.end, g);
        if periods.len() > 400 {
            v.add("granularity", "at most 400 periods per series; use a coarser granularity");
        }
        v.finish()?;
        let k = k.ok_or_else(|| Error::invalid("kpi", WHICH))?;
        slice.contacts = self.members(&ctx.tenant, req.scope.as_ref(), "scope.segment_filter").await?;
        let mut points = Vec::with_capacity(periods.len());
        for p in periods {
            let s = Slice { start: p, end: domain::next_period(p, g), ..slice.clone() };
            let snap = Snapshot::load(&self.db, &ctx.tenant, &s, DEFAULT_LEAD_THRESHOLD).await?;
            let (value, sample_size) = snap.kpi(k);
            points.push(pb::KpiPoint { period_start_time: Some(timestamp(p)), value, sample_size });
        }
        Ok(Response::new(pb::ListKpiSeriesResponse { points }))
    }

    type WatchKpisStream = WatchStream;

    async fn watch_kpis(&self, req: Request<pb::WatchKpisRequest>) -> Result<Response<Self::WatchKpisStream>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        let mut slice = slice(&ctx.tenant, req.scope.as_ref(), "scope.", &mut v);
        let kpis: Vec<KpiKind> = req.kpis.iter().filter_map(|k| kpi_kind(*k)).collect();
        if kpis.is_empty() || kpis.len() > KpiKind::ALL.len() || kpis.len() != req.kpis.len() {
            v.add("kpis", "1 to 22 KPIs, each specified");
        }
        v.finish()?;
        slice.contacts = self.members(&ctx.tenant, req.scope.as_ref(), "scope.segment_filter").await?;
        let follow_end = req.scope.as_ref().and_then(|s| s.end_time.as_ref()).is_none();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let db = self.db.clone();
        let tenant = ctx.tenant.clone();
        let mut changes = crate::watch::subscribe();
        tokio::spawn(async move {
            let mut last: HashMap<KpiKind, f64> = HashMap::new();
            loop {
                let mut s = slice.clone();
                if follow_end {
                    s.end = now_micros() + 1;
                }
                match Snapshot::load(&db, &tenant, &s, DEFAULT_LEAD_THRESHOLD).await {
                    Ok(snap) => {
                        for k in &kpis {
                            let (value, _) = snap.kpi(*k);
                            if last.get(k).is_none_or(|old| (old - value).abs() > f64::EPSILON) {
                                last.insert(*k, value);
                                let msg = pb::WatchKpisResponse {
                                    kpi: kpi_pb(*k) as i32,
                                    value,
                                    update_time: Some(timestamp(now_micros())),
                                };
                                if tx.send(Ok(msg)).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                }
                // Wait for a change of this tenant (or a few seconds), then let the writer commit.
                let wait = async {
                    loop {
                        match changes.recv().await {
                            Ok(t) if t == tenant => return,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                                futures::future::pending::<()>().await;
                            }
                            _ => {}
                        }
                    }
                };
                tokio::select! {
                    () = wait => {}
                    () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                    () = tx.closed() => return,
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
