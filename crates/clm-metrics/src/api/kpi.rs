//! KPI arithmetic over the aggregates of one slice (time range, model, channel, campaign): the
//! numbers behind GetStageMetrics, ListKpiSeries, GetScorecard and WatchKpis. Definitions are
//! in `docs/metrics.md`.

use std::collections::HashMap;

use clm_platform::Result;
use clm_proto::metrics::v1 as pb;
use sea_orm::ConnectionTrait;

use clm_platform::TenantId;

use crate::domain::kpi::{Counter, KpiKind};
use crate::domain::{self, DAY, ratio};
use crate::store::read::{self, Group, KpiRow, Slice, funnel};

/// The KPI a request names (`None`: unspecified or unknown): the edge where a KPI's number
/// becomes a [`KpiKind`].
pub fn kpi_kind(raw: i32) -> Option<KpiKind> {
    Some(match pb::Kpi::try_from(raw).ok()? {
        pb::Kpi::Unspecified => return None,
        pb::Kpi::NewContacts => KpiKind::NewContacts,
        pb::Kpi::Leads => KpiKind::Leads,
        pb::Kpi::CostPerLead => KpiKind::CostPerLead,
        pb::Kpi::LeadQualityRate => KpiKind::LeadQualityRate,
        pb::Kpi::NewCustomers => KpiKind::NewCustomers,
        pb::Kpi::CloseRate => KpiKind::CloseRate,
        pb::Kpi::Revenue => KpiKind::Revenue,
        pb::Kpi::AverageDealSize => KpiKind::AverageDealSize,
        pb::Kpi::AverageOrderValue => KpiKind::AverageOrderValue,
        pb::Kpi::TimeToCloseDays => KpiKind::TimeToCloseDays,
        pb::Kpi::Cac => KpiKind::Cac,
        pb::Kpi::ConversionRate => KpiKind::ConversionRate,
        pb::Kpi::ChurnRate => KpiKind::ChurnRate,
        pb::Kpi::RetentionRate => KpiKind::RetentionRate,
        pb::Kpi::RepeatPurchaseRate => KpiKind::RepeatPurchaseRate,
        pb::Kpi::PurchaseFrequency => KpiKind::PurchaseFrequency,
        pb::Kpi::Nps => KpiKind::Nps,
        pb::Kpi::Csat => KpiKind::Csat,
        pb::Kpi::Ces => KpiKind::Ces,
        pb::Kpi::ReferralRate => KpiKind::ReferralRate,
        pb::Kpi::CustomerLifetimeValue => KpiKind::CustomerLifetimeValue,
        pb::Kpi::ClvToCacRatio => KpiKind::ClvToCacRatio,
    })
}

/// A KPI as the API names it.
pub fn kpi_pb(k: KpiKind) -> pb::Kpi {
    match k {
        KpiKind::NewContacts => pb::Kpi::NewContacts,
        KpiKind::Leads => pb::Kpi::Leads,
        KpiKind::CostPerLead => pb::Kpi::CostPerLead,
        KpiKind::LeadQualityRate => pb::Kpi::LeadQualityRate,
        KpiKind::NewCustomers => pb::Kpi::NewCustomers,
        KpiKind::CloseRate => pb::Kpi::CloseRate,
        KpiKind::Revenue => pb::Kpi::Revenue,
        KpiKind::AverageDealSize => pb::Kpi::AverageDealSize,
        KpiKind::AverageOrderValue => pb::Kpi::AverageOrderValue,
        KpiKind::TimeToCloseDays => pb::Kpi::TimeToCloseDays,
        KpiKind::Cac => pb::Kpi::Cac,
        KpiKind::ConversionRate => pb::Kpi::ConversionRate,
        KpiKind::ChurnRate => pb::Kpi::ChurnRate,
        KpiKind::RetentionRate => pb::Kpi::RetentionRate,
        KpiKind::RepeatPurchaseRate => pb::Kpi::RepeatPurchaseRate,
        KpiKind::PurchaseFrequency => pb::Kpi::PurchaseFrequency,
        KpiKind::Nps => pb::Kpi::Nps,
        KpiKind::Csat => pb::Kpi::Csat,
        KpiKind::Ces => pb::Kpi::Ces,
        KpiKind::ReferralRate => pb::Kpi::ReferralRate,
        KpiKind::CustomerLifetimeValue => pb::Kpi::CustomerLifetimeValue,
        KpiKind::ClvToCacRatio => pb::Kpi::ClvToCacRatio,
    }
}

/// Counters of a slice: name → (count, sum) in the main currency, plus the currencies seen.
/// Sums are i128: money sums in µ-units pass i64 at 9.2 × 10^12 units (docs/metrics.md § Money).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub by_name: HashMap<Counter, (i64, i128)>,
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
        let mut by_name: HashMap<Counter, (i64, i128)> = HashMap::new();
        for r in rows.iter().filter(|r| r.currency.is_empty() || r.currency == currency) {
            let e = by_name.entry(r.name).or_default();
            e.0 = e.0.saturating_add(r.n);
            e.1 = e.1.saturating_add(r.s);
        }
        let other_currencies = currencies.iter().filter(|c| c.0 != currency).map(|c| c.0.to_owned()).collect();
        Self { by_name, currency, other_currencies }
    }

    pub fn n(&self, name: Counter) -> f64 {
        self.by_name.get(&name).map_or(0.0, |v| v.0 as f64)
    }

    pub fn s(&self, name: Counter) -> f64 {
        self.by_name.get(&name).map_or(0.0, |v| v.1 as f64)
    }

    /// A count, exactly.
    pub fn count(&self, name: Counter) -> i64 {
        self.by_name.get(&name).map_or(0, |v| v.0)
    }

    /// A sum (money: µ-units of `currency`), exactly.
    pub fn sum(&self, name: Counter) -> i128 {
        self.by_name.get(&name).map_or(0, |v| v.1)
    }

    /// The sum of `sum` per one of `per`'s count (0 when there is none), exactly, rounded.
    pub fn per(&self, sum: Counter, per: Counter) -> i128 {
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
        let c = Counters::from_rows_in(
            &read::kpis(db, tenant, &year, &[Counter::Revenue, Counter::Orders], Group::All).await?,
            currency,
        );
        let basis = read::spell_basis(db, tenant, &slice.model).await?;
        let at_end = read::customers_at(db, tenant, slice, basis, slice.end).await? as f64;
        let at_start = read::customers_at(db, tenant, &year, basis, year.start).await? as f64;
        let lost = read::customers_lost(db, tenant, &year, basis, year.start, year.end).await? as f64;
        Ok(Self {
            average_order_value: ratio(c.s(Counter::Revenue), c.n(Counter::Revenue)),
            orders_per_customer_year: ratio(c.n(Counter::Orders), at_end),
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
        let rows = read::kpis(db, tenant, slice, Counter::ALL, Group::All).await?;
        let c = Counters::from_rows(&rows);
        // Cumulative to the end (as-of figures: repeat rate, referral rate, historical CLV).
        let to_end = Slice { start: i64::MIN / 2, ..slice.clone() };
        let cum =
            Counters::from_rows_in(&read::kpis(db, tenant, &to_end, Counter::ALL, Group::All).await?, &c.currency);
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
            repeat_purchase_rate: ratio(cum.n(Counter::RepeatCustomers), cum.n(Counter::Buyers)),
            purchase_frequency: ratio(c.n(Counter::Orders), purchasers),
            referral_rate: ratio(referring, at_end),
            historical_clv: ratio(cum.s(Counter::Revenue), cum.n(Counter::CurrencyBuyers)),
            historical_clv_micros: cum.per(Counter::Revenue, Counter::CurrencyBuyers),
            predicted_clv: clv.predicted(),
            annual_churn: clv.annual_churn,
            currency,
            c,
        })
    }

    /// First purchases' revenue ÷ their count.
    pub fn average_deal_size(&self) -> f64 {
        ratio(self.c.s(Counter::FirstPurchases), self.c.n(Counter::FirstPurchases))
    }

    pub fn cac(&self) -> f64 {
        ratio(self.c.s(Counter::AcquisitionCost), self.c.n(Counter::NewCustomers))
    }

    pub fn nps(&self) -> f64 {
        ratio((self.c.n(Counter::NpsPromoters) - self.c.n(Counter::NpsDetractors)) * 100.0, self.c.n(Counter::NpsTotal))
    }

    pub fn csat(&self) -> f64 {
        ratio(self.c.n(Counter::CsatSatisfied) * 100.0, self.c.n(Counter::CsatTotal))
    }

    pub fn ces(&self) -> f64 {
        ratio(self.c.s(Counter::CesTotal), self.c.n(Counter::CesTotal))
    }

    /// One KPI's value and the sample it rests on (money in currency units, times in days).
    pub fn kpi(&self, k: KpiKind) -> (f64, i64) {
        let c = &self.c;
        let units = |micros: f64| micros / 1e6;
        let n = |name: Counter| c.n(name) as i64;
        match k {
            KpiKind::NewContacts => (c.n(Counter::NewContacts), n(Counter::NewContacts)),
            KpiKind::Leads => (c.n(Counter::Leads), n(Counter::Leads)),
            KpiKind::CostPerLead => {
                (units(ratio(c.s(Counter::AcquisitionCost), c.n(Counter::Leads))), n(Counter::Leads))
            }
            KpiKind::LeadQualityRate => (self.lead_quality_rate, n(Counter::Leads)),
            KpiKind::NewCustomers => (c.n(Counter::NewCustomers), n(Counter::NewCustomers)),
            KpiKind::CloseRate => (ratio(c.n(Counter::LeadsWon), c.n(Counter::Leads)), n(Counter::Leads)),
            KpiKind::Revenue => (units(c.s(Counter::Revenue)), n(Counter::Revenue)),
            KpiKind::AverageDealSize => (units(self.average_deal_size()), n(Counter::FirstPurchases)),
            KpiKind::AverageOrderValue => {
                (units(ratio(c.s(Counter::Revenue), c.n(Counter::Revenue))), n(Counter::Revenue))
            }
            KpiKind::TimeToCloseDays => {
                (self.median_time_to_close.map_or(0.0, |t| t as f64 / DAY as f64), n(Counter::NewCustomers))
            }
            KpiKind::Cac => (units(self.cac()), n(Counter::NewCustomers)),
            KpiKind::ConversionRate => {
                (ratio(c.n(Counter::NewContactsWon), c.n(Counter::NewContacts)), n(Counter::NewContacts))
            }
            KpiKind::ChurnRate => (self.churn_rate, self.customers_at_start as i64),
            KpiKind::RetentionRate => (self.retention_rate, self.customers_at_start as i64),
            KpiKind::RepeatPurchaseRate => (self.repeat_purchase_rate, n(Counter::Buyers)),
            KpiKind::PurchaseFrequency => (self.purchase_frequency, n(Counter::Orders)),
            KpiKind::Nps => (self.nps(), n(Counter::NpsTotal)),
            KpiKind::Csat => (self.csat(), n(Counter::CsatTotal)),
            KpiKind::Ces => (self.ces(), n(Counter::CesTotal)),
            KpiKind::ReferralRate => (self.referral_rate, self.customers_at_end as i64),
            KpiKind::CustomerLifetimeValue => (units(self.predicted_clv), self.customers_at_end as i64),
            KpiKind::ClvToCacRatio => (ratio(self.predicted_clv, self.cac()), n(Counter::NewCustomers)),
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
        KpiRow { name: name.parse().unwrap(), currency: currency.into(), group: String::new(), day: 0, n, s: s.into() }
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
        assert_eq!(s.kpi(KpiKind::CostPerLead).0, 200.0);
        assert_eq!(s.kpi(KpiKind::CloseRate).0, 0.4);
        assert_eq!(s.kpi(KpiKind::Cac).0, 500.0);
        assert_eq!(s.kpi(KpiKind::Revenue).0, 600.0);
        assert_eq!(s.kpi(KpiKind::AverageDealSize).0, 250.0, "first purchases only");
        assert_eq!(s.kpi(KpiKind::AverageOrderValue).0, 200.0);
        assert_eq!(s.kpi(KpiKind::Nps).0, 30.0);
        assert_eq!(s.kpi(KpiKind::Csat).0, 75.0);
        assert_eq!(s.kpi(KpiKind::Ces).0, 4.5);
        let empty = Snapshot::default();
        assert_eq!(empty.kpi(KpiKind::CloseRate).0, 0.0, "no leads: 0, not NaN");
        assert_eq!(money(1_500_000.0, "EUR").unwrap().nanos, 500_000_000);
    }

    #[test]
    fn money_sums_are_exact_past_i64() {
        // Ten amounts of 10^12 EUR and 0.999999: 9.2 × 10^12 units is where i64 µ-units end.
        let one = 1_000_000_000_000_999_999_i64;
        let rows: Vec<KpiRow> = (0..10).map(|_| row("revenue", "EUR", 1, one)).collect();
        let c = Counters::from_rows(&rows);
        assert_eq!(c.sum(Counter::Revenue), 10 * i128::from(one));
        let m = money_exact(c.sum(Counter::Revenue), "EUR").unwrap();
        assert_eq!((m.units, m.nanos), (10_000_000_000_009, 999_990_000));
        let avg = money_exact(c.per(Counter::Revenue, Counter::Revenue), "EUR").unwrap();
        assert_eq!((avg.units, avg.nanos), (1_000_000_000_000, 999_999_000));
        assert_eq!(per_count(5, 2), 3);
        assert_eq!(per_count(-5, 2), -3);
        assert_eq!(per_count(7, 0), 0);
        assert_eq!(money_exact(i128::MAX, "EUR").unwrap().units, i64::MAX, "saturates");
        assert_eq!(money(f64::MAX, "EUR").unwrap().units, i64::MAX, "saturates");
    }

    #[test]
    fn every_kpi_of_the_api_is_a_kind_and_back() {
        for k in KpiKind::ALL {
            assert_eq!(kpi_kind(kpi_pb(k) as i32), Some(k));
        }
        let named = (1..100).filter(|n| pb::Kpi::try_from(*n).is_ok()).count();
        assert_eq!(named, KpiKind::ALL.len(), "every KPI of the proto has a kind");
        assert_eq!(kpi_kind(pb::Kpi::Unspecified as i32), None);
        assert_eq!(kpi_kind(999), None);
    }
}
