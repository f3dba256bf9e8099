//! The contact record as the domain sees it: every field valid, enums as Rust enums.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::values::{AttributeKey, CountryCode, Email, LeadScore, Money, Phone};

/// Declares a closed set of stored names for an enum (stable text in the database).
macro_rules! keyed_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $key:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn key(self) -> &'static str {
                match self { $($name::$variant => $key),+ }
            }

            pub fn from_key(key: &str) -> Option<Self> {
                match key { $($key => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

keyed_enum!(
    /// Where a contact came from.
    AcquisitionChannel {
        OrganicSearch => "organic_search",
        PaidSearch => "paid_search",
        Social => "social",
        Email => "email",
        Referral => "referral",
        Direct => "direct",
        Event => "event",
        Partner => "partner",
        Other => "other",
    }
);

keyed_enum!(
    Gender {
        Female => "female",
        Male => "male",
        NonBinary => "non_binary",
        Other => "other",
        PreferNotToSay => "prefer_not_to_say",
    }
);

keyed_enum!(
    AgeBand {
        Under18 => "under_18",
        A18To24 => "18_24",
        A25To34 => "25_34",
        A35To44 => "35_44",
        A45To54 => "45_54",
        A55To64 => "55_64",
        A65Plus => "65_plus",
    }
);

keyed_enum!(
    ConsentChannel {
        Email => "email",
        Sms => "sms",
        Phone => "phone",
    }
);

keyed_enum!(
    /// What a consent is for. Consents recorded before purposes existed are marketing ones.
    ConsentPurpose {
        Marketing => "marketing",
        Feedback => "feedback",
        Transactional => "transactional",
    }
);

keyed_enum!(
    ConsentStatus {
        Granted => "granted",
        Withdrawn => "withdrawn",
    }
);

keyed_enum!(
    /// Lifecycle of the record itself (not of the customer).
    ContactState {
        Active => "active",
        Deleted => "deleted",
        Merged => "merged",
    }
);

/// A typed custom attribute value. Times are microseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Text(String),
    Number(f64),
    Bool(bool),
    Time(i64),
}

/// The decision for one channel and purpose (a contact has at most one per pair).
#[derive(Debug, Clone, PartialEq)]
pub struct Consent {
    pub channel: ConsentChannel,
    pub purpose: ConsentPurpose,
    pub status: ConsentStatus,
    /// When it was given or withdrawn (µs since epoch).
    pub updated_at: i64,
    pub source: String,
}

impl Consent {
    /// Whether `self` is the decision for `other`'s channel and purpose.
    pub fn same_subject(&self, other: &Consent) -> bool {
        self.channel == other.channel && self.purpose == other.purpose
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Acquisition {
    pub channel: Option<AcquisitionChannel>,
    pub campaign: String,
    pub source_detail: String,
    pub cost: Option<Money>,
    pub referred_by: Option<Uuid>,
    pub acquired_at: Option<i64>,
}

/// Everything a caller can write about a contact.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContactData {
    pub email: Option<Email>,
    pub phone: Option<Phone>,
    pub given_name: String,
    pub family_name: String,
    pub company: String,
    pub job_title: String,
    pub birth_year: Option<i32>,
    pub age_band: Option<AgeBand>,
    pub gender: Option<Gender>,
    pub locale: String,
    pub country_code: Option<CountryCode>,
    pub region: String,
    pub city: String,
    pub interests: Vec<String>,
    pub values: Vec<String>,
    pub tags: Vec<String>,
    pub attributes: BTreeMap<AttributeKey, AttrValue>,
    pub consents: Vec<Consent>,
    pub acquisition: Acquisition,
    pub lead_score: Option<LeadScore>,
}

/// A stored contact.
#[derive(Debug, Clone, PartialEq)]
pub struct Contact {
    pub id: Uuid,
    pub data: ContactData,
    pub state: ContactState,
    pub merged_into: Option<Uuid>,
    pub create_time: i64,
    pub update_time: i64,
    pub delete_time: Option<i64>,
    /// Incremented on every change; the etag is derived from it.
    pub version: i64,
}

impl Contact {
    pub fn etag(&self) -> String {
        etag(self.version)
    }
}

pub use clm_platform::convert::etag;

/// One validated change to one field (or group) of a contact. Create applies every field;
/// update applies the fields named by its `update_mask`.
#[derive(Debug, Clone, PartialEq)]
pub enum Patch {
    Email(Option<Email>),
    Phone(Option<Phone>),
    GivenName(String),
    FamilyName(String),
    Company(String),
    JobTitle(String),
    BirthYear(Option<i32>),
    AgeBand(Option<AgeBand>),
    Gender(Option<Gender>),
    Locale(String),
    CountryCode(Option<CountryCode>),
    Region(String),
    City(String),
    Interests(Vec<String>),
    Values(Vec<String>),
    Tags(Vec<String>),
    Attributes(BTreeMap<AttributeKey, AttrValue>),
    Consents(Vec<Consent>),
    AcquisitionChannel(Option<AcquisitionChannel>),
    Campaign(String),
    SourceDetail(String),
    AcquisitionCost(Option<Money>),
    ReferredBy(Option<Uuid>),
    AcquiredAt(Option<i64>),
    LeadScore(Option<LeadScore>),
}

impl ContactData {
    pub fn apply(&mut self, patch: Patch) {
        match patch {
            Patch::Email(v) => self.email = v,
            Patch::Phone(v) => self.phone = v,
            Patch::GivenName(v) => self.given_name = v,
            Patch::FamilyName(v) => self.family_name = v,
            Patch::Company(v) => self.company = v,
            Patch::JobTitle(v) => self.job_title = v,
            Patch::BirthYear(v) => self.birth_year = v,
            Patch::AgeBand(v) => self.age_band = v,
            Patch::Gender(v) => self.gender = v,
            Patch::Locale(v) => self.locale = v,
            Patch::CountryCode(v) => self.country_code = v,
            Patch::Region(v) => self.region = v,
            Patch::City(v) => self.city = v,
            Patch::Interests(v) => self.interests = v,
            Patch::Values(v) => self.values = v,
            Patch::Tags(v) => self.tags = v,
            Patch::Attributes(v) => self.attributes = v,
            Patch::Consents(v) => self.consents = v,
            Patch::AcquisitionChannel(v) => self.acquisition.channel = v,
            Patch::Campaign(v) => self.acquisition.campaign = v,
            Patch::SourceDetail(v) => self.acquisition.source_detail = v,
            Patch::AcquisitionCost(v) => self.acquisition.cost = v,
            Patch::ReferredBy(v) => self.acquisition.referred_by = v,
            Patch::AcquiredAt(v) => self.acquisition.acquired_at = v,
            Patch::LeadScore(v) => self.lead_score = v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_enums_round_trip() {
        for c in AcquisitionChannel::ALL {
            assert_eq!(AcquisitionChannel::from_key(c.key()), Some(*c));
        }
        for a in AgeBand::ALL {
            assert_eq!(AgeBand::from_key(a.key()), Some(*a));
        }
        assert_eq!(Gender::from_key("nope"), None);
    }

    #[test]
    fn patches_apply() {
        let mut d = ContactData::default();
        d.apply(Patch::GivenName("Ada".into()));
        d.apply(Patch::Tags(vec!["vip".into()]));
        d.apply(Patch::Campaign("spring".into()));
        assert_eq!(d.given_name, "Ada");
        assert_eq!(d.tags, vec!["vip"]);
        assert_eq!(d.acquisition.campaign, "spring");
    }
}
