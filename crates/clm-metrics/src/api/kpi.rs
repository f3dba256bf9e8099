//! KPI arithmetic over the aggregates of one slice (time range, model, channel, campaign): the
//! numbers behind GetStageMetrics, ListKpiSeries, GetScorecard and WatchKpis. Definitions are
//! in `docs/metrics.md`.

use std::collections::HashMap;

use clm_platform::Result;
use clm_proto::metrics::v1 as pb;
use sea_orm::ConnectionTrait;

use crate::domain::{self, DAY, ratio};
use clm_platform::TenantId;

use crate::store::read::{self, KpiRow, Slice, funnel};

/// Every counter a snapshot reads (docs/metrics.md § Counters).
pub const NAMES: &[&str] = &[
    "new_contacts",
    "new_contacts_won",
    "acquisition_cost",
    "leads",
    "leads_won",
    "new_customers",
    "revenue",
    "orders",
    "repeat_orders",
    "repeat_customers",
    "first_purchases",
    "buyers",
    "currency_buyers",
    "customers_in",
    "customers_out",
    "dormant",
    "churned",
    "reactivated",
    "nps_total",
    "nps_promoters",
    "nps_detractors",
    "csat_total",
    "csat_satisfied",
    "ces_total",
    "ces_easy",
    "referrals",
    "referrers",
    "reviews",
    "reviewers",
];

/// Counters of a slice: name → (count, sum) in the main currency, plus the currencies seen.
/// Sums are i128: money sums in µ-units pass i64 at 9.2 × 10^12 units (docs/metrics.md § Money).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub by_name: HashMap<String, (i64, i128)>,
    pub currency: String,
    pub other_currencies: Vec<String>,
}

impl Counters {
    /// Fold rows; money rows of currencies other than the main one are left out (and listed).
    /// The reporting currency is the one with the largest amounts in the rows.
    pub fn from_rows(rows: &[KpiRow]) -> Self {
        Self::from_rows_in(rows, "")
    }

    /// Fold rows with `currency` as the reporting currency (empty: the largest in the rows).
    pub fn from_rows_in(rows: &[KpiRow], currency: &str) -> Self {
        let mut money: HashMap<&str, i128> = HashMap::new();
        for r in rows.iter().filter(|r| !r.currency.is_empty()) {
            *money.entry(r.currency.as_str()).or_default() += r.s.abs();
        }
        let mut currencies: Vec<(&str, i128)> = money.into_iter().collect();
        currencies.sort_by(|a, b| (b.0 == currency).cmp(&(a.0 == currency)).then(b.1.cmp(&a.1)).then(a.0.cmp(b.0)));
        let currency = if currency.is_empty() {
            currencies.first().map(|c| c.0.to_owned()).unwrap_or_default()
        } else {
            currency.to_owned()
        };
        let mut by_name: HashMap<String, (i64, i128)> = HashMap::new();
        for r in rows.iter().filter(|r| r.currency.is_empty() || r.currency == currency) {
            let e = by_name.entry(r.name.clone()).or_default();
            e.0 = e.0.saturating_add(r.n);
            e.1 = e.1.saturating_add(r.s);
        }
        let other_currencies = currencies.iter().filter(|c| c.0 != currency).map(|c| c.0.to_owned()).collect();
        Self { by_name, currency, other_currencies }
    }

    pub fn n(&self, name: &str) -> f64 {
        self.by_name.get(name).map_or(0.0, |v| v.0 as f64)
    }

    pub fn s(&self, name: &str) -> f64 {
        self.by_name.get(name).map_or(0.0, |v| v.1 as f64)
    }

    /// A count, exactly.
    pub fn count(&self, name: &str) -> i64 {
        self.by_name.get(name).map_or(0, |v| v.0)
    }

    /// A sum (money: µ-units of `currency`), exactly.
    pub fn sum(&self, name: &str) -> i128 {
        self.by_name.get(name).map_or(0, |v| v.1)
    }

    /// The sum of `sum` per one of `per`'s count (0 when there is none), exactly, rounded.
    pub fn per(&self, sum: &str, per: &str) -> i128 {
        per_count(self.sum(sum), self.count(per))
    }
}

/// `sum ÷ n` rounded half away from zero; 0 when `n` is not positive.
pub fn per_count(sum: i128, n: i64) -> i128 {
    if n <= 0 {
        return 0;
    }
    let n = i128::from(n);
    let half = n / 2;
    if sum >= 0 { (sum + half) / n } else { (sum - half) / n }
}

/// Every KPI of a slice, as numbers (money in µ-units of `currency`).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub c: Counters,
    pub currency: String,
    pub lead_quality_rate: f64,
    pub median_time_to_close: Option<i64>,
    pub p90_time_to_close: Option<i64>,
    pub customers_at_start: f64,
    pub customers_at_end: f64,
    /// Customers at the start who left during the range.
    pub customers_lost: f64,
    pub churn_rate: f64,
    pub retention_rate: f64,
    pub repeat_purchase_rate: f64,
    pub purchase_frequency: f64,
    pub referral_rate: f64,
    pub historical_clv: f64,
    /// Revenue to the end per contact who bought in the reporting currency, µ-units, exactly.
    pub historical_clv_micros: i128,
    pub predicted_clv: f64,
    pub annual_churn: f64,
}

/// The lifetime-value model's parts over the year before `end` (docs/metrics.md § CLV):
/// average order value (µ-units of the reporting currency), orders per customer per year,
/// yearly churn.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClvModel {
    pub average_order_value: f64,
    pub orders_per_customer_year: f64,
    pub annual_churn: f64,
}

impl ClvModel {
    /// `currency`: the reporting currency (empty: the year's largest).
    pub async fn load(db: &impl ConnectionTrait, tenant: &TenantId, slice: &Slice, currency: &str) -> Result<Self> {
        let year = Slice { start: slice.end - 365 * DAY, ..slice.clone() };
        let c = Counters::from_rows_in(&read::kpis(db, tenant, &year, &["revenue", "orders"], "").await?, currency);
        let basis = read::spell_basis(db, tenant, &slice.model).await?;
        let at_end = read::customers_at(db, tenant, slice, basis, slice.end).await? as f64;
        let at_start = read::customers_at(db, tenant, &year, basis, year.start).await? as f64;
        let lost = read::customers_lost(db, tenant, &year, basis, year.start, year.end).await? as f64;
        Ok(Self {
            average_order_value: ratio(c.s("revenue"), c.n("revenue")),
            orders_per_customer_year: ratio(c.n("orders"), at_end),
            annual_churn: ratio(lost, at_start),
        })
    }

    pub fn lifespan_years(&self) -> f64 {
        domain::expected_lifespan_years(self.annual_churn)
    }

    pub fn predicted(&self) -> f64 {
        domain::predicted_clv(self.average_order_value, self.orders_per_customer_year, self.lifespan_years())
    }
}

impl Snapshot {
    pub async fn load(
        db: &impl ConnectionTrait,
        tenant: &TenantId,
        slice: &Slice,
        lead_threshold: i32,
    ) -> Result<Self> {
        let rows = read::kpis(db, tenant, slice, NAMES, "").await?;
        let c = Counters::from_rows(&rows);
        // Cumulative to the end (as-of figures: repeat rate, referral rate, historical CLV).
        let to_end = Slice { start: i64::MIN / 2, ..slice.clone() };
        let cum = Counters::from_rows_in(&read::kpis(db, tenant, &to_end, NAMES, "").await?, &c.currency);
        let (leads, good) = read::lead_quality(db, tenant, slice, lead_threshold).await?;
        let close = funnel::histogram(db, tenant, slice, "__time_to_close").await?;
        let basis = read::spell_basis(db, tenant, &slice.model).await?;
        let at_start = read::customers_at(db, tenant, slice, basis, slice.start).await? as f64;
        let at_end = read::customers_at(db, tenant, slice, basis, slice.end).await? as f64;
        let lost = read::customers_lost(db, tenant, slice, basis, slice.start, slice.end).await? as f64;
        let referring = read::referring_customers_at(db, tenant, slice, basis, slice.end).await? as f64;
        let clv = ClvModel::load(db, tenant, slice, &c.currency).await?;
        let currency = c.currency.clone();
        let purchasers = read::purchasers(db, tenant, slice).await? as f64;
        let churn_rate = ratio(lost, at_start);
        Ok(Self {
            lead_quality_rate: ratio(good as f64, leads as f64),
            median_time_to_close: domain::quantile(&close, 0.5),
            p90_time_to_close: domain::quantile(&close, 0.9),
            customers_at_start: at_start,
            customers_at_end: at_end,
            customers_lost: lost,
            churn_rate,
            retention_rate: if at_start > 0.0 { 1.0 - churn_rate } else { 0.0 },
            repeat_purchase_rate: ratio(cum.n("repeat_customers"), cum.n("buyers")),
            purchase_frequency: ratio(c.n("orders"), purchasers),
            referral_rate: ratio(referring, at_end),
            historical_clv: ratio(cum.s("revenue"), cum.n("currency_buyers")),
            historical_clv_micros: cum.per("revenue", "currency_buyers"),
            predicted_clv: clv.predicted(),
            annual_churn: clv.annual_churn,
            currency,
            c,
        })
    }

    /// First purchases' revenue ÷ their count.
    pub fn average_deal_size(&self) -> f64 {
        ratio(self.c.s("first_purchases"), self.c.n("first_purchases"))
    }

    pub fn cac(&self) -> f64 {
        ratio(self.c.s("acquisition_cost"), self.c.n("new_customers"))
    }

    pub fn nps(&self) -> f64 {
        ratio((self.c.n("nps_promoters") - self.c.n("nps_detractors")) * 100.0, self.c.n("nps_total"))
    }

    pub fn csat(&self) -> f64 {
        ratio(self.c.n("csat_satisfied") * 100.0, self.c.n("csat_total"))
    }

    pub fn ces(&self) -> f64 {
        ratio(self.c.s("ces_total"), self.c.n("ces_total"))
    }

    /// One KPI's value and the sample it rests on (money in currency units, times in days).
    pub fn kpi(&self, k: pb::Kpi) -> (f64, i64) {
        let c = &self.c;
        let units = |micros: f64| micros / 1e6;
        let n = |name: &str| c.n(name) as i64;
        match k {
            pb::Kpi::NewContacts => (c.n("new_contacts"), n("new_contacts")),
            pb::Kpi::Leads => (c.n("leads"), n("leads")),
            pb::Kpi::CostPerLead => (units(ratio(c.s("acquisition_cost"), c.n("leads"))), n("leads")),
            pb::Kpi::LeadQualityRate => (self.lead_quality_rate, n("leads")),
            pb::Kpi::NewCustomers => (c.n("new_customers"), n("new_customers")),
            pb::Kpi::CloseRate => (ratio(c.n("leads_won"), c.n("leads")), n("leads")),
            pb::Kpi::Revenue => (units(c.s("revenue")), n("revenue")),
            pb::Kpi::AverageDealSize => (units(self.average_deal_size()), n("first_purchases")),
            pb::Kpi::AverageOrderValue => (units(ratio(c.s("revenue"), c.n("revenue"))), n("revenue")),
            pb::Kpi::TimeToCloseDays => {
                (self.median_time_to_close.map_or(0.0, |t| t as f64 / DAY as f64), n("new_customers"))
            }
            pb::Kpi::Cac => (units(self.cac()), n("new_customers")),
            pb::Kpi::ConversionRate => (ratio(c.n("new_contacts_won"), c.n("new_contacts")), n("new_contacts")),
            pb::Kpi::ChurnRate => (self.churn_rate, self.customers_at_start as i64),
            pb::Kpi::RetentionRate => (self.retention_rate, self.customers_at_start as i64),
            pb::Kpi::RepeatPurchaseRate => (self.repeat_purchase_rate, n("buyers")),
            pb::Kpi::PurchaseFrequency => (self.purchase_frequency, n("orders")),
            pb::Kpi::Nps => (self.nps(), n("nps_total")),
            pb::Kpi::Csat => (self.csat(), n("csat_total")),
            pb::Kpi::Ces => (self.ces(), n("ces_total")),
            pb::Kpi::ReferralRate => (self.referral_rate, self.customers_at_end as i64),
            pb::Kpi::CustomerLifetimeValue => (units(self.predicted_clv), self.customers_at_end as i64),
            pb::Kpi::ClvToCacRatio => (ratio(self.predicted_clv, self.cac()), n("new_customers")),
            pb::Kpi::Unspecified => (0.0, 0),
        }
    }
}

/// Money in `currency` from µ-units (an estimate: `as` saturates, never wraps). Sums and
/// averages of recorded amounts use [`money_exact`].
pub fn money(micros: f64, currency: &str) -> Option<clm_proto::common::v1::Money> {
    money_exact(micros.round() as i128, currency)
}

/// Money in `currency` from µ-units, exactly (units beyond i64 — never reached: that is 10^6
/// times what one stored counter holds — saturate).
pub fn money_exact(micros: i128, currency: &str) -> Option<clm_proto::common::v1::Money> {
    if currency.is_empty() {
        return None;
    }
    let units = micros / 1_000_000;
    let units = i64::try_from(units).unwrap_or(if units < 0 { i64::MIN } else { i64::MAX });
    Some(clm_proto::common::v1::Money {
        currency_code: currency.to_owned(),
        units,
        nanos: i32::try_from((micros % 1_000_000) * 1000).unwrap_or(0),
    })
}

#[cfg(test)]
#[allow(clippy::float_cmp)]
mod tests {
    use super::*;

    fn row(name: &str, currency: &str, n: i64, s: i64) -> KpiRow {
        KpiRow { name: name.into(), currency: currency.into(), group: String::new(), day: 0, n, s: s.into() }
    }

    #[test]
    fn stage_kpis_hand_checked() {
        // 10 leads, 4 became customers, 2000 EUR spent, 3 orders worth 600 EUR.
        let c = Counters::from_rows(&[
            row("leads", "", 10, 0),
            row("new_customers", "", 4, 0),
            row("leads_won", "", 4, 0),
            row("acquisition_cost", "EUR", 20, 2_000_000_000),
            row("acquisition_cost", "USD", 1, 5_000_000),
            row("revenue", "EUR", 3, 600_000_000),
            row("first_purchases", "EUR", 2, 500_000_000),
            row("nps_total", "", 10, 0),
            row("nps_promoters", "", 5, 0),
            row("nps_detractors", "", 2, 0),
            row("csat_total", "", 4, 0),
            row("csat_satisfied", "", 3, 0),
            row("ces_total", "", 2, 9),
        ]);
        assert_eq!(c.currency, "EUR");
        assert_eq!(c.other_currencies, vec!["USD"]);
        let s = Snapshot { c, currency: "EUR".into(), ..Snapshot::default() };
        assert_eq!(s.kpi(pb::Kpi::CostPerLead).0, 200.0);
        assert_eq!(s.kpi(pb::Kpi::CloseRate).0, 0.4);
        assert_eq!(s.kpi(pb::Kpi::Cac).0, 500.0);
        assert_eq!(s.kpi(pb::Kpi::Revenue).0, 600.0);
        assert_eq!(s.kpi(pb::Kpi::AverageDealSize).0, 250.0, "first purchases only");
        assert_eq!(s.kpi(pb::Kpi::AverageOrderValue).0, 200.0);
        assert_eq!(s.kpi(pb::Kpi::Nps).0, 30.0);
        assert_eq!(s.kpi(pb::Kpi::Csat).0, 75.0);
        assert_eq!(s.kpi(pb::Kpi::Ces).0, 4.5);
        let empty = Snapshot::default();
        assert_eq!(empty.kpi(pb::Kpi::CloseRate).0, 0.0, "no leads: 0, not NaN");
        assert_eq!(money(1_500_000.0, "EUR").unwrap().nanos, 500_000_000);
    }

    #[test]
    fn money_sums_are_exact_past_i64() {
        // Ten amounts of 10^12 EUR and 0.999999: 9.2 × 10^12 units is where i64 µ-units end.
        let one = 1_000_000_000_000_999_999_i64;
        let rows: Vec<KpiRow> = (0..10).map(|_| row("revenue", "EUR", 1, one)).collect();
        let c = Counters::from_rows(&rows);
        assert_eq!(c.sum("revenue"), 10 * i128::from(one));
        let m = money_exact(c.sum("revenue"), "EUR").unwrap();
        assert_eq!((m.units, m.nanos), (10_000_000_000_009, 999_990_000));
        let avg = money_exact(c.per("revenue", "revenue"), "EUR").unwrap();
        assert_eq!((avg.units, avg.nanos), (1_000_000_000_000, 999_999_000));
        assert_eq!(per_count(5, 2), 3);
        assert_eq!(per_count(-5, 2), -3);
        assert_eq!(per_count(7, 0), 0);
        assert_eq!(money_exact(i128::MAX, "EUR").unwrap().units, i64::MAX, "saturates");
        assert_eq!(money(f64::MAX, "EUR").unwrap().units, i64::MAX, "saturates");
    }
}
