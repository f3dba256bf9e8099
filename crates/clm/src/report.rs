//! `clm report`: one self-contained HTML page (inline CSS and SVG, no scripts, no network) with
//! the tenant's funnel, cohort retention heatmap, NPS trend, CAC by channel, headline KPIs and
//! goal scorecard, read from the metrics service of a running CLM.

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
    pub channels: Vec<pb::ChannelMetrics>,
    pub goals: Vec<pb::GoalStatus>,
}

pub async fn fetch(ch: Authed, tenant: &str, days: i64) -> anyhow::Result<Data> {
    let mut m = MetricsServiceClient::new(ch);
    let end = chrono::Utc::now().timestamp_micros();
    let start = end - days * DAY;
    let scope =
        pb::MetricsScope { start_time: Some(timestamp(start)), end_time: Some(timestamp(end)), ..Default::default() };
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
        nps: m
            .list_kpi_series(pb::ListKpiSeriesRequest {
                kpi: pb::Kpi::Nps as i32,
                scope: Some(scope.clone()),
                granularity: pb::Granularity::Month as i32,
            })
            .await?
            .into_inner()
            .points,
        channels: m
            .get_channel_metrics(pb::GetChannelMetricsRequest { scope: Some(scope), by_campaign: false })
            .await?
            .into_inner()
            .channels,
        goals: m.get_scorecard(pb::GetScorecardRequest { as_of_time: None }).await?.into_inner().goals,
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn units(m: Option<&clm_proto::common::v1::Money>) -> f64 {
    m.map_or(0.0, |m| m.units as f64 + f64::from(m.nanos) / 1e9)
}

fn money(m: Option<&clm_proto::common::v1::Money>) -> String {
    match m {
        Some(x) if !x.currency_code.is_empty() => format!("{:.2} {}", units(m), esc(&x.currency_code)),
        _ => "—".into(),
    }
}

fn date(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(micros)
        .and_then(chrono::DateTime::from_timestamp_micros)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

fn month(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(micros)
        .and_then(chrono::DateTime::from_timestamp_micros)
        .map(|d| d.format("%b %Y").to_string())
        .unwrap_or_default()
}

fn funnel_svg(f: &pb::Funnel) -> String {
    let max = f.stages.iter().map(|s| s.reached).max().unwrap_or(0).max(1) as f64;
    let (w, row) = (640.0, 34.0);
    let mut s =
        format!(r#"<svg viewBox="0 0 {w} {}" role="img" aria-label="Funnel">"#, row * f.stages.len() as f64 + 4.0);
    for (i, st) in f.stages.iter().enumerate() {
        let y = i as f64 * row;
        let bw = (st.reached as f64 / max) * (w - 260.0);
        let x = 130.0 + (w - 260.0 - bw) / 2.0;
        let _ = write!(
            s,
            r##"<text x="0" y="{ty}" class="l">{name}</text><rect x="{x:.1}" y="{y:.1}" width="{bw:.1}" height="{h}" rx="3" fill="#3b6fd8" opacity="{op:.2}"/><text x="{vx}" y="{ty}" class="v">{n} · {pct:.0}%</text>"##,
            ty = y + 21.0,
            name = esc(&st.stage_key),
            h = row - 6.0,
            op = 1.0 - i as f64 * 0.1,
            vx = w - 120.0,
            n = st.reached,
            pct = st.conversion_rate_from_first * 100.0,
        );
    }
    s.push_str("</svg>");
    s
}

fn cohort_svg(rows: &[pb::CohortRow]) -> String {
    let cols = rows.iter().map(|r| r.cells.len()).max().unwrap_or(0).max(1);
    let (cw, rh, left) = (44.0, 24.0, 150.0);
    let mut s = format!(
        r#"<svg viewBox="0 0 {} {}" role="img" aria-label="Cohort retention">"#,
        left + cw * cols as f64,
        rh * (rows.len() + 1) as f64
    );
    for c in 0..cols {
        let _ = write!(s, r#"<text x="{:.1}" y="16" class="h">M{c}</text>"#, left + cw * c as f64 + 12.0);
    }
    for (i, r) in rows.iter().enumerate() {
        let y = rh * (i + 1) as f64;
        let _ = write!(
            s,
            r#"<text x="0" y="{:.1}" class="l">{} ({})</text>"#,
            y + 16.0,
            month(r.cohort_start_time.as_ref()),
            r.cohort_size
        );
        for cell in &r.cells {
            let x = left + cw * f64::from(cell.period_index);
            let v = cell.value.clamp(0.0, 1.0);
            // From #eef3fd (none) to #1f4fb8 (everyone), as hex so any SVG renderer shows it.
            let mix = |a: f64, b: f64| (a + (b - a) * v).round() as u8;
            let fill = format!("#{:02x}{:02x}{:02x}", mix(238.0, 31.0), mix(243.0, 79.0), mix(253.0, 184.0));
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{w}" height="{h}" fill="{fill}"/><text x="{tx:.1}" y="{ty:.1}" class="c{dark}">{p:.0}%</text>"#,
                w = cw - 2.0,
                h = rh - 2.0,
                tx = x + 8.0,
                ty = y + 16.0,
                dark = if v > 0.5 { " w" } else { "" },
                p = v * 100.0
            );
        }
    }
    s.push_str("</svg>");
    s
}

fn nps_svg(points: &[pb::KpiPoint]) -> String {
    let (w, h, pad) = (640.0, 220.0, 34.0);
    let y = |v: f64| pad + (100.0 - v) / 200.0 * (h - 2.0 * pad);
    let n = points.len().max(2) as f64 - 1.0;
    let x = |i: usize| pad + i as f64 / n * (w - 2.0 * pad);
    let mut s = format!(
        r##"<svg viewBox="0 0 {w} {h}" role="img" aria-label="NPS trend"><line x1="{pad}" x2="{}" y1="{z:.1}" y2="{z:.1}" stroke="#bbb" stroke-dasharray="4"/>"##,
        w - pad,
        z = y(0.0)
    );
    let _ = write!(
        s,
        r#"<text x="0" y="{:.1}" class="h">+100</text><text x="0" y="{:.1}" class="h">0</text><text x="0" y="{:.1}" class="h">−100</text>"#,
        y(100.0) + 4.0,
        y(0.0) + 4.0,
        y(-100.0) + 4.0
    );
    let pts: Vec<String> = points
        .iter()
        .enumerate()
        .filter(|(_, p)| p.sample_size > 0)
        .map(|(i, p)| format!("{:.1},{:.1}", x(i), y(p.value)))
        .collect();
    let _ = write!(s, r##"<polyline fill="none" stroke="#1f9d55" stroke-width="2.5" points="{}"/>"##, pts.join(" "));
    for (i, p) in points.iter().enumerate() {
        if p.sample_size > 0 {
            let _ = write!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="#1f9d55"><title>{}: NPS {:.0} (n={})</title></circle>"##,
                x(i),
                y(p.value),
                month(p.period_start_time.as_ref()),
                p.value,
                p.sample_size
            );
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{}" class="h">{}</text>"#,
            x(i) - 14.0,
            h - 6.0,
            month(p.period_start_time.as_ref()).get(..3).unwrap_or("")
        );
    }
    s.push_str("</svg>");
    s
}

fn cac_svg(channels: &[pb::ChannelMetrics]) -> String {
    let max = channels.iter().map(|c| units(c.cac.as_ref())).fold(0.0_f64, f64::max).max(1.0);
    let (w, row) = (640.0, 28.0);
    let mut s = format!(
        r#"<svg viewBox="0 0 {w} {}" role="img" aria-label="CAC by channel">"#,
        row * channels.len() as f64 + 4.0
    );
    for (i, c) in channels.iter().enumerate() {
        let y = i as f64 * row;
        let v = units(c.cac.as_ref());
        let bw = v / max * (w - 280.0);
        let _ = write!(
            s,
            r##"<text x="0" y="{ty:.1}" class="l">{name}</text><rect x="130" y="{y:.1}" width="{bw:.1}" height="{h}" rx="3" fill="#d8833b"/><text x="{vx:.1}" y="{ty:.1}" class="v">{cac} · {cust} customers</text>"##,
            ty = y + 18.0,
            name = esc(&c.channel),
            h = row - 6.0,
            vx = 136.0 + bw,
            cac = money(c.cac.as_ref()),
            cust = c.customers,
        );
    }
    s.push_str("</svg>");
    s
}

/// The page.
pub fn render(d: &Data) -> String {
    let a = d.stage.acquisition.clone().unwrap_or_default();
    let c = d.stage.conversion.clone().unwrap_or_default();
    let r = d.stage.retention.clone().unwrap_or_default();
    let l = d.stage.loyalty.clone().unwrap_or_default();
    let tiles = [
        ("New contacts", a.new_contacts.to_string()),
        ("Leads", a.leads.to_string()),
        ("Cost per lead", money(a.cost_per_lead.as_ref())),
        ("New customers", c.new_customers.to_string()),
        ("Close rate", format!("{:.1}%", c.close_rate * 100.0)),
        ("Revenue", money(c.revenue.as_ref())),
        ("CAC", money(c.cac.as_ref())),
        ("Repeat purchase rate", format!("{:.1}%", r.repeat_purchase_rate * 100.0)),
        ("NPS", format!("{:.0}", r.nps)),
        ("CSAT", format!("{:.0}%", r.csat)),
        ("Predicted CLV", money(l.predicted_clv.as_ref())),
        ("CLV : CAC", format!("{:.1}", l.clv_to_cac_ratio)),
    ];
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>CLM report — {tenant}</title>
<style>
body{{font:15px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:980px;color:#1d2330;padding:0 1rem}}
h1{{margin:0 0 .2rem}} .sub{{color:#667}} section{{margin:2rem 0}} h2{{font-size:1.15rem;border-bottom:1px solid #e3e6ee;padding-bottom:.3rem}}
.tiles{{display:grid;grid-template-columns:repeat(4,1fr);gap:.6rem}} .tile{{background:#f4f6fb;border-radius:8px;padding:.7rem .9rem}}
.tile b{{display:block;font-size:1.35rem}} .tile span{{color:#667;font-size:.85rem}}
svg{{width:100%;height:auto}} svg .l{{font-size:13px;fill:#1d2330}} svg .v{{font-size:12px;fill:#445}} svg .h{{font-size:11px;fill:#778}}
svg .c{{font-size:11px;fill:#223}} svg .c.w{{fill:#fff}}
table{{border-collapse:collapse;width:100%}} td,th{{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #eef}}
.ON_TRACK{{color:#1f9d55}} .AT_RISK{{color:#c98a00}} .OFF_TRACK{{color:#c0392b}}
</style></head><body>
<h1>Customer lifecycle report</h1><div class="sub">Tenant <b>{tenant}</b> · {start} – {end} · generated by <code>clm report</code></div>
<section><h2>Headline KPIs</h2><div class="tiles">"#,
        tenant = esc(&d.tenant),
        start = date(Some(&timestamp(d.start))),
        end = date(Some(&timestamp(d.end))),
    );
    for (name, value) in tiles {
        let _ = write!(html, r#"<div class="tile"><span>{}</span><b>{}</b></div>"#, esc(name), value);
    }
    html.push_str("</div></section>");
    let _ = write!(
        html,
        r#"<section><h2>Funnel (contacts entering in the range; reached within 90 days)</h2>{}<p class="sub">Overall conversion {:.1}%.</p></section>"#,
        funnel_svg(&d.funnel),
        d.funnel.overall_conversion_rate * 100.0
    );
    let _ = write!(
        html,
        "<section><h2>Cohort retention (share active by month since first purchase)</h2>{}</section>",
        cohort_svg(&d.cohorts)
    );
    let _ = write!(html, "<section><h2>NPS by month</h2>{}</section>", nps_svg(&d.nps));
    let _ = write!(html, "<section><h2>CAC by channel</h2>{}</section>", cac_svg(&d.channels));
    html.push_str("<section><h2>Goals</h2><table><tr><th>Goal</th><th>Actual</th><th>Target</th><th>Health</th></tr>");
    for g in &d.goals {
        let health = pb::GoalHealth::try_from(g.health)
            .unwrap_or_default()
            .as_str_name()
            .trim_start_matches("GOAL_HEALTH_")
            .to_owned();
        let _ = write!(
            html,
            r#"<tr><td>{}</td><td>{:.2}</td><td>{:.2}</td><td class="{health}">{}</td></tr>"#,
            esc(&g.goal.as_ref().map(|x| x.display_name.clone()).unwrap_or_default()),
            g.actual,
            g.target,
            health.replace('_', " ").to_lowercase()
        );
    }
    html.push_str("</table></section></body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_chart_and_escapes_text() {
        let d = Data {
            tenant: "<acme>".into(),
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
            cohorts: vec![pb::CohortRow {
                cohort_start_time: Some(timestamp(0)),
                cohort_size: 2,
                cells: vec![pb::CohortCell { period_index: 0, value: 1.0, count: 2, revenue: None }],
            }],
            nps: vec![pb::KpiPoint { period_start_time: Some(timestamp(0)), value: 40.0, sample_size: 5 }],
            channels: vec![pb::ChannelMetrics { channel: "paid_search".into(), customers: 1, ..Default::default() }],
            ..Data::default()
        };
        let page = render(&d);
        assert!(page.contains("&lt;acme&gt;") && !page.contains("<acme>"));
        for label in ["Funnel", "Cohort retention", "NPS trend", "CAC by channel"] {
            assert!(page.contains(&format!(r#"aria-label="{label}""#)), "{label}");
        }
        assert!(page.contains("awareness") && page.contains("100%") && page.contains("paid_search"));
        assert!(!page.contains("<script"), "self-contained, no scripts");
    }
}
