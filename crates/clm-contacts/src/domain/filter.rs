//! Contact filters: the AIP-160 AST (from `clm_platform::filter`) checked against the contact
//! fields and typed, ready for the store to compile into parameterised SQL.

use clm_platform::FieldViolation;
use clm_platform::filter::{self, Expr, Op, Value};

use super::model::{AcquisitionChannel, AgeBand, ConsentChannel, ConsentPurpose, ConsentStatus, Gender};
use super::values::AttributeKey;

/// Text columns a filter can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextField {
    Id,
    Email,
    Phone,
    GivenName,
    FamilyName,
    Company,
    JobTitle,
    Locale,
    CountryCode,
    Region,
    City,
    Campaign,
    SourceDetail,
    ReferredBy,
    Gender,
    AgeBand,
    AcquisitionChannel,
}

/// Integer columns (times are µs since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntField {
    LeadScore,
    BirthYear,
    CreateTime,
    UpdateTime,
    AcquiredAt,
}

/// Label lists stored as rows (tag, interest, value), and consent decisions (one row per
/// consent, valued [`consent_label`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelKind {
    Tag,
    Interest,
    Value,
    Consent,
}

impl LabelKind {
    pub fn key(self) -> &'static str {
        match self {
            LabelKind::Tag => "tag",
            LabelKind::Interest => "interest",
            LabelKind::Value => "value",
            LabelKind::Consent => "consent",
        }
    }
}

/// The label row a consent decision is filtered by: `<channel>.<purpose>.<status>`, such as
/// `email.feedback.granted`.
pub fn consent_label(channel: ConsentChannel, purpose: ConsentPurpose, status: ConsentStatus) -> String {
    format!("{}.{}.{}", channel.key(), purpose.key(), status.key())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A literal an attribute is compared with; its type picks the attribute column.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrLiteral {
    Text(String),
    Number(f64),
    Bool(bool),
}

/// A typed, checked filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    Not(Box<Cond>),
    Text {
        field: TextField,
        cmp: Cmp,
        value: String,
    },
    /// Case-insensitive substring (`:` on a text field).
    TextContains {
        field: TextField,
        needle: String,
    },
    /// The field is set (`field:*`).
    TextPresent(TextField),
    Int {
        field: IntField,
        cmp: Cmp,
        value: i64,
    },
    Label {
        kind: LabelKind,
        value: String,
    },
    LabelAny(LabelKind),
    Attr {
        key: AttributeKey,
        cmp: Cmp,
        value: AttrLiteral,
    },
    AttrPresent(AttributeKey),
}

/// The fields a filter may name, for error messages and docs.
pub const FILTER_FIELDS: &str = "id, email, phone, given_name, family_name, company, job_title, demographics.locale \
     (or locale), country_code, region, city, gender, age_band, birth_year, lead_score, tags, interests, values, \
     acquisition.channel, acquisition.campaign, acquisition.source_detail, acquisition.referred_by_contact_id, \
     acquisition.acquire_time, create_time, update_time, attributes.<name>, consents.<channel> (marketing), \
     consents.<channel>.<purpose>";

/// `consents.<channel>` (marketing, the only purpose before purposes) or
/// `consents.<channel>.<purpose>` compared with `"granted"` or `"withdrawn"`: `=` matches
/// contacts whose decision it is, `!=` every other contact (none recorded included).
fn consent(
    field: &[String],
    op: Op,
    value: &Value,
    err: impl Fn(String) -> FieldViolation,
) -> Result<Cond, FieldViolation> {
    let keys = |all: &[&str]| all.join(", ");
    let channel = ConsentChannel::from_key(&field[1].to_ascii_lowercase()).ok_or_else(|| {
        err(format!(
            "unknown consent channel {:?}; one of {}",
            field[1],
            keys(&ConsentChannel::ALL.iter().map(|c| c.key()).collect::<Vec<_>>())
        ))
    })?;
    let purpose = match field.get(2) {
        None => ConsentPurpose::Marketing,
        Some(p) => ConsentPurpose::from_key(&p.to_ascii_lowercase()).ok_or_else(|| {
            err(format!(
                "unknown consent purpose {p:?}; one of {}",
                keys(&ConsentPurpose::ALL.iter().map(|c| c.key()).collect::<Vec<_>>())
            ))
        })?,
    };
    let path = field.join(".");
    let usage = || err(format!("`{path}` takes = or != with \"granted\" or \"withdrawn\""));
    let status = match value {
        Value::Text(s) => ConsentStatus::from_key(&s.to_ascii_lowercase()).ok_or_else(usage)?,
        _ => return Err(usage()),
    };
    let decided = Cond::Label { kind: LabelKind::Consent, value: consent_label(channel, purpose, status) };
    match op {
        Op::Eq => Ok(decided),
        Op::Ne => Ok(Cond::Not(Box::new(decided))),
        _ => Err(usage()),
    }
}

fn text_field(path: &str) -> Option<TextField> {
    Some(match path {
        "id" => TextField::Id,
        "email" => TextField::Email,
        "phone" => TextField::Phone,
        "given_name" => TextField::GivenName,
        "family_name" => TextField::FamilyName,
        "company" => TextField::Company,
        "job_title" => TextField::JobTitle,
        "locale" | "demographics.locale" => TextField::Locale,
        "country_code" | "demographics.country_code" => TextField::CountryCode,
        "region" | "demographics.region" => TextField::Region,
        "city" | "demographics.city" => TextField::City,
        "gender" | "demographics.gender" => TextField::Gender,
        "age_band" | "demographics.age_band" => TextField::AgeBand,
        "campaign" | "acquisition.campaign" => TextField::Campaign,
        "source_detail" | "acquisition.source_detail" => TextField::SourceDetail,
        "referred_by_contact_id" | "acquisition.referred_by_contact_id" => TextField::ReferredBy,
        "channel" | "acquisition.channel" => TextField::AcquisitionChannel,
        _ => return None,
    })
}

fn int_field(path: &str) -> Option<IntField> {
    Some(match path {
        "lead_score" => IntField::LeadScore,
        "birth_year" | "demographics.birth_year" => IntField::BirthYear,
        "create_time" => IntField::CreateTime,
        "update_time" => IntField::UpdateTime,
        "acquire_time" | "acquisition.acquire_time" => IntField::AcquiredAt,
        _ => return None,
    })
}

fn label_kind(path: &str) -> Option<LabelKind> {
    Some(match path {
        "tags" => LabelKind::Tag,
        "interests" | "psychographics.interests" => LabelKind::Interest,
        "values" | "psychographics.values" => LabelKind::Value,
        _ => return None,
    })
}

fn cmp(op: Op) -> Option<Cmp> {
    Some(match op {
        Op::Eq => Cmp::Eq,
        Op::Ne => Cmp::Ne,
        Op::Lt => Cmp::Lt,
        Op::Le => Cmp::Le,
        Op::Gt => Cmp::Gt,
        Op::Ge => Cmp::Ge,
        Op::Has => return None,
    })
}

fn is_time(field: IntField) -> bool {
    matches!(field, IntField::CreateTime | IntField::UpdateTime | IntField::AcquiredAt)
}

/// Parse and check `filter` (field name `field` in errors). `Ok(None)` when empty.
pub fn compile(field_name: &str, filter: &str) -> Result<Option<Cond>, FieldViolation> {
    let ast = filter::parse(filter).map_err(|e| FieldViolation::new(field_name, e.to_string()))?;
    ast.map(|e| check(field_name, &e)).transpose()
}

fn check(name: &str, e: &Expr) -> Result<Cond, FieldViolation> {
    match e {
        Expr::And(a, b) => Ok(Cond::And(Box::new(check(name, a)?), Box::new(check(name, b)?))),
        Expr::Or(a, b) => Ok(Cond::Or(Box::new(check(name, a)?), Box::new(check(name, b)?))),
        Expr::Not(a) => Ok(Cond::Not(Box::new(check(name, a)?))),
        Expr::Compare { field, op, value, column } => {
            let err = |msg: String| FieldViolation::new(name, format!("at column {column}: {msg}"));
            let path = field.join(".");
            if field.len() == 2 && field[0] == "attributes" {
                let key = AttributeKey::parse(name, &field[1]).map_err(|v| err(v.description))?;
                return match (op, value) {
                    (Op::Has, Value::Any) => Ok(Cond::AttrPresent(key)),
                    (Op::Has, _) => Err(err("`attributes.<name>:` only takes `*` (presence)".into())),
                    (op, v) => {
                        let value = match v {
                            Value::Text(s) => AttrLiteral::Text(s.clone()),
                            Value::Number(n) => AttrLiteral::Number(*n),
                            Value::Bool(b) => AttrLiteral::Bool(*b),
                            Value::Any => unreachable!("parser allows * only with :"),
                        };
                        Ok(Cond::Attr { key, cmp: cmp(*op).expect("not Has"), value })
                    }
                };
            }
            if (2..=3).contains(&field.len()) && field[0] == "consents" {
                return consent(field, *op, value, err);
            }
            if let Some(kind) = label_kind(&path) {
                return match (op, value) {
                    (Op::Has, Value::Any) => Ok(Cond::LabelAny(kind)),
                    (Op::Has, Value::Text(s)) => Ok(Cond::Label { kind, value: s.clone() }),
                    (Op::Has, Value::Number(n)) => Ok(Cond::Label { kind, value: n.to_string() }),
                    _ => Err(err(format!("`{path}` is a list: use `{path}:\"label\"` (has) or `{path}:*`"))),
                };
            }
            if let Some(f) = int_field(&path) {
                let cmp = cmp(*op).ok_or_else(|| err(format!("`{path}` takes =, !=, <, <=, >, >=")))?;
                let v = match (value, is_time(f)) {
                    (Value::Text(s), true) => chrono::DateTime::parse_from_rfc3339(s)
                        .map_err(|_| err(format!("`{path}` takes an RFC 3339 time such as \"2024-05-01T00:00:00Z\"")))?
                        .timestamp_micros(),
                    (Value::Number(n), false) if n.fract() == 0.0 && n.abs() < 1e15 => *n as i64,
                    (_, true) => return Err(err(format!("`{path}` takes an RFC 3339 time in quotes"))),
                    _ => return Err(err(format!("`{path}` takes a whole number"))),
                };
                return Ok(Cond::Int { field: f, cmp, value: v });
            }
            if let Some(f) = text_field(&path) {
                let text = match value {
                    Value::Text(s) => s.clone(),
                    Value::Number(n) if f == TextField::Phone => n.to_string(),
                    Value::Any if *op == Op::Has => return Ok(Cond::TextPresent(f)),
                    _ => return Err(err(format!("`{path}` takes a quoted string"))),
                };
                let text = normalise(f, &text).map_err(err)?;
                return Ok(match cmp(*op) {
                    Some(c) => Cond::Text { field: f, cmp: c, value: text },
                    None => Cond::TextContains { field: f, needle: text },
                });
            }
            Err(err(format!("unknown field `{path}`; filterable fields: {FILTER_FIELDS}")))
        }
    }
}

/// Bring a literal to the stored form (lower-case email, upper-case country, enum keys).
fn normalise(f: TextField, v: &str) -> Result<String, String> {
    let enum_key = |ok: bool, what: &str, all: Vec<&'static str>| {
        if ok { Ok(v.to_ascii_lowercase()) } else { Err(format!("unknown {what} {v:?}; one of {}", all.join(", "))) }
    };
    match f {
        TextField::Email | TextField::Id => Ok(v.to_lowercase()),
        TextField::CountryCode => Ok(v.to_ascii_uppercase()),
        TextField::Gender => enum_key(
            Gender::from_key(&v.to_ascii_lowercase()).is_some(),
            "gender",
            Gender::ALL.iter().map(|g| g.key()).collect(),
        ),
        TextField::AgeBand => enum_key(
            AgeBand::from_key(&v.to_ascii_lowercase()).is_some(),
            "age_band",
            AgeBand::ALL.iter().map(|g| g.key()).collect(),
        ),
        TextField::AcquisitionChannel => enum_key(
            AcquisitionChannel::from_key(&v.to_ascii_lowercase()).is_some(),
            "acquisition channel",
            AcquisitionChannel::ALL.iter().map(|g| g.key()).collect(),
        ),
        _ => Ok(v.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_conditions() {
        let c = compile("filter", r#"tags:"vip" AND lead_score >= 50 AND attributes.plan = "pro""#).unwrap().unwrap();
        let s = format!("{c:?}");
        assert!(s.contains("Label") && s.contains("LeadScore") && s.contains("Attr {"), "{s}");
        assert_eq!(
            compile("f", r#"email = "ADA@X.COM""#).unwrap().unwrap(),
            Cond::Text { field: TextField::Email, cmp: Cmp::Eq, value: "ada@x.com".into() }
        );
        assert_eq!(
            compile("f", r#"create_time > "2024-01-01T00:00:00Z""#).unwrap().unwrap(),
            Cond::Int { field: IntField::CreateTime, cmp: Cmp::Gt, value: 1_704_067_200_000_000 }
        );
        assert_eq!(
            compile("f", r#"acquisition.channel = "PAID_SEARCH""#).unwrap().unwrap(),
            Cond::Text { field: TextField::AcquisitionChannel, cmp: Cmp::Eq, value: "paid_search".into() }
        );
        assert!(compile("f", "").unwrap().is_none());
    }

    #[test]
    fn consents_by_channel_and_purpose() {
        let label = |value: &str| Cond::Label { kind: LabelKind::Consent, value: value.into() };
        assert_eq!(compile("f", r#"consents.email = "granted""#).unwrap().unwrap(), label("email.marketing.granted"));
        assert_eq!(
            compile("f", r#"consents.sms.feedback = "WITHDRAWN""#).unwrap().unwrap(),
            label("sms.feedback.withdrawn")
        );
        assert_eq!(
            compile("f", r#"consents.phone.transactional != "granted""#).unwrap().unwrap(),
            Cond::Not(Box::new(label("phone.transactional.granted")))
        );
        for (bad, says) in [
            (r#"consents.fax = "granted""#, "unknown consent channel"),
            (r#"consents.email.spam = "granted""#, "unknown consent purpose"),
            (r#"consents.email = "maybe""#, "\"granted\" or \"withdrawn\""),
            (r#"consents.email > "granted""#, "takes = or !="),
            ("consents.email:*", "takes = or !="),
        ] {
            let e = compile("filter", bad).unwrap_err();
            assert!(e.description.contains(says), "{bad}: {e:?}");
        }
    }

    #[test]
    fn errors_name_the_problem_and_column() {
        let e = compile("filter", "nope = 1").unwrap_err();
        assert_eq!(e.field, "filter");
        assert!(e.description.contains("unknown field `nope`") && e.description.contains("column 1"), "{e:?}");
        assert!(compile("filter", "tags = \"vip\"").unwrap_err().description.contains("is a list"));
        assert!(compile("filter", "lead_score = \"high\"").unwrap_err().description.contains("whole number"));
        assert!(compile("filter", "create_time > 5").unwrap_err().description.contains("RFC 3339"));
        assert!(compile("filter", "attributes.Plan = 1").unwrap_err().description.contains("[a-z_]"));
        assert!(compile("filter", "gender = \"robot\"").unwrap_err().description.contains("unknown gender"));
        assert!(compile("filter", "lead_score >").unwrap_err().description.contains("column"));
    }
}
