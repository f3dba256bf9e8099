//! An acquisition channel as metrics keys its numbers: the contact's channel key, trimmed and
//! lower-cased; a contact with no channel, or not heard of yet, is `unknown`. Parsed once where
//! a channel comes in (a contact event's facts, a scope's filter), so every aggregate, row and
//! filter names the same channel the same way.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel(String);

impl Channel {
    /// The channel of a contact without one.
    pub const UNKNOWN: &'static str = "unknown";

    pub fn unknown() -> Self {
        Self(Self::UNKNOWN.to_owned())
    }

    /// From a channel key as contacts publishes it (`""`: none).
    pub fn from_key(raw: &str) -> Self {
        let key = raw.trim().to_lowercase();
        if key.is_empty() { Self::unknown() } else { Self(key) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Channel {
    fn default() -> Self {
        Self::unknown()
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contact_without_a_channel_is_unknown_and_keys_are_lower_case() {
        assert_eq!(Channel::from_key("").as_str(), "unknown");
        assert_eq!(Channel::from_key("  ").as_str(), "unknown");
        assert_eq!(Channel::from_key(" Paid_Search ").as_str(), "paid_search");
        assert_eq!(Channel::default(), Channel::from_key(""));
    }
}
