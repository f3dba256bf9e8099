//! `clm report`: one self-contained HTML page (inline CSS and SVG, no scripts, no network) with
//! the tenant's funnel, cohort retention heatmap, NPS trend, CAC by channel, headline KPIs and
//! goal scorecard, read from the metrics service of a running CLM. Every figure says its unit
//! and the range it covers; goals are judged against the elapsed part of their period
//! (`figures` holds the rules, `charts` the SVG).

mod charts;
mod figures;

use std::fmt::Write as _;

use clm_platform::convert::{micros, timestamp};
use clm_proto::metrics::v1 as pb;
use clm_proto::metrics::v1::metrics_service_client::MetricsServiceClient;

use crate::client::Authed;

const DAY: i64 = 86_400_000_000;

/// Everything the page shows.
#[derive(Debug, Default)]
pub struct Data {
    pub tenant: String,
    pub start: i64,
    pub end: i64,
    pub funnel: pb::Funnel,
    pub stage: pb::GetStageMetricsResponse,
    pub cohorts: Vec<pb::CohortRow>,
    pub nps: Vec<pb::KpiPoint>,
    /// Monthly CSAT over the range: only its answer counts are shown (how many the CSAT rests on).
    pub csat: Vec<pb::KpiPoint>,
    pub channels: Vec<pb::ChannelMetrics>,
    pub goals: Vec<pb::GoalStatus>,
}

pub async fn fetch(ch: Authed, tenant: &str, days: i64) -> anyhow::Result<Data> {
    let mut m = MetricsServiceClient::new(ch);
    let end = chrono::Utc::now().timestamp_micros();
    let start = end - days * DAY;
    let scope =
        pb::MetricsScope { start_time: Some(timestamp(start)), end_time: Some(timestamp(end)), ..Default::default() };
    let mut series = async |kpi: pb::Kpi| -> anyhow::Result<Vec<pb::KpiPoint>> {
        Ok(m.list_kpi_series(pb::ListKpiSeriesRequest {
            kpi: kpi as i32,
            scope: Some(scope.clone()),
            granularity: pb::Granularity::Month as i32,
        })
        .await?
        .into_inner()
        .points)
    };
    let nps = series(pb::Kpi::Nps).await?;
    let csat = series(pb::Kpi::Csat).await?;
    Ok(Data {
        tenant: tenant.to_owned(),
        start,
        end,
        funnel: m
            .get_funnel(pb::GetFunnelRequest { scope: Some(scope.clone()), conversion_window: None })
            .await?
            .into_inner()
            .funnel
            .unwrap_or_default(),
        stage: m
            .get_stage_metrics(pb::GetStageMetricsRequest { scope: Some(scope.clone()), lead_quality_threshold: 0 })
            .await?
            .into_inner(),
        cohorts: m
            .get_cohort_retention(pb::GetCohortRetentionRequest {
                scope: Some(scope.clone()),
                granularity: pb::Granularity::Month as i32,
                periods: 12,
                measure: pb::CohortMeasure::Active as i32,
            })
            .await?
            .into_inner()
            .rows,
        nps,
        csat,
        channels: m
            .get_channel_metrics(pb::GetChannelMetricsRequest { scope: Some(scope), by_campaign: false })
            .await?
            .into_inner()
            .channels,
        // Judged as of the report's end, the instant every "so far" on the page refers to.
        goals: m.get_scorecard(pb::GetScorecardRequest { as_of_time: Some(timestamp(end)) }).await?.into_inner().goals,
    })
}

/// One headline figure: what it is, its value with its unit, and what it covers.
struct Tile {
    name: &'static str,
    value: String,
    covers: String,
}

fn tiles(d: &Data, currency: &str) -> Vec<Tile> {
    let a = d.stage.acquisition.clone().unwrap_or_default();
    let c = d.stage.conversion.clone().unwrap_or_default();
    let r = d.stage.retention.clone().unwrap_or_default();
    let l = d.stage.loyalty.clone().unwrap_or_default();
    let range = figures::range(d.start, d.end);
    let to_end = format!("to {}", figures::day(d.end - 1));
    let answers = |points: &[pb::KpiPoint]| points.iter().map(|p| p.sample_size).sum::<i64>();
    let (nps_n, csat_n) = (answers(&d.nps), answers(&d.csat));
    let answers_text = |n| figures::count(n, "answer", "answers");
    let has_cac = c.cac.as_ref().is_some_and(|m| figures::units(Some(m)) > 0.0);
    let tile = |name, value: String, covers: String| Tile { name, value, covers };
    vec![
        tile("New contacts", figures::count(a.new_contacts, "contact", "contacts"), format!("acquired {range}")),
        tile("Leads", figures::count(a.leads, "lead", "leads"), format!("past the entry stage {range}")),
        tile(
            "Cost per lead",
            figures::money_per(a.cost_per_lead.as_ref(), a.leads, currency, "no leads"),
            format!("acquisition cost ÷ leads, {range}"),
        ),
        tile(
            "New customers",
            figures::count(c.new_customers, "customer", "customers"),
            format!("first became customers {range}"),
        ),
        tile("Close rate", figures::percent(c.close_rate), format!("of the leads of {range} became customers")),
        tile("Revenue", figures::money_total(c.revenue.as_ref(), currency), format!("purchases {range}")),
        tile(
            "CAC",
            figures::money_per(c.cac.as_ref(), c.new_customers, currency, "no new customers"),
            format!("per new customer: acquisition cost ÷ new customers, {range}"),
        ),
        tile(
            "Repeat purchase rate",
            figures::percent(r.repeat_purchase_rate),
            format!("of customers bought 2+ times, {to_end}"),
        ),
        tile("NPS", figures::nps(r.nps, nps_n), format!("−100 to +100, from {}, {range}", answers_text(nps_n))),
        tile(
            "CSAT",
            if csat_n > 0 { format!("{:.1}%", r.csat) } else { "no answers".to_owned() },
            format!("answers of 4–5 out of 5, from {}, {range}", answers_text(csat_n)),
        ),
        tile(
            "Predicted CLV",
            figures::money_per(l.predicted_clv.as_ref(), i64::from(c.revenue.is_some()), currency, "no purchases"),
            format!("per customer, from the year {to_end}"),
        ),
        tile(
            "CLV : CAC",
            if has_cac { format!("{:.1}×", l.clv_to_cac_ratio) } else { "no CAC".to_owned() },
            format!("predicted CLV ÷ CAC, {range}"),
        ),
    ]
}

const STYLE: &str = "
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1040px;color:#1d2330;padding:0 1rem}
h1{margin:0 0 .2rem} .sub{color:#667} section{margin:2rem 0} h2{font-size:1.15rem;border-bottom:1px solid #e3e6ee;padding-bottom:.3rem;margin-bottom:.3rem}
p.what{color:#556;margin:.2rem 0 .8rem;font-size:.9rem}
.tiles{display:grid;grid-template-columns:repeat(4,1fr);gap:.6rem} .tile{background:#f4f6fb;border-radius:8px;padding:.7rem .9rem}
.tile b{display:block;font-size:1.3rem;margin:.1rem 0} .tile span{color:#445;font-size:.85rem} .tile small{color:#778;font-size:.75rem;display:block}
svg{width:100%;height:auto} svg .l{font-size:13px;fill:#1d2330} svg .v{font-size:12px;fill:#334} svg .h{font-size:11px;fill:#778} svg .z{fill:#b33}
svg .c{font-size:11px;fill:#223} svg .c.w{fill:#fff}
table{border-collapse:collapse;width:100%;font-size:.92rem} td,th{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #eef;vertical-align:top}
th{font-weight:600;color:#445} td.n,td.ok,td.risk,td.off,td.none{white-space:nowrap}
.ok{color:#1f9d55;font-weight:600} .risk{color:#c98a00;font-weight:600} .off{color:#c0392b;font-weight:600} .none{color:#778}
.legend{color:#556;font-size:.85rem;margin-top:.6rem}
";

/// The page.
pub fn render(d: &Data) -> String {
    use figures::esc;
    let s = &d.stage;
    let (a, c, l) = (
        s.acquisition.clone().unwrap_or_default(),
        s.conversion.clone().unwrap_or_default(),
        s.loyalty.clone().unwrap_or_default(),
    );
    let currency = figures::reporting_currency(
        [
            c.revenue.as_ref(),
            c.cac.as_ref(),
            a.acquisition_cost.as_ref(),
            a.cost_per_lead.as_ref(),
            l.predicted_clv.as_ref(),
        ]
        .into_iter()
        .chain(d.channels.iter().flat_map(|ch| [ch.acquisition_cost.as_ref(), ch.cac.as_ref()])),
    );
    let range = figures::range(d.start, d.end);
    let days = (d.end - d.start + DAY / 2) / DAY;
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>CLM report — {tenant}</title>
<style>{STYLE}</style></head><body>
<h1>Customer lifecycle report</h1><div class="sub">Tenant <b>{tenant}</b> · {range} (the last {days} days) · money in {cur} · times in UTC · generated by <code>clm report</code></div>
<section><h2>Headline KPIs</h2><div class="tiles">"#,
        tenant = esc(&d.tenant),
        cur = if currency.is_empty() { "the reporting currency".to_owned() } else { esc(&currency) },
    );
    for t in tiles(d, &currency) {
        let _ = write!(
            html,
            r#"<div class="tile"><span>{}</span><b>{}</b><small>{}</small></div>"#,
            esc(t.name),
            esc(&t.value),
            esc(&t.covers)
        );
    }
    html.push_str("</div></section>");
    let _ = write!(
        html,
        r#"<section><h2>Funnel</h2><p class="what">Contacts who entered the first stage {range}, and how many of them reached each stage within 90 days (contacts · share of the first stage). Overall conversion: {}.</p>{}</section>"#,
        figures::percent(d.funnel.overall_conversion_rate),
        charts::funnel(&d.funnel),
    );
    let _ = write!(
        html,
        r#"<section><h2>Cohort retention</h2><p class="what">Customers grouped by the calendar month of their first purchase ({range}); each cell is the share of the cohort active in that month since (%, 0% included; months still to come are empty).</p>{}</section>"#,
        charts::cohorts(&d.cohorts),
    );
    let nps_note = if d.nps.iter().any(|p| p.sample_size > 0) { "" } else { " No NPS answers in the range yet." };
    let _ = write!(
        html,
        r#"<section><h2>NPS by month</h2><p class="what">Net promoter score of each calendar month's answers, −100 to +100 (% promoters 9–10 − % detractors 0–6), {range}; n = answers in the month.{}</p>{}</section>"#,
        esc(nps_note),
        charts::nps(&d.nps),
    );
    let _ = write!(
        html,
        r#"<section><h2>CAC by channel</h2><p class="what">Customer acquisition cost per acquisition channel, in {} per new customer: the acquisition cost of the channel's contacts who became customers {range} ÷ their number.</p>{}</section>"#,
        if currency.is_empty() { "the reporting currency".to_owned() } else { esc(&currency) },
        charts::cac(&d.channels, &currency),
    );
    html.push_str(&goals(d, &currency));
    let _ = write!(
        html,
        r#"<p class="sub">Generated {} UTC.</p></body></html>"#,
        chrono::DateTime::from_timestamp_micros(d.end)
            .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_default()
    );
    html.push('\n');
    html
}

/// The goal scorecard: each goal's period and how far into it the report is, its value so far,
/// the value expected by now, the target for the whole period and its health.
fn goals(d: &Data, currency: &str) -> String {
    use figures::esc;
    let mut html = String::from(
        "<section><h2>Goals</h2><table><tr><th>Goal</th><th>Period</th><th>So far</th><th>Expected by now</th><th>Target for the period</th><th>Health</th></tr>",
    );
    if d.goals.is_empty() {
        html.push_str(r#"<tr><td colspan="6" class="none">No goals set (CreateGoal adds one).</td></tr>"#);
    }
    for g in &d.goals {
        let goal = g.goal.clone().unwrap_or_default();
        let kpi = pb::Kpi::try_from(goal.kpi).unwrap_or_default();
        let direction = pb::GoalDirection::try_from(goal.direction).unwrap_or_default();
        let period = pb::Granularity::try_from(goal.period).unwrap_or_default();
        let start = g.period_start_time.as_ref().and_then(micros).unwrap_or(d.end);
        let end = g.period_end_time.as_ref().and_then(micros).unwrap_or(d.end);
        let elapsed = figures::elapsed_fraction(start, end, d.end);
        let expected = figures::expected_to_date(kpi, direction, g.target, elapsed);
        let at_most = direction == pb::GoalDirection::AtMost
            || (direction == pb::GoalDirection::Unspecified
                && matches!(kpi, pb::Kpi::CostPerLead | pb::Kpi::Cac | pb::Kpi::ChurnRate | pb::Kpi::TimeToCloseDays));
        let (health, class) = figures::health(g.health);
        let value = |v| esc(&figures::kpi_value(kpi, v, currency));
        let _ = write!(
            html,
            r#"<tr><td>{name}</td><td>{period}</td><td class="n">{actual}</td><td class="n">{bound} {expected}{pro}</td><td class="n">{target}</td><td class="{class}">{health}</td></tr>"#,
            name = esc(&goal.display_name),
            period = esc(&figures::goal_period(period, start, end, d.end)),
            actual = value(g.actual),
            bound = if at_most { "at most" } else { "at least" },
            expected = value(expected),
            pro = if figures::accumulates(kpi) && !at_most {
                format!(r#" <small class="none">({:.0}% of the target)</small>"#, elapsed * 100.0)
            } else {
                String::new()
            },
            target = value(g.target),
        );
    }
    html.push_str(
        r#"</table><p class="legend">Each goal is judged over the period that contains the report's end, against the part of it that has elapsed: counts and sums (new contacts, leads, new customers, revenue) grow through the period, so their value so far is compared with the target <b>pro-rated by the elapsed share of the period</b> (target × elapsed ÷ period length, the “expected by now” column); rates, averages and scores are compared with the target itself. <span class="ok">On track</span>: expectation met; <span class="risk">at risk</span>: missed by at most the goal's tolerance (10% unless set); <span class="off">off track</span>: missed by more. Health is the metrics service's scorecard, which applies the same rule.</p></section>"#,
    );
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur(units: i64) -> Option<clm_proto::common::v1::Money> {
        Some(clm_proto::common::v1::Money { currency_code: "EUR".into(), units, nanos: 0 })
    }

    fn sample() -> Data {
        let month = 31 * DAY;
        let start = 1_733_011_200_000_000; // 1 Dec 2024
        let end = start + 365 * DAY;
        Data {
            tenant: "<acme>".into(),
            start,
            end,
            funnel: pb::Funnel {
                stages: vec![
                    pb::FunnelStage {
                        stage_key: "awareness".into(),
                        reached: 10,
                        conversion_rate_from_first: 1.0,
                        ..Default::default()
                    },
                    pb::FunnelStage {
                        stage_key: "conversion".into(),
                        reached: 3,
                        conversion_rate_from_first: 0.3,
                        ..Default::default()
                    },
                ],
                overall_conversion_rate: 0.3,
            },
            stage: pb::GetStageMetricsResponse {
                acquisition: Some(pb::AcquisitionMetrics { new_contacts: 10, leads: 0, ..Default::default() }),
                conversion: Some(pb::ConversionMetrics {
                    new_customers: 3,
                    close_rate: 0.0,
                    revenue: eur(900),
                    cac: eur(120),
                    ..Default::default()
                }),
                ..Default::default()
            },
            cohorts: vec![pb::CohortRow {
                cohort_start_time: Some(timestamp(start)),
                cohort_size: 2,
                cells: vec![pb::CohortCell { period_index: 0, value: 1.0, count: 2, revenue: None }],
            }],
            nps: (0..12)
                .map(|i| pb::KpiPoint {
                    period_start_time: Some(timestamp(start + i * month)),
                    value: 40.0,
                    sample_size: i64::from(i == 11) * 5,
                })
                .collect(),
            channels: vec![
                pb::ChannelMetrics { channel: "paid_search".into(), customers: 1, cac: eur(200), ..Default::default() },
                pb::ChannelMetrics { channel: "organic_search".into(), customers: 2, ..Default::default() },
            ],
            goals: vec![pb::GoalStatus {
                goal: Some(pb::Goal {
                    display_name: "New contacts per month".into(),
                    kpi: pb::Kpi::NewContacts as i32,
                    target: 100.0,
                    direction: pb::GoalDirection::AtLeast as i32,
                    period: pb::Granularity::Month as i32,
                    ..Default::default()
                }),
                actual: 20.0,
                target: 100.0,
                health: pb::GoalHealth::OnTrack as i32,
                period_start_time: Some(timestamp(end - 10 * DAY)),
                period_end_time: Some(timestamp(end + 30 * DAY)),
                ..Default::default()
            }],
            ..Data::default()
        }
    }

    #[test]
    fn renders_every_chart_and_escapes_text() {
        let page = render(&sample());
        assert!(page.contains("&lt;acme&gt;") && !page.contains("<acme>"));
        for label in ["Funnel", "Cohort retention", "NPS trend", "CAC by channel"] {
            assert!(page.contains(&format!(r#"aria-label="{label}""#)), "{label}");
        }
        assert!(page.contains(">Awareness</text>") && page.contains("10 contacts · 100.0%"));
        assert!(page.contains(">Paid search</text>") && page.contains(">Organic search</text>"));
        assert!(!page.contains("<script"), "self-contained, no scripts");
    }

    #[test]
    fn every_figure_has_its_unit_and_period_and_zero_is_shown() {
        let d = sample();
        let range = figures::range(d.start, d.end);
        let page = render(&d);
        assert!(page.contains("1 Dec 2024 – 30 Nov 2025 (the last 365 days) · money in EUR"), "header range");
        let tiles = tiles(&d, "EUR");
        assert_eq!(tiles.len(), 12);
        for t in &tiles {
            assert!(!t.value.trim().is_empty(), "{} has a value", t.name);
            assert!(t.covers.contains(&range) || t.covers.contains("to 30 Nov 2025"), "{}: {}", t.name, t.covers);
        }
        let tile = |name: &str| tiles.iter().find(|t| t.name == name).map(|t| t.value.clone()).unwrap();
        assert_eq!(tile("New contacts"), "10 contacts");
        assert_eq!(tile("Leads"), "0 leads", "zero is written");
        assert_eq!(tile("Cost per lead"), "no leads", "an undefined quotient is said, not blank");
        assert_eq!(tile("Close rate"), "0.0%");
        assert_eq!(tile("Revenue"), "900.00 EUR");
        assert_eq!(tile("CAC"), "120.00 EUR");
        assert_eq!(tile("NPS"), "0", "NPS 0 of 5 answers is a real 0");
        assert_eq!(tile("CSAT"), "no answers");
        // A channel whose contacts cost nothing has a CAC of 0, written.
        assert!(page.contains("0.00 EUR per customer · 2 new customers"));
        assert!(page.contains(">n=0</text>") && page.contains(">n=5</text>"));
    }

    #[test]
    fn goals_show_their_period_and_the_pro_rated_expectation() {
        let page = render(&sample());
        // 10 of 40 days elapsed: 25 of the 100 contacts are expected by now.
        assert!(page.contains("day 11 of 40 (25% elapsed)"), "{page}");
        assert!(page.contains("at least 25 contacts"));
        assert!(page.contains("(25% of the target)"));
        assert!(
            page.contains("<td class=\"n\">20 contacts</td>") && page.contains("<td class=\"n\">100 contacts</td>")
        );
        assert!(page.contains(r#"<td class="ok">on track</td>"#));
        assert!(page.contains("pro-rated by the elapsed share of the period"), "the legend says which rule");
        let mut none = sample();
        none.goals.clear();
        assert!(render(&none).contains("No goals set"));
    }
}
