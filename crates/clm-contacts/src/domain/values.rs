//! Values with rules, valid by construction: each is built only through `parse`, which names
//! the offending field in its error.

use std::fmt;
use std::str::FromStr;

use clm_platform::FieldViolation;

/// Longest free-text field (names, company, city, campaign …), in characters.
pub const MAX_TEXT_CHARS: usize = 256;
/// Most tags (and most interests, most values) on one contact.
pub const MAX_TAGS: usize = 50;
/// Most custom attributes on one contact.
pub const MAX_ATTRIBUTES: usize = 100;
/// Longest email address (RFC 5321 path limit).
pub const MAX_EMAIL_CHARS: usize = 254;

fn violation(field: &str, description: impl Into<String>) -> FieldViolation {
    FieldViolation::new(field, description)
}

/// A syntactically valid email address, stored lower-cased (unique per tenant, case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldViolation> {
        let trimmed = raw.trim();
        if trimmed.chars().count() > MAX_EMAIL_CHARS {
            return Err(violation(field, format!("must be at most {MAX_EMAIL_CHARS} characters")));
        }
        if trimmed.chars().any(char::is_control) || !trimmed.contains('@') {
            return Err(violation(field, "is not a valid email address"));
        }
        match email_address::EmailAddress::from_str(trimmed) {
            Ok(addr) if addr.domain().contains('.') || addr.domain() == "localhost" => Ok(Self(trimmed.to_lowercase())),
            _ => Err(violation(field, "is not a valid email address")),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A phone number in E.164 form: `+` then 8 to 15 digits, the first not 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone(String);

impl Phone {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldViolation> {
        // People write spaces, dashes, dots and parentheses; E.164 has none of them.
        let compact: String = raw.chars().filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')')).collect();
        let digits = compact.strip_prefix('+').unwrap_or("");
        let ok =
            (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0');
        if ok { Ok(Self(compact)) } else { Err(violation(field, "must be an E.164 number such as +14155550123")) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An ISO 3166-1 alpha-2 country code, upper-case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountryCode(isocountry::CountryCode);

impl CountryCode {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldViolation> {
        let upper = raw.trim().to_ascii_uppercase();
        if upper.len() == 2
            && let Ok(code) = isocountry::CountryCode::for_alpha2(&upper)
        {
            return Ok(Self(code));
        }
        Err(violation(field, "must be an ISO 3166-1 alpha-2 country code such as \"DE\""))
    }

    pub fn as_str(&self) -> &'static str {
        self.0.alpha2()
    }
}

/// An amount of money: ISO 4217 currency, whole units and nanos (same sign), never negative
/// here because CLM stores costs and revenues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    pub currency: iso_currency::Currency,
    pub units: i64,
    pub nanos: i32,
}

impl Money {
    pub fn parse(field: &str, currency_code: &str, units: i64, nanos: i32) -> Result<Self, FieldViolation> {
        let currency =
            iso_currency::Currency::from_code(&currency_code.trim().to_ascii_uppercase()).ok_or_else(|| {
                violation(&format!("{field}.currency_code"), "must be an ISO 4217 currency code such as \"EUR\"")
            })?;
        if units < 0 || nanos < 0 {
            return Err(violation(field, "must not be negative"));
        }
        if nanos >= 1_000_000_000 {
            return Err(violation(&format!("{field}.nanos"), "must be below 1,000,000,000"));
        }
        if units > clm_platform::convert::MAX_MONEY_UNITS {
            return Err(violation(&format!("{field}.units"), "must be at most 1,000,000,000,000 (10^12)"));
        }
        Ok(Self { currency, units, nanos })
    }

    pub fn currency_code(&self) -> &'static str {
        self.currency.code()
    }

    /// The amount in micro-units (millionths), which is how it is stored and summed (at most
    /// 10^18 + 999,999: `parse` bounds the units).
    pub fn micros(&self) -> i64 {
        self.units.saturating_mul(1_000_000).saturating_add(i64::from(self.nanos / 1000))
    }

    pub fn from_micros(currency: iso_currency::Currency, micros: i64) -> Self {
        Self { currency, units: micros / 1_000_000, nanos: ((micros % 1_000_000) * 1000) as i32 }
    }
}

/// Lead score / ICP fit, 0 to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LeadScore(u8);

impl LeadScore {
    pub fn parse(field: &str, raw: i32) -> Result<Self, FieldViolation> {
        u8::try_from(raw)
            .ok()
            .filter(|v| *v <= 100)
            .map(Self)
            .ok_or_else(|| violation(field, "must be between 0 and 100"))
    }

    pub fn value(self) -> u8 {
        self.0
    }
}

/// A custom attribute name: `[a-z_][a-z0-9_]{0,63}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttributeKey(String);

impl AttributeKey {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldViolation> {
        let mut bytes = raw.bytes();
        let ok = raw.len() <= 64
            && bytes.next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(violation(field, "attribute names must match [a-z_][a-z0-9_]{0,63}"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AttributeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Free text with the common limits: trimmed, at most [`MAX_TEXT_CHARS`], no control characters.
pub fn text(field: &str, raw: &str) -> Result<String, FieldViolation> {
    let t = raw.trim();
    if t.chars().count() > MAX_TEXT_CHARS {
        return Err(violation(field, format!("must be at most {MAX_TEXT_CHARS} characters")));
    }
    if t.chars().any(char::is_control) {
        return Err(violation(field, "must not contain control characters"));
    }
    Ok(t.to_owned())
}

/// A list of short labels (tags, interests, values): each non-empty text, de-duplicated
/// case-insensitively, at most [`MAX_TAGS`].
pub fn labels(field: &str, raw: &[String]) -> Result<Vec<String>, FieldViolation> {
    if raw.len() > MAX_TAGS {
        return Err(violation(field, format!("at most {MAX_TAGS} entries")));
    }
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for (i, item) in raw.iter().enumerate() {
        let t = text(&format!("{field}[{i}]"), item)?;
        if t.is_empty() {
            return Err(violation(&format!("{field}[{i}]"), "must not be empty"));
        }
        if t.chars().count() > 64 {
            return Err(violation(&format!("{field}[{i}]"), "must be at most 64 characters"));
        }
        if !out.iter().any(|o| o.eq_ignore_ascii_case(&t)) {
            out.push(t);
        }
    }
    Ok(out)
}

/// A year of birth between 1900 and this year.
pub fn birth_year(field: &str, raw: i32, this_year: i32) -> Result<Option<i32>, FieldViolation> {
    match raw {
        0 => Ok(None),
        y if (1900..=this_year).contains(&y) => Ok(Some(y)),
        _ => Err(violation(field, format!("must be between 1900 and {this_year} (0 = unknown)"))),
    }
}

/// A BCP-47-ish locale tag such as `en`, `en-GB` or `zh-Hant-TW`.
pub fn locale(field: &str, raw: &str) -> Result<String, FieldViolation> {
    let t = raw.trim();
    let ok = t.len() <= 35
        && t.split(['-', '_']).enumerate().all(|(i, part)| {
            let len_ok = if i == 0 { (2..=3).contains(&part.len()) } else { (1..=8).contains(&part.len()) };
            len_ok && part.bytes().all(|b| b.is_ascii_alphanumeric())
        });
    if ok { Ok(t.replace('_', "-")) } else { Err(violation(field, "must be a BCP-47 language tag such as \"en-GB\"")) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn emails() {
        assert_eq!(Email::parse("email", " Ada@Example.COM ").unwrap().as_str(), "ada@example.com");
        assert!(Email::parse("email", "zoë@exämple.de").is_ok(), "unicode addresses are valid");
        for bad in ["", "ada", "ada@", "@x.com", "a b@x.com", "ada@example", "a@@x.com", "a\u{0}da@x.com"] {
            let err = Email::parse("contact.email", bad).unwrap_err();
            assert_eq!(err.field, "contact.email", "{bad:?}");
        }
        assert!(Email::parse("email", &format!("{}@x.com", "a".repeat(300))).is_err());
    }

    #[test]
    fn phones() {
        assert_eq!(Phone::parse("phone", "+1 (415) 555-0123").unwrap().as_str(), "+14155550123");
        for bad in ["", "4155550123", "+0123456789", "+1234", "+1234567890123456", "+1415abc0123"] {
            assert!(Phone::parse("phone", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn countries_currencies_money() {
        assert_eq!(CountryCode::parse("c", "de").unwrap().as_str(), "DE");
        assert!(CountryCode::parse("c", "XX").is_err());
        assert!(CountryCode::parse("c", "DEU").is_err());
        let m = Money::parse("cost", "eur", 12, 500_000_000).unwrap();
        assert_eq!((m.currency_code(), m.micros()), ("EUR", 12_500_000));
        assert_eq!(Money::from_micros(m.currency, m.micros()), m);
        assert_eq!(Money::parse("cost", "ZZZ", 1, 0).unwrap_err().field, "cost.currency_code");
        assert_eq!(Money::parse("cost", "EUR", -1, 0).unwrap_err().field, "cost");
        assert_eq!(Money::parse("cost", "EUR", 1, 1_000_000_000).unwrap_err().field, "cost.nanos");
        let max = clm_platform::convert::MAX_MONEY_UNITS;
        assert_eq!(Money::parse("cost", "EUR", max, 999_999_999).unwrap().micros(), max * 1_000_000 + 999_999);
        assert_eq!(Money::parse("cost", "EUR", max + 1, 0).unwrap_err().field, "cost.units");
        assert_eq!(Money::parse("cost", "EUR", i64::MAX, 0).unwrap_err().field, "cost.units");
    }

    #[test]
    fn scores_keys_text_labels() {
        assert!(
            LeadScore::parse("s", 100).is_ok()
                && LeadScore::parse("s", 101).is_err()
                && LeadScore::parse("s", -1).is_err()
        );
        assert!(AttributeKey::parse("a", "plan_2").is_ok());
        for bad in ["", "Plan", "2plan", "plan-x", "plän", &"a".repeat(65)] {
            assert!(AttributeKey::parse("a", bad).is_err(), "{bad:?}");
        }
        assert_eq!(text("t", "  Zoë  ").unwrap(), "Zoë");
        assert!(text("t", &"x".repeat(257)).is_err());
        assert!(text("t", "a\u{0}b").is_err());
        assert_eq!(labels("tags", &["vip".into(), "VIP".into(), "b2b".into()]).unwrap(), vec!["vip", "b2b"]);
        assert_eq!(labels("tags", &[String::new()]).unwrap_err().field, "tags[0]");
        assert!(labels("tags", &vec!["x".to_string(); 51]).is_err());
        assert_eq!(birth_year("y", 0, 2026).unwrap(), None);
        assert!(birth_year("y", 1850, 2026).is_err());
        assert_eq!(locale("l", "en_GB").unwrap(), "en-GB");
        assert!(locale("l", "english!").is_err());
    }

    proptest! {
        #[test]
        fn email_parse_never_panics_and_lowercases(s in any::<String>()) {
            if let Ok(e) = Email::parse("email", &s) {
                prop_assert_eq!(e.as_str(), e.as_str().to_lowercase());
            }
        }

        #[test]
        fn generated_valid_emails_parse(local in "[a-z0-9._%+-]{1,20}", domain in "[a-z0-9-]{1,20}\\.[a-z]{2,6}") {
            prop_assume!(!local.starts_with('.') && !local.ends_with('.') && !local.contains(".."));
            prop_assume!(!domain.starts_with('-') && !domain.contains("-."));
            let raw = format!("{local}@{domain}");
            prop_assert!(Email::parse("email", &raw).is_ok(), "{}", raw);
        }

        #[test]
        fn generated_valid_phones_parse(d in "[1-9][0-9]{7,14}") {
            let raw = format!("+{d}");
            let phone = Phone::parse("phone", &raw).unwrap();
            prop_assert_eq!(phone.as_str(), raw.as_str());
        }

        #[test]
        fn phone_and_key_parse_never_panic(s in any::<String>()) {
            let _ = Phone::parse("phone", &s);
            let _ = AttributeKey::parse("k", &s);
            let _ = CountryCode::parse("c", &s);
            let _ = locale("l", &s);
        }
    }
}
