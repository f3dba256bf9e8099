//! What lifecycle knows of a contact's standing in the contacts service, from contact events
//! (`known_contacts.state`): set by the consumer, read by the handlers and the automations.

/// A contact's state as its latest contact event left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactState {
    Active,
    Deleted,
    Merged,
    Erased,
}

impl ContactState {
    pub const ALL: [ContactState; 4] = [Self::Active, Self::Deleted, Self::Merged, Self::Erased];

    /// The name it is stored under.
    pub fn key(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Deleted => "deleted",
            Self::Merged => "merged",
            Self::Erased => "erased",
        }
    }

    /// A stored state (`None`: not one this version knows).
    pub fn parse(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.key() == key)
    }

    /// Gone for good: an erased or merged-away contact's journey never moves again.
    pub fn is_gone(self) -> bool {
        matches!(self, Self::Merged | Self::Erased)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_back_from_their_keys() {
        for s in ContactState::ALL {
            assert_eq!(ContactState::parse(s.key()), Some(s));
        }
        assert_eq!(ContactState::parse("Active"), None);
        assert!(ContactState::Erased.is_gone() && !ContactState::Deleted.is_gone());
    }
}
