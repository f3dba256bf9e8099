//! Folding duplicate contacts into a survivor.
//!
//! Rules, field by field: the survivor keeps a value it has; an empty survivor field takes the
//! newest non-empty value among the merged contacts (newest = latest `update_time`). Fields
//! listed in `prefer_merged` take the newest non-empty merged value even when the survivor has
//! one. Tags, interests and values are unioned; attributes are unioned with the survivor (or,
//! when `attributes` is preferred, the newest merged contact) winning a key both have; consents
//! keep the latest decision per channel and purpose.

use std::collections::HashSet;

use super::model::{Contact, ContactData};

/// Field groups a merge can prefer from the merged contacts (proto field-mask paths).
pub const MERGE_FIELDS: &[&str] = &[
    "email",
    "phone",
    "given_name",
    "family_name",
    "company",
    "job_title",
    "demographics",
    "acquisition",
    "lead_score",
    "attributes",
];

/// The survivor's data after folding `merged` into it.
pub fn merge(survivor: &Contact, merged: &[Contact], prefer_merged: &HashSet<String>) -> ContactData {
    let mut newest_first: Vec<&Contact> = merged.iter().collect();
    newest_first.sort_by_key(|c| std::cmp::Reverse(c.update_time));
    let mut out = survivor.data.clone();

    macro_rules! pick {
        ($path:literal, $($field:ident).+) => {{
            if prefer_merged.contains($path) || out.$($field).+.blank() {
                if let Some(c) = newest_first.iter().find(|c| !c.data.$($field).+.blank()) {
                    out.$($field).+ = c.data.$($field).+.clone();
                }
            }
        }};
    }

    pick!("email", email);
    pick!("phone", phone);
    pick!("given_name", given_name);
    pick!("family_name", family_name);
    pick!("company", company);
    pick!("job_title", job_title);
    pick!("demographics", birth_year);
    pick!("demographics", age_band);
    pick!("demographics", gender);
    pick!("demographics", locale);
    pick!("demographics", country_code);
    pick!("demographics", region);
    pick!("demographics", city);
    pick!("acquisition", acquisition.channel);
    pick!("acquisition", acquisition.campaign);
    pick!("acquisition", acquisition.source_detail);
    pick!("acquisition", acquisition.cost);
    pick!("acquisition", acquisition.referred_by);
    pick!("acquisition", acquisition.acquired_at);
    pick!("lead_score", lead_score);

    for c in &newest_first {
        union(&mut out.tags, &c.data.tags);
        union(&mut out.interests, &c.data.interests);
        union(&mut out.values, &c.data.values);
    }
    let prefer_attrs = prefer_merged.contains("attributes");
    // Oldest first so the newest merged value is written last when merged values win.
    for c in newest_first.iter().rev() {
        for (k, v) in &c.data.attributes {
            if prefer_attrs || !out.attributes.contains_key(k) {
                out.attributes.insert(k.clone(), v.clone());
            }
        }
    }
    if !prefer_attrs {
        // Survivor wins keys it had.
        for (k, v) in &survivor.data.attributes {
            out.attributes.insert(k.clone(), v.clone());
        }
    }
    for c in &newest_first {
        for consent in &c.data.consents {
            match out.consents.iter_mut().find(|x| x.same_subject(consent)) {
                Some(existing) if existing.updated_at >= consent.updated_at => {}
                Some(existing) => *existing = consent.clone(),
                None => out.consents.push(consent.clone()),
            }
        }
    }
    // A contact cannot have referred itself through the merge.
    if out.acquisition.referred_by.is_some_and(|r| r == survivor.id || merged.iter().any(|m| m.id == r)) {
        out.acquisition.referred_by = None;
    }
    out
}

/// A field with nothing in it.
trait Blank {
    fn blank(&self) -> bool;
}

impl Blank for String {
    fn blank(&self) -> bool {
        self.is_empty()
    }
}

impl<T> Blank for Option<T> {
    fn blank(&self) -> bool {
        self.is_none()
    }
}

fn union(into: &mut Vec<String>, from: &[String]) {
    for item in from {
        if !into.iter().any(|x| x.eq_ignore_ascii_case(item)) {
            into.push(item.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::{AttrValue, Consent, ConsentChannel, ConsentPurpose, ConsentStatus, ContactState};
    use crate::domain::values::{AttributeKey, Email};
    use uuid::Uuid;

    fn contact(update_time: i64, f: impl FnOnce(&mut ContactData)) -> Contact {
        let mut data = ContactData::default();
        f(&mut data);
        Contact {
            id: Uuid::now_v7(),
            data,
            state: ContactState::Active,
            merged_into: None,
            create_time: 0,
            update_time,
            delete_time: None,
            version: 1,
        }
    }

    fn key(s: &str) -> AttributeKey {
        AttributeKey::parse("k", s).unwrap()
    }

    #[test]
    fn survivor_keeps_values_and_fills_gaps_from_newest() {
        let survivor = contact(10, |d| {
            d.given_name = "Ada".into();
            d.tags = vec!["vip".into()];
            d.attributes.insert(key("plan"), AttrValue::Text("pro".into()));
        });
        let older = contact(5, |d| {
            d.given_name = "Adele".into();
            d.company = "Old Co".into();
            d.tags = vec!["b2b".into()];
            d.attributes.insert(key("plan"), AttrValue::Text("free".into()));
            d.attributes.insert(key("seats"), AttrValue::Number(3.0));
        });
        let newer = contact(20, |d| {
            d.company = "New Co".into();
            d.email = Some(Email::parse("e", "ada@new.co").unwrap());
            d.tags = vec!["VIP".into(), "beta".into()];
        });
        let out = merge(&survivor, &[older, newer], &HashSet::new());
        assert_eq!(out.given_name, "Ada");
        assert_eq!(out.company, "New Co");
        assert_eq!(out.email.unwrap().as_str(), "ada@new.co");
        assert_eq!(out.tags, vec!["vip", "beta", "b2b"]);
        assert_eq!(out.attributes[&key("plan")], AttrValue::Text("pro".into()));
        assert_eq!(out.attributes[&key("seats")], AttrValue::Number(3.0));
    }

    #[test]
    fn preferred_fields_come_from_merged() {
        let survivor = contact(10, |d| d.given_name = "Ada".into());
        let other = contact(5, |d| d.given_name = "Augusta".into());
        let prefer: HashSet<String> = ["given_name".to_string()].into();
        assert_eq!(merge(&survivor, &[other], &prefer).given_name, "Augusta");
    }

    #[test]
    fn consents_keep_latest_decision_per_channel_and_purpose() {
        let c = |purpose, status, at| Consent {
            channel: ConsentChannel::Email,
            purpose,
            status,
            updated_at: at,
            source: String::new(),
        };
        let (marketing, feedback) = (ConsentPurpose::Marketing, ConsentPurpose::Feedback);
        let survivor = contact(10, |d| {
            d.consents = vec![c(marketing, ConsentStatus::Granted, 100), c(feedback, ConsentStatus::Granted, 300)];
        });
        let other = contact(5, |d| {
            d.consents = vec![
                c(marketing, ConsentStatus::Withdrawn, 200),
                c(feedback, ConsentStatus::Withdrawn, 200),
                c(ConsentPurpose::Transactional, ConsentStatus::Granted, 50),
            ];
        });
        let out = merge(&survivor, &[other], &HashSet::new());
        assert_eq!(
            out.consents,
            vec![
                c(marketing, ConsentStatus::Withdrawn, 200),
                c(feedback, ConsentStatus::Granted, 300),
                c(ConsentPurpose::Transactional, ConsentStatus::Granted, 50),
            ]
        );
    }
}
