//! Reviews a contact left on a public platform: the rating (1-5 stars), the platform (the
//! channel it was left on, lower-cased) and its link, each valid by construction.

use clm_platform::FieldViolation;

use super::values::text;

/// Longest review text, platform name and link, in characters.
pub const MAX_TEXT: usize = 5000;
pub const MAX_PLATFORM: usize = 100;
pub const MAX_URL: usize = 2000;

/// Stars, 1 to 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rating(i32);

impl Rating {
    pub fn parse(field: &str, raw: i32) -> Result<Self, FieldViolation> {
        if (1..=5).contains(&raw) { Ok(Self(raw)) } else { Err(FieldViolation::new(field, "must be 1 to 5")) }
    }

    pub fn value(self) -> i32 {
        self.0
    }
}

/// Where a review was left (`google`, `trustpilot` …): free text, lower-cased; empty when not
/// said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform(String);

impl Platform {
    pub fn parse(field: &str, raw: &str) -> Result<Self, Vec<FieldViolation>> {
        text(field, raw, MAX_PLATFORM, false).map(|t| Self(t.to_lowercase())).map_err(|(_, v)| v)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The review's http(s) link; empty when not given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewUrl(String);

impl ReviewUrl {
    pub fn parse(field: &str, raw: &str) -> Result<Self, Vec<FieldViolation>> {
        let (url, mut v) = match text(field, raw, MAX_URL, false) {
            Ok(t) => (t, Vec::new()),
            Err((t, v)) => (t, v),
        };
        if !(url.is_empty() || url.starts_with("https://") || url.starts_with("http://")) {
            v.push(FieldViolation::new(field, "must be an http(s) URL"));
        }
        if v.is_empty() { Ok(Self(url)) } else { Err(v) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn platforms_and_links() {
        assert_eq!(Platform::parse("p", " Google ").unwrap().as_str(), "google");
        assert_eq!(Platform::parse("p", &"x".repeat(101)).unwrap_err()[0].field, "p");
        assert_eq!(ReviewUrl::parse("u", "").unwrap().as_str(), "");
        assert_eq!(ReviewUrl::parse("u", " https://g.co/r/1 ").unwrap().as_str(), "https://g.co/r/1");
        assert_eq!(ReviewUrl::parse("u", "ftp://x").unwrap_err()[0].description, "must be an http(s) URL");
        let both = ReviewUrl::parse("u", &format!("ftp://{}", "x".repeat(MAX_URL))).unwrap_err();
        assert_eq!(both.len(), 2, "too long and not http(s)");
    }

    proptest! {
        #[test]
        fn ratings_are_one_to_five(raw in any::<i32>()) {
            let r = Rating::parse("review.rating", raw);
            prop_assert_eq!(r.is_ok(), (1..=5).contains(&raw));
            if let Ok(r) = r {
                prop_assert_eq!(r.value(), raw);
            }
        }
    }
}
