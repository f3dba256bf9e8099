//! Campaign enrolments as metrics keeps them, and the figures of a campaign (docs/metrics.md §
//! Campaigns), on plain values.
//!
//! An enrolment is one fact, keyed by its id, that lifecycle publishes twice: "active" when it
//! begins and "completed"/"exited" when it ends. Either may come first, or twice; the ledger
//! keeps the end once it has seen it ([`Enrolment::supersedes`]), so the row is the same for
//! any arrival order.

use std::collections::{BTreeMap, HashMap};

use super::facts::Money;

/// Where an enrolment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EnrolmentState {
    Active,
    Completed,
    Exited,
}

impl EnrolmentState {
    /// From lifecycle's state text; `None` for one metrics does not know.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "active" => Some(Self::Active),
            "completed" => Some(Self::Completed),
            "exited" => Some(Self::Exited),
            _ => None,
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Completed => "completed",
            Self::Exited => "exited",
        }
    }
}

/// One enrolment of a contact in a campaign, as an event states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    pub id: String,
    pub contact: String,
    pub campaign: String,
    pub campaign_name: String,
    pub state: EnrolmentState,
    pub converted: bool,
    pub enrol_time: i64,
    /// When it ended (an end state); the enrolment time when the event did not say.
    pub finish_time: Option<i64>,
}

impl Enrolment {
    /// Whether this statement replaces `old` of the same enrolment: an end replaces the
    /// beginning, never the other way round; of two ends (which lifecycle does not send) the
    /// later, then the greater state, so any order keeps the same one. The SQL upsert of the
    /// ledger says the same (`store::write::ledger::put_enrolment`).
    pub fn supersedes(&self, old: &Enrolment) -> bool {
        if self.state == EnrolmentState::Active {
            return false;
        }
        old.state == EnrolmentState::Active
            || (self.finish_time, self.state, self.converted) > (old.finish_time, old.state, old.converted)
    }
}

/// Enrolments of one campaign that began in the range, by state and conversion (a query's
/// grouped count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    pub campaign: String,
    pub state: EnrolmentState,
    pub converted: bool,
    pub n: i64,
}

/// A converted enrolment of the range: its contact (the root of its merges) and times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversion {
    pub campaign: String,
    pub contact: String,
    pub enrol_time: i64,
    pub convert_time: i64,
}

/// A purchase of the range, by the root of its contact's merges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purchase {
    pub contact: String,
    pub at: i64,
    pub amount: Money,
}

/// One campaign's figures (docs/metrics.md § Campaigns).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CampaignFigures {
    pub campaign: String,
    pub name: String,
    pub enrolled: i64,
    pub converted: i64,
    pub completed: i64,
    pub exited: i64,
    pub active: i64,
    /// Median µs from enrolment to conversion.
    pub median_to_convert: Option<i64>,
    /// µ-units per currency.
    pub revenue: BTreeMap<String, i128>,
}

impl CampaignFigures {
    /// converted ÷ enrolled, in [0, 1] (converted enrolments are a subset of the enrolled).
    pub fn conversion_rate(&self) -> f64 {
        super::ratio(self.converted as f64, self.enrolled as f64)
    }
}

/// The median of `v` (the mean of the middle two for an even count), `None` when empty.
pub fn median(v: &mut [i64]) -> Option<i64> {
    v.sort_unstable();
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some(v[n / 2 - 1].midpoint(v[n / 2])),
    }
}

/// The figures of each campaign from its tallies, its converted enrolments and the range's
/// purchases of their contacts: revenue counts each purchase once per campaign, when at or
/// after the contact's first conversion in that campaign.
pub fn figures(
    tallies: &[Tally],
    conversions: &[Conversion],
    purchases: &[Purchase],
) -> BTreeMap<String, CampaignFigures> {
    let mut out: BTreeMap<String, CampaignFigures> = BTreeMap::new();
    let row = |out: &mut BTreeMap<String, CampaignFigures>, c: &str| {
        out.entry(c.to_owned()).or_insert_with(|| CampaignFigures { campaign: c.to_owned(), ..Default::default() });
    };
    for t in tallies {
        row(&mut out, &t.campaign);
        let f = out.get_mut(&t.campaign).expect("just made");
        f.enrolled += t.n;
        if t.converted {
            f.converted += t.n;
        }
        match t.state {
            EnrolmentState::Active => f.active += t.n,
            EnrolmentState::Completed => f.completed += t.n,
            EnrolmentState::Exited => f.exited += t.n,
        }
    }
    let mut durations: HashMap<&str, Vec<i64>> = HashMap::new();
    let mut first: HashMap<(&str, &str), i64> = HashMap::new();
    for c in conversions {
        durations.entry(&c.campaign).or_default().push(c.convert_time.saturating_sub(c.enrol_time).max(0));
        let at = first.entry((&c.campaign, &c.contact)).or_insert(c.convert_time);
        *at = (*at).min(c.convert_time);
    }
    for (campaign, mut d) in durations {
        row(&mut out, campaign);
        out.get_mut(campaign).expect("just made").median_to_convert = median(&mut d);
    }
    let mut by_contact: HashMap<&str, Vec<&Purchase>> = HashMap::new();
    for p in purchases {
        by_contact.entry(&p.contact).or_default().push(p);
    }
    for ((campaign, contact), since) in first {
        let Some(f) = out.get_mut(campaign) else { continue };
        for p in by_contact.get(contact).into_iter().flatten().filter(|p| p.at >= since) {
            let sum = f.revenue.entry(p.amount.currency.clone()).or_default();
            *sum = sum.saturating_add(i128::from(p.amount.micros));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(campaign: &str, state: EnrolmentState, converted: bool, n: i64) -> Tally {
        Tally { campaign: campaign.into(), state, converted, n }
    }

    fn enrolment(state: EnrolmentState, converted: bool, finish: Option<i64>) -> Enrolment {
        Enrolment {
            id: "e".into(),
            contact: "c".into(),
            campaign: "k".into(),
            campaign_name: "K".into(),
            state,
            converted,
            enrol_time: 1,
            finish_time: finish,
        }
    }

    #[test]
    fn an_end_supersedes_the_beginning_never_the_reverse() {
        use EnrolmentState::{Active, Completed, Exited};
        let begin = enrolment(Active, false, None);
        let end = enrolment(Exited, true, Some(5));
        assert!(end.supersedes(&begin));
        assert!(!begin.supersedes(&end));
        assert!(!end.supersedes(&end), "the same end twice changes nothing");
        let other = enrolment(Completed, false, Some(7));
        assert!(other.supersedes(&end) != end.supersedes(&other), "of two ends, one wins either way");
    }

    #[test]
    fn figures_count_each_outcome_and_revenue_after_the_first_conversion() {
        use EnrolmentState::{Active, Completed, Exited};
        let tallies = [
            tally("a", Exited, true, 2),
            tally("a", Exited, false, 1),
            tally("a", Completed, false, 1),
            tally("a", Active, false, 4),
            tally("b", Active, false, 1),
        ];
        let conv = |contact: &str, enrol: i64, at: i64| Conversion {
            campaign: "a".into(),
            contact: contact.into(),
            enrol_time: enrol,
            convert_time: at,
        };
        let eur = |micros| Money { currency: "EUR".into(), micros };
        let buy = |contact: &str, at, amount| Purchase { contact: contact.into(), at, amount };
        let f = figures(
            &tallies,
            &[conv("x", 0, 10), conv("y", 5, 35)],
            &[
                buy("x", 9, eur(1)),
                buy("x", 10, eur(2)),
                buy("x", 50, Money { currency: "USD".into(), micros: 4 }),
                buy("y", 40, eur(8)),
                buy("z", 40, eur(16)),
            ],
        );
        let a = &f["a"];
        assert_eq!((a.enrolled, a.converted, a.exited, a.completed, a.active), (8, 2, 3, 1, 4));
        assert!((a.conversion_rate() - 0.25).abs() < 1e-12);
        assert_eq!(a.median_to_convert, Some(20), "the mean of 10 and 30");
        assert_eq!(a.revenue, BTreeMap::from([("EUR".to_owned(), 10), ("USD".to_owned(), 4)]));
        let b = &f["b"];
        assert_eq!((b.enrolled, b.converted, b.median_to_convert), (1, 0, None));
        assert!(b.revenue.is_empty());
        assert!(b.conversion_rate().abs() < f64::EPSILON, "no conversion: 0");
    }

    #[test]
    fn a_median_of_an_odd_count_is_the_middle() {
        assert_eq!(median(&mut [5, 1, 3]), Some(3));
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [i64::MAX, i64::MAX]), Some(i64::MAX));
    }
}
