//! The report's SVG charts: funnel, cohort heatmap, NPS trend, CAC by channel. Inline SVG with
//! a viewBox (scales with the page), no scripts. Every row and point is labelled, with room
//! measured from its text so nothing is cut, and zeros are drawn and written.

use std::fmt::Write as _;

use clm_proto::metrics::v1 as pb;

use super::figures::{count, esc, label, money_per, money_total, month, percent, signed, text_width, thousands, units};

/// Width of every chart's viewBox.
const W: f64 = 720.0;
/// Font sizes (px) of labels and values (the page's CSS uses the same).
const LABEL_PX: f64 = 13.0;
const VALUE_PX: f64 = 12.0;

fn micros(t: Option<&prost_types::Timestamp>) -> i64 {
    t.and_then(clm_platform::convert::micros).unwrap_or_default()
}

/// Room for the widest of `texts` at `px`, plus a gap.
fn column(texts: impl IntoIterator<Item = String>, px: f64) -> f64 {
    texts.into_iter().map(|t| text_width(&t, px)).fold(0.0, f64::max) + 12.0
}

/// The funnel: one bar per stage, its width the share of the first stage; each row names its
/// stage and says how many contacts reached it and what share of the first stage that is.
pub fn funnel(f: &pb::Funnel) -> String {
    let row = 34.0;
    let names: Vec<String> = f.stages.iter().map(|s| label(&s.stage_key, "(unnamed stage)")).collect();
    let values: Vec<String> = f
        .stages
        .iter()
        .map(|s| format!("{} · {}", count(s.reached, "contact", "contacts"), percent(s.conversion_rate_from_first)))
        .collect();
    let left = column(names.iter().cloned(), LABEL_PX);
    let right = column(values.iter().cloned(), VALUE_PX);
    let area = (W - left - right).max(40.0);
    let max = f.stages.iter().map(|s| s.reached).max().unwrap_or(0).max(1) as f64;
    let mut s =
        format!(r#"<svg viewBox="0 0 {W} {:.0}" role="img" aria-label="Funnel">"#, row * f.stages.len() as f64 + 4.0);
    for (i, st) in f.stages.iter().enumerate() {
        let y = i as f64 * row;
        let bw = (st.reached as f64 / max * area).max(1.0);
        let x = left + (area - bw) / 2.0;
        let _ = write!(
            s,
            r##"<text x="0" y="{ty:.1}" class="l">{name}</text><rect x="{x:.1}" y="{y:.1}" width="{bw:.1}" height="{h}" rx="3" fill="#3b6fd8" opacity="{op:.2}"/><text x="{W}" y="{ty:.1}" class="v" text-anchor="end">{value}</text>"##,
            ty = y + 21.0,
            name = esc(&names[i]),
            h = row - 6.0,
            op = 1.0 - i as f64 * 0.1,
            value = esc(&values[i]),
        );
    }
    s.push_str("</svg>");
    s
}

/// The cohort heatmap: a row per month of first purchase (its size in customers), a column per
/// month since; each cell the share of the cohort active that month, 0% included. Months that
/// have not happened yet are left out.
pub fn cohorts(rows: &[pb::CohortRow]) -> String {
    let cols = rows.iter().map(|r| r.cells.len()).max().unwrap_or(0).max(1);
    let names: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} · {}",
                month(micros(r.cohort_start_time.as_ref())),
                count(r.cohort_size, "customer", "customers")
            )
        })
        .collect();
    let left = column(names.iter().cloned(), LABEL_PX);
    let (rh, top) = (24.0, 40.0);
    let cw = ((W - left) / cols as f64).min(52.0);
    let mut s = format!(
        r#"<svg viewBox="0 0 {W} {:.0}" role="img" aria-label="Cohort retention"><text x="{left:.1}" y="12" class="h">months since the month of first purchase →</text>"#,
        top + rh * rows.len() as f64
    );
    for c in 0..cols {
        let _ = write!(s, r#"<text x="{:.1}" y="32" class="h">{c}</text>"#, left + cw * c as f64 + cw / 2.0 - 4.0);
    }
    for (i, r) in rows.iter().enumerate() {
        let y = top + rh * i as f64;
        let _ = write!(s, r#"<text x="0" y="{:.1}" class="l">{}</text>"#, y + 16.0, esc(&names[i]));
        for cell in &r.cells {
            let x = left + cw * f64::from(cell.period_index);
            let v = cell.value.clamp(0.0, 1.0);
            // From #eef3fd (none) to #1f4fb8 (everyone), as hex so any SVG renderer shows it.
            let mix = |a: f64, b: f64| (a + (b - a) * v).round() as u8;
            let fill = format!("#{:02x}{:02x}{:02x}", mix(238.0, 31.0), mix(243.0, 79.0), mix(253.0, 184.0));
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h}" fill="{fill}"><title>{title}</title></rect><text x="{tx:.1}" y="{ty:.1}" class="c{dark}" text-anchor="middle">{p:.0}%</text>"#,
                w = cw - 2.0,
                h = rh - 2.0,
                title = esc(&format!(
                    "{}: {} of {} active in month {}",
                    month(micros(r.cohort_start_time.as_ref())),
                    thousands(cell.count),
                    thousands(r.cohort_size),
                    cell.period_index
                )),
                tx = x + (cw - 2.0) / 2.0,
                ty = y + 16.0,
                dark = if v > 0.5 { " w" } else { "" },
                p = v * 100.0
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// The NPS trend: a point per calendar month with its score and its number of answers; a month
/// without answers says n=0 (no point: an NPS of no answers is not 0).
pub fn nps(points: &[pb::KpiPoint]) -> String {
    let (h, left, right, top, bottom) = (250.0, 44.0, 20.0, 24.0, 58.0);
    let y = |v: f64| top + (100.0 - v.clamp(-100.0, 100.0)) / 200.0 * (h - top - bottom);
    let n = points.len().max(2) as f64 - 1.0;
    let x = |i: usize| left + i as f64 / n * (W - left - right);
    let mut s = format!(r#"<svg viewBox="0 0 {W} {h}" role="img" aria-label="NPS trend">"#);
    for (v, zero) in [(100.0, false), (50.0, false), (0.0, true), (-50.0, false), (-100.0, false)] {
        let _ = write!(
            s,
            r#"<line x1="{left}" x2="{x2}" y1="{yy:.1}" y2="{yy:.1}" stroke="{c}" stroke-dasharray="{d}"/><text x="{tx}" y="{ty:.1}" class="h" text-anchor="end">{label}</text>"#,
            x2 = W - right,
            yy = y(v),
            c = if zero { "#999" } else { "#e3e6ee" },
            d = if zero { "4" } else { "2" },
            tx = left - 6.0,
            ty = y(v) + 4.0,
            label = signed(v),
        );
    }
    let pts: Vec<String> = points
        .iter()
        .enumerate()
        .filter(|(_, p)| p.sample_size > 0)
        .map(|(i, p)| format!("{:.1},{:.1}", x(i), y(p.value)))
        .collect();
    if pts.len() > 1 {
        let _ =
            write!(s, r##"<polyline fill="none" stroke="#1f9d55" stroke-width="2.5" points="{}"/>"##, pts.join(" "));
    }
    for (i, p) in points.iter().enumerate() {
        let at = micros(p.period_start_time.as_ref());
        let name = month(at);
        if p.sample_size > 0 {
            let _ = write!(
                s,
                r##"<circle cx="{cx:.1}" cy="{cy:.1}" r="4.5" fill="#1f9d55"><title>{name}: NPS {v} from {n}</title></circle><text x="{cx:.1}" y="{ty:.1}" class="v" text-anchor="middle">{v}</text>"##,
                cx = x(i),
                cy = y(p.value),
                ty = y(p.value) - 9.0,
                v = signed(p.value),
                n = count(p.sample_size, "answer", "answers"),
            );
        }
        let year = i == 0 || name.starts_with("Jan");
        let _ = write!(
            s,
            r#"<text x="{tx:.1}" y="{y1}" class="h" text-anchor="middle">{m}</text><text x="{tx:.1}" y="{y2}" class="h" text-anchor="middle">{yr}</text><text x="{tx:.1}" y="{y3}" class="{nc}" text-anchor="middle">n={n}</text>"#,
            tx = x(i),
            y1 = h - bottom + 16.0,
            y2 = h - bottom + 29.0,
            y3 = h - bottom + 44.0,
            m = name.get(..3).unwrap_or(""),
            yr = if year { name.get(4..).unwrap_or("") } else { "" },
            nc = if p.sample_size > 0 { "h" } else { "h z" },
            n = thousands(p.sample_size),
        );
    }
    s.push_str("</svg>");
    s
}

/// CAC by channel: a bar per channel, its length the CAC; each row names its channel and says
/// the CAC and how many customers it rests on. A channel whose contacts cost nothing has a CAC
/// of 0 (written, with a hairline bar); one without new customers has no CAC, and says so.
pub fn cac(channels: &[pb::ChannelMetrics], currency: &str) -> String {
    let row = 28.0;
    let names: Vec<String> = channels.iter().map(|c| label(&c.channel, "(no channel)")).collect();
    let values: Vec<String> = channels
        .iter()
        .map(|c| {
            let customers = count(c.customers, "new customer", "new customers");
            if c.customers > 0 {
                format!("{} per customer · {customers}", money_per(c.cac.as_ref(), c.customers, currency, ""))
            } else {
                format!("no CAC: 0 new customers · cost {}", money_total(c.acquisition_cost.as_ref(), currency))
            }
        })
        .collect();
    let left = column(names.iter().cloned(), LABEL_PX);
    let right = column(values.iter().cloned(), VALUE_PX);
    let area = (W - left - right).max(40.0);
    let max = channels.iter().map(|c| units(c.cac.as_ref())).fold(0.0_f64, f64::max).max(1.0);
    let mut s = format!(
        r#"<svg viewBox="0 0 {W} {:.0}" role="img" aria-label="CAC by channel">"#,
        row * channels.len() as f64 + 4.0
    );
    for (i, c) in channels.iter().enumerate() {
        let y = i as f64 * row;
        let bw = if c.customers > 0 { (units(c.cac.as_ref()) / max * area).max(1.5) } else { 0.0 };
        let _ = write!(
            s,
            r##"<text x="0" y="{ty:.1}" class="l">{name}</text><rect x="{left:.1}" y="{y:.1}" width="{bw:.1}" height="{h}" rx="2" fill="#d8833b"><title>{name}: {tip}</title></rect><text x="{vx:.1}" y="{ty:.1}" class="v">{value}</text>"##,
            ty = y + 18.0,
            name = esc(&names[i]),
            h = row - 6.0,
            tip = esc(&format!(
                "acquisition cost {} ÷ {}",
                money_total(c.acquisition_cost.as_ref(), currency),
                count(c.customers, "new customer", "new customers")
            )),
            vx = left + bw + 6.0,
            value = esc(&values[i]),
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use clm_platform::convert::timestamp;

    use super::*;

    /// Each `<text …>`'s estimated left and right ends and its content.
    fn texts(svg: &str) -> Vec<(f64, f64, String)> {
        let mut out = Vec::new();
        for part in svg.split("<text ").skip(1) {
            let attrs = &part[..part.find('>').unwrap()];
            let body = &part[part.find('>').unwrap() + 1..part.find("</text>").unwrap()];
            let x: f64 = attrs.split("x=\"").nth(1).unwrap().split('"').next().unwrap().parse().unwrap();
            let px = if attrs.contains("class=\"l\"") { LABEL_PX } else { VALUE_PX };
            let w = text_width(body, px);
            let from = if attrs.contains("text-anchor=\"end\"") {
                x - w
            } else if attrs.contains("text-anchor=\"middle\"") {
                x - w / 2.0
            } else {
                x
            };
            out.push((from, from + w, body.to_owned()));
        }
        out
    }

    fn view_width(svg: &str) -> f64 {
        svg.split("viewBox=\"0 0 ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap()
    }

    /// Every text starts and ends inside the chart: nothing is cut.
    fn assert_fits(svg: &str) {
        let w = view_width(svg);
        for (from, to, body) in texts(svg) {
            assert!(from >= -0.5, "{body:?} starts at {from:.0}");
            assert!(to <= w + 0.5, "{body:?} ends at {to:.0} > {w}");
        }
    }

    fn channel(key: &str, customers: i64, cac: Option<i64>) -> pb::ChannelMetrics {
        let eur = |units| clm_proto::common::v1::Money { currency_code: "EUR".into(), units, nanos: 0 };
        pb::ChannelMetrics {
            channel: key.into(),
            customers,
            cac: cac.map(eur),
            acquisition_cost: cac.map(|c| eur(c * customers.max(1))),
            ..Default::default()
        }
    }

    #[test]
    fn cac_rows_are_labelled_and_zero_is_written() {
        let svg = cac(
            &[
                channel("organic_search", 40, None),
                channel("paid_search", 12, Some(254_123)),
                channel("", 3, Some(10)),
                channel("event", 0, Some(800)),
            ],
            "EUR",
        );
        assert_fits(&svg);
        for name in ["Organic search", "Paid search", "(no channel)", "Event"] {
            assert!(svg.contains(&format!(">{name}</text>")), "{name} labelled");
        }
        assert!(svg.contains("0.00 EUR per customer · 40 new customers"), "{svg}");
        assert!(svg.contains("254,123.00 EUR per customer · 12 new customers"));
        assert!(svg.contains("no CAC: 0 new customers · cost 800.00 EUR"));
    }

    #[test]
    fn funnel_rows_are_labelled_with_counts_and_shares() {
        let stage = |key: &str, reached, share| pb::FunnelStage {
            stage_key: key.into(),
            reached,
            conversion_rate_from_first: share,
            ..Default::default()
        };
        let f = pb::Funnel {
            stages: vec![stage("awareness", 12_000, 1.0), stage("a_rather_long_custom_stage_key", 0, 0.0)],
            overall_conversion_rate: 0.0,
        };
        let svg = funnel(&f);
        assert_fits(&svg);
        assert!(svg.contains(">Awareness</text>") && svg.contains("12,000 contacts · 100.0%"));
        assert!(svg.contains(">A rather long custom stage key</text>") && svg.contains("0 contacts · 0.0%"));
    }

    #[test]
    fn nps_months_without_answers_say_n0_and_have_no_point() {
        let month_us = 31 * 86_400_000_000;
        let points: Vec<pb::KpiPoint> = (0..13)
            .map(|i| pb::KpiPoint {
                period_start_time: Some(timestamp(1_733_011_200_000_000 + i * month_us)),
                value: if i % 3 == 0 { 40.0 - i as f64 } else { 0.0 },
                sample_size: if i % 3 == 0 { 25 } else { 0 },
            })
            .collect();
        let svg = nps(&points);
        assert_fits(&svg);
        assert_eq!(svg.matches("<circle").count(), 5, "a point per month with answers");
        assert_eq!(svg.matches(">n=0</text>").count(), 8, "the others say n=0");
        assert_eq!(svg.matches(">n=25</text>").count(), 5);
        assert!(svg.contains(">+40</text>") && svg.contains("<polyline"));
        assert!(svg.contains(">Dec</text>") && svg.contains(">2024</text>"), "month and year");
        // One month with answers: a point, no line.
        let one = nps(&points[..1]);
        assert!(one.contains("<circle") && !one.contains("<polyline"));
    }

    #[test]
    fn cohort_cells_show_zero() {
        let rows = vec![pb::CohortRow {
            cohort_start_time: Some(timestamp(1_733_011_200_000_000)),
            cohort_size: 1200,
            cells: vec![
                pb::CohortCell { period_index: 0, value: 1.0, count: 1200, revenue: None },
                pb::CohortCell { period_index: 1, value: 0.0, count: 0, revenue: None },
            ],
        }];
        let svg = cohorts(&rows);
        assert_fits(&svg);
        assert!(svg.contains(">Dec 2024 · 1,200 customers</text>"));
        assert!(svg.contains(">100%</text>") && svg.contains(">0%</text>"));
        assert!(svg.contains("0 of 1,200 active in month 1"));
    }
}
