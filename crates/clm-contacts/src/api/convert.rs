//! Proto ↔ domain for contacts: validation of every field into domain values, field masks
//! into patches, and domain records back into proto messages.

use std::collections::BTreeMap;

use clm_platform::{FieldViolation, Violations};
use clm_proto::common::v1::Money as PbMoney;
use clm_proto::contacts::v1 as pb;

use crate::domain::model::{
    AcquisitionChannel, AgeBand, AttrValue, Consent, ConsentChannel, ConsentPurpose, ConsentStatus, Contact,
    ContactState, Gender, Patch,
};
use crate::domain::values::{self, AttributeKey, CountryCode, Email, LeadScore, Money, Phone};

/// Every writable leaf field of a contact, as field-mask paths.
pub const LEAF_PATHS: &[&str] = &[
    "email",
    "phone",
    "given_name",
    "family_name",
    "company",
    "job_title",
    "demographics.birth_year",
    "demographics.age_band",
    "demographics.gender",
    "demographics.locale",
    "demographics.country_code",
    "demographics.region",
    "demographics.city",
    "psychographics.interests",
    "psychographics.values",
    "tags",
    "attributes",
    "consents",
    "acquisition.channel",
    "acquisition.campaign",
    "acquisition.source_detail",
    "acquisition.cost",
    "acquisition.referred_by_contact_id",
    "acquisition.acquire_time",
    "lead_score",
];

pub use clm_platform::convert::{TimeBounds, etag_version, parse_time, timestamp, uuid};

/// Expand a mask to leaf paths. Empty mask: every leaf whose value is set in `c`; `*`: all.
pub fn expand_mask(paths: &[String], c: &pb::Contact, mask_field: &str) -> Result<Vec<&'static str>, FieldViolation> {
    if paths.is_empty() {
        return Ok(LEAF_PATHS.iter().copied().filter(|p| is_set(p, c)).collect());
    }
    let mut out: Vec<&'static str> = Vec::new();
    for p in paths {
        let p = p.trim();
        let matched: Vec<&'static str> = if p == "*" {
            LEAF_PATHS.to_vec()
        } else {
            LEAF_PATHS.iter().copied().filter(|leaf| *leaf == p || leaf.starts_with(&format!("{p}."))).collect()
        };
        if matched.is_empty() {
            return Err(FieldViolation::new(
                mask_field,
                format!("unknown or read-only path {p:?}; writable paths: {}", LEAF_PATHS.join(", ")),
            ));
        }
        for m in matched {
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
    Ok(out)
}

fn is_set(path: &str, c: &pb::Contact) -> bool {
    let d = c.demographics.as_ref();
    let ps = c.psychographics.as_ref();
    let a = c.acquisition.as_ref();
    match path {
        "email" => !c.email.is_empty(),
        "phone" => !c.phone.is_empty(),
        "given_name" => !c.given_name.is_empty(),
        "family_name" => !c.family_name.is_empty(),
        "company" => !c.company.is_empty(),
        "job_title" => !c.job_title.is_empty(),
        "demographics.birth_year" => d.is_some_and(|d| d.birth_year != 0),
        "demographics.age_band" => d.is_some_and(|d| d.age_band != 0),
        "demographics.gender" => d.is_some_and(|d| d.gender != 0),
        "demographics.locale" => d.is_some_and(|d| !d.locale.is_empty()),
        "demographics.country_code" => d.is_some_and(|d| !d.country_code.is_empty()),
        "demographics.region" => d.is_some_and(|d| !d.region.is_empty()),
        "demographics.city" => d.is_some_and(|d| !d.city.is_empty()),
        "psychographics.interests" => ps.is_some_and(|p| !p.interests.is_empty()),
        "psychographics.values" => ps.is_some_and(|p| !p.values.is_empty()),
        "tags" => !c.tags.is_empty(),
        "attributes" => !c.attributes.is_empty(),
        "consents" => !c.consents.is_empty(),
        "acquisition.channel" => a.is_some_and(|a| a.channel != 0),
        "acquisition.campaign" => a.is_some_and(|a| !a.campaign.is_empty()),
        "acquisition.source_detail" => a.is_some_and(|a| !a.source_detail.is_empty()),
        "acquisition.cost" => a.is_some_and(|a| a.cost.is_some()),
        "acquisition.referred_by_contact_id" => a.is_some_and(|a| !a.referred_by_contact_id.is_empty()),
        "acquisition.acquire_time" => a.is_some_and(|a| a.acquire_time.is_some()),
        "lead_score" => c.lead_score != 0,
        _ => false,
    }
}

fn opt_text<T>(
    v: &mut Violations,
    field: &str,
    raw: &str,
    parse: impl FnOnce(&str, &str) -> Result<T, FieldViolation>,
) -> Option<Option<T>> {
    if raw.trim().is_empty() { Some(None) } else { v.check(parse(field, raw)).map(Some) }
}

fn enum_value<E: Copy>(
    v: &mut Violations,
    field: &str,
    raw: i32,
    map: impl Fn(i32) -> Option<Option<E>>,
) -> Option<Option<E>> {
    let r = map(raw);
    if r.is_none() {
        v.add(field, format!("unknown enum value {raw}"));
    }
    r
}

/// Validate the value at `path` of `c` into a patch; violations are named `<prefix><path>`.
pub fn patch_for(path: &str, c: &pb::Contact, prefix: &str, now_year: i32, v: &mut Violations) -> Option<Patch> {
    let f = format!("{prefix}{path}");
    let default_d = pb::Demographics::default();
    let default_p = pb::Psychographics::default();
    let default_a = pb::Acquisition::default();
    let d = c.demographics.as_ref().unwrap_or(&default_d);
    let ps = c.psychographics.as_ref().unwrap_or(&default_p);
    let a = c.acquisition.as_ref().unwrap_or(&default_a);
    let text = |v: &mut Violations, raw: &str| v.check(values::text(&f, raw));
    Some(match path {
        "email" => Patch::Email(opt_text(v, &f, &c.email, Email::parse)?),
        "phone" => Patch::Phone(opt_text(v, &f, &c.phone, Phone::parse)?),
        "given_name" => Patch::GivenName(text(v, &c.given_name)?),
        "family_name" => Patch::FamilyName(text(v, &c.family_name)?),
        "company" => Patch::Company(text(v, &c.company)?),
        "job_title" => Patch::JobTitle(text(v, &c.job_title)?),
        "demographics.birth_year" => Patch::BirthYear(v.check(values::birth_year(&f, d.birth_year, now_year))?),
        "demographics.age_band" => Patch::AgeBand(enum_value(v, &f, d.age_band, age_band)?),
        "demographics.gender" => Patch::Gender(enum_value(v, &f, d.gender, gender)?),
        "demographics.locale" => {
            Patch::Locale(if d.locale.is_empty() { String::new() } else { v.check(values::locale(&f, &d.locale))? })
        }
        "demographics.country_code" => Patch::CountryCode(opt_text(v, &f, &d.country_code, CountryCode::parse)?),
        "demographics.region" => Patch::Region(text(v, &d.region)?),
        "demographics.city" => Patch::City(text(v, &d.city)?),
        "psychographics.interests" => Patch::Interests(v.check(values::labels(&f, &ps.interests))?),
        "psychographics.values" => Patch::Values(v.check(values::labels(&f, &ps.values))?),
        "tags" => Patch::Tags(v.check(values::labels(&f, &c.tags))?),
        "attributes" => Patch::Attributes(attributes(&f, &c.attributes, v)?),
        "consents" => Patch::Consents(consents(&f, &c.consents, v)?),
        "acquisition.channel" => Patch::AcquisitionChannel(enum_value(v, &f, a.channel, channel)?),
        "acquisition.campaign" => Patch::Campaign(text(v, &a.campaign)?),
        "acquisition.source_detail" => Patch::SourceDetail(text(v, &a.source_detail)?),
        "acquisition.cost" => Patch::AcquisitionCost(match &a.cost {
            None => None,
            Some(m) => Some(v.check(Money::parse(&f, &m.currency_code, m.units, m.nanos))?),
        }),
        "acquisition.referred_by_contact_id" => Patch::ReferredBy(opt_text(v, &f, &a.referred_by_contact_id, uuid)?),
        "acquisition.acquire_time" => Patch::AcquiredAt(match &a.acquire_time {
            None => None,
            Some(ts) => Some(v.check(parse_time(&f, ts, TimeBounds::Event))?),
        }),
        "lead_score" => {
            Patch::LeadScore(if c.lead_score == 0 { None } else { Some(v.check(LeadScore::parse(&f, c.lead_score))?) })
        }
        _ => {
            v.add(&f, "is not a writable field");
            return None;
        }
    })
}

fn attributes(
    field: &str,
    raw: &std::collections::HashMap<String, pb::AttributeValue>,
    v: &mut Violations,
) -> Option<BTreeMap<AttributeKey, AttrValue>> {
    if raw.len() > values::MAX_ATTRIBUTES {
        v.add(field, format!("at most {} attributes", values::MAX_ATTRIBUTES));
        return None;
    }
    let mut out = BTreeMap::new();
    let mut ok = true;
    let mut keys: Vec<&String> = raw.keys().collect();
    keys.sort();
    for k in keys {
        let f = format!("{field}.{k}");
        let Some(key) = v.check(AttributeKey::parse(&f, k)) else {
            ok = false;
            continue;
        };
        use pb::attribute_value::Kind;
        let value = match &raw[k].kind {
            Some(Kind::StringValue(s)) => v.check(values::text(&f, s)).map(AttrValue::Text),
            Some(Kind::NumberValue(n)) if n.is_finite() => Some(AttrValue::Number(*n)),
            Some(Kind::NumberValue(_)) => {
                v.add(&f, "must be a finite number");
                None
            }
            Some(Kind::BoolValue(b)) => Some(AttrValue::Bool(*b)),
            Some(Kind::TimestampValue(ts)) => v.check(parse_time(&f, ts, TimeBounds::Any)).map(AttrValue::Time),
            None => {
                v.add(&f, "has no value (set one of string_value, number_value, bool_value, timestamp_value)");
                None
            }
        };
        match value {
            Some(val) => {
                out.insert(key, val);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn consents(field: &str, raw: &[pb::Consent], v: &mut Violations) -> Option<Vec<Consent>> {
    let now = crate::store::now_micros();
    let mut out: Vec<Consent> = Vec::new();
    let mut ok = true;
    for (i, c) in raw.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let channel = match pb::ConsentChannel::try_from(c.channel) {
            Ok(pb::ConsentChannel::Email) => Some(ConsentChannel::Email),
            Ok(pb::ConsentChannel::Sms) => Some(ConsentChannel::Sms),
            Ok(pb::ConsentChannel::Phone) => Some(ConsentChannel::Phone),
            _ => {
                v.add(format!("{f}.channel"), "must be EMAIL, SMS or PHONE");
                None
            }
        };
        let status = match pb::ConsentStatus::try_from(c.status) {
            Ok(pb::ConsentStatus::Granted) => Some(ConsentStatus::Granted),
            Ok(pb::ConsentStatus::Withdrawn) => Some(ConsentStatus::Withdrawn),
            _ => {
                v.add(format!("{f}.status"), "must be GRANTED or WITHDRAWN");
                None
            }
        };
        // Unspecified is marketing: the only purpose there was before purposes.
        let purpose = match pb::ConsentPurpose::try_from(c.purpose) {
            Ok(pb::ConsentPurpose::Unspecified | pb::ConsentPurpose::Marketing) => Some(ConsentPurpose::Marketing),
            Ok(pb::ConsentPurpose::Feedback) => Some(ConsentPurpose::Feedback),
            Ok(pb::ConsentPurpose::Transactional) => Some(ConsentPurpose::Transactional),
            Err(_) => {
                v.add(format!("{f}.purpose"), "must be MARKETING, FEEDBACK or TRANSACTIONAL (unspecified = MARKETING)");
                None
            }
        };
        let at = match &c.update_time {
            None => Some(now),
            Some(ts) => v.check(parse_time(&format!("{f}.update_time"), ts, TimeBounds::Event)),
        };
        let source = v.check(values::text(&format!("{f}.source"), &c.source));
        match (channel, purpose, status, at, source) {
            (Some(channel), Some(purpose), Some(status), Some(updated_at), Some(source)) => {
                let consent = Consent { channel, purpose, status, updated_at, source };
                if out.iter().any(|o| o.same_subject(&consent)) {
                    v.add(
                        f.clone(),
                        format!(
                            "a second entry for channel {} and purpose {} (at most one per channel and purpose)",
                            channel.key(),
                            purpose.key()
                        ),
                    );
                    ok = false;
                } else {
                    out.push(consent);
                }
            }
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

fn age_band(raw: i32) -> Option<Option<AgeBand>> {
    use pb::AgeBand as P;
    Some(match P::try_from(raw).ok()? {
        P::Unspecified => None,
        P::Under18 => Some(AgeBand::Under18),
        P::AgeBand1824 => Some(AgeBand::A18To24),
        P::AgeBand2534 => Some(AgeBand::A25To34),
        P::AgeBand3544 => Some(AgeBand::A35To44),
        P::AgeBand4554 => Some(AgeBand::A45To54),
        P::AgeBand5564 => Some(AgeBand::A55To64),
        P::AgeBand65Plus => Some(AgeBand::A65Plus),
    })
}

fn gender(raw: i32) -> Option<Option<Gender>> {
    use pb::Gender as P;
    Some(match P::try_from(raw).ok()? {
        P::Unspecified => None,
        P::Female => Some(Gender::Female),
        P::Male => Some(Gender::Male),
        P::NonBinary => Some(Gender::NonBinary),
        P::Other => Some(Gender::Other),
        P::PreferNotToSay => Some(Gender::PreferNotToSay),
    })
}

fn channel(raw: i32) -> Option<Option<AcquisitionChannel>> {
    use pb::AcquisitionChannel as P;
    Some(match P::try_from(raw).ok()? {
        P::Unspecified => None,
        P::OrganicSearch => Some(AcquisitionChannel::OrganicSearch),
        P::PaidSearch => Some(AcquisitionChannel::PaidSearch),
        P::Social => Some(AcquisitionChannel::Social),
        P::Email => Some(AcquisitionChannel::Email),
        P::Referral => Some(AcquisitionChannel::Referral),
        P::Direct => Some(AcquisitionChannel::Direct),
        P::Event => Some(AcquisitionChannel::Event),
        P::Partner => Some(AcquisitionChannel::Partner),
        P::Other => Some(AcquisitionChannel::Other),
    })
}

fn channel_pb(c: AcquisitionChannel) -> pb::AcquisitionChannel {
    use pb::AcquisitionChannel as P;
    match c {
        AcquisitionChannel::OrganicSearch => P::OrganicSearch,
        AcquisitionChannel::PaidSearch => P::PaidSearch,
        AcquisitionChannel::Social => P::Social,
        AcquisitionChannel::Email => P::Email,
        AcquisitionChannel::Referral => P::Referral,
        AcquisitionChannel::Direct => P::Direct,
        AcquisitionChannel::Event => P::Event,
        AcquisitionChannel::Partner => P::Partner,
        AcquisitionChannel::Other => P::Other,
    }
}

fn age_band_pb(a: AgeBand) -> pb::AgeBand {
    use pb::AgeBand as P;
    match a {
        AgeBand::Under18 => P::Under18,
        AgeBand::A18To24 => P::AgeBand1824,
        AgeBand::A25To34 => P::AgeBand2534,
        AgeBand::A35To44 => P::AgeBand3544,
        AgeBand::A45To54 => P::AgeBand4554,
        AgeBand::A55To64 => P::AgeBand5564,
        AgeBand::A65Plus => P::AgeBand65Plus,
    }
}

fn gender_pb(g: Gender) -> pb::Gender {
    use pb::Gender as P;
    match g {
        Gender::Female => P::Female,
        Gender::Male => P::Male,
        Gender::NonBinary => P::NonBinary,
        Gender::Other => P::Other,
        Gender::PreferNotToSay => P::PreferNotToSay,
    }
}

/// A domain contact as the API returns it.
pub fn to_pb(c: &Contact) -> pb::Contact {
    let d = &c.data;
    pb::Contact {
        id: c.id.to_string(),
        email: d.email.as_ref().map(|e| e.as_str().to_owned()).unwrap_or_default(),
        phone: d.phone.as_ref().map(|p| p.as_str().to_owned()).unwrap_or_default(),
        given_name: d.given_name.clone(),
        family_name: d.family_name.clone(),
        company: d.company.clone(),
        job_title: d.job_title.clone(),
        demographics: Some(pb::Demographics {
            birth_year: d.birth_year.unwrap_or(0),
            age_band: d.age_band.map_or(0, |a| age_band_pb(a) as i32),
            gender: d.gender.map_or(0, |g| gender_pb(g) as i32),
            locale: d.locale.clone(),
            country_code: d.country_code.map(|c| c.as_str().to_owned()).unwrap_or_default(),
            region: d.region.clone(),
            city: d.city.clone(),
        }),
        psychographics: Some(pb::Psychographics { interests: d.interests.clone(), values: d.values.clone() }),
        tags: d.tags.clone(),
        attributes: d
            .attributes
            .iter()
            .map(|(k, v)| {
                use pb::attribute_value::Kind;
                let kind = match v {
                    AttrValue::Text(s) => Kind::StringValue(s.clone()),
                    AttrValue::Number(n) => Kind::NumberValue(*n),
                    AttrValue::Bool(b) => Kind::BoolValue(*b),
                    AttrValue::Time(t) => Kind::TimestampValue(timestamp(*t)),
                };
                (k.as_str().to_owned(), pb::AttributeValue { kind: Some(kind) })
            })
            .collect(),
        consents: d
            .consents
            .iter()
            .map(|c| pb::Consent {
                channel: match c.channel {
                    ConsentChannel::Email => pb::ConsentChannel::Email,
                    ConsentChannel::Sms => pb::ConsentChannel::Sms,
                    ConsentChannel::Phone => pb::ConsentChannel::Phone,
                } as i32,
                status: match c.status {
                    ConsentStatus::Granted => pb::ConsentStatus::Granted,
                    ConsentStatus::Withdrawn => pb::ConsentStatus::Withdrawn,
                } as i32,
                update_time: Some(timestamp(c.updated_at)),
                source: c.source.clone(),
                purpose: match c.purpose {
                    ConsentPurpose::Marketing => pb::ConsentPurpose::Marketing,
                    ConsentPurpose::Feedback => pb::ConsentPurpose::Feedback,
                    ConsentPurpose::Transactional => pb::ConsentPurpose::Transactional,
                } as i32,
            })
            .collect(),
        acquisition: Some(pb::Acquisition {
            channel: d.acquisition.channel.map_or(0, |c| channel_pb(c) as i32),
            campaign: d.acquisition.campaign.clone(),
            source_detail: d.acquisition.source_detail.clone(),
            cost: d.acquisition.cost.map(|m| PbMoney {
                currency_code: m.currency_code().to_owned(),
                units: m.units,
                nanos: m.nanos,
            }),
            referred_by_contact_id: d.acquisition.referred_by.map(|u| u.to_string()).unwrap_or_default(),
            acquire_time: d.acquisition.acquired_at.map(timestamp),
        }),
        lead_score: d.lead_score.map_or(0, |s| i32::from(s.value())),
        state: match c.state {
            ContactState::Active => pb::ContactState::Active,
            ContactState::Deleted => pb::ContactState::Deleted,
            ContactState::Merged => pb::ContactState::Merged,
        } as i32,
        merged_into_id: c.merged_into.map(|u| u.to_string()).unwrap_or_default(),
        create_time: Some(timestamp(c.create_time)),
        update_time: Some(timestamp(c.update_time)),
        delete_time: c.delete_time.map(timestamp),
        etag: c.etag(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        let c = pb::Contact { given_name: "Ada".into(), tags: vec!["x".into()], ..Default::default() };
        assert_eq!(expand_mask(&[], &c, "update_mask").unwrap(), vec!["given_name", "tags"]);
        assert_eq!(expand_mask(&["demographics".into()], &c, "m").unwrap().len(), 7);
        assert_eq!(expand_mask(&["*".into()], &c, "m").unwrap().len(), LEAF_PATHS.len());
        assert_eq!(expand_mask(&["id".into()], &c, "update_mask").unwrap_err().field, "update_mask");
    }
}
