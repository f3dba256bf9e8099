//! The definitions checked on A alone: rates in [0, 1], money never summed across currencies,
//! and KPIs computed by hand from the generated data (`Hand`'s sums over purchases, costs and
//! new contacts) and from A's stage histories (`History`: leads, customers, churn, referrals),
//! compared with what the metrics service answers over every scope and calendar month.

use std::collections::{BTreeMap, BTreeSet};

use clm_platform::convert::timestamp;
use clm_proto::lifecycle::v1 as lpb;
use clm_proto::metrics::v1 as pb;

use super::env::Fed;
use super::plan::{
    CAMPAIGNS, CHANNELS, CURRENCIES, DAY, Plan, Purchase, What, micros_of, month_start, next_month, show_time,
};
use super::report::Report;
use super::snapshot::{KPIS, Val, scopes};

/// Hand sums over the generated purchases of the contacts `keep` admits in [start, end).
struct Hand<'a> {
    plan: &'a Plan,
    purchases: Vec<Purchase>,
}

impl Hand<'_> {
    fn bought(&self, start: i64, end: i64, keep: &dyn Fn(usize) -> bool) -> Vec<&Purchase> {
        self.purchases.iter().filter(|p| p.at >= start && p.at < end && keep(p.contact)).collect()
    }

    fn revenue(&self, start: i64, end: i64, currency: &str, keep: &dyn Fn(usize) -> bool) -> i128 {
        self.bought(start, end, keep)
            .iter()
            .filter(|p| CURRENCIES[p.currency] == currency)
            .map(|p| i128::from(p.micros))
            .sum()
    }

    /// Orders ÷ distinct purchasers, all currencies.
    fn frequency(&self, start: i64, end: i64, keep: &dyn Fn(usize) -> bool) -> (usize, usize) {
        let b = self.bought(start, end, keep);
        let orders: BTreeSet<&str> = b.iter().map(|p| p.order.as_str()).collect();
        let buyers: BTreeSet<usize> = b.iter().map(|p| p.contact).collect();
        (orders.len(), buyers.len())
    }

    fn new_contacts(&self, start: i64, end: i64, keep: &dyn Fn(usize) -> bool) -> BTreeMap<&'static str, i64> {
        let mut m = BTreeMap::new();
        for (i, c) in self.plan.contacts.iter().enumerate() {
            if c.acquire >= start && c.acquire < end && keep(i) {
                *m.entry(CHANNELS[c.channel].1).or_default() += 1;
            }
        }
        m
    }

    fn cost(&self, start: i64, end: i64, currency: &str, keep: &dyn Fn(usize) -> bool) -> i128 {
        self.plan
            .contacts
            .iter()
            .enumerate()
            .filter(|(i, c)| c.acquire >= start && c.acquire < end && keep(*i))
            .filter_map(|(_, c)| c.cost.filter(|(cur, _)| CURRENCIES[*cur] == currency).map(|(_, m)| i128::from(m)))
            .sum()
    }
}

fn show_money(m: i128, currency: &str) -> String {
    Val::Money(currency.to_owned(), m).to_string()
}

fn rate(report: &mut Report, what: &str, name: &str, v: f64) {
    if !(0.0..=1.0).contains(&v) {
        report.add("invariant: rate in [0, 1]", format!("{what} {name} = {v}"));
    }
}

/// A contact's stage history: (time, stage) of each transition, oldest first.
struct History {
    moves: Vec<(i64, String)>,
    /// First move to a stage past awareness (its first stage, when that is one): a lead.
    lead: Option<i64>,
    /// First entry into a customer stage.
    customer: Option<i64>,
}

const CUSTOMER_STAGES: [&str; 3] = ["conversion", "retention", "loyalty"];

impl History {
    fn of(j: &lpb::Journey) -> History {
        let moves: Vec<(i64, String)> = j
            .transitions
            .iter()
            .map(|t| {
                let at = t.transition_time.as_ref().and_then(clm_platform::convert::micros).unwrap_or_default();
                (at, t.to_stage.clone())
            })
            .collect();
        let first = |ok: &dyn Fn(&str) -> bool| moves.iter().find(|(_, s)| ok(s)).map(|(t, _)| *t);
        History {
            lead: first(&|s| !["awareness", "dormant", "churned"].contains(&s)),
            customer: first(&|s| CUSTOMER_STAGES.contains(&s)),
            moves,
        }
    }

    /// In a customer stage at `at` (after every transition before it).
    fn customer_at(&self, at: i64) -> bool {
        self.moves.iter().rev().find(|(t, _)| *t < at).is_some_and(|(_, s)| CUSTOMER_STAGES.contains(&s.as_str()))
    }

    /// Left the customer stages in [start, end).
    fn left_in(&self, start: i64, end: i64) -> bool {
        self.moves.iter().any(|(t, s)| *t >= start && *t < end && !CUSTOMER_STAGES.contains(&s.as_str()))
    }
}

pub(super) async fn invariants(plan: &Plan, fed: &Fed, report: &mut Report) {
    let mut m = fed.cl.m.clone();
    let hand = Hand { plan, purchases: plan.purchases() };
    let everyone = |_: usize| true;
    // Each contact's stage history in A, as lifecycle (the source of truth) derived it.
    let mut histories = Vec::new();
    for id in &fed.ids {
        let j = fed
            .cl
            .l
            .clone()
            .get_journey(lpb::GetJourneyRequest { contact_id: id.clone(), model_id: String::new() })
            .await
            .map(|r| r.into_inner().journey.unwrap_or_default())
            .unwrap_or_default();
        histories.push(History::of(&j));
    }
    // The scopes, and every calendar month of the history.
    let mut checks: Vec<(String, pb::MetricsScope)> = scopes(plan);
    let mut month = month_start(plan.start);
    while month < plan.end {
        let scope = pb::MetricsScope {
            start_time: Some(timestamp(month)),
            end_time: Some(timestamp(next_month(month))),
            ..Default::default()
        };
        checks.push((format!("month {}", &show_time(month)[..7]), scope));
        month = next_month(month);
    }
    for (label, scope) in &checks {
        let (start, end) = (
            clm_platform::convert::micros(scope.start_time.as_ref().unwrap()).unwrap(),
            clm_platform::convert::micros(scope.end_time.as_ref().unwrap()).unwrap(),
        );
        let (channel, campaign) = (scope.channel.clone(), scope.campaign.clone());
        let keep = move |i: usize| {
            let c = &plan.contacts[i];
            (channel.is_empty() || CHANNELS[c.channel].1 == channel)
                && (campaign.is_empty() || CAMPAIGNS[c.campaign] == campaign)
        };
        let s = match m
            .get_stage_metrics(pb::GetStageMetricsRequest { scope: Some(scope.clone()), lead_quality_threshold: 0 })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(e) => {
                report.add("invariant: answers", format!("GetStageMetrics{{{label}}}: {e:?}"));
                continue;
            }
        };
        let what = format!("GetStageMetrics{{{label}}}");
        let (acq, conv, ret, loy) = (
            s.acquisition.unwrap_or_default(),
            s.conversion.unwrap_or_default(),
            s.retention.unwrap_or_default(),
            s.loyalty.unwrap_or_default(),
        );
        rate(report, &what, "acquisition.lead_quality_rate", acq.lead_quality_rate);
        rate(report, &what, "conversion.close_rate", conv.close_rate);
        rate(report, &what, "retention.churn_rate", ret.churn_rate);
        rate(report, &what, "retention.retention_rate", ret.retention_rate);
        rate(report, &what, "retention.repeat_purchase_rate", ret.repeat_purchase_rate);
        rate(report, &what, "loyalty.referral_rate", loy.referral_rate);
        // Revenue: the hand sum of that currency's purchases, nothing of the other's.
        if let Some(r) = &conv.revenue {
            let want = hand.revenue(start, end, &r.currency_code, &keep);
            if micros_of(r) != want {
                let others: Vec<String> =
                    CURRENCIES.iter().map(|c| show_money(hand.revenue(start, end, c, &keep), c)).collect();
                report.add(
                    "invariant: revenue = hand sum of its currency's purchases",
                    format!(
                        "{what} conversion.revenue = {}, hand sum {} (purchases by currency: {})",
                        show_money(micros_of(r), &r.currency_code),
                        show_money(want, &r.currency_code),
                        others.join(", ")
                    ),
                );
            }
            if let Some(aov) = &ret.average_order_value
                && aov.currency_code != r.currency_code
            {
                report.add(
                    "invariant: money never mixed across currencies",
                    format!("{what} average_order_value in {} but revenue in {}", aov.currency_code, r.currency_code),
                );
            }
        } else if hand.bought(start, end, &keep).iter().any(|p| p.micros > 0) {
            report.add("invariant: revenue = hand sum of its currency's purchases", format!("{what} no revenue"));
        }
        if let Some(cost) = &acq.acquisition_cost {
            let want = hand.cost(start, end, &cost.currency_code, &keep);
            if micros_of(cost) != want {
                report.add(
                    "invariant: acquisition cost = hand sum of its currency's costs",
                    format!(
                        "{what} acquisition.acquisition_cost = {}, hand sum {}",
                        show_money(micros_of(cost), &cost.currency_code),
                        show_money(want, &cost.currency_code)
                    ),
                );
            }
        }
        // Purchase frequency: orders ÷ distinct purchasers, whatever their currency.
        let (orders, buyers) = hand.frequency(start, end, &keep);
        let want = if buyers == 0 { 0.0 } else { orders as f64 / buyers as f64 };
        if (ret.purchase_frequency - want).abs() > 1e-9 {
            report.add(
                "invariant: purchase frequency = orders ÷ distinct purchasers (all currencies)",
                format!(
                    "{what} retention.purchase_frequency = {}, hand {orders} ÷ {buyers} = {want}",
                    ret.purchase_frequency
                ),
            );
        }
        // Leads, new customers, churn and referral rate by the definitions, from the
        // stage histories.
        let mine: Vec<(usize, &History)> = histories.iter().enumerate().filter(|(i, _)| keep(*i)).collect();
        let in_range = |t: Option<i64>| t.is_some_and(|t| t >= start && t < end);
        let leads: Vec<&History> = mine.iter().filter(|(_, h)| in_range(h.lead)).map(|(_, h)| *h).collect();
        let new_customers = mine.iter().filter(|(_, h)| in_range(h.customer)).count() as i64;
        if acq.leads != leads.len() as i64 || conv.new_customers != new_customers {
            report.add(
                "invariant: leads and new customers = hand count from the journeys",
                format!(
                    "{what} acquisition.leads = {}, conversion.new_customers = {}; hand {} leads (a first stage past \
                     awareness counts), {new_customers} new customers",
                    acq.leads,
                    conv.new_customers,
                    leads.len()
                ),
            );
        }
        if end == plan.end {
            // Leads of the range that became customers ÷ leads of the range (to the end of
            // the range, which is now here: no reading of "became" differs).
            let closed = leads.iter().filter(|h| h.customer.is_some_and(|c| c < end)).count();
            let want = if leads.is_empty() { 0.0 } else { closed as f64 / leads.len() as f64 };
            if (conv.close_rate - want).abs() > 1e-9 {
                report.add(
                    "invariant: close rate = leads of the range that became customers ÷ leads of the range",
                    format!(
                        "{what} conversion.close_rate = {}, hand {closed} ÷ {} = {want}",
                        conv.close_rate,
                        leads.len()
                    ),
                );
            }
        }
        let at_start: Vec<&History> = mine.iter().filter(|(_, h)| h.customer_at(start)).map(|(_, h)| *h).collect();
        let left = at_start.iter().filter(|h| h.left_in(start, end)).count();
        let want = if at_start.is_empty() { 0.0 } else { left as f64 / at_start.len() as f64 };
        if (ret.churn_rate - want).abs() > 1e-9 {
            report.add(
                "invariant: churn = customers at the start who left ÷ customers at the start",
                format!("{what} retention.churn_rate = {}, hand {left} ÷ {} = {want}", ret.churn_rate, at_start.len()),
            );
        }
        let at_end: Vec<usize> = mine.iter().filter(|(_, h)| h.customer_at(end)).map(|(i, _)| *i).collect();
        let referred = at_end
            .iter()
            .filter(|i| {
                plan.acts.iter().any(|a| {
                    a.contact == **i
                        && a.at < end
                        && matches!(a.what, What::Journey(lpb::journey_event::Detail::Referral(_)))
                })
            })
            .count();
        let want = if at_end.is_empty() { 0.0 } else { referred as f64 / at_end.len() as f64 };
        if (loy.referral_rate - want).abs() > 1e-9 {
            report.add(
                "invariant: referral rate = customers who referred ÷ customers",
                format!(
                    "{what} loyalty.referral_rate = {}, hand {referred} ÷ {} = {want}",
                    loy.referral_rate,
                    at_end.len()
                ),
            );
        }
        // New contacts per channel.
        let want = hand.new_contacts(start, end, &keep);
        let got: BTreeMap<&str, i64> =
            acq.new_contacts_by_channel.iter().filter(|(_, n)| **n != 0).map(|(k, n)| (k.as_str(), *n)).collect();
        if got != want || acq.new_contacts != want.values().sum::<i64>() {
            report.add(
                "invariant: new contacts per channel = hand count",
                format!("{what} new_contacts {} by channel {got:?}, hand {want:?}", acq.new_contacts),
            );
        }
    }
    // Per channel over the whole range.
    let (_, all) = scopes(plan).swap_remove(0);
    let (start, end) = (plan.start - DAY, plan.end);
    match m.get_channel_metrics(pb::GetChannelMetricsRequest { scope: Some(all.clone()), by_campaign: false }).await {
        Ok(r) => {
            for ch in r.into_inner().channels {
                let what = format!("GetChannelMetrics{{all}} channels[{}]", ch.channel);
                rate(report, &what, "close_rate", ch.close_rate);
                let keep = |i: usize| CHANNELS[plan.contacts[i].channel].1 == ch.channel;
                let want = hand.new_contacts(start, end, &keep).values().sum::<i64>();
                if ch.new_contacts != want {
                    report.add(
                        "invariant: new contacts per channel = hand count",
                        format!("{what}.new_contacts = {}, hand {want}", ch.new_contacts),
                    );
                }
                if let Some(r) = &ch.revenue {
                    let want = hand.revenue(start, end, &r.currency_code, &keep);
                    if micros_of(r) != want {
                        report.add(
                            "invariant: revenue = hand sum of its currency's purchases",
                            format!(
                                "{what}.revenue = {}, hand sum {}",
                                show_money(micros_of(r), &r.currency_code),
                                show_money(want, &r.currency_code)
                            ),
                        );
                    }
                }
            }
        }
        Err(e) => report.add("invariant: answers", format!("GetChannelMetrics{{all}}: {e:?}")),
    }
    // Each contact's orders and revenue.
    for (i, id) in fed.ids.iter().enumerate() {
        let Ok(v) = m.get_customer_value(pb::GetCustomerValueRequest { contact_id: id.clone() }).await else {
            continue;
        };
        let v = v.into_inner().customer_value.unwrap_or_default();
        let mine: Vec<&Purchase> = hand.purchases.iter().filter(|p| p.contact == i).collect();
        let orders = mine.iter().map(|p| p.order.as_str()).collect::<BTreeSet<_>>().len() as i64;
        if v.orders != orders {
            report.add(
                "invariant: purchases = hand count",
                format!("GetCustomerValue{{c{i}}} orders = {}, hand {orders}", v.orders),
            );
        }
        if let Some(r) = &v.historical_revenue {
            let want: i128 =
                mine.iter().filter(|p| CURRENCIES[p.currency] == r.currency_code).map(|p| i128::from(p.micros)).sum();
            if micros_of(r) != want {
                let by: Vec<String> = CURRENCIES
                    .iter()
                    .map(|c| {
                        show_money(
                            mine.iter().filter(|p| CURRENCIES[p.currency] == *c).map(|p| i128::from(p.micros)).sum(),
                            c,
                        )
                    })
                    .collect();
                report.add(
                    "invariant: money never mixed across currencies",
                    format!(
                        "GetCustomerValue{{c{i}}} historical_revenue = {}, its purchases: {}",
                        show_money(micros_of(r), &r.currency_code),
                        by.join(" + ")
                    ),
                );
            }
        }
    }
    // Monthly series: rates in [0, 1]; purchase frequency and its sample (orders, counted once
    // whatever their currency) and new contacts by hand.
    for k in KPIS {
        let Ok(r) = m
            .list_kpi_series(pb::ListKpiSeriesRequest {
                kpi: k as i32,
                scope: Some(all.clone()),
                granularity: pb::Granularity::Month as i32,
            })
            .await
        else {
            continue;
        };
        for p in r.into_inner().points {
            let start = clm_platform::convert::micros(p.period_start_time.as_ref().unwrap()).unwrap();
            let end = next_month(start);
            let what = format!("ListKpiSeries{{all, {k:?}}} point {}", &show_time(start)[..7]);
            match k {
                pb::Kpi::LeadQualityRate
                | pb::Kpi::CloseRate
                | pb::Kpi::ConversionRate
                | pb::Kpi::ChurnRate
                | pb::Kpi::RetentionRate
                | pb::Kpi::RepeatPurchaseRate
                | pb::Kpi::ReferralRate => rate(report, &what, "value", p.value),
                pb::Kpi::PurchaseFrequency => {
                    let (orders, buyers) = hand.frequency(start, end, &everyone);
                    let want = if buyers == 0 { 0.0 } else { orders as f64 / buyers as f64 };
                    if (p.value - want).abs() > 1e-9 || p.sample_size != orders as i64 {
                        report.add(
                            "invariant: purchase frequency = orders ÷ distinct purchasers (all currencies)",
                            format!(
                                "{what} value {} on {} orders, hand {orders} ÷ {buyers} = {want}",
                                p.value, p.sample_size
                            ),
                        );
                    }
                }
                pb::Kpi::NewContacts => {
                    let want = hand.new_contacts(start, end, &everyone).values().sum::<i64>();
                    if (p.value - want as f64).abs() > 1e-9 {
                        report.add(
                            "invariant: new contacts per channel = hand count",
                            format!("{what} value {}, hand {want}", p.value),
                        );
                    }
                }
                _ => {}
            }
        }
    }
}
