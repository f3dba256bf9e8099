//! What metrics knows about a contact, as the ledger holds it: its facts from contact events,
//! its stage transitions as lifecycle last published them, its activity — the inputs of its
//! contribution (`contribution`) — and the key type of aggregate rows.

/// One key column's value of an aggregate row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    S(String),
    I(i64),
}

impl From<&str> for Key {
    fn from(s: &str) -> Self {
        Self::S(s.to_owned())
    }
}

impl From<&String> for Key {
    fn from(s: &String) -> Self {
        Self::S(s.clone())
    }
}

impl From<i64> for Key {
    fn from(i: i64) -> Self {
        Self::I(i)
    }
}

/// A stage's category, as lifecycle publishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Prospect,
    Customer,
    Lost,
}

impl Category {
    pub fn parse(s: &str) -> Self {
        match s {
            "customer" => Self::Customer,
            "lost" => Self::Lost,
            _ => Self::Prospect,
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Self::Prospect => "prospect",
            Self::Customer => "customer",
            Self::Lost => "lost",
        }
    }
}

/// A stage's role: dormant and churned stages are the lost ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Normal,
    Dormant,
    Churned,
    Reactivated,
}

impl Role {
    pub fn parse(s: &str) -> Self {
        match s {
            "dormant" => Self::Dormant,
            "churned" => Self::Churned,
            "reactivated" => Self::Reactivated,
            _ => Self::Normal,
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Self::Normal => "",
            Self::Dormant => "dormant",
            Self::Churned => "churned",
            Self::Reactivated => "reactivated",
        }
    }
}

/// An amount of money: µ-units of a currency (its ISO 4217 code, as the producer checked it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Money {
    pub currency: String,
    pub micros: i64,
}

impl Money {
    /// From whole units and nanos, as `clm.common.v1.Money` carries them. Producers bound
    /// amounts to 10^12 units (10^18 µ-units); one from before that bound saturates at the ends
    /// of i64 rather than wrapping.
    pub fn from_units(currency: &str, units: i64, nanos: i32) -> Self {
        let micros = i128::from(units) * 1_000_000 + i128::from(nanos / 1000);
        let micros = i64::try_from(micros).unwrap_or(if micros < 0 { i64::MIN } else { i64::MAX });
        Self { currency: currency.to_owned(), micros }
    }
}

/// What metrics knows of a contact from contact events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub channel: super::channel::Channel,
    pub campaign: String,
    /// Acquisition time (else creation time); `None` before the contact's create event.
    pub acquired: Option<i64>,
    /// Acquisition cost.
    pub cost: Option<Money>,
}

impl Default for Facts {
    /// A contact not heard of yet: its counts are attributed to channel "unknown" until its
    /// create event arrives, which moves them.
    fn default() -> Self {
        Self { channel: super::channel::Channel::unknown(), campaign: String::new(), acquired: None, cost: None }
    }
}

/// A stage transition as lifecycle published it (retracted ones are gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub id: String,
    pub model: String,
    /// Index in the contact's journey when published (it may have shifted since).
    pub seq: i64,
    /// The stage left, as last published ("" on entering the model): orders transitions of
    /// the same instant (each follows the one that entered the stage it leaves).
    pub from_stage: String,
    pub at: i64,
    pub to_stage: String,
    pub to_category: Category,
    pub to_role: Role,
    /// Position of the stage in its model (0 = the entry stage).
    pub position: i64,
    pub reactivation: bool,
}

/// A survey's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Survey {
    Nps,
    Csat,
    Ces,
    Custom,
}

impl Survey {
    pub fn key(self) -> &'static str {
        match self {
            Self::Nps => "nps",
            Self::Csat => "csat",
            Self::Ces => "ces",
            Self::Custom => "custom",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "nps" => Self::Nps,
            "csat" => Self::Csat,
            "ces" => Self::Ces,
            _ => Self::Custom,
        }
    }
}

/// What a contact did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activity {
    Purchase(Money),
    Referral,
    Review,
    /// A complete, scored survey response (NPS 0-10, CSAT 1-5, CES 1-7).
    Score {
        survey: Survey,
        score: i32,
    },
    /// Any other journey event (a touchpoint, a custom event).
    Other,
}

impl Activity {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Purchase(_) => "purchase",
            Self::Referral => "referral",
            Self::Review => "review",
            Self::Score { survey, .. } => survey.key(),
            Self::Other => "other",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub at: i64,
    pub what: Activity,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_from_units_is_exact_and_saturates() {
        assert_eq!(Money::from_units("EUR", 12, 340_000_000), Money { currency: "EUR".into(), micros: 12_340_000 });
        assert_eq!(Money::from_units("EUR", -1, -500_000_000).micros, -1_500_000);
        assert_eq!(Money::from_units("EUR", i64::MAX, 0).micros, i64::MAX);
        assert_eq!(Money::from_units("EUR", i64::MIN, 0).micros, i64::MIN);
    }
}
