//! Rows ↔ domain records.

use std::collections::BTreeMap;

use clm_platform::{Error, Result};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::entities::contact;
use crate::domain::model::{
    AcquisitionChannel, AgeBand, AttrValue, Consent, ConsentChannel, ConsentPurpose, ConsentStatus, Contact,
    ContactData, ContactState, Gender,
};
use crate::domain::values::{AttributeKey, CountryCode, Email, LeadScore, Money, Phone};

#[derive(Serialize, Deserialize, Default)]
struct Labels {
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    interests: Vec<String>,
    #[serde(default)]
    values: Vec<String>,
}

#[derive(Serialize, Deserialize)]
enum StoredAttr {
    #[serde(rename = "t")]
    Text(String),
    #[serde(rename = "n")]
    Number(f64),
    #[serde(rename = "b")]
    Bool(bool),
    #[serde(rename = "ts")]
    Time(i64),
}

/// A consent in `contacts.consents` (JSON). Rows written before purposes have none: they are
/// marketing consents, the only kind there was.
#[derive(Serialize, Deserialize)]
struct StoredConsent {
    channel: String,
    #[serde(default = "marketing")]
    purpose: String,
    status: String,
    at: i64,
    #[serde(default)]
    source: String,
}

/// The consent label rows (`domain::filter::consent_label`) of a stored `consents` JSON list;
/// entries with unknown keys are left out.
pub(crate) fn consent_labels(json: &str) -> serde_json::Result<Vec<String>> {
    let list: Vec<StoredConsent> = serde_json::from_str(json)?;
    Ok(list
        .iter()
        .filter_map(|c| {
            Some(crate::domain::filter::consent_label(
                ConsentChannel::from_key(&c.channel)?,
                ConsentPurpose::from_key(&c.purpose)?,
                ConsentStatus::from_key(&c.status)?,
            ))
        })
        .collect())
}

fn marketing() -> String {
    ConsentPurpose::Marketing.key().to_owned()
}

fn corrupt(what: &str, id: &str) -> Error {
    Error::internal(anyhow::anyhow!("stored contact {id} has an unreadable {what}"))
}

/// A database row back into a domain contact. Stored data was valid when written, so a
/// failure here is an internal error (corruption), not the caller's.
pub fn to_domain(m: contact::Model) -> Result<Contact> {
    let id = Uuid::parse_str(&m.id).map_err(|_| corrupt("id", &m.id))?;
    let labels: Labels = serde_json::from_str(&m.labels).map_err(|_| corrupt("labels", &m.id))?;
    let attrs: BTreeMap<String, StoredAttr> =
        serde_json::from_str(&m.attributes).map_err(|_| corrupt("attributes", &m.id))?;
    let consents: Vec<StoredConsent> = serde_json::from_str(&m.consents).map_err(|_| corrupt("consents", &m.id))?;
    let mut attributes = BTreeMap::new();
    for (k, v) in attrs {
        let key = AttributeKey::parse("attributes", &k).map_err(|_| corrupt("attribute key", &m.id))?;
        attributes.insert(
            key,
            match v {
                StoredAttr::Text(s) => AttrValue::Text(s),
                StoredAttr::Number(n) => AttrValue::Number(n),
                StoredAttr::Bool(b) => AttrValue::Bool(b),
                StoredAttr::Time(t) => AttrValue::Time(t),
            },
        );
    }
    let consents = consents
        .into_iter()
        .map(|c| {
            Ok(Consent {
                channel: ConsentChannel::from_key(&c.channel).ok_or_else(|| corrupt("consent", &m.id))?,
                purpose: ConsentPurpose::from_key(&c.purpose).ok_or_else(|| corrupt("consent", &m.id))?,
                status: ConsentStatus::from_key(&c.status).ok_or_else(|| corrupt("consent", &m.id))?,
                updated_at: c.at,
                source: c.source,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let cost = match (&m.acq_cost_currency, m.acq_cost_micros) {
        (Some(cur), Some(micros)) => {
            let currency = iso_currency::Currency::from_code(cur).ok_or_else(|| corrupt("currency", &m.id))?;
            Some(Money::from_micros(currency, micros))
        }
        _ => None,
    };
    let opt_uuid = |s: &Option<String>, what: &str| -> Result<Option<Uuid>> {
        s.as_deref().map(|v| Uuid::parse_str(v).map_err(|_| corrupt(what, &m.id))).transpose()
    };
    let data = ContactData {
        email: m.email.as_deref().map(|e| Email::parse("email", e)).transpose().map_err(|_| corrupt("email", &m.id))?,
        phone: m.phone.as_deref().map(|p| Phone::parse("phone", p)).transpose().map_err(|_| corrupt("phone", &m.id))?,
        given_name: m.given_name,
        family_name: m.family_name,
        company: m.company,
        job_title: m.job_title,
        birth_year: m.birth_year,
        age_band: m.age_band.as_deref().and_then(AgeBand::from_key),
        gender: m.gender.as_deref().and_then(Gender::from_key),
        locale: m.locale,
        country_code: m
            .country_code
            .as_deref()
            .map(|c| CountryCode::parse("country_code", c))
            .transpose()
            .map_err(|_| corrupt("country", &m.id))?,
        region: m.region,
        city: m.city,
        interests: labels.interests,
        values: labels.values,
        tags: labels.tags,
        attributes,
        consents,
        acquisition: crate::domain::model::Acquisition {
            channel: m.acq_channel.as_deref().and_then(AcquisitionChannel::from_key),
            campaign: m.acq_campaign,
            source_detail: m.acq_source_detail,
            cost,
            referred_by: opt_uuid(&m.referred_by, "referred_by")?,
            acquired_at: m.acquired_at,
        },
        lead_score: m
            .lead_score
            .map(|s| LeadScore::parse("lead_score", s))
            .transpose()
            .map_err(|_| corrupt("lead score", &m.id))?,
    };
    Ok(Contact {
        id,
        data,
        state: ContactState::from_key(&m.state).ok_or_else(|| corrupt("state", &m.id))?,
        merged_into: opt_uuid(&m.merged_into, "merged_into")?,
        create_time: m.create_time,
        update_time: m.update_time,
        delete_time: m.delete_time,
        version: m.version,
    })
}

/// A domain contact as a full row for `tenant`.
pub fn to_model(tenant: &str, c: &Contact) -> contact::Model {
    let d = &c.data;
    let labels = Labels { tags: d.tags.clone(), interests: d.interests.clone(), values: d.values.clone() };
    let attrs: BTreeMap<&str, StoredAttr> = d
        .attributes
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                match v {
                    AttrValue::Text(s) => StoredAttr::Text(s.clone()),
                    AttrValue::Number(n) => StoredAttr::Number(*n),
                    AttrValue::Bool(b) => StoredAttr::Bool(*b),
                    AttrValue::Time(t) => StoredAttr::Time(*t),
                },
            )
        })
        .collect();
    let consents: Vec<StoredConsent> = d
        .consents
        .iter()
        .map(|c| StoredConsent {
            channel: c.channel.key().into(),
            purpose: c.purpose.key().into(),
            status: c.status.key().into(),
            at: c.updated_at,
            source: c.source.clone(),
        })
        .collect();
    contact::Model {
        id: c.id.to_string(),
        tenant_id: tenant.to_owned(),
        email: d.email.as_ref().map(|e| e.as_str().to_owned()),
        phone: d.phone.as_ref().map(|p| p.as_str().to_owned()),
        given_name: d.given_name.clone(),
        family_name: d.family_name.clone(),
        company: d.company.clone(),
        job_title: d.job_title.clone(),
        birth_year: d.birth_year,
        age_band: d.age_band.map(|a| a.key().to_owned()),
        gender: d.gender.map(|g| g.key().to_owned()),
        locale: d.locale.clone(),
        country_code: d.country_code.map(|c| c.as_str().to_owned()),
        region: d.region.clone(),
        city: d.city.clone(),
        labels: serde_json::to_string(&labels).expect("labels serialize"),
        attributes: serde_json::to_string(&attrs).expect("attributes serialize"),
        consents: serde_json::to_string(&consents).expect("consents serialize"),
        acq_channel: d.acquisition.channel.map(|c| c.key().to_owned()),
        acq_campaign: d.acquisition.campaign.clone(),
        acq_source_detail: d.acquisition.source_detail.clone(),
        acq_cost_currency: d.acquisition.cost.map(|m| m.currency_code().to_owned()),
        acq_cost_micros: d.acquisition.cost.map(|m| m.micros()),
        referred_by: d.acquisition.referred_by.map(|u| u.to_string()),
        acquired_at: d.acquisition.acquired_at,
        lead_score: d.lead_score.map(|s| i32::from(s.value())),
        state: c.state.key().to_owned(),
        merged_into: c.merged_into.map(|u| u.to_string()),
        create_time: c.create_time,
        update_time: c.update_time,
        delete_time: c.delete_time,
        version: c.version,
    }
}
