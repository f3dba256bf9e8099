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

/// What metrics knows of a contact from contact events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub channel: String,
    pub campaign: String,
    /// Acquisition time (else creation time); `None` before the contact's create event.
    pub acquired: Option<i64>,
    /// Acquisition cost: (currency, µ-units).
    pub cost: Option<(String, i64)>,
}

impl Default for Facts {
    /// A contact not heard of yet: its counts are attributed to channel "unknown" until its
    /// create event arrives, which moves them.
    fn default() -> Self {
        Self { channel: "unknown".into(), campaign: String::new(), acquired: None, cost: None }
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
    Purchase {
        amount: i64,
        currency: String,
    },
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
            Self::Purchase { .. } => "purchase",
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
