//! How the report writes a figure: every number with its unit (`1,234 contacts`, `31.2%`,
//! `97.10 EUR per customer`), every range with its dates, zero written as zero and a figure that
//! has no value said in words, and goals judged against the part of their period that has
//! elapsed. Pure functions; the page and the charts only place what these return.

use clm_proto::common::v1::Money;
use clm_proto::metrics::v1 as pb;

/// `1234567` → `1,234,567` (negative numbers keep their sign).
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A count with its noun: `0 customers`, `1 customer`, `1,234 customers`.
pub fn count(n: i64, singular: &str, plural: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { singular } else { plural })
}

/// A rate in [0, 1] as a percentage with one decimal: `0.3126` → `31.3%`, `0` → `0.0%`.
pub fn percent(rate: f64) -> String {
    format!("{:.1}%", rate * 100.0)
}

/// Whole units of a money value as a float (for bar lengths and pro-rating).
pub fn units(m: Option<&Money>) -> f64 {
    m.map_or(0.0, |m| m.units as f64 + f64::from(m.nanos) / 1e9)
}

/// An amount with thousands separators and two decimals: `1234.5` → `1,234.50`.
pub fn amount(v: f64) -> String {
    let cents = (v.abs() * 100.0).round() as i64;
    format!("{}{}.{:02}", if v < 0.0 && cents > 0 { "-" } else { "" }, thousands(cents / 100), cents % 100)
}

/// The reporting currency: the first money figure that names one (metrics reports every money
/// figure of a call in one currency), empty when none does.
pub fn reporting_currency<'a>(figures: impl IntoIterator<Item = Option<&'a Money>>) -> String {
    figures
        .into_iter()
        .flatten()
        .find(|m| !m.currency_code.is_empty())
        .map(|m| m.currency_code.clone())
        .unwrap_or_default()
}

/// A money figure that is a quotient (cost per lead, CAC, CLV): metrics leaves it unset when
/// there was nothing to divide or no money at all. With a denominator (`basis > 0`) an unset
/// value means no cost was recorded, so it is zero in the reporting currency; without one it is
/// said in words (`none_text`, e.g. "no customers"), never left blank.
pub fn money_per(m: Option<&Money>, basis: i64, currency: &str, none_text: &str) -> String {
    match m {
        Some(x) if !x.currency_code.is_empty() => format!("{} {}", amount(units(m)), x.currency_code),
        _ if basis > 0 => with_currency(amount(0.0), currency),
        _ => none_text.to_owned(),
    }
}

/// A money total (revenue, acquisition cost): unset means none, which is zero.
pub fn money_total(m: Option<&Money>, currency: &str) -> String {
    match m {
        Some(x) if !x.currency_code.is_empty() => format!("{} {}", amount(units(m)), x.currency_code),
        _ => with_currency(amount(0.0), currency),
    }
}

fn with_currency(v: String, currency: &str) -> String {
    if currency.is_empty() { v } else { format!("{v} {currency}") }
}

/// An NPS (−100 to +100, no decimals) with how many answers it rests on; with none it is said
/// in words, since an NPS of no answers is not 0.
pub fn nps(value: f64, answers: i64) -> String {
    if answers > 0 { signed(value) } else { "no answers".to_owned() }
}

/// A score with its sign and no decimals: `+42`, `-12`, `0`.
pub fn signed(v: f64) -> String {
    if v.abs() < 0.5 { "0".to_owned() } else { format!("{:+.0}", v.round()) }
}

/// A day as `4 Dec 2025` (UTC).
pub fn day(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros).map(|d| d.format("%-d %b %Y").to_string()).unwrap_or_default()
}

/// A calendar month as `Dec 2025` (UTC).
pub fn month(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros).map(|d| d.format("%b %Y").to_string()).unwrap_or_default()
}

/// The range a figure covers: `4 Dec 2025 – 3 Dec 2026` (the end is exclusive, so the last day
/// shown is the one before it when it falls on midnight).
pub fn range(start: i64, end: i64) -> String {
    let last = if end > start { end - 1 } else { end };
    format!("{} – {}", day(start), day(last))
}

/// Share of `[start, end)` that has elapsed at `now`, in [0, 1].
pub fn elapsed_fraction(start: i64, end: i64, now: i64) -> f64 {
    if end <= start {
        return 1.0;
    }
    ((now - start) as f64 / (end - start) as f64).clamp(0.0, 1.0)
}

/// Whether a KPI accumulates over a period (a count or a sum): its value so far grows towards
/// the period's total, so it is judged against the pro-rated target. Rates, averages and scores
/// are judged against the target itself. The same rule the scorecard's health uses
/// (clm-metrics `api::goals::grade`).
pub fn accumulates(kpi: pb::Kpi) -> bool {
    matches!(kpi, pb::Kpi::NewContacts | pb::Kpi::Leads | pb::Kpi::NewCustomers | pb::Kpi::Revenue)
}

/// The value a goal expects by `now`: for an "at least" count or sum, the target pro-rated by
/// the elapsed share of its period (target × elapsed ÷ period length); otherwise the target.
pub fn expected_to_date(kpi: pb::Kpi, direction: pb::GoalDirection, target: f64, elapsed: f64) -> f64 {
    if accumulates(kpi) && direction != pb::GoalDirection::AtMost { target * elapsed.clamp(0.0, 1.0) } else { target }
}

/// The unit a KPI is measured in, for a goal's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A count of these (singular, plural).
    Count(&'static str, &'static str),
    /// A share in [0, 1], shown as a percentage.
    Rate,
    /// Money in the reporting currency.
    Money,
    /// An NPS, −100 to +100.
    Nps,
    /// A percentage already in 0–100 (CSAT).
    Percent,
    /// A plain number with this suffix (CES points, days, purchases per customer, ×).
    Plain(&'static str),
}

pub fn unit(kpi: pb::Kpi) -> Unit {
    use pb::Kpi as K;
    match kpi {
        K::NewContacts => Unit::Count("contact", "contacts"),
        K::Leads => Unit::Count("lead", "leads"),
        K::NewCustomers => Unit::Count("customer", "customers"),
        K::LeadQualityRate
        | K::CloseRate
        | K::ConversionRate
        | K::ChurnRate
        | K::RetentionRate
        | K::RepeatPurchaseRate
        | K::ReferralRate => Unit::Rate,
        K::CostPerLead | K::Revenue | K::AverageDealSize | K::Cac | K::AverageOrderValue | K::CustomerLifetimeValue => {
            Unit::Money
        }
        K::Nps => Unit::Nps,
        K::Csat => Unit::Percent,
        K::Ces => Unit::Plain(" of 7"),
        K::TimeToCloseDays => Unit::Plain(" days"),
        K::PurchaseFrequency => Unit::Plain(" purchases per buyer"),
        K::ClvToCacRatio => Unit::Plain("×"),
        K::Unspecified => Unit::Plain(""),
    }
}

/// A KPI value with its unit: `16 contacts`, `31.2%`, `97.10 EUR`, `+42`, `3.1×`.
pub fn kpi_value(kpi: pb::Kpi, v: f64, currency: &str) -> String {
    match unit(kpi) {
        Unit::Count(one, many) => {
            // Pro-rated targets are fractional; a count so far is whole.
            if (v - v.round()).abs() < 1e-9 { count(v.round() as i64, one, many) } else { format!("{v:.1} {many}") }
        }
        Unit::Rate => percent(v),
        Unit::Money => with_currency(amount(v), currency),
        Unit::Nps => signed(v),
        Unit::Percent => format!("{v:.1}%"),
        Unit::Plain(suffix) => format!("{v:.1}{suffix}"),
    }
}

/// A goal's period and how far into it `now` is: `Dec 2026 · day 3 of 31 (9% elapsed)`.
pub fn goal_period(period: pb::Granularity, start: i64, end: i64, now: i64) -> String {
    let days = ((end - start) as f64 / 86_400e6).round() as i64;
    let day_of = ((now - start).max(0) / 86_400_000_000 + 1).min(days.max(1));
    let name = match period {
        pb::Granularity::Week => format!("week of {}", day(start)),
        pb::Granularity::Quarter => format!("quarter from {}", month(start)),
        _ => month(start),
    };
    format!("{name} · day {day_of} of {days} ({:.0}% elapsed)", elapsed_fraction(start, end, now) * 100.0)
}

/// Health as words and the CSS class that colours it.
pub fn health(h: i32) -> (&'static str, &'static str) {
    match pb::GoalHealth::try_from(h).unwrap_or_default() {
        pb::GoalHealth::OnTrack => ("on track", "ok"),
        pb::GoalHealth::AtRisk => ("at risk", "risk"),
        pb::GoalHealth::OffTrack => ("off track", "off"),
        pb::GoalHealth::Unspecified => ("not judged", "none"),
    }
}

/// A key as a label: `paid_search` → `Paid search`; an empty key says what it means.
pub fn label(key: &str, empty: &str) -> String {
    let mut chars = key.trim().chars();
    match chars.next() {
        None => empty.to_owned(),
        Some(first) => first.to_uppercase().chain(chars.map(|c| if c == '_' { ' ' } else { c })).collect(),
    }
}

/// Text escaped for HTML and SVG.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Width in px of `text` at `font_px` in a proportional sans-serif (an upper bound: 0.62 em
/// per character), so labels get the room they need instead of being cut.
pub fn text_width(text: &str, font_px: f64) -> f64 {
    text.chars().count() as f64 * font_px * 0.62
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur(units: i64, nanos: i32) -> Money {
        Money { currency_code: "EUR".into(), units, nanos }
    }

    #[test]
    fn counts_have_separators_and_nouns() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(-1234), "-1,234");
        assert_eq!(count(0, "customer", "customers"), "0 customers");
        assert_eq!(count(1, "customer", "customers"), "1 customer");
        assert_eq!(count(2000, "contact", "contacts"), "2,000 contacts");
    }

    #[test]
    fn money_has_its_currency_and_zero_is_written() {
        assert_eq!(amount(1234.5), "1,234.50");
        assert_eq!(amount(0.004), "0.00");
        assert_eq!(amount(-2.5), "-2.50");
        assert_eq!(money_per(Some(&eur(97, 100_000_000)), 3, "EUR", "no customers"), "97.10 EUR");
        // Unset with customers: no cost was recorded (organic, referral) → zero, not blank.
        assert_eq!(money_per(None, 12, "EUR", "no customers"), "0.00 EUR");
        assert_eq!(money_per(None, 0, "EUR", "no customers"), "no customers");
        assert_eq!(money_total(None, "EUR"), "0.00 EUR");
        assert_eq!(money_total(Some(&eur(1500, 0)), ""), "1,500.00 EUR");
        assert_eq!(reporting_currency([None, Some(&Money::default()), Some(&eur(1, 0))]), "EUR");
        assert_eq!(reporting_currency([None]), "");
    }

    #[test]
    fn rates_scores_and_zero() {
        assert_eq!(percent(0.0), "0.0%");
        assert_eq!(percent(0.3126), "31.3%");
        assert_eq!(percent(1.0), "100.0%");
        assert_eq!(nps(42.4, 10), "+42");
        assert_eq!(nps(-12.0, 10), "-12");
        assert_eq!(nps(0.0, 10), "0", "a real zero is shown");
        assert_eq!(nps(-0.3, 10), "0");
        assert_eq!(nps(0.0, 0), "no answers", "no answers is not an NPS of 0");
    }

    #[test]
    fn kpi_values_carry_units() {
        assert_eq!(kpi_value(pb::Kpi::NewContacts, 16.0, "EUR"), "16 contacts");
        assert_eq!(kpi_value(pb::Kpi::NewContacts, 1.0, "EUR"), "1 contact");
        assert_eq!(kpi_value(pb::Kpi::NewContacts, 15.5, "EUR"), "15.5 contacts");
        assert_eq!(kpi_value(pb::Kpi::CloseRate, 0.3, "EUR"), "30.0%");
        assert_eq!(kpi_value(pb::Kpi::Cac, 120.0, "EUR"), "120.00 EUR");
        assert_eq!(kpi_value(pb::Kpi::Cac, 0.0, ""), "0.00");
        assert_eq!(kpi_value(pb::Kpi::Nps, 30.0, "EUR"), "+30");
        assert_eq!(kpi_value(pb::Kpi::Csat, 84.0, "EUR"), "84.0%");
        assert_eq!(kpi_value(pb::Kpi::ClvToCacRatio, 3.04, "EUR"), "3.0×");
        assert_eq!(kpi_value(pb::Kpi::TimeToCloseDays, 12.0, "EUR"), "12.0 days");
    }

    #[test]
    fn ranges_and_periods_name_their_dates() {
        let d = |y, m, dd| {
            chrono::NaiveDate::from_ymd_opt(y, m, dd)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc()
                .timestamp_micros()
        };
        assert_eq!(range(d(2025, 12, 4), d(2026, 12, 4)), "4 Dec 2025 – 3 Dec 2026");
        assert_eq!(range(d(2025, 12, 4), d(2026, 12, 3) + 3_600_000_000), "4 Dec 2025 – 3 Dec 2026");
        let (start, end) = (d(2026, 12, 1), d(2027, 1, 1));
        let now = d(2026, 12, 3) + 12 * 3_600_000_000;
        assert_eq!(goal_period(pb::Granularity::Month, start, end, now), "Dec 2026 · day 3 of 31 (8% elapsed)");
        assert_eq!(goal_period(pb::Granularity::Month, start, end, end + 1), "Dec 2026 · day 31 of 31 (100% elapsed)");
        let week = goal_period(pb::Granularity::Week, d(2026, 11, 30), d(2026, 12, 7), now);
        assert_eq!(week, "week of 30 Nov 2026 · day 4 of 7 (50% elapsed)");
    }

    #[test]
    fn goals_are_judged_against_the_elapsed_part_of_their_period() {
        let (start, end) = (0, 31 * 86_400_000_000);
        assert!((elapsed_fraction(start, end, 0)).abs() < 1e-12);
        assert!((elapsed_fraction(start, end, end / 2) - 0.5).abs() < 1e-12);
        assert!((elapsed_fraction(start, end, end * 2) - 1.0).abs() < 1e-12, "clamped after the period");
        assert!((elapsed_fraction(start, end, -5)).abs() < 1e-12, "clamped before the period");
        assert!((elapsed_fraction(5, 5, 5) - 1.0).abs() < 1e-12, "an empty period is over");
        let at_least = pb::GoalDirection::AtLeast;
        // 166 new contacts a month, 10% into the month: 16.6 expected by now.
        assert!((expected_to_date(pb::Kpi::NewContacts, at_least, 166.0, 0.1) - 16.6).abs() < 1e-9);
        assert!(
            (expected_to_date(pb::Kpi::Revenue, pb::GoalDirection::Unspecified, 1000.0, 0.25) - 250.0).abs() < 1e-9
        );
        // Rates and scores are not pro-rated: 30% close rate is 30% on any day.
        assert!((expected_to_date(pb::Kpi::CloseRate, at_least, 0.3, 0.1) - 0.3).abs() < 1e-12);
        assert!((expected_to_date(pb::Kpi::Nps, at_least, 30.0, 0.1) - 30.0).abs() < 1e-12);
        // A cap on a sum holds for the whole period: spending less than the cap so far is not
        // "ahead", so it is compared with the cap itself.
        assert!((expected_to_date(pb::Kpi::Revenue, pb::GoalDirection::AtMost, 1000.0, 0.25) - 1000.0).abs() < 1e-9);
    }

    #[test]
    fn labels_and_widths() {
        assert_eq!(label("paid_search", "(none)"), "Paid search");
        assert_eq!(label("awareness", "(none)"), "Awareness");
        assert_eq!(label("", "(no channel)"), "(no channel)");
        assert_eq!(label("  ", "(no channel)"), "(no channel)");
        assert_eq!(esc(r#"<a href="x">&"#), "&lt;a href=&quot;x&quot;&gt;&amp;");
        assert!(text_width("Organic search", 13.0) > text_width("Email", 13.0));
        assert!((text_width("", 13.0)).abs() < 1e-12);
        let (words, class) = health(pb::GoalHealth::AtRisk as i32);
        assert_eq!((words, class), ("at risk", "risk"));
        assert_eq!(health(99).0, "not judged");
    }
}
