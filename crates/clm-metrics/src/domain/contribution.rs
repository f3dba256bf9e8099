//! A contact's contribution to the read model, as a pure function of what is known about it:
//! its facts (channel, campaign, acquisition time and cost), its stage transitions in every
//! model (as lifecycle last published them) and its activity (purchases, referrals, reviews,
//! survey answers, other journey events).
//!
//! The aggregates are the sum of every contact's contribution. When an event about a contact
//! arrives, the write side computes the contact's contribution before and after it and adds
//! the difference (`store::write`). The contribution depends only on the *set* of facts, sorted
//! here by business time, never on the order they arrived in: a backdated purchase, a late
//! contact event, a shuffled replay or a duplicate all end in the numbers the same events give
//! in time order. Definitions: `docs/metrics.md`.

use std::collections::{BTreeMap, BTreeSet};

use super::kpi::Counter;
use super::{DAY, Gran, bucket, day, period_index, period_start};

pub use super::facts::{Activity, Category, Event, Facts, Key, Money, Role, Survey, Transition};

/// The two meanings of "a customer left", both kept (the lifecycle model's
/// `churn_excludes_dormancy` picks one):
/// `lost` — leaving the customer category for any stage (dormancy included); `churned` — only
/// a churned-role stage (or a move back to a prospect stage) ends the customer's spell; a
/// dormant customer who comes back has not left.
pub const SPELL_BASES: [&str; 2] = ["lost", "churned"];

/// The day an open spell "ends": after every range.
pub const OPEN: i64 = i64::MAX;

/// The funnel and histograms are also kept by blocks of these many days (see `store::read`).
pub const ROLL_SPANS: [i64; 3] = [1, 16, 256];

/// Funnel delays are kept per day up to a month, then at these boundaries (days).
pub const DELAY_STEPS: [i64; 15] = [35, 42, 49, 56, 60, 70, 80, 90, 105, 120, 150, 180, 270, 365, 3660];

/// The stored delay of a reach `days` after entry: exact to 31 days, else the next boundary.
pub fn delay_bucket(days: i64) -> i64 {
    if days <= 31 { days.max(0) } else { DELAY_STEPS.iter().copied().find(|s| *s >= days).unwrap_or(3660) }
}

/// The delays a window of `days` covers: exact to 31 days, else rounded down to a boundary.
pub fn window_bucket(days: i64) -> i64 {
    if days <= 31 { days.max(0) } else { DELAY_STEPS.iter().copied().filter(|s| *s <= days).max().unwrap_or(31) }
}

/// Start of the block of `span` days holding `at` (blocks aligned on the epoch).
pub fn block(at: i64, span: i64) -> i64 {
    at.div_euclid(span * DAY) * span * DAY
}

/// Granularities of active periods, and of cohorts.
pub const ACTIVITY_GRANS: [Gran; 3] = [Gran::Day, Gran::Week, Gran::Month];
pub const COHORT_GRANS: [Gran; 2] = [Gran::Week, Gran::Month];

/// Aggregate cells: (table, key) → deltas, one per summed column of the table. A key holds the
/// table's key columns after `tenant_id` (the store adds the tenant).
pub type Cells = BTreeMap<(&'static str, Vec<Key>), Vec<i64>>;

/// A contact's first reach of a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    pub model: String,
    pub stage: String,
    pub first_time: i64,
    /// Time from entering the previous stage (none for the contact's first stage).
    pub took: Option<i64>,
}

/// Where a contact stands in a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Now {
    pub model: String,
    pub stage: String,
    pub category: Category,
    pub enter_time: i64,
    pub lead_time: Option<i64>,
    pub customer_time: Option<i64>,
    /// Time to close (µs), counted on the day of `customer_time`.
    pub close_took: Option<i64>,
}

/// A contact's purchase and advocacy facts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Customer {
    pub first_purchase: Option<i64>,
    pub last_purchase: Option<i64>,
    /// Orders in every currency.
    pub orders: i64,
    /// The contact's main currency (the one it spent most in), its revenue and orders there.
    pub currency: String,
    pub revenue: i64,
    pub currency_orders: i64,
    pub referrals: i64,
    pub reviews: i64,
    pub last_nps: Option<i64>,
}

/// One active period of a contact: orders and revenue in `currency` ("" with no purchase).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Period {
    pub gran: &'static str,
    pub period: i64,
    pub currency: String,
    pub orders: i64,
    pub revenue: i64,
}

/// A contact's per-contact rows (what segment queries read) and its aggregate cells.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Contribution {
    pub cells: Cells,
    pub reaches: Vec<Reach>,
    pub now: Vec<Now>,
    pub customer: Option<Customer>,
    pub periods: Vec<Period>,
}

/// Builds one contact's cells.
struct Builder<'a> {
    contact: &'a str,
    facts: &'a Facts,
    cells: Cells,
}

impl Builder<'_> {
    fn add(&mut self, table: &'static str, key: Vec<Key>, deltas: &[i64]) {
        let e = self.cells.entry((table, key)).or_insert_with(|| vec![0; deltas.len()]);
        for (a, d) in e.iter_mut().zip(deltas) {
            *a = a.saturating_add(*d);
        }
    }

    /// A KPI counter on the day of `at`, attributed to the contact's channel and campaign, in
    /// the tenant's aggregate and the contact's own row.
    fn kpi(&mut self, name: Counter, model: &str, at: i64, currency: &str, n: i64, s: i64) {
        let (c, f) = (self.contact, self.facts);
        let tail = [
            Key::from(name.key()),
            model.into(),
            day(at).into(),
            f.channel.as_str().into(),
            f.campaign.as_str().into(),
            currency.into(),
        ];
        self.add("kpi_daily", tail.to_vec(), &[n, s]);
        let mut key = vec![Key::from(c)];
        key.extend(tail);
        self.add("contact_kpis", key, &[n, s]);
    }

    fn hist(&mut self, model: &str, name: &str, at: i64, took: i64) {
        let f = self.facts;
        let b = bucket(took);
        let key = vec![
            model.into(),
            name.into(),
            day(at).into(),
            f.channel.as_str().into(),
            f.campaign.as_str().into(),
            b.into(),
        ];
        self.add("time_hist", key, &[1]);
        for span in ROLL_SPANS.into_iter().filter(|s| *s > 1) {
            let key = vec![model.into(), name.into(), span.into(), block(at, span).into(), b.into()];
            self.add("time_hist_roll", key, &[1]);
        }
    }

    fn funnel(&mut self, model: &str, entry: i64, stage: &str, at: i64) {
        let f = self.facts;
        let delay = delay_bucket((at - entry).max(0) / DAY);
        let key = vec![
            model.into(),
            day(entry).into(),
            f.channel.as_str().into(),
            f.campaign.as_str().into(),
            stage.into(),
            delay.into(),
        ];
        self.add("funnel_cells", key, &[1]);
        for span in ROLL_SPANS {
            let key = vec![model.into(), span.into(), block(entry, span).into(), stage.into(), delay.into()];
            self.add("funnel_roll", key, &[1]);
        }
    }

    /// A customer spell from `start` to `end` (open: `None`), with the day of the contact's
    /// first referral (`OPEN`: none), so "customers who referred" is a subset of customers.
    fn spell(&mut self, model: &str, basis: &str, start: i64, end: Option<i64>, referred: Option<i64>) {
        let (c, f) = (self.contact, self.facts);
        let (s, e, r) = (day(start), end.map_or(OPEN, day), referred.map_or(OPEN, day));
        let key = vec![
            model.into(),
            basis.into(),
            f.channel.as_str().into(),
            f.campaign.as_str().into(),
            s.into(),
            e.into(),
            r.into(),
        ];
        self.add("customer_spells", key, &[1]);
        let key = vec![c.into(), model.into(), basis.into(), s.into(), e.into(), r.into()];
        self.add("contact_spells", key, &[1]);
    }
}

/// The contribution of contact `contact` (of the tenant whose ledger this is).
pub fn contribution(contact: &str, facts: &Facts, transitions: &[Transition], events: &[Event]) -> Contribution {
    let mut b = Builder { contact, facts, cells: Cells::new() };
    let mut out = Contribution::default();
    // The contact itself.
    if let Some(at) = facts.acquired {
        b.kpi(Counter::NewContacts, "", at, "", 1, 0);
        if let Some(Money { currency, micros }) = &facts.cost {
            b.kpi(Counter::AcquisitionCost, "", at, currency, 1, *micros);
        }
    }
    let mut events: Vec<&Event> = events.iter().collect();
    events.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
    let first_referral = events.iter().find(|e| e.what == Activity::Referral).map(|e| e.at);
    // Journeys, one model at a time.
    let models: BTreeSet<&str> = transitions.iter().map(|t| t.model.as_str()).collect();
    for model in models {
        let mut ts: Vec<&Transition> = transitions.iter().filter(|t| t.model == model).collect();
        ts.sort_by(|a, b| (a.at, a.seq, &a.id).cmp(&(b.at, b.seq, &b.id)));
        chain_ties(&mut ts);
        journey(&mut b, &mut out, model, &ts, first_referral);
    }
    activity(&mut b, &mut out, &events);
    out.cells = b.cells;
    out
}

/// Transitions of the same instant (a reactivation and the move its event caused) in the order
/// they happened: each after the one that entered the stage it left. Their published sequence
/// numbers can be stale (a backdated event shifts later transitions without republishing
/// them); the stage they left is always current (a change republishes the transition).
fn chain_ties(ts: &mut [&Transition]) {
    let mut i = 0;
    while i < ts.len() {
        let end = ts[i..].iter().position(|t| t.at != ts[i].at).map_or(ts.len(), |n| i + n);
        let mut stage = if i == 0 { String::new() } else { ts[i - 1].to_stage.clone() };
        for k in i..end {
            // The first (by sequence) that leaves the stage the contact is in; else the first.
            let pick = (k..end).find(|&j| ts[j].from_stage == stage).unwrap_or(k);
            ts[k..=pick].rotate_right(1);
            stage.clone_from(&ts[k].to_stage);
        }
        i = end;
    }
}

/// One model's journey: reaches, funnel, durations, leads and customers, movements, spells.
fn journey(b: &mut Builder<'_>, out: &mut Contribution, model: &str, ts: &[&Transition], first_referral: Option<i64>) {
    let Some(last) = ts.last() else { return };
    let mut reaches: Vec<Reach> = Vec::new();
    let (mut lead, mut customer) = (None, None);
    // Open spells per basis: the time the current one started.
    let mut open: [Option<i64>; 2] = [None, None];
    let mut prev: Option<&Transition> = None;
    for t in ts {
        let from = prev.map(|p| p.to_category);
        if !reaches.iter().any(|r| r.stage == t.to_stage) {
            let took = prev.map(|p| t.at - p.at);
            reaches.push(Reach { model: model.to_owned(), stage: t.to_stage.clone(), first_time: t.at, took });
            if let Some(took) = took {
                b.hist(model, &t.to_stage, t.at, took);
            }
        }
        // A lead: the first stage reached past the model's entry stage (its first one), lost
        // stages aside; a contact whose first stage is already past the entry is a lead then.
        if lead.is_none() && t.position > 0 && t.to_category != Category::Lost {
            lead = Some(t.at);
        }
        if customer.is_none() && t.to_category == Category::Customer {
            customer = Some(t.at);
        }
        let (into, out_of) = (
            from != Some(Category::Customer) && t.to_category == Category::Customer,
            from == Some(Category::Customer) && t.to_category != Category::Customer,
        );
        if into {
            b.kpi(Counter::CustomersIn, model, t.at, "", 1, 0);
        }
        if out_of {
            b.kpi(Counter::CustomersOut, model, t.at, "", 1, 0);
        }
        match t.to_role {
            Role::Dormant => b.kpi(Counter::Dormant, model, t.at, "", 1, 0),
            Role::Churned => b.kpi(Counter::Churned, model, t.at, "", 1, 0),
            _ => {}
        }
        if t.reactivation {
            b.kpi(Counter::Reactivated, model, t.at, "", 1, 0);
        }
        // Spells of being a customer. `lost`: in the customer category. `churned`: from
        // entering it until a churned stage or a prospect stage; dormancy pauses it.
        if t.to_category == Category::Customer {
            open[0].get_or_insert(t.at);
            open[1].get_or_insert(t.at);
        } else {
            if let Some(start) = open[0].take() {
                b.spell(model, SPELL_BASES[0], start, Some(t.at), first_referral);
            }
            if t.to_role != Role::Dormant
                && let Some(start) = open[1].take()
            {
                b.spell(model, SPELL_BASES[1], start, Some(t.at), first_referral);
            }
        }
        prev = Some(t);
    }
    for (i, start) in open.iter().enumerate() {
        if let Some(start) = start {
            b.spell(model, SPELL_BASES[i], *start, None, first_referral);
        }
    }
    // The funnel: the cohort is the day the contact entered the model (its earliest reach).
    let entry = reaches.iter().map(|r| r.first_time).min().unwrap_or(last.at);
    for r in &reaches {
        b.funnel(model, entry, &r.stage, r.first_time);
    }
    if let Some(l) = lead {
        b.kpi(Counter::Leads, model, l, "", 1, 0);
        if customer.is_some() {
            b.kpi(Counter::LeadsWon, model, l, "", 1, 0);
        }
    }
    let mut close_took = None;
    if let Some(c) = customer {
        // Time to close: from becoming a lead; a contact who became one by becoming a
        // customer is measured from its acquisition (0 when that is unknown or later).
        let base = lead.filter(|l| *l < c).or(b.facts.acquired.filter(|a| *a < c)).unwrap_or(c);
        let took = c - base;
        close_took = Some(took);
        b.kpi(Counter::NewCustomers, model, c, "", 1, took);
        b.hist(model, "__time_to_close", c, took);
        if let Some(at) = b.facts.acquired {
            b.kpi(Counter::NewContactsWon, model, at, "", 1, 0);
        }
    }
    out.reaches.extend(reaches);
    out.now.push(Now {
        model: model.to_owned(),
        stage: last.to_stage.clone(),
        category: last.to_category,
        enter_time: last.at,
        lead_time: lead,
        customer_time: customer,
        close_took,
    });
}

/// Purchases, advocacy, survey answers, active periods and cohorts (events sorted by time).
fn activity(b: &mut Builder<'_>, out: &mut Contribution, events: &[&Event]) {
    let mut c = Customer::default();
    let mut by_currency: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for e in events {
        match &e.what {
            Activity::Purchase(Money { currency, micros: amount }) => {
                b.kpi(Counter::Revenue, "", e.at, currency, 1, *amount);
                b.kpi(Counter::Orders, "", e.at, "", 1, 0);
                if c.orders == 0 {
                    b.kpi(Counter::FirstPurchases, "", e.at, currency, 1, *amount);
                    b.kpi(Counter::Buyers, "", e.at, "", 1, 0);
                    c.first_purchase = Some(e.at);
                } else {
                    b.kpi(Counter::RepeatOrders, "", e.at, "", 1, 0);
                }
                if c.orders == 1 {
                    b.kpi(Counter::RepeatCustomers, "", e.at, "", 1, 0);
                }
                let cur = by_currency.entry(currency.as_str()).or_default();
                if cur.0 == 0 {
                    b.kpi(Counter::CurrencyBuyers, "", e.at, currency, 1, 0);
                }
                cur.0 += 1;
                cur.1 = cur.1.saturating_add(*amount);
                c.orders += 1;
                c.last_purchase = Some(e.at);
            }
            Activity::Referral => {
                b.kpi(Counter::Referrals, "", e.at, "", 1, 0);
                if c.referrals == 0 {
                    b.kpi(Counter::Referrers, "", e.at, "", 1, 0);
                }
                c.referrals += 1;
            }
            Activity::Review => {
                b.kpi(Counter::Reviews, "", e.at, "", 1, 0);
                if c.reviews == 0 {
                    b.kpi(Counter::Reviewers, "", e.at, "", 1, 0);
                }
                c.reviews += 1;
            }
            Activity::Score { survey, score } => {
                let s = i64::from(*score);
                match survey {
                    Survey::Nps => {
                        b.kpi(Counter::NpsTotal, "", e.at, "", 1, s);
                        if *score >= 9 {
                            b.kpi(Counter::NpsPromoters, "", e.at, "", 1, 0);
                        } else if *score <= 6 {
                            b.kpi(Counter::NpsDetractors, "", e.at, "", 1, 0);
                        }
                        c.last_nps = Some(s);
                    }
                    Survey::Csat => {
                        b.kpi(Counter::CsatTotal, "", e.at, "", 1, s);
                        if *score >= 4 {
                            b.kpi(Counter::CsatSatisfied, "", e.at, "", 1, 0);
                        }
                    }
                    Survey::Ces => {
                        b.kpi(Counter::CesTotal, "", e.at, "", 1, s);
                        if *score >= 5 {
                            b.kpi(Counter::CesEasy, "", e.at, "", 1, 0);
                        }
                    }
                    Survey::Custom => {}
                }
            }
            Activity::Other => {}
        }
    }
    // The main currency: most spent (then by code).
    if let Some((cur, (orders, revenue))) = by_currency.iter().max_by(|a, b| (a.1.1, b.0).cmp(&(b.1.1, a.0))) {
        (*cur).clone_into(&mut c.currency);
        c.revenue = *revenue;
        c.currency_orders = *orders;
    }
    let known = !events.is_empty();
    // Active periods: any activity (journey events, purchases, reviews, survey answers).
    for g in ACTIVITY_GRANS {
        // period → currency → (orders, revenue)
        let mut periods: BTreeMap<i64, BTreeMap<&str, (i64, i64)>> = BTreeMap::new();
        for e in events {
            let p = periods.entry(period_start(e.at, g)).or_default();
            if let Activity::Purchase(Money { currency, micros: amount }) = &e.what {
                let x = p.entry(currency.as_str()).or_default();
                x.0 += 1;
                x.1 = x.1.saturating_add(*amount);
            }
        }
        let first = periods.keys().next().copied();
        for (p, money) in &periods {
            let previous = period_start(p - 1, g);
            let returning = i64::from(periods.contains_key(&previous));
            let is_first = i64::from(first == Some(*p));
            b.add("period_counts", vec![g.key().into(), (*p).into()], &[1, returning, is_first]);
            if money.is_empty() {
                out.periods.push(Period { gran: g.key(), period: *p, currency: String::new(), orders: 0, revenue: 0 });
            }
            for (cur, (orders, revenue)) in money {
                out.periods.push(Period {
                    gran: g.key(),
                    period: *p,
                    currency: (*cur).to_owned(),
                    orders: *orders,
                    revenue: *revenue,
                });
            }
        }
        // Cohorts by the period of the first purchase.
        let Some(first_purchase) = c.first_purchase.filter(|_| g != Gran::Day) else { continue };
        let cohort = period_start(first_purchase, g);
        b.add("cohort_sizes", vec![g.key().into(), cohort.into()], &[1]);
        let mut last = None;
        for (p, money) in &periods {
            let idx = period_index(cohort, *p, g);
            if idx < 0 {
                continue;
            }
            b.add("cohort_cells", vec![g.key().into(), cohort.into(), idx.into()], &[1]);
            for (cur, (_, revenue)) in money {
                b.add("cohort_revenue", vec![g.key().into(), cohort.into(), idx.into(), (*cur).into()], &[*revenue]);
            }
            last = last.max(Some(idx));
        }
        if let Some(l) = last {
            b.add("cohort_last", vec![g.key().into(), cohort.into(), l.into()], &[1]);
        }
    }
    if known {
        out.customer = Some(c);
    }
}

/// What to add to the aggregates when a contact's contribution changes from `old` to `new`:
/// `new − old` per cell, cells whose difference is zero left out.
pub fn diff(old: &Cells, new: &Cells) -> Vec<(&'static str, Vec<Key>, Vec<i64>)> {
    let mut out = Vec::new();
    for ((table, key), n) in new {
        let d: Vec<i64> = match old.get(&(table, key.clone())) {
            Some(o) => n.iter().zip(o).map(|(a, b)| a.saturating_sub(*b)).collect(),
            None => n.clone(),
        };
        if d.iter().any(|x| *x != 0) {
            out.push((*table, key.clone(), d));
        }
    }
    for ((table, key), o) in old {
        if !new.contains_key(&(table, key.clone())) {
            out.push((*table, key.clone(), o.iter().map(|x| x.saturating_neg()).collect()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str, seq: i64, at: i64, from: &str, to: &str, cat: Category) -> Transition {
        Transition {
            id: id.into(),
            model: "m".into(),
            seq,
            from_stage: from.into(),
            at,
            to_stage: to.into(),
            to_category: cat,
            to_role: if to == "dormant" { Role::Dormant } else { Role::Normal },
            position: 0,
            reactivation: from == "dormant",
        }
    }

    #[test]
    fn transitions_of_one_instant_follow_the_stages_they_left_not_stale_sequences() {
        // Dormant, then at one instant back to retention and on to loyalty (a promoter's
        // answer); the return kept a sequence from a longer history it was published in.
        let all = [
            t("d", 1, 10, "conversion", "dormant", Category::Lost),
            t("l", 2, 20, "retention", "loyalty", Category::Customer),
            t("r", 5, 20, "dormant", "retention", Category::Customer),
            t("c", 0, 5, "", "conversion", Category::Customer),
        ];
        let c = contribution("x", &Facts::default(), &all, &[]);
        assert_eq!(c.now[0].stage, "loyalty");
        let mut ts: Vec<&Transition> = all.iter().collect();
        ts.sort_by_key(|t| (t.at, t.seq));
        chain_ties(&mut ts);
        assert_eq!(ts.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["c", "d", "r", "l"]);
    }

    #[test]
    fn a_contribution_and_its_difference() {
        let facts = Facts {
            channel: crate::domain::channel::Channel::from_key("web"),
            campaign: String::new(),
            acquired: Some(0),
            cost: None,
        };
        let buy = |id: &str, at: i64, cur: &str| Event {
            id: id.into(),
            at,
            what: Activity::Purchase(Money { currency: cur.into(), micros: 5_000_000 }),
        };
        let one = contribution("x", &facts, &[], &[buy("b", 3 * DAY, "EUR")]);
        // A backdated purchase in another currency becomes the first; the later one a repeat.
        let two = contribution("x", &facts, &[], &[buy("b", 3 * DAY, "EUR"), buy("a", DAY, "USD")]);
        let kpi = |c: &Contribution, name: &str, at: i64, cur: &str| {
            let key = vec![Key::from(name), "".into(), day(at).into(), "web".into(), "".into(), cur.into()];
            c.cells.get(&("kpi_daily", key)).cloned()
        };
        assert_eq!(kpi(&one, "first_purchases", 3 * DAY, "EUR"), Some(vec![1, 5_000_000]));
        assert_eq!(kpi(&two, "first_purchases", 3 * DAY, "EUR"), None);
        assert_eq!(kpi(&two, "first_purchases", DAY, "USD"), Some(vec![1, 5_000_000]));
        assert_eq!(kpi(&two, "repeat_customers", 3 * DAY, ""), Some(vec![1, 0]));
        assert_eq!(kpi(&two, "orders", DAY, ""), Some(vec![1, 0]), "orders are counted once, across currencies");
        let d = diff(&one.cells, &two.cells);
        let first_eur = d
            .iter()
            .find(|(t, k, _)| *t == "kpi_daily" && k[0] == Key::from("first_purchases") && k[5] == Key::from("EUR"));
        assert_eq!(first_eur.map(|x| x.2.clone()), Some(vec![-1, -5_000_000]), "taken back from the later day");
        assert!(diff(&two.cells, &two.cells).is_empty());
        assert_eq!(two.customer.as_ref().map(|c| (c.orders, c.currency_orders)), Some((2, 1)));
    }
}
