//! The contact as messages see it: the template variables taken from the contacts service's
//! answer, and whether the contact may be sent a message on a channel for a purpose now.

use clm_proto::contacts::v1 as cpb;
use clm_proto::lifecycle::v1 as pb;
use serde_json::{Value, json};

/// The consent channel key a message needs: email for emails; a webhook's own setting.
pub fn consent_channel(template: &pb::MessageTemplate) -> Option<cpb::ConsentChannel> {
    match pb::MessageChannel::try_from(template.channel) {
        Ok(pb::MessageChannel::Email) => Some(cpb::ConsentChannel::Email),
        Ok(pb::MessageChannel::Webhook) => {
            let c = template.webhook.as_ref().map_or(0, |w| w.consent_channel);
            match pb::ConsentChannelRef::try_from(c) {
                Ok(pb::ConsentChannelRef::Email) => Some(cpb::ConsentChannel::Email),
                Ok(pb::ConsentChannelRef::Sms) => Some(cpb::ConsentChannel::Sms),
                Ok(pb::ConsentChannelRef::Phone) => Some(cpb::ConsentChannel::Phone),
                _ => None,
            }
        }
        _ => None,
    }
}

pub fn channel_key(c: cpb::ConsentChannel) -> &'static str {
    match c {
        cpb::ConsentChannel::Sms => "sms",
        cpb::ConsentChannel::Phone => "phone",
        _ => "email",
    }
}

pub fn purpose_of(template: &pb::MessageTemplate) -> cpb::ConsentPurpose {
    match pb::MessagePurpose::try_from(template.purpose) {
        Ok(pb::MessagePurpose::Feedback) => cpb::ConsentPurpose::Feedback,
        Ok(pb::MessagePurpose::Transactional) => cpb::ConsentPurpose::Transactional,
        _ => cpb::ConsentPurpose::Marketing,
    }
}

pub fn purpose_key(p: cpb::ConsentPurpose) -> &'static str {
    match p {
        cpb::ConsentPurpose::Feedback => "feedback",
        cpb::ConsentPurpose::Transactional => "transactional",
        _ => "marketing",
    }
}

/// Why a message may not go to `contact` on `channel` for `purpose` now, if it may not. A
/// consent counts only when GRANTED for exactly that channel and purpose (an entry without a
/// purpose is marketing), and not when the contact unsubscribed through a link after it was
/// granted (`unsubscribed_at`, µs: recorded here before contacts has applied it).
pub fn refusal(
    contact: &cpb::Contact,
    channel: Option<cpb::ConsentChannel>,
    purpose: cpb::ConsentPurpose,
    unsubscribed_at: Option<i64>,
) -> Option<String> {
    if contact.state != cpb::ContactState::Active as i32 {
        return Some("the contact is not active (deleted, erased or merged)".into());
    }
    let channel = channel?;
    let consent = contact.consents.iter().find(|c| {
        c.channel == channel as i32 && {
            let p = cpb::ConsentPurpose::try_from(c.purpose).unwrap_or(cpb::ConsentPurpose::Unspecified);
            p == purpose || (p == cpb::ConsentPurpose::Unspecified && purpose == cpb::ConsentPurpose::Marketing)
        }
    });
    let (ch, p) = (channel_key(channel), purpose_key(purpose));
    let Some(consent) = consent else {
        return Some(format!("no consent: the contact has no {ch} consent for {p}"));
    };
    if consent.status != cpb::ConsentStatus::Granted as i32 {
        return Some(format!("no consent: the contact withdrew {ch} consent for {p}"));
    }
    let granted = consent.update_time.as_ref().map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos / 1000));
    if unsubscribed_at.is_some_and(|u| u >= granted) {
        return Some(format!("no consent: the contact unsubscribed from {ch} for {p}"));
    }
    None
}

/// The contact's template variables (`domain::message::CONTACT_FIELDS`); empty values are left
/// out, so they are undefined and `default(...)` applies.
pub fn variables(c: &cpb::Contact) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    let mut put = |k: &str, v: &str| {
        if !v.is_empty() {
            m.insert(k.to_owned(), Value::String(v.to_owned()));
        }
    };
    put("id", &c.id);
    put("email", &c.email);
    put("phone", &c.phone);
    put("first_name", &c.given_name);
    put("given_name", &c.given_name);
    put("last_name", &c.family_name);
    put("family_name", &c.family_name);
    put("full_name", [c.given_name.as_str(), c.family_name.as_str()].join(" ").trim());
    put("company", &c.company);
    put("job_title", &c.job_title);
    if let Some(d) = &c.demographics {
        put("locale", &d.locale);
        put("country_code", &d.country_code);
        put("region", &d.region);
        put("city", &d.city);
    }
    if let Some(a) = &c.acquisition {
        if let Ok(ch) = cpb::AcquisitionChannel::try_from(a.channel)
            && ch != cpb::AcquisitionChannel::Unspecified
        {
            let name = ch.as_str_name().trim_start_matches("ACQUISITION_CHANNEL_").to_lowercase();
            put("acquisition_channel", &name);
        }
        put("acquisition_campaign", &a.campaign);
    }
    m.insert("tags".into(), json!(c.tags));
    if c.lead_score > 0 {
        m.insert("lead_score".into(), json!(c.lead_score));
    }
    let mut attrs = serde_json::Map::new();
    for (k, v) in &c.attributes {
        use cpb::attribute_value::Kind;
        let v = match &v.kind {
            Some(Kind::StringValue(s)) => json!(s),
            Some(Kind::NumberValue(n)) => json!(n),
            Some(Kind::BoolValue(b)) => json!(b),
            Some(Kind::TimestampValue(t)) => json!(
                chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
                    .map(|d| d.to_rfc3339())
                    .unwrap_or_default()
            ),
            None => continue,
        };
        attrs.insert(k.clone(), v);
    }
    m.insert("attributes".into(), Value::Object(attrs));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(consents: Vec<cpb::Consent>) -> cpb::Contact {
        cpb::Contact {
            id: "c1".into(),
            email: "ana@example.com".into(),
            state: cpb::ContactState::Active as i32,
            consents,
            ..Default::default()
        }
    }

    fn consent(purpose: cpb::ConsentPurpose, status: cpb::ConsentStatus, secs: i64) -> cpb::Consent {
        cpb::Consent {
            channel: cpb::ConsentChannel::Email as i32,
            status: status as i32,
            purpose: purpose as i32,
            update_time: Some(prost_types::Timestamp { seconds: secs, nanos: 0 }),
            ..Default::default()
        }
    }

    const EMAIL: Option<cpb::ConsentChannel> = Some(cpb::ConsentChannel::Email);

    #[test]
    fn consent_is_per_channel_and_purpose() {
        use cpb::{ConsentPurpose as P, ConsentStatus as S};
        let c = contact(vec![consent(P::Marketing, S::Granted, 10)]);
        assert_eq!(refusal(&c, EMAIL, P::Marketing, None), None);
        assert!(refusal(&c, EMAIL, P::Feedback, None).unwrap().contains("no email consent for feedback"));
        assert!(refusal(&c, Some(cpb::ConsentChannel::Sms), P::Marketing, None).is_some());
        let unspecified = contact(vec![consent(P::Unspecified, S::Granted, 10)]);
        assert_eq!(refusal(&unspecified, EMAIL, P::Marketing, None), None, "no purpose reads as marketing");
        let withdrawn = contact(vec![consent(P::Marketing, S::Withdrawn, 10)]);
        assert!(refusal(&withdrawn, EMAIL, P::Marketing, None).unwrap().contains("withdrew"));
    }

    #[test]
    fn an_unsubscribe_wins_until_consent_is_granted_again() {
        use cpb::{ConsentPurpose as P, ConsentStatus as S};
        let c = contact(vec![consent(P::Marketing, S::Granted, 10)]);
        assert!(refusal(&c, EMAIL, P::Marketing, Some(20_000_000)).unwrap().contains("unsubscribed"));
        assert_eq!(refusal(&c, EMAIL, P::Marketing, Some(5_000_000)), None, "granted again after the unsubscribe");
    }

    #[test]
    fn inactive_contacts_get_nothing_and_webhooks_without_consent_need_none() {
        let mut c = contact(vec![]);
        assert_eq!(refusal(&c, None, cpb::ConsentPurpose::Marketing, None), None);
        c.state = cpb::ContactState::Deleted as i32;
        assert!(refusal(&c, None, cpb::ConsentPurpose::Marketing, None).is_some());
    }
}
