//! What metrics counts and what it reports, as types. A [`Counter`] is one of the read model's
//! KPI counters (a contribution adds to it, a snapshot reads it; its [`Counter::key`] is the
//! `name` stored in `kpi_daily` and `contact_kpis`). A [`KpiKind`] is one of the KPIs the API
//! reports (`clm.metrics.v1.Kpi`), parsed once at the edge (`api::kpi_kind`), so nothing past
//! it handles an unknown or unspecified KPI. Definitions: `docs/metrics.md`.

use std::fmt;
use std::str::FromStr;

macro_rules! counters {
    ($($(#[$doc:meta])* $v:ident = $k:literal,)*) => {
        /// A KPI counter of the read model (docs/metrics.md § Counters).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Counter {
            $($(#[$doc])* $v,)*
        }

        impl Counter {
            /// Every counter, in the order of docs/metrics.md.
            pub const ALL: &'static [Counter] = &[$(Counter::$v),*];

            /// The name it is stored under.
            pub fn key(self) -> &'static str {
                match self {
                    $(Counter::$v => $k,)*
                }
            }
        }

        impl FromStr for Counter {
            type Err = UnknownCounter;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($k => Ok(Counter::$v),)*
                    _ => Err(UnknownCounter(s.to_owned())),
                }
            }
        }
    };
}

counters! {
    /// Contacts acquired (attributed to the day of acquisition).
    NewContacts = "new_contacts",
    /// Of those, the ones who became customers.
    NewContactsWon = "new_contacts_won",
    /// Acquisition cost (money).
    AcquisitionCost = "acquisition_cost",
    Leads = "leads",
    /// Leads who became customers (on the lead's day).
    LeadsWon = "leads_won",
    /// Contacts who became customers; the sum is their time to close.
    NewCustomers = "new_customers",
    /// Purchases (money).
    Revenue = "revenue",
    Orders = "orders",
    RepeatOrders = "repeat_orders",
    RepeatCustomers = "repeat_customers",
    /// First purchases (money).
    FirstPurchases = "first_purchases",
    Buyers = "buyers",
    /// Buyers per currency.
    CurrencyBuyers = "currency_buyers",
    CustomersIn = "customers_in",
    CustomersOut = "customers_out",
    Dormant = "dormant",
    Churned = "churned",
    Reactivated = "reactivated",
    /// NPS answers; the sum is their scores.
    NpsTotal = "nps_total",
    NpsPromoters = "nps_promoters",
    NpsDetractors = "nps_detractors",
    CsatTotal = "csat_total",
    CsatSatisfied = "csat_satisfied",
    CesTotal = "ces_total",
    CesEasy = "ces_easy",
    Referrals = "referrals",
    Referrers = "referrers",
    Reviews = "reviews",
    Reviewers = "reviewers",
}

/// A stored counter name this version does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownCounter(pub String);

impl fmt::Display for UnknownCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown KPI counter {:?}", self.0)
    }
}

impl std::error::Error for UnknownCounter {}

impl fmt::Display for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// A KPI the API reports (`clm.metrics.v1.Kpi` without `KPI_UNSPECIFIED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KpiKind {
    NewContacts,
    Leads,
    CostPerLead,
    LeadQualityRate,
    NewCustomers,
    CloseRate,
    Revenue,
    AverageDealSize,
    AverageOrderValue,
    TimeToCloseDays,
    Cac,
    ConversionRate,
    ChurnRate,
    RetentionRate,
    RepeatPurchaseRate,
    PurchaseFrequency,
    Nps,
    Csat,
    Ces,
    ReferralRate,
    CustomerLifetimeValue,
    ClvToCacRatio,
}

impl KpiKind {
    /// Every KPI.
    pub const ALL: [KpiKind; 22] = [
        KpiKind::NewContacts,
        KpiKind::Leads,
        KpiKind::CostPerLead,
        KpiKind::LeadQualityRate,
        KpiKind::NewCustomers,
        KpiKind::CloseRate,
        KpiKind::Revenue,
        KpiKind::AverageDealSize,
        KpiKind::AverageOrderValue,
        KpiKind::TimeToCloseDays,
        KpiKind::Cac,
        KpiKind::ConversionRate,
        KpiKind::ChurnRate,
        KpiKind::RetentionRate,
        KpiKind::RepeatPurchaseRate,
        KpiKind::PurchaseFrequency,
        KpiKind::Nps,
        KpiKind::Csat,
        KpiKind::Ces,
        KpiKind::ReferralRate,
        KpiKind::CustomerLifetimeValue,
        KpiKind::ClvToCacRatio,
    ];

    /// Lower is better: costs, churn and time to close; higher for the others — CES included
    /// (1 very difficult … 7 very easy).
    pub fn lower_is_better(self) -> bool {
        matches!(self, KpiKind::CostPerLead | KpiKind::Cac | KpiKind::ChurnRate | KpiKind::TimeToCloseDays)
    }

    /// A count or a sum, which accumulates over a period (rates and averages do not).
    pub fn accumulates(self) -> bool {
        matches!(self, KpiKind::NewContacts | KpiKind::Leads | KpiKind::NewCustomers | KpiKind::Revenue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_parse_back_from_their_keys() {
        for c in Counter::ALL {
            assert_eq!(c.key().parse::<Counter>(), Ok(*c));
            assert_eq!(c.to_string(), c.key());
        }
        let mut keys: Vec<&str> = Counter::ALL.iter().map(|c| c.key()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), Counter::ALL.len(), "every key once");
        assert_eq!("new_customers".parse::<Counter>(), Ok(Counter::NewCustomers));
        assert_eq!("nope".parse::<Counter>(), Err(UnknownCounter("nope".into())));
        assert_eq!("".parse::<Counter>().map_err(|e| e.to_string()), Err("unknown KPI counter \"\"".into()));
    }

    #[test]
    fn directions_and_pacing() {
        assert!(KpiKind::Cac.lower_is_better());
        assert!(!KpiKind::Ces.lower_is_better());
        assert!(KpiKind::Revenue.accumulates());
        assert!(!KpiKind::Nps.accumulates());
    }
}
